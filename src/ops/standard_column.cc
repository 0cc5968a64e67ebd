// vLLM's own column-parallel forward (no custom op): Replicated -> Shard(features), or
// -> Replicated with gather_output. With `unsharded` the layer holds the full weight and runs
// on a size-1 group (shared experts under shared-expert DP, disable_tp).
#include "ops/op_util.h"
#include "ops/ops.h"

namespace tpl::ops {
namespace {

class StandardColumnOp final : public LinearOp {
 public:
  StandardColumnOp(const LayerName& n, const LinearFlags& f, const OpEnv& env, bool unsharded)
      : LinearOp(n, f, env.groups.world_rank()), comm_(unsharded ? nullptr : &env.groups.tp()) {}
  OpKind kind() const override { return OpKind::kStandardColumn; }
  int tp_rank() const override { return comm_ ? comm_->rank() : 0; }
  int tp_size() const override { return comm_ ? comm_->size() : 1; }
  Placement input_placement(const ForwardContext&) const override {
    return Placement::replicated();
  }
  Placement output_placement(const ForwardContext&) const override {
    return flags_.gather_output || tp_size() == 1 ? Placement::replicated()
                                                  : Placement::shard_features();
  }
  Tensor forward(TensorView x, const ForwardContext&, const LocalGemm& g) override {
    Tensor y = g.run(x, kColumnBias);
    if (flags_.gather_output && tp_size() > 1)
      return gather_features(g.runtime(), *comm_, y, g.full_out_features);
    return y;
  }

 private:
  Communicator* comm_;
};

}  // namespace

OpPtr make_standard_column(const LayerName& n, const LinearFlags& f, const OpEnv& env,
                           bool unsharded) {
  return std::make_unique<StandardColumnOp>(n, f, env, unsharded);
}

}  // namespace tpl::ops

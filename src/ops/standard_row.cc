// vLLM's own row-parallel forward (no custom op): Shard(features) -> Partial -> Replicated by an
// all-reduce when reduce_results; Partial otherwise.
#include "ops/gemm_collectives.h"
#include "ops/op_util.h"
#include "ops/ops.h"

namespace tpl::ops {
namespace {

class StandardRowOp final : public LinearOp {
 public:
  StandardRowOp(const LayerName& n, const LinearFlags& f, const OpEnv& env, bool unsharded)
      : LinearOp(n, f, env.groups.world_rank()), comm_(unsharded ? nullptr : &env.groups.tp()) {}
  OpKind kind() const override { return OpKind::kStandardRow; }
  int tp_rank() const override { return comm_ ? comm_->rank() : 0; }
  int tp_size() const override { return comm_ ? comm_->size() : 1; }
  Placement input_placement(const ForwardContext&) const override {
    return flags_.input_is_parallel && tp_size() > 1 ? Placement::shard_features()
                                                     : Placement::replicated();
  }
  Placement output_placement(const ForwardContext&) const override {
    return reduces() || tp_size() == 1 ? Placement::replicated() : Placement::partial();
  }
  Tensor forward(TensorView x, const ForwardContext&, const LocalGemm& g) override {
    TensorView xp = input_parallel(x, flags_, tp_size(), tp_rank(), g.in_unit);
    const bool bias = row_bias(tp_rank());
    if (reduces()) return gemm_all_reduce(g, xp, *comm_, bias);
    return g.run(xp, bias);
  }

 private:
  bool reduces() const { return flags_.reduce_results && tp_size() > 1; }
  Communicator* comm_;
};

}  // namespace

OpPtr make_standard_row(const LayerName& n, const LinearFlags& f, const OpEnv& env,
                        bool unsharded) {
  return std::make_unique<StandardRowOp>(n, f, env, unsharded);
}

}  // namespace tpl::ops

// CustomReplicatedOp (§6.1): the full weight on every rank, one GEMM, no communication.
// Replicated -> Replicated. Its (tp_rank, tp_size) are the TP group's, as in the seed, but the
// weight is never narrowed.
#include "ops/op_util.h"
#include "ops/ops.h"

namespace tpl::ops {
namespace {

class ReplicatedOp final : public LinearOp {
 public:
  ReplicatedOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()),
        rank_(env.groups.tp().rank()),
        size_(env.groups.tp().size()) {}
  OpKind kind() const override { return OpKind::kReplicated; }
  int tp_rank() const override { return rank_; }
  int tp_size() const override { return size_; }
  Placement input_placement(const ForwardContext&) const override {
    return Placement::replicated();
  }
  Placement output_placement(const ForwardContext&) const override {
    return Placement::replicated();
  }
  Tensor forward(TensorView x, const ForwardContext&, const LocalGemm& g) override {
    return g.run(x, kColumnBias);
  }

 private:
  int rank_, size_;
};

}  // namespace

OpPtr make_replicated(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<ReplicatedOp>(n, f, env);
}

}  // namespace tpl::ops

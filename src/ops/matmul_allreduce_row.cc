// MatmulAllreduceRowParallelOp (§6.6): Shard(features) -> Replicated by GEMM + all-reduce over
// TP through the gemm_all_reduce seam (the overlapped version replaces its body). Partial when
// !reduce_results; plain GEMM at T = 1. Bias on TP rank 0.
#include "ops/gemm_collectives.h"
#include "ops/op_util.h"
#include "ops/ops.h"

namespace tpl::ops {
namespace {

class MatmulAllreduceRowOp final : public LinearOp {
 public:
  MatmulAllreduceRowOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f), comm_(env.groups.tp()) {}
  OpKind kind() const override { return OpKind::kMatmulAllreduceRow; }
  int tp_rank() const override { return comm_.rank(); }
  int tp_size() const override { return comm_.size(); }
  Placement input_placement(const ForwardContext&) const override {
    return flags_.input_is_parallel && tp_size() > 1 ? Placement::shard_features()
                                                     : Placement::replicated();
  }
  Placement output_placement(const ForwardContext&) const override {
    return reduces() || tp_size() == 1 ? Placement::replicated() : Placement::partial();
  }
  Tensor forward(TensorView x, const ForwardContext&, const LocalGemm& g) override {
    TensorView xp = input_parallel(x, flags_, tp_size(), tp_rank());
    const bool bias = row_bias(flags_, tp_rank());
    if (reduces()) return gemm_all_reduce(g, xp, comm_, bias);
    return g.run(xp, bias);
  }

 private:
  bool reduces() const { return flags_.reduce_results && tp_size() > 1; }
  Communicator& comm_;
};

}  // namespace

OpPtr make_matmul_allreduce_row(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<MatmulAllreduceRowOp>(n, f, env);
}

}  // namespace tpl::ops

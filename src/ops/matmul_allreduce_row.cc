// MatmulAllreduceRowParallelOp (§6.6): Shard(features) -> Replicated by a fused GEMM +
// all-reduce over TP: with a CommWorker in OpEnv the GEMM runs in row chunks and each chunk's
// all-reduce overlaps the next chunk's GEMM (gemm_collectives.h). Partial when !reduce_results;
// plain GEMM at T = 1. Bias on TP rank 0.
#include "ops/gemm_collectives.h"
#include "ops/op_util.h"
#include "ops/ops.h"

namespace tpl::ops {
namespace {

class MatmulAllreduceRowOp final : public LinearOp {
 public:
  MatmulAllreduceRowOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()),
        comm_(env.groups.tp()),
        overlap_(env.overlap),
        chunks_(env.config.fused_chunks) {}
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
    TensorView xp = input_parallel(x, flags_, tp_size(), tp_rank(), g.in_unit);
    const bool bias = row_bias(tp_rank());
    if (reduces())
      return gemm_all_reduce(g, xp, comm_, bias, overlap_, fused_chunk_count(xp.rows(), chunks_));
    return g.run(xp, bias);
  }

 private:
  bool reduces() const { return flags_.reduce_results && tp_size() > 1; }
  Communicator& comm_;
  CommWorker* overlap_;
  int chunks_;
};

}  // namespace

OpPtr make_matmul_allreduce_row(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<MatmulAllreduceRowOp>(n, f, env);
}

}  // namespace tpl::ops

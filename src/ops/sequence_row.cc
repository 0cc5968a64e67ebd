// SequenceRowParallelOp (§6.9), the row side of FlashComm1. Entry: Shard(features) [N, in/T].
//  * T = 1 or !reduce_results: GEMM only (bias on TP rank 0) -> Replicated / Partial.
//  * FC1 off for the batch: GEMM + all-reduce -> Replicated [N, H].
//  * FC1 on: pad to N' with zero rows, then GEMM + reduce-scatter over tokens -> Shard(tokens)
//    [N'/T, H]; rank r holds rows r*N'/T... The padding rows sit at the end and the next
//    SequenceColumn's gather drops them.
//    - mmrs_fusion: the fused path (chunked GEMM whose reduce-scatters overlap the next chunk
//      when OpEnv has a CommWorker, gemm_collectives.h) adds the bias after the
//      reduce-scatter on every rank: each token row then lives on exactly one rank, so every
//      token gets the bias once. The seed added it on rank 0 only, so tokens on other ranks
//      missed it (§16 item 3).
//    - otherwise: bias on rank 0 before the reduction.
// DSA-CP o_proj skips the padding: its attention already delivers N' rows (§6.9 a).
#include "ops/gemm_collectives.h"
#include "ops/op_util.h"
#include "ops/ops.h"
#include "tpl/error.h"

namespace tpl::ops {
namespace {

class SequenceRowOp final : public LinearOp {
 public:
  SequenceRowOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()),
        tp_(env.groups.tp()),
        skip_pad_(env.features.dsa_cp && n.role == LayerRole::kOProj),
        overlap_(env.overlap),
        chunks_(env.config.fused_chunks) {}
  OpKind kind() const override { return OpKind::kSequenceRow; }
  int tp_rank() const override { return tp_.rank(); }
  int tp_size() const override { return tp_.size(); }
  Placement input_placement(const ForwardContext&) const override {
    return flags_.input_is_parallel && tp_size() > 1 ? Placement::shard_features()
                                                     : Placement::replicated();
  }
  Placement output_placement(const ForwardContext& ctx) const override {
    if (!reduces()) return tp_size() == 1 ? Placement::replicated() : Placement::partial();
    return ctx.flash_comm_v1_enabled ? Placement::shard_tokens() : Placement::replicated();
  }
  Tensor forward(TensorView x, const ForwardContext& ctx, const LocalGemm& g) override {
    TensorView xp = input_parallel(x, flags_, tp_size(), tp_rank(), g.in_unit);
    if (!reduces()) return g.run(xp, row_bias(tp_rank()));
    if (!ctx.flash_comm_v1_enabled) return gemm_all_reduce(g, xp, tp_, row_bias(tp_rank()));
    Tensor padded;
    TensorView in = xp;
    if (ctx.pad_size > 0 && !skip_pad_) {
      padded = pad_rows(g.runtime(), xp, ctx.pad_size);
      in = padded.view();
    }
    TPL_CHECK_EQ(in.rows() % tp_size(), 0, where(),
                 "rows after padding must be a multiple of the TP size (pad_size ", ctx.pad_size,
                 ")");
    if (ctx.mmrs_fusion)
      return gemm_reduce_scatter(g, in, tp_, kColumnBias, true, overlap_,
                                 fused_chunk_count(in.rows(), chunks_));
    return gemm_reduce_scatter(g, in, tp_, row_bias(tp_rank()), false);
  }

 private:
  bool reduces() const { return flags_.reduce_results && tp_size() > 1; }
  Communicator& tp_;
  bool skip_pad_;
  CommWorker* overlap_;
  int chunks_;
};

}  // namespace

OpPtr make_sequence_row(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<SequenceRowOp>(n, f, env);
}

}  // namespace tpl::ops

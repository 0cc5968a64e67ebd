// SequenceColumnParallelOp (§6.7), the column side of FlashComm1 (sequence parallelism).
// Entry: Shard(tokens) [N'/T, H] when FC1 is on for the batch, else Replicated [N, H].
// Steps: all-gather tokens over TP and drop the last pad_size rows -> [N, H]; GEMM (bias unless
// skip_bias_add) -> [N, out/T]; gather_output: all-gather features. Exit: Shard(features), or
// Replicated with gather_output. W8A8 with fc1_quantized_allgather gathers int8.
#include "ops/gemm_collectives.h"
#include "ops/op_util.h"
#include "ops/ops.h"
#include "tpl/error.h"

namespace tpl::ops {

namespace {

class SequenceColumnOp final : public LinearOp {
 public:
  SequenceColumnOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()),
        tp_(env.groups.tp()),
        quantized_gather_(env.config.fc1_quantized_allgather),
        overlap_(env.overlap),
        chunks_(env.config.fused_chunks) {}
  OpKind kind() const override { return OpKind::kSequenceColumn; }
  int tp_rank() const override { return tp_.rank(); }
  int tp_size() const override { return tp_.size(); }
  Placement input_placement(const ForwardContext& ctx) const override {
    return ctx.flash_comm_v1_enabled ? Placement::shard_tokens() : Placement::replicated();
  }
  Placement output_placement(const ForwardContext&) const override {
    return flags_.gather_output || tp_size() == 1 ? Placement::replicated()
                                                  : Placement::shard_features();
  }
  Tensor forward(TensorView x, const ForwardContext& ctx, const LocalGemm& g) override {
    Tensor y;
    if (ctx.flash_comm_v1_enabled) {
      // Opt-in for W8A8: quantize the sequence shard and gather int8 (a quarter of f32's bytes,
      // half of bf16's); the GEMM consumes the int8 rows without requantizing.
      const bool int8_gather = quantized_gather_ && g.quantized();
      Tensor q;
      if (int8_gather) q = g.quantize(x);
      TPL_CHECK_LE(ctx.pad_size, x.rows() * tp_size(), where(), "pad_size exceeds the batch");
      // With a CommWorker the gather runs in chunks and the GEMM starts on the rows received.
      y = all_gather_gemm(g, int8_gather ? q.view() : x, tp_, ctx.pad_size, kColumnBias, overlap_,
                          fused_chunk_count(x.rows() * tp_size(), chunks_));
    } else {
      y = g.run(x, kColumnBias);
    }
    if (flags_.gather_output && tp_size() > 1)
      return gather_features(g.runtime(), tp_, y, g.full_out_features);
    return y;
  }

 private:
  Communicator& tp_;
  bool quantized_gather_;
  CommWorker* overlap_;
  int chunks_;
};

}  // namespace

OpPtr make_sequence_column(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<SequenceColumnOp>(n, f, env);
}

}  // namespace tpl::ops

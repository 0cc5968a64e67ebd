// SequenceColumnParallelOp (§6.7), the column side of FlashComm1 (sequence parallelism).
// Entry: Shard(tokens) [N'/T, H] when FC1 is on for the batch, else Replicated [N, H].
// Steps: all-gather tokens over TP and drop the last pad_size rows -> [N, H]; GEMM (bias unless
// skip_bias_add) -> [N, out/T]; gather_output: all-gather features. Exit: Shard(features), or
// Replicated with gather_output. W8A8 with fc1_quantized_allgather gathers int8.
#include "ops/op_util.h"
#include "ops/ops.h"
#include "tpl/error.h"

namespace tpl::ops {

// Shared with Flashcomm2OshardQKV: FC1's all-gather + unpad (§5.1).
Tensor gather_and_unpad(Communicator& tp, TensorView x, const ForwardContext& ctx,
                        const Where& w) {
  Tensor all = gather_tokens(tp, x);
  TPL_CHECK_LE(ctx.pad_size, all.rows(), w, "pad_size exceeds the gathered rows");
  if (ctx.pad_size == 0) return all;
  return Tensor::copy_of(all.view().row_slice(0, all.rows() - ctx.pad_size));
}

namespace {

class SequenceColumnOp final : public LinearOp {
 public:
  SequenceColumnOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()),
        tp_(env.groups.tp()),
        quantized_gather_(env.config.fc1_quantized_allgather) {}
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
      Tensor full = gather_and_unpad(tp_, int8_gather ? g.quantize(x).view() : x, ctx, where());
      y = g.run(full, kColumnBias);
    } else {
      y = g.run(x, kColumnBias);
    }
    if (flags_.gather_output && tp_size() > 1) return gather_features(tp_, y, g.full_out_features);
    return y;
  }

 private:
  Communicator& tp_;
  bool quantized_gather_;
};

}  // namespace

OpPtr make_sequence_column(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<SequenceColumnOp>(n, f, env);
}

}  // namespace tpl::ops

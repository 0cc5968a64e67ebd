// Flashcomm2OshardQKVParallelOp (§6.8): SequenceColumn's steps, plus, before the GEMM, the
// trigger that starts the asynchronous broadcast of a later layer's o_proj weight (§7b), so the
// transfer overlaps the QKV GEMM and attention. The trigger is optional (OpEnv::oshard).
#include "ops/op_util.h"
#include "ops/ops.h"

namespace tpl::ops {

Tensor gather_and_unpad(Communicator& tp, TensorView x, const ForwardContext& ctx,
                        const Where& w);

namespace {

class Flashcomm2OshardQkvOp final : public LinearOp {
 public:
  Flashcomm2OshardQkvOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()), tp_(env.groups.tp()), sp_(env.features.enable_sp), trigger_(env.oshard) {}
  OpKind kind() const override { return OpKind::kFlashcomm2OshardQkv; }
  int tp_rank() const override { return tp_.rank(); }
  int tp_size() const override { return tp_.size(); }
  Placement input_placement(const ForwardContext& ctx) const override {
    return sp_ && ctx.flash_comm_v1_enabled ? Placement::shard_tokens() : Placement::replicated();
  }
  Placement output_placement(const ForwardContext&) const override {
    return flags_.gather_output || tp_size() == 1 ? Placement::replicated()
                                                  : Placement::shard_features();
  }
  Tensor forward(TensorView x, const ForwardContext& ctx, const LocalGemm& g) override {
    Tensor full;
    TensorView in = x;
    if (sp_ && ctx.flash_comm_v1_enabled) {
      full = gather_and_unpad(tp_, x, ctx, where());
      in = full.view();
    }
    if (trigger_) trigger_->reach_layer(name_);
    Tensor y = g.run(in, kColumnBias);
    if (flags_.gather_output && tp_size() > 1) return gather_features(tp_, y, g.full_out_features);
    return y;
  }

 private:
  Communicator& tp_;
  bool sp_;
  OShardTrigger* trigger_;
};

}  // namespace

OpPtr make_flashcomm2_oshard_qkv(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<Flashcomm2OshardQkvOp>(n, f, env);
}

}  // namespace tpl::ops

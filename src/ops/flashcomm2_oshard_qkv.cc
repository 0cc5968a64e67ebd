// Flashcomm2OshardQKVParallelOp (§6.8): SequenceColumn's steps, plus, before them, the
// trigger that starts the asynchronous broadcast of a later layer's o_proj weight (§7b), so the
// transfer overlaps the QKV GEMM and attention. The trigger is optional (OpEnv::oshard).
#include "ops/gemm_collectives.h"
#include "ops/op_util.h"
#include "ops/ops.h"

namespace tpl::ops {

namespace {

class Flashcomm2OshardQkvOp final : public LinearOp {
 public:
  Flashcomm2OshardQkvOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()),
        tp_(env.groups.tp()),
        sp_(env.features.enable_sp),
        trigger_(env.oshard) {}
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
    // The trigger goes first so the weight broadcast overlaps the gather, GEMM and attention.
    if (trigger_) trigger_->reach_layer(name_);
    Tensor y = sp_ && ctx.flash_comm_v1_enabled
                   ? all_gather_gemm(g, x, tp_, ctx.pad_size, kColumnBias)
                   : g.run(x, kColumnBias);
    if (flags_.gather_output && tp_size() > 1)
      return gather_features(g.runtime(), tp_, y, g.full_out_features);
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

// MLPColumnParallelOp (§6.2): the MLP-TP group (size m) links DP replicas with the same TP
// index. Entry: this replica's B tokens, all features (Shard(tokens) over the group). Steps:
// pad to the group's largest B (beyond the seed, which needs equal B), all-gather tokens, GEMM
// on this member's slice of the gate/up features. Exit: all group tokens, Shard(features).
// gather_output is ignored, as in the seed.
#include <algorithm>

#include "ops/op_util.h"
#include "ops/ops.h"
#include "tpl/error.h"

namespace tpl::ops {
namespace {

class MlpColumnOp final : public LinearOp {
 public:
  MlpColumnOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()), comm_(env.groups.mlp_tp()), env_(env) {}
  OpKind kind() const override { return OpKind::kMlpColumn; }
  int tp_rank() const override { return comm_.rank(); }
  int tp_size() const override { return comm_.size(); }
  Placement input_placement(const ForwardContext&) const override {
    return Placement::shard_tokens();
  }
  Placement output_placement(const ForwardContext&) const override {
    return Placement::shard_features();
  }
  Tensor forward(TensorView x, const ForwardContext& ctx, const LocalGemm& g) override {
    const auto counts =
        module_group_tokens(ctx, env_.config.layout, env_.groups.world_rank(), comm_.size());
    TPL_CHECK_EQ(x.rows(), counts[comm_.rank()], where(),
                 "input rows must equal this replica's token count");
    const std::int64_t bmax = *std::max_element(counts.begin(), counts.end());
    Tensor padded = pad_rows(g.runtime(), x, bmax - x.rows());
    Tensor all = gather_tokens(g.runtime(), comm_, padded);  // [m*bmax, H], member 0's rows first
    return g.run(all, kColumnBias);
  }

 private:
  Communicator& comm_;
  OpEnv env_;
};

}  // namespace

OpPtr make_mlp_column(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<MlpColumnOp>(n, f, env);
}

}  // namespace tpl::ops

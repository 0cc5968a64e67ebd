// MLPRowParallelOp (§6.3): entry [m*Bmax, I/m] (output of MLPColumn after the activation),
// Shard(features). GEMM (bias on MLP-TP rank 0) -> Partial; reduce-scatter along tokens gives
// member k the summed rows k*Bmax.., its own tokens (the gather order of MLPColumn); the padding
// rows are dropped. Exit: Shard(tokens) = this replica's B tokens. reduce_results is ignored.
#include <algorithm>

#include "ops/gemm_collectives.h"
#include "ops/op_util.h"
#include "ops/ops.h"
#include "tpl/error.h"

namespace tpl::ops {
namespace {

class MlpRowOp final : public LinearOp {
 public:
  MlpRowOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()), comm_(env.groups.mlp_tp()), env_(env) {}
  OpKind kind() const override { return OpKind::kMlpRow; }
  int tp_rank() const override { return comm_.rank(); }
  int tp_size() const override { return comm_.size(); }
  Placement input_placement(const ForwardContext&) const override {
    return Placement::shard_features();
  }
  Placement output_placement(const ForwardContext&) const override {
    return Placement::shard_tokens();
  }
  Tensor forward(TensorView x, const ForwardContext& ctx, const LocalGemm& g) override {
    const auto counts =
        module_group_tokens(ctx, env_.config.layout, env_.groups.world_rank(), comm_.size());
    const std::int64_t bmax = *std::max_element(counts.begin(), counts.end());
    TPL_CHECK_EQ(x.rows(), bmax * comm_.size(), where(),
                 "input must hold every group member's (padded) tokens");
    TensorView xp = input_parallel(x, flags_, tp_size(), tp_rank(), g.in_unit);
    Tensor y = gemm_reduce_scatter(g, xp, comm_, row_bias(tp_rank()), false);
    const std::int64_t mine = counts[comm_.rank()];
    if (mine == bmax) return y;
    return first_rows(g.runtime(), y, mine);
  }

 private:
  Communicator& comm_;
  OpEnv env_;
};

}  // namespace

OpPtr make_mlp_row(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<MlpRowOp>(n, f, env);
}

}  // namespace tpl::ops

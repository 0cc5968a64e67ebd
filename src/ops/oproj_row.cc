// OProjRowParallelOp (§6.4), fine-grained O-proj TP over a module group of size m that spans DP
// replicas (designed for global TP = 1). Entry: this replica's B tokens with all attention
// features, Shard(tokens). Steps: pad to the group's largest B; cut features into m slices of
// c = in/m and send slice k of every token to member k (all-to-all); GEMM with this member's
// weight slice [H, c] (bias on rank 0) -> Partial over all group tokens; reduce-scatter along
// tokens returns each member its own tokens, summed over slices; drop padding.
// Exit: Shard(tokens). reduce_results and input_is_parallel are ignored: the input must carry
// all features (a split input would break the slice exchange; seed §16 item 9).
#include <algorithm>

#include "ops/gemm_collectives.h"
#include "ops/op_util.h"
#include "ops/ops.h"
#include "tpl/error.h"

namespace tpl::ops {
namespace {

class OProjRowOp final : public LinearOp {
 public:
  OProjRowOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()), comm_(env.groups.oproj_tp()), env_(env) {}
  OpKind kind() const override { return OpKind::kOProjRow; }
  int tp_rank() const override { return comm_.rank(); }
  int tp_size() const override { return comm_.size(); }
  Placement input_placement(const ForwardContext&) const override {
    return Placement::shard_tokens();
  }
  Placement output_placement(const ForwardContext&) const override {
    return Placement::shard_tokens();
  }
  Tensor forward(TensorView x, const ForwardContext& ctx, const LocalGemm& g) override {
    const int m = comm_.size();
    const Where w = where();
    const auto counts = module_group_tokens(ctx, env_.config.layout, env_.groups.world_rank(), m);
    TPL_CHECK_EQ(x.rows(), counts[comm_.rank()], w, "input rows must equal this replica's tokens");
    TPL_CHECK_EQ(x.cols() % m, 0, w, "O-proj TP needs the input features (", x.cols(),
                 ") divisible by the O-proj TP size ", m);
    const std::int64_t c = x.cols() / m;
    TPL_CHECK_EQ(c, g.in_features, w, "weight slice width");
    const std::int64_t b = *std::max_element(counts.begin(), counts.end());
    // send[k] = feature slice k of my b (padded) tokens: [m, b, c].
    Runtime& rt = g.runtime();
    Tensor send = rt.empty(x.dtype(), m * b, c);
    for (int k = 0; k < m; ++k) {
      rt.copy(x.col_slice(k * c, c), send.view().row_slice(k * b, x.rows()));
      rt.fill_zero(send.view().row_slice(k * b + x.rows(), b - x.rows()));
    }
    Tensor recv = rt.empty(x.dtype(), m * b, c);  // rows s*b.. = member s's tokens, my slice
    comm_.all_to_all(send, recv);
    Tensor y = gemm_reduce_scatter(g, recv, comm_, row_bias(tp_rank()), false);
    if (x.rows() == b) return y;
    return first_rows(rt, y, x.rows());
  }

 private:
  Communicator& comm_;
  OpEnv env_;
};

}  // namespace

OpPtr make_oproj_row(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<OProjRowOp>(n, f, env);
}

}  // namespace tpl::ops

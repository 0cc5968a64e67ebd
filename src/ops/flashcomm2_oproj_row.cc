// Flashcomm2OProjRowParallelOp (§6.5, §7). Groups: ODP (size G, a block of TP ranks), FC2-OTP
// (size P, stride G; none when P = 1) and TP. TP rank t = j*G + i.
// Entry: all N tokens, this rank's head slice [N, F] (Shard(features) over TP).
//   1. pad to N' (a multiple of T) with zero rows; cut into T chunks of b = N'/T rows;
//   2. reorder: ODP member i receives chunks table[i] = (i, i+G, ..., i+(P-1)G);
//   3. all-to-all in ODP -> [P*b, G*F]: those chunks' tokens with o_proj input slice j; when
//      the heads do not split evenly over TP, member i's slice is F_i wide and the exchange
//      carries unequal pieces (all_to_all_v), [P*b, sum F_i];
//   4. GEMM with weight slice j (the full weight when P = 1); bias on OTP rank 0 (every rank
//      when P = 1, since nothing is summed);
//   5. P > 1: reduce-scatter in OTP -> [b, H]; TP rank t now holds chunk t (Shard(tokens));
//   6. FC1 off for the batch: all-gather over TP and drop the padding -> [N, H] Replicated.
// The exchange moves any dtype, so the W8A8 path can send int8 (half of bf16's bytes).
#include "ops/gemm_collectives.h"
#include "ops/op_util.h"
#include "ops/ops.h"
#include "tpl/error.h"

namespace tpl::ops {
namespace {

class Flashcomm2OProjRowOp final : public LinearOp {
 public:
  Flashcomm2OProjRowOp(const LayerName& n, const LinearFlags& f, const OpEnv& env)
      : LinearOp(n, f, env.groups.world_rank()),
        tp_(env.groups.tp()),
        odp_(env.groups.flashcomm2_odp()),
        otp_(env.groups.flashcomm2_otp()),
        p_(env.groups.flashcomm2_p()),
        table_(flashcomm2_batch_table(tp_.size(), p_)),
        world_rank_(env.groups.world_rank()) {}
  OpKind kind() const override { return OpKind::kFlashcomm2OProjRow; }
  int tp_rank() const override { return otp_ ? otp_->rank() : 0; }
  int tp_size() const override { return otp_ ? otp_->size() : 1; }
  Placement input_placement(const ForwardContext&) const override {
    return Placement::shard_features();
  }
  Placement output_placement(const ForwardContext& ctx) const override {
    return ctx.flash_comm_v1_enabled ? Placement::shard_tokens() : Placement::replicated();
  }

  // The head-slice widths of this rank's ODP members: TP rank j*G + s holds the input features
  // shard_range_units(in / unit, unit, T, j*G + s) (the QKV layer's query-head split).
  std::vector<std::int64_t> odp_widths(const LocalGemm& g) const {
    const int t = tp_.size(), gs = odp_.size(), j = tp_.rank() / gs;
    const std::int64_t unit = std::max<std::int64_t>(1, g.in_unit);
    std::vector<std::int64_t> w(static_cast<std::size_t>(gs));
    for (int s = 0; s < gs; ++s)
      w[static_cast<std::size_t>(s)] =
          shard_range_units(g.full_in_features / unit, unit, t, j * gs + s).size;
    return w;
  }

  // Steps 1-3 on a tensor of any dtype: [N', F] -> [N'/G, sum of the members' F].
  Tensor exchange(Runtime& rt, TensorView xp, const std::vector<std::int64_t>& widths) const {
    const int t = tp_.size(), g = odp_.size();
    const std::int64_t b = xp.rows() / t, f = xp.cols();
    Tensor send = rt.empty(xp.dtype(), xp.rows(), f);
    for (int i = 0; i < g; ++i)
      for (int q = 0; q < p_; ++q)
        rt.copy(xp.row_slice(table_[i][q] * b, b), send.view().row_slice((i * p_ + q) * b, b));
    const std::int64_t rows = static_cast<std::int64_t>(p_) * b;
    std::int64_t total = 0;
    bool even = true;
    for (std::int64_t w : widths) {
      total += w;
      even = even && w == f;
    }
    Tensor out = rt.empty(xp.dtype(), rows, total);
    if (even) {
      Tensor recv = rt.empty(xp.dtype(), xp.rows(), f);  // [G, P*b, F]: source, row, feature
      odp_.all_to_all(send, recv);
      for (int s = 0; s < g; ++s)
        rt.copy(recv.view().row_slice(s * rows, rows), out.view().col_slice(s * f, f));
      return out;
    }
    // Member s sends [P*b, F_s] to every member: pieces of P*b*F_s elements.
    std::vector<std::int64_t> send_counts(static_cast<std::size_t>(g), rows * f), recv_counts;
    for (std::int64_t w : widths) recv_counts.push_back(rows * w);
    Tensor recv = rt.empty(xp.dtype(), 1, rows * total);
    odp_.all_to_all_v(send, send_counts, recv, recv_counts);
    std::int64_t at = 0, col = 0;
    for (std::int64_t w : widths) {
      rt.copy(recv.view().col_slice(at, rows * w).reshape(rows, w), out.view().col_slice(col, w));
      at += rows * w;
      col += w;
    }
    return out;
  }

  Tensor forward(TensorView x, const ForwardContext& ctx, const LocalGemm& g) override {
    const Where w = where();
    const int t = tp_.size();
    TensorView xin = input_parallel(x, flags_, tp_size(), tp_rank(), g.in_unit);
    // The context's pad makes every replica's N' equal; without FC1 a local pad to a multiple of
    // T is enough because this op unpads its own output (fixes seed §16 item 16).
    std::int64_t pad = ctx.pad_size;
    if ((xin.rows() + pad) % t != 0) {
      TPL_CHECK(!ctx.flash_comm_v1_enabled, w, "FC1 is on but rows ", xin.rows(), " + pad_size ",
                pad, " is not a multiple of TP size ", t);
      pad = pad_to_multiple(xin.rows(), t);
    }
    const std::vector<std::int64_t> widths = odp_widths(g);
    std::int64_t slice = 0;
    for (std::int64_t v : widths) slice += v;
    TPL_CHECK(xin.cols() == widths[static_cast<std::size_t>(odp_.rank())] && slice == g.in_features,
              w, "FlashComm2's input is this rank's head slice: ", xin.cols(), " features, ",
              "expected ", widths[static_cast<std::size_t>(odp_.rank())],
              " (ODP slices adding up to ", "the weight slice's ", g.in_features, ")");
    Runtime& rt = g.runtime();
    Tensor xp = pad_rows(rt, xin, pad);
    // W8A8 quantizes before the exchange, so the all-to-all moves int8 (§8.3): the activation
    // scale and offset are per tensor, identical on every rank.
    Tensor gathered =
        g.quantized() ? exchange(rt, g.quantize(xp), widths) : exchange(rt, xp, widths);
    Tensor y;
    if (otp_) {
      y = gemm_reduce_scatter(g, gathered, *otp_, row_bias(tp_rank()), false);
    } else {
      y = g.run(gathered, row_bias(0));
    }
    if (ctx.flash_comm_v1_enabled) return y;
    Tensor all = gather_tokens(rt, tp_, y);
    if (pad == 0) return all;
    return first_rows(rt, all, xin.rows());
  }

 private:
  Communicator& tp_;
  Communicator& odp_;
  Communicator* otp_;
  int p_;
  std::vector<std::vector<int>> table_;
  int world_rank_;
};

}  // namespace

OpPtr make_flashcomm2_oproj_row(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  return std::make_unique<Flashcomm2OProjRowOp>(n, f, env);
}

}  // namespace tpl::ops

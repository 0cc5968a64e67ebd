#include "op_case.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "harness.h"

namespace tpl::testing {

const char* data_name(Data d) {
  return d == Data::kIntF32 ? "int-f32" : d == Data::kIntBF16 ? "int-bf16" : "normal-bf16";
}
const char* bias_name(BiasMode b) {
  return b == BiasMode::kNone ? "no-bias" : b == BiasMode::kAdded ? "bias" : "skip-bias";
}
DType dtype_of(Data d) {
  return d == Data::kIntF32 ? DType::kF32 : DType::kBF16;
}

Tensor make_data(Data d, std::int64_t rows, std::int64_t cols, std::uint64_t seed, float scale) {
  if (d == Data::kNormalBF16) return random_normal(rows, cols, scale, seed, DType::kBF16);
  return random_ints(rows, cols, 2, seed, dtype_of(d));
}

Tensor reference(TensorView x, TensorView w, TensorView b) {
  GemmDesc desc{w.cols(), w.rows(), x.dtype(), w.dtype(), DType::kF32};
  auto g = make_reference_gemm(desc, w, b);
  Tensor y(DType::kF32, x.rows(), w.rows());
  g->run(x, y, !b.empty());
  return y;
}

std::string describe(const Case& c) {
  std::ostringstream os;
  os << c.label << " W=" << c.config.layout.world_size() << " dp=" << c.config.layout.dp
     << " tp=" << c.config.layout.tp << " tokens=" << c.tokens << "+" << c.token_skew << "*d "
     << data_name(c.data) << " " << bias_name(c.bias) << (c.w8a8 ? " w8a8" : "");
  return os.str();
}

std::string run_case(Communicator& w, Case c) {
  const ParallelLayout& l = c.config.layout;
  const RankCoord me = coord_of(l, w.rank());
  const Features f = Features::derive(c.config, c.model);
  ProcessGroups groups(w, l, group_sizes(c.config, f));
  Selector selector(c.config, c.model);
  OpEnv env{c.config, f, groups, nullptr, nullptr};

  LayerSpec spec = c.spec;
  spec.dtype = dtype_of(c.data);
  spec.bias = c.bias != BiasMode::kNone && !c.w8a8;  // W8A8 folds the bias into quant_bias
  spec.flags.skip_bias_add = c.bias == BiasMode::kSkipped;
  spec.flags.return_bias = true;
  std::int64_t out = spec.out_features;
  if (spec.kind == LayerKind::kMergedColumn) {
    out = 0;
    for (auto s : spec.output_sizes) out += s;
  } else if (spec.kind == LayerKind::kQkv) {
    out = (spec.qkv.num_heads + 2 * spec.qkv.num_kv_heads) * spec.qkv.head_dim;
  }
  const float wscale = 1.0f / std::sqrt(static_cast<float>(spec.in_features));
  Tensor weight = make_data(c.data, out, spec.in_features, 1000, wscale);
  Tensor bias = c.bias != BiasMode::kNone ? make_data(c.data, 1, out, 2000, 1.0f) : Tensor();
  W8A8Params qp;
  if (c.w8a8) {
    Tensor calib = make_data(Data::kNormalBF16, 64, spec.in_features, 4000, 1.0f);
    qp = make_w8a8_params(weight, c.bias == BiasMode::kAdded ? bias.view() : TensorView(),
                          calibrate_activation(calib));
  }
  std::unique_ptr<LinearLayer> layer_ptr =
      c.w8a8 ? std::make_unique<LinearLayer>(spec, selector, env, default_cpu_gemm_backend(), qp)
             : std::make_unique<LinearLayer>(spec, selector, env, default_cpu_gemm_backend(),
                                             weight, spec.bias ? bias.view() : TensorView());
  LinearLayer& layer = *layer_ptr;
  if (layer.choice().kind != c.expect_kind)
    return describe(c) + ": selected " + op_kind_name(layer.choice().kind) + ", expected " +
           op_kind_name(c.expect_kind) + "\n" + layer.choice().explanation;

  std::vector<std::int64_t> across(l.dp);
  for (int d = 0; d < l.dp; ++d) across[d] = c.tokens + d * c.token_skew;
  const std::int64_t n = across[me.d];
  ForwardContext ctx = ForwardContext::make(c.config, f, c.model, n,
                                            l.dp > 1 ? across : std::vector<std::int64_t>{});
  // Global problem: replica d's activations and reference output (bias added unless skipped).
  auto x_of = [&](int d) {
    if (c.w8a8) return random_normal(across[d], spec.in_features, 1.f, 3000 + d, spec.dtype);
    return make_data(c.data, across[d], spec.in_features, 3000 + d, 1.0f);
  };
  TensorView ref_bias = spec.bias && !spec.flags.skip_bias_add ? bias.view() : TensorView();
  auto ref_of = [&](TensorView x) {
    if (!c.w8a8) return reference(x, weight, ref_bias);
    Tensor y(DType::kF32, x.rows(), out);
    w8a8_reference(quantize(x, qp.input_scale, qp.input_offset), qp, true, y);
    return y;
  };

  Tensor x = x_of(me.d);
  const int T = l.tp, t = me.t;
  const OpKind kind = layer.choice().kind;
  Tensor input;  // this rank's input
  TensorView in_view;
  Tensor expected;               // what this rank must hold
  std::int64_t valid_rows = -1;  // compare only the first valid_rows rows (-1: all)
  const Placement in_pl = layer.op().input_placement(ctx);
  const Placement out_pl = layer.op().output_placement(ctx);

  switch (kind) {
    case OpKind::kMlpColumn:
    case OpKind::kMlpRow: {
      const int m = c.config.mlp_tp, k = me.d % m, block = me.d / m;
      std::int64_t bmax = 0;
      for (int j = 0; j < m; ++j) bmax = std::max(bmax, across[block * m + j]);
      if (kind == OpKind::kMlpColumn) {
        in_view = x;
        // Expected: all group tokens (padded per member to bmax), my feature rows.
        Tensor all(DType::kF32, m * bmax, out);
        for (int j = 0; j < m; ++j) {
          Tensor xr = x_of(block * m + j);
          Tensor yr = ref_of(xr);
          copy_into(yr, all.view().row_slice(j * bmax, yr.rows()));
        }
        const auto rows = LinearLayer::output_rows(spec, k, m);
        std::int64_t local = 0;
        for (auto r : rows) local += r.size;
        expected = Tensor(DType::kF32, m * bmax, local);
        std::int64_t at = 0;
        for (auto r : rows) {
          copy_into(all.view().col_slice(r.offset, r.size), expected.view().col_slice(at, r.size));
          at += r.size;
        }
        // Padding rows hold GEMM(0) = bias; only real tokens are compared.
        std::string msg;
        Tensor y = layer.forward(in_view, ctx).output;
        for (int j = 0; j < m && msg.empty(); ++j) {
          const std::int64_t rows_j = across[block * m + j];
          msg = compare(y.view().row_slice(j * bmax, rows_j),
                        expected.view().row_slice(j * bmax, rows_j),
                        c.data == Data::kNormalBF16 || c.w8a8 ? 0.03 : 0,
                        c.data == Data::kNormalBF16 || c.w8a8 ? 0.02 : 0,
                        describe(c) + " member " + std::to_string(j) + " tokens");
        }
        return msg;
      }
      // MLPRow: input = all group tokens (padded), my feature block.
      Tensor all_x(spec.dtype, m * bmax, spec.in_features);
      for (int j = 0; j < m; ++j) {
        Tensor xr = x_of(block * m + j);
        copy_into(xr, all_x.view().row_slice(j * bmax, xr.rows()));
      }
      const ShardRange cols = shard_range(spec.in_features, m, k);
      input = Tensor::copy_of(all_x.view().col_slice(cols.offset, cols.size));
      in_view = input;
      expected = ref_of(x);
      break;
    }
    case OpKind::kOProjRow:
    case OpKind::kShardedCpRow:
    case OpKind::kShardedCpColumn:
    case OpKind::kReplicated:
      in_view = x;
      expected = ref_of(x);
      break;
    case OpKind::kStandardColumn:
    case OpKind::kSequenceColumn:
    case OpKind::kFlashcomm2OshardQkv: {
      if (in_pl.kind == PlacementKind::kShard) {  // FC1 sequence shard of the padded batch
        Tensor padded(spec.dtype, n + ctx.pad_size, spec.in_features);
        copy_into(x, padded.view().row_slice(0, n));
        const std::int64_t b = padded.rows() / T;
        input = Tensor::copy_of(padded.view().row_slice(t * b, b));
        in_view = input;
      } else {
        in_view = x;
      }
      Tensor full = ref_of(x);
      if (out_pl.kind == PlacementKind::kShard) {
        const auto rows = LinearLayer::output_rows(spec, layer.tp_rank(), layer.tp_size());
        std::int64_t local = 0;
        for (auto r : rows) local += r.size;
        expected = Tensor(DType::kF32, n, local);
        std::int64_t at = 0;
        for (auto r : rows) {
          copy_into(full.view().col_slice(r.offset, r.size), expected.view().col_slice(at, r.size));
          at += r.size;
        }
      } else {
        expected = std::move(full);
      }
      break;
    }
    case OpKind::kStandardRow:
    case OpKind::kMatmulAllreduceRow:
    case OpKind::kSequenceRow:
    case OpKind::kFlashcomm2OProjRow: {
      // Entry: Shard(features) over TP (the attention layout), or the full input when
      // input_is_parallel is false.
      // FlashComm2's input is the TP attention layout; other row ops shard by their own group.
      const int parts = kind == OpKind::kFlashcomm2OProjRow ? T : layer.tp_size();
      const int part = kind == OpKind::kFlashcomm2OProjRow ? t : layer.tp_rank();
      if (spec.flags.input_is_parallel && parts > 1) {
        const ShardRange cols =
            shard_range_units(spec.in_features / spec.in_unit, spec.in_unit, parts, part);
        input = Tensor::copy_of(x.view().col_slice(cols.offset, cols.size));
        in_view = input;
      } else {
        in_view = x;
      }
      Tensor full = ref_of(x);
      if (out_pl.kind == PlacementKind::kShard) {  // FC1 sequence shard of the padded batch
        const std::int64_t b = (n + ctx.pad_size) / T;
        Tensor padded(DType::kF32, n + ctx.pad_size, out);
        copy_into(full, padded.view().row_slice(0, n));
        expected = Tensor::copy_of(padded.view().row_slice(t * b, b));
        valid_rows = std::clamp<std::int64_t>(n - t * b, 0, b);
      } else {
        expected = std::move(full);
      }
      break;
    }
  }

  LinearOutput result = layer.forward(in_view, ctx);
  Tensor y = std::move(result.output);
  if (!(result.placement == out_pl)) return describe(c) + ": placement mismatch";
  if (spec.flags.skip_bias_add && spec.bias && !result.bias)
    return describe(c) + ": return_bias with skip_bias_add did not return the bias";
  if (out_pl.kind == PlacementKind::kPartial) {
    // Partial: the sum over the group is the value.
    groups.tp().all_reduce(y);
  }
  // W8A8: each rank dequantizes its partial sums, so a reduction adds f32 (or bf16) rounding
  // to the exact integer result. With an activation offset each partial carries a large
  // zero-point term (−offset·Σ W over its slice) that cancels only in the sum, so bf16 partials
  // lose up to a few bf16 ulps of that larger magnitude: bound 0.15 absolute at unit scale.
  const bool w8a8_bf16 = c.w8a8 && c.data == Data::kIntBF16;
  const double atol = w8a8_bf16 ? 0.15 : c.data == Data::kNormalBF16 ? 0.03 : c.w8a8 ? 1e-4 : 0.0;
  const double rtol = w8a8_bf16 || c.data == Data::kNormalBF16 ? 0.02 : c.w8a8 ? 1e-4 : 0.0;
  if (valid_rows >= 0) {
    if (y.rows() != expected.rows())
      return describe(c) + ": output rows " + std::to_string(y.rows()) + " expected " +
             std::to_string(expected.rows());
    return compare(y.view().row_slice(0, valid_rows), expected.view().row_slice(0, valid_rows),
                   atol, rtol,
                   describe(c) + " in " + in_pl.to_string() + " out " + out_pl.to_string());
  }
  return compare(y, expected, atol, rtol,
                 describe(c) + " in " + in_pl.to_string() + " out " + out_pl.to_string());
}

Config tp_config(int tp) {
  Config c;
  c.layout = {1, 1, tp};
  return c;
}

LayerSpec column(const std::string& prefix, std::int64_t in, std::int64_t out) {
  LayerSpec s;
  s.prefix = prefix;
  s.kind = LayerKind::kColumn;
  s.in_features = in;
  s.out_features = out;
  return s;
}
LayerSpec row(const std::string& prefix, std::int64_t in, std::int64_t out) {
  LayerSpec s = column(prefix, in, out);
  s.kind = LayerKind::kRow;
  return s;
}

}  // namespace tpl::testing

// Every op against the single-device reference y = x·Wᵀ + b (seed-spec §15 items 1-5).
//
// The binary runs on W = 1..4 ranks (CTest entries ops_np1..ops_np4). For each op, every layout
// and group size valid at W is tried with tokens {1, 7, 8, 1000, 1001, 1537}, bias
// {none, added, skipped}, and data that is
//   * small integers in f32 and bf16: every product and sum is exact, so outputs must be
//     bit-identical to the reference;
//   * random normal bf16: partial sums are rounded to bf16 before the f32-staged reduction, so
//     the bound is |err| <= 0.03 + 0.02·|expected| (outputs have unit scale).
// Each rank builds its own input slice from the global problem according to the op's entry
// placement and compares its output with the slice of the reference its exit placement names.
// Verdicts are collective (expect_agreed): a failure names the rank, index and values.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <sstream>

#include "harness.h"
#include "progressing_communicator.h"
#include "tpl/backends.h"
#include "tpl/linear.h"
#include "tpl/quant.h"

namespace tpl {
namespace {

using testing::compare;
using testing::expect_agreed;
using testing::world;

enum class Data { kIntF32, kIntBF16, kNormalBF16 };
enum class BiasMode { kNone, kAdded, kSkipped };

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
  if (d == Data::kNormalBF16) return testing::random_normal(rows, cols, scale, seed, DType::kBF16);
  return testing::random_ints(rows, cols, 2, seed, dtype_of(d));
}

// Reference on the exact values of the inputs (bf16 inputs are exact in f32), output in f32.
Tensor reference(TensorView x, TensorView w, TensorView b) {
  GemmDesc desc{w.cols(), w.rows(), x.dtype(), w.dtype(), DType::kF32};
  auto g = make_reference_gemm(desc, w, b);
  Tensor y(DType::kF32, x.rows(), w.rows());
  g->run(x, y, !b.empty());
  return y;
}

// One scenario: a config, a layer, a token count per DP replica, data and bias choices.
struct Case {
  std::string label;
  Config config;
  ModelInfo model;
  LayerSpec spec;
  OpKind expect_kind;
  std::int64_t tokens = 1;  // replica d has tokens + d*token_skew tokens
  std::int64_t token_skew = 0;
  Data data = Data::kIntF32;
  BiasMode bias = BiasMode::kNone;
  bool w8a8 = false;  // W8A8 layer built from the float weights; reference = exact integer math
};

std::string describe(const Case& c) {
  std::ostringstream os;
  os << c.label << " W=" << c.config.layout.world_size() << " dp=" << c.config.layout.dp
     << " tp=" << c.config.layout.tp << " tokens=" << c.tokens << "+" << c.token_skew << "*d "
     << data_name(c.data) << " " << bias_name(c.bias) << (c.w8a8 ? " w8a8" : "");
  return os.str();
}

// Runs one case on every rank of the world; returns this rank's failure message ("" if ok).
std::string run_case(Case c) {
  Communicator& w = world();
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
    if (c.w8a8)
      return testing::random_normal(across[d], spec.in_features, 1.f, 3000 + d, spec.dtype);
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

// Runs a case and reports it collectively; an exception is a failure naming the case.
void check(const Case& c) {
  std::string msg;
  try {
    msg = run_case(c);
  } catch (const std::exception& e) {
    msg = describe(c) + ": threw " + e.what();
  }
  expect_agreed(world(), msg);
}

const std::vector<std::int64_t> kTokens{1, 7, 8, 1000, 1001, 1537};

// Checks the case for every tokens x bias x small-integer data combination.
void check_grid(const Case& base, const std::vector<std::int64_t>& tokens,
                std::initializer_list<BiasMode> biases) {
  for (std::int64_t n : tokens)
    for (BiasMode b : biases)
      for (Data d : {Data::kIntF32, Data::kIntBF16}) {
        Case c = base;
        c.tokens = n;
        c.bias = b;
        c.data = d;
        check(c);
      }
}

// Runs the case over tokens x bias x data and reports collectively.
void sweep(Case base, std::vector<std::int64_t> tokens = kTokens) {
  check_grid(base, tokens, {BiasMode::kNone, BiasMode::kAdded, BiasMode::kSkipped});
  Case c = base;  // random data, bf16, tolerance
  c.tokens = 257;
  c.bias = BiasMode::kAdded;
  c.data = Data::kNormalBF16;
  check(c);
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

const char* kQkv = "model.layers.0.self_attn.qkv_proj";
const char* kO = "model.layers.0.self_attn.o_proj";
const char* kGateUp = "model.layers.0.mlp.gate_up_proj";
const char* kDown = "model.layers.0.mlp.down_proj";

int W() {
  return world().size();
}

TEST(Ops, StandardColumnAndRow) {
  Case c{"standard column", tp_config(W()), {}, column(kQkv, 16, 13), OpKind::kStandardColumn};
  sweep(c);
  c.spec.flags.gather_output = true;
  c.label = "standard column gather_output";
  sweep(c, {1, 7, 1001});
  Case r{"standard row", tp_config(W()), {}, row(kO, 13, 16), OpKind::kStandardRow};
  sweep(r);
  r.label = "standard row !input_is_parallel";
  r.spec.flags.input_is_parallel = false;
  sweep(r, {1, 7, 1001});
}

TEST(Ops, StandardRowPartialWhenNotReducing) {
  Case r{"standard row !reduce_results", tp_config(W()), {}, row(kO, 13, 16), OpKind::kStandardRow};
  r.spec.flags.reduce_results = false;
  for (std::int64_t n : {1, 7, 1001})
    for (BiasMode b : {BiasMode::kNone, BiasMode::kSkipped}) {
      Case c = r;
      c.tokens = n;
      c.bias = b;
      check(c);
    }
}

TEST(Ops, Replicated) {
  Case c{"replicated",
         tp_config(W()),
         {},
         column("model.layers.0.mlp.gate", 16, 5),
         OpKind::kReplicated};
  c.spec.kind = LayerKind::kReplicated;
  sweep(c, {1, 7, 1001});
}

TEST(Ops, MergedColumnAndQkvShards) {
  Case c{"merged gate_up", tp_config(W()), {}, column(kGateUp, 16, 0), OpKind::kStandardColumn};
  c.spec.kind = LayerKind::kMergedColumn;
  c.spec.output_sizes = {11, 11};
  sweep(c, {1, 7, 1001});
  Case q{"qkv gqa", tp_config(W()), {}, column(kQkv, 16, 0), OpKind::kStandardColumn};
  q.spec.kind = LayerKind::kQkv;
  q.spec.qkv = {4, 2, 3};
  sweep(q, {1, 7, 1001});
}

TEST(Ops, SequenceParallelFlashComm1) {
  if (W() < 2) GTEST_SKIP() << "FlashComm1 needs TP > 1";
  for (std::int64_t threshold : {std::int64_t{1000}, std::int64_t{0}})
    for (bool moe : {false, true}) {  // MoE: FC1 always on and no fused reduce-scatter
      Config cfg = tp_config(W());
      cfg.flashcomm1 = true;
      cfg.flashcomm1_threshold = threshold;
      ModelInfo model;
      model.is_moe = moe;
      const std::string tag =
          std::string(moe ? " moe" : " dense") + " thr=" + std::to_string(threshold);
      sweep({"fc1 column" + tag, cfg, model, column(kQkv, 16, 13), OpKind::kSequenceColumn});
      sweep({"fc1 row" + tag, cfg, model, row(kO, 13, 16), OpKind::kSequenceRow});
    }
}

TEST(Ops, SequenceParallelAcrossDpReplicas) {
  if (W() != 4) GTEST_SKIP() << "needs DP=2 x TP=2";
  Config cfg;
  cfg.layout = {1, 2, 2};
  cfg.flashcomm1 = true;
  cfg.flashcomm1_threshold = 0;
  Case c{"fc1 row dp2", cfg, {}, row(kO, 13, 16), OpKind::kSequenceRow};
  c.token_skew = 3;  // replicas hold different token counts; pad equalises them
  sweep(c, {1, 7, 1001});
  Case col{"fc1 column dp2", cfg, {}, column(kQkv, 16, 13), OpKind::kSequenceColumn};
  col.token_skew = 3;
  sweep(col, {1, 7, 1001});
}

TEST(Ops, MatmulAllreduce) {
  Config cfg = tp_config(W());
  cfg.matmul_allreduce = true;
  sweep({"matmul-allreduce", cfg, {}, row(kDown, 13, 16), OpKind::kMatmulAllreduceRow});
}

TEST(Ops, FlashComm2) {
  if (W() < 2) GTEST_SKIP() << "FlashComm2 needs TP > 1";
  for (int p = 1; p < W(); ++p) {
    if (W() % p) continue;
    for (bool fc1 : {false, true}) {
      Config cfg = tp_config(W());
      cfg.flashcomm2_p = p;
      cfg.flashcomm1 = fc1;
      cfg.flashcomm1_threshold = 0;
      const std::string tag = " P=" + std::to_string(p) + (fc1 ? " fc1" : "");
      sweep({"fc2 o_proj" + tag, cfg, {}, row(kO, 24, 16), OpKind::kFlashcomm2OProjRow});
      // Uneven heads: 5 heads of 3 features over 2, 3 or 4 ranks (all_to_all_v).
      Case uneven{
          "fc2 o_proj 5 heads" + tag, cfg, {}, row(kO, 15, 16), OpKind::kFlashcomm2OProjRow};
      uneven.spec.in_unit = 3;
      sweep(uneven, {1, 7, 37});
      cfg.layer_sharding = {"o_proj"};
      sweep({"fc2 oshard qkv" + tag, cfg, {}, column(kQkv, 16, 13), OpKind::kFlashcomm2OshardQkv},
            {1, 7, 1001});
    }
  }
}

TEST(Ops, MlpTensorParallel) {
  for (int tp : {1, 2}) {
    if (W() % tp) continue;
    const int dp = W() / tp;
    for (int m = 1; m <= dp; ++m) {
      if (dp % m) continue;
      for (std::int64_t skew : {0, 2}) {
        Config cfg;
        cfg.layout = {1, dp, tp};
        cfg.mlp_tp = m;
        const std::string tag = " m=" + std::to_string(m) + " skew=" + std::to_string(skew);
        Case col{"mlp column" + tag, cfg, {}, column(kGateUp, 16, 0), OpKind::kMlpColumn};
        col.spec.kind = LayerKind::kMergedColumn;
        col.spec.output_sizes = {11, 11};
        col.token_skew = skew;
        sweep(col, {1, 7, 1001});
        Case r{"mlp row" + tag, cfg, {}, row(kDown, 13, 16), OpKind::kMlpRow};
        r.token_skew = skew;
        sweep(r, {1, 7, 1001});
      }
    }
  }
}

TEST(Ops, OProjTensorParallel) {
  for (int m = 1; m <= W(); ++m) {
    if (W() % m) continue;
    for (std::int64_t skew : {0, 3}) {
      Config cfg;
      cfg.layout = {1, W(), 1};
      cfg.oproj_tp = m;
      cfg.deployment = Deployment::kDecode;
      Case r{"oproj tp m=" + std::to_string(m), cfg, {}, row(kO, 24, 16), OpKind::kOProjRow};
      r.token_skew = skew;
      sweep(r, {1, 7, 1001});
    }
  }
}

TEST(Ops, ShardedContextParallel) {
  if (W() < 2) GTEST_SKIP() << "DSA-CP rides on FlashComm1, which needs TP > 1";
  Config cfg = tp_config(W());
  cfg.flashcomm1 = true;
  cfg.deployment = Deployment::kPrefill;
  cfg.layer_sharding = {"q_b_proj", "o_proj"};
  ModelInfo dsa;
  dsa.has_index_topk = true;
  sweep({"dsa-cp row", cfg, dsa, row(kO, 13, 16), OpKind::kShardedCpRow}, {1, 7, 1001});
  sweep({"dsa-cp column", cfg, dsa, column("model.layers.0.self_attn.q_b_proj", 16, 13),
         OpKind::kShardedCpColumn},
        {1, 7, 1001});
}

TEST(Ops, SharedExpertsRunUnshardedUnderSharedExpertDp) {
  if (W() < 2) GTEST_SKIP();
  Config cfg = tp_config(W());
  cfg.flashcomm1 = true;
  Case c{"shared expert down",
         cfg,
         {},
         row("model.layers.5.mlp.shared_experts.down_proj", 13, 16),
         OpKind::kStandardRow};
  sweep(c, {1, 7, 1001});
}

TEST(Ops, RowWithoutReductionRejectsAnAddedBias) {
  Config cfg = tp_config(W());
  const Features f = Features::derive(cfg, {});
  ProcessGroups groups(world(), cfg.layout, group_sizes(cfg, f));
  Selector sel(cfg, {});
  OpEnv env{cfg, f, groups, nullptr};
  LayerSpec s = row(kO, 8, 4);
  s.bias = true;
  s.flags.reduce_results = false;
  Tensor w(DType::kF32, 4, 8), b(DType::kF32, 1, 4);
  EXPECT_THROW(LinearLayer(s, sel, env, default_cpu_gemm_backend(), w, b), InvalidArgument);
}

// Every op with W8A8 layers: quantize, int8 GEMM (int32 accumulation), dequantize; against the
// exact integer reference on the single-device problem. quant_bias (bias + zero-point
// correction) is added once per reduction.
void sweep_w8a8(Case base, std::vector<std::int64_t> tokens = {1, 7, 1001}) {
  base.w8a8 = true;
  check_grid(base, tokens, {BiasMode::kNone, BiasMode::kAdded});
}

TEST(OpsW8A8, EveryOp) {
  sweep_w8a8({"std column", tp_config(W()), {}, column(kQkv, 16, 13), OpKind::kStandardColumn});
  sweep_w8a8({"std row", tp_config(W()), {}, row(kO, 13, 16), OpKind::kStandardRow});
  Case rep{"replicated",
           tp_config(W()),
           {},
           column("model.layers.0.mlp.gate", 16, 5),
           OpKind::kReplicated};
  rep.spec.kind = LayerKind::kReplicated;
  sweep_w8a8(rep);
  Config mar = tp_config(W());
  mar.matmul_allreduce = true;
  sweep_w8a8({"matmul-allreduce", mar, {}, row(kDown, 13, 16), OpKind::kMatmulAllreduceRow});
  if (W() >= 2) {
    for (bool moe : {false, true})
      for (bool int8_gather : {false, true}) {
        Config fc1 = tp_config(W());
        fc1.flashcomm1 = true;
        fc1.flashcomm1_threshold = 0;
        fc1.fc1_quantized_allgather = int8_gather;
        ModelInfo model;
        model.is_moe = moe;  // MoE: unfused reduce-scatter
        const std::string tag =
            std::string(moe ? " moe" : " dense") + (int8_gather ? " int8-gather" : "");
        sweep_w8a8({"fc1 column" + tag, fc1, model, column(kQkv, 16, 13), OpKind::kSequenceColumn});
        sweep_w8a8({"fc1 row" + tag, fc1, model, row(kO, 13, 16), OpKind::kSequenceRow});
      }
    for (int p = 1; p < W(); ++p) {
      if (W() % p) continue;
      Config fc2 = tp_config(W());
      fc2.flashcomm2_p = p;
      sweep_w8a8({"fc2 o_proj P=" + std::to_string(p),
                  fc2,
                  {},
                  row(kO, 24, 16),
                  OpKind::kFlashcomm2OProjRow});
    }
    Config dsa = tp_config(W());
    dsa.flashcomm1 = true;
    dsa.deployment = Deployment::kPrefill;
    dsa.layer_sharding = {"o_proj"};
    ModelInfo dsa_model;
    dsa_model.has_index_topk = true;
    sweep_w8a8({"dsa-cp row", dsa, dsa_model, row(kO, 13, 16), OpKind::kShardedCpRow});
  }
  Config mlp;
  mlp.layout = {1, W(), 1};
  mlp.mlp_tp = W();
  Case mc{"mlp column", mlp, {}, column(kGateUp, 16, 0), OpKind::kMlpColumn};
  mc.spec.kind = LayerKind::kMergedColumn;
  mc.spec.output_sizes = {11, 11};
  mc.token_skew = 2;
  sweep_w8a8(mc);
  Case mr{"mlp row", mlp, {}, row(kDown, 13, 16), OpKind::kMlpRow};
  mr.token_skew = 2;
  sweep_w8a8(mr);
  Config otp;
  otp.layout = {1, W(), 1};
  otp.oproj_tp = W();
  otp.deployment = Deployment::kDecode;
  sweep_w8a8({"oproj tp", otp, {}, row(kO, 24, 16), OpKind::kOProjRow});
}

// One rank: the W8A8 layer is bit-identical to the exact integer reference (f32 output), and the
// quantization error against the float layer is small; it is reported.
TEST(OpsW8A8, ExactOnOneRankAndQuantizationError) {
  LocalCommunicator one;
  Config cfg;
  const Features f = Features::derive(cfg, {});
  ProcessGroups groups(one, cfg.layout, group_sizes(cfg, f));
  Selector sel(cfg, {});
  OpEnv env{cfg, f, groups};
  const std::int64_t k = 512, n = 384, m = 129;
  Tensor w = testing::random_normal(n, k, 1.f / std::sqrt(float(k)), 5);
  Tensor b = testing::random_normal(1, n, 0.5f, 6);
  Tensor x = testing::random_normal(m, k, 1.f, 7);
  const W8A8Params qp = make_w8a8_params(w, b, calibrate_activation(x));
  LayerSpec s = column(kQkv, k, n);
  LinearLayer lq(s, sel, env, default_cpu_gemm_backend(), qp);
  Tensor y = lq.forward(x, ForwardContext::make(cfg, f, {}, m)).output;
  Tensor ref(DType::kF32, m, n);
  w8a8_reference(quantize(x, qp.input_scale, qp.input_offset), qp, true, ref);
  EXPECT_EQ(compare(y, ref, 0, 0, "w8a8 vs integer reference"), "");
  Tensor yf = reference(x, w, b);
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      const double d = get_f32(y, i, j) - get_f32(yf, i, j);
      num += d * d;
      den += double(get_f32(yf, i, j)) * get_f32(yf, i, j);
    }
  const double rel = std::sqrt(num / den);
  RecordProperty("w8a8_rel_l2_error", std::to_string(rel));
  if (world().rank() == 0)
    std::printf("W8A8 vs float relative L2 error (K=%lld): %.3e\n", (long long)k, rel);
  EXPECT_LT(rel, 2e-2);
}

// Rounding of the activation quantizer: half to even, saturating.
TEST(OpsW8A8, QuantizerRoundsHalfToEvenAndSaturates) {
  EXPECT_EQ(quantize_value(0.5f, 1.f, 0), 0);
  EXPECT_EQ(quantize_value(1.5f, 1.f, 0), 2);
  EXPECT_EQ(quantize_value(2.5f, 1.f, 0), 2);
  EXPECT_EQ(quantize_value(-0.5f, 1.f, 0), 0);
  EXPECT_EQ(quantize_value(-1.5f, 1.f, 0), -2);
  EXPECT_EQ(quantize_value(1000.f, 1.f, 0), 127);
  EXPECT_EQ(quantize_value(-1000.f, 1.f, 0), -128);
  EXPECT_EQ(quantize_value(0.f, 1.f, -5), -5);
}

// The prefetch hook runs once after every row op, never after a column op, and cannot change
// the numbers (it only sees a const view of the output).
TEST(Ops, WeightPrefetchHookRunsAfterRowOps) {
  struct Counter : WeightPrefetchHook {
    std::vector<std::string> seen;
    void after_row_op(const LayerName& l, const ForwardContext&, TensorView) override {
      seen.push_back(l.prefix);
    }
  } hook;
  Config cfg = tp_config(W());
  const Features f = Features::derive(cfg, {});
  ProcessGroups groups(world(), cfg.layout, group_sizes(cfg, f));
  Selector sel(cfg, {});
  OpEnv env{cfg, f, groups, nullptr, nullptr, &hook};
  LayerSpec up = column(kGateUp, 8, 8), down = row(kDown, 8, 8);
  Tensor w1 = testing::random_ints(8, 8, 2, 1), w2 = testing::random_ints(8, 8, 2, 2);
  LinearLayer l1(up, sel, env, default_cpu_gemm_backend(), w1, {});
  LinearLayer l2(down, sel, env, default_cpu_gemm_backend(), w2, {});
  const ForwardContext ctx = ForwardContext::make(cfg, f, {}, 5);
  Tensor x = testing::random_ints(5, 8, 2, 3);
  Tensor h = l1.forward(x, ctx).output;
  l2.forward(h, ctx);
  ASSERT_EQ(hook.seen.size(), 1u);
  EXPECT_EQ(hook.seen[0], kDown);
}

// Fused (chunked, overlapped on a CommWorker) paths against the unfused path on the same data.
// Chunks are row blocks, so every element's reduction sums the same operands. With 2 ranks the
// results must be bit-identical for random data; with 3-4 ranks MPI may pick a different
// summation order for a different message size, so random data gets a 1-ulp-scale bound and
// small-integer data (exact sums) must still be bit-identical.
// Runs one layer unfused and fused on the same input; returns (unfused, fused). The fused layer
// overlaps its collectives on `worker` (the MPI way) or, with worker == nullptr, through a
// communicator whose async collectives progress on their own (the NCCL way; see
// progressing_communicator.h). x_of(ctx) builds this rank's input for the batch.
struct FusedRun {
  Tensor plain, fused;
  std::string op;
  std::int64_t fused_collectives = 0;  // TP collectives the fused forward issued
};
template <typename XOf>
FusedRun run_fused_pair(const Config& cfg, LayerSpec s, Data data, std::int64_t n,
                        CommWorker* worker, XOf&& x_of) {
  const Features f = Features::derive(cfg, {});
  ProcessGroups groups(world(), cfg.layout, group_sizes(cfg, f));
  std::unique_ptr<Communicator> async_world;
  std::unique_ptr<ProcessGroups> async_groups;
  if (!worker) {
    async_world =
        std::make_unique<testing::ProgressingCommunicator>(world().split(0, world().rank()));
    async_groups = std::make_unique<ProcessGroups>(*async_world, cfg.layout, group_sizes(cfg, f));
  }
  Selector sel(cfg, {});
  s.dtype = dtype_of(data);
  s.bias = true;
  Tensor w = make_data(data, s.out_features, s.in_features, 11, 0.15f);
  Tensor b = make_data(data, 1, s.out_features, 12, 1.f);
  OpEnv plain{cfg, f, groups, nullptr, nullptr};
  OpEnv fused{cfg, f, worker ? groups : *async_groups, nullptr, worker};
  LinearLayer l_plain(s, sel, plain, default_cpu_gemm_backend(), w, b);
  LinearLayer l_fused(s, sel, fused, default_cpu_gemm_backend(), w, b);
  const ForwardContext ctx = ForwardContext::make(cfg, f, {}, n);
  Tensor x = x_of(ctx);
  FusedRun r;
  r.plain = l_plain.forward(x, ctx).output;
  Communicator& tp = fused.groups.tp();
  const std::int64_t before = tp.stats().calls;
  r.fused = l_fused.forward(x, ctx).output;
  r.fused_collectives = tp.stats().calls - before;
  r.op = op_kind_name(l_fused.choice().kind);
  return r;
}

TEST(Ops, FusedAllGatherGemmMatchesUnfused) {
  if (W() < 2) GTEST_SKIP() << "fusion needs a group";
  CommWorker worker;
  for (bool async : {false, true})
    for (Data data : {Data::kIntF32, Data::kNormalBF16})
      for (int chunks : {2, 3, 4})
        for (std::int64_t n : {7, 1001, 1537}) {
          Config cfg = tp_config(W());
          cfg.flashcomm1 = true;
          cfg.flashcomm1_threshold = 0;
          cfg.fused_chunks = chunks;
          // Input: this rank's sequence shard of the padded batch.
          const FusedRun r = run_fused_pair(
              cfg, column(kQkv, 40, 24), data, n, async ? nullptr : &worker,
              [&](const ForwardContext& ctx) {
                return make_data(data, (n + ctx.pad_size) / W(), 40, 23 + world().rank(), 1.f);
              });
          // Chunked: one collective per chunk (each chunk has rows at these sizes).
          expect_agreed(world(), r.fused_collectives >= 2
                                     ? ""
                                     : "all-gather+GEMM not chunked: " +
                                           std::to_string(r.fused_collectives) + " collectives");
          // No reduction: every output row is one GEMM row, so the results are bit-identical.
          expect_agreed(world(), compare(r.fused, r.plain, 0, 0,
                                         std::string("all-gather+GEMM fused (") +
                                             (async ? "async comm" : "worker") + ") vs unfused " +
                                             data_name(data) + " chunks=" + std::to_string(chunks) +
                                             " tokens=" + std::to_string(n)));
        }
}

TEST(Ops, FusedPathsMatchUnfused) {
  if (W() < 2) GTEST_SKIP() << "fusion needs a group";
  CommWorker worker;
  for (bool async : {false, true})
    for (bool fc1 : {false, true})
      for (Data data : {Data::kIntF32, Data::kNormalBF16, Data::kIntBF16})
        for (int chunks : {2, 3, 4})
          for (std::int64_t n : {7, 1001, 1537}) {
            Config cfg = tp_config(W());
            cfg.flashcomm1 = fc1;
            cfg.flashcomm1_threshold = 0;
            cfg.matmul_allreduce = !fc1;
            cfg.fused_chunks = chunks;
            // Input: all tokens, this rank's feature block.
            const FusedRun r =
                run_fused_pair(cfg, row(kO, 40, 24), data, n, async ? nullptr : &worker,
                               [&](const ForwardContext&) {
                                 Tensor x = make_data(data, n, 40, 13, 1.f);
                                 const ShardRange cols = shard_range(40, W(), world().rank());
                                 return Tensor::copy_of(x.view().col_slice(cols.offset, cols.size));
                               });
            expect_agreed(world(), r.fused_collectives >= 2
                                       ? ""
                                       : r.op + " not chunked: " +
                                             std::to_string(r.fused_collectives) + " collectives");
            const bool exact = W() == 2 || data != Data::kNormalBF16;
            expect_agreed(world(), compare(r.fused, r.plain, exact ? 0 : 0.02, exact ? 0 : 0.01,
                                           r.op + " fused (" + (async ? "async comm" : "worker") +
                                               ") vs unfused " + data_name(data) +
                                               " chunks=" + std::to_string(chunks) +
                                               " tokens=" + std::to_string(n)));
          }
}

}  // namespace
}  // namespace tpl

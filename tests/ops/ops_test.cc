// Every op against the single-device reference y = x·Wᵀ + b (seed-spec §15 items 1-5).
//
// The binary runs on W = 1..4 ranks (CTest entries ops_np1..ops_np4). For each op, every layout
// and group size valid at W is tried with tokens {1, 7, 8, 1000, 1001, 1537}, bias
// {none, added, skipped}, and small-integer (exact) or random bf16 data; op_case.h has how a
// case is run and compared. Verdicts are collective (expect_agreed): a failure names the rank,
// index and values.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <sstream>

#include "harness.h"
#include "op_case.h"
#include "progressing_communicator.h"
#include "tpl/backends.h"
#include "tpl/linear.h"
#include "tpl/quant.h"

namespace tpl {
namespace {

using namespace tpl::testing;

// Runs a case and reports it collectively; an exception is a failure naming the case.
void check(const Case& c) {
  std::string msg;
  try {
    msg = run_case(world(), c);
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
  // 128 f32 features: 600 and 1000 tokens give outputs of 300 and 500 KiB, which SHM's GEMM
  // writes straight into its slot (two-shot, at most one 1 MiB slot); 2100 tokens do not fit.
  Case wide{
      "standard row, 128 features", tp_config(W()), {}, row(kO, 13, 128), OpKind::kStandardRow};
  check_grid(wide, {600, 1000, 2100}, {BiasMode::kNone, BiasMode::kAdded});
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

// gather_output on QKV checks q, k and v (out_features is not given for QKV): a KV head shared
// by ranks is refused when the layer is built, not in the first forward's gather (tpl_stress
// found the latter: "local shard width does not follow the uneven split").
TEST(Ops, QkvGatherOutputNeedsKvHeadsSplitEvenly) {
  if (W() < 2) GTEST_SKIP() << "gather_output needs TP > 1";
  Config cfg = tp_config(W());
  const Features f = Features::derive(cfg, {});
  ProcessGroups groups(world(), cfg.layout, group_sizes(cfg, f));
  Selector sel(cfg, {});
  OpEnv env{cfg, f, groups, nullptr};
  LayerSpec s = column(kQkv, 8, 0);
  s.kind = LayerKind::kQkv;
  s.qkv = {4 * W(), 1, 2};  // one KV head, shared by every rank
  s.flags.gather_output = true;
  Tensor w(DType::kF32, (4 * W() + 2) * 2, 8);
  const std::string msg = message_of(
      [&] { LinearLayer layer(s, sel, env, default_cpu_gemm_backend(), w, TensorView()); });
  expect_agreed(world(), msg.find("gather_output on a merged/QKV layer needs every logical output "
                                  "divisible by the TP size") != std::string::npos
                             ? ""
                             : "expected the gather_output refusal, got: " + msg);
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

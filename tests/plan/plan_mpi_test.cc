// At 1-4 ranks: the cost model against the ops it models (the bytes it predicts per layer are
// the bytes the stack's communicators counted in a real forward), and a DecoderStack built from
// a Plan, which must run each batch exactly as a stack of its bucket's strategy would.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "harness.h"
#include "tpl/comm_worker.h"
#include "tpl/cost_model.h"
#include "tpl/error.h"
#include "tpl/model.h"
#include "tpl/plan.h"

namespace tpl {
namespace {

MachineProfile flat_profile(int group) {
  MachineProfile p;
  for (const char* dt : {"f32", "bf16", "int8"}) p.gemm[dt] = {{64, 64, "x", {{1, 1}, {16, 2}}}};
  for (Collective c : {Collective::kAllReduce, Collective::kReduceScatter, Collective::kAllGather,
                       Collective::kAllToAll, Collective::kBroadcast})
    for (int g = 2; g <= group; ++g)
      p.collectives[MachineProfile::collective_key(c, g)] = {{4096, 1}, {1 << 20, 2}};
  p.copy_gbps = 1;
  return p;
}

ModelSpec mha12() {
  // 12 heads of 16 (MHA, so every TP size up to 12 splits the attention), an intermediate size
  // that 3 ranks split unevenly.
  return ModelSpec::from_hf_json({{"model_type", "llama"},
                                  {"hidden_size", 192},
                                  {"intermediate_size", 352},
                                  {"num_attention_heads", 12},
                                  {"num_key_value_heads", 12},
                                  {"num_hidden_layers", 2}},
                                 "mha12");
}

// The layers whose counted bytes differ from the predicted ones (empty when all agree).
std::string bytes_mismatches(const std::vector<LayerReport>& rep, const StackPrediction& pred) {
  std::string bad;
  for (std::size_t i = 0; i < rep.size(); ++i)
    if (rep[i].prefix != pred.layers[i].prefix ||
        std::abs(rep[i].bytes_sent - pred.layers[i].bytes_sent) > 1e-6 * (1 + rep[i].bytes_sent))
      bad += rep[i].prefix + " (" + rep[i].op + "): counted " + std::to_string(rep[i].bytes_sent) +
             ", predicted " + std::to_string(pred.layers[i].bytes_sent) + "; ";
  return bad;
}

// DeepSeek MLA with 12 heads, so 1-4 ranks split them evenly and every rank sends what the cost
// model prices (with uneven heads it prices the widest slice, rank 0's); with index_topk every
// FC1 config is DSA-CP.
ModelSpec mla12(bool dsa) {
  nlohmann::json j{{"model_type", dsa ? "deepseek_v32" : "deepseek_v3"},
                   {"hidden_size", 96},
                   {"intermediate_size", 160},
                   {"num_attention_heads", 12},
                   {"num_hidden_layers", 2},
                   {"q_lora_rank", 40},
                   {"kv_lora_rank", 24},
                   {"qk_nope_head_dim", 8},
                   {"qk_rope_head_dim", 4},
                   {"v_head_dim", 8}};
  if (dsa) j["index_topk"] = 64;
  return ModelSpec::from_hf_json(j, dsa ? "dsa12" : "mla12");
}

// The decoder's MLA and DSA-CP collectives (the token gather, the latent gather, the head
// exchange to o_proj) and the ShardedCP ops are priced byte for byte as the stack counts them.
TEST(CostModelVsOps, MlaAndDsaCpBytesMatchTheCountedBytes) {
  Communicator& world = testing::world();
  const int w = world.size();
  if (w < 2) GTEST_SKIP() << "FC1 and DSA-CP need TP > 1";
  const CostModel cm(flat_profile(w));
  const auto weights = make_random_weights(4);
  const nlohmann::json fc1{{"flashcomm1", true}, {"flashcomm1_threshold", 0}};
  for (bool dsa : {false, true})
    for (nlohmann::json j :
         {nlohmann::json::object(), fc1,
          nlohmann::json{
              {"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"deployment", "prefill"}},
          nlohmann::json{{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"flashcomm2_p", 1}}}) {
      const ModelSpec model = mla12(dsa);
      j["tp"] = w, j["dp"] = 1, j["pp"] = 1;
      const Config cfg = Config::from_json(j);
      for (std::int64_t n : {7, 33}) {
        SCOPED_TRACE(model.name + " " + j.dump() + " tokens=" + std::to_string(n));
        const StackPrediction pred = cm.predict(model, cfg, w, n, {});
        DecoderStack stack(world, model, cfg, *weights, StackOptions{});
        stack.forward(testing::random_normal(n, model.hidden, 1.f, 6));
        const auto& rep = stack.report();
        ASSERT_EQ(rep.size(), pred.layers.size());
        testing::expect_agreed(world, bytes_mismatches(rep, pred));
      }
    }
}

TEST(CostModelVsOps, PredictedBytesMatchTheCountedBytes) {
  Communicator& world = testing::world();
  const int w = world.size();
  const ModelSpec model = mha12();
  const CostModel cm(flat_profile(w));
  const auto weights = make_random_weights(3);
  std::vector<nlohmann::json> configs{
      nlohmann::json::object(),
      {{"flashcomm1", true}, {"flashcomm1_threshold", 0}},
      {{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"fused_chunks", 1}},
      {{"matmul_allreduce", true}},
      {{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"flashcomm2_p", 1}}};
  // MLP-TP and O-proj-TP: TP = 1, every rank its own DP replica, one module group.
  if (w > 1) {
    configs.push_back({{"tp", 1}, {"dp", w}, {"mlp_tp", w}});
    configs.push_back({{"tp", 1}, {"dp", w}, {"oproj_tp", w}, {"deployment", "decode"}});
  }
  for (auto j : configs) {
    if (!j.contains("tp")) j["tp"] = w, j["dp"] = 1;
    j["pp"] = 1;
    if (w == 1 && j.contains("flashcomm1")) continue;  // FlashComm1 needs TP > 1
    const Config cfg = Config::from_json(j);
    for (std::int64_t n : {7, 33}) {
      SCOPED_TRACE(j.dump() + " tokens=" + std::to_string(n));
      StackPrediction pred;
      try {
        pred = cm.predict(model, cfg, w, n, {});
      } catch (const Unsupported& e) {
        continue;  // e.g. FlashComm2 with unequal head slices at 3 ranks
      }
      DecoderStack stack(world, model, cfg, *weights, StackOptions{});
      stack.forward(testing::random_normal(n, model.hidden, 1.f, 5));
      const auto& rep = stack.report();
      ASSERT_EQ(rep.size(), pred.layers.size());
      testing::expect_agreed(world, bytes_mismatches(rep, pred));
    }
  }
}

Config config_of(nlohmann::json j, int w) {
  j["tp"] = w, j["dp"] = 1, j["pp"] = 1;
  return Config::from_json(j);
}

// A two-bucket plan: `small` up to 64 tokens, `large` above.
Plan two_bucket_plan(const ModelSpec& model, int w, const std::string& small, const Config& cs,
                     const std::string& large, const Config& cl) {
  Plan plan;
  plan.model = model.name;
  plan.world = plan.tp = w;
  plan.dp = 1;
  plan.layout = weight_layout_of(cs, model.info);
  plan.buckets = {{16, 64, 0.5, small, 1, "", 0, ""}, {1024, -1, 0.5, large, 1, "", 0, ""}};
  plan.configs = {{small, cs}, {large, cl}};
  return plan;
}

TEST(PlanStack, EachBatchRunsItsBucketsStrategyBitExactly) {
  Communicator& world = testing::world();
  const int w = world.size();
  const ModelSpec model = mha12();
  const auto weights = make_random_weights(3);
  // Standard TP for decode; above 64 tokens FlashComm1 with its fused (chunked) paths, or
  // matmul-allreduce on one rank, where FlashComm1 does not apply.
  const Config standard = config_of(nlohmann::json::object(), w);
  const std::string large_name = w > 1 ? "fc1" : "matmul-allreduce";
  const Config large =
      w > 1 ? config_of({{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"fused_chunks", 3}}, w)
            : config_of({{"matmul_allreduce", true}, {"fused_chunks", 3}}, w);
  const Plan plan = two_bucket_plan(model, w, "standard", standard, large_name, large);
  // One fixed GEMM: the cpu backend times its candidates per stack, so two stacks may round
  // differently (a layer's variants share its one GEMM).
  StackOptions so;
  so.backend = GemmBackend::kOneDnn;
  DecoderStack planned(world, model, plan, *weights, so);
  DecoderStack alone_small(world, model, standard, *weights, so);
  DecoderStack alone_large(world, model, large, *weights, so);
  EXPECT_EQ(planned.num_strategies(), 2);
  std::string bad;
  // Awkward counts on both sides of the edge, twice each, in an order that switches back.
  for (std::int64_t n : {7, 65, 64, 203, 1, 65}) {
    const Tensor x = testing::random_normal(n, model.hidden, 1.f, 11 + n);
    const std::string expect = n <= 64 ? "standard" : large_name;
    if (planned.strategy_for(n) != expect)
      bad += "tokens " + std::to_string(n) + " took " + planned.strategy_for(n) + "; ";
    DecoderStack& alone = n <= 64 ? alone_small : alone_large;
    const std::vector<LayerReport> p0 = planned.report(), a0 = alone.report();
    const Tensor y = planned.forward(x);
    const Tensor want = alone.forward(x);
    bad += testing::compare(y, want, 0, 0, "tokens " + std::to_string(n) + " vs " + expect);
    // The same collectives ran: at 2 ranks sums agree bit for bit whatever the strategy, but
    // FC1 pads odd token counts, so its bytes differ from plain TP's.
    for (std::size_t l = 0; l < p0.size(); ++l) {
      const double got = planned.report()[l].bytes_sent - p0[l].bytes_sent;
      const double exp = alone.report()[l].bytes_sent - a0[l].bytes_sent;
      if (got != exp)
        bad += "tokens " + std::to_string(n) + " " + p0[l].prefix + ": sent " +
               std::to_string(got) + " bytes, " + expect + " alone sends " + std::to_string(exp) +
               "; ";
    }
  }
  // The report names variant 0's ops; times and bytes accumulate over both strategies.
  for (const auto& r : planned.report())
    if (r.bytes_sent <= 0 && w > 1) bad += r.prefix + " counted no bytes; ";
  // forward_with pins a strategy against the buckets (plan --check's A/B runs): each side of
  // the edge run with the other bucket's strategy, as that strategy's own stack computes it.
  if (planned.strategy_names() != std::vector<std::string>{"standard", large_name})
    bad += "strategy_names: " + planned.strategy_names().front() + ", ...; ";
  for (std::int64_t n : {7, 203}) {
    const std::string other = n <= 64 ? large_name : "standard";
    const Tensor x = testing::random_normal(n, model.hidden, 1.f, 31 + n);
    bad += testing::compare(planned.forward_with(x, other),
                            (n <= 64 ? alone_large : alone_small).forward(x), 0, 0,
                            "forward_with " + other + " at tokens " + std::to_string(n));
  }
  const Tensor x = testing::random_normal(3, model.hidden, 1.f, 5);
  try {
    planned.forward_with(x, "fc9");
    bad += "forward_with(fc9) did not throw; ";
  } catch (const InvalidArgument& e) {
    if (std::string(e.what()).find("holds: standard, " + large_name) == std::string::npos)
      bad += std::string("forward_with(fc9): ") + e.what() + "; ";
  }
  testing::expect_agreed(world, bad);
}

// overlap = auto takes the worker only when every rank has a core to spare for it.
TEST(PlanStack, OverlapAutoIsResolvedOnceAndAgreed) {
  Communicator& world = testing::world();
  const int w = world.size();
  const ModelSpec model = mha12();
  const auto weights = make_random_weights(3);
  const bool spare = worker_has_spare_core(world);
  std::string bad;
  for (const char* ov : {"auto", "on", "off"}) {
    DecoderStack s(world, model, config_of({{"matmul_allreduce", true}, {"overlap", ov}}, w),
                   *weights, StackOptions{});
    const bool want = std::string(ov) == "on" || (std::string(ov) == "auto" && spare);
    if (s.overlap_for(2048) != want)
      bad += std::string("overlap ") + ov + ": stack says " + (want ? "off" : "on") + "; ";
  }
  testing::expect_agreed(world, bad);
}

// A plan's communicator per group (Plan::comms) serves the stack's groups, whatever serves the
// world, and the result is the world's stack's: bit for bit where both sum in member order
// (SHM, or 2 ranks), within the rounding of a reordered sum where MPI picks its own order.
TEST(PlanStack, GroupsAreServedByThePlansCommunicators) {
  Communicator& world = testing::world();
  const int w = world.size();
  const ModelSpec model = mha12();
  const auto weights = make_random_weights(3);
  const Config standard = config_of(nlohmann::json::object(), w);
  const Config fc1 = w > 1 ? config_of({{"flashcomm1", true}, {"flashcomm1_threshold", 0}}, w)
                           : config_of({{"matmul_allreduce", true}}, w);  // FC1 needs TP > 1
  StackOptions so;
  so.backend = GemmBackend::kOneDnn;
  DecoderStack alone_small(world, model, standard, *weights, so);
  DecoderStack alone_large(world, model, fc1, *weights, so);
  std::string bad;
  for (const CommKind kind : {CommKind::kMpi, CommKind::kShm}) {
    const std::string k = comm_kind_name(kind);
    Plan plan = two_bucket_plan(model, w, "standard", standard, "fc1", fc1);
    plan.comms = {{"tp", kind}};
    DecoderStack planned(world, model, plan, *weights, so);
    if (planned.groups().tp().kind_name() != k)
      bad += "tp: " + k + " asked, " + planned.groups().tp().name() + " made; ";
    const bool exact = w <= 2 || (kind == CommKind::kShm && world.kind_name() == "shm");
    for (std::int64_t n : {7, 203}) {
      const Tensor x = testing::random_normal(n, model.hidden, 1.f, 40 + n);
      const Tensor want = (n <= 64 ? alone_small : alone_large).forward(x);
      bad += testing::compare(
          planned.forward(x), want, exact ? 0 : 1e-5, exact ? 0 : 1e-5,
          "tp on " + k + " vs the " + world.name() + " world, tokens " + std::to_string(n));
    }
  }
  testing::expect_agreed(world, bad);
}

TEST(PlanStack, StrategiesWithAnotherWeightLayoutAreRefused) {
  Communicator& world = testing::world();
  const int w = world.size();
  if (w < 2) GTEST_SKIP() << "MLP-TP and FlashComm2 layouts need at least 2 ranks";
  const ModelSpec model = mha12();
  const auto weights = make_random_weights(3);
  const Config standard = config_of(nlohmann::json::object(), w);
  // FlashComm2 with P = 1 keeps the whole o_proj on every rank: another weight layout.
  const Config fc2 =
      config_of({{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"flashcomm2_p", 1}}, w);
  const std::string msg = testing::message_of([&] {
    DecoderStack s(world, model, two_bucket_plan(model, w, "standard", standard, "fc2", fc2),
                   *weights, StackOptions{});
  });
  std::string bad;
  if (msg.find("'configs.fc2' has weight layout tp+fc2(P=1), not the plan's tp") ==
      std::string::npos)
    bad = "expected a weight-layout ConfigError, got: " + msg;
  // On an MoE model FC1 replicates the shared experts (sequence parallelism): another layout,
  // refused when loading, not when the first batch of the other bucket arrives.
  const ModelSpec moe = ModelSpec::preset("tiny-moe");
  const Config fc1 = config_of({{"flashcomm1", true}, {"flashcomm1_threshold", 0}}, w);
  const std::string msg_moe = testing::message_of([&] {
    DecoderStack s(world, moe, two_bucket_plan(moe, w, "standard", standard, "fc1", fc1), *weights,
                   StackOptions{});
  });
  if (msg_moe.find("has weight layout tp+shared_expert_dp, not the plan's tp") == std::string::npos)
    bad += "MoE standard + fc1: expected a weight-layout ConfigError, got: " + msg_moe;
  // A plan for another world size names the field.
  Plan other = two_bucket_plan(model, w, "standard", standard, "standard2", standard);
  other.world = w + 1;
  const std::string msg2 =
      testing::message_of([&] { DecoderStack s(world, model, other, *weights, StackOptions{}); });
  if (msg2.find("field 'world'") == std::string::npos)
    bad += "expected a world-size error, got: " + msg2;
  testing::expect_agreed(world, bad);
}

}  // namespace
}  // namespace tpl

// Config (seed-spec §2.2, §3), Features (§3.3), group_sizes (§2.4) and ForwardContext (§4).
#include <gtest/gtest.h>

#include "expect_throw.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tpl/config.h"
#include "tpl/error.h"
#include "tpl/forward_context.h"

namespace tpl {
namespace {

using nlohmann::json;

using tpl::testing::expect_throw_with;

Config base(int dp, int tp) {
  Config c;
  c.layout.pp = 1;
  c.layout.dp = dp;
  c.layout.tp = tp;
  return c;
}

ModelInfo dense() {
  return ModelInfo::from_json(json{{"model_type", "llama"}});
}
ModelInfo moe() {
  return ModelInfo::from_json(
      json{{"model_type", "deepseek_v3"}, {"n_routed_experts", 64}, {"first_k_dense_replace", 3}});
}
ModelInfo dsa() {
  return ModelInfo::from_json(json{{"model_type", "deepseek_v32"},
                                   {"n_routed_experts", 64},
                                   {"first_k_dense_replace", 3},
                                   {"index_topk", 2048}});
}

// ---- JSON --------------------------------------------------------------------------------

TEST(ConfigJsonTest, RoundTripAllKeys) {
  const json j = {{"pp", 1},
                  {"dp", 2},
                  {"tp", 4},
                  {"flashcomm1", true},
                  {"flashcomm1_threshold", 512},
                  {"flashcomm2_p", 2},
                  {"mlp_tp", 2},
                  {"oproj_tp", 0},
                  {"matmul_allreduce", true},
                  {"layer_sharding", json::array({"o_proj"})},
                  {"shared_expert_dp", true},
                  {"expert_parallel", true},
                  {"eager", true},
                  {"overlap", "off"},
                  {"deployment", "prefill"}};
  const Config c = Config::from_json(j);
  EXPECT_EQ(c.layout.dp, 2);
  EXPECT_EQ(c.layout.tp, 4);
  EXPECT_TRUE(c.flashcomm1);
  EXPECT_EQ(c.flashcomm1_threshold, 512);
  EXPECT_EQ(c.flashcomm2_p, 2);
  EXPECT_EQ(c.mlp_tp, 2);
  EXPECT_TRUE(c.matmul_allreduce);
  EXPECT_EQ(c.layer_sharding, std::vector<std::string>{"o_proj"});
  EXPECT_TRUE(c.shared_expert_dp);
  EXPECT_TRUE(c.expert_parallel);
  EXPECT_TRUE(c.eager);
  EXPECT_EQ(c.deployment, Deployment::kPrefill);
  EXPECT_EQ(c.overlap, Overlap::kOff);
  // to_json() carries every key given (and may add keys with their defaults).
  const json out = c.to_json();
  for (auto it = j.begin(); it != j.end(); ++it) {
    ASSERT_TRUE(out.contains(it.key())) << it.key();
    EXPECT_EQ(out[it.key()], it.value()) << it.key();
  }
  EXPECT_EQ(Config::from_json(out).to_json(), out);
}

TEST(ConfigJsonTest, DefaultsAndDeployments) {
  const Config c = Config::from_json(json::object());
  EXPECT_EQ(c.to_json(), Config{}.to_json());
  EXPECT_EQ(c.layout.world_size(), 1);
  EXPECT_EQ(c.flashcomm1_threshold, 1000);
  EXPECT_EQ(c.deployment, Deployment::kMixed);
  EXPECT_EQ(c.to_json()["deployment"], "mixed");
  EXPECT_EQ(c.overlap, Overlap::kAuto);
  EXPECT_EQ(c.to_json()["overlap"], "auto");
  for (const char* o : {"auto", "on", "off"})
    EXPECT_EQ(Config::from_json(json{{"overlap", o}}).to_json()["overlap"], o);
  for (const char* d : {"mixed", "prefill", "decode"}) {
    const Config x = Config::from_json(json{{"deployment", d}});
    EXPECT_EQ(x.to_json()["deployment"], d);
  }
  const Config otp = Config::from_json(json{{"dp", 4}, {"oproj_tp", 2}, {"deployment", "decode"}});
  EXPECT_EQ(Config::from_json(otp.to_json()).to_json(), otp.to_json());
}

TEST(ConfigJsonTest, Errors) {
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(json{{"tensor_parallel", 2}});
      },
      "unknown config key 'tensor_parallel'");
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(json{{"deployment", "both"}});
      },
      "deployment must be");
  expect_throw_with<ConfigError>([] { Config::from_json(json{{"tp", "four"}}); }, "'tp'");
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(json{{"overlap", "yes"}});
      },
      "overlap must be auto, on or off, got 'yes'");
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(json{{"flashcomm1", 1}});
      },
      "'flashcomm1'");
  EXPECT_THROW(Config::from_json(json{{"layer_sharding", "o_proj"}}), ConfigError);
  EXPECT_THROW(Config::from_json(json{{"flashcomm1_threshold", "big"}}), ConfigError);
  expect_throw_with<ConfigError>([] { Config::from_json(json::array()); }, "JSON object");
  // from_json validates.
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(json{{"tp", 4}, {"flashcomm2_p", 4}});
      },
      "P must divide T");
  EXPECT_THROW(Config::from_file("/nonexistent/tpl.json"), IoError);
}

// Found with tests/fuzz/config_fuzz.cc (crashes/config/world_overflow.json): sizes up to 2^30
// parse, and PP x DP x TP overflowed an int (undefined behaviour) before validation compared it.
TEST(ConfigJsonTest, LayoutProductOverflowIsAConfigError) {
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(json{{"pp", 1 << 30}, {"dp", 2}});
      },
      "does not fit in an int");
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(json{{"pp", 1 << 30}, {"dp", 1 << 30}, {"tp", 1 << 30}});
      },
      "does not fit in an int");
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(json{{"pp", -(1 << 30)}, {"dp", 4}});
      },
      ">= 1");
  ParallelLayout l;
  l.pp = 1 << 20, l.dp = 1 << 20;
  expect_throw_with<ConfigError>([&] { l.validate(0); }, "does not fit in an int");
}

// Found with tests/fuzz (crashes/config/deep.json, reduced): nesting 200000 levels deep
// overflowed the stack; from_file now refuses nesting deeper than kMaxJsonDepth.
TEST(ConfigJsonTest, DeeplyNestedFileIsAConfigError) {
  const std::string path = ::testing::TempDir() + "/tpl_deep_config.json";
  {
    std::ofstream out(path);
    out << R"({"layer_sharding": )" << std::string(200000, '[') << std::string(200000, ']') << "}";
  }
  expect_throw_with<ConfigError>([&] { Config::from_file(path); }, "nest");
  std::remove(path.c_str());
}

// ---- validate ------------------------------------------------------------------------------

TEST(ConfigValidateTest, AcceptsValidConfigs) {
  EXPECT_NO_THROW(base(1, 1).validate());
  Config c = base(4, 1);
  c.oproj_tp = 2;
  c.deployment = Deployment::kDecode;
  EXPECT_NO_THROW(c.validate());
  c = base(1, 8);
  c.flashcomm1 = true;
  c.flashcomm2_p = 4;
  c.layer_sharding = {"o_proj"};
  c.deployment = Deployment::kPrefill;
  EXPECT_NO_THROW(c.validate());
  // Shared-expert DP without TP > 1 is simply not effective (no FC1 error).
  c = base(2, 1);
  c.shared_expert_dp = true;
  c.expert_parallel = true;
  EXPECT_NO_THROW(c.validate());
  // FC2 with P = 1.
  c = base(1, 2);
  c.flashcomm2_p = 1;
  EXPECT_NO_THROW(c.validate());
}

struct BadConfig {
  const char* what;
  Config config;
  const char* needle;
};

std::vector<BadConfig> bad_configs() {
  std::vector<BadConfig> v;
  auto add = [&](const char* what, Config c, const char* needle) {
    v.push_back({what, c, needle});
  };
  Config c;

  c = base(2, 4);
  c.layout.pp = 0;
  add("pp 0", c, "must be >= 1");

  c = base(4, 1);
  c.mlp_tp = 3;
  add("mlp_tp does not divide DP", c, "must divide the DP size");

  c = base(4, 1);
  c.oproj_tp = 3;
  c.deployment = Deployment::kDecode;
  add("oproj_tp does not divide DP", c, "must divide the DP size");

  c = base(4, 1);
  c.oproj_tp = 2;
  c.deployment = Deployment::kDecode;
  c.eager = true;
  add("O-proj TP eager", c, "graph mode");

  c = base(4, 1);
  c.oproj_tp = 2;
  add("O-proj TP mixed", c, "decode node");

  c = base(4, 1);
  c.oproj_tp = 2;
  c.deployment = Deployment::kPrefill;
  add("O-proj TP prefill", c, "decode node");

  c = base(2, 1);
  c.flashcomm1 = true;
  add("FC1 TP=1", c, "FlashComm1 needs TP > 1");

  c = base(1, 4);
  c.flashcomm2_p = 2;
  c.layer_sharding = {"q_b_proj", "o_proj"};
  add("FC2 layer_sharding not o_proj only", c, "layer_sharding must be exactly");

  c = base(1, 4);
  c.flashcomm2_p = 2;
  c.layer_sharding = {"qkv_proj"};
  add("FC2 layer_sharding wrong", c, "layer_sharding must be exactly");

  c = base(2, 4);
  c.flashcomm2_p = 2;
  c.oproj_tp = 2;
  c.deployment = Deployment::kDecode;
  // With O-proj TP now restricted to TP = 1 (seed §16 item 9) and FC2 needing TP > P >= 1, the
  // "mutually exclusive" rule is shadowed by the TP = 1 rule; either names O-proj TP.
  add("FC2 + O-proj TP", c, "O-proj TP");

  c = base(2, 2);
  c.oproj_tp = 2;
  c.deployment = Deployment::kDecode;
  add("O-proj TP with TP > 1", c, "O-proj TP needs TP = 1");

  c = base(1, 4);
  c.flashcomm2_p = 4;
  add("FC2 P = T", c, "P must divide T");

  c = base(1, 4);
  c.flashcomm2_p = 3;
  add("FC2 P does not divide T", c, "P must divide T");

  c = base(1, 4);
  c.flashcomm2_p = 8;
  add("FC2 P > T", c, "P must divide T");

  c = base(1, 4);
  c.flashcomm2_p = 2;
  c.deployment = Deployment::kDecode;
  add("FC2 on decode", c, "decode node");

  c = base(1, 4);
  c.flashcomm2_p = -1;
  add("negative P", c, "must be >= 0");

  c = base(1, 4);
  c.flashcomm1_threshold = -1;
  add("negative threshold", c, "flashcomm1_threshold");

  c = base(1, 4);
  c.fused_chunks = -1;
  add("negative fused_chunks", c, "fused_chunks");
  return v;
}

TEST(ConfigValidateTest, RejectsWithNamedRule) {
  for (const BadConfig& b : bad_configs()) {
    SCOPED_TRACE(b.what);
    expect_throw_with<ConfigError>([&] { b.config.validate(); }, b.needle);
  }
}

TEST(ConfigValidateTest, FromJsonRejectsSameRules) {
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(
            json{{"dp", 4}, {"oproj_tp", 2}, {"eager", true}, {"deployment", "decode"}});
      },
      "graph mode");
  expect_throw_with<ConfigError>(
      [] {
        Config::from_json(json{{"flashcomm1", true}});
      },
      "FlashComm1 needs TP > 1");
}

// ---- Features ------------------------------------------------------------------------------

TEST(FeaturesTest, DefaultsAllOff) {
  const Features f = Features::derive(base(1, 4), dense());
  EXPECT_FALSE(f.enable_sp);
  EXPECT_FALSE(f.shared_expert_dp);
  EXPECT_FALSE(f.flashcomm2);
  EXPECT_FALSE(f.o_shard);
  EXPECT_FALSE(f.flashcomm2_oshard);
  EXPECT_FALSE(f.mlp_tp);
  EXPECT_FALSE(f.oproj_tp);
  EXPECT_FALSE(f.matmul_allreduce);
  EXPECT_FALSE(f.dsa_cp);
  EXPECT_FALSE(f.dsa_cp_with_layer_shard);
}

TEST(FeaturesTest, EnableSpAndSharedExpertDp) {
  struct Row {
    int tp;
    bool fc1, se_dp, ep;
    bool enable_sp, shared_expert_dp;
  };
  const std::vector<Row> rows = {
      {4, false, false, false, false, false},
      {4, true, false, false, true, true},    // FC1 implies shared-expert DP
      {4, false, true, true, true, true},     // effective SE-DP forces FC1 on
      {4, false, true, false, false, false},  // SE-DP needs expert parallelism
      {1, false, true, true, false, false},   // ... and TP > 1
      {4, false, false, true, false, false},  // EP alone does nothing
      {2, true, true, true, true, true},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(::testing::Message()
                 << "tp=" << r.tp << " fc1=" << r.fc1 << " se_dp=" << r.se_dp << " ep=" << r.ep);
    Config c = base(1, r.tp);
    c.flashcomm1 = r.fc1;
    c.shared_expert_dp = r.se_dp;
    c.expert_parallel = r.ep;
    const Features f = Features::derive(c, moe());
    EXPECT_EQ(f.enable_sp, r.enable_sp);
    EXPECT_EQ(f.shared_expert_dp, r.shared_expert_dp);
  }
}

TEST(FeaturesTest, DsaCp) {
  struct Row {
    bool index_topk, fc1;
    Deployment dep;
    bool dsa_cp, with_layer_shard;
  };
  const std::vector<Row> rows = {
      {true, true, Deployment::kMixed, true, false},
      {true, true, Deployment::kPrefill, true, true},
      {true, true, Deployment::kDecode, true, false},
      {true, false, Deployment::kPrefill, false, false},  // needs enable_sp
      {false, true, Deployment::kPrefill, false, false},  // needs index_topk
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(::testing::Message() << "index_topk=" << r.index_topk << " fc1=" << r.fc1
                                      << " dep=" << static_cast<int>(r.dep));
    Config c = base(1, 4);
    c.flashcomm1 = r.fc1;
    c.deployment = r.dep;
    const Features f = Features::derive(c, r.index_topk ? dsa() : moe());
    EXPECT_EQ(f.dsa_cp, r.dsa_cp);
    EXPECT_EQ(f.dsa_cp_with_layer_shard, r.with_layer_shard);
  }
  // enable_sp forced by shared-expert DP also enables DSA-CP.
  Config c = base(1, 4);
  c.shared_expert_dp = true;
  c.expert_parallel = true;
  EXPECT_TRUE(Features::derive(c, dsa()).dsa_cp);
}

TEST(FeaturesTest, FlashComm2AndOshard) {
  Config c = base(1, 4);
  c.flashcomm2_p = 2;
  Features f = Features::derive(c, dense());
  EXPECT_TRUE(f.flashcomm2);
  EXPECT_FALSE(f.o_shard);
  EXPECT_FALSE(f.flashcomm2_oshard);

  c.layer_sharding = {"o_proj"};
  f = Features::derive(c, dense());
  EXPECT_TRUE(f.o_shard);
  EXPECT_TRUE(f.flashcomm2_oshard);

  c = base(1, 4);
  c.layer_sharding = {"q_b_proj", "o_proj"};
  f = Features::derive(c, dense());
  EXPECT_TRUE(f.o_shard);
  EXPECT_FALSE(f.flashcomm2_oshard);

  c.layer_sharding = {"q_b_proj"};
  EXPECT_FALSE(Features::derive(c, dense()).o_shard);
  c.layer_sharding = {"o_proj_x"};  // exact element, not a substring
  EXPECT_FALSE(Features::derive(c, dense()).o_shard);
}

TEST(FeaturesTest, ModuleTpAndMatmulAllreduce) {
  Config c = base(4, 1);
  c.mlp_tp = 2;
  c.oproj_tp = 4;
  c.matmul_allreduce = true;
  c.deployment = Deployment::kDecode;
  const Features f = Features::derive(c, dense());
  EXPECT_TRUE(f.mlp_tp);
  EXPECT_TRUE(f.oproj_tp);
  EXPECT_TRUE(f.matmul_allreduce);
}

// ---- group_sizes ---------------------------------------------------------------------------

TEST(GroupSizesTest, Schemes) {
  Config c = base(2, 4);
  c.mlp_tp = 2;
  GroupSizes s = group_sizes(c, Features::derive(c, dense()));
  EXPECT_EQ(s.mlp_tp, 2);
  EXPECT_EQ(s.oproj_tp, 0);
  EXPECT_EQ(s.flashcomm2_p, 0);
  EXPECT_FALSE(s.shard_weight.has_value());

  c = base(2, 4);
  c.flashcomm2_p = 1;
  c.layer_sharding = {"o_proj"};
  s = group_sizes(c, Features::derive(c, dense()));
  EXPECT_EQ(s.flashcomm2_p, 1);
  ASSERT_TRUE(s.shard_weight.has_value());
  EXPECT_EQ(*s.shard_weight, ShardWeightScheme::kWholeStage);

  c.flashcomm2_p = 2;
  s = group_sizes(c, Features::derive(c, dense()));
  ASSERT_TRUE(s.shard_weight.has_value());
  EXPECT_EQ(*s.shard_weight, ShardWeightScheme::kSameOtpRank);

  // FC2 without layer sharding: no shard-weight group.
  c.layer_sharding.clear();
  EXPECT_FALSE(group_sizes(c, Features::derive(c, dense())).shard_weight.has_value());

  // DSA-CP with layer shard (prefill), no FC2: whole stage.
  c = base(1, 4);
  c.flashcomm1 = true;
  c.deployment = Deployment::kPrefill;
  c.layer_sharding = {"q_b_proj", "o_proj"};
  s = group_sizes(c, Features::derive(c, dsa()));
  ASSERT_TRUE(s.shard_weight.has_value());
  EXPECT_EQ(*s.shard_weight, ShardWeightScheme::kWholeStage);

  // Same config on a mixed node: same TP index.
  c.deployment = Deployment::kMixed;
  s = group_sizes(c, Features::derive(c, dsa()));
  ASSERT_TRUE(s.shard_weight.has_value());
  EXPECT_EQ(*s.shard_weight, ShardWeightScheme::kSameTpIndex);

  // Plain layer sharding.
  c = base(2, 2);
  c.layer_sharding = {"o_proj"};
  s = group_sizes(c, Features::derive(c, dense()));
  ASSERT_TRUE(s.shard_weight.has_value());
  EXPECT_EQ(*s.shard_weight, ShardWeightScheme::kSameTpIndex);
}

// ---- ForwardContext ------------------------------------------------------------------------

ForwardContext make_ctx(const Config& c, const ModelInfo& m, std::int64_t n,
                        std::vector<std::int64_t> across = {}, bool draft = false) {
  return ForwardContext::make(c, Features::derive(c, m), m, n, std::move(across), draft);
}

TEST(ForwardContextTest, Fc1ThresholdIsStrict) {
  Config c = base(1, 4);
  c.flashcomm1 = true;
  ForwardContext ctx = make_ctx(c, dense(), 1000);
  EXPECT_FALSE(ctx.flash_comm_v1_enabled);
  EXPECT_EQ(ctx.pad_size, 0);
  EXPECT_TRUE(ctx.mmrs_fusion);

  ctx = make_ctx(c, dense(), 1001);
  EXPECT_TRUE(ctx.flash_comm_v1_enabled);
  EXPECT_EQ(ctx.pad_size, 3);
  EXPECT_EQ(ctx.padded_tokens(), 1004);
  EXPECT_TRUE(ctx.mmrs_fusion);

  ctx = make_ctx(c, dense(), 1004);
  EXPECT_TRUE(ctx.flash_comm_v1_enabled);
  EXPECT_EQ(ctx.pad_size, 0);

  // Non-default threshold.
  c.flashcomm1_threshold = 8;
  EXPECT_FALSE(make_ctx(c, dense(), 8).flash_comm_v1_enabled);
  ctx = make_ctx(c, dense(), 9);
  EXPECT_TRUE(ctx.flash_comm_v1_enabled);
  EXPECT_EQ(ctx.pad_size, 3);
}

TEST(ForwardContextTest, Fc1OffWithoutEnableSp) {
  const Config c = base(1, 4);
  const ForwardContext ctx = make_ctx(c, dense(), 5000);
  EXPECT_FALSE(ctx.flash_comm_v1_enabled);
  EXPECT_FALSE(ctx.flashcomm_v2_enabled);
  EXPECT_EQ(ctx.pad_size, 0);
  EXPECT_EQ(ctx.num_tokens, 5000);
  EXPECT_FALSE(ctx.layer_idx.has_value());
  EXPECT_FALSE(make_ctx(c, moe(), 3).flash_comm_v1_enabled);
}

TEST(ForwardContextTest, MoeAlwaysOnAndNoFusion) {
  Config c = base(1, 4);
  c.flashcomm1 = true;
  ForwardContext ctx = make_ctx(c, moe(), 1);
  EXPECT_TRUE(ctx.flash_comm_v1_enabled);
  EXPECT_FALSE(ctx.mmrs_fusion);
  EXPECT_EQ(ctx.pad_size, 3);
  // MoE without FC1: still no fusion.
  ctx = make_ctx(base(1, 4), moe(), 8);
  EXPECT_FALSE(ctx.flash_comm_v1_enabled);
  EXPECT_FALSE(ctx.mmrs_fusion);
  // A MoE draft model follows the MoE branch (the draft's own config decides).
  ctx = make_ctx(c, moe(), 6, {}, /*draft=*/true);
  EXPECT_TRUE(ctx.flash_comm_v1_enabled);
  EXPECT_EQ(ctx.pad_size, 2);
}

TEST(ForwardContextTest, DenseDraftNever) {
  Config c = base(1, 4);
  c.flashcomm1 = true;
  const ForwardContext ctx = make_ctx(c, dense(), 5001, {}, /*draft=*/true);
  EXPECT_FALSE(ctx.flash_comm_v1_enabled);
  EXPECT_EQ(ctx.pad_size, 0);
  EXPECT_TRUE(ctx.mmrs_fusion);
}

TEST(ForwardContextTest, MmrsFusionByTpSize) {
  for (int tp : {1, 2, 4, 8}) EXPECT_TRUE(make_ctx(base(1, tp), dense(), 16).mmrs_fusion) << tp;
  EXPECT_FALSE(make_ctx(base(1, 16), dense(), 16).mmrs_fusion);
  Config c = base(1, 16);
  c.flashcomm1 = true;
  const ForwardContext ctx = make_ctx(c, dense(), 2000);
  EXPECT_TRUE(ctx.flash_comm_v1_enabled);
  EXPECT_FALSE(ctx.mmrs_fusion);
  EXPECT_EQ(ctx.pad_size, 0);
}

TEST(ForwardContextTest, Fc2PadsWithoutThreshold) {
  Config c = base(1, 4);
  c.flashcomm2_p = 2;
  for (auto [n, pad] : std::vector<std::pair<int, int>>{
           {0, 0}, {1, 3}, {5, 3}, {6, 2}, {7, 1}, {8, 0}, {1001, 3}}) {
    const ForwardContext ctx = make_ctx(c, dense(), n);
    EXPECT_TRUE(ctx.flashcomm_v2_enabled);
    EXPECT_FALSE(ctx.flash_comm_v1_enabled);
    EXPECT_EQ(ctx.pad_size, pad) << "N=" << n;
    EXPECT_EQ(ctx.padded_tokens() % 4, 0);
  }
  // FC2 also applies to a dense draft model (no draft exclusion at the seed).
  EXPECT_TRUE(make_ctx(c, dense(), 5, {}, true).flashcomm_v2_enabled);
  EXPECT_EQ(make_ctx(c, dense(), 5, {}, true).pad_size, 3);
  // T = 8, P = 1.
  Config c8 = base(1, 8);
  c8.flashcomm2_p = 1;
  EXPECT_EQ(make_ctx(c8, dense(), 13).pad_size, 3);
}

TEST(ForwardContextTest, DpEqualisedPad) {
  Config c = base(2, 4);
  c.flashcomm2_p = 2;
  ForwardContext ctx = make_ctx(c, dense(), 5, {5, 9});
  EXPECT_EQ(ctx.pad_size, 7);
  EXPECT_EQ(ctx.padded_tokens(), 12);
  EXPECT_EQ(ctx.tokens_across_dp, (std::vector<std::int64_t>{5, 9}));
  ctx = make_ctx(c, dense(), 9, {5, 9});
  EXPECT_EQ(ctx.pad_size, 3);
  EXPECT_EQ(ctx.padded_tokens(), 12);
  // Already aligned maximum.
  EXPECT_EQ(make_ctx(c, dense(), 3, {3, 8}).pad_size, 5);

  // Same with FC1 on a MoE model.
  Config m = base(2, 4);
  m.flashcomm1 = true;
  ctx = make_ctx(m, moe(), 5, {5, 9});
  EXPECT_TRUE(ctx.flash_comm_v1_enabled);
  EXPECT_EQ(ctx.pad_size, 7);

  // Neither FC active: no padding even with DP metadata.
  ctx = make_ctx(base(2, 4), dense(), 5, {5, 9});
  EXPECT_EQ(ctx.pad_size, 0);
  EXPECT_EQ(ctx.padded_tokens(), 5);
}

TEST(ForwardContextTest, BadArguments) {
  Config c = base(2, 4);
  c.flashcomm2_p = 2;
  EXPECT_THROW(make_ctx(c, dense(), -1), InvalidArgument);
  EXPECT_THROW(make_ctx(c, dense(), 5, {5}), InvalidArgument);  // one entry per replica
  EXPECT_THROW(make_ctx(c, dense(), 5, {5, 9, 1}), InvalidArgument);
  EXPECT_THROW(make_ctx(c, dense(), 4, {5, 9}), InvalidArgument);  // N must be listed
}

}  // namespace
}  // namespace tpl

// ModelSpec from config.json: RoPE scaling (its frequencies against the formulas of Hugging
// Face's _compute_llama3_parameters, written out here independently), q/k-norm, `load`.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tpl/error.h"
#include "tpl/model.h"

namespace tpl {
namespace {

nlohmann::json llama(nlohmann::json extra = nlohmann::json::object()) {
  nlohmann::json j{{"model_type", "llama"},    {"hidden_size", 128},
                   {"intermediate_size", 256}, {"num_attention_heads", 8},
                   {"num_key_value_heads", 2}, {"num_hidden_layers", 1},
                   {"rope_theta", 500000.0}};
  j.update(extra);
  return j;
}

std::string error_of(const nlohmann::json& j) {
  try {
    ModelSpec::from_hf_json(j, "m");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(ModelSpec, Llama3RopeScalingKeepsHighDividesLowAndBlendsBetween) {
  const nlohmann::json rs{{"rope_type", "llama3"},
                          {"factor", 8.0},
                          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 64}};
  const ModelSpec m = ModelSpec::from_hf_json(llama({{"rope_scaling", rs}}), "m");
  const ModelSpec plain = ModelSpec::from_hf_json(llama(), "m");
  ASSERT_EQ(m.head_dim, 16);
  int high = 0, low = 0, mid = 0;
  for (std::int64_t d = 0; d < 8; ++d) {
    const double inv = std::pow(500000.0, -2.0 * double(d) / 16.0);
    EXPECT_DOUBLE_EQ(plain.rope_inv_freq(d), inv);
    const double wavelen = 2 * M_PI / inv;
    if (wavelen < 64.0 / 4) {  // high frequencies: unchanged
      EXPECT_DOUBLE_EQ(m.rope_inv_freq(d), inv) << d;
      ++high;
    } else if (wavelen > 64.0 / 1) {  // low frequencies: divided by the factor
      EXPECT_DOUBLE_EQ(m.rope_inv_freq(d), inv / 8) << d;
      ++low;
    } else {  // between: (1 - s) inv / factor + s inv, s = (64 / wavelen - 1) / (4 - 1)
      const double s = (64.0 / wavelen - 1) / 3;
      EXPECT_NEAR(m.rope_inv_freq(d), (1 - s) * inv / 8 + s * inv, 1e-15) << d;
      ++mid;
    }
  }
  EXPECT_GT(high, 0);  // the config reaches all three bands
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
  const ModelSpec lin = ModelSpec::from_hf_json(
      llama({{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}}), "m");
  EXPECT_DOUBLE_EQ(lin.rope_inv_freq(3), plain.rope_inv_freq(3) / 2);
  // null rope_scaling is "none", as transformers writes it.
  EXPECT_EQ(ModelSpec::from_hf_json(llama({{"rope_scaling", nullptr}}), "m").rope_scaling.type,
            "default");
}

TEST(ModelSpec, BadRopeScalingNamesTheField) {
  EXPECT_NE(
      error_of(llama({{"rope_scaling", {{"rope_type", "dynamic"}, {"factor", 4.0}}}}))
          .find("field 'rope_scaling.rope_type' is 'dynamic'; supported: default, linear, llama3"),
      std::string::npos);
  // yarn is DeepSeek's (MLA) only; HF's generic yarn for Llama/Qwen differs.
  EXPECT_NE(error_of(llama({{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}}}))
                .find("'yarn', which tplinear implements as DeepSeek's (MLA models) only"),
            std::string::npos);
  EXPECT_NE(error_of(llama({{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}}}))
                .find("'rope_scaling.low_freq_factor' is missing"),
            std::string::npos);
  EXPECT_NE(error_of(llama({{"rope_scaling", {{"rope_type", "linear"}, {"factor", -1}}}}))
                .find("'rope_scaling.factor' must be a positive number"),
            std::string::npos);
  EXPECT_NE(error_of(llama({{"rope_scaling",
                             {{"rope_type", "llama3"},
                              {"factor", 8.0},
                              {"low_freq_factor", 4.0},
                              {"high_freq_factor", 1.0},
                              {"original_max_position_embeddings", 64}}}}))
                .find("'rope_scaling.high_freq_factor' must exceed low_freq_factor"),
            std::string::npos);
}

TEST(ModelSpec, Qwen3HasQkNormAndLoadTakesPathsAndDirectories) {
  EXPECT_TRUE(ModelSpec::preset("qwen3-8b").qk_norm);
  EXPECT_TRUE(ModelSpec::preset("qwen3-30b-a3b").qk_norm);
  EXPECT_FALSE(ModelSpec::preset("qwen2-7b").qk_norm);
  EXPECT_FALSE(ModelSpec::preset("llama3-8b").qk_norm);
  const auto dir = std::filesystem::temp_directory_path() / "tpl_model_spec_test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << llama().dump();
  EXPECT_EQ(ModelSpec::load(dir.string()).hidden, 128);
  EXPECT_EQ(ModelSpec::load((dir / "config.json").string()).kv_heads, 2);
  EXPECT_EQ(ModelSpec::load("tiny").name, "tiny");
  try {
    ModelSpec::load((dir / "nope").string());
    ADD_FAILURE() << "no error for a missing path";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("or a config.json path or a checkpoint directory"),
              std::string::npos)
        << e.what();
  }
  std::filesystem::remove_all(dir);
}

// Found with tests/fuzz/hf_config_fuzz.cc (crashes/hf_config/): each of these loaded, or was
// undefined behaviour, before.
TEST(ModelSpec, FuzzFindingsAreConfigErrors) {
  // libFuzzer's find: rms_norm_eps 0 (and rope_theta <= 0) were accepted; RMSNorm and RoPE
  // divide by or take powers of them.
  EXPECT_NE(error_of(llama({{"rms_norm_eps", 0.0}})).find("rms_norm_eps"), std::string::npos);
  EXPECT_NE(error_of(llama({{"rms_norm_eps", -1e-5}})).find("rms_norm_eps"), std::string::npos);
  EXPECT_NE(error_of(llama({{"rope_theta", -2}})).find("rope_theta"), std::string::npos);
  EXPECT_NE(error_of(llama({{"rope_theta", 0}})).find("rope_theta"), std::string::npos);
  // Floats where integers belong: nlohmann converted 1e300 to int64 (undefined behaviour).
  EXPECT_NE(error_of(llama({{"num_key_value_heads", 1e300}})).find("num_key_value_heads"),
            std::string::npos);
  EXPECT_NE(error_of(llama({{"mlp_only_layers", {0, 1e300}}})).find("mlp_only_layers"),
            std::string::npos);
  EXPECT_NE(error_of(llama({{"num_experts", 2.5}})).find("num_experts"), std::string::npos);
  // Unsigned values above INT64_MAX wrapped to negative numbers.
  EXPECT_NE(error_of(llama({{"first_k_dense_replace", 18446744073709551615ull}}))
                .find("first_k_dense_replace"),
            std::string::npos);
  // model_type of the wrong type escaped ModelInfo::from_json as a JSON exception.
  EXPECT_NE(error_of(llama({{"model_type", 5}})).find("model_type"), std::string::npos);
  EXPECT_THROW(ModelInfo::from_json({{"model_type", 5}}), ConfigError);
  // Still accepted: integers as before.
  EXPECT_EQ(ModelSpec::from_hf_json(llama({{"num_key_value_heads", 4}}), "m").kv_heads, 4);
}

// Found with tests/fuzz (crashes/hf_config/deep.json, reduced): a config.json nested 200000
// levels deep overflowed the stack (ModelInfo's search for "expert" keys recurses); nesting
// deeper than kMaxJsonDepth is now "not valid JSON".
TEST(ModelSpec, DeeplyNestedConfigIsAConfigError) {
  const std::string dir = ::testing::TempDir() + "/tpl_deep_config";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/config.json";
  {
    std::ofstream out(path);
    out << R"({"hidden_size": 64, "a": )" << std::string(200000, '[') << std::string(200000, ']')
        << "}";
  }
  try {
    ModelSpec::from_file(path);
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("nest"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ModelInfo::from_file(path), ConfigError);
  std::filesystem::remove_all(dir);
}

}  // namespace

static nlohmann::json deepseek(nlohmann::json extra = nlohmann::json::object()) {
  nlohmann::json j{{"model_type", "deepseek_v2"}, {"hidden_size", 128},
                   {"intermediate_size", 256},    {"num_attention_heads", 4},
                   {"num_hidden_layers", 4},      {"kv_lora_rank", 32},
                   {"q_lora_rank", nullptr},      {"qk_nope_head_dim", 16},
                   {"qk_rope_head_dim", 8},       {"v_head_dim", 12},
                   {"rope_theta", 10000.0}};
  j.update(extra);
  return j;
}

TEST(ModelSpec, DeepSeekMla) {
  const ModelSpec m = ModelSpec::from_hf_json(deepseek(), "ds");
  ASSERT_TRUE(m.mla.has_value());
  EXPECT_EQ(m.mla->q_lora_rank, 0);  // null: q_proj
  EXPECT_EQ(m.head_dim, 24);         // qk_nope + qk_rope
  EXPECT_EQ(m.rope_dim(), 8);
  EXPECT_EQ(m.kv_heads, m.heads);
  EXPECT_DOUBLE_EQ(m.softmax_scale(), 1.0 / std::sqrt(24.0));
  EXPECT_DOUBLE_EQ(m.rope_inv_freq(1), std::pow(10000.0, -2.0 / 8));
  EXPECT_EQ(ModelSpec::from_hf_json(deepseek({{"q_lora_rank", 48}}), "ds").mla->q_lora_rank, 48);
  // Missing, non-positive and odd fields name themselves.
  nlohmann::json no_rope = deepseek();
  no_rope.erase("qk_rope_head_dim");
  EXPECT_NE(error_of(no_rope).find("needs integer field 'qk_rope_head_dim'"), std::string::npos);
  EXPECT_NE(error_of(deepseek({{"kv_lora_rank", 0}})).find("'kv_lora_rank' must be positive"),
            std::string::npos);
  EXPECT_NE(error_of(deepseek({{"qk_rope_head_dim", 7}})).find("'qk_rope_head_dim' must be even"),
            std::string::npos);
  EXPECT_NE(error_of(deepseek({{"q_lora_rank", 0}})).find("'q_lora_rank' must be positive or null"),
            std::string::npos);
  EXPECT_NE(error_of(deepseek({{"attention_bias", true}})).find("'attention_bias' is true"),
            std::string::npos);
}

TEST(ModelSpec, DeepSeekMoeLayersAndSharedExperts) {
  // DeepSeek's rule: MoE when l >= first_k_dense_replace and l % moe_layer_freq == 0.
  const ModelSpec m = ModelSpec::from_hf_json(deepseek({{"n_routed_experts", 8},
                                                        {"n_shared_experts", 2},
                                                        {"moe_intermediate_size", 40},
                                                        {"first_k_dense_replace", 1},
                                                        {"moe_layer_freq", 2}}),
                                              "ds");
  EXPECT_FALSE(m.layer_is_moe(0));
  EXPECT_FALSE(m.layer_is_moe(1));
  EXPECT_TRUE(m.layer_is_moe(2));
  EXPECT_FALSE(m.layer_is_moe(3));
  EXPECT_EQ(m.shared_expert_intermediate, 80);
  EXPECT_EQ(m.shared_expert_module, "shared_experts");
  const std::vector<LayerSpec> specs = decoder_linear_specs(m, 2, DType::kF32);
  ASSERT_EQ(specs.size(), 6u);
  EXPECT_EQ(specs[0].prefix, "model.layers.2.self_attn.q_proj");
  EXPECT_EQ(specs[0].out_unit, 24);
  EXPECT_EQ(specs[1].kind, LayerKind::kReplicated);
  EXPECT_EQ(specs[2].prefix, "model.layers.2.self_attn.kv_b_proj");
  EXPECT_EQ(specs[2].out_features, 4 * (16 + 12));
  EXPECT_EQ(specs[3].in_unit, 12);
  EXPECT_EQ(specs[4].prefix, "model.layers.2.mlp.shared_experts.gate_up_proj");
}

TEST(ModelSpec, DeepSeekYarn) {
  // DeepseekV2YarnRotaryEmbedding, recomputed here from its definition for d = 0..3.
  const double factor = 40, base = 10000, orig = 4096, dim = 8, ms = 0.707, ms_all = 0.707;
  const ModelSpec m =
      ModelSpec::from_hf_json(deepseek({{"rope_scaling",
                                         {{"type", "yarn"},
                                          {"factor", factor},
                                          {"original_max_position_embeddings", orig},
                                          {"beta_fast", 32},
                                          {"beta_slow", 1},
                                          {"mscale", ms},
                                          {"mscale_all_dim", ms_all}}}}),
                              "ds");
  const double pi = 3.14159265358979323846;
  auto corr = [&](double rot) {
    return dim * std::log(orig / (rot * 2 * pi)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(corr(32)), 0.0);
  const double high = std::min(std::ceil(corr(1)), dim - 1);
  for (int d = 0; d < 4; ++d) {
    const double extra = std::pow(base, -2.0 * d / dim), inter = extra / factor;
    const double ramp = std::clamp((d - low) / (high - low), 0.0, 1.0);
    const double want = inter * ramp + extra * (1 - ramp);
    EXPECT_NEAR(m.rope_inv_freq(d), want, 1e-15 * want) << "pair " << d;
  }
  // cos/sin carry mscale(factor, mscale) / mscale(factor, mscale_all_dim) = 1 here; the softmax
  // scale mscale(factor, mscale_all_dim)^2 / sqrt(head_dim).
  const double g = 0.1 * ms_all * std::log(factor) + 1.0;
  EXPECT_DOUBLE_EQ(m.rope_mscale(), 1.0);
  EXPECT_NEAR(m.softmax_scale(), g * g / std::sqrt(24.0), 1e-15);
}

// Sizes above ModelSpec::kMaxSize are refused naming the field, before any arithmetic on them:
// DeepSeek's n_shared_experts * moe_intermediate_size and qk_nope + qk_rope head dims
// overflowed int64 for values near its limit, and a weight's element count did for far less.
TEST(ModelSpec, SizesBeyondTheLimitAreRefusedByName) {
  const std::int64_t big = ModelSpec::kMaxSize + 1;
  for (const char* field :
       {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
        "head_dim", "num_hidden_layers", "num_experts", "shared_expert_intermediate_size"}) {
    const std::string e = error_of(llama({{field, big}}));
    EXPECT_NE(e.find(std::string("'") + field + "' is " + std::to_string(big)), std::string::npos)
        << field << ": " << e;
    EXPECT_NE(e.find("up to 1048576"), std::string::npos) << e;
  }
  const std::int64_t huge = std::int64_t{1} << 62;
  for (const auto& [field, v] :
       std::vector<std::pair<const char*, std::int64_t>>{{"qk_nope_head_dim", huge},
                                                         {"qk_rope_head_dim", huge},
                                                         {"kv_lora_rank", big},
                                                         {"v_head_dim", big},
                                                         {"q_lora_rank", big}}) {
    try {
      ModelSpec::from_hf_json(deepseek({{field, v}}), "m");
      ADD_FAILURE() << field << " = " << v << " accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  }
  try {
    ModelSpec::from_hf_json(deepseek({{"n_routed_experts", 8},
                                      {"n_shared_experts", std::int64_t{1} << 40},
                                      {"moe_intermediate_size", std::int64_t{1} << 40}}),
                            "m");
    ADD_FAILURE() << "n_shared_experts * moe_intermediate_size of 2^80 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("n_shared_experts"), std::string::npos) << e.what();
  }
  // Each within the limit, their product not: validate() names the shared expert's width.
  try {
    ModelSpec::from_hf_json(
        deepseek(
            {{"n_routed_experts", 8}, {"n_shared_experts", 2}, {"moe_intermediate_size", 1 << 20}}),
        "m");
    ADD_FAILURE() << "a shared expert of 2^21 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("shared expert intermediate is 2097152"),
              std::string::npos)
        << e.what();
  }
  // A spec made in code is checked alike; the limit itself is accepted.
  ModelSpec m = ModelSpec::from_hf_json(llama(), "m");
  m.hidden = ModelSpec::kMaxSize;
  EXPECT_NO_THROW(m.validate());
  m.intermediate = big;
  EXPECT_THROW(m.validate(), ConfigError);
}

}  // namespace tpl

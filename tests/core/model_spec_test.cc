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
      error_of(llama({{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}}}))
          .find("field 'rope_scaling.rope_type' is 'yarn'; supported: default, linear, llama3"),
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
}  // namespace tpl

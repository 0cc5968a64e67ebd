// Fuzz harness: a Hugging Face config.json, as ModelSpec::from_file reads it (parse, then
// ModelSpec::from_hf_json; from_file reports a field of the wrong type, a JSON exception, as
// ConfigError) and as ModelInfo::from_file reads it (ModelInfo::from_json, whose contract allows
// only IoError / ConfigError). After a successful parse the spec must pass its own validation:
// sizes positive and at most ModelSpec::kMaxSize, heads a multiple of KV heads, RoPE dims even,
// rope_scaling a known type with positive finite factors, rms_eps and rope_theta positive and
// finite, and RoPE frequencies finite.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "tpl/config.h"
#include "tpl/error.h"
#include "tpl/json_text.h"
#include "tpl/model.h"

namespace {
bool positive_finite(double v) {
  return std::isfinite(v) && v > 0;
}

void check(const tpl::ModelSpec& m) {
  FUZZ_CHECK(m.hidden > 0 && m.heads > 0 && m.kv_heads > 0 && m.head_dim > 0 && m.layers > 0 &&
                 m.intermediate > 0,
             "non-positive size");
  FUZZ_CHECK(m.heads % m.kv_heads == 0, "heads not a multiple of kv heads");
  std::vector<std::int64_t> sizes = {
      m.hidden,   m.intermediate, m.heads,       m.kv_heads,
      m.head_dim, m.layers,       m.num_experts, m.shared_expert_intermediate};
  if (m.mla)
    sizes.insert(sizes.end(), {m.mla->q_lora_rank, m.mla->kv_lora_rank, m.mla->qk_nope_head_dim,
                               m.mla->qk_rope_head_dim, m.mla->v_head_dim});
  for (std::int64_t v : sizes)
    FUZZ_CHECK(v >= 0 && v <= tpl::ModelSpec::kMaxSize, "size %lld outside [0, kMaxSize]",
               static_cast<long long>(v));
  // RoPE rotates pairs of rope_dim(): head_dim, or MLA's qk_rope_head_dim (MLA's head_dim,
  // qk_nope + qk_rope, may be odd; crashes/hf_config/mla_odd_nope_head_dim.json).
  FUZZ_CHECK(m.rope_dim() % 2 == 0, "odd RoPE dims %lld", static_cast<long long>(m.rope_dim()));
  FUZZ_CHECK(positive_finite(m.rms_eps), "rms_eps %g", m.rms_eps);
  FUZZ_CHECK(positive_finite(m.rope_theta), "rope_theta %g", m.rope_theta);
  const auto& r = m.rope_scaling;
  FUZZ_CHECK(r.type == "default" || r.type == "linear" || r.type == "llama3", "rope type '%s'",
             r.type.c_str());
  FUZZ_CHECK(positive_finite(r.factor) && positive_finite(r.low_freq_factor) &&
                 positive_finite(r.high_freq_factor) &&
                 positive_finite(r.original_max_position_embeddings),
             "rope_scaling factor not positive and finite");
  if (r.type == "llama3")
    FUZZ_CHECK(r.high_freq_factor > r.low_freq_factor, "llama3 high_freq <= low_freq");
  for (std::int64_t d : {std::int64_t{0}, m.head_dim / 2 - 1}) {
    const double f = m.rope_inv_freq(d);
    FUZZ_CHECK(std::isfinite(f) && f >= 0, "rope_inv_freq(%lld) = %g", static_cast<long long>(d),
               f);
  }
  for (std::int64_t l = 0; l < std::min<std::int64_t>(m.layers, 8); ++l) (void)m.layer_is_moe(l);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = tpl::fuzz::as_chars(data, size);
  nlohmann::json j;
  try {
    j = tpl::parse_json(text);  // as from_file parses
  } catch (const nlohmann::json::exception&) {
    return 0;  // from_file: ConfigError "not valid JSON"
  }
  try {
    check(tpl::ModelSpec::from_hf_json(j, "fuzz/config.json"));
  } catch (const tpl::Error&) {
    // Expected: ConfigError / Unsupported.
  } catch (const nlohmann::json::exception&) {
    // Expected: from_file reports these as ConfigError (a field of the wrong type).
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  try {
    const tpl::ModelInfo info = tpl::ModelInfo::from_json(j);
    FUZZ_CHECK(info.moe_layer_freq >= 1, "moe_layer_freq %lld",
               static_cast<long long>(info.moe_layer_freq));
    for (const char* p : {"model.layers.0.mlp", "model.layers.7.mlp", "layers.123456789.x",
                          "layers.99999999999999999999.x", "lm_head"})
      (void)info.is_moe_layer(p);
  } catch (const tpl::ConfigError&) {
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  return 0;
}

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "tpl/error.h"
#include "tpl/json_text.h"
#include "tpl/model.h"

namespace tpl {

namespace {
const Where kWhere{"model"};

// Built-in presets, as the fields of their Hugging Face config.json.
const std::map<std::string, nlohmann::json>& preset_table() {
  static const std::map<std::string, nlohmann::json> kPresets = {
      // Small Llama-shaped model that runs in seconds on 2 cores.
      {"tiny",
       {{"model_type", "llama"},
        {"hidden_size", 256},
        {"intermediate_size", 704},
        {"num_attention_heads", 8},
        {"num_key_value_heads", 4},
        {"num_hidden_layers", 2},
        {"rms_norm_eps", 1e-5},
        {"rope_theta", 10000.0}}},
      // Small Qwen2-MoE-shaped model: layer 0 dense, then MoE layers with a shared expert.
      {"tiny-moe",
       {{"model_type", "qwen2_moe"},
        {"hidden_size", 256},
        {"intermediate_size", 704},
        {"moe_intermediate_size", 128},
        {"shared_expert_intermediate_size", 384},
        {"num_experts", 8},
        {"num_experts_per_tok", 2},
        {"decoder_sparse_step", 1},
        {"mlp_only_layers", {0}},
        {"num_attention_heads", 8},
        {"num_key_value_heads", 4},
        {"num_hidden_layers", 3},
        {"qkv_bias", true},
        {"rms_norm_eps", 1e-6}}},
      {"llama3-8b",
       {{"model_type", "llama"},
        {"hidden_size", 4096},
        {"intermediate_size", 14336},
        {"num_attention_heads", 32},
        {"num_key_value_heads", 8},
        {"num_hidden_layers", 32},
        {"rms_norm_eps", 1e-5},
        {"rope_theta", 500000.0}}},
      // Meta-Llama-3-70B's config.json: 64 heads, so TP up to 64 (the simulator's sizes).
      {"llama3-70b",
       {{"model_type", "llama"},
        {"hidden_size", 8192},
        {"intermediate_size", 28672},
        {"num_attention_heads", 64},
        {"num_key_value_heads", 8},
        {"num_hidden_layers", 80},
        {"rms_norm_eps", 1e-5},
        {"rope_theta", 500000.0}}},
      {"qwen2-7b",
       {{"model_type", "qwen2"},
        {"hidden_size", 3584},
        {"intermediate_size", 18944},
        {"num_attention_heads", 28},
        {"num_key_value_heads", 4},
        {"num_hidden_layers", 28},
        {"rms_norm_eps", 1e-6},
        {"rope_theta", 1000000.0}}},
      {"qwen3-8b",
       {{"model_type", "qwen3"},
        {"hidden_size", 4096},
        {"intermediate_size", 12288},
        {"num_attention_heads", 32},
        {"num_key_value_heads", 8},
        {"head_dim", 128},
        {"num_hidden_layers", 36},
        {"rms_norm_eps", 1e-6},
        {"rope_theta", 1000000.0}}},
      // Qwen1.5-MoE-A2.7B's config.json: 60 routed experts (skipped) and a shared expert of
      // 5632 in every layer, MHA (16 heads = 16 KV heads), QKV bias.
      {"qwen1.5-moe-a2.7b",
       {{"model_type", "qwen2_moe"},
        {"hidden_size", 2048},
        {"intermediate_size", 5632},
        {"moe_intermediate_size", 1408},
        {"shared_expert_intermediate_size", 5632},
        {"num_experts", 60},
        {"num_experts_per_tok", 4},
        {"decoder_sparse_step", 1},
        {"mlp_only_layers", nlohmann::json::array()},
        {"num_attention_heads", 16},
        {"num_key_value_heads", 16},
        {"num_hidden_layers", 24},
        {"rms_norm_eps", 1e-6},
        {"rope_theta", 1000000.0}}},
      {"qwen3-30b-a3b",
       {{"model_type", "qwen3_moe"},
        {"hidden_size", 2048},
        {"intermediate_size", 6144},
        {"moe_intermediate_size", 768},
        {"num_experts", 128},
        {"num_experts_per_tok", 8},
        {"decoder_sparse_step", 1},
        {"mlp_only_layers", nlohmann::json::array()},
        {"num_attention_heads", 32},
        {"num_key_value_heads", 4},
        {"head_dim", 128},
        {"num_hidden_layers", 48},
        {"rms_norm_eps", 1e-6},
        {"rope_theta", 1000000.0}}},
  };
  return kPresets;
}

// An integer in int64 range: a float (which nlohmann would convert, undefined when out of range)
// or an unsigned value above INT64_MAX (which would wrap) is refused.
bool is_int64(const nlohmann::json& v) {
  return v.is_number_integer() &&
         (!v.is_number_unsigned() || v.get<std::uint64_t>() <= std::uint64_t{INT64_MAX});
}

std::int64_t need_int(const nlohmann::json& j, const char* key, const std::string& name) {
  if (!j.contains(key) || !is_int64(j[key]))
    TPL_THROW(ConfigError, kWhere, "model '", name, "': config.json needs integer field '", key,
              "'");
  return j[key].get<std::int64_t>();
}

// A size field: an integer of at most ModelSpec::kMaxSize, checked before any arithmetic on it
// (the sign is checked where the field's meaning says what is allowed).
std::int64_t capped(std::int64_t v, const char* key, const std::string& name) {
  if (v > ModelSpec::kMaxSize)
    TPL_THROW(ConfigError, kWhere, "model '", name, "': config.json field '", key, "' is ", v,
              "; tplinear takes sizes up to ", ModelSpec::kMaxSize);
  return v;
}

std::int64_t need_size(const nlohmann::json& j, const char* key, const std::string& name) {
  return capped(need_int(j, key, name), key, name);
}

std::int64_t opt_int(const nlohmann::json& j, const char* key, std::int64_t fallback,
                     const std::string& name) {
  if (!j.contains(key)) return fallback;
  if (!is_int64(j[key]))
    TPL_THROW(ConfigError, kWhere, "model '", name, "': config.json field '", key,
              "' must be an integer, got ", j[key].dump());
  return j[key].get<std::int64_t>();
}
}  // namespace

ModelSpec ModelSpec::from_hf_json(const nlohmann::json& hf, const std::string& name) {
  const nlohmann::json& j = hf.contains("text_config") ? hf["text_config"] : hf;
  if (!j.is_object()) TPL_THROW(ConfigError, kWhere, "model '", name, "': not a JSON object");
  ModelSpec m;
  m.name = name;
  if (j.contains("model_type") && !j["model_type"].is_string())
    TPL_THROW(ConfigError, kWhere, "model '", name,
              "': config.json field 'model_type' must be a string");
  m.model_type = j.value("model_type", std::string("llama"));
  // DeepSeek-V2 and later: MLA (DeepSeek V1, "deepseek", is a Llama-like model tplinear does
  // not run).
  const bool deepseek = m.model_type.rfind("deepseek_v", 0) == 0;
  static const char* const kDecoders[] = {"llama",       "qwen2",       "qwen2_moe",
                                          "qwen3",       "qwen3_moe",   "deepseek_v2",
                                          "deepseek_v3", "deepseek_v32"};
  if (std::find(std::begin(kDecoders), std::end(kDecoders), m.model_type) == std::end(kDecoders)) {
    std::string known;
    for (const char* k : kDecoders) known += (known.empty() ? "" : ", ") + std::string(k);
    m.unsupported = "model_type '" + m.model_type + "' is not a decoder tplinear computes (" +
                    known + "); its layers would run as another family's";
  }
  m.hidden = need_size(j, "hidden_size", name);
  m.heads = need_size(j, "num_attention_heads", name);
  m.kv_heads =
      capped(opt_int(j, "num_key_value_heads", m.heads, name), "num_key_value_heads", name);
  m.head_dim = j.contains("head_dim") && j["head_dim"].is_number_integer()
                   ? capped(j["head_dim"].get<std::int64_t>(), "head_dim", name)
                   : (m.heads > 0 ? m.hidden / m.heads : 0);
  if (deepseek) {
    // DeepSeek-V2/V3: multi-head latent attention; every head has its own K and V (from the
    // shared latent), so there are no KV-head groups.
    Mla a;
    a.q_lora_rank = j.contains("q_lora_rank") && !j["q_lora_rank"].is_null()
                        ? need_size(j, "q_lora_rank", name)
                        : 0;
    if (j.contains("q_lora_rank") && !j["q_lora_rank"].is_null() && a.q_lora_rank <= 0)
      TPL_THROW(ConfigError, kWhere, "model '", name,
                "': field 'q_lora_rank' must be positive or null, got ", a.q_lora_rank);
    a.kv_lora_rank = need_size(j, "kv_lora_rank", name);
    a.qk_nope_head_dim = need_size(j, "qk_nope_head_dim", name);
    a.qk_rope_head_dim = need_size(j, "qk_rope_head_dim", name);
    a.v_head_dim = need_size(j, "v_head_dim", name);
    a.index_topk = opt_int(j, "index_topk", 0, name);
    for (const auto& [field, v] : {std::pair{"kv_lora_rank", a.kv_lora_rank},
                                   {"qk_nope_head_dim", a.qk_nope_head_dim},
                                   {"qk_rope_head_dim", a.qk_rope_head_dim},
                                   {"v_head_dim", a.v_head_dim}})
      if (v <= 0)
        TPL_THROW(ConfigError, kWhere, "model '", name, "': field '", field,
                  "' must be positive, got ", v);
    if (a.qk_rope_head_dim % 2 != 0)
      TPL_THROW(ConfigError, kWhere, "model '", name, "': field 'qk_rope_head_dim' must be even ",
                "for RoPE, got ", a.qk_rope_head_dim);
    if (j.contains("index_topk") && a.index_topk <= 0)
      TPL_THROW(ConfigError, kWhere, "model '", name,
                "': field 'index_topk' must be positive, got ", a.index_topk);
    if (j.value("attention_bias", false))
      TPL_THROW(ConfigError, kWhere, "model '", name,
                "': field 'attention_bias' is true; MLA projections without bias only");
    m.mla = a;
    m.head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim;
    m.kv_heads = m.heads;
    m.shared_expert_module = "shared_experts";
  }
  m.layers = need_size(j, "num_hidden_layers", name);
  m.intermediate = need_size(j, "intermediate_size", name);
  m.rms_eps = j.value("rms_norm_eps", 1e-6);
  m.rope_theta = j.value("rope_theta", 10000.0);
  m.qkv_bias = j.value("qkv_bias", m.model_type == "qwen2" || m.model_type == "qwen2_moe");
  m.qk_norm = m.model_type == "qwen3" || m.model_type == "qwen3_moe";
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const nlohmann::json& rs = j["rope_scaling"];
    auto bad = [&](const std::string& field, const std::string& what) {
      TPL_THROW(ConfigError, kWhere, "model '", name, "': field 'rope_scaling.", field, "' ", what);
    };
    if (!rs.is_object()) bad("", "must be an object");
    const std::string type = rs.value("rope_type", rs.value("type", std::string("default")));
    const char* type_field = rs.contains("rope_type") ? "rope_type" : "type";
    if (type == "yarn" && !deepseek)
      bad(type_field,
          "is 'yarn', which tplinear implements as DeepSeek's (MLA models) only; "
          "supported here: default, linear, llama3");
    if (type != "default" && type != "linear" && type != "llama3" && type != "yarn")
      bad(type_field,
          "is '" + type + "'; supported: default, linear, llama3" + (deepseek ? ", yarn" : ""));
    m.rope_scaling.type = type;
    auto num = [&](const char* key, double fallback, bool needed) {
      if (!rs.contains(key)) {
        if (needed) bad(key, "is missing (rope_type " + type + ")");
        return fallback;
      }
      if (!rs[key].is_number() || !(rs[key].get<double>() > 0) ||
          !std::isfinite(rs[key].get<double>()))
        bad(key, "must be a positive number");
      return rs[key].get<double>();
    };
    const bool scaled = type != "default";
    m.rope_scaling.factor = num("factor", 1, scaled);
    if (type == "llama3") {
      m.rope_scaling.low_freq_factor = num("low_freq_factor", 1, true);
      m.rope_scaling.high_freq_factor = num("high_freq_factor", 4, true);
      m.rope_scaling.original_max_position_embeddings =
          num("original_max_position_embeddings", 8192, true);
      if (m.rope_scaling.high_freq_factor <= m.rope_scaling.low_freq_factor)
        bad("high_freq_factor", "must exceed low_freq_factor");
    }
    if (type == "yarn") {
      RopeScaling& r = m.rope_scaling;
      r.original_max_position_embeddings = num("original_max_position_embeddings", 4096, false);
      r.beta_fast = num("beta_fast", 32, false);
      r.beta_slow = num("beta_slow", 1, false);
      r.mscale = num("mscale", 1, false);
    }
    // DeepSeek's attention corrects its softmax scale by mscale_all_dim whatever the type.
    if (deepseek && rs.contains("mscale_all_dim")) {
      if (!rs["mscale_all_dim"].is_number() || !(rs["mscale_all_dim"].get<double>() >= 0))
        bad("mscale_all_dim", "must be a number >= 0");
      m.rope_scaling.mscale_all_dim = rs["mscale_all_dim"].get<double>();
    }
  }
  m.num_experts = capped(opt_int(j, "num_experts", opt_int(j, "n_routed_experts", 0, name), name),
                         "num_experts", name);
  m.shared_expert_intermediate = capped(opt_int(j, "shared_expert_intermediate_size", 0, name),
                                        "shared_expert_intermediate_size", name);
  m.decoder_sparse_step = opt_int(j, "decoder_sparse_step", 1, name);
  m.first_k_dense = opt_int(j, "first_k_dense_replace", 0, name);
  if (deepseek && m.num_experts > 0) {
    // DeepSeekMoE: n_shared_experts experts of moe_intermediate_size, run as one MLP.
    m.moe_layer_freq = opt_int(j, "moe_layer_freq", 1, name);
    if (m.moe_layer_freq <= 0)
      TPL_THROW(ConfigError, kWhere, "model '", name, "': field 'moe_layer_freq' must be positive");
    const std::int64_t shared =
        capped(opt_int(j, "n_shared_experts", 0, name), "n_shared_experts", name);
    if (shared > 0) {
      const std::int64_t width = need_size(j, "moe_intermediate_size", name);
      if (width <= 0)
        TPL_THROW(ConfigError, kWhere, "model '", name,
                  "': field 'moe_intermediate_size' must be positive, got ", width);
      // Both at most 2^20: the product fits; validate() caps it.
      m.shared_expert_intermediate = shared * width;
    }
  }
  if (j.contains("mlp_only_layers") && j["mlp_only_layers"].is_array()) {
    for (const nlohmann::json& l : j["mlp_only_layers"]) {
      if (!is_int64(l))
        TPL_THROW(ConfigError, kWhere, "model '", name,
                  "': config.json field 'mlp_only_layers' must hold integers, got ", l.dump());
      m.mlp_only_layers.push_back(l.get<std::int64_t>());
    }
  }
  m.info = ModelInfo::from_json(hf);
  m.validate();
  return m;
}

ModelSpec ModelSpec::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) TPL_THROW(IoError, kWhere, "cannot open model config '", path, "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) TPL_THROW(IoError, kWhere, "cannot read model config '", path, "'");
  nlohmann::json j;
  try {
    j = parse_json(text);
  } catch (const nlohmann::json::exception& e) {
    TPL_THROW(ConfigError, kWhere, "'", path, "' is not valid JSON: ", e.what());
  }
  try {
    return from_hf_json(j, path);
  } catch (const nlohmann::json::exception& e) {
    TPL_THROW(ConfigError, kWhere, "'", path, "' has a field of the wrong type: ", e.what());
  }
}

ModelSpec ModelSpec::preset(const std::string& name) {
  auto it = preset_table().find(name);
  if (it == preset_table().end()) {
    std::string known;
    for (const auto& [k, v] : preset_table()) known += (known.empty() ? "" : ", ") + k;
    TPL_THROW(ConfigError, kWhere, "unknown preset '", name, "' (known: ", known, ")");
  }
  return from_hf_json(it->second, name);
}

ModelSpec ModelSpec::load(const std::string& name_or_path) {
  if (preset_table().count(name_or_path)) return preset(name_or_path);
  std::error_code ec;
  if (std::filesystem::is_directory(name_or_path, ec)) {
    const std::string cfg = (std::filesystem::path(name_or_path) / "config.json").string();
    if (!std::filesystem::exists(cfg, ec))
      TPL_THROW(ConfigError, kWhere, "model directory '", name_or_path, "' has no config.json");
    return from_file(cfg);
  }
  if (std::filesystem::is_regular_file(name_or_path, ec)) return from_file(name_or_path);
  std::string known;
  for (const auto& [k, v] : preset_table()) known += (known.empty() ? "" : ", ") + k;
  TPL_THROW(ConfigError, kWhere, "unknown preset '", name_or_path, "' (known: ", known,
            "; or a config.json path or a checkpoint directory)");
}

namespace {
// DeepSeek's yarn_get_mscale.
double yarn_mscale(double scale, double mscale) {
  return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}
}  // namespace

double ModelSpec::rope_mscale() const {
  const RopeScaling& r = rope_scaling;
  if (r.type != "yarn") return 1.0;
  return yarn_mscale(r.factor, r.mscale) / yarn_mscale(r.factor, r.mscale_all_dim);
}

double ModelSpec::softmax_scale() const {
  double s = 1.0 / std::sqrt(double(head_dim));
  if (mla && rope_scaling.type != "default" && rope_scaling.mscale_all_dim != 0) {
    const double m = yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    s *= m * m;
  }
  return s;
}

double ModelSpec::rope_inv_freq(std::int64_t d) const {
  const std::int64_t dim = rope_dim();
  const double inv = std::pow(rope_theta, -2.0 * double(d) / double(dim));
  const RopeScaling& r = rope_scaling;
  if (r.type == "linear") return inv / r.factor;
  if (r.type == "yarn") {
    // DeepseekV2YarnRotaryEmbedding: extrapolated (inv) below the correction range,
    // interpolated (inv / factor) above it, a linear ramp between.
    const double pi = 3.14159265358979323846;
    auto correction_dim = [&](double rotations) {
      return double(dim) * std::log(r.original_max_position_embeddings / (rotations * 2 * pi)) /
             (2 * std::log(rope_theta));
    };
    const double low = std::max(std::floor(correction_dim(r.beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(r.beta_slow)), double(dim - 1));
    if (low == high) high += 0.001;
    const double ramp = std::clamp((double(d) - low) / (high - low), 0.0, 1.0);
    const double extra = 1.0 - ramp;  // inv_freq_mask
    return inv / r.factor * (1.0 - extra) + inv * extra;
  }
  if (r.type != "llama3") return inv;
  const double pi = 3.14159265358979323846;
  const double wavelen = 2 * pi / inv;
  const double low_wavelen = r.original_max_position_embeddings / r.low_freq_factor;
  const double high_wavelen = r.original_max_position_embeddings / r.high_freq_factor;
  if (wavelen < high_wavelen) return inv;
  if (wavelen > low_wavelen) return inv / r.factor;
  const double smooth = (r.original_max_position_embeddings / wavelen - r.low_freq_factor) /
                        (r.high_freq_factor - r.low_freq_factor);
  return (1 - smooth) * inv / r.factor + smooth * inv;
}

std::vector<std::string> ModelSpec::presets() {
  std::vector<std::string> v;
  for (const auto& [k, _] : preset_table()) v.push_back(k);
  return v;
}

bool ModelSpec::layer_is_moe(std::int64_t l) const {
  if (num_experts <= 0) return false;
  if (l < first_k_dense) return false;
  if (moe_layer_freq > 0) return l % moe_layer_freq == 0;  // DeepSeek's rule (§12.2)
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), l) != mlp_only_layers.end())
    return false;
  return (l + 1) % std::max<std::int64_t>(1, decoder_sparse_step) == 0;
}

void ModelSpec::validate() const {
  const Where w{"model " + name};
  if (hidden <= 0 || heads <= 0 || kv_heads <= 0 || head_dim <= 0 || layers <= 0 ||
      intermediate <= 0)
    TPL_THROW(ConfigError, w, "sizes must be positive (hidden ", hidden, ", heads ", heads,
              ", kv heads ", kv_heads, ", head_dim ", head_dim, ", layers ", layers,
              ", intermediate ", intermediate, ")");
  std::vector<std::pair<const char*, std::int64_t>> sizes = {
      {"hidden", hidden},       {"intermediate", intermediate},
      {"heads", heads},         {"kv heads", kv_heads},
      {"head_dim", head_dim},   {"layers", layers},
      {"experts", num_experts}, {"shared expert intermediate", shared_expert_intermediate}};
  if (mla) {
    sizes.insert(sizes.end(), {{"q_lora_rank", mla->q_lora_rank},
                               {"kv_lora_rank", mla->kv_lora_rank},
                               {"qk_nope_head_dim", mla->qk_nope_head_dim},
                               {"qk_rope_head_dim", mla->qk_rope_head_dim},
                               {"v_head_dim", mla->v_head_dim}});
  }
  for (const auto& [what, v] : sizes) {
    if (v > kMaxSize)
      TPL_THROW(ConfigError, w, what, " is ", v, "; tplinear takes sizes up to ", kMaxSize);
    if (v < 0) TPL_THROW(ConfigError, w, what, " must not be negative, got ", v);
  }
  if (heads % kv_heads != 0)
    TPL_THROW(ConfigError, w, "num_attention_heads ", heads,
              " must be a multiple of num_key_value_heads ", kv_heads);
  if (rope_dim() % 2 != 0) TPL_THROW(ConfigError, w, "head_dim must be even for RoPE");
  if (!(rms_eps > 0) || !std::isfinite(rms_eps))
    TPL_THROW(ConfigError, w, "rms_norm_eps must be a positive number, got ", rms_eps);
  if (!(rope_theta > 0) || !std::isfinite(rope_theta))
    TPL_THROW(ConfigError, w, "rope_theta must be a positive number, got ", rope_theta);
}

}  // namespace tpl

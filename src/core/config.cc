#include "tpl/config.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "tpl/error.h"
#include "tpl/json_text.h"

namespace tpl {

namespace {
const Where kWhere{"config"};

bool contains_expert_key(const nlohmann::json& j) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key().find("expert") != std::string::npos) return true;
      if (contains_expert_key(it.value())) return true;
    }
  } else if (j.is_array()) {
    for (const auto& v : j)
      if (contains_expert_key(v)) return true;
  }
  return false;
}

std::optional<std::int64_t> opt_int(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_number_integer())
    TPL_THROW(ConfigError, kWhere, "HF config field '", key, "' must be an integer");
  return j[key].get<std::int64_t>();
}

nlohmann::json parse_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) TPL_THROW(IoError, kWhere, "cannot open '", path, "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) TPL_THROW(IoError, kWhere, "cannot read '", path, "'");
  try {
    return parse_json(text);
  } catch (const nlohmann::json::exception& e) {
    TPL_THROW(ConfigError, kWhere, "'", path, "' is not valid JSON: ", e.what());
  }
}
}  // namespace

ModelInfo ModelInfo::from_json(const nlohmann::json& hf) {
  // Multimodal configs nest the language model's fields (vLLM's hf_text_config).
  const nlohmann::json& j = hf.contains("text_config") ? hf["text_config"] : hf;
  if (!j.is_object()) TPL_THROW(ConfigError, kWhere, "HF config must be a JSON object");
  ModelInfo m;
  if (j.contains("model_type") && !j["model_type"].is_string())
    TPL_THROW(ConfigError, kWhere, "HF config field 'model_type' must be a string");
  m.model_type = j.value("model_type", "");
  // §12.2: an absent n_routed_experts reads as 0 (which counts as "set"); only an explicit null
  // means "no routed experts".
  if (!j.contains("n_routed_experts"))
    m.n_routed_experts = 0;
  else
    m.n_routed_experts = opt_int(j, "n_routed_experts");
  m.first_k_dense_replace = opt_int(j, "first_k_dense_replace");
  m.moe_layer_freq = opt_int(j, "moe_layer_freq").value_or(1);
  if (m.moe_layer_freq < 1) TPL_THROW(ConfigError, kWhere, "moe_layer_freq must be >= 1");
  m.has_index_topk = j.contains("index_topk");
  m.is_moe = contains_expert_key(j);
  m.num_hidden_layers = opt_int(j, "num_hidden_layers").value_or(0);
  return m;
}

ModelInfo ModelInfo::from_file(const std::string& path) {
  return from_json(parse_file(path));
}

bool ModelInfo::is_moe_layer(const std::string& prefix) const {
  static const std::regex kLayer(R"(layers\.(\d+)\.)");
  std::smatch m;
  if (!std::regex_search(prefix, m, kLayer)) return false;
  if (!n_routed_experts) return false;
  if (m[1].length() > 9) return false;  // not a real layer index
  const std::int64_t l = std::stoll(m[1].str());
  const std::int64_t first =
      first_k_dense_replace.value_or(std::numeric_limits<std::int64_t>::max());
  return l >= first && l % moe_layer_freq == 0;
}

namespace {
std::int64_t get_int64(const nlohmann::json& j, const char* key, std::int64_t def) {
  if (!j.contains(key)) return def;
  if (!j[key].is_number_integer())
    TPL_THROW(ConfigError, kWhere, "config key '", key, "' must be an integer, got ",
              j[key].dump());
  return j[key].get<std::int64_t>();
}
int get_int(const nlohmann::json& j, const char* key, int def) {
  const std::int64_t v = get_int64(j, key, def);
  if (v < -(1 << 30) || v > (1 << 30))
    TPL_THROW(ConfigError, kWhere, "config key '", key, "' is out of range: ", v);
  return static_cast<int>(v);
}
bool get_bool(const nlohmann::json& j, const char* key, bool def) {
  if (!j.contains(key)) return def;
  if (!j[key].is_boolean())
    TPL_THROW(ConfigError, kWhere, "config key '", key, "' must be true or false, got ",
              j[key].dump());
  return j[key].get<bool>();
}
}  // namespace

const char* overlap_name(Overlap o) {
  switch (o) {
    case Overlap::kOn:
      return "on";
    case Overlap::kOff:
      return "off";
    case Overlap::kAuto:
      break;
  }
  return "auto";
}

bool overlap_enabled(Overlap o, bool spare_core) {
  return o == Overlap::kOn || (o == Overlap::kAuto && spare_core);
}

Config Config::from_json(const nlohmann::json& j) {
  static const std::set<std::string> kKeys{"pp",
                                           "dp",
                                           "tp",
                                           "flashcomm1",
                                           "flashcomm1_threshold",
                                           "flashcomm2_p",
                                           "mlp_tp",
                                           "oproj_tp",
                                           "matmul_allreduce",
                                           "layer_sharding",
                                           "shared_expert_dp",
                                           "expert_parallel",
                                           "eager",
                                           "deployment",
                                           "fused_chunks",
                                           "overlap",
                                           "fc1_quantized_allgather"};
  if (!j.is_object()) TPL_THROW(ConfigError, kWhere, "config must be a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!kKeys.count(it.key()))
      TPL_THROW(ConfigError, kWhere, "unknown config key '", it.key(), "'");
  Config c;
  try {
    c.layout.pp = get_int(j, "pp", 1);
    c.layout.dp = get_int(j, "dp", 1);
    c.layout.tp = get_int(j, "tp", 1);
    c.flashcomm1 = get_bool(j, "flashcomm1", false);
    c.flashcomm1_threshold = get_int64(j, "flashcomm1_threshold", 1000);
    c.flashcomm2_p = get_int(j, "flashcomm2_p", 0);
    c.mlp_tp = get_int(j, "mlp_tp", 0);
    c.oproj_tp = get_int(j, "oproj_tp", 0);
    c.matmul_allreduce = get_bool(j, "matmul_allreduce", false);
    c.layer_sharding = j.value("layer_sharding", std::vector<std::string>{});
    c.shared_expert_dp = get_bool(j, "shared_expert_dp", false);
    c.expert_parallel = get_bool(j, "expert_parallel", false);
    c.eager = get_bool(j, "eager", false);
    c.fused_chunks = get_int(j, "fused_chunks", 0);
    c.fc1_quantized_allgather = get_bool(j, "fc1_quantized_allgather", false);
    const std::string ov = j.value("overlap", std::string("auto"));
    if (ov == "auto")
      c.overlap = Overlap::kAuto;
    else if (ov == "on")
      c.overlap = Overlap::kOn;
    else if (ov == "off")
      c.overlap = Overlap::kOff;
    else
      TPL_THROW(ConfigError, kWhere, "overlap must be auto, on or off, got '", ov, "'");
    const std::string dep = j.value("deployment", std::string("mixed"));
    if (dep == "mixed")
      c.deployment = Deployment::kMixed;
    else if (dep == "prefill")
      c.deployment = Deployment::kPrefill;
    else if (dep == "decode")
      c.deployment = Deployment::kDecode;
    else
      TPL_THROW(ConfigError, kWhere, "deployment must be mixed, prefill or decode, got '", dep,
                "'");
  } catch (const nlohmann::json::exception& e) {
    TPL_THROW(ConfigError, kWhere, "bad value type: ", e.what());
  }
  c.validate();
  return c;
}

Config Config::from_file(const std::string& path) {
  return from_json(parse_file(path));
}

nlohmann::json Config::to_json() const {
  const char* dep = deployment == Deployment::kMixed     ? "mixed"
                    : deployment == Deployment::kPrefill ? "prefill"
                                                         : "decode";
  return {{"pp", layout.pp},
          {"dp", layout.dp},
          {"tp", layout.tp},
          {"flashcomm1", flashcomm1},
          {"flashcomm1_threshold", flashcomm1_threshold},
          {"flashcomm2_p", flashcomm2_p},
          {"mlp_tp", mlp_tp},
          {"oproj_tp", oproj_tp},
          {"matmul_allreduce", matmul_allreduce},
          {"layer_sharding", layer_sharding},
          {"shared_expert_dp", shared_expert_dp},
          {"expert_parallel", expert_parallel},
          {"eager", eager},
          {"deployment", dep},
          {"fused_chunks", fused_chunks},
          {"overlap", overlap_name(overlap)},
          {"fc1_quantized_allgather", fc1_quantized_allgather}};
}

void Config::validate() const {
  // PP x DP x TP without overflow (sizes up to 2^30 each parse); layout.validate() reports
  // sizes < 1 before it compares the product.
  int world = 0;
  if (layout.pp >= 1 && layout.dp >= 1 && layout.tp >= 1 &&
      (__builtin_mul_overflow(layout.pp, layout.dp, &world) ||
       __builtin_mul_overflow(world, layout.tp, &world)))
    TPL_THROW(ConfigError, kWhere, "PP x DP x TP = ", layout.pp, " x ", layout.dp, " x ", layout.tp,
              " does not fit in an int");
  layout.validate(world);
  if (flashcomm1_threshold < 0) TPL_THROW(ConfigError, kWhere, "flashcomm1_threshold must be >= 0");
  if (fused_chunks < 0) TPL_THROW(ConfigError, kWhere, "fused_chunks must be >= 0 (0 = automatic)");
  if (mlp_tp < 0 || oproj_tp < 0 || flashcomm2_p < 0)
    TPL_THROW(ConfigError, kWhere, "group sizes must be >= 0 (0 disables)");
  if (mlp_tp > 0 && layout.dp % mlp_tp != 0)
    TPL_THROW(ConfigError, kWhere, "MLP TP size ", mlp_tp, " must divide the DP size ", layout.dp);
  if (flashcomm2_p > 0 && oproj_tp > 0)
    TPL_THROW(ConfigError, kWhere, "O-proj TP and FlashComm2 are mutually exclusive");
  if (oproj_tp > 0) {
    if (layout.dp % oproj_tp != 0)
      TPL_THROW(ConfigError, kWhere, "O-proj TP size ", oproj_tp, " must divide the DP size ",
                layout.dp);
    if (eager)
      TPL_THROW(ConfigError, kWhere, "O-proj TP requires graph mode (eager must be false)");
    if (deployment != Deployment::kDecode)
      TPL_THROW(ConfigError, kWhere,
                "O-proj TP is only supported on a PD-disaggregated decode node");
    // Its all-to-all cuts the features of every attention head; with TP > 1 a rank holds only
    // its heads (seed §16 item 9).
    if (layout.tp != 1)
      TPL_THROW(ConfigError, kWhere,
                "O-proj TP needs TP = 1 (its input must carry every attention head), got TP = ",
                layout.tp);
  }
  const bool sp = flashcomm1 || (shared_expert_dp && expert_parallel && layout.tp > 1);
  if (sp && layout.tp < 2) TPL_THROW(ConfigError, kWhere, "FlashComm1 needs TP > 1");
  if (flashcomm2_p > 0) {
    if (!layer_sharding.empty() && !(layer_sharding.size() == 1 && layer_sharding[0] == "o_proj"))
      TPL_THROW(ConfigError, kWhere,
                "with FlashComm2, layer_sharding must be exactly [\"o_proj\"]");
    if (layout.tp <= flashcomm2_p || layout.tp % flashcomm2_p != 0)
      TPL_THROW(ConfigError, kWhere, "FlashComm2 P = ", flashcomm2_p, " with TP = ", layout.tp,
                ": P must divide T and be smaller than it");
    if (deployment == Deployment::kDecode)
      TPL_THROW(ConfigError, kWhere, "FlashComm2 is not supported on a PD decode node");
  }
}

Features Features::derive(const Config& c, const ModelInfo& m) {
  Features f;
  const bool se_dp_effective = c.shared_expert_dp && c.expert_parallel && c.layout.tp > 1;
  // §3.3: effective shared-expert DP forces FC1 on. Unlike the seed's cached global, this is
  // evaluated once from the config, so the order of calls cannot change the answer.
  f.enable_sp = c.flashcomm1 || se_dp_effective;
  f.shared_expert_dp = se_dp_effective || f.enable_sp;
  f.flashcomm2 = c.flashcomm2_p > 0;
  f.o_shard = std::find(c.layer_sharding.begin(), c.layer_sharding.end(), "o_proj") !=
              c.layer_sharding.end();
  f.flashcomm2_oshard = f.flashcomm2 && f.o_shard;
  f.mlp_tp = c.mlp_tp > 0;
  f.oproj_tp = c.oproj_tp > 0;
  f.matmul_allreduce = c.matmul_allreduce;
  f.dsa_cp = m.has_index_topk && f.enable_sp;
  f.dsa_cp_with_layer_shard = f.dsa_cp && c.deployment == Deployment::kPrefill;
  return f;
}

GroupSizes group_sizes(const Config& c, const Features& f) {
  GroupSizes s;
  s.mlp_tp = c.mlp_tp;
  s.oproj_tp = c.oproj_tp;
  s.flashcomm2_p = c.flashcomm2_p;
  if (!c.layer_sharding.empty()) {
    if (f.flashcomm2)
      s.shard_weight =
          c.flashcomm2_p == 1 ? ShardWeightScheme::kWholeStage : ShardWeightScheme::kSameOtpRank;
    else if (f.dsa_cp_with_layer_shard)
      s.shard_weight = ShardWeightScheme::kWholeStage;
    else
      s.shard_weight = ShardWeightScheme::kSameTpIndex;
  }
  return s;
}

}  // namespace tpl

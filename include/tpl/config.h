// Configuration (seed-spec §3): one validated, immutable object, loadable from JSON.
// The seed reads environment variables and a global config in many places; here every switch is
// a field, read once, and the derived predicates (§3.3) are computed once by Features.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tpl/process_groups.h"

namespace tpl {

// Prefill/decode disaggregation role of this instance (vLLM's kv_transfer_config).
enum class Deployment { kMixed, kPrefill, kDecode };

// Fields of a Hugging Face config.json that selection reads (§3.3, §4, §12.2).
struct ModelInfo {
  std::string model_type;
  std::optional<std::int64_t> n_routed_experts;       // absent -> no MoE layers by is_moe_layer
  std::optional<std::int64_t> first_k_dense_replace;  // absent -> +infinity
  std::int64_t moe_layer_freq = 1;
  bool has_index_topk = false;  // DeepSeek-V3.2 sparse attention (DSA)
  bool is_moe = false;          // any key containing "expert" anywhere in the config (§4 step 3)
  std::int64_t num_hidden_layers = 0;

  static ModelInfo from_json(const nlohmann::json& hf_config);
  static ModelInfo from_file(const std::string& path);  // throws IoError / ConfigError
  // §12.2: true iff the prefix names layer l (first "layers.<digits>.") with
  // n_routed_experts set, l >= first_k_dense_replace and l % moe_layer_freq == 0.
  bool is_moe_layer(const std::string& prefix) const;
};

// Whether fused GEMM + collective paths run their collectives on the overlap worker thread.
// kAuto: only where the thread gets a core of its own (worker_has_spare_core), since a worker
// that shares the rank's only core slows the GEMM it should hide behind (docs/planner.md).
enum class Overlap { kAuto, kOn, kOff };
const char* overlap_name(Overlap o);  // "auto", "on", "off"
// kOn and kOff as they are; kAuto resolves to `spare_core`.
bool overlap_enabled(Overlap o, bool spare_core);

struct Config {
  ParallelLayout layout;
  bool flashcomm1 = false;                   // sequence parallelism (VLLM_ASCEND_ENABLE_FLASHCOMM1)
  std::int64_t flashcomm1_threshold = 1000;  // dense models: FC1 only when tokens > threshold
  int flashcomm2_p = 0;  // 0 = FlashComm2 off; P >= 1 = O-proj TP size inside FC2
  int mlp_tp = 0;        // 0 = off; MLP-TP group size m
  int oproj_tp = 0;      // 0 = off; O-proj-TP group size m
  bool matmul_allreduce = false;
  std::vector<std::string> layer_sharding;  // e.g. {"o_proj"}
  bool shared_expert_dp = false;
  bool expert_parallel = false;
  bool eager = false;  // graph mode off
  Deployment deployment = Deployment::kMixed;
  bool fc1_quantized_allgather = false;  // W8A8: FC1 all-gathers int8 instead of activations
  int fused_chunks = 0;  // chunks of fused GEMM+collective paths; 0 = automatic rule
  Overlap overlap = Overlap::kAuto;

  // Parses the JSON form (docs/config.md), then validate()s. Unknown keys are errors.
  static Config from_json(const nlohmann::json& j);
  static Config from_file(const std::string& path);
  nlohmann::json to_json() const;
  // The checks of §2.2 and §3.4; throws ConfigError naming the rule.
  void validate() const;
};

// The derived predicates of §3.3, computed once per (config, model).
struct Features {
  bool enable_sp = false;         // FC1 (forced on by effective shared-expert DP)
  bool shared_expert_dp = false;  // shared experts replicated, run on the token shard
  bool flashcomm2 = false;
  bool o_shard = false;  // layer_sharding contains "o_proj"
  bool flashcomm2_oshard = false;
  bool mlp_tp = false;
  bool oproj_tp = false;
  bool matmul_allreduce = false;
  bool dsa_cp = false;                   // index_topk and enable_sp
  bool dsa_cp_with_layer_shard = false;  // dsa_cp on a prefill node

  static Features derive(const Config& c, const ModelInfo& m);
};

// The groups a config needs (sizes for ProcessGroups).
GroupSizes group_sizes(const Config& c, const Features& f);

}  // namespace tpl

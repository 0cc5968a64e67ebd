// A transformer decoder stack built from tplinear layers, for `tplinear run` and its tests.
//
// Each layer: RMSNorm, qkv (QKV column), causal GQA attention with RoPE over the rank's local
// heads, o_proj (row), residual, RMSNorm, gate_up (merged column), SiLU·mul, down (row),
// residual. DeepSeek-V2/V3 layers run multi-head latent attention instead (docs/architecture.md):
// q_proj or q_a_proj -> q_a_layernorm -> q_b_proj, kv_a_proj_with_mqa -> kv_a_layernorm ->
// kv_b_proj, decoupled RoPE, o_proj; under DSA-CP (index_topk with FC1) each rank attends for
// its token shard with all heads (the ShardedCP ops). MoE layers run their shared experts (if the
// model has any) through tplinear and skip the routed experts: expert FFNs are outside the scope of
// linear ops. Embedding, final norm and LM head are not part of the stack; the input hidden states
// are seeded random values.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tpl/backends.h"
#include "tpl/config.h"
#include "tpl/layer_shard.h"
#include "tpl/linear.h"

namespace tpl {

struct MachineProfile;

struct ModelSpec {
  std::string name;        // preset name or config path
  std::string model_type;  // llama, qwen2, qwen3, qwen3_moe, qwen2_moe, ...
  std::int64_t hidden = 0, intermediate = 0;
  std::int64_t heads = 0, kv_heads = 0, head_dim = 0;
  std::int64_t layers = 0;
  double rms_eps = 1e-6, rope_theta = 10000.0;
  // config.json's rope_scaling: "default" (none), "linear" (positions / factor), "llama3"
  // (Llama-3.1: long wavelengths / factor, a smooth band between; HF's
  // _compute_llama3_parameters) or, for DeepSeek MLA, "yarn" (DeepSeek's
  // DeepseekV2YarnRotaryEmbedding: interpolated frequencies, cos/sin and the softmax scale
  // corrected by mscale). Other types are refused (ConfigError naming the field).
  struct RopeScaling {
    std::string type = "default";
    double factor = 1, low_freq_factor = 1, high_freq_factor = 4;
    double original_max_position_embeddings = 8192;
    double beta_fast = 32, beta_slow = 1, mscale = 1, mscale_all_dim = 0;  // yarn
  } rope_scaling;
  // Multi-head latent attention (DeepSeek-V2/V3). head_dim is then qk_nope + qk_rope (the
  // query/key head), kv_heads = heads.
  struct Mla {
    std::int64_t q_lora_rank = 0;  // 0: q_proj; else q_a_proj -> q_a_layernorm -> q_b_proj
    std::int64_t kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
    std::int64_t index_topk = 0;  // DSA (V3.2): sparse attention over this many keys
  };
  std::optional<Mla> mla;
  bool qkv_bias = false;  // Qwen2 has q/k/v biases
  bool qk_norm = false;   // Qwen3: per-head RMSNorm of q and k (q_norm, k_norm) before RoPE
  // MoE structure (decides which layers run experts; selection uses ModelInfo).
  std::int64_t num_experts = 0;
  std::int64_t shared_expert_intermediate = 0;  // 0 = no shared expert
  std::int64_t decoder_sparse_step = 1;         // Qwen-MoE: layer l is MoE when (l + 1) % step == 0
  std::int64_t first_k_dense = 0;
  std::int64_t moe_layer_freq = 0;  // DeepSeek: MoE when l >= first_k_dense and l % freq == 0
  // The shared expert's module name: "shared_expert" (Qwen-MoE) or "shared_experts" (DeepSeek).
  std::string shared_expert_module = "shared_expert";
  std::vector<std::int64_t> mlp_only_layers;
  ModelInfo info;  // what selection reads (§12.2)
  // Non-empty for a model_type whose layers DecoderStack would not compute faithfully (Qwen3-Next's
  // linear attention, Bailing, ...): the stack refuses it (Unsupported) with this reason; explain
  // still lists the op selection of its standard-named layers.
  std::string unsupported;

  static ModelSpec from_hf_json(const nlohmann::json& j, const std::string& name);
  static ModelSpec from_file(const std::string& config_json);
  static ModelSpec preset(const std::string& name);  // ConfigError naming the known presets
  // A preset name, a config.json path or a checkpoint directory holding config.json (as vLLM's
  // --model); ConfigError naming the presets when it is none of them.
  static ModelSpec load(const std::string& name_or_path);
  // RoPE's inverse frequency of pair d (of rope_dim() / 2), rope_scaling applied.
  double rope_inv_freq(std::int64_t d) const;
  // The dims RoPE rotates: head_dim, or MLA's qk_rope_head_dim.
  std::int64_t rope_dim() const { return mla ? mla->qk_rope_head_dim : head_dim; }
  // yarn: the factor on cos and sin (1 otherwise).
  double rope_mscale() const;
  // The attention's softmax scale: head_dim^-0.5, times yarn's mscale(mscale_all_dim)^2.
  double softmax_scale() const;

  static std::vector<std::string> presets();
  bool layer_is_moe(std::int64_t layer) const;
  // The largest size a spec may hold: hidden, intermediate, heads, KV heads, head_dim, layers,
  // experts, the shared expert's width and MLA's ranks and head dims (released models stay
  // under 2^18). A weight's element count is a product of at most three such sizes, so it and
  // every offset within it stay far inside int64, and later arithmetic cannot overflow.
  static constexpr std::int64_t kMaxSize = std::int64_t{1} << 20;
  // Sizes positive (shared expert and q_lora_rank: >= 0) and at most kMaxSize, heads
  // divisible by KV heads, RoPE dims even, rms_eps and rope_theta positive and finite.
  void validate() const;
};

// Where weights come from: seeded random (identical on every rank) or a checkpoint.
class WeightProvider {
 public:
  virtual ~WeightProvider() = default;
  // Full (unsharded) tensor, [rows, cols], in `dtype`.
  virtual Tensor get(const std::string& name, std::int64_t rows, std::int64_t cols, DType dtype,
                     float stddev) const = 0;
  // Blocks of it; the defaults slice get(), a checkpoint reads only the block.
  virtual Tensor get_rows(const std::string& name, std::int64_t rows, std::int64_t cols,
                          DType dtype, float stddev, ShardRange block) const;
  virtual Tensor get_cols(const std::string& name, std::int64_t rows, std::int64_t cols,
                          DType dtype, float stddev, ShardRange block) const;
};
std::unique_ptr<WeightProvider> make_random_weights(std::uint64_t seed);

struct LayerReport {
  std::string prefix;
  std::string op;
  std::string group;
  int tp_rank = 0, tp_size = 1;
  double ms = 0;          // time of this layer's forward on this rank (summed over calls)
  double bytes_sent = 0;  // estimate of bytes this rank sent (docs/ops.md formulas)
};

// The linear layers of decoder layer `l` in forward order: qkv_proj, o_proj, then gate_up_proj
// and down_proj (the shared expert's in an MoE layer; none when it has routed experts only).
// MLA layers: q_proj (or q_a_proj, q_b_proj), kv_a_proj_with_mqa, kv_b_proj, o_proj, then the
// MLP's.
// DecoderStack builds exactly these; the cost model predicts them.
std::vector<LayerSpec> decoder_linear_specs(const ModelSpec& model, std::int64_t l, DType dtype);

struct StackOptions {
  DType dtype = DType::kF32;
  bool w8a8 = false;
  GemmBackend backend = default_cpu_gemm_backend();
  int prefetch_step = -1;  // layer sharding; -1 = min(1, layers - 2) (prefetch_step_for)
  // Profiling: a world barrier before each linear layer, so its reported time excludes the wait
  // for slower ranks' attention (`tplinear bench --sync-layers`, `plan --check`).
  bool sync_layers = false;
  // A stack built from one Config with this profile takes the choices the config leaves open
  // (overlap = auto, FC1's threshold) per batch size from the cost model (default_plan in
  // tpl/plan.h); without one, or where the cost model does not cover the config, overlap = auto
  // follows worker_has_spare_core() and FC1 its configured threshold.
  const MachineProfile* profile = nullptr;
  // Before loading any weight, the ranks compare estimate_stack_memory() with the memory their
  // node has and refuse with OutOfMemory when it does not fit (tpl/memory.h). A caller that
  // made the check itself, for more than the stack, may turn it off.
  bool check_memory = true;
};

// The layer-sharding prefetch distance k a stack of `layers` layers uses: options.prefetch_step,
// or for -1 one layer ahead when the series is long enough (k <= L - 2).
int prefetch_step_for(const StackOptions& options, std::int64_t layers);

struct Plan;

class DecoderStack {
 public:
  // Builds every layer on this rank (collective: groups are created over `world`).
  DecoderStack(Communicator& world, const ModelSpec& model, const Config& config,
               const WeightProvider& weights, const StackOptions& options);
  // Builds the stack a plan describes (tpl/plan.h): its weight layout once, and for every
  // strategy its buckets use one op per layer over those weights. forward() then runs each
  // batch with the strategy of the bucket its token count falls in (Plan::bucket_for), so one
  // loaded model serves decode and prefill with different collectives. ConfigError when the
  // plan is for another model or world size, or its strategies need different weight layouts or
  // process groups. The plan's `comms` choose each group's communicator (split_as), whatever
  // serves `world`; clear them to keep the world's kind.
  DecoderStack(Communicator& world, const ModelSpec& model, const Plan& plan,
               const WeightProvider& weights, const StackOptions& options);
  ~DecoderStack();

  // Runs all layers on `hidden` (this DP replica's [N, H] input, replicated over its TP group)
  // and returns the final hidden states of this replica, [N, H], replicated.
  Tensor forward(TensorView hidden);
  // The strategy forward() uses for a batch of `tokens` rows: the plan bucket's, or "config"
  // for a stack built from one Config.
  const std::string& strategy_for(std::int64_t tokens) const;
  // Whether that strategy's fused paths overlap their collectives with the GEMM: its
  // Config::overlap, with auto resolved by worker_has_spare_core() at construction.
  bool overlap_for(std::int64_t tokens) const;
  int num_strategies() const { return static_cast<int>(variants_.size()); }
  // The strategies the stack holds, [0] the one that fixed the weights ("config" for a stack
  // built from one Config).
  std::vector<std::string> strategy_names() const;
  // Runs `hidden` with the named strategy whatever bucket its token count falls in: an A/B
  // comparison over one set of weights, as `plan --check` measures. Collective like forward();
  // InvalidArgument (the same on every rank) for a name the stack does not hold.
  Tensor forward_with(TensorView hidden, const std::string& strategy);
  const std::vector<LayerReport>& report() const { return report_; }
  std::vector<std::string> skipped() const { return skipped_; }
  const ProcessGroups& groups() const { return *groups_; }
  std::size_t layer_shard_bytes() const;
  int layer_shard_windows() const;
  int dp_rank() const;

 private:
  struct Layer;
  struct Variant;  // one strategy: its config, features, selector and op environment
  struct Strategies {
    std::vector<std::pair<std::string, Config>> list;  // [0] fixes the groups and weights
    std::unique_ptr<Plan> plan;                        // null: list has one entry
  };
  static Strategies strategies_for(const Plan& plan);
  static Strategies strategies_for(const ModelSpec& model, const Config& config, int world,
                                   const StackOptions& options);
  DecoderStack(Communicator& world, const ModelSpec& model, Strategies strategies,
               const WeightProvider& weights, const StackOptions& options);
  int variant_for(std::int64_t tokens) const;
  Tensor run_variant(TensorView hidden, int variant);
  Communicator& world_;
  ModelSpec model_;
  Config config_;  // variant 0's: the layout and groups every variant shares
  StackOptions options_;
  Features features_;
  std::unique_ptr<ProcessGroups> groups_;
  std::vector<std::unique_ptr<Variant>> variants_;
  std::unique_ptr<Plan> plan_;       // null for a one-Config stack
  std::vector<int> bucket_variant_;  // plan bucket -> variant
  std::unique_ptr<CommWorker> worker_;
  std::unique_ptr<Communicator> gemm_comm_;   // the GEMM choices' agreement (its own stats)
  std::unique_ptr<CpuGemmChooser> cpu_gemm_;  // measures once per layer shape, rank 0 decides
  std::unique_ptr<LayerShardSeries> series_;
  // DSA-CP on a prefill node: one series per layer_sharding entry (q_b_proj, kv_b_proj, o_proj),
  // with the op environment its layers are built in.
  struct CpSeries {
    std::string name;
    std::unique_ptr<LayerShardSeries> series;
    std::unique_ptr<OpEnv> env;
  };
  std::vector<CpSeries> cp_series_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<LayerReport> report_;
  std::vector<std::string> skipped_;
};

}  // namespace tpl

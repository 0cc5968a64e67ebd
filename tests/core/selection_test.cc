// Op selection (seed-spec §11), layer-name parsing and ModelInfo (§12), table-driven.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "tpl/config.h"
#include "tpl/error.h"
#include "tpl/selection.h"

namespace tpl {
namespace {

using nlohmann::json;

// ---- fixtures ----------------------------------------------------------------------------

// Config fields a selection case sets (everything else default).
struct Cfg {
  int dp = 1;
  int tp = 4;
  bool fc1 = false;
  int fc2_p = 0;
  int mlp_tp = 0;
  int oproj_tp = 0;
  bool matmul_allreduce = false;
  std::vector<std::string> layer_sharding = {};
  bool shared_expert_dp = false;
  bool expert_parallel = false;
  Deployment deployment = Deployment::kMixed;
};

Config make_config(const Cfg& c) {
  Config cfg;
  cfg.layout.pp = 1;
  cfg.layout.dp = c.dp;
  cfg.layout.tp = c.tp;
  cfg.flashcomm1 = c.fc1;
  cfg.flashcomm2_p = c.fc2_p;
  cfg.mlp_tp = c.mlp_tp;
  cfg.oproj_tp = c.oproj_tp;
  cfg.matmul_allreduce = c.matmul_allreduce;
  cfg.layer_sharding = c.layer_sharding;
  cfg.shared_expert_dp = c.shared_expert_dp;
  cfg.expert_parallel = c.expert_parallel;
  cfg.deployment = c.deployment;
  return cfg;
}

// HF configs of the model families the selection distinguishes.
enum class Hf {
  kDense,        // Llama / Qwen dense: no MoE fields
  kDeepSeekV3,   // n_routed_experts 64, first_k_dense_replace 3 (layers 0..2 dense)
  kDeepSeekV32,  // as V3 plus index_topk (DSA)
  kFreq2,        // n_routed_experts 64, first_k_dense_replace 1, moe_layer_freq 2
  kQwenMoe,      // Qwen2-MoE / Qwen3-Next style: experts but no first_k_dense_replace
};

ModelInfo model(Hf hf) {
  switch (hf) {
    case Hf::kDense:
      return ModelInfo::from_json(json{{"model_type", "llama"}, {"num_hidden_layers", 32}});
    case Hf::kDeepSeekV3:
      return ModelInfo::from_json(json{{"model_type", "deepseek_v3"},
                                       {"n_routed_experts", 64},
                                       {"n_shared_experts", 1},
                                       {"first_k_dense_replace", 3},
                                       {"moe_layer_freq", 1}});
    case Hf::kDeepSeekV32:
      return ModelInfo::from_json(json{{"model_type", "deepseek_v32"},
                                       {"n_routed_experts", 64},
                                       {"first_k_dense_replace", 3},
                                       {"index_topk", 2048}});
    case Hf::kFreq2:
      return ModelInfo::from_json(json{{"model_type", "deepseek_v2"},
                                       {"n_routed_experts", 64},
                                       {"first_k_dense_replace", 1},
                                       {"moe_layer_freq", 2}});
    case Hf::kQwenMoe:
      return ModelInfo::from_json(json{{"model_type", "qwen3_next"},
                                       {"num_experts", 512},
                                       {"shared_expert_intermediate_size", 512}});
  }
  return {};
}

const char* hf_name(Hf hf) {
  switch (hf) {
    case Hf::kDense:
      return "dense";
    case Hf::kDeepSeekV3:
      return "deepseek_v3";
    case Hf::kDeepSeekV32:
      return "deepseek_v32";
    case Hf::kFreq2:
      return "freq2";
    case Hf::kQwenMoe:
      return "qwen_moe";
  }
  return "?";
}

constexpr Direction kCol = Direction::kColumn;
constexpr Direction kRow = Direction::kRow;
constexpr Direction kRep = Direction::kReplicated;

struct Case {
  const char* what;
  std::string prefix;
  Direction dir;
  Cfg cfg;
  Hf hf;
  int world_rank;
  OpKind kind;
  int tp_rank;
  int tp_size;
  const char* rule;
  bool disable_tp = false;
};

// Prefixes.
const std::string kQkv = "model.layers.0.self_attn.qkv_proj";
const std::string kO = "model.layers.0.self_attn.o_proj";
const std::string kGateUp = "model.layers.0.mlp.gate_up_proj";
const std::string kDown = "model.layers.0.mlp.down_proj";
const std::string kBailingQkv = "model.layers.3.attention.query_key_value";
const std::string kBailingDense = "model.layers.3.attention.dense";
const std::string kInProjQkvz = "model.layers.0.linear_attn.in_proj_qkvz";
const std::string kInProjBa = "model.layers.0.linear_attn.in_proj_ba";
const std::string kConv1d = "model.layers.0.linear_attn.conv1d";
const std::string kOutProj = "model.layers.0.linear_attn.out_proj";
const std::string kQb = "model.layers.5.self_attn.q_b_proj";
const std::string kKvb = "model.layers.5.self_attn.kv_b_proj";
const std::string kMlaO = "model.layers.5.self_attn.o_proj";
const std::string kSharedGateUp = "model.layers.5.mlp.shared_expert.gate_up_proj";
const std::string kSharedDown = "model.layers.5.mlp.shared_expert.down_proj";
const std::string kSharedsGateUp = "model.layers.5.mlp.shared_experts.gate_up_proj";
const std::string kSharedsDown = "model.layers.5.mlp.shared_experts.down_proj";

using K = OpKind;

// Commonly used configurations (all pass Config::validate()).
const Cfg kPlain{};                    // TP=4, nothing on
const Cfg kFc1{.tp = 4, .fc1 = true};  // FlashComm1
const Cfg kSeDp{.tp = 4, .shared_expert_dp = true, .expert_parallel = true};
const Cfg kFc2P1{.tp = 4, .fc2_p = 1};
const Cfg kFc2P2{.tp = 4, .fc2_p = 2};
const Cfg kFc2P2Fc1{.tp = 4, .fc1 = true, .fc2_p = 2};
const Cfg kOshard{.tp = 4, .fc2_p = 2, .layer_sharding = {"o_proj"}};
const Cfg kOshardFc1{.tp = 4, .fc1 = true, .fc2_p = 2, .layer_sharding = {"o_proj"}};
const Cfg kMar{.tp = 4, .matmul_allreduce = true};
// MLP TP over DP=4 with global TP=2 (world 8): rank 5 = (d=2, t=1) -> MLP rank 0 of 2.
const Cfg kMlp{.dp = 4, .tp = 2, .mlp_tp = 2};
const Cfg kMlpFc1{.dp = 4, .tp = 2, .fc1 = true, .mlp_tp = 2};
const Cfg kMlpMar{.dp = 4, .tp = 2, .mlp_tp = 2, .matmul_allreduce = true};
// O-proj TP: pure DP decode, DP=4, m=2: rank 3 = d 3 -> OTP rank 1 of 2.
const Cfg kOtp{.dp = 4, .tp = 1, .oproj_tp = 2, .deployment = Deployment::kDecode};
const Cfg kOtpMar{
    .dp = 4, .tp = 1, .oproj_tp = 2, .matmul_allreduce = true, .deployment = Deployment::kDecode};
const Cfg kDsaMixed{.tp = 4, .fc1 = true};
const Cfg kDsaPrefill{.tp = 4, .fc1 = true, .deployment = Deployment::kPrefill};
const Cfg kDsaPrefillMar{
    .tp = 4, .fc1 = true, .matmul_allreduce = true, .deployment = Deployment::kPrefill};

std::vector<Case> selection_cases() {
  return {
      // §11.1 step 1: disable_tp (beats every feature).
      {"disable_tp column", kQkv, kCol, kPlain, Hf::kDense, 2, K::kStandardColumn, 0, 1,
       "disable-tp", true},
      {"disable_tp row under FC1", kO, kRow, kFc1, Hf::kDense, 3, K::kStandardRow, 0, 1,
       "disable-tp", true},
      {"disable_tp replicated", "model.layers.0.mlp.gate", kRep, kPlain, Hf::kDense, 1,
       K::kReplicated, 0, 1, "disable-tp", true},
      // §11.1 step 1: shared experts under shared-expert DP (via FC1).
      {"shared_expert column FC1", kSharedGateUp, kCol, kFc1, Hf::kQwenMoe, 2, K::kStandardColumn,
       0, 1, "shared-expert-dp"},
      {"shared_expert row FC1", kSharedDown, kRow, kFc1, Hf::kQwenMoe, 2, K::kStandardRow, 0, 1,
       "shared-expert-dp"},
      {"shared_experts column FC1", kSharedsGateUp, kCol, kFc1, Hf::kDeepSeekV3, 1,
       K::kStandardColumn, 0, 1, "shared-expert-dp"},
      {"shared_experts row FC1", kSharedsDown, kRow, kFc1, Hf::kDeepSeekV3, 1, K::kStandardRow, 0,
       1, "shared-expert-dp"},
      // ... and via shared_expert_dp + expert_parallel + TP > 1 (which also forces FC1 on).
      {"shared_expert column SE-DP", kSharedGateUp, kCol, kSeDp, Hf::kQwenMoe, 3,
       K::kStandardColumn, 0, 1, "shared-expert-dp"},
      {"shared_experts row SE-DP", kSharedsDown, kRow, kSeDp, Hf::kDeepSeekV3, 3, K::kStandardRow,
       0, 1, "shared-expert-dp"},
      {"SE-DP forces FC1 for other layers", kO, kRow, kSeDp, Hf::kDeepSeekV3, 3, K::kSequenceRow, 3,
       4, "fc1-row"},
      // shared_expert_dp without expert_parallel is not effective: plain TP.
      {"SE-DP flag without EP", kSharedGateUp, kCol, Cfg{.tp = 4, .shared_expert_dp = true},
       Hf::kQwenMoe, 3, K::kStandardColumn, 3, 4, "default-column"},
      // Replicated direction ignores shared-expert DP (§11.4).
      {"shared_expert replicated under FC1", "model.layers.5.mlp.shared_expert_gate", kRep, kFc1,
       Hf::kQwenMoe, 2, K::kReplicated, 2, 4, "replicated"},
      {"replicated", "model.layers.0.mlp.gate", kRep, kPlain, Hf::kDense, 1, K::kReplicated, 1, 4,
       "replicated"},

      // §11.2 step 1: DSA-CP column (index_topk + FC1).
      {"DSA-CP q_b_proj", kQb, kCol, kDsaMixed, Hf::kDeepSeekV32, 2, K::kShardedCpColumn, 0, 1,
       "dsa-cp-column"},
      {"DSA-CP kv_b_proj", kKvb, kCol, kDsaPrefill, Hf::kDeepSeekV32, 3, K::kShardedCpColumn, 0, 1,
       "dsa-cp-column"},
      {"q_b_proj without index_topk (FC1 on)", kQb, kCol, kFc1, Hf::kDeepSeekV3, 2,
       K::kStandardColumn, 2, 4, "default-column"},
      {"kv_b_proj without DSA", kKvb, kCol, kPlain, Hf::kDeepSeekV3, 1, K::kStandardColumn, 1, 4,
       "default-column"},
      {"q_b_proj index_topk but no FC1", kQb, kCol, kPlain, Hf::kDeepSeekV32, 1, K::kStandardColumn,
       1, 4, "default-column"},
      // §11.3 step 1: DSA-CP row only on a prefill node.
      {"DSA-CP o_proj prefill", kMlaO, kRow, kDsaPrefill, Hf::kDeepSeekV32, 2, K::kShardedCpRow, 0,
       1, "dsa-cp-row"},
      {"DSA-CP o_proj mixed -> FC1 row", kMlaO, kRow, kDsaMixed, Hf::kDeepSeekV32, 2,
       K::kSequenceRow, 2, 4, "fc1-row"},
      {"DSA-CP o_proj beats matmul-allreduce", kMlaO, kRow, kDsaPrefillMar, Hf::kDeepSeekV32, 1,
       K::kShardedCpRow, 0, 1, "dsa-cp-row"},
      {"DSA-CP prefill down_proj -> matmul-allreduce", "model.layers.5.mlp.down_proj", kRow,
       kDsaPrefillMar, Hf::kDeepSeekV32, 1, K::kMatmulAllreduceRow, 1, 4, "matmul-allreduce-row"},

      // §11.2 step 2 / §11.3 step 2: MLP TP on dense layers only.
      {"MLP column DeepSeek dense layer 2", "model.layers.2.mlp.gate_up_proj", kCol, kMlp,
       Hf::kDeepSeekV3, 5, K::kMlpColumn, 0, 2, "mlp-tp-column"},
      {"MLP column DeepSeek rank 3", "model.layers.2.mlp.gate_up_proj", kCol, kMlp, Hf::kDeepSeekV3,
       3, K::kMlpColumn, 1, 2, "mlp-tp-column"},
      {"MLP column DeepSeek MoE layer 3", "model.layers.3.mlp.gate_up_proj", kCol, kMlp,
       Hf::kDeepSeekV3, 5, K::kStandardColumn, 1, 2, "default-column"},
      {"MLP row DeepSeek dense layer 2", "model.layers.2.mlp.down_proj", kRow, kMlp,
       Hf::kDeepSeekV3, 7, K::kMlpRow, 1, 2, "mlp-tp-row"},
      {"MLP row DeepSeek MoE layer 3", "model.layers.3.mlp.down_proj", kRow, kMlp, Hf::kDeepSeekV3,
       7, K::kStandardRow, 1, 2, "default-row"},
      {"MLP row DeepSeek MoE shared_experts (no SE-DP)",
       "model.layers.3.mlp.shared_experts.down_proj", kRow, kMlp, Hf::kDeepSeekV3, 2,
       K::kStandardRow, 0, 2, "default-row"},
      {"MLP freq2 layer 3 dense", "model.layers.3.mlp.gate_up_proj", kCol, kMlp, Hf::kFreq2, 4,
       K::kMlpColumn, 0, 2, "mlp-tp-column"},
      {"MLP freq2 layer 4 MoE", "model.layers.4.mlp.down_proj", kRow, kMlp, Hf::kFreq2, 4,
       K::kStandardRow, 0, 2, "default-row"},
      {"MLP freq2 layer 0 dense", "model.layers.0.mlp.down_proj", kRow, kMlp, Hf::kFreq2, 6,
       K::kMlpRow, 1, 2, "mlp-tp-row"},
      {"MLP Qwen-MoE never MoE", "model.layers.40.mlp.gate_up_proj", kCol, kMlp, Hf::kQwenMoe, 6,
       K::kMlpColumn, 1, 2, "mlp-tp-column"},
      {"MLP Qwen-MoE shared_expert (SE-DP off)", "model.layers.40.mlp.shared_expert.down_proj",
       kRow, kMlp, Hf::kQwenMoe, 2, K::kMlpRow, 1, 2, "mlp-tp-row"},
      {"MLP dense model", kGateUp, kCol, kMlp, Hf::kDense, 0, K::kMlpColumn, 0, 2, "mlp-tp-column"},
      {"MLP beats FC1 (dense layer)", "model.layers.2.mlp.gate_up_proj", kCol, kMlpFc1,
       Hf::kDeepSeekV3, 5, K::kMlpColumn, 0, 2, "mlp-tp-column"},
      {"MoE layer under MLP TP falls to FC1", "model.layers.3.mlp.gate_up_proj", kCol, kMlpFc1,
       Hf::kDeepSeekV3, 5, K::kSequenceColumn, 1, 2, "fc1-column"},
      {"MLP row beats matmul-allreduce", "model.layers.1.mlp.down_proj", kRow, kMlpMar,
       Hf::kDeepSeekV3, 2, K::kMlpRow, 1, 2, "mlp-tp-row"},
      {"MLP qkv_proj -> default", kQkv, kCol, kMlp, Hf::kDense, 3, K::kStandardColumn, 1, 2,
       "default-column"},

      // §11.3 step 3: O-proj TP (decode).
      {"OTP o_proj", kO, kRow, kOtp, Hf::kDense, 3, K::kOProjRow, 1, 2, "oproj-tp-row"},
      {"OTP o_proj rank 0", kO, kRow, kOtp, Hf::kDense, 0, K::kOProjRow, 0, 2, "oproj-tp-row"},
      {"OTP does not take out_proj", kOutProj, kRow, kOtp, Hf::kDense, 2, K::kStandardRow, 0, 1,
       "default-row"},
      {"OTP down_proj -> default", kDown, kRow, kOtp, Hf::kDense, 2, K::kStandardRow, 0, 1,
       "default-row"},
      {"OTP beats matmul-allreduce", kO, kRow, kOtpMar, Hf::kDense, 2, K::kOProjRow, 0, 2,
       "oproj-tp-row"},

      // §11.3 step 4: matmul-allreduce for any row prefix, before FC2 and FC1.
      {"MAR down_proj", kDown, kRow, kMar, Hf::kDense, 1, K::kMatmulAllreduceRow, 1, 4,
       "matmul-allreduce-row"},
      {"MAR out_proj", kOutProj, kRow, kMar, Hf::kDense, 2, K::kMatmulAllreduceRow, 2, 4,
       "matmul-allreduce-row"},
      {"MAR attention.dense", kBailingDense, kRow, kMar, Hf::kDense, 3, K::kMatmulAllreduceRow, 3,
       4, "matmul-allreduce-row"},
      {"MAR unknown row", "model.layers.0.mlp.experts.w2", kRow, kMar, Hf::kDense, 0,
       K::kMatmulAllreduceRow, 0, 4, "matmul-allreduce-row"},
      {"MAR beats FC2", kO, kRow, Cfg{.tp = 4, .fc2_p = 2, .matmul_allreduce = true}, Hf::kDense, 3,
       K::kMatmulAllreduceRow, 3, 4, "matmul-allreduce-row"},
      {"MAR beats FC1", kDown, kRow, Cfg{.tp = 4, .fc1 = true, .matmul_allreduce = true},
       Hf::kDense, 3, K::kMatmulAllreduceRow, 3, 4, "matmul-allreduce-row"},
      {"MAR does not affect columns", kQkv, kCol, kMar, Hf::kDense, 3, K::kStandardColumn, 3, 4,
       "default-column"},

      // §11.3 step 5: FC2 o_proj / out_proj.
      {"FC2 P=1 o_proj", kO, kRow, kFc2P1, Hf::kDense, 2, K::kFlashcomm2OProjRow, 0, 1,
       "fc2-oproj-row"},
      {"FC2 P=1 out_proj", kOutProj, kRow, kFc2P1, Hf::kQwenMoe, 3, K::kFlashcomm2OProjRow, 0, 1,
       "fc2-oproj-row"},
      {"FC2 P=2 o_proj rank 1", kO, kRow, kFc2P2, Hf::kDense, 1, K::kFlashcomm2OProjRow, 0, 2,
       "fc2-oproj-row"},
      {"FC2 P=2 o_proj rank 3", kO, kRow, kFc2P2, Hf::kDense, 3, K::kFlashcomm2OProjRow, 1, 2,
       "fc2-oproj-row"},
      {"FC2 P=2 DP=2 rank 6", kO, kRow, Cfg{.dp = 2, .tp = 4, .fc2_p = 2}, Hf::kDense, 6,
       K::kFlashcomm2OProjRow, 1, 2, "fc2-oproj-row"},
      {"FC2 T=8 P=4 rank 5", kOutProj, kRow, Cfg{.tp = 8, .fc2_p = 4}, Hf::kDense, 5,
       K::kFlashcomm2OProjRow, 2, 4, "fc2-oproj-row"},
      {"FC2 beats FC1 on o_proj", kO, kRow, kFc2P2Fc1, Hf::kDense, 2, K::kFlashcomm2OProjRow, 1, 2,
       "fc2-oproj-row"},
      {"FC2+FC1 down_proj -> FC1", kDown, kRow, kFc2P2Fc1, Hf::kDense, 2, K::kSequenceRow, 2, 4,
       "fc1-row"},
      {"FC2 alone down_proj -> default", kDown, kRow, kFc2P2, Hf::kDense, 2, K::kStandardRow, 2, 4,
       "default-row"},
      {"FC2 alone qkv_proj -> default (no oshard)", kQkv, kCol, kFc2P2, Hf::kDense, 2,
       K::kStandardColumn, 2, 4, "default-column"},
      {"FC2 attention.dense -> default", kBailingDense, kRow, kFc2P2, Hf::kDense, 2,
       K::kStandardRow, 2, 4, "default-row"},

      // §11.2 step 3: FC2 oshard QKV.
      {"oshard qkv_proj", kQkv, kCol, kOshard, Hf::kDense, 3, K::kFlashcomm2OshardQkv, 3, 4,
       "fc2-oshard-qkv"},
      {"oshard conv1d", kConv1d, kCol, kOshard, Hf::kQwenMoe, 1, K::kFlashcomm2OshardQkv, 1, 4,
       "fc2-oshard-qkv"},
      {"oshard query_key_value", kBailingQkv, kCol, kOshard, Hf::kDense, 2, K::kFlashcomm2OshardQkv,
       2, 4, "fc2-oshard-qkv"},
      {"oshard beats FC1", kQkv, kCol, kOshardFc1, Hf::kDense, 0, K::kFlashcomm2OshardQkv, 0, 4,
       "fc2-oshard-qkv"},
      {"oshard in_proj -> default", kInProjQkvz, kCol, kOshard, Hf::kQwenMoe, 1, K::kStandardColumn,
       1, 4, "default-column"},
      {"oshard+FC1 gate_up_proj -> FC1", kGateUp, kCol, kOshardFc1, Hf::kDense, 1,
       K::kSequenceColumn, 1, 4, "fc1-column"},
      {"oshard o_proj -> FC2 row", kO, kRow, kOshard, Hf::kDense, 2, K::kFlashcomm2OProjRow, 1, 2,
       "fc2-oproj-row"},

      // §11.2 step 4 / §11.3 step 6: FC1.
      {"FC1 gate_up_proj", kGateUp, kCol, kFc1, Hf::kDense, 2, K::kSequenceColumn, 2, 4,
       "fc1-column"},
      {"FC1 qkv_proj", kQkv, kCol, kFc1, Hf::kDense, 1, K::kSequenceColumn, 1, 4, "fc1-column"},
      {"FC1 in_proj_qkvz", kInProjQkvz, kCol, kFc1, Hf::kQwenMoe, 3, K::kSequenceColumn, 3, 4,
       "fc1-column"},
      {"FC1 in_proj_ba", kInProjBa, kCol, kFc1, Hf::kQwenMoe, 0, K::kSequenceColumn, 0, 4,
       "fc1-column"},
      {"FC1 conv1d", kConv1d, kCol, kFc1, Hf::kQwenMoe, 2, K::kSequenceColumn, 2, 4, "fc1-column"},
      {"FC1 query_key_value (Bailing)", kBailingQkv, kCol, kFc1, Hf::kDense, 2, K::kSequenceColumn,
       2, 4, "fc1-column"},
      {"FC1 o_proj", kO, kRow, kFc1, Hf::kDense, 3, K::kSequenceRow, 3, 4, "fc1-row"},
      {"FC1 out_proj (Qwen3-Next)", kOutProj, kRow, kFc1, Hf::kQwenMoe, 1, K::kSequenceRow, 1, 4,
       "fc1-row"},
      {"FC1 down_proj", kDown, kRow, kFc1, Hf::kDense, 0, K::kSequenceRow, 0, 4, "fc1-row"},
      {"FC1 attention.dense (Bailing)", kBailingDense, kRow, kFc1, Hf::kDense, 2, K::kSequenceRow,
       2, 4, "fc1-row"},
      {"FC1 unknown column", "lm_head", kCol, kFc1, Hf::kDense, 2, K::kStandardColumn, 2, 4,
       "default-column"},
      {"FC1 unknown row", "model.layers.0.mlp.experts.w2", kRow, kFc1, Hf::kDense, 2,
       K::kStandardRow, 2, 4, "default-row"},

      // Defaults: nothing enabled.
      {"default qkv_proj", kQkv, kCol, kPlain, Hf::kDense, 3, K::kStandardColumn, 3, 4,
       "default-column"},
      {"default o_proj", kO, kRow, kPlain, Hf::kDense, 2, K::kStandardRow, 2, 4, "default-row"},
      {"default Bailing qkv", kBailingQkv, kCol, kPlain, Hf::kDense, 1, K::kStandardColumn, 1, 4,
       "default-column"},
      {"default Qwen3-Next out_proj", kOutProj, kRow, kPlain, Hf::kQwenMoe, 1, K::kStandardRow, 1,
       4, "default-row"},
      {"default TP=1", kQkv, kCol, Cfg{.tp = 1}, Hf::kDense, 0, K::kStandardColumn, 0, 1,
       "default-column"},
  };
}

std::string trace(const Case& c) {
  return std::string(c.what) + ": '" + c.prefix + "' model=" + hf_name(c.hf) + " rank " +
         std::to_string(c.world_rank);
}

TEST(SelectionTest, Table) {
  for (const Case& c : selection_cases()) {
    SCOPED_TRACE(trace(c));
    const Config cfg = make_config(c.cfg);
    ASSERT_NO_THROW(cfg.validate());
    const Selector sel(cfg, model(c.hf));
    const OpChoice ch = sel.choose(c.prefix, c.dir, c.disable_tp);
    EXPECT_EQ(op_kind_name(ch.kind), std::string(op_kind_name(c.kind)));
    EXPECT_EQ(ch.rule, c.rule);
    const bool unsharded_rule =
        std::string(c.rule) == "disable-tp" || std::string(c.rule) == "shared-expert-dp";
    EXPECT_EQ(ch.unsharded, unsharded_rule);
    const ShardCoord sc = shard_coord(ch, cfg, c.world_rank);
    EXPECT_EQ(sc.tp_rank, c.tp_rank);
    EXPECT_EQ(sc.tp_size, c.tp_size);
    EXPECT_NE(ch.explanation.find(std::string("match ") + c.rule), std::string::npos)
        << ch.explanation;
  }
}

// Every rule and every op kind is exercised by the table above.
TEST(SelectionTest, TableCoversEveryRuleAndOpKind) {
  std::set<std::string> rules, kinds;
  for (const Case& c : selection_cases()) {
    rules.insert(c.rule);
    kinds.insert(op_kind_name(c.kind));
  }
  const std::set<std::string> all_rules = {
      "disable-tp",     "shared-expert-dp",     "dsa-cp-column",
      "mlp-tp-column",  "fc2-oshard-qkv",       "fc1-column",
      "default-column", "dsa-cp-row",           "mlp-tp-row",
      "oproj-tp-row",   "matmul-allreduce-row", "fc2-oproj-row",
      "fc1-row",        "default-row",          "replicated"};
  EXPECT_EQ(rules, all_rules);
  for (int k = 0; k <= static_cast<int>(OpKind::kShardedCpColumn); ++k)
    EXPECT_TRUE(kinds.count(op_kind_name(static_cast<OpKind>(k))))
        << op_kind_name(static_cast<OpKind>(k));
}

TEST(SelectionTest, ShardCoordGroupNames) {
  const Config fc2 = make_config(kFc2P2);
  const Selector sel(fc2, model(Hf::kDense));
  EXPECT_EQ(shard_coord(sel.choose(kO, kRow), fc2, 3).group, "FC2-OTP");
  EXPECT_EQ(shard_coord(sel.choose(kQkv, kCol), fc2, 3).group, "TP");
  EXPECT_EQ(shard_coord(sel.choose(kQkv, kCol, true), fc2, 3).group, "none");
  const Config mlp = make_config(kMlp);
  EXPECT_EQ(shard_coord(Selector(mlp, model(Hf::kDense)).choose(kDown, kRow), mlp, 5).group,
            "MLP-TP");
  const Config otp = make_config(kOtp);
  EXPECT_EQ(shard_coord(Selector(otp, model(Hf::kDense)).choose(kO, kRow), otp, 1).group,
            "O-proj-TP");
}

TEST(SelectionTest, ExplanationNamesMatchAndSkippedRules) {
  const Config cfg = make_config(kFc2P2Fc1);
  const Selector sel(cfg, model(Hf::kDense));
  const OpChoice ch = sel.choose(kO, kRow);
  EXPECT_EQ(ch.rule, "fc2-oproj-row");
  const std::string& e = ch.explanation;
  EXPECT_NE(e.find(kO), std::string::npos) << e;
  EXPECT_NE(e.find("match fc2-oproj-row"), std::string::npos) << e;
  // Skipped for its condition (O-proj TP is off) and for its role (down_proj only).
  EXPECT_NE(e.find("skip  oproj-tp-row: condition false (O-proj TP enabled)"), std::string::npos)
      << e;
  EXPECT_NE(e.find("skip  mlp-tp-row: role not in {down_proj}"), std::string::npos) << e;
  EXPECT_NE(e.find("skip  matmul-allreduce-row: condition false"), std::string::npos) << e;
  // Rules after the match are not listed.
  EXPECT_EQ(e.find("fc1-row"), std::string::npos) << e;

  const OpChoice dis = sel.choose(kO, kRow, /*disable_tp=*/true);
  EXPECT_NE(dis.explanation.find("disable_tp"), std::string::npos) << dis.explanation;
}

TEST(SelectionTest, FeaturesExposed) {
  const Selector sel(make_config(kSeDp), model(Hf::kDeepSeekV3));
  EXPECT_TRUE(sel.features().enable_sp);
  EXPECT_TRUE(sel.features().shared_expert_dp);
}

// ---- parse_layer_name ----------------------------------------------------------------------

TEST(ParseLayerNameTest, Roles) {
  const std::vector<std::pair<std::string, LayerRole>> cases = {
      {"model.layers.0.self_attn.qkv_proj", LayerRole::kQkvProj},
      {"model.layers.0.self_attn.o_proj", LayerRole::kOProj},
      {"model.layers.0.mlp.gate_up_proj", LayerRole::kGateUpProj},
      {"model.layers.0.mlp.down_proj", LayerRole::kDownProj},
      {"model.layers.1.self_attn.q_b_proj", LayerRole::kQBProj},
      {"model.layers.1.self_attn.kv_b_proj", LayerRole::kKvBProj},
      {"model.layers.1.self_attn.q_a_proj", LayerRole::kOther},
      {"model.layers.1.self_attn.kv_a_proj_with_mqa", LayerRole::kOther},
      {"model.layers.3.attention.query_key_value", LayerRole::kQueryKeyValue},
      {"model.layers.3.attention.dense", LayerRole::kAttentionDense},
      {"model.layers.0.linear_attn.in_proj_qkvz", LayerRole::kInProj},
      {"model.layers.0.linear_attn.in_proj_ba", LayerRole::kInProj},
      {"model.layers.0.linear_attn.conv1d", LayerRole::kConv1d},
      {"model.layers.0.linear_attn.out_proj", LayerRole::kOutProj},
      {"model.layers.5.mlp.shared_experts.gate_up_proj", LayerRole::kGateUpProj},
      {"lm_head", LayerRole::kOther},
      {"", LayerRole::kOther},
  };
  for (const auto& [prefix, role] : cases) {
    EXPECT_EQ(layer_role_name(parse_layer_name(prefix).role), std::string(layer_role_name(role)))
        << prefix;
    EXPECT_EQ(parse_layer_name(prefix).prefix, prefix);
  }
}

TEST(ParseLayerNameTest, LayerIndexAndSharedExpert) {
  LayerName n = parse_layer_name("model.layers.12.self_attn.o_proj");
  ASSERT_TRUE(n.layer_index.has_value());
  EXPECT_EQ(*n.layer_index, 12);
  EXPECT_FALSE(n.shared_expert);

  n = parse_layer_name("model.layers.3.mlp.shared_experts.down_proj");
  EXPECT_EQ(n.layer_index, 3);
  EXPECT_TRUE(n.shared_expert);
  EXPECT_TRUE(parse_layer_name("model.layers.3.mlp.shared_expert.down_proj").shared_expert);

  // First "layers.<digits>." wins.
  EXPECT_EQ(parse_layer_name("model.layers.7.block.layers.2.o_proj").layer_index, 7);
  EXPECT_FALSE(parse_layer_name("lm_head").layer_index.has_value());
  EXPECT_FALSE(parse_layer_name("model.layers.7").layer_index.has_value());  // no trailing dot
  EXPECT_FALSE(parse_layer_name("model.layers.x.o_proj").layer_index.has_value());
}

TEST(LayerRoleNameTest, Names) {
  EXPECT_STREQ(layer_role_name(LayerRole::kAttentionDense), "attention.dense");
  EXPECT_STREQ(layer_role_name(LayerRole::kOther), "other");
  EXPECT_STREQ(op_kind_name(OpKind::kFlashcomm2OshardQkv), "Flashcomm2OshardQKV");
}

// ---- ModelInfo ------------------------------------------------------------------------------

TEST(ModelInfoTest, DenseConfig) {
  const ModelInfo m = ModelInfo::from_json(
      json{{"model_type", "llama"}, {"num_hidden_layers", 32}, {"hidden_size", 4096}});
  EXPECT_EQ(m.model_type, "llama");
  EXPECT_FALSE(m.is_moe);
  // §12.2: an absent n_routed_experts reads as 0 ("set"); only an explicit null is "none".
  EXPECT_EQ(m.n_routed_experts, 0);
  EXPECT_FALSE(m.first_k_dense_replace.has_value());
  EXPECT_EQ(m.moe_layer_freq, 1);
  EXPECT_FALSE(m.has_index_topk);
  EXPECT_EQ(m.num_hidden_layers, 32);
}

TEST(ModelInfoTest, DeepSeekConfig) {
  const ModelInfo m = ModelInfo::from_json(json{{"model_type", "deepseek_v32"},
                                                {"n_routed_experts", 256},
                                                {"first_k_dense_replace", 3},
                                                {"moe_layer_freq", 1},
                                                {"index_topk", 2048},
                                                {"num_hidden_layers", 61}});
  EXPECT_TRUE(m.is_moe);
  EXPECT_EQ(m.n_routed_experts, 256);
  EXPECT_EQ(m.first_k_dense_replace, 3);
  EXPECT_TRUE(m.has_index_topk);
  EXPECT_EQ(m.num_hidden_layers, 61);
}

TEST(ModelInfoTest, IsMoeIsAnyKeyContainingExpertRecursively) {
  EXPECT_TRUE(ModelInfo::from_json(json{{"num_experts", 8}}).is_moe);
  EXPECT_TRUE(ModelInfo::from_json(json{{"num_local_experts", 8}}).is_moe);
  EXPECT_TRUE(ModelInfo::from_json(json{{"a", {{"b", {{"expert_bias", true}}}}}}).is_moe);
  EXPECT_TRUE(ModelInfo::from_json(json{{"list", json::array({json{{"moe_expert", 1}}})}}).is_moe);
  // A value (not a key) containing "expert" does not count.
  EXPECT_FALSE(ModelInfo::from_json(json{{"note", "expert"}}).is_moe);
  EXPECT_FALSE(ModelInfo::from_json(json{{"architectures", json::array({"expert"})}}).is_moe);
  // Substring, case-sensitive as in Python's `in`.
  EXPECT_TRUE(ModelInfo::from_json(json{{"shared_expert_intermediate_size", 1}}).is_moe);
  EXPECT_FALSE(ModelInfo::from_json(json{{"EXPERTS", 1}}).is_moe);
}

TEST(ModelInfoTest, TextConfigNesting) {
  const ModelInfo m = ModelInfo::from_json(
      json{{"model_type", "vl_wrapper"},
           {"vision_config", {{"num_experts", 4}}},
           {"text_config",
            {{"model_type", "inner"}, {"n_routed_experts", 8}, {"first_k_dense_replace", 1}}}});
  EXPECT_EQ(m.model_type, "inner");
  EXPECT_EQ(m.n_routed_experts, 8);
  EXPECT_EQ(m.first_k_dense_replace, 1);
  EXPECT_TRUE(m.is_moe);
  EXPECT_TRUE(m.is_moe_layer("model.language_model.layers.1.mlp.gate_up_proj"));
  // Keys outside the text config do not make the model MoE.
  const ModelInfo v = ModelInfo::from_json(
      json{{"vision_config", {{"num_experts", 4}}}, {"text_config", {{"model_type", "t"}}}});
  EXPECT_FALSE(v.is_moe);
}

TEST(ModelInfoTest, NullRoutedExpertsIsNeverMoeLayer) {
  const ModelInfo m = ModelInfo::from_json(
      json{{"n_routed_experts", nullptr}, {"first_k_dense_replace", 0}, {"moe_layer_freq", 1}});
  EXPECT_FALSE(m.n_routed_experts.has_value());
  EXPECT_FALSE(m.is_moe_layer("model.layers.0.mlp.gate_up_proj"));
  EXPECT_FALSE(m.is_moe_layer("model.layers.10.mlp.gate_up_proj"));
  // The key itself contains "expert", so §4's is_moe is still true.
  EXPECT_TRUE(m.is_moe);
}

TEST(ModelInfoTest, BadFields) {
  EXPECT_THROW(ModelInfo::from_json(json{{"moe_layer_freq", 0}}), ConfigError);
  EXPECT_THROW(ModelInfo::from_json(json{{"n_routed_experts", "64"}}), ConfigError);
  EXPECT_THROW(ModelInfo::from_json(json::array({1, 2})), ConfigError);
  EXPECT_THROW(ModelInfo::from_file("/nonexistent/config.json"), IoError);
}

TEST(ModelInfoTest, IsMoeLayerDeepSeekV3) {
  const ModelInfo m = model(Hf::kDeepSeekV3);
  for (int l = 0; l < 3; ++l)
    EXPECT_FALSE(m.is_moe_layer("model.layers." + std::to_string(l) + ".mlp.gate_up_proj")) << l;
  for (int l : {3, 4, 30, 60})
    EXPECT_TRUE(m.is_moe_layer("model.layers." + std::to_string(l) + ".mlp.gate_up_proj")) << l;
  EXPECT_TRUE(m.is_moe_layer("model.layers.3.mlp.shared_experts.down_proj"));
  EXPECT_FALSE(m.is_moe_layer("lm_head"));
  EXPECT_FALSE(m.is_moe_layer("model.embed_tokens"));
  EXPECT_FALSE(m.is_moe_layer("model.layers.3"));               // pattern needs the trailing dot
  EXPECT_FALSE(m.is_moe_layer("model.layers.2.x.layers.5.y"));  // first match is layer 2
}

TEST(ModelInfoTest, IsMoeLayerFreq2) {
  const ModelInfo m = model(Hf::kFreq2);  // first_k_dense_replace 1, moe_layer_freq 2
  EXPECT_FALSE(m.is_moe_layer("model.layers.0.mlp.down_proj"));
  EXPECT_FALSE(m.is_moe_layer("model.layers.1.mlp.down_proj"));
  EXPECT_TRUE(m.is_moe_layer("model.layers.2.mlp.down_proj"));
  EXPECT_FALSE(m.is_moe_layer("model.layers.3.mlp.down_proj"));
  EXPECT_TRUE(m.is_moe_layer("model.layers.4.mlp.down_proj"));
}

TEST(ModelInfoTest, IsMoeLayerWithoutFirstKDenseReplaceIsFalse) {
  // n_routed_experts set but first_k_dense_replace absent: default +infinity -> never MoE.
  const ModelInfo m = ModelInfo::from_json(json{{"n_routed_experts", 64}});
  EXPECT_FALSE(m.is_moe_layer("model.layers.0.mlp.gate_up_proj"));
  EXPECT_FALSE(m.is_moe_layer("model.layers.1000.mlp.gate_up_proj"));
  EXPECT_FALSE(model(Hf::kQwenMoe).is_moe_layer("model.layers.47.mlp.gate_up_proj"));
  EXPECT_FALSE(model(Hf::kDense).is_moe_layer("model.layers.5.mlp.gate_up_proj"));
}

TEST(ModelInfoTest, IsMoeLayerAbsentRoutedExpertsDefaultsToZero) {
  // Seed §12.2: n_routed_experts defaults to 0 when absent, and `0 is not None` is true, so a
  // config with first_k_dense_replace but no n_routed_experts reports layers >= k as MoE.
  const ModelInfo m = ModelInfo::from_json(json{{"first_k_dense_replace", 1}});
  EXPECT_FALSE(m.is_moe_layer("model.layers.0.mlp.gate_up_proj"));
  EXPECT_TRUE(m.is_moe_layer("model.layers.1.mlp.gate_up_proj"));
  EXPECT_TRUE(m.is_moe_layer("model.layers.9.mlp.gate_up_proj"));
}

TEST(ModelInfoTest, IsMoeLayerHugeIndexDoesNotThrow) {
  const ModelInfo m = model(Hf::kDeepSeekV3);
  const std::string huge = "model.layers.123456789012345678901234567890.mlp.gate_up_proj";
  EXPECT_NO_THROW(m.is_moe_layer(huge));
  EXPECT_NO_THROW(parse_layer_name(huge));
  EXPECT_FALSE(parse_layer_name(huge).layer_index.has_value());
}

}  // namespace
}  // namespace tpl

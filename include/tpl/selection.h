// Op selection (seed-spec §11) as data: the layer name is parsed once into a LayerRole, then an
// ordered rule table is walked; the first rule whose role set and condition match wins. Every
// decision can be explained: explain() lists each rule with why it was skipped or taken.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "tpl/config.h"

namespace tpl {

// §12.1 prefixes. The role is the first of these substrings found in the dotted name, tested in
// the order of the enum (q_b_proj before qkv_proj and o_proj, and so on).
enum class LayerRole {
  kQBProj,          // q_b_proj (DeepSeek MLA/DSA)
  kKvBProj,         // kv_b_proj
  kQkvProj,         // qkv_proj (Llama/Qwen)
  kGateUpProj,      // gate_up_proj
  kQueryKeyValue,   // query_key_value (Bailing)
  kAttentionDense,  // attention.dense (Bailing)
  kInProj,          // in_proj (Qwen3-Next linear attention)
  kConv1d,          // conv1d (Qwen3-Next)
  kOutProj,         // out_proj (Qwen3-Next)
  kOProj,           // o_proj
  kDownProj,        // down_proj
  kOther,
};
const char* layer_role_name(LayerRole r);

struct LayerName {
  std::string prefix;
  LayerRole role = LayerRole::kOther;
  bool shared_expert = false;      // "shared_expert" or "shared_experts" in the name
  std::optional<int> layer_index;  // from "layers.<i>."
};
LayerName parse_layer_name(const std::string& prefix);

enum class Direction { kColumn, kRow, kReplicated };

enum class OpKind {
  kStandardColumn,  // no custom op: vLLM's column forward (GEMM, optional gather_output)
  kStandardRow,     // no custom op: vLLM's row forward (GEMM, all-reduce if reduce_results)
  kReplicated,
  kMlpColumn,
  kMlpRow,
  kOProjRow,
  kFlashcomm2OProjRow,
  kMatmulAllreduceRow,
  kSequenceColumn,
  kFlashcomm2OshardQkv,
  kSequenceRow,
  kShardedCpRow,
  kShardedCpColumn,
};
const char* op_kind_name(OpKind k);

struct OpChoice {
  OpKind kind = OpKind::kStandardColumn;
  // True when the layer runs unsharded on every rank (disable_tp, or a shared expert under
  // shared-expert DP): the seed's (None, 0, 1).
  bool unsharded = false;
  std::string rule;         // name of the rule that matched
  std::string explanation;  // every rule considered, with the reason it was skipped or taken
};

// This rank's weight-sharding coordinates for an op (the seed's (tp_rank, tp_size)).
struct ShardCoord {
  int tp_rank = 0;
  int tp_size = 1;
  std::string group;  // "TP", "MLP-TP", "O-proj-TP", "FC2-OTP", "none"
};
ShardCoord shard_coord(const OpChoice& choice, const Config& config, int world_rank);

class Selector {
 public:
  Selector(const Config& config, const ModelInfo& model);
  OpChoice choose(const std::string& prefix, Direction direction, bool disable_tp = false) const;
  const Features& features() const { return features_; }

 private:
  Features features_;
  ModelInfo model_;
};

}  // namespace tpl

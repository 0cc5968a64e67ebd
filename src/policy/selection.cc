#include "tpl/selection.h"

#include <regex>
#include <sstream>

#include "tpl/error.h"

namespace tpl {

const char* layer_role_name(LayerRole r) {
  switch (r) {
    case LayerRole::kQBProj:
      return "q_b_proj";
    case LayerRole::kKvBProj:
      return "kv_b_proj";
    case LayerRole::kQkvProj:
      return "qkv_proj";
    case LayerRole::kGateUpProj:
      return "gate_up_proj";
    case LayerRole::kQueryKeyValue:
      return "query_key_value";
    case LayerRole::kAttentionDense:
      return "attention.dense";
    case LayerRole::kInProj:
      return "in_proj";
    case LayerRole::kConv1d:
      return "conv1d";
    case LayerRole::kOutProj:
      return "out_proj";
    case LayerRole::kOProj:
      return "o_proj";
    case LayerRole::kDownProj:
      return "down_proj";
    case LayerRole::kOther:
      return "other";
  }
  return "?";
}

const char* op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::kStandardColumn:
      return "StandardColumn";
    case OpKind::kStandardRow:
      return "StandardRow";
    case OpKind::kReplicated:
      return "Replicated";
    case OpKind::kMlpColumn:
      return "MLPColumn";
    case OpKind::kMlpRow:
      return "MLPRow";
    case OpKind::kOProjRow:
      return "OProjRow";
    case OpKind::kFlashcomm2OProjRow:
      return "Flashcomm2OProjRow";
    case OpKind::kMatmulAllreduceRow:
      return "MatmulAllreduceRow";
    case OpKind::kSequenceColumn:
      return "SequenceColumn";
    case OpKind::kFlashcomm2OshardQkv:
      return "Flashcomm2OshardQKV";
    case OpKind::kSequenceRow:
      return "SequenceRow";
    case OpKind::kShardedCpRow:
      return "ShardedCPRow";
    case OpKind::kShardedCpColumn:
      return "ShardedCPColumn";
  }
  return "?";
}

LayerName parse_layer_name(const std::string& prefix) {
  LayerName n;
  n.prefix = prefix;
  for (int r = 0; r < static_cast<int>(LayerRole::kOther); ++r) {
    const auto role = static_cast<LayerRole>(r);
    if (prefix.find(layer_role_name(role)) != std::string::npos) {
      n.role = role;
      break;
    }
  }
  n.shared_expert = prefix.find("shared_expert") != std::string::npos;
  static const std::regex kLayer(R"(layers\.(\d+)\.)");
  std::smatch m;
  if (std::regex_search(prefix, m, kLayer) && m[1].length() <= 9)
    n.layer_index = std::stoi(m[1].str());
  return n;
}

namespace {

struct RuleInput {
  const Features& f;
  const ModelInfo& model;
  const LayerName& name;
};

// One row of the policy. Roles empty = any role.
struct Rule {
  const char* name;
  Direction direction;
  std::vector<LayerRole> roles;
  const char* condition;  // human-readable form of `when`
  bool (*when)(const RuleInput&);
  OpKind op;
};

using R = LayerRole;
// §11.2 and §11.3, in the seed's order. The shared-expert early returns inside the seed's
// column/row functions are dead code (§16 item 12) and are not repeated here.
const std::vector<Rule>& rule_table() {
  static const std::vector<Rule> kRules = {
      {"dsa-cp-column",
       Direction::kColumn,
       {R::kQBProj, R::kKvBProj},
       "DSA-CP enabled",
       [](const RuleInput& in) { return in.f.dsa_cp; },
       OpKind::kShardedCpColumn},
      {"mlp-tp-column",
       Direction::kColumn,
       {R::kGateUpProj},
       "MLP TP enabled and dense layer",
       [](const RuleInput& in) { return in.f.mlp_tp && !in.model.is_moe_layer(in.name.prefix); },
       OpKind::kMlpColumn},
      {"fc2-oshard-qkv",
       Direction::kColumn,
       {R::kQkvProj, R::kConv1d, R::kQueryKeyValue},
       "FlashComm2 with o_proj layer sharding",
       [](const RuleInput& in) { return in.f.flashcomm2_oshard; },
       OpKind::kFlashcomm2OshardQkv},
      {"fc1-column",
       Direction::kColumn,
       {R::kGateUpProj, R::kInProj, R::kQkvProj, R::kConv1d, R::kQueryKeyValue},
       "FlashComm1 (sequence parallelism) enabled",
       [](const RuleInput& in) { return in.f.enable_sp; },
       OpKind::kSequenceColumn},
      {"default-column",
       Direction::kColumn,
       {},
       "always",
       [](const RuleInput&) { return true; },
       OpKind::kStandardColumn},

      {"dsa-cp-row",
       Direction::kRow,
       {R::kOProj},
       "DSA-CP with layer shard (prefill node)",
       [](const RuleInput& in) { return in.f.dsa_cp_with_layer_shard; },
       OpKind::kShardedCpRow},
      {"mlp-tp-row",
       Direction::kRow,
       {R::kDownProj},
       "MLP TP enabled and dense layer",
       [](const RuleInput& in) { return in.f.mlp_tp && !in.model.is_moe_layer(in.name.prefix); },
       OpKind::kMlpRow},
      {"oproj-tp-row",
       Direction::kRow,
       {R::kOProj},
       "O-proj TP enabled",
       [](const RuleInput& in) { return in.f.oproj_tp; },
       OpKind::kOProjRow},
      {"matmul-allreduce-row",
       Direction::kRow,
       {},
       "matmul-allreduce enabled",
       [](const RuleInput& in) { return in.f.matmul_allreduce; },
       OpKind::kMatmulAllreduceRow},
      {"fc2-oproj-row",
       Direction::kRow,
       {R::kOProj, R::kOutProj},
       "FlashComm2 enabled",
       [](const RuleInput& in) { return in.f.flashcomm2; },
       OpKind::kFlashcomm2OProjRow},
      {"fc1-row",
       Direction::kRow,
       {R::kOProj, R::kOutProj, R::kDownProj, R::kAttentionDense},
       "FlashComm1 (sequence parallelism) enabled",
       [](const RuleInput& in) { return in.f.enable_sp; },
       OpKind::kSequenceRow},
      {"default-row",
       Direction::kRow,
       {},
       "always",
       [](const RuleInput&) { return true; },
       OpKind::kStandardRow},

      {"replicated",
       Direction::kReplicated,
       {},
       "always",
       [](const RuleInput&) { return true; },
       OpKind::kReplicated},
  };
  return kRules;
}

std::string roles_text(const std::vector<LayerRole>& roles) {
  std::string s;
  for (auto r : roles) s += (s.empty() ? "" : "|") + std::string(layer_role_name(r));
  return s.empty() ? "any" : s;
}

}  // namespace

Selector::Selector(const Config& config, const ModelInfo& model)
    : features_(Features::derive(config, model)), model_(model) {}

OpChoice Selector::choose(const std::string& prefix, Direction direction, bool disable_tp) const {
  const LayerName name = parse_layer_name(prefix);
  std::ostringstream why;
  why << "'" << prefix << "' role=" << layer_role_name(name.role) << "\n";
  OpChoice choice;
  // §11.1 step 1: unsharded layers. (Replicated layers with disable_tp are unsharded too.)
  const bool shared_dp = name.shared_expert && features_.shared_expert_dp;
  if (disable_tp || (shared_dp && direction != Direction::kReplicated)) {
    choice.kind = direction == Direction::kColumn ? OpKind::kStandardColumn
                  : direction == Direction::kRow  ? OpKind::kStandardRow
                                                  : OpKind::kReplicated;
    choice.unsharded = true;
    choice.rule = disable_tp ? "disable-tp" : "shared-expert-dp";
    why << "  match " << choice.rule << ": "
        << (disable_tp ? "disable_tp set" : "shared expert under shared-expert DP")
        << " -> unsharded " << op_kind_name(choice.kind) << " (tp_size 1)\n";
    choice.explanation = why.str();
    return choice;
  }
  const RuleInput in{features_, model_, name};
  for (const Rule& r : rule_table()) {
    if (r.direction != direction) continue;
    const bool role_ok =
        r.roles.empty() || std::find(r.roles.begin(), r.roles.end(), name.role) != r.roles.end();
    if (!role_ok) {
      why << "  skip  " << r.name << ": role not in {" << roles_text(r.roles) << "}\n";
      continue;
    }
    if (!r.when(in)) {
      why << "  skip  " << r.name << ": condition false (" << r.condition << ")\n";
      continue;
    }
    why << "  match " << r.name << ": " << r.condition << " -> " << op_kind_name(r.op) << "\n";
    choice.kind = r.op;
    choice.rule = r.name;
    choice.explanation = why.str();
    return choice;
  }
  TPL_THROW(Error, Where{"selection"}, "no rule matched '", prefix,
            "' (the table ends in defaults)");
}

ShardCoord shard_coord(const OpChoice& choice, const Config& config, int world_rank) {
  const ParallelLayout& l = config.layout;
  const RankCoord rc = coord_of(l, world_rank);
  if (choice.unsharded) return {0, 1, "none"};
  switch (choice.kind) {
    case OpKind::kShardedCpRow:
    case OpKind::kShardedCpColumn:
      return {0, 1, "none"};
    case OpKind::kMlpColumn:
    case OpKind::kMlpRow:
      return {rc.d % config.mlp_tp, config.mlp_tp, "MLP-TP"};
    case OpKind::kOProjRow:
      return {rc.d % config.oproj_tp, config.oproj_tp, "O-proj-TP"};
    case OpKind::kFlashcomm2OProjRow: {
      const int p = config.flashcomm2_p;
      if (p == 1) return {0, 1, "none"};
      return {rc.t / (l.tp / p), p, "FC2-OTP"};
    }
    case OpKind::kStandardColumn:
    case OpKind::kStandardRow:
    case OpKind::kReplicated:
    case OpKind::kMatmulAllreduceRow:
    case OpKind::kSequenceColumn:
    case OpKind::kFlashcomm2OshardQkv:
    case OpKind::kSequenceRow:
      return {rc.t, l.tp, "TP"};
  }
  return {rc.t, l.tp, "TP"};
}

}  // namespace tpl

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "tpl/error.h"
#include "tpl/plan.h"

namespace tpl {

namespace {

const Where kWhere{"planner"};

struct Scored {
  const PlanCandidate* c;
  double ms;
};

}  // namespace

std::string weight_layout_of(const Config& c, const ModelInfo& model) {
  std::string s = "tp";
  // Sequence parallelism replicates MoE shared experts (Features::shared_expert_dp): FC1 on and
  // off hold different shared-expert weights.
  if (model.is_moe && Features::derive(c, model).shared_expert_dp) s += "+shared_expert_dp";
  if (c.flashcomm2_p > 0) s += "+fc2(P=" + std::to_string(c.flashcomm2_p) + ")";
  if (c.mlp_tp > 0) s += "+mlp_tp(" + std::to_string(c.mlp_tp) + ")";
  if (c.oproj_tp > 0) s += "+oproj_tp(" + std::to_string(c.oproj_tp) + ")";
  for (const auto& l : c.layer_sharding) s += "+shard(" + l + ")";
  return s;
}

namespace {
// "<a><x GiB, 2 decimals><b><y>" for the cap messages.
std::string fmt_gib(const std::string& a, double x, const std::string& b, double y) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g", x);
  std::string s = a + buf + b;
  std::snprintf(buf, sizeof buf, "%.3g", y);
  return s + buf;
}
// "12.35": 4 significant digits, for the notes.
std::string fmt_ms(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", ms);
  return buf;
}
}  // namespace

Plan make_plan(const CostModel& cost, const ModelSpec& model, int world,
               const std::vector<PlanCandidate>& candidates, const PlanOptions& o,
               std::vector<std::string>* notes) {
  TPL_CHECK_T(!o.workload.empty(), ConfigError, kWhere, "the workload is empty");
  // Predictions per candidate and workload point; a candidate the model cannot predict is out.
  // With the communicators chosen below, the layout's candidates are predicted again.
  CostInputs inputs = o.inputs;
  std::vector<const PlanCandidate*> ok;
  std::map<const PlanCandidate*, std::vector<double>> pred;
  std::map<const PlanCandidate*, double> weight_bytes;
  const double gib = 1024.0 * 1024 * 1024;
  double smallest = -1;
  std::string smallest_name;
  for (const auto& c : candidates) {
    try {
      std::vector<double> v;
      double wb = 0;
      for (const auto& [tokens, w] : o.workload) {
        const StackPrediction sp = cost.predict(model, c.config, world, tokens, inputs);
        v.push_back(sp.linear_ms);
        wb = sp.weight_bytes;
      }
      if (smallest < 0 || wb < smallest) smallest = wb, smallest_name = c.name;
      if (o.memory_cap_bytes > 0 && wb > o.memory_cap_bytes) {
        if (notes)
          notes->push_back(fmt_gib("left out " + c.name + ": needs ", wb / gib,
                                   " GiB of weights per rank, over the cap of ",
                                   o.memory_cap_bytes / gib));
        continue;
      }
      pred[&c] = std::move(v);
      weight_bytes[&c] = wb;
      ok.push_back(&c);
    } catch (const Unsupported& e) {
      if (notes) notes->push_back("left out " + c.name + ": " + e.what());
    }
  }
  if (ok.empty() && smallest >= 0)
    TPL_THROW(ConfigError, kWhere,
              fmt_gib("no strategy fits the memory cap of ", o.memory_cap_bytes / gib,
                      " GiB of weights per rank; the smallest (" + smallest_name + ") needs ",
                      smallest / gib));
  TPL_CHECK_T(!ok.empty(), ConfigError, kWhere, "no candidate strategy can be predicted");

  // Per bucket within one layout: the baseline (the layout's first candidate) unless another is
  // predicted faster by more than the margin.
  auto choose = [&](const std::vector<const PlanCandidate*>& in_layout, std::size_t i) {
    const PlanCandidate* base = in_layout.front();
    std::vector<Scored> s;
    for (const auto* c : in_layout) s.push_back({c, pred[c][i]});
    std::stable_sort(s.begin(), s.end(),
                     [](const Scored& a, const Scored& b) { return a.ms < b.ms; });
    const double base_ms = pred[base][i];
    const Scored pick = s.front().ms < base_ms * (1 - o.margin) ? s.front() : Scored{base, base_ms};
    Scored second{nullptr, 0};
    for (const auto& x : s)
      if (x.c != pick.c) {
        second = x;
        break;
      }
    return std::make_pair(pick, second);
  };

  // The weight layout: the lowest workload-weighted time of its per-bucket choices; the first
  // candidate's layout stays unless another is faster by more than the margin.
  std::vector<std::string> layouts;
  std::map<std::string, std::vector<const PlanCandidate*>> by_layout;
  for (const auto* c : ok) {
    const std::string l = weight_layout_of(c->config, model.info);
    if (!by_layout.count(l)) layouts.push_back(l);
    by_layout[l].push_back(c);
  }
  std::map<std::string, double> layout_ms;
  for (const auto& l : layouts) {
    double t = 0;
    for (std::size_t i = 0; i < o.workload.size(); ++i)
      t += o.workload[i].second * choose(by_layout[l], i).first.ms;
    layout_ms[l] = t;
  }
  std::string layout = layouts.front();
  for (const auto& l : layouts)
    if (layout_ms[l] < layout_ms[layout]) layout = l;
  if (layout_ms[layout] >= layout_ms[layouts.front()] * (1 - o.margin)) layout = layouts.front();
  if (notes)
    for (const auto& l : layouts)
      notes->push_back("layout " + l + ": " + std::to_string(layout_ms[l]) +
                       " ms per forward, workload-weighted" + (l == layout ? " (chosen)" : ""));

  Plan p;
  const auto& in_layout = by_layout[layout];
  // The communicator of each group the layout uses, role by role in kGroupRoles order: the kind
  // the profile was calibrated on, unless another kind it measured makes the workload-weighted
  // time (each bucket's choice, as above) faster by more than the margin. Chosen for the
  // workload, like the layout: groups are made when the model is loaded.
  const MachineProfile& prof = cost.profile();
  if (o.choose_comms && !prof.comm_collectives.empty() &&
      (prof.comm == "mpi" || prof.comm == "shm")) {
    auto workload_ms = [&](const CostInputs& in) -> std::optional<double> {
      try {
        for (const auto* c : in_layout) {
          std::vector<double> v;
          for (const auto& [tokens, w] : o.workload)
            v.push_back(cost.predict(model, c->config, world, tokens, in).linear_ms);
          pred[c] = std::move(v);
        }
      } catch (const Unsupported&) {
        return std::nullopt;  // a kind without a table for one of the groups
      }
      double t = 0;
      for (std::size_t i = 0; i < o.workload.size(); ++i)
        t += o.workload[i].second * choose(in_layout, i).first.ms;
      return t;
    };
    const Config& lc = in_layout.front()->config;
    const GroupSizes gs = group_sizes(lc, Features::derive(lc, model.info));
    // The roles the cost model prices, with their group sizes; a group of one rank sends
    // nothing, and shard_weight's broadcasts run behind the layers (not priced) and stay the
    // world's.
    const std::pair<const char*, int> roles[] = {
        {"tp", lc.layout.tp},
        {"mlp_tp", gs.mlp_tp},
        {"oproj_tp", gs.oproj_tp},
        {"fc2_odp", gs.flashcomm2_p > 1 ? lc.layout.tp / gs.flashcomm2_p : 0},
        {"fc2_otp", gs.flashcomm2_p > 1 ? gs.flashcomm2_p : 0}};
    std::vector<CommKind> kinds{parse_comm_kind(prof.comm, "profile")};
    for (const auto& [k, tabs] : prof.comm_collectives)
      kinds.push_back(parse_comm_kind(k, "profile"));
    for (const auto& [role, size] : roles) {
      if (size <= 1) continue;
      if (o.inputs.comms.count(role)) {
        p.comms[role] = o.inputs.comms.at(role);
        p.comms_why.push_back(std::string(role) + ": " + comm_kind_name(p.comms[role]) +
                              " (given)");
        continue;
      }
      std::string why = std::string(role) + " (" + std::to_string(size) + " ranks):";
      CommKind best = kinds.front();
      double base_ms = 0, best_ms = 0;
      for (const CommKind k : kinds) {
        CostInputs in = inputs;
        in.comms[role] = k;
        const auto ms = workload_ms(in);
        why += std::string(" ") + comm_kind_name(k) + " " +
               (ms ? fmt_ms(*ms) + " ms" : "not measured for this group");
        if (!ms) continue;
        if (k == kinds.front())
          base_ms = best_ms = *ms;
        else if (*ms < best_ms)
          best = k, best_ms = *ms;
      }
      if (best != kinds.front() && best_ms >= base_ms * (1 - o.margin)) best = kinds.front();
      inputs.comms[role] = best;
      p.comms[role] = best;
      p.comms_why.push_back(why + " -> " + comm_kind_name(best));
    }
    if (!workload_ms(inputs))  // the buckets below read the final choice's predictions
      TPL_THROW(Unsupported, kWhere, "the chosen communicators cannot be predicted");
    if (notes)
      for (const auto& w : p.comms_why) notes->push_back("communicator " + w);
  }
  p.model = model.name;
  p.world = world;
  p.tp = ok.front()->config.layout.tp;
  p.dp = ok.front()->config.layout.dp;
  p.dtype = dtype_name(o.inputs.dtype);
  p.w8a8 = o.inputs.w8a8;
  p.layout = layout;
  p.machine = cost.profile().machine;
  for (const auto* c : in_layout) p.weight_bytes = std::max(p.weight_bytes, weight_bytes[c]);
  for (std::size_t i = 0; i < o.workload.size(); ++i) {
    const auto [pick, second] = choose(in_layout, i);
    PlanBucket b;
    b.tokens = o.workload[i].first;
    b.weight = o.workload[i].second;
    // Bucket edges at the geometric mean of neighbouring workload points.
    b.max_tokens = i + 1 < o.workload.size()
                       ? static_cast<std::int64_t>(std::floor(
                             std::sqrt(double(b.tokens) * double(o.workload[i + 1].first))))
                       : -1;
    b.strategy = pick.c->name;
    b.predicted_ms = pick.ms;
    if (second.c) {
      b.runner_up = second.c->name;
      b.runner_up_ms = second.ms;
    }
    const PlanCandidate* base = in_layout.front();
    if (pick.c == base && second.c && second.ms < pick.ms)
      b.why = "kept " + base->name + ": " + second.c->name + " is predicted only " +
              std::to_string(int(std::round(100 * (1 - second.ms / pick.ms)))) +
              "% faster (margin " + std::to_string(int(std::round(100 * o.margin))) + "%)";
    else if (pick.c == base)
      b.why = base->name + " is predicted fastest";
    else
      b.why = pick.c->name + " is predicted " +
              std::to_string(int(std::round(100 * (1 - pick.ms / pred[base][i])))) +
              "% faster than " + base->name;
    p.buckets.push_back(b);
    if (std::none_of(p.configs.begin(), p.configs.end(),
                     [&](const PlanCandidate& c) { return c.name == pick.c->name; }))
      p.configs.push_back(*pick.c);
  }
  return p;
}

void Plan::check_matches(const ModelSpec& spec, int world_size, const std::string& source) const {
  if (world != world_size)
    TPL_THROW(ConfigError, Where{"plan"}, source, ": field 'world' is ", world,
              " but this job has ", world_size, " ranks");
  if (model != spec.name)
    TPL_THROW(ConfigError, Where{"plan"}, source, ": field 'model' is '", model,
              "' but the model is '", spec.name, "'");
  // The layout depends on the model (an MoE's shared experts), so it is checked here.
  for (const PlanCandidate& c : configs)
    if (weight_layout_of(c.config, spec.info) != layout)
      TPL_THROW(ConfigError, Where{"plan"}, source, ": field 'configs.", c.name,
                "' has weight layout ", weight_layout_of(c.config, spec.info), ", not the plan's ",
                layout);
}

const char* const kDefaultWorkload = "1,16,64,256,1024,4096";

Plan default_plan(const CostModel& cost, const ModelSpec& model, const Config& config, int world,
                  const CostInputs& inputs, double margin) {
  std::vector<PlanCandidate> cands;
  auto with = [&](const char* name, Overlap ov, std::optional<std::int64_t> threshold) {
    PlanCandidate c{name, config};
    if (config.overlap == Overlap::kAuto) c.config.overlap = ov;
    if (threshold) c.config.flashcomm1_threshold = *threshold;
    for (const auto& x : cands)
      if (x.config.to_json() == c.config.to_json()) return;
    cands.push_back(std::move(c));
  };
  // Baseline first: the config as given, overlap off.
  with("config", Overlap::kOff, std::nullopt);
  with("config+overlap", Overlap::kOn, std::nullopt);
  if (config.flashcomm1) {
    with("fc1", Overlap::kOff, 0);
    with("fc1+overlap", Overlap::kOn, 0);
    with("no-fc1", Overlap::kOff, std::numeric_limits<std::int64_t>::max());
  }
  PlanOptions o;
  o.choose_comms = false;  // the caller's world serves the groups it asked for
  o.workload = parse_workload(kDefaultWorkload);
  o.margin = margin;
  o.inputs = inputs;
  // The cost model must cover the baseline; otherwise the caller keeps its rule.
  for (const auto& [tokens, w] : o.workload)
    (void)cost.predict(model, cands.front().config, world, tokens, inputs);
  return make_plan(cost, model, world, cands, o, nullptr);
}

}  // namespace tpl

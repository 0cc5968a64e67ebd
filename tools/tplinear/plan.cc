#include "plan.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "bench.h"
#include "tpl/cluster.h"
#include "tpl/cost_model.h"
#include "tpl/error.h"
#include "tpl/plan.h"
#include "tpl/profile.h"

namespace tpl::cli {

namespace {

const Where kWhere{"plan"};

std::function<void(int, int, const std::string&)> progress_bar(const std::string& mode) {
  const bool tty = isatty(STDERR_FILENO);
  if (mode == "never" || (mode == "auto" && !tty)) return {};
  return [tty](int step, int steps, const std::string& what) {
    const int done = steps > 0 ? 20 * step / steps : 0;
    std::fprintf(stderr, "%s[%s%s] %d/%d %-40s%s", tty ? "\r" : "", std::string(done, '#').c_str(),
                 std::string(20 - done, '.').c_str(), step, steps, what.c_str(), tty ? "" : "\n");
    std::fflush(stderr);
  };
}

void write_json(Communicator& world, const std::string& path, const nlohmann::json& j) {
  std::string err;
  if (world.rank() == 0) {
    std::ofstream f(path);
    if (f) f << j.dump(2) << "\n";
    if (!f) err = path;
  }
  if (!world.all_true(err.empty()))
    TPL_THROW(IoError, kWhere, "cannot write '", world.rank() == 0 ? err : path, "'");
}

// The GEMMs the cost model will look up for these candidates at these token counts.
std::vector<GemmRequest> requests_for(const ModelSpec& model,
                                      const std::vector<PlanCandidate>& candidates, int world,
                                      const std::vector<std::pair<std::int64_t, double>>& workload,
                                      const CostInputs& in) {
  std::vector<Config> configs;
  for (const auto& c : candidates) configs.push_back(c.config);
  std::vector<std::int64_t> tokens;
  for (const auto& [t, w] : workload) tokens.push_back(t);
  return CostModel::gemm_requests(model, configs, world, tokens, in);
}

CostInputs inputs_of(const RunOptions& o) {
  CostInputs in;
  in.dtype = parse_dtype(o.dtype);
  in.w8a8 = o.quant == "w8a8";
  return in;
}

MachineProfile measure(Communicator& world, bool quick, const std::string& progress,
                       std::vector<GemmRequest> layer_shapes = {}) {
  CalibrateOptions co;
  co.quick = quick;
  co.layer_shapes = std::move(layer_shapes);
  co.progress = progress_bar(progress);
  const auto t0 = std::chrono::steady_clock::now();
  MachineProfile p = calibrate(world, co);
  if (world.rank() == 0) {
    if (co.progress && isatty(STDERR_FILENO)) std::fprintf(stderr, "\r%80s\r", "");
    fmt::print("# calibrated {} ranks in {:.1f} s: {} | {} | {} cores | {}\n", world.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               p.machine.cpu, p.machine.isa, p.machine.cores, p.machine.mpi);
  }
  return p;
}

// Non-fused: no GEMM + collective overlap anywhere (no fused row ops, FC1 only without chunks
// or without the overlap worker).
bool non_fused(const Config& c) {
  return !c.matmul_allreduce &&
         (!c.flashcomm1 || c.fused_chunks == 1 || c.overlap == Overlap::kOff);
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  const std::size_t n = a.size();
  if (n < 2) return 1;
  auto ranks = [n](const std::vector<double>& v) {
    std::vector<std::size_t> idx(n);
    for (std::size_t i = 0; i < n; ++i) idx[i] = i;
    std::sort(idx.begin(), idx.end(), [&](std::size_t x, std::size_t y) { return v[x] < v[y]; });
    std::vector<double> r(n);
    for (std::size_t i = 0; i < n; ++i) r[idx[i]] = double(i);
    return r;
  };
  const auto ra = ranks(a), rb = ranks(b);
  double d2 = 0;
  for (std::size_t i = 0; i < n; ++i) d2 += (ra[i] - rb[i]) * (ra[i] - rb[i]);
  return 1 - 6 * d2 / (double(n) * (double(n) * n - 1));
}

}  // namespace

int run_calibrate(Communicator& world, const CalibrateCliOptions& o) {
  if (o.out.empty()) TPL_THROW(InvalidArgument, kWhere, "calibrate needs --out profile.json");
  if (world.rank() == 0 && !std::ofstream(o.out, std::ios::app))
    TPL_THROW(IoError, kWhere, "cannot write '", o.out, "'");
  std::vector<GemmRequest> shapes;
  if (o.for_model) {
    if (!o.model.weights.empty())
      TPL_THROW(InvalidArgument, kWhere, "calibrate uses the model's shapes only; drop --weights");
    const ModelSpec model = load_model(o.model);
    const auto candidates = bench_candidates(o.model, world.size(), o.strategies, nullptr);
    shapes = requests_for(model, candidates, world.size(), parse_workload(o.workload),
                          inputs_of(o.model));
    if (world.rank() == 0)
      fmt::print("# {}: {} layer GEMM shapes for {} candidates at tokens {}\n", model.name,
                 shapes.size(), candidates.size(), o.workload);
  }
  const MachineProfile p = measure(world, o.quick, o.progress, std::move(shapes));
  write_json(world, o.out, p.to_json());
  if (world.rank() == 0) fmt::print("# wrote {}\n", o.out);
  return 0;
}

int run_plan(Communicator& world, const PlanCliOptions& o) {
  const bool root = world.rank() == 0;
  if (o.margin < 0 || o.margin >= 0.5)
    TPL_THROW(InvalidArgument, kWhere, "--margin must be in [0, 0.5), got ", o.margin);
  if (!o.model.weights.empty())
    TPL_THROW(InvalidArgument, kWhere, "plan uses the model's shapes only; drop --weights");
  const ModelSpec model = load_model(o.model);
  PlanOptions po;
  po.workload = parse_workload(o.workload);
  po.margin = o.margin;
  po.memory_cap_bytes = o.memory_cap_gib * 1024.0 * 1024 * 1024;
  po.inputs = inputs_of(o.model);
  std::vector<std::string> notes;
  const std::vector<PlanCandidate> candidates =
      bench_candidates(o.model, world.size(), o.strategies, &notes);
  if (candidates.empty())
    TPL_THROW(ConfigError, kWhere, "no strategy applies to ", world.size(), " ranks",
              notes.empty() ? "" : "; " + notes.front());

  MachineProfile profile;
  if (o.profile.empty()) {
    if (root) fmt::print("# no --profile: calibrating this machine and the model's GEMMs first\n");
    profile = measure(world, false, o.progress,
                      requests_for(model, candidates, world.size(), po.workload, po.inputs));
  } else {
    profile = MachineProfile::from_file(o.profile);
    const auto diff = profile.mismatches(this_machine(world.size()));
    if (!diff.empty() && o.strict)
      TPL_THROW(ConfigError, kWhere, o.profile,
                ": profile from another machine (--strict): ", diff.front());
    if (root)
      for (const auto& d : diff) fmt::print("# WARNING: {}: {}\n", o.profile, d);
    // Say when the model's GEMMs are scaled from the reference shapes rather than measured.
    int missing = 0, total = 0;
    for (const auto& r : requests_for(model, candidates, world.size(), po.workload, po.inputs)) {
      ++total;
      const GemmTable* t = profile.layer_table(r.key, r.n, r.k);
      missing += !t || t->rows.back().x < double(r.rows.back());
    }
    if (missing > 0)  // printed with the plan, so an error stays the only line
      notes.push_back(
          fmt::format("note: {} of {} layer GEMM shapes are scaled from the reference shapes "
                      "(measure them: tplinear calibrate --model ... --workload {})",
                      missing, total, o.workload));
  }
  po.inputs.spare_core = profile.machine.spare_core();
  const CostModel cost(profile);
  const Plan plan = make_plan(cost, model, world.size(), candidates, po, &notes);

  if (root) {
    fmt::print("# tplinear plan: {} ({}), {} layers, {}{}, {} ranks = DP {} x TP {}\n", model.name,
               model.model_type, model.layers, o.model.dtype, po.inputs.w8a8 ? " W8A8" : "",
               world.size(), plan.dp, plan.tp);
    fmt::print("# profile: {} | {} | {} cores\n", profile.machine.cpu, profile.machine.isa,
               profile.machine.cores);
    for (const auto& n : notes) fmt::print("# {}\n", n);
    fmt::print(
        "# weight layout: {}, {:.3g} GiB of weights per rank{}\n#\n# {:>8} {:>10} {:>7} "
        "{:<18} {:>13} {:<18} {:>10}  why\n",
        plan.layout, plan.weight_bytes / (1024.0 * 1024 * 1024),
        o.memory_cap_gib > 0 ? fmt::format(" (cap {:.3g} GiB)", o.memory_cap_gib) : "", "tokens",
        "bucket", "weight", "strategy", "predicted(ms)", "runner-up", "(ms)");
    std::int64_t lo = 1;
    for (const auto& b : plan.buckets) {
      const std::string range =
          b.max_tokens < 0 ? fmt::format("{}+", lo) : fmt::format("{}-{}", lo, b.max_tokens);
      fmt::print("  {:>8} {:>10} {:>7.2f} {:<18} {:>13.2f} {:<18} {:>10.2f}  {}\n", b.tokens, range,
                 b.weight, b.strategy, b.predicted_ms, b.runner_up.empty() ? "-" : b.runner_up,
                 b.runner_up_ms, b.why);
      lo = b.max_tokens + 1;
    }
  }
  if (!o.out.empty()) {
    write_json(world, o.out, plan.to_json());
    if (root) fmt::print("# wrote {}\n", o.out);
  }
  if (!o.check) return 0;

  // --check: measure every candidate the model predicted at every workload point.
  std::vector<const PlanCandidate*> predicted;
  for (const auto& c : candidates)
    if (std::none_of(notes.begin(), notes.end(), [&](const std::string& n) {
          return n.rfind("left out " + c.name + ":", 0) == 0;
        }))
      predicted.push_back(&c);
  BenchOptions bo;
  bo.model = o.model;
  bo.iters = o.iters;
  bo.warmup = o.warmup;
  bo.progress = o.progress;
  bo.sync_layers = true;           // the model predicts the layers, not the ranks' skew before them
  bo.interleave = true;            // strategies compared side by side, not minutes apart
  bo.min_time_ms = o.min_time_ms;  // cheap points repeated until their noise is small
  bo.tokens.clear();
  for (const auto& [t, w] : po.workload)
    bo.tokens += (bo.tokens.empty() ? "" : ",") + std::to_string(t);
  bo.strategies.clear();
  for (const auto* c : predicted) bo.strategies += (bo.strategies.empty() ? "" : ",") + c->name;
  std::vector<BenchRow> rows;
  if (root)
    fmt::print("#\n# --check: measuring {} strategies x {} token counts\n", predicted.size(),
               po.workload.size());
  std::fflush(stdout);
  run_bench(world, bo, &rows);
  if (!root) return 0;

  std::map<std::tuple<std::string, std::int64_t, std::string>, double> measured;
  for (const auto& r : rows) measured[{r.strategy, r.tokens, r.layer}] = r.ms;
  nlohmann::json out{{"points", nlohmann::json::array()}, {"cells", nlohmann::json::array()}};
  std::vector<double> errors;
  fmt::print(
      "#\n# predicted vs measured (ms, slowest rank, median of {} or more)\n# {:<18} {:>8} {:<13} "
      "{:>11} "
      "{:>11} {:>8}\n",
      o.iters, "strategy", "tokens", "layer", "predicted", "measured", "error");
  double regret_sum = 0, weight_sum = 0, worst_nonfused = -1;
  std::vector<double> regrets;
  int best_picked = 0, within_2 = 0;  // the best itself; within 2 % of it (a tie on this VM)
  std::vector<double> rhos;
  for (const auto& [tokens, weight] : po.workload) {
    std::vector<double> pv, mv;
    double best = 1e300, best_nf = 1e300;
    std::string best_name;
    for (const auto* c : predicted) {
      const StackPrediction sp = cost.predict(model, c->config, world.size(), tokens, po.inputs);
      for (int k = 0; k < 5; ++k) {
        const std::string layer = k < 4 ? kLinearKinds[k] : "linear";
        const auto it = measured.find({c->name, tokens, layer});
        if (it == measured.end() || it->second <= 0) continue;
        const double p = k < 4 ? sp.kind_ms[k] : sp.linear_ms;
        const double err = p / it->second - 1;
        if (k < 4 && p > 0) errors.push_back(std::fabs(err));
        fmt::print("  {:<18} {:>8} {:<13} {:>11.3f} {:>11.3f} {:>+7.1f}%\n", c->name, tokens, layer,
                   p, it->second, 100 * err);
        out["points"].push_back({{"strategy", c->name},
                                 {"tokens", tokens},
                                 {"layer", layer},
                                 {"predicted_ms", p},
                                 {"measured_ms", it->second}});
        if (k == 4) {
          pv.push_back(p), mv.push_back(it->second);
          if (it->second < best) best = it->second, best_name = c->name;
          if (non_fused(c->config)) best_nf = std::min(best_nf, it->second);
        }
      }
    }
    rhos.push_back(spearman(pv, mv));
    const std::string chosen = plan.bucket_for(tokens).strategy;
    const double chosen_ms = measured[{chosen, tokens, "linear"}];
    const double regret = chosen_ms / best - 1;
    regrets.push_back(regret);
    regret_sum += weight * chosen_ms * regret, weight_sum += weight * chosen_ms;
    if (chosen == best_name) ++best_picked;
    if (regret <= 0.02) ++within_2;
    if (best_nf < 1e300) worst_nonfused = std::max(worst_nonfused, chosen_ms / best_nf - 1);
    out["cells"].push_back({{"tokens", tokens},
                            {"chosen", chosen},
                            {"chosen_ms", chosen_ms},
                            {"best", best_name},
                            {"best_ms", best},
                            {"regret", regret},
                            {"rank_correlation", rhos.back()}});
  }
  std::sort(errors.begin(), errors.end());
  double mean_err = 0;
  for (double e : errors) mean_err += e;
  mean_err = errors.empty() ? 0 : mean_err / double(errors.size());
  const double within15 = errors.empty()
                              ? 0
                              : double(std::count_if(errors.begin(), errors.end(),
                                                     [](double e) { return e <= 0.15; })) /
                                    double(errors.size());
  std::sort(regrets.begin(), regrets.end());
  const double p95 = regrets[std::min(regrets.size() - 1,
                                      std::size_t(std::ceil(0.95 * double(regrets.size()))) - 1)];
  double rho = 0;
  for (double r : rhos) rho += r;
  rho /= double(rhos.size());
  fmt::print(
      "#\n# cost model: mean |predicted/measured - 1| = {:.1f}% over {} (strategy, layer kind, "
      "tokens) points; "
      "{:.0f}% within 15%; median {:.1f}%, max {:.1f}%\n",
      100 * mean_err, errors.size(), 100 * within15,
      errors.empty() ? 0 : 100 * errors[errors.size() / 2],
      errors.empty() ? 0 : 100 * errors.back());
  fmt::print("# strategy order: mean Spearman rank correlation {:.2f} over {} token counts\n", rho,
             rhos.size());
  fmt::print(
      "# plan regret (chosen / best measured - 1): time-weighted mean {:.1f}%, p95 {:.1f}%; best "
      "picked in {}/{} cells (within 2% of the best in {}); "
      "worst vs best non-fused {:+.1f}%\n",
      100 * (weight_sum > 0 ? regret_sum / weight_sum : 0), 100 * p95, best_picked,
      po.workload.size(), within_2, 100 * worst_nonfused);
  out["summary"] = {{"mean_abs_error", mean_err},
                    {"within_15", within15},
                    {"spearman", rho},
                    {"regret_time_weighted", weight_sum > 0 ? regret_sum / weight_sum : 0},
                    {"regret_p95", p95},
                    {"best_picked", best_picked},
                    {"within_2_of_best", within_2},
                    {"cells", po.workload.size()},
                    {"worst_vs_nonfused", worst_nonfused}};
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    f << out.dump(2) << "\n";
    if (!f) TPL_THROW(IoError, kWhere, "cannot write '", o.json, "'");
  }
  return 0;
}

int run_simulate(Communicator& world, const SimulateCliOptions& o) {
  const Where where{"simulate"};
  const ClusterProfile cluster = ClusterProfile::from_file(o.profile);
  const ModelSpec model = load_model(o.model);
  std::vector<int> worlds;
  std::vector<std::int64_t> tokens;
  for (const auto& w : split_list(o.world)) {
    try {
      worlds.push_back(std::stoi(w));
    } catch (const std::exception&) {
      TPL_THROW(InvalidArgument, where, "--world item '", w, "' is not a number");
    }
    if (worlds.back() < 1 || worlds.back() > 4096)
      TPL_THROW(InvalidArgument, where, "--world item ", w, " must be in [1, 4096]");
  }
  for (const auto& [t, wgt] : parse_workload(o.tokens)) tokens.push_back(t);
  if (world.rank() != 0) return 0;

  if (o.validate) {
    fmt::print("# tplinear simulate --validate: {} ({})\n", cluster.name, o.profile);
    fmt::print("# {:<13} {:>12} {:>11} {:>11} {:>8}  source\n", "kind", "x", "published",
               "predicted", "error");
    std::map<std::string, std::vector<double>> by_source;
    for (const CheckResult& r : validate(cluster)) {
      fmt::print("  {:<13} {:>12.0f} {:>11.2f} {:>11.2f} {:>+7.1f}%  {}\n", r.kind, r.x,
                 r.published, r.predicted, 100 * r.error(), r.source);
      by_source[r.source].push_back(std::fabs(r.error()));
    }
    for (const auto& [src, errs] : by_source) {
      double sum = 0, mx = 0;
      for (double e : errs) sum += e, mx = std::max(mx, e);
      fmt::print("# mean |error| {:.1f}%, max {:.1f}% over {} points: {}\n",
                 100 * sum / double(errs.size()), 100 * mx, errs.size(), src);
    }
    return 0;
  }

  CostInputs in = inputs_of(o.model);
  in.spare_core = true;  // a GPU's collectives run beside its GEMMs
  fmt::print("# tplinear simulate: {} ({}), {} layers, {}{} on {}\n", model.name, model.model_type,
             model.layers, o.model.dtype, in.w8a8 ? " W8A8" : "", cluster.name);
  fmt::print("# predicted linear-layer time of the whole stack; fused paths priced unfused\n");
  fmt::print("# {:>5} {:>8} {:<18} {:>11} {:>10} {:>7}  best\n", "world", "tokens", "strategy",
             "linear(ms)", "comm(ms)", "comm%");
  nlohmann::json rows = nlohmann::json::array();
  for (const int w : worlds) {
    std::vector<int> groups;
    for (int g = 2; g <= w; ++g)
      if (w % g == 0) groups.push_back(g);
    const CostModel cost(cluster.synthesize(groups));
    std::vector<std::string> notes;
    RunOptions base = o.model;
    const std::vector<PlanCandidate> cands = bench_candidates(base, w, o.strategies, &notes);
    for (const auto& n : notes) fmt::print("# world {}: {}\n", w, n);
    for (const std::int64_t n : tokens) {
      struct Point {
        std::string name;
        double ms, comm;
      };
      std::vector<Point> pts;
      for (const PlanCandidate& c : cands) {
        try {
          const StackPrediction sp = cost.predict(model, c.config, w, n, in);
          double comm = 0;
          for (const auto& l : sp.layers) comm += l.comm_ms;
          pts.push_back({c.name, sp.linear_ms, comm});
        } catch (const Error& e) {
          fmt::print("# world {} tokens {}: {} left out: {}\n", w, n, c.name, e.what());
        }
      }
      if (pts.empty()) continue;
      const auto best = std::min_element(
          pts.begin(), pts.end(), [](const Point& a, const Point& b) { return a.ms < b.ms; });
      for (const Point& p : pts) {
        fmt::print("  {:>5} {:>8} {:<18} {:>11.3f} {:>10.3f} {:>6.1f}%  {}\n", w, n, p.name, p.ms,
                   p.comm, p.ms > 0 ? 100 * p.comm / p.ms : 0, &p == &*best ? "*" : "");
        rows.push_back({{"world", w},
                        {"tokens", n},
                        {"strategy", p.name},
                        {"linear_ms", p.ms},
                        {"comm_ms", p.comm},
                        {"best", &p == &*best}});
      }
    }
  }
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    if (!f) TPL_THROW(IoError, where, "cannot write '", o.json, "'");
    f << nlohmann::json{{"cluster", cluster.name},
                        {"model", model.name},
                        {"dtype", o.model.dtype},
                        {"rows", rows}}
             .dump(1)
      << "\n";
  }
  return 0;
}

}  // namespace tpl::cli

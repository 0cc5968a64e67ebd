// `tplinear bench`: for every strategy, one DecoderStack; for every token count, warm-up forwards
// and then --iters timed forwards. Per linear-layer kind: the slowest rank's time (median over
// iterations), the bytes each rank sent, and bandwidths in nccl-tests style (docs/bench.md).
#include "bench.h"

#include <fmt/format.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "tpl/cost_model.h"
#include "tpl/error.h"
#include "tpl/memory.h"
#include "tpl/model.h"

namespace tpl::cli {

namespace {

const Where kWhere{"bench"};
const std::array<const char*, 4>& kKinds = kLinearKinds;
constexpr int kCols = 6;  // 4 kinds, linear total, whole forward

// A strategy is an overlay on the user's flags. `apply` returns "" or why it does not apply.
struct Strategy {
  const char* name;
  const char* what;
  std::function<std::string(RunOptions&, int tp, int dp)> apply;
};

const std::vector<Strategy>& strategies() {
  static const std::vector<Strategy> k{
      {"standard", "the flags as given", [](RunOptions&, int, int) { return std::string(); }},
      {"fc1", "FlashComm1, threshold 0, overlap on",
       [](RunOptions& o, int, int) {
         o.fc1 = true;
         o.fc1_threshold = 0;
         o.overlap = "on";
         return std::string();
       }},
      {"fc1-serial", "FlashComm1, threshold 0, overlap off",
       [](RunOptions& o, int, int) {
         o.fc1 = true;
         o.fc1_threshold = 0;
         o.overlap = "off";
         return std::string();
       }},
      {"fc2", "FlashComm2 P = 1 + FlashComm1",
       [](RunOptions& o, int, int) {
         o.fc1 = true, o.fc1_threshold = 0, o.fc2 = 1;
         return std::string();
       }},
      {"fc2-p2", "FlashComm2 P = 2 + FlashComm1",
       [](RunOptions& o, int tp, int) {
         o.fc1 = true, o.fc1_threshold = 0, o.fc2 = 2;
         return tp >= 4 && tp % 2 == 0 ? std::string()
                                       : fmt::format("needs TP >= 4 divisible by 2, TP = {}", tp);
       }},
      {"matmul-allreduce", "fused GEMM + all-reduce row ops, overlap on",
       [](RunOptions& o, int, int) {
         o.matmul_allreduce = true;
         o.overlap = "on";
         return std::string();
       }},
      {"mlp-tp", "MLP-TP over all DP replicas",
       [](RunOptions& o, int, int dp) {
         o.mlp_tp = dp;
         return dp > 1 ? std::string() : fmt::format("needs DP > 1, DP = {}", dp);
       }},
      {"oproj-tp", "O-proj-TP over all DP replicas (decode node)",
       [](RunOptions& o, int, int dp) {
         o.oproj_tp = dp, o.deployment = "decode";
         return dp > 1 ? std::string() : fmt::format("needs DP > 1, DP = {}", dp);
       }},
  };
  return k;
}

const Strategy& find_strategy(const std::string& name) {
  const auto it = std::find_if(strategies().begin(), strategies().end(),
                               [&](const Strategy& s) { return name == s.name; });
  if (it == strategies().end())
    TPL_THROW(InvalidArgument, kWhere, "unknown strategy '", name,
              "'; known: ", bench_strategy_names());
  return *it;
}

std::vector<std::int64_t> parse_tokens(const std::string& s) {
  std::vector<std::int64_t> v;
  for (const auto& item : split_list(s)) {
    std::size_t used = 0;
    long long n = 0;
    try {
      n = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || n < 1 || n > (1 << 20))
      TPL_THROW(InvalidArgument, kWhere, "--tokens: '", item,
                "' is not a token count in [1, 1048576]");
    if (std::find(v.begin(), v.end(), n) == v.end()) v.push_back(n);
  }
  if (v.empty()) TPL_THROW(InvalidArgument, kWhere, "--tokens needs at least one count");
  std::sort(v.begin(), v.end());
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

using Row = BenchRow;

int cpu_count() {
  cpu_set_t set;
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
}

std::ofstream open_out(const std::string& path) {
  std::ofstream f(path);
  if (!f) TPL_THROW(IoError, kWhere, "cannot write '", path, "'");
  return f;
}

// Log-x / linear-y line plot of the linear-layer total per strategy.
void write_svg(const std::string& path, const std::vector<Row>& rows,
               const std::vector<std::string>& names, const std::vector<std::int64_t>& tokens,
               const std::string& title) {
  const double W = 720, H = 440, L = 70, R = 170, T = 40, B = 50;
  const double x0 = std::log10(double(tokens.front())),
               x1 = tokens.size() > 1 ? std::log10(double(tokens.back())) : x0 + 1;
  double ymax = 0;
  for (const auto& r : rows)
    if (r.layer == "linear") ymax = std::max(ymax, r.ms);
  const double step = [&] {  // 1, 2 or 5 x 10^k, about 5 ticks
    const double raw = std::max(ymax, 1e-3) / 5, p = std::pow(10, std::floor(std::log10(raw)));
    return raw <= p ? p : raw <= 2 * p ? 2 * p : raw <= 5 * p ? 5 * p : 10 * p;
  }();
  const double ytop = step * std::ceil(std::max(ymax, 1e-3) * 1.05 / step);
  auto px = [&](double t) { return L + (std::log10(t) - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double ms) { return H - B - ms / ytop * (H - T - B); };
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                 "#9467bd", "#8c564b", "#e377c2"};
  std::ofstream f = open_out(path);
  f << fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{0}\" height=\"{1}\" "
      "fill=\"white\"/>\n<text x=\"{2}\" y=\"22\" font-size=\"14\">{3}</text>\n",
      W, H, L, title);
  f << fmt::format("<path d=\"M{0} {1}V{2}H{3}\" fill=\"none\" stroke=\"black\"/>\n", L, T, H - B,
                   W - R);
  for (double y = 0; y <= ytop * 1.0001; y += step)
    f << fmt::format(
        "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>"
        "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5:g}</text>\n",
        L, py(y), W - R, L - 6, py(y) + 4, y);
  for (const auto t : tokens)
    f << fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"black\"/>"
        "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
        px(double(t)), H - B, H - B + 5, H - B + 18, t);
  f << fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">tokens (log scale)</text>\n",
                   (L + W - R) / 2, H - 12);
  f << fmt::format(
      "<text transform=\"translate(18 {}) rotate(-90)\" text-anchor=\"middle\">linear layers, "
      "ms (slowest rank, median)</text>\n",
      (T + H - B) / 2);
  for (std::size_t s = 0; s < names.size(); ++s) {
    const char* c = colors[s % 7];
    std::string pts, dots;
    for (const auto& r : rows)
      if (r.strategy == names[s] && r.layer == "linear") {
        pts += fmt::format("{:.1f},{:.1f} ", px(double(r.tokens)), py(r.ms));
        dots += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>",
                            px(double(r.tokens)), py(r.ms), c);
      }
    const double ly = T + 10 + 20 * double(s);
    f << fmt::format(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>{}\n"
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"/>"
        "<text x=\"{}\" y=\"{}\">{}</text>\n",
        pts, c, dots, W - R + 15, ly, W - R + 40, ly, c, W - R + 46, ly + 4, names[s]);
  }
  f << "</svg>\n";
}

}  // namespace

std::string bench_strategy_names() {
  std::string s;
  for (const auto& st : strategies()) s += (s.empty() ? "" : ", ") + std::string(st.name);
  return s;
}

std::vector<PlanCandidate> bench_candidates(const RunOptions& base, int world_size,
                                            const std::string& names,
                                            std::vector<std::string>* notes) {
  const Config cfg = make_config(base, world_size);  // bad base flags fail here
  const int tp = cfg.layout.tp, dp = cfg.layout.dp;
  std::vector<PlanCandidate> v;
  for (const auto& name : split_list(names)) {
    const Strategy* it = &find_strategy(name);
    if (std::any_of(v.begin(), v.end(), [&](const PlanCandidate& p) { return p.name == name; }))
      TPL_THROW(InvalidArgument, kWhere, "strategy '", name, "' listed twice");
    RunOptions ro = base;
    std::string why = it->apply(ro, tp, dp);
    if (why.empty()) {
      try {
        v.push_back({name, make_config(ro, world_size)});
        continue;
      } catch (const ConfigError& e) {
        why = e.what();
      }
    }
    if (notes) notes->push_back(fmt::format("skipped {} ({}): {}", name, it->what, why));
  }
  return v;
}

int run_bench(Communicator& world, const BenchOptions& o, std::vector<BenchRow>* rows_out) {
  // Validate everything before building anything (identically on every rank).
  if (!o.model.weights.empty())
    TPL_THROW(InvalidArgument, kWhere, "bench uses seeded random weights; drop --weights");
  if (o.iters < 1 || o.warmup < 0)
    TPL_THROW(InvalidArgument, kWhere, "--iters must be >= 1 and --warmup >= 0");
  const std::vector<std::int64_t> tokens = parse_tokens(o.tokens);
  ModelSpec model = o.model.hf_config.empty() ? ModelSpec::load(o.model.model)
                                              : ModelSpec::from_file(o.model.hf_config);
  if (o.model.layers > 0) model.layers = std::min(model.layers, o.model.layers);
  const Config base = make_config(o.model, world.size());  // bad base flags fail here
  const int tp = base.layout.tp, dp = base.layout.dp;
  if (tp > model.heads)
    TPL_THROW(ConfigError, kWhere, "TP = ", tp, " exceeds the ", model.heads, " attention heads");

  struct Point {
    std::string name;
    Config cfg;
    const Plan* plan = nullptr;
  };
  std::vector<std::string> notes;
  std::vector<Point> plan;
  for (auto& c : bench_candidates(o.model, world.size(), o.strategies, &notes))
    plan.push_back({c.name, c.config});
  Plan from_file;
  if (!o.plan.empty()) {
    from_file = Plan::from_file(o.plan);
    from_file.check_matches(model, world.size(), o.plan);
    apply_comm_override(from_file, world.rank());
    plan.push_back({"plan", from_file.config_for(tokens.front()), &from_file});
  }
  if (plan.empty())
    TPL_THROW(ConfigError, kWhere, "no strategy applies to ", world.size(), " ranks (DP ", dp,
              " x TP ", tp, ")", notes.empty() ? "" : "; " + notes.front());

  // Output files are checked before the sweep, and the verdict is shared, so every rank fails.
  std::string unwritable;
  if (world.rank() == 0)
    for (const auto* f : {&o.json, &o.csv, &o.svg})
      if (!f->empty() && !std::ofstream(*f)) unwritable = *f;
  if (!world.all_true(unwritable.empty()))
    TPL_THROW(IoError, kWhere, "cannot write output file '", unwritable, "'");

  StackOptions so;
  so.dtype = parse_dtype(o.model.dtype);
  so.w8a8 = o.model.quant == "w8a8";
  so.prefetch_step = o.model.prefetch_step;
  so.sync_layers = o.sync_layers;
  // Memory first: a machine too small says so in one line, before the sweep prints anything.
  const std::int64_t most_tokens = *std::max_element(tokens.begin(), tokens.end());
  // Sequential: the largest stack. Interleaved: one stack per weight layout, all alive at once.
  std::vector<std::pair<std::string, MemoryEstimate>> per_layout;
  for (const auto& p : plan) {
    MemoryEstimate e = estimate_stack_memory(model, p.cfg, so, world.size(), most_tokens);
    const std::string layout = !o.interleave ? ""
                               : p.plan      ? "plan"
                                             : weight_layout_of(p.cfg, model.info);
    auto it = std::find_if(per_layout.begin(), per_layout.end(),
                           [&](const auto& l) { return l.first == layout; });
    if (it == per_layout.end())
      per_layout.emplace_back(layout, std::move(e));
    else if (e.total() > it->second.total())
      it->second = std::move(e);
  }
  MemoryEstimate need = std::move(per_layout.front().second);
  for (std::size_t i = 1; i < per_layout.size(); ++i)
    need.then(per_layout[i].first + " stack", per_layout[i].second);
  check_host_memory(world, need, "tplinear bench",
                    "try --layers N, more ranks (on more nodes) or --dtype bf16");
  so.check_memory = false;  // checked above, for the largest strategy
  const auto weights = make_random_weights(o.model.seed);
  const bool root = world.rank() == 0;
  const bool tty = isatty(STDERR_FILENO);
  const bool progress = root && (o.progress == "always" || (o.progress == "auto" && tty));
  const auto start = std::chrono::steady_clock::now();
  const std::size_t steps = plan.size() * tokens.size();
  std::size_t step = 0;

  if (root) {
    fmt::print("# tplinear bench: {} ({}), {} layers, {}{}, {} ranks = DP {} x TP {}\n", model.name,
               model.model_type, model.layers, o.model.dtype, so.w8a8 ? " W8A8" : "", world.size(),
               dp, tp);
    fmt::print(
        "# iters {}{} (median reported), warmup {}; time = slowest rank; tokens per DP "
        "replica{}{}\n",
        o.iters,
        o.min_time_ms > 0 ? fmt::format(" or more to fill {:g} ms per token count", o.min_time_ms)
                          : "",
        o.warmup, o.sync_layers ? "; barrier before each linear layer" : "",
        o.interleave ? "; strategies interleaved per iteration" : "");
    if (world.size() > cpu_count())
      fmt::print(
          "# WARNING: {} ranks on {} cores: ranks share cores, so timings of more than {} "
          "ranks are not speed figures\n",
          world.size(), cpu_count(), cpu_count());
    for (const auto& n : notes) fmt::print("# {}\n", n);
    fmt::print("#\n# {:<16} {:>8} {:<13} {:>10} {:>12} {:>11} {:>11}\n", "strategy", "tokens",
               "layer", "time(ms)", "bytes/rank", "algbw(GB/s)", "busbw(GB/s)");
  }

  // One strategy's stack, alive while it is measured.
  struct Live {
    const Point* p;
    std::shared_ptr<DecoderStack> stack;
    std::string pinned;        // run with forward_with(x, pinned) on a shared stack
    std::array<int, 5> group;  // group size per kind, for algbw
    Tensor x, mine;            // this token count's input and per-iteration times
  };
  // `shared`: another point's stack holding this strategy too (interleave), else its own.
  auto build = [&](const Point& p, std::shared_ptr<DecoderStack> shared = nullptr) {
    Live l{&p, std::move(shared), "", {}, Tensor(), Tensor()};
    if (l.stack)
      l.pinned = p.name;
    else if (p.plan)  // every bucket's strategy over one set of weights; forward() picks the
                      // bucket by token count, as an engine running the plan would
      l.stack = std::make_shared<DecoderStack>(world, model, *p.plan, *weights, so);
    else
      l.stack = std::make_shared<DecoderStack>(world, model, p.cfg, *weights, so);
    // Group size n per kind for algbw: max(TP, the largest group of its layers); FC2's o_proj
    // reports its P but all-to-alls over TP, MLP-TP's layers report m while TP may be 1.
    l.group = {tp, tp, tp, tp, tp};
    for (const auto& r : l.stack->report()) {
      if (const int k = linear_kind_of(r.prefix); k >= 0)
        l.group[k] = std::max(l.group[k], r.tp_size);
      l.group[4] = std::max(l.group[4], r.tp_size);
    }
    if (root) {
      // The config keys that differ from the defaults (tp and dp are in the header).
      const nlohmann::json def = Config{}.to_json();
      std::string diff;
      const nlohmann::json cj = p.cfg.to_json();
      for (const auto& [k, v] : cj.items())
        if (k != "tp" && k != "dp" && (!def.contains(k) || def[k] != v))
          diff += fmt::format("{}{}={}", diff.empty() ? "" : " ", k, v.dump());
      if (p.plan)
        fmt::print("# plan ({}): per token count, the strategy of its bucket\n", o.plan);
      else
        fmt::print("# {} ({}): {}\n", p.name, find_strategy(p.name).what,
                   diff.empty() ? "default config" : diff);
      if (&p == &plan.front())
        for (const auto& s : l.stack->skipped()) fmt::print("# model: {}\n", s);
    }
    return l;
  };

  // Per iteration: ms of the 4 kinds, linear total, whole forward; then the bytes of the last
  // iteration (per kind and total). One all-gather per point at the end.
  auto run = [](Live& l) {
    if (l.pinned.empty())
      l.stack->forward(l.x);
    else
      l.stack->forward_with(l.x, l.pinned);
  };
  auto iteration = [&](Live& l, int i, int its) {
    const std::vector<LayerReport> before = l.stack->report();
    world.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    run(l);
    const double fwd =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::array<double, 5> ms{}, bytes{};
    for (std::size_t k = 0; k < before.size(); ++k) {
      const LayerReport& r = l.stack->report()[k];
      const int kind = linear_kind_of(r.prefix);
      const double dms = r.ms - before[k].ms, db = r.bytes_sent - before[k].bytes_sent;
      if (kind >= 0) ms[kind] += dms, bytes[kind] += db;
      ms[4] += dms, bytes[4] += db;
    }
    float* m = l.mine.ptr<float>();
    for (int k = 0; k < 5; ++k) m[i * kCols + k] = float(ms[k]);
    m[i * kCols + 5] = float(fwd);
    for (int k = 0; k < 5; ++k) m[its * kCols + k] = float(bytes[k]);
  };

  std::vector<Row> rows;
  auto emit = [&](Live& l, std::int64_t n, int its) {
    const std::string label = l.p->plan ? "plan:" + l.stack->strategy_for(n) : l.p->name;
    Tensor all(DType::kF32, world.size(), l.mine.cols());
    world.all_gather(l.mine, all, 0);
    if (!root) return;
    const float* a = all.ptr<float>();
    const std::int64_t w = l.mine.cols();
    for (int k = 0; k < kCols; ++k) {
      std::vector<double> per_iter;  // slowest rank per iteration
      for (int i = 0; i < its; ++i) {
        double mx = 0;
        for (int r = 0; r < world.size(); ++r) mx = std::max(mx, double(a[r * w + i * kCols + k]));
        per_iter.push_back(mx);
      }
      double bytes = 0;
      for (int r = 0; r < world.size(); ++r)
        bytes = std::max(bytes, double(a[r * w + its * kCols + std::min(k, 4)]));
      const double ms = median(per_iter);
      const double busbw = ms > 0 ? bytes / (ms * 1e-3) / 1e9 : 0;
      const int g = l.group[std::min(k, 4)];
      const double algbw = g > 1 ? busbw * g / (2.0 * (g - 1)) : 0;
      const std::string layer = k < 4 ? kKinds[k] : k == 4 ? "linear" : "forward";
      rows.push_back({label, layer, n, ms, bytes, algbw, busbw});
      fmt::print("  {:<16} {:>8} {:<13} {:>10.3f} {:>12.0f} {:>11.3f} {:>11.3f}\n", label, n, layer,
                 ms, bytes, algbw, busbw);
    }
    std::fflush(stdout);
  };

  // Measures one token count on every stack of `live`: warm-up, then the timed iterations,
  // round-robin over the stacks, so drift of a shared machine hits every strategy alike.
  auto measure = [&](std::vector<Live*>& live, std::int64_t n) {
    for (Live* l : live) {
      if (progress && (o.progress == "always" ||
                       std::chrono::steady_clock::now() - start > std::chrono::seconds(2))) {
        const std::size_t done = 20 * step / steps;
        // On a TTY the line is redrawn in place; otherwise one line per point.
        std::fprintf(stderr, "%s[%s%s] %zu/%zu %s tokens=%lld%s", tty ? "\r" : "",
                     std::string(done, '#').c_str(), std::string(20 - done, '.').c_str(), step,
                     steps, l->p->name.c_str(), static_cast<long long>(n), tty ? "   " : "\n");
        std::fflush(stderr);
      }
      ++step;
      std::mt19937_64 gen(o.model.seed * 7919 + static_cast<std::uint64_t>(l->stack->dp_rank()));
      std::normal_distribution<float> dist(0.f, 1.f);
      std::vector<float> xv(static_cast<std::size_t>(n * model.hidden));
      for (auto& v : xv) v = dist(gen);
      l->x = Tensor::from_f32(xv, n, model.hidden, so.dtype);
      for (int i = 0; i < o.warmup; ++i) run(*l);
    }
    // --min-time: as many rounds as fill it (--iters to 10x --iters), from one timed warm-up
    // round, the slowest rank's, so every rank runs the same count.
    int its = o.iters;
    if (o.min_time_ms > 0) {
      world.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      for (Live* l : live) run(*l);
      Tensor mine(DType::kF32, 1, 1), all(DType::kF32, world.size(), 1);
      mine.ptr<float>()[0] = float(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      world.all_gather(mine, all, 0);
      double round = 0;
      for (int r = 0; r < world.size(); ++r) round = std::max(round, double(all.ptr<float>()[r]));
      its = static_cast<int>(std::clamp(std::ceil(o.min_time_ms / std::max(round, 1e-3)),
                                        double(o.iters), 10.0 * o.iters));
    }
    for (Live* l : live) l->mine = Tensor(DType::kF32, 1, its * kCols + 5);
    for (int i = 0; i < its; ++i)
      for (Live* l : live) iteration(*l, i, its);
    for (Live* l : live) emit(*l, n, its);
  };

  if (o.interleave) {
    // Strategies of one weight layout share one stack (a plan stack with a bucket each), so
    // they are compared on the same weights in the same memory: on a VM one buffer can stream
    // persistently slower than another, which separate stacks would charge to the strategy.
    std::vector<Live> all;
    all.reserve(plan.size());
    std::vector<std::string> layout;  // per point; "" for the plan point
    for (const auto& p : plan) layout.push_back(p.plan ? "" : weight_layout_of(p.cfg, model.info));
    for (std::size_t i = 0; i < plan.size(); ++i) {
      if (plan[i].plan ||
          std::find(layout.begin(), layout.begin() + i, layout[i]) != layout.begin() + i)
        continue;  // the plan point, or built with the first of its layout
      std::vector<std::size_t> members;
      for (std::size_t k = i; k < plan.size(); ++k)
        if (layout[k] == layout[i]) members.push_back(k);
      if (members.size() == 1) {
        all.push_back(build(plan[i]));
        continue;
      }
      Plan sp;  // DecoderStack keeps its own copy
      sp.model = model.name;
      sp.world = world.size(), sp.tp = tp, sp.dp = dp;
      sp.layout = layout[i];
      for (const std::size_t k : members) {
        const std::int64_t b = std::int64_t(sp.buckets.size()) + 1;
        sp.buckets.push_back({b, b, 0, plan[k].name});
        sp.configs.push_back({plan[k].name, plan[k].cfg});
      }
      sp.buckets.back().max_tokens = -1;
      auto stack = std::make_shared<DecoderStack>(world, model, sp, *weights, so);
      for (const std::size_t k : members) all.push_back(build(plan[k], stack));
    }
    for (const auto& p : plan)
      if (p.plan) all.push_back(build(p));
    std::vector<Live*> live;
    for (auto& l : all) live.push_back(&l);
    for (const std::int64_t n : tokens) measure(live, n);
  } else {
    for (const auto& p : plan) {
      Live l = build(p);
      std::vector<Live*> live{&l};
      for (const std::int64_t n : tokens) measure(live, n);
    }
  }
  if (!root) return 0;
  if (progress && tty) std::fprintf(stderr, "\r%70s\r", "");
  if (rows_out) *rows_out = rows;

  std::vector<std::string> names;
  for (const auto& p : plan) names.push_back(p.name);
  fmt::print("# {} points in {:.1f} s\n", steps,
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (!o.json.empty()) {
    nlohmann::json j{{"model", model.name},
                     {"dtype", o.model.dtype},
                     {"quant", o.model.quant},
                     {"ranks", world.size()},
                     {"dp", dp},
                     {"tp", tp},
                     {"iters", o.iters},
                     {"warmup", o.warmup},
                     {"notes", notes},
                     {"rows", nlohmann::json::array()}};
    for (const auto& r : rows)
      j["rows"].push_back({{"strategy", r.strategy},
                           {"tokens", r.tokens},
                           {"layer", r.layer},
                           {"ms", r.ms},
                           {"bytes_per_rank", r.bytes},
                           {"algbw_gbps", r.algbw},
                           {"busbw_gbps", r.busbw}});
    open_out(o.json) << j.dump(2) << "\n";
  }
  if (!o.csv.empty()) {
    std::ofstream f = open_out(o.csv);
    f << "strategy,tokens,layer,ms,bytes_per_rank,algbw_gbps,busbw_gbps\n";
    for (const auto& r : rows)
      f << fmt::format("{},{},{},{:.6f},{:.0f},{:.6f},{:.6f}\n", r.strategy, r.tokens, r.layer,
                       r.ms, r.bytes, r.algbw, r.busbw);
  }
  if (!o.svg.empty())
    write_svg(o.svg, rows, names, tokens,
              fmt::format("tplinear bench: {}, {} ranks (DP {} x TP {}), {}", model.name,
                          world.size(), dp, tp, o.model.dtype));
  return 0;
}

}  // namespace tpl::cli

// tpl_stress: randomized op cases under mpirun, each checked against the single-device
// reference (tests/ops/op_case.h), with resident memory watched for growth.
//
// Iteration i draws its case from a generator seeded by (seed, i) alone, identical on every
// rank, so `--seed S --start i --iterations 1` replays one case. A case is an op valid at this
// world size (standard column/merged/QKV and row, replicated, FlashComm1 with and without DP,
// fused matmul-allreduce, FlashComm2 with its o_proj-sharded QKV, MLP-TP, O-proj-TP, DSA-CP),
// its shape (uneven and tiny: features from 1, heads from the TP size, token counts from 1),
// dtype and data, bias mode and flags, fused chunking, and W8A8 where the op has it.
//
// Random shapes fill oneDNN's primitive cache (1024 primitives by default, tens of KiB each):
// bounded, but it would read as growth here. So unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set,
// tpl_stress caps it at 16, and the growth measured is tplinear's own.
//
// Exit 0 when every case matched and resident memory after the last iteration is within
// --max-growth (default 5 %) of its level after the first 100 on every rank; 1 otherwise, with
// each mismatch's replay command; 2 for bad arguments. docs/errors.md, "Stress".
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "op_case.h"
#include "tpl/backends.h"
#include "tpl/error.h"

namespace tpl::testing {
namespace {

// Resident set size of this process in bytes (/proc/self/statm).
double resident_bytes() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

class Draw {
 public:
  Draw(std::uint64_t seed, std::uint64_t i) : rng_(seed * 0x9E3779B97F4A7C15ull ^ (i + 1)) {}
  // Uniform in [lo, hi]. Written out rather than with std::uniform_int_distribution so that
  // the sequence is the same with every standard library.
  std::int64_t in(std::int64_t lo, std::int64_t hi) {
    return lo + static_cast<std::int64_t>(rng_() % static_cast<std::uint64_t>(hi - lo + 1));
  }
  bool chance(int percent) { return in(1, 100) <= percent; }
  template <class T>
  T pick(const std::vector<T>& v) {
    return v[static_cast<std::size_t>(in(0, static_cast<std::int64_t>(v.size()) - 1))];
  }
  // Mostly tiny and odd counts, some large.
  std::int64_t tokens() {
    const int r = static_cast<int>(in(1, 10));
    return r <= 4 ? in(1, 8) : r <= 7 ? in(9, 64) : in(65, 1600);
  }

 private:
  std::mt19937_64 rng_;
};

std::vector<int> divisors(int n) {
  std::vector<int> d;
  for (int k = 1; k <= n; ++k)
    if (n % k == 0) d.push_back(k);
  return d;
}

std::string dims(std::int64_t in, std::int64_t out) {
  return " " + std::to_string(in) + "->" + std::to_string(out);
}

// A random column-like spec (Column, MergedColumn or QKV) whose outputs split over `tp`.
LayerSpec column_like(Draw& d, const char* prefix, int tp, std::string* label, bool any_kind) {
  const std::int64_t in = d.in(1, 48);
  const int kind = any_kind ? static_cast<int>(d.in(0, 2)) : 0;
  LayerSpec s = column(prefix, in, d.in(tp, 48));
  if (kind == 1) {
    s.kind = LayerKind::kMergedColumn;
    s.output_sizes = {d.in(tp, 24), d.in(tp, 24)};
    *label += " merged" + dims(in, s.output_sizes[0]) + "+" + std::to_string(s.output_sizes[1]);
  } else if (kind == 2) {
    s.kind = LayerKind::kQkv;
    const std::int64_t heads = d.in(tp, 8);
    std::vector<std::int64_t> kv;
    for (std::int64_t k = 1; k <= heads; ++k)
      if (heads % k == 0) kv.push_back(k);
    s.qkv = {heads, d.pick(kv), d.in(1, 6)};
    *label += " qkv in=" + std::to_string(in) + " heads=" + std::to_string(s.qkv.num_heads) + "/" +
              std::to_string(s.qkv.num_kv_heads) + "x" + std::to_string(s.qkv.head_dim);
  } else {
    *label += dims(in, s.out_features);
  }
  return s;
}

LayerSpec row_spec(Draw& d, const char* prefix, int parts, std::string* label) {
  LayerSpec s = row(prefix, d.in(parts, 48), d.in(1, 48));
  *label += dims(s.in_features, s.out_features);
  return s;
}

// One random case valid at world size W; `family` gets the op's short name (for the tally).
Case random_case(Draw& d, int W, std::string* family) {
  enum Op { kStdColumn, kStdRow, kRepl, kFc1, kFc1Dp, kMar, kFc2, kMlp, kOproj, kDsa };
  std::vector<Op> ops{kStdColumn, kStdRow, kRepl, kMar, kMlp, kOproj};
  if (W >= 2) ops.insert(ops.end(), {kFc1, kFc2, kDsa});
  if (W == 4) ops.push_back(kFc1Dp);
  const Op op = d.pick(ops);
  Case c;
  bool w8a8_ok = true;
  switch (op) {
    case kStdColumn:
      c.label = "standard column";
      c.config = tp_config(W);
      c.spec = column_like(d, kQkv, W, &c.label, true);
      // gather_output on merged/QKV layers yields the rank-major order [g0 u0 g1 u1 ...]
      // (docs/ops.md), not the reference's; only plain columns are gathered here.
      c.spec.flags.gather_output = c.spec.kind == LayerKind::kColumn && d.chance(30);
      if (c.spec.flags.gather_output) c.label += " gather_output";
      c.expect_kind = OpKind::kStandardColumn;
      w8a8_ok = c.spec.kind == LayerKind::kColumn;
      break;
    case kStdRow:
      c.label = "standard row";
      c.config = tp_config(W);
      c.spec = row_spec(d, kO, W, &c.label);
      c.spec.flags.input_is_parallel = !d.chance(20);
      c.spec.flags.reduce_results = !d.chance(20);
      if (!c.spec.flags.input_is_parallel) c.label += " !input_is_parallel";
      if (!c.spec.flags.reduce_results) c.label += " !reduce_results";
      c.expect_kind = OpKind::kStandardRow;
      w8a8_ok = c.spec.flags.input_is_parallel && c.spec.flags.reduce_results;
      break;
    case kRepl:
      c.label = "replicated";
      c.config = tp_config(W);
      c.spec = column_like(d, "model.layers.0.mlp.gate", 1, &c.label, false);
      c.spec.kind = LayerKind::kReplicated;
      c.expect_kind = OpKind::kReplicated;
      break;
    case kFc1:
    case kFc1Dp: {
      c.config = tp_config(W);
      if (op == kFc1Dp) {
        c.config.layout = {1, 2, 2};
        c.token_skew = d.in(0, 5);
      }
      const int tp = c.config.layout.tp;
      c.config.flashcomm1 = true;
      c.config.flashcomm1_threshold = d.chance(50) ? 0 : d.in(1, 1200);
      c.config.fc1_quantized_allgather = d.chance(50);
      c.config.fused_chunks = static_cast<int>(d.pick<std::int64_t>({0, 2, 3, 4}));
      c.model.is_moe = d.chance(30);
      const bool col = d.chance(50);
      c.label = std::string(col ? "fc1 column" : "fc1 row") + (op == kFc1Dp ? " dp2" : "") +
                (c.model.is_moe ? " moe" : " dense") +
                " thr=" + std::to_string(c.config.flashcomm1_threshold) +
                " chunks=" + std::to_string(c.config.fused_chunks);
      c.spec = col ? column_like(d, kQkv, tp, &c.label, false) : row_spec(d, kO, tp, &c.label);
      c.expect_kind = col ? OpKind::kSequenceColumn : OpKind::kSequenceRow;
      w8a8_ok = op == kFc1;
      break;
    }
    case kMar:
      c.label = "matmul-allreduce";
      c.config = tp_config(W);
      c.config.matmul_allreduce = true;
      c.config.fused_chunks = static_cast<int>(d.pick<std::int64_t>({0, 2, 3, 4}));
      c.label += " chunks=" + std::to_string(c.config.fused_chunks);
      c.spec = row_spec(d, kDown, W, &c.label);
      c.expect_kind = OpKind::kMatmulAllreduceRow;
      break;
    case kFc2: {
      std::vector<int> ps;
      for (int p : divisors(W))
        if (p < W) ps.push_back(p);
      c.config = tp_config(W);
      c.config.flashcomm2_p = d.pick(ps);
      c.config.flashcomm1 = d.chance(50);
      c.config.flashcomm1_threshold = 0;
      c.label =
          "fc2 P=" + std::to_string(c.config.flashcomm2_p) + (c.config.flashcomm1 ? " fc1" : "");
      if (d.chance(70)) {
        const std::int64_t heads = d.in(W, 8), unit = d.in(1, 4);
        c.spec = row(kO, heads * unit, d.in(1, 48));
        c.spec.in_unit = unit;
        c.label += " o_proj heads=" + std::to_string(heads) + "x" + std::to_string(unit) + "->" +
                   std::to_string(c.spec.out_features);
        c.expect_kind = OpKind::kFlashcomm2OProjRow;
        w8a8_ok = !c.config.flashcomm1;
      } else {
        c.config.layer_sharding = {"o_proj"};
        c.label += " oshard qkv";
        c.spec = column_like(d, kQkv, W, &c.label, false);
        c.expect_kind = OpKind::kFlashcomm2OshardQkv;
        w8a8_ok = false;
      }
      break;
    }
    case kMlp: {
      std::vector<int> tps;
      for (int tp : {1, 2})
        if (W % tp == 0) tps.push_back(tp);
      const int tp = d.pick(tps), dp = W / tp;
      c.config.layout = {1, dp, tp};
      c.config.mlp_tp = d.pick(divisors(dp));
      c.token_skew = d.in(0, 3);
      const bool col = d.chance(50);
      c.label = std::string(col ? "mlp column" : "mlp row") + " tp=" + std::to_string(tp) +
                " m=" + std::to_string(c.config.mlp_tp);
      if (col) {
        c.spec = column(kGateUp, d.in(1, 48), 0);
        c.spec.kind = LayerKind::kMergedColumn;
        const int m = c.config.mlp_tp;
        c.spec.output_sizes = {d.in(m, 24), d.in(m, 24)};
        c.label += dims(c.spec.in_features, c.spec.output_sizes[0]) + "+" +
                   std::to_string(c.spec.output_sizes[1]);
        c.expect_kind = OpKind::kMlpColumn;
      } else {
        c.spec = row_spec(d, kDown, c.config.mlp_tp, &c.label);
        c.expect_kind = OpKind::kMlpRow;
      }
      w8a8_ok = tp == 1;
      break;
    }
    case kOproj:
      c.config.layout = {1, W, 1};
      c.config.oproj_tp = d.pick(divisors(W));
      c.config.deployment = Deployment::kDecode;
      c.token_skew = d.in(0, 3);
      c.label = "oproj tp m=" + std::to_string(c.config.oproj_tp);
      // O-proj TP cuts the features into equal slices (it refuses others, docs/ops.md).
      c.spec = row(kO, c.config.oproj_tp * d.in(1, 12), d.in(1, 48));
      c.label += dims(c.spec.in_features, c.spec.out_features);
      c.expect_kind = OpKind::kOProjRow;
      break;
    case kDsa: {
      c.config = tp_config(W);
      c.config.flashcomm1 = true;
      c.config.deployment = Deployment::kPrefill;
      c.model.has_index_topk = true;
      const bool col = d.chance(50);
      c.config.layer_sharding =
          col ? std::vector<std::string>{"q_b_proj", "o_proj"} : std::vector<std::string>{"o_proj"};
      c.label = col ? "dsa-cp column" : "dsa-cp row";
      c.spec = col ? column_like(d, "model.layers.0.self_attn.q_b_proj", W, &c.label, false)
                   : row_spec(d, kO, W, &c.label);
      c.expect_kind = col ? OpKind::kShardedCpColumn : OpKind::kShardedCpRow;
      w8a8_ok = !col;
      break;
    }
  }
  static const char* const kFamily[] = {
      "standard column",  "standard row", "replicated", "fc1",      "fc1 dp2",
      "matmul-allreduce", "fc2",          "mlp-tp",     "oproj-tp", "dsa-cp"};
  c.w8a8 = w8a8_ok && d.chance(25);
  *family = std::string(kFamily[op]) + (c.w8a8 ? " w8a8" : "");
  c.tokens = d.tokens();
  if (c.w8a8) {
    c.data = d.chance(50) ? Data::kIntF32 : Data::kIntBF16;
    c.bias = d.chance(50) ? BiasMode::kNone : BiasMode::kAdded;
  } else {
    c.data = d.pick<Data>({Data::kIntF32, Data::kIntBF16, Data::kNormalBF16});
    // A row that does not reduce keeps a partial sum: an added bias would be added per rank.
    c.bias = d.pick<BiasMode>(
        c.spec.flags.reduce_results
            ? std::vector<BiasMode>{BiasMode::kNone, BiasMode::kAdded, BiasMode::kSkipped}
            : std::vector<BiasMode>{BiasMode::kNone, BiasMode::kSkipped});
  }
  return c;
}

int stress(Communicator& world, int argc, char** argv) {
  CLI::App app{"tpl_stress: randomized op cases against the single-device reference"};
  std::uint64_t seed = 1, start = 0, iterations = 1000;
  double max_growth = 5;
  int max_reports = 10;
  bool list = false;
  app.add_option("--seed", seed, "the run's seed (iteration i's case depends on it and i only)");
  app.add_option("--start", start, "first iteration (to replay one: --start i --iterations 1)");
  app.add_option("--iterations", iterations, "how many cases")->check(CLI::Range(1, 100000000));
  app.add_option("--max-growth", max_growth,
                 "resident memory may grow this many percent from iteration 100 to the end")
      ->check(CLI::Range(0.0, 1000.0));
  app.add_option("--max-reports", max_reports, "mismatches printed in full");
  app.add_flag("--list", list, "print every case as it runs (rank 0)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (world.rank() == 0) app.exit(e);
    return e.get_exit_code() == 0 ? 0 : 2;
  }
  const bool root = world.rank() == 0;
  std::map<std::string, int> per_op;
  int mismatches = 0;
  double rss_early = 0;
  for (std::uint64_t i = start; i < start + iterations; ++i) {
    Draw d(seed, i);
    std::string family;
    const Case c = random_case(d, world.size(), &family);
    if (list && root)
      std::printf("%llu: %s\n", static_cast<unsigned long long>(i), describe(c).c_str());
    std::string msg;
    try {
      msg = run_case(world, c);
    } catch (const std::exception& e) {
      msg = describe(c) + ": threw " + e.what();
    }
    const auto all = all_gather_strings(world, msg);
    ++per_op[family];
    bool bad = false;
    for (std::size_t r = 0; r < all.size(); ++r)
      if (!all[r].empty()) {
        if (root && mismatches < max_reports)
          std::printf(
              "MISMATCH iteration %llu [rank %zu] %s\n  replay: tpl_stress --seed %llu "
              "--start %llu --iterations 1\n",
              static_cast<unsigned long long>(i), r, all[r].c_str(),
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(i));
        bad = true;
      }
    mismatches += bad;
    if (i - start + 1 == std::min<std::uint64_t>(100, iterations)) rss_early = resident_bytes();
  }
  const double rss_end = resident_bytes();
  const double growth = rss_early > 0 ? 100.0 * (rss_end - rss_early) / rss_early : 0;
  char mine[160];
  std::snprintf(mine, sizeof mine, "%.1f MiB after %llu, %.1f MiB at the end (%+.2f %%)",
                rss_early / (1 << 20),
                static_cast<unsigned long long>(std::min<std::uint64_t>(100, iterations)),
                rss_end / (1 << 20), growth);
  const auto rss = all_gather_strings(world, mine);
  const auto grew = all_gather_strings(world, growth > max_growth ? "1" : "");
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer's quarantine keeps freed memory resident (256 MiB by default): the growth
  // is reported, not checked (scripts/sanitize.sh); LeakSanitizer checks for leaks instead.
  constexpr bool kGrowthChecked = false;
#else
  constexpr bool kGrowthChecked = true;
#endif
  const bool growth_bad = kGrowthChecked && iterations > 100 &&
                          std::any_of(grew.begin(), grew.end(), [](auto& s) { return !s.empty(); });
  if (root) {
    std::printf("tpl_stress: %d rank%s, seed %llu, iterations %llu..%llu: %d mismatch%s\n",
                world.size(), world.size() > 1 ? "s" : "", static_cast<unsigned long long>(seed),
                static_cast<unsigned long long>(start),
                static_cast<unsigned long long>(start + iterations - 1), mismatches,
                mismatches == 1 ? "" : "es");
    std::printf("oneDNN primitive cache capacity: %s\n",
                std::getenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY"));
    std::printf("cases:");
    for (const auto& [name, n] : per_op) std::printf(" %s %d;", name.c_str(), n);
    std::printf("\n");
    for (std::size_t r = 0; r < rss.size(); ++r)
      std::printf("resident memory, rank %zu: %s\n", r, rss[r].c_str());
    if (growth_bad)
      std::printf("FAIL: resident memory grew more than %.1f %% after iteration 100\n", max_growth);
    if (!kGrowthChecked)
      std::printf(
          "resident growth not checked: AddressSanitizer's quarantine holds freed memory\n");
    std::printf("%s\n", mismatches == 0 && !growth_bad ? "PASS" : "FAIL");
  }
  return mismatches == 0 && !growth_bad ? 0 : 1;
}

}  // namespace
}  // namespace tpl::testing

int main(int argc, char** argv) {
  setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16", 0);  // before oneDNN's first primitive
  tpl::MpiSession session(&argc, &argv);
  std::unique_ptr<tpl::Communicator> world;
  int rc = 0;
  try {
    world = session.world();
    rc = tpl::testing::stress(*world, argc, argv);
  } catch (const tpl::Error& e) {
    std::fprintf(stderr, "tpl_stress: error: %s\n", e.what());
    rc = 2;
  }
  world.reset();
  return rc;
}

// `tplinear calibrate`: measures the GEMMs, the collectives and the fused paths of this machine
// into a MachineProfile. Every rank measures at the same time (as in a forward, the ranks share
// the memory bandwidth); a point's value is the slowest rank's median.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>

#include "ops/gemm_collectives.h"
#include "tpl/comm_worker.h"
#include "tpl/cpu_gemm.h"
#include "tpl/error.h"
#include "tpl/profile.h"

namespace tpl {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The largest value over the ranks of `comm`.
double max_over(Communicator& comm, double v) {
  Tensor mine(DType::kF32, 1, 1), all(DType::kF32, comm.size(), 1);
  mine.ptr<float>()[0] = static_cast<float>(v);
  comm.all_gather(mine, all, 0);
  double m = 0;
  for (int r = 0; r < comm.size(); ++r) m = std::max(m, double(all.ptr<float>()[r]));
  return m;
}

Tensor random_tensor(std::int64_t rows, std::int64_t cols, DType dtype, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  if (dtype == DType::kI8) {
    Tensor t(dtype, rows, cols);
    std::uniform_int_distribution<int> d(-127, 127);
    auto* p = t.ptr<std::int8_t>();
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<std::int8_t>(d(gen));
    return t;
  }
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = d(gen);
  return Tensor::from_f32(v, rows, cols, dtype);
}

// Median of `reps` timed calls after one untimed call; every call starts after a barrier, so the
// ranks run each one together.
// `before` runs ahead of each call, untimed.
double time_calls(Communicator& comm, int reps, const std::function<void()>& f, bool warm = false,
                  const std::function<void()>& before = {}) {
  if (!warm) comm.barrier(), f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    if (before) before();
    comm.barrier();
    const auto t0 = Clock::now();
    f();
    t.push_back(ms_since(t0));
  }
  return max_over(comm, median(t));
}

// As time_calls, with as many calls as fit in about `budget_ms` (3 to 25, the same on every
// rank): a cheap point is the noisiest on a shared machine, and more calls cost it little.
double time_budget(Communicator& world, double budget_ms, const std::function<void()>& f,
                   const std::function<void()>& before = {}) {
  if (before) before();
  world.barrier();
  const auto t0 = Clock::now();
  f();
  const double first = max_over(world, ms_since(t0));
  const int reps = static_cast<int>(std::clamp(budget_ms / std::max(first, 1e-3), 3.0, 25.0));
  return time_calls(world, reps, f, true, before);  // the first call was the warm-up
}

// Evicts the last-level cache by streaming through twice its size. In a forward every layer's
// weights pass through the cache between two calls of one layer, so a weight that fits in it
// (an 8 MiB W8A8 qkv shard in a 32 MiB L3) is cold there; timed hot, it ran 2x faster than in
// the forward at 16 rows.
class CacheFlush {
 public:
  // The last level's size from sysfs (what this CPU's cores share; sysconf reports 384 MiB on
  // the 32 MiB-L3 Zen5 VM), 32 MiB when unreadable.
  CacheFlush() {
    long llc = 0;
    for (int i = 3; i >= 2 && llc <= 0; --i) {
      std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/size");
      std::string v;
      if (f >> v && !v.empty()) {
        const long num = std::atol(v.c_str());
        llc = v.back() == 'K' ? num << 10 : v.back() == 'M' ? num << 20 : num;
      }
    }
    if (llc <= 0) llc = 32L << 20;
    buf_.assign(std::size_t(std::clamp<long>(2 * llc, 8L << 20, 256L << 20)), 1);
  }
  std::size_t bytes() const { return buf_.size(); }
  // Reads only: evicting needs no write-back, and a read pass costs a third of a write pass.
  void operator()() {
    const auto* p = reinterpret_cast<const std::uint64_t*>(buf_.data());
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < buf_.size() / 8; i += 8) sum += p[i];
    sink_ = sink_ + sum;
  }

 private:
  std::vector<char> buf_;
  volatile std::uint64_t sink_ = 0;
};

// One table: the GEMM of `key` ("f32", "bf16", "int8", or "w8a8" = LocalGemm's quantise, int8
// GEMM and dequantise as a W8A8 layer runs it) on a random [n, k] weight, at each of `rows`.
// Two weights of the shape, each with its own GEMM, and the faster of the two per point: on a VM
// one buffer of a shape can stream persistently slower than another (measured 1.8x on one of
// two calibrations, at every M), an accident of placement the model should not learn.
GemmTable measure_gemm(Communicator& world, CpuGemmChooser& chooser, CacheFlush& flush,
                       const std::string& key, std::int64_t n, std::int64_t k,
                       const std::vector<std::int64_t>& rows) {
  const bool w8a8 = key == "w8a8";
  const DType dt = w8a8 || key == "int8" ? DType::kI8 : key == "bf16" ? DType::kBF16 : DType::kF32;
  GemmDesc d{k, n, dt, dt, dt == DType::kI8 ? DType::kI32 : dt};
  Tensor deq = random_tensor(1, n, DType::kF32, 19), qb(DType::kI32, 1, n);
  std::memset(qb.data(), 0, qb.nbytes());
  W8A8Local q;
  q.input_scale = 0.05f;
  q.deq_scale = deq;
  q.quant_bias = qb;
  struct Copy {
    Tensor w;
    std::unique_ptr<Gemm> gemm;
    LocalGemm lg;
  };
  std::array<Copy, 2> copies;
  for (int c = 0; c < 2; ++c) {
    Copy& cp = copies[c];
    cp.w = random_tensor(n, k, dt, 7 + n + 3 * k + c);
    cp.gemm = chooser.make(d, cp.w, TensorView());
    cp.lg.gemm = cp.gemm.get();
    cp.lg.out_dtype = DType::kF32;
    cp.lg.in_features = k;
    cp.lg.out_features = cp.lg.full_out_features = n;
    cp.lg.quant = &q;
  }
  // A weight larger than the flush evicts the cache by itself.
  const bool cold = double(n) * double(k) * double(dtype_size(dt)) < double(flush.bytes());
  GemmTable t;
  t.k = k;
  t.n = n;
  t.impl = copies[0].gemm->name() + (w8a8 ? " + quantise/dequantise" : "");
  for (std::int64_t m : rows) {
    Tensor x = random_tensor(m, k, w8a8 ? DType::kF32 : dt, 11 + m),
           y(w8a8 ? DType::kF32 : d.out, m, n);
    double best = 0;
    for (Copy& cp : copies) {
      const double ms = time_budget(
          world, 200,
          [&] {
            if (w8a8)
              cp.lg.run_into(x, y, true);
            else
              cp.gemm->run(x, y, false);
          },
          cold ? std::function<void()>(std::ref(flush)) : std::function<void()>());
      best = &cp == &copies[0] ? ms : std::min(best, ms);
    }
    t.rows.push_back({double(m), best});
  }
  return t;
}

std::string fmt_shape(const GemmRequest& r) {
  return "layer GEMM " + r.key + " " + std::to_string(r.n) + "x" + std::to_string(r.k) + " at " +
         std::to_string(r.rows.size()) + " row counts";
}

struct Progress {
  const CalibrateOptions& o;
  bool root;
  int step = 0, steps = 0;
  void operator()(const std::string& what) {
    if (root && o.progress) o.progress(step, steps, what);
    ++step;
  }
};

// Each collective at sizes 4 KiB to `max_bytes` on each of `comms` (groups of g ranks split
// from `world`, one per communicator kind), into its tables; `label`s prefix the progress
// lines. The kinds take turns at every point, so a phase of this shared machine running slow
// (docs/performance.md) weighs on all of them alike rather than on the kind measured then.
struct Measured {
  Communicator* comm;
  MachineProfile::CollectiveTables* tables;
  std::string label;
};
void measure_collectives(const std::vector<Measured>& comms, int g, Communicator& world,
                         std::int64_t max_bytes, Progress& progress) {
  for (Collective kind : {Collective::kAllReduce, Collective::kReduceScatter,
                          Collective::kAllGather, Collective::kAllToAll, Collective::kBroadcast}) {
    const std::string key = MachineProfile::collective_key(kind, g);
    for (std::int64_t s = 4096; s <= max_bytes; s *= 4) {
      const std::int64_t elems = s / 4, per = std::max<std::int64_t>(1, elems / g);
      Tensor whole = random_tensor(g, per, DType::kF32, 5),
             part = random_tensor(1, per, DType::kF32, 6);
      Tensor flat = random_tensor(1, g * per, DType::kF32, 8);
      const int reps = static_cast<int>(std::clamp<std::int64_t>((8 << 20) / s, 3, 30));
      for (const Measured& m : comms) {
        progress(m.label + key + " " + std::to_string(s >> 10) + " KiB");
        Communicator& c = *m.comm;
        std::function<void()> f;
        switch (kind) {
          case Collective::kAllReduce:
            f = [&] { c.all_reduce(flat); };
            break;
          case Collective::kReduceScatter:
            f = [&] { c.reduce_scatter(whole, part); };
            break;
          case Collective::kAllGather:
            f = [&] { c.all_gather(part, whole, 0); };
            break;
          case Collective::kAllToAll:
            f = [&] { c.all_to_all(whole, flat); };
            break;
          case Collective::kBroadcast:
            f = [&] { c.broadcast(flat, 0); };
            break;
        }
        (*m.tables)[key].push_back({double(g * per * 4), time_calls(world, reps, f)});
      }
    }
  }
}

}  // namespace

MachineProfile calibrate(Communicator& world, const CalibrateOptions& options) {
  MachineProfile p;
  p.machine = this_machine(world.size());
  const bool quick = options.quick;
  const std::vector<std::int64_t> gemm_m = quick ? std::vector<std::int64_t>{1, 16, 128}
                                                 : std::vector<std::int64_t>{1, 16, 64, 256, 1024};
  const std::vector<std::int64_t> shapes =
      quick ? std::vector<std::int64_t>{64, 256} : std::vector<std::int64_t>{512, 4096};
  std::vector<int> groups;
  for (int g = 2; g <= world.size(); ++g)
    if (world.size() % g == 0) groups.push_back(g);
  const std::int64_t max_bytes = quick ? (256 << 10) : (64 << 20);
  int sizes = 0;
  for (std::int64_t s = 4096; s <= max_bytes; s *= 4) ++sizes;
  const std::vector<std::int64_t> fused_rows =
      quick ? std::vector<std::int64_t>{1024} : std::vector<std::int64_t>{1024, 2048};
  Progress progress{options, world.rank() == 0};
  progress.steps = 1 + int(4 * shapes.size() + options.layer_shapes.size()) +
                   int(groups.size()) * 5 * sizes +
                   (world.size() > 1 ? 3 * int(fused_rows.size()) : 0);

  // One core's memcpy, for the cost model's elementwise passes.
  progress("memcpy bandwidth");
  {
    const std::size_t bytes = quick ? (4u << 20) : (64u << 20);
    std::vector<char> a(bytes, 1), b(bytes, 2);
    const double ms = time_calls(world, 3, [&] { std::memcpy(b.data(), a.data(), bytes); });
    p.copy_gbps = 2.0 * double(bytes) / (ms * 1e6);  // read + write
  }

  CpuGemmChooser chooser;
  CacheFlush flush;
  for (const char* key : {"f32", "bf16", "int8", "w8a8"})
    for (std::int64_t kn : shapes) {
      progress(std::string(std::strcmp(key, "w8a8") ? "GEMM " : "W8A8 layer path ") + key + " " +
               std::to_string(kn) + "x" + std::to_string(kn));
      p.gemm[key].push_back(measure_gemm(world, chooser, flush, key, kn, kn, gemm_m));
    }
  // The model's own shapes, at its row counts plus the reference ones below the largest.
  for (const GemmRequest& r : options.layer_shapes) {
    progress(fmt_shape(r));
    std::vector<std::int64_t> rows = r.rows;
    const std::int64_t most = rows.empty() ? 0 : *std::max_element(rows.begin(), rows.end());
    for (std::int64_t m : gemm_m)
      if (m < most && std::find(rows.begin(), rows.end(), m) == rows.end()) rows.push_back(m);
    std::sort(rows.begin(), rows.end());
    p.layer_gemm[r.key].push_back(measure_gemm(world, chooser, flush, r.key, r.n, r.k, rows));
  }

  // The world's own kind into `collectives`, then each other kind it can make (split_as) into
  // comm_collectives, over the same groups: the planner's per-group choice of communicator.
  p.comm = world.kind_name();
  for (const CommKind k : {CommKind::kMpi, CommKind::kShm}) {
    const std::string kind = comm_kind_name(k);
    if (kind == p.comm || groups.empty()) continue;
    try {
      // Every member agrees on these failures (split_as checks before any message).
      (void)world.split_as(0, world.rank(), k);
    } catch (const Unsupported&) {
      continue;
    } catch (const ConfigError&) {
      continue;  // e.g. no shared window on this machine: SHM is not a choice here
    }
    p.comm_collectives[kind];
  }
  progress.steps += int(p.comm_collectives.size() * groups.size()) * 5 * sizes;
  for (int g : groups) {
    std::vector<std::unique_ptr<Communicator>> subs;
    std::vector<Measured> comms;
    subs.push_back(world.split(world.rank() / g, world.rank()));
    comms.push_back({subs.back().get(), &p.collectives, ""});
    for (auto& [kind, tables] : p.comm_collectives) {
      subs.push_back(
          world.split_as(world.rank() / g, world.rank(), parse_comm_kind(kind, "calibrate")));
      comms.push_back({subs.back().get(), &tables, kind + " "});
    }
    measure_collectives(comms, g, world, max_bytes, progress);
  }

  // Fused paths as the ops run them: the overlap worker and fused_chunk_count's chunks, against
  // the same call unfused (no worker, one chunk), on the whole world.
  if (world.size() > 1) {
    const std::int64_t kn = quick ? 256 : 2048;
    GemmDesc d{kn, kn, DType::kF32, DType::kF32, DType::kF32};
    Tensor w = random_tensor(kn, kn, DType::kF32, 3);
    auto gemm = chooser.make(d, w, TensorView());
    LocalGemm g;
    g.gemm = gemm.get();
    g.in_features = kn;
    g.out_features = kn;
    g.full_out_features = kn * world.size();
    CommWorker worker;
    for (const char* path : {"gemm_all_reduce", "gemm_reduce_scatter", "all_gather_gemm"}) {
      auto& pts = p.fused[path];
      for (std::int64_t rows : fused_rows) {
        progress(std::string("fused ") + path + " " + std::to_string(rows) + " rows");
        const int chunks = ops::fused_chunk_count(rows, 0);
        const std::string ps = path;
        // Token shards need rows divisible by the ranks (3 ranks: 1023 of 1024); the ratio is
        // recorded at the nominal row count.
        const std::int64_t even = rows / world.size() * world.size();
        Tensor x =
            random_tensor(ps == "all_gather_gemm" ? even / world.size() : even, kn, DType::kF32, 9);
        auto run = [&](CommWorker* wk, int ch) {
          if (ps == "gemm_all_reduce")
            return (void)ops::gemm_all_reduce(g, x, world, false, wk, ch);
          if (ps == "gemm_reduce_scatter")
            return (void)ops::gemm_reduce_scatter(g, x, world, false, false, wk, ch);
          (void)ops::all_gather_gemm(g, x, world, 0, false, wk, ch);
        };
        const double unfused = time_calls(world, 3, [&] { run(nullptr, 1); });
        const double fused = time_calls(world, 3, [&] { run(&worker, chunks); });
        pts.push_back({double(rows), fused / unfused});
      }
    }
  }
  return p;
}

}  // namespace tpl

// `tplinear calibrate`: measures the GEMMs, the collectives and the fused paths of this machine
// into a MachineProfile. Every rank measures at the same time (as in a forward, the ranks share
// the memory bandwidth); a point's value is the slowest rank's median.
#include <algorithm>
#include <chrono>
#include <cstring>
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
double time_calls(Communicator& comm, int reps, const std::function<void()>& f) {
  comm.barrier();
  f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    comm.barrier();
    const auto t0 = Clock::now();
    f();
    t.push_back(ms_since(t0));
  }
  return max_over(comm, median(t));
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

}  // namespace

MachineProfile calibrate(Communicator& world, const CalibrateOptions& options) {
  MachineProfile p;
  p.machine = this_machine(world.size());
  const bool quick = options.quick;
  const std::vector<std::int64_t> gemm_m = quick ? std::vector<std::int64_t>{1, 16, 128}
                                                 : std::vector<std::int64_t>{1, 16, 64, 256, 1024};
  const std::vector<std::int64_t> shapes =
      quick ? std::vector<std::int64_t>{64, 256} : std::vector<std::int64_t>{512, 4096};
  const std::vector<DType> dtypes{DType::kF32, DType::kBF16, DType::kI8};
  std::vector<int> groups;
  for (int g = 2; g <= world.size(); ++g)
    if (world.size() % g == 0) groups.push_back(g);
  const std::int64_t max_bytes = quick ? (256 << 10) : (64 << 20);
  int sizes = 0;
  for (std::int64_t s = 4096; s <= max_bytes; s *= 4) ++sizes;
  const std::vector<std::int64_t> fused_rows =
      quick ? std::vector<std::int64_t>{1024} : std::vector<std::int64_t>{1024, 2048};
  Progress progress{options, world.rank() == 0};
  progress.steps = 1 + int((dtypes.size() + 1) * shapes.size()) + int(groups.size()) * 5 * sizes +
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
  for (DType dt : dtypes) {
    const char* key = dt == DType::kI8 ? "int8" : dt == DType::kBF16 ? "bf16" : "f32";
    for (std::int64_t kn : shapes) {
      progress(std::string("GEMM ") + key + " " + std::to_string(kn) + "x" + std::to_string(kn));
      GemmDesc d{kn, kn, dt, dt, dt == DType::kI8 ? DType::kI32 : dt};
      Tensor w = random_tensor(kn, kn, dt, 7 + kn);
      auto gemm = chooser.make(d, w, TensorView());
      GemmTable t;
      t.k = t.n = kn;
      t.impl = gemm->name();
      for (std::int64_t m : gemm_m) {
        Tensor x = random_tensor(m, kn, dt, 11 + m), y(d.out, m, kn);
        const int reps = double(m) * kn * kn > 4e9 ? 2 : 3;
        t.rows.push_back({double(m), time_calls(world, reps, [&] { gemm->run(x, y, false); })});
      }
      p.gemm[key].push_back(std::move(t));
    }
  }

  // W8A8 as a layer runs it (LocalGemm: quantise f32 x, int8 GEMM, dequantise into f32).
  for (std::int64_t kn : shapes) {
    progress("W8A8 layer path " + std::to_string(kn) + "x" + std::to_string(kn));
    GemmDesc d{kn, kn, DType::kI8, DType::kI8, DType::kI32};
    Tensor w = random_tensor(kn, kn, DType::kI8, 17 + kn);
    auto gemm = chooser.make(d, w, TensorView());
    Tensor deq = random_tensor(1, kn, DType::kF32, 19), qb(DType::kI32, 1, kn);
    std::memset(qb.data(), 0, qb.nbytes());
    W8A8Local q;
    q.input_scale = 0.05f;
    q.deq_scale = deq;
    q.quant_bias = qb;
    LocalGemm lg;
    lg.gemm = gemm.get();
    lg.out_dtype = DType::kF32;
    lg.in_features = lg.out_features = lg.full_out_features = kn;
    lg.quant = &q;
    GemmTable t;
    t.k = t.n = kn;
    t.impl = gemm->name() + " + quantise/dequantise";
    for (std::int64_t m : gemm_m) {
      Tensor x = random_tensor(m, kn, DType::kF32, 23 + m), y(DType::kF32, m, kn);
      const int reps = double(m) * kn * kn > 4e9 ? 2 : 3;
      t.rows.push_back({double(m), time_calls(world, reps, [&] { lg.run_into(x, y, true); })});
    }
    p.gemm["w8a8"].push_back(std::move(t));
  }

  for (int g : groups) {
    std::unique_ptr<Communicator> sub = world.split(world.rank() / g, world.rank());
    Communicator& c = *sub;
    for (Collective kind :
         {Collective::kAllReduce, Collective::kReduceScatter, Collective::kAllGather,
          Collective::kAllToAll, Collective::kBroadcast}) {
      auto& pts = p.collectives[MachineProfile::collective_key(kind, g)];
      for (std::int64_t s = 4096; s <= max_bytes; s *= 4) {
        progress(MachineProfile::collective_key(kind, g) + " " + std::to_string(s >> 10) + " KiB");
        const std::int64_t elems = s / 4, per = std::max<std::int64_t>(1, elems / g);
        Tensor whole = random_tensor(g, per, DType::kF32, 5),
               part = random_tensor(1, per, DType::kF32, 6);
        Tensor flat = random_tensor(1, g * per, DType::kF32, 8);
        const int reps = static_cast<int>(std::clamp<std::int64_t>((8 << 20) / s, 3, 30));
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
        pts.push_back({double(g * per * 4), time_calls(world, reps, f)});
      }
    }
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
        Tensor x =
            random_tensor(ps == "all_gather_gemm" ? rows / world.size() : rows, kn, DType::kF32, 9);
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

// Collective bandwidth of the MPI and the SHM communicators, side by side in one run
// (nccl-tests conventions), with one core's copy bandwidth B measured in the same run.
//
// Run under mpirun; every rank runs every benchmark in lockstep and only rank 0 reports:
//   mpirun -np 2 --bind-to core build/bench/tpl_comm_bench
// S is the full f32 buffer (platform-notes §2.4): all-reduce works on S, reduce-scatter takes
// S and gives S/n, all-gather gives S, all-to-all sends and receives S, broadcast moves S.
// Counters: us = time per call, algbw = S / time, busbw = algbw x the nccl-tests factor
// (2(n-1)/n for all-reduce, (n-1)/n for reduce-scatter, all-gather and all-to-all, 1 for
// broadcast), so busbw is comparable with the link bandwidth whatever n is.
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tpl/backends.h"
#include "tpl/communicator.h"
#include "tpl/shm.h"
#include "tpl/tensor.h"

namespace {

constexpr std::int64_t kCols = 256;  // S/4 floats laid out as [S / 1 KiB, 256]

// Rank-dependent random values: zeros could let a transport or a sum take shortcuts.
tpl::Tensor random_tensor(std::int64_t rows, std::int64_t cols, int rank) {
  tpl::Tensor t(tpl::DType::kF32, rows, cols);
  std::mt19937 gen(1234u + static_cast<unsigned>(rank));
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  float* p = t.ptr<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = dist(gen);
  return t;
}

struct Op {
  const char* name;
  double bus_factor;
  // Creates the buffers for `rows` x kCols floats (kept alive in `keep`) and returns the
  // callable that performs one collective on them.
  std::function<std::function<void()>(tpl::Communicator&, std::int64_t rows,
                                      std::vector<tpl::Tensor>& keep)>
      setup;
};

std::vector<Op> ops(int n) {
  const double nn = n;
  return {
      {"all_reduce", 2 * (nn - 1) / nn,
       [](tpl::Communicator& c, std::int64_t rows, std::vector<tpl::Tensor>& keep) {
         keep.push_back(random_tensor(rows, kCols, c.rank()));
         tpl::TensorView io = keep[0];
         return std::function<void()>([&c, io] { c.all_reduce(io); });
       }},
      {"reduce_scatter", (nn - 1) / nn,
       [](tpl::Communicator& c, std::int64_t rows, std::vector<tpl::Tensor>& keep) {
         keep.push_back(random_tensor(rows, kCols, c.rank()));
         keep.emplace_back(tpl::DType::kF32, rows / c.size(), kCols);
         tpl::TensorView in = keep[0], out = keep[1];
         return std::function<void()>([&c, in, out] { c.reduce_scatter(in, out); });
       }},
      {"all_gather", (nn - 1) / nn,
       [](tpl::Communicator& c, std::int64_t rows, std::vector<tpl::Tensor>& keep) {
         keep.push_back(random_tensor(rows / c.size(), kCols, c.rank()));
         keep.emplace_back(tpl::DType::kF32, rows, kCols);
         tpl::TensorView in = keep[0], out = keep[1];
         return std::function<void()>([&c, in, out] { c.all_gather(in, out, 0); });
       }},
      {"all_to_all", (nn - 1) / nn,
       [](tpl::Communicator& c, std::int64_t rows, std::vector<tpl::Tensor>& keep) {
         keep.push_back(random_tensor(rows, kCols, c.rank()));
         keep.emplace_back(tpl::DType::kF32, rows, kCols);
         tpl::TensorView in = keep[0], out = keep[1];
         return std::function<void()>([&c, in, out] { c.all_to_all(in, out); });
       }},
      {"broadcast", 1.0,
       [](tpl::Communicator& c, std::int64_t rows, std::vector<tpl::Tensor>& keep) {
         keep.push_back(random_tensor(rows, kCols, c.rank()));
         tpl::TensorView buf = keep[0];
         return std::function<void()>([&c, buf] { c.broadcast(buf, 0); });
       }},
  };
}

void run_collective(benchmark::State& state, tpl::Communicator& comm, const Op& op) {
  // Whole rows per member, so S is trimmed to a multiple of n KiB (a no-op for n = 2 or 4).
  const std::int64_t rows = state.range(0) / (kCols * 4) / comm.size() * comm.size();
  const std::int64_t bytes = rows * kCols * 4;
  std::vector<tpl::Tensor> keep;
  const std::function<void()> call = op.setup(comm, rows, keep);
  for (int i = 0; i < 3; ++i) call();  // warm-up: connections, page faults, caches

  double total = 0;
  std::vector<double> times;
  times.reserve(static_cast<std::size_t>(state.max_iterations));
  for (auto _ : state) {
    comm.barrier();  // start together, so the time is the collective's, not the skew's
    const double t0 = MPI_Wtime();
    call();
    double dt = MPI_Wtime() - t0;
    // The slowest rank defines the collective's time; agreeing on it also keeps Google
    // Benchmark's bookkeeping identical on every rank.
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    state.SetIterationTime(dt);
    total += dt;
    times.push_back(dt);
  }
  const double per_call = total / static_cast<double>(state.iterations());
  const double algbw = static_cast<double>(bytes) / per_call / 1e9;
  state.counters["us"] = per_call * 1e6;
  // The median call: on a shared VM a few descheduled calls can move the mean by 10x.
  std::nth_element(times.begin(), times.begin() + static_cast<std::ptrdiff_t>(times.size() / 2),
                   times.end());
  if (!times.empty()) state.counters["p50_us"] = times[times.size() / 2] * 1e6;
  state.counters["algbw_GBs"] = algbw;
  state.counters["busbw_GBs"] = algbw * op.bus_factor;
  state.counters["ranks"] = comm.size();
}

// A row-parallel layer's unfused all-reduce two ways, alternating call by call so both see the
// same phase of a noisy VM: "write" has the producer (a copy of a ready buffer, standing in for
// the GEMM's stores) write the output, then all_reduce; "produced" is all_reduce_produced with
// the same producer, which SHM points at the rank's slot when the output fits one. Counters:
// the median call of each, and produced / write; the difference is the copy-in the slot saves.
void run_produced_vs_write(benchmark::State& state, tpl::Communicator& comm) {
  const std::int64_t rows = std::max<std::int64_t>(1, state.range(0) / (kCols * 4));
  const tpl::Tensor src = random_tensor(rows, kCols, comm.rank());
  tpl::Tensor out(tpl::DType::kF32, rows, kCols);
  const tpl::TensorView sv = src.view(), ov = out.view();
  const auto produce = [sv](tpl::TensorView dst) {
    std::memcpy(dst.data(), sv.data(), sv.nbytes());
  };
  const std::function<void()> calls[2] = {[&] {
                                            produce(ov);
                                            comm.all_reduce(ov);
                                          },
                                          [&] { comm.all_reduce_produced(ov, produce); }};
  for (int i = 0; i < 3; ++i) calls[0](), calls[1]();  // warm-up
  std::vector<double> times[2];
  int first = 0;
  for (auto _ : state) {
    double both = 0;
    first ^= 1;  // alternate which goes first
    for (int j = 0; j < 2; ++j) {
      const int v = first ^ j;
      comm.barrier();
      const double t0 = MPI_Wtime();
      calls[v]();
      double dt = MPI_Wtime() - t0;
      MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      times[v].push_back(dt);
      both += dt;
    }
    state.SetIterationTime(both);
  }
  double p50[2] = {0, 0};
  for (int v = 0; v < 2; ++v) {
    auto& t = times[v];
    std::nth_element(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(t.size() / 2), t.end());
    if (!t.empty()) p50[v] = t[t.size() / 2];
  }
  state.counters["write_p50_us"] = p50[0] * 1e6;
  state.counters["produced_p50_us"] = p50[1] * 1e6;
  state.counters["produced_over_write"] = p50[0] > 0 ? p50[1] / p50[0] : 0;
}

// Rank > 0 runs the same benchmarks but prints nothing.
class NullReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  tpl::MpiSession session(&argc, &argv);
  std::unique_ptr<tpl::Communicator> comm =
      session.mpi_world();  // the mpi/ rows, whatever TPL_COMM
  if (comm->rank() != 0) {
    // Only rank 0 writes reports, so the others drop any --benchmark_out* file options.
    int kept = 1;
    for (int i = 1; i < argc; ++i)
      if (std::string(argv[i]).rfind("--benchmark_out", 0) != 0) argv[kept++] = argv[i];
    argc = kept;
  }
  benchmark::Initialize(&argc, argv);

  // The SHM communicator over the same ranks (the world here is always MPI's).
  // TPL_SHM_SLOTS="262144,4194304" adds one SHM communicator per slot size ("shm-<bytes>"),
  // to compare chunkings in one run; TPL_SHM_TWO_SHOT="1073741824" likewise adds one per
  // all-reduce two-shot threshold ("shm-2s<bytes>"; a huge one means one-shot throughout).
  std::vector<std::unique_ptr<tpl::Communicator>> shms;
  std::vector<std::pair<std::string, tpl::Communicator*>> comms{{"mpi", comm.get()}};
  if (comm->name() == "mpi") {
    shms.push_back(tpl::make_shm_communicator(*comm));
    // "shm", or "shm+mpi" where the ranks span nodes (TPL_NODE_SPLIT=2 fakes two on one host).
    comms.emplace_back(shms.back()->name(), shms.back().get());
    // One SHM communicator per item of the comma list in `env`, `set` applying the item.
    auto variants = [&](const char* env, const char* prefix,
                        void (*set)(tpl::ShmOptions&, std::size_t)) {
      const char* e = std::getenv(env);
      for (std::string rest = e ? e : ""; !rest.empty();) {
        const auto comma = rest.find(',');
        const std::string item = rest.substr(0, comma);
        tpl::ShmOptions o;
        set(o, std::stoull(item));
        shms.push_back(tpl::make_shm_communicator(*comm, o));
        comms.emplace_back(prefix + item, shms.back().get());
        rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
      }
    };
    variants("TPL_SHM_SLOTS", "shm-", [](tpl::ShmOptions& o, std::size_t v) { o.slot_bytes = v; });
    variants("TPL_SHM_TWO_SHOT", "shm-2s",
             [](tpl::ShmOptions& o, std::size_t v) { o.two_shot_bytes = v; });
  }

  // B: one core copying 64 MiB (every rank at once, as the collectives run), bytes copied / s.
  benchmark::RegisterBenchmark(
      "copy",
      [&comm](benchmark::State& st) {
        std::vector<char> a(64 << 20, 1), b(64 << 20, 2);
        double total = 0;
        for (auto _ : st) {
          comm->barrier();
          const double t0 = MPI_Wtime();
          std::memcpy(b.data(), a.data(), a.size());
          benchmark::DoNotOptimize(b.data());
          double dt = MPI_Wtime() - t0;
          MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
          st.SetIterationTime(dt);
          total += dt;
        }
        st.counters["GBs"] = double(a.size()) * double(st.iterations()) / total / 1e9;
      })
      ->Iterations(20)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);

  // Barrier: the round trip between the ranks' cores. On a shared VM it flags a run whose every
  // collective is several times slower (docs/performance.md "Slow runs": SHM's doubled from 0.25
  // to 0.5 us there), so read it before comparing runs.
  for (const auto& [label, c] : comms)
    benchmark::RegisterBenchmark(
        (label + "/barrier").c_str(),
        [c = c](benchmark::State& st) {
          constexpr int kCalls = 100;
          double total = 0;
          for (int i = 0; i < 3; ++i) c->barrier();
          for (auto _ : st) {
            c->barrier();
            const double t0 = MPI_Wtime();
            for (int i = 0; i < kCalls; ++i) c->barrier();
            double dt = (MPI_Wtime() - t0) / kCalls;
            MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            st.SetIterationTime(dt);
            total += dt;
          }
          st.counters["us"] = total / static_cast<double>(st.iterations()) * 1e6;
        })
        ->Iterations(200)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);

  const std::int64_t sizes[] = {4 << 10, 16 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20};
  for (const Op& op : ops(comm->size())) {
    for (std::int64_t s : sizes) {
      for (const auto& [label, c] : comms) {
        // A fixed iteration count (about 256 MiB moved, 10..2000 calls) keeps every rank in
        // lockstep regardless of how Google Benchmark would size the run from local clocks.
        const std::int64_t iters = std::clamp<std::int64_t>((256 << 20) / s, 10, 2000);
        benchmark::RegisterBenchmark((label + "/" + op.name).c_str(),
                                     [c, op](benchmark::State& st) { run_collective(st, *c, op); })
            ->Arg(s)
            ->Iterations(iters)
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }

  for (std::int64_t s : {std::int64_t{4} << 10, std::int64_t{16} << 10, std::int64_t{64} << 10,
                         std::int64_t{256} << 10, std::int64_t{1} << 20, std::int64_t{4} << 20})
    for (const auto& [label, c] : comms)
      benchmark::RegisterBenchmark((label + "/produced_vs_write").c_str(),
                                   [c = c](benchmark::State& st) { run_produced_vs_write(st, *c); })
          ->Arg(s)
          ->Iterations(std::clamp<std::int64_t>((256 << 20) / s, 10, 2000))
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);

  if (comm->rank() == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    NullReporter display;
    benchmark::RunSpecifiedBenchmarks(&display);
  }
  benchmark::Shutdown();
  shms.clear();
  comm.reset();  // frees the communicators before MPI_Finalize
  return 0;
}

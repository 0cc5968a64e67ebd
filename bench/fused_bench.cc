// Fused (chunked GEMM, collectives overlapped on a CommWorker) against unfused (GEMM, then the
// collective) for the two fused row paths, measured side by side in one run:
//   matmul-allreduce: MatmulAllreduceRow, GEMM + all-reduce;
//   fc1-mmrs:         SequenceRow under FlashComm1 with mmrs_fusion, GEMM + reduce-scatter;
//   fc1-agmm:         SequenceColumn under FlashComm1, all-gather + GEMM.
// Layer: in = out = 4096, bf16, weight split over the ranks (row layer for the first two, column
// layer for the third).
// Per M it reports gemm_ms (the local GEMM alone), comm_ms (the collective alone), unfused_ms,
// fused_ms and overlap efficiency = (gemm + comm - fused) / min(gemm, comm): 1 = the shorter
// one fully hidden, 0 = no overlap, < 0 = fusion costs time. Run under mpirun with 2 ranks:
//   mpirun -np 2 --bind-to core build/bench/tpl_fused_bench
// Each rank has one core, so the worker thread competes with the GEMM for it; see docs/ops.md.
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>

#include "tpl/backends.h"
#include "tpl/linear.h"

namespace {

using namespace tpl;

Tensor random_tensor(std::int64_t rows, std::int64_t cols, float stddev, unsigned seed) {
  Tensor t(DType::kBF16, rows, cols);
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, stddev);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) set_f32(t, r, c, dist(gen));
  return t;
}

// Median over `reps` calls of fn, the slowest rank's time for each call.
template <typename F>
double time_ms(Communicator& comm, int reps, F&& fn) {
  std::vector<double> v;
  for (int i = 0; i < reps; ++i) {
    comm.barrier();
    const double t0 = MPI_Wtime();
    fn();
    double dt = MPI_Wtime() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    v.push_back(dt * 1e3);
  }
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

enum class Mode { kMatmulAllReduce, kGemmReduceScatter, kAllGatherGemm };

void run(benchmark::State& state, Communicator& world, Mode mode) {
  const bool fc1 = mode != Mode::kMatmulAllReduce;
  const bool column = mode == Mode::kAllGatherGemm;
  const std::int64_t m = state.range(0), hidden = 4096;
  Config cfg;
  cfg.layout = {1, 1, world.size()};
  cfg.flashcomm1 = fc1;
  cfg.flashcomm1_threshold = 0;
  cfg.matmul_allreduce = !fc1;
  const Features f = Features::derive(cfg, {});
  ProcessGroups groups(world, cfg.layout, group_sizes(cfg, f));
  Selector sel(cfg, {});
  CommWorker worker;
  OpEnv plain{cfg, f, groups};
  OpEnv fused{cfg, f, groups, nullptr, &worker};
  LayerSpec s{column ? "model.layers.0.self_attn.qkv_proj" : "model.layers.0.self_attn.o_proj",
              column ? LayerKind::kColumn : LayerKind::kRow, hidden, hidden};
  s.dtype = DType::kBF16;
  Tensor w = random_tensor(hidden, hidden, 1.f / 64, 1);
  LinearLayer l_plain(s, sel, plain, default_cpu_gemm_backend(), w, TensorView());
  LinearLayer l_fused(s, sel, fused, default_cpu_gemm_backend(), w, TensorView());
  const ForwardContext ctx = ForwardContext::make(cfg, f, {}, m);
  const int n = world.size();
  const std::int64_t k_local = column ? hidden : hidden / n;
  const std::int64_t n_local = column ? hidden / n : hidden;
  const std::int64_t padded = m + ctx.pad_size;
  // Row paths take all tokens and a feature shard; the column path takes a token shard.
  Tensor x = random_tensor(column ? padded / n : padded, k_local, 1.f, 2 + world.rank());
  TensorView xin = column ? x.view() : x.view().row_slice(0, m);
  // The pieces: the local GEMM on all tokens, and the collective alone.
  GemmDesc desc{k_local, n_local, DType::kBF16, DType::kBF16, DType::kBF16};
  auto gemm = make_gemm(default_cpu_gemm_backend(), desc, l_plain.local_weight(), TensorView());
  Tensor x_all = random_tensor(padded, k_local, 1.f, 9);
  Tensor y(DType::kBF16, padded, n_local);
  Tensor rs_out(DType::kBF16, padded / n, n_local);
  const int reps = m >= 8192 ? 3 : m >= 2048 ? 5 : 15;
  auto gemm_only = [&] { gemm->run(x_all, y, false); };
  auto comm_only = [&] {
    if (column)
      world.all_gather(x, x_all, 0);
    else if (fc1)
      world.reduce_scatter(y, rs_out);
    else
      world.all_reduce(y);
  };
  auto unfused = [&] { l_plain.forward(xin, ctx); };
  auto fused_call = [&] { l_fused.forward(xin, ctx); };
  unfused();  // warm-up: JIT, page faults
  fused_call();
  gemm_only();
  comm_only();
  double g = 0, c = 0, u = 0, fz = 0;
  for (auto _ : state) {
    g = time_ms(world, reps, gemm_only);
    c = time_ms(world, reps, comm_only);
    u = time_ms(world, reps, unfused);
    fz = time_ms(world, reps, fused_call);
    state.SetIterationTime(fz / 1e3);
  }
  state.counters["gemm_ms"] = g;
  state.counters["comm_ms"] = c;
  state.counters["unfused_ms"] = u;
  state.counters["fused_ms"] = fz;
  state.counters["fused/unfused"] = fz / u;
  state.counters["overlap_eff"] = (g + c - fz) / std::min(g, c);
}

class NullReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  std::unique_ptr<Communicator> world = session.world();
  benchmark::Initialize(&argc, argv);
  const std::pair<const char*, Mode> modes[] = {{"matmul-allreduce", Mode::kMatmulAllReduce},
                                                {"fc1-mmrs", Mode::kGemmReduceScatter},
                                                {"fc1-agmm", Mode::kAllGatherGemm}};
  for (const auto& [name, mode] : modes)
    for (std::int64_t m : {16, 256, 2048, 8192})
      benchmark::RegisterBenchmark(
          name, [&world, mode = mode](benchmark::State& st) { run(st, *world, mode); })
          ->Arg(m)
          ->Iterations(1)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
  NullReporter null;
  if (world->rank() == 0)
    benchmark::RunSpecifiedBenchmarks();
  else
    benchmark::RunSpecifiedBenchmarks(&null);
  benchmark::Shutdown();
  world.reset();
  return 0;
}

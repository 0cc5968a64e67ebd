// oneDNN GEMM throughput: y[M, N] = x[M, K] * W[N, K]^T, K = N = 4096, one thread.
//
// Counter GFLOP/s = 2*M*N*K per iteration over the thread's CPU time: the machine is shared
// (2 vCPUs, other builds running), and CPU time of the single compute thread is the figure
// that is immune to being descheduled; on a quiet machine it equals wall time (also printed). The
// Gemm (and its one-time weight reorder) is created outside the timed loop, and one untimed run
// JIT-compiles and warms the primitive for this M. At M = 16 the f32 weight (64 MiB) does not fit
// the 32 MiB L3, so decode numbers are memory-bound; bf16 weights (32 MiB) nearly fit.
//
//   OMP_NUM_THREADS=1 ./build/bench/tpl_gemm_bench
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdint>
#include <random>
#include <vector>

#include "gemm/onednn_gemm.h"
#include "tpl/gemm.h"
#include "tpl/tensor.h"

namespace {

constexpr std::int64_t kK = 4096, kN = 4096;

tpl::Tensor random_tensor(std::int64_t rows, std::int64_t cols, tpl::DType dtype,
                          std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = dist(gen);
  return tpl::Tensor::from_f32(v, rows, cols, dtype);
}

void BM_OneDnnGemm(benchmark::State& state, tpl::DType act, tpl::DType out) {
  omp_set_num_threads(1);
  const std::int64_t m = state.range(0);
  const tpl::GemmDesc desc{kK, kN, act, act, out};
  const tpl::Tensor w = random_tensor(kN, kK, act, 1);
  const tpl::Tensor x = random_tensor(m, kK, act, 2);
  tpl::Tensor y(out, m, kN);
  auto gemm = tpl::make_onednn_gemm(desc, w, tpl::TensorView());
  gemm->run(x, y, false);  // warm-up: primitive creation and JIT
  for (auto _ : state) {
    gemm->run(x, y, false);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2e-9 * static_cast<double>(m * kN * kK) * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
  state.counters["threads"] = omp_get_max_threads();
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgName("M")->Arg(16)->Arg(256)->Arg(2048)->Unit(benchmark::kMillisecond);
  b->MinTime(1.0);
}

BENCHMARK_CAPTURE(BM_OneDnnGemm, f32, tpl::DType::kF32, tpl::DType::kF32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_OneDnnGemm, bf16, tpl::DType::kBF16, tpl::DType::kBF16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_OneDnnGemm, bf16_to_f32, tpl::DType::kBF16, tpl::DType::kF32)->Apply(shapes);

}  // namespace

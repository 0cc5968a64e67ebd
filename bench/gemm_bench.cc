// oneDNN GEMM throughput: y[M, N] = x[M, K] * W[N, K]^T, K = N = 4096, one thread, for
// f32 x f32 -> f32, bf16 x bf16 -> bf16 / f32 and int8 x int8 -> int32 (the W8A8 path: s8 x s8
// -> s32, no attributes; the dequantization epilogue is not timed here).
//
// Counter GOP/s = 2*M*N*K per iteration (a multiply and an add per MAC, whatever the dtype, so
// float rows are GFLOP/s) over the thread's CPU time: the machine is shared (2 vCPUs, other
// builds running), and CPU time of the single compute thread is the figure that is immune to
// being descheduled; on a quiet machine it equals wall time (also printed). The Gemm (and its
// one-time weight reorder) is created outside the timed loop, and one untimed run per weight
// JIT-compiles and warms the primitive for this M.
//
// Decode-sized M (<= 64) is memory-bound and repeating one weight would measure the L3 for any
// weight that fits it (int8: 16 MiB, bf16: 32 MiB against a 32 MiB L3). So for those M the
// benchmark rotates through enough distinct weights (each its own Gemm) to stream at least
// 64 MiB, twice the L3, per round: f32 1 weight, bf16 2, int8 4. Counter "weights" says how many.
//
//   OMP_NUM_THREADS=1 ./build/bench/tpl_gemm_bench
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "gemm/onednn_gemm.h"
#include "tpl/gemm.h"
#include "tpl/tensor.h"

namespace {

constexpr std::int64_t kK = 4096, kN = 4096;
constexpr std::int64_t kMaxDecodeM = 64;           // rotate weights up to this M
constexpr std::int64_t kRotateBytes = 64ll << 20;  // weight bytes streamed per round

// N(0, 1) values for float dtypes; uniform over the full range [-128, 127] for int8.
tpl::Tensor random_tensor(std::int64_t rows, std::int64_t cols, tpl::DType dtype,
                          std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  if (dtype == tpl::DType::kI8) {
    tpl::Tensor t(dtype, rows, cols);
    auto* p = t.ptr<std::uint8_t>();
    for (std::int64_t i = 0; i < t.numel(); i += 8) {
      const std::uint64_t r = gen();
      for (std::int64_t b = 0; b < 8 && i + b < t.numel(); ++b) p[i + b] = (r >> (8 * b)) & 0xff;
    }
    return t;
  }
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = dist(gen);
  return tpl::Tensor::from_f32(v, rows, cols, dtype);
}

void BM_OneDnnGemm(benchmark::State& state, tpl::DType act, tpl::DType out) {
  omp_set_num_threads(1);
  const std::int64_t m = state.range(0);
  const tpl::GemmDesc desc{kK, kN, act, act, out};
  const std::int64_t weight_bytes = kN * kK * static_cast<std::int64_t>(tpl::dtype_size(act));
  const std::int64_t n_weights =
      m <= kMaxDecodeM ? std::max<std::int64_t>(1, kRotateBytes / weight_bytes) : 1;
  std::vector<std::unique_ptr<tpl::Gemm>> gemms;
  for (std::int64_t i = 0; i < n_weights; ++i) {
    // The Gemm keeps its own reordered copy; the source weight is freed right away.
    const tpl::Tensor w = random_tensor(kN, kK, act, 1 + i);
    gemms.push_back(tpl::make_onednn_gemm(desc, w, tpl::TensorView()));
  }
  const tpl::Tensor x = random_tensor(m, kK, act, 1000);
  tpl::Tensor y(out, m, kN);
  for (auto& g : gemms) g->run(x, y, false);  // warm-up: primitive creation and JIT
  std::size_t next = 0;
  for (auto _ : state) {
    gemms[next]->run(x, y, false);
    next = next + 1 == gemms.size() ? 0 : next + 1;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GOP/s"] = benchmark::Counter(
      2e-9 * static_cast<double>(m * kN * kK) * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
  state.counters["threads"] = omp_get_max_threads();
  state.counters["weights"] = static_cast<double>(n_weights);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgName("M")->Arg(16)->Arg(256)->Arg(2048)->Unit(benchmark::kMillisecond);
  b->MinTime(1.0);
}

BENCHMARK_CAPTURE(BM_OneDnnGemm, f32, tpl::DType::kF32, tpl::DType::kF32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_OneDnnGemm, bf16, tpl::DType::kBF16, tpl::DType::kBF16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_OneDnnGemm, bf16_to_f32, tpl::DType::kBF16, tpl::DType::kF32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_OneDnnGemm, int8_to_i32, tpl::DType::kI8, tpl::DType::kI32)->Apply(shapes);

}  // namespace

// CPU GEMM throughput, every implementation side by side: y[M, N] = x[M, K] * W[N, K]^T,
// K = N = 4096, one thread, for f32, bf16 -> bf16 and int8 -> int32 (the W8A8 GEMM; its
// dequantization epilogue is not timed here). Each implementation of the CPU list runs under its
// own name (forced through the chooser, as TPL_GEMM would), plus "cpu": what the chooser picks
// by measurement. An implementation that cannot serve a dtype on this CPU (or under
// TPL_CPU_ISA) is reported as skipped with the chooser's reason, never aborts the run. The label
// of each row is the name of the GEMM that actually ran.
//
// Counter GOP/s = 2*M*N*K per iteration over the thread's CPU time (the machine is shared; CPU
// time of the single compute thread is immune to being descheduled). Warm-up runs first.
//
// Decode-sized M (<= 64) is memory-bound, and repeating one weight would measure the L3 for any
// weight that fits it. So for those M the benchmark rotates through enough distinct weights to
// stream twice the L3 (at least 64 MiB) per round; counter "weights" says how many, and "GB/s"
// is the weight bytes streamed per second (as the weights are stored: bf16_via_f32 streams its
// f32 copy). BM_StreamRead measures the single-core read bandwidth those compare against.
//
//   OMP_NUM_THREADS=1 ./build/bench/tpl_gemm_bench
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tpl/cpu_gemm.h"
#include "tpl/error.h"
#include "tpl/gemm.h"
#include "tpl/tensor.h"

namespace {

constexpr std::int64_t kK = 4096, kN = 4096;
constexpr std::int64_t kMaxDecodeM = 64;  // rotate weights up to this M

// The L3 as cpuid reports it (glibc's sysconf), 32 MiB where it says nothing. A VM may report
// its host's whole L3 (480 MiB on a 2-vCPU Xeon slice): a fixed 64 MiB rotation fitted in it
// and measured the L3, not memory.
std::int64_t l3_bytes() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return l3 > 0 ? l3 : 32ll << 20;
}

// Weight bytes streamed per round of the decode rows: twice the L3, at least 64 MiB.
std::int64_t rotate_bytes() {
  return std::max<std::int64_t>(64ll << 20, 2 * l3_bytes());
}

// N(0, 1) values for float dtypes; uniform int8 (activations -128..127, weights -127..127).
tpl::Tensor random_tensor(std::int64_t rows, std::int64_t cols, tpl::DType dtype, int lo,
                          std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  if (dtype == tpl::DType::kI8) {
    tpl::Tensor t(dtype, rows, cols);
    std::uniform_int_distribution<int> dist(lo, 127);
    auto* p = t.ptr<std::int8_t>();
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<std::int8_t>(dist(gen));
    return t;
  }
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = dist(gen);
  return tpl::Tensor::from_f32(v, rows, cols, dtype);
}

std::unique_ptr<tpl::CpuGemmChooser> chooser_for(const std::string& impl) {
  tpl::CpuGemmOptions o = tpl::CpuGemmOptions::from_env();
  o.threads = 1;
  if (impl != "cpu") {
    o.measure = false;
    o.force = {impl};
  }
  return std::make_unique<tpl::CpuGemmChooser>(tpl::detect_cpu(), o);
}

void BM_Gemm(benchmark::State& state, std::string impl, tpl::GemmDesc desc) {
  omp_set_num_threads(1);
  const std::int64_t m = state.range(0);
  auto chooser = chooser_for(impl);
  if (impl != "cpu") {
    for (const auto& c : chooser->candidates(desc))
      if (c.name == impl && !c.why_not.empty()) {
        state.SkipWithError(("skipped: " + c.why_not).c_str());
        return;
      }
  }
  const std::int64_t weight_bytes =
      kN * kK * static_cast<std::int64_t>(tpl::dtype_size(desc.weight));
  const std::int64_t n_weights =
      m <= kMaxDecodeM ? std::max<std::int64_t>(1, rotate_bytes() / weight_bytes) : 1;
  std::vector<std::unique_ptr<tpl::Gemm>> gemms;
  try {
    for (std::int64_t i = 0; i < n_weights; ++i) {
      // The Gemm keeps its own copy; the source weight is freed right away.
      const tpl::Tensor w = random_tensor(kN, kK, desc.weight, -127, 1 + i);
      gemms.push_back(chooser->make(desc, w, tpl::TensorView()));
    }
  } catch (const tpl::Error& e) {
    state.SkipWithError((std::string("skipped: ") + e.what()).c_str());
    return;
  }
  const tpl::Tensor x = random_tensor(m, kK, desc.act, -128, 1000);
  tpl::Tensor y(desc.out, m, kN);
  for (auto& g : gemms) g->run(x, y, false);  // warm-up: plans, JIT, first touch
  std::size_t next = 0;
  for (auto _ : state) {
    gemms[next]->run(x, y, false);
    next = next + 1 == gemms.size() ? 0 : next + 1;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(gemms.front()->name());
  const double iters = static_cast<double>(state.iterations());
  state.counters["GOP/s"] = benchmark::Counter(2e-9 * static_cast<double>(m * kN * kK) * iters,
                                               benchmark::Counter::kIsRate);
  // Bytes of weight read per run, as held (bf16_via_f32 holds f32, 4 bytes per weight).
  const bool widened = gemms.front()->name().rfind("bf16_via_f32", 0) == 0;
  const double held_bytes =
      static_cast<double>(kN * kK) * (widened ? 4.0 : double(weight_bytes) / double(kN * kK));
  state.counters["GB/s"] =
      benchmark::Counter(1e-9 * held_bytes * iters, benchmark::Counter::kIsRate);
  state.counters["weights"] = static_cast<double>(n_weights);
}

// Sums n 64-bit words read as 4 concurrent streams (one per quarter): a single stream, or
// baseline SSE2 code, leaves a third of this VM's read bandwidth unused (measured 8.9 vs
// 12.5 GB/s on Zen3).
__attribute__((target("avx2"))) std::uint64_t sum_avx2(const std::uint64_t* p, std::size_t n) {
  const std::size_t q = n / 4;
  __m256i acc[4] = {};
  for (std::size_t i = 0; i < q; i += 4)
    for (int s = 0; s < 4; ++s)
      acc[s] = _mm256_add_epi64(
          acc[s], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + s * q + i)));
  alignas(32) std::uint64_t lanes[4];
  std::uint64_t total = 0;
  for (auto& a : acc) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), a);
    total += lanes[0] + lanes[1] + lanes[2] + lanes[3];
  }
  return total;
}

std::uint64_t sum_plain(const std::uint64_t* p, std::size_t n) {
  std::uint64_t acc[8] = {};
  for (std::size_t i = 0; i < n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += p[i + j];
  std::uint64_t total = 0;
  for (auto a : acc) total += a;
  return total;
}

// Single-core read bandwidth: sums a buffer of 4x the L3, at least 256 MiB. For reference,
// OpenBLAS's sgemv streamed f32 weights at 15 GB/s on a Zen3 VM, so this is a lower bound.
void BM_StreamRead(benchmark::State& state) {
  const std::size_t bytes =
      static_cast<std::size_t>(std::max<std::int64_t>(256ll << 20, 4 * l3_bytes()));
  const std::size_t n = bytes / sizeof(std::uint64_t);
  std::vector<std::uint64_t> buf(n);
  for (std::size_t i = 0; i < n; ++i) buf[i] = i;
  const bool avx2 = __builtin_cpu_supports("avx2");
  std::uint64_t total = 0;
  for (auto _ : state) {
    total += avx2 ? sum_avx2(buf.data(), n) : sum_plain(buf.data(), n);
    benchmark::DoNotOptimize(total);
  }
  state.SetLabel(std::string(avx2 ? "avx2, 4 streams" : "sse2") + ", " +
                 std::to_string(bytes >> 20) + " MiB, L3 " + std::to_string(l3_bytes() >> 20) +
                 " MiB");
  state.counters["GB/s"] =
      benchmark::Counter(1e-9 * double(n * sizeof(std::uint64_t)) * double(state.iterations()),
                         benchmark::Counter::kIsRate);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RegisterBenchmark("BM_StreamRead", BM_StreamRead)
      ->Unit(benchmark::kMillisecond)
      ->MinTime(1.0);
  struct Config {
    const char* name;
    tpl::GemmDesc desc;
  };
  const Config configs[] = {
      {"f32", {kK, kN, tpl::DType::kF32, tpl::DType::kF32, tpl::DType::kF32}},
      {"bf16", {kK, kN, tpl::DType::kBF16, tpl::DType::kBF16, tpl::DType::kBF16}},
      {"int8_to_i32", {kK, kN, tpl::DType::kI8, tpl::DType::kI8, tpl::DType::kI32}},
  };
  tpl::CpuGemmOptions o;
  tpl::CpuGemmChooser lister(tpl::detect_cpu(), o);
  for (const Config& c : configs) {
    std::vector<std::string> impls{"cpu"};
    for (const auto& cand : lister.candidates(c.desc))
      if (cand.name != "reference") impls.push_back(cand.name);  // the oracle: hours at 4096
    for (const std::string& impl : impls)
      benchmark::RegisterBenchmark(("BM_Gemm/" + std::string(c.name) + "/" + impl).c_str(),
                                   [impl, d = c.desc](benchmark::State& s) { BM_Gemm(s, impl, d); })
          ->ArgName("M")
          ->Arg(1)
          ->Arg(16)
          ->Arg(256)
          ->Arg(2048)
          ->Unit(benchmark::kMillisecond)
          ->MinTime(1.0);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// GPU GEMM throughput on the Qwen3-8B linear shapes: tplinear's cuBLASLt bf16 GEMM (TFLOP/s),
// the int8 GEMM alone and the full W8A8 pipeline (quantize + int8 GEMM + dequantize to bf16;
// TOPS = 2·M·k·n / time). Prints CSV: shape,M,k,n,bf16_tflops,int8_tops,w8a8_tops.
// Times are CUDA-event averages over enough iterations to last ~100 ms, after a warm-up.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "tpl/cuda.h"
#include "tpl/error.h"

namespace {

using namespace tpl;

// Non-zero data (all-zero operands would understate the GEMM's power draw).
Tensor random_bits(DType t, std::int64_t rows, std::int64_t cols, unsigned seed) {
  Tensor h(t, rows, cols);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-64, 64);
  for (std::int64_t i = 0; i < h.numel(); ++i) {
    if (t == DType::kI8)
      h.ptr<std::int8_t>()[i] = static_cast<std::int8_t>(d(rng));
    else
      h.ptr<std::uint16_t>()[i] = f32_to_bf16_bits(d(rng) / 64.f);
  }
  return h;
}

void check(cudaError_t st) {
  if (st != cudaSuccess) throw BackendError(cudaGetErrorString(st));
}

// Seconds per call of f.
double time_it(const std::function<void()>& f) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a));
  check(cudaEventCreate(&b));
  auto run = [&](int iters) {
    check(cudaEventRecord(a, nullptr));
    for (int i = 0; i < iters; ++i) f();
    check(cudaEventRecord(b, nullptr));
    check(cudaEventSynchronize(b));
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b));
    return ms / 1e3 / iters;
  };
  run(3);
  const double t = run(10);
  const int iters = static_cast<int>(std::clamp(0.1 / t, 10.0, 2000.0));
  const double s = run(iters);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return s;
}

}  // namespace

int main() {
  try {
    if (cuda::device_count() == 0) {
      std::fprintf(stderr, "tpl_gpu_bench: no CUDA device\n");
      return 1;
    }
    struct Shape {
      const char* name;
      std::int64_t k, n;
    };
    const Shape shapes[] = {{"qkv", 4096, 6144},
                            {"o_proj", 4096, 4096},
                            {"gate_up", 4096, 24576},
                            {"down", 12288, 4096}};
    std::printf("shape,M,k,n,bf16_tflops,int8_tops,w8a8_tops\n");
    for (const Shape& s : shapes) {
      auto bf16 = cuda::make_cublaslt_gemm({s.k, s.n, DType::kBF16, DType::kBF16, DType::kBF16},
                                           random_bits(DType::kBF16, s.n, s.k, 1), TensorView());
      auto i8 = cuda::make_cublaslt_gemm({s.k, s.n, DType::kI8, DType::kI8, DType::kI32},
                                         random_bits(DType::kI8, s.n, s.k, 2), TensorView());
      cuda::DeviceTensor qb = cuda::to_device(Tensor(DType::kI32, 1, s.n));
      cuda::DeviceTensor ds =
          cuda::to_device(Tensor::from_f32(std::vector<float>(s.n, 1e-3f), 1, s.n));
      for (std::int64_t m : {16, 512, 8192}) {
        cuda::DeviceTensor x = cuda::to_device(random_bits(DType::kBF16, m, s.k, 3));
        cuda::DeviceTensor q(DType::kI8, m, s.k), acc(DType::kI32, m, s.n), y(DType::kBF16, m, s.n);
        cuda::quantize(x, q, 0.05f, 0);
        const double ops = 2.0 * m * s.k * s.n;
        const double t_bf16 = time_it([&] { bf16->run(x, y, false); });
        const double t_i8 = time_it([&] { i8->run(q, acc, false); });
        const double t_w8a8 = time_it([&] {
          cuda::quantize(x, q, 0.05f, 0);
          i8->run(q, acc, false);
          cuda::w8a8_dequantize(acc, qb, ds, true, y);
        });
        std::printf("%s,%lld,%lld,%lld,%.1f,%.1f,%.1f\n", s.name, static_cast<long long>(m),
                    static_cast<long long>(s.k), static_cast<long long>(s.n), ops / t_bf16 / 1e12,
                    ops / t_i8 / 1e12, ops / t_w8a8 / 1e12);
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tpl_gpu_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

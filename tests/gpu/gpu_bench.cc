// GPU throughput and op overhead on the Qwen3-8B linear shapes (docs/performance.md):
//  * bf16: tplinear's cuBLASLt GEMM, TFLOP/s = 2·M·k·n / time;
//  * int8: the int8 GEMM alone, and the full W8A8 pipeline (quantize + int8 GEMM + dequantize to
//    bf16), TOPS likewise;
//  * op overhead: a LinearLayer (StandardColumn/StandardRow at world size 1, CUDA runtime, NCCL
//    group) against the bare GEMM it runs, both timed with CUDA events on the runtime's stream
//    (gemm_us, op_us) and on the host (enqueue cost per call, host_gemm_us, host_op_us).
// Prints CSV: shape,M,k,n,bf16_tflops,int8_tops,w8a8_tops,gemm_us,op_us,host_gemm_us,host_op_us.
// Times average over enough calls to last ~100 ms, after a warm-up; data is random, not zeros.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "tpl/backends.h"
#include "tpl/cuda.h"
#include "tpl/error.h"
#include "tpl/linear.h"

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

struct Timing {
  double device_s;  // per call, CUDA events on the stream
  double host_s;    // per call, host time to enqueue
};

Timing time_it(cudaStream_t stream, const std::function<void()>& f) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a));
  check(cudaEventCreate(&b));
  auto run = [&](int iters) {
    check(cudaEventRecord(a, stream));
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) f();
    const auto t1 = std::chrono::steady_clock::now();
    check(cudaEventRecord(b, stream));
    check(cudaEventSynchronize(b));
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b));
    return Timing{ms / 1e3 / iters, std::chrono::duration<double>(t1 - t0).count() / iters};
  };
  run(3);
  const double t = run(10).device_s;
  const int iters = static_cast<int>(std::clamp(0.1 / t, 10.0, 5000.0));
  const Timing s = run(iters);
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
    auto rt = make_runtime(Device::kCuda);
    const cudaStream_t stream = static_cast<cudaStream_t>(cuda::as_cuda(*rt).stream().handle());
    LocalCommunicator boot;
    auto world = make_device_communicator(boot, *rt);
    Config config;
    config.layout.tp = 1;
    const ModelInfo model;
    const Features features = Features::derive(config, model);
    ProcessGroups groups(*world, config.layout, group_sizes(config, features));
    OpEnv env{config, features, groups};
    env.runtime = rt.get();
    Selector selector(config, model);

    struct Shape {
      const char* name;
      const char* prefix;
      LayerKind kind;
      std::int64_t k, n;
    };
    const Shape shapes[] = {
        {"qkv", "model.layers.0.self_attn.q_proj", LayerKind::kColumn, 4096, 6144},
        {"o_proj", "model.layers.0.self_attn.o_proj", LayerKind::kRow, 4096, 4096},
        {"gate_up", "model.layers.0.mlp.up_proj", LayerKind::kColumn, 4096, 24576},
        {"down", "model.layers.0.mlp.down_proj", LayerKind::kRow, 12288, 4096}};
    std::printf(
        "shape,M,k,n,bf16_tflops,int8_tops,w8a8_tops,gemm_us,op_us,host_gemm_us,host_op_us\n");
    for (const Shape& s : shapes) {
      Tensor wb = random_bits(DType::kBF16, s.n, s.k, 1);
      auto bf16 = make_gemm(GemmBackend::kCublasLt,
                            {s.k, s.n, DType::kBF16, DType::kBF16, DType::kBF16}, wb, {}, rt.get());
      auto i8 = make_gemm(GemmBackend::kCublasLt, {s.k, s.n, DType::kI8, DType::kI8, DType::kI32},
                          random_bits(DType::kI8, s.n, s.k, 2), {}, rt.get());
      LayerSpec spec;
      spec.prefix = s.prefix;
      spec.kind = s.kind;
      spec.in_features = s.k;
      spec.out_features = s.n;
      spec.dtype = DType::kBF16;
      LinearLayer layer(spec, selector, env, GemmBackend::kCublasLt, wb, TensorView());
      Tensor qb = rt->zeros(DType::kI32, 1, s.n);
      Tensor ds = rt->copy_of(Tensor::from_f32(std::vector<float>(s.n, 1e-3f), 1, s.n));
      for (std::int64_t m : {16, 512, 8192}) {
        Tensor x = rt->copy_of(random_bits(DType::kBF16, m, s.k, 3));
        Tensor q = rt->empty(DType::kI8, m, s.k), acc = rt->empty(DType::kI32, m, s.n),
               y = rt->empty(DType::kBF16, m, s.n);
        const ForwardContext ctx = ForwardContext::make(config, features, model, m);
        const double ops = 2.0 * m * s.k * s.n;
        const Timing t_bf16 = time_it(stream, [&] { bf16->run(x, y, false); });
        const Timing t_i8 = time_it(stream, [&] { i8->run(q, acc, false); });
        const Timing t_w8a8 = time_it(stream, [&] {
          rt->quantize(x, q, 0.05f, 0);
          i8->run(q, acc, false);
          rt->w8a8_dequantize(acc, qb, ds, true, y);
        });
        const Timing t_op = time_it(stream, [&] { (void)layer.forward(x, ctx); });
        std::printf("%s,%lld,%lld,%lld,%.1f,%.1f,%.1f,%.2f,%.2f,%.2f,%.2f\n", s.name,
                    static_cast<long long>(m), static_cast<long long>(s.k),
                    static_cast<long long>(s.n), ops / t_bf16.device_s / 1e12,
                    ops / t_i8.device_s / 1e12, ops / t_w8a8.device_s / 1e12, t_bf16.device_s * 1e6,
                    t_op.device_s * 1e6, t_bf16.host_s * 1e6, t_op.host_s * 1e6);
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tpl_gpu_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

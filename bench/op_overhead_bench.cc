// What a LinearLayer costs on top of its GEMM (host runtime, one process, world size 1): the
// op's forward (selection done at construction; per call: output allocation through the runtime,
// the op's steps, the GEMM) against the bare Gemm::run into a preallocated output, on the same
// weight and input. bf16, K = N = 1024, the build's CPU GEMM list (its label names the
// implementation), one thread.
// The difference at small M is the wrapper overhead that docs/performance.md reports; the GPU
// version of this comparison is in tests/gpu/gpu_bench.cc.
//
//   OMP_NUM_THREADS=1 ./build/bench/tpl_op_overhead_bench
#include <benchmark/benchmark.h>

#include <memory>
#include <random>

#include "tpl/backends.h"
#include "tpl/linear.h"

namespace {

using namespace tpl;

constexpr std::int64_t kK = 1024, kN = 1024;

Tensor random_bf16(std::int64_t rows, std::int64_t cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  Tensor t(DType::kBF16, rows, cols);
  for (std::int64_t i = 0; i < t.numel(); ++i)
    t.ptr<std::uint16_t>()[i] = f32_to_bf16_bits(dist(gen) * 0.03f);
  return t;
}

// One column layer at world size 1 and the bare GEMM over the same weight.
struct Fixture {
  Fixture()
      : features(Features::derive(config, model)),
        groups(world, config.layout, group_sizes(config, features)),
        env{config, features, groups},
        selector(config, model),
        weight(random_bf16(kN, kK, 1)) {
    LayerSpec s;
    s.prefix = "model.layers.0.mlp.up_proj";
    s.kind = LayerKind::kColumn;
    s.in_features = kK;
    s.out_features = kN;
    s.dtype = DType::kBF16;
    layer = std::make_unique<LinearLayer>(s, selector, env, default_cpu_gemm_backend(), weight,
                                          TensorView());
    gemm = make_gemm(default_cpu_gemm_backend(), {kK, kN, DType::kBF16, DType::kBF16, DType::kBF16},
                     weight, TensorView());
  }
  Config config;
  ModelInfo model;
  Features features;
  LocalCommunicator world;
  ProcessGroups groups;
  OpEnv env;
  Selector selector;
  Tensor weight;
  std::unique_ptr<LinearLayer> layer;
  std::unique_ptr<Gemm> gemm;
};

Fixture& fixture() {
  static Fixture f;  // built once per process, outside the timed loops
  return f;
}

void BM_BareGemm(benchmark::State& st) {
  Fixture& f = fixture();
  const std::int64_t m = st.range(0);
  Tensor x = random_bf16(m, kK, 2), y(DType::kBF16, m, kN);
  f.gemm->run(x, y, false);  // warm-up: JIT for this M
  for (auto _ : st) {
    f.gemm->run(x, y, false);
    benchmark::DoNotOptimize(y.data());
  }
  st.SetLabel(f.gemm->name());  // the implementation the CPU list chose (docs/gemm.md)
}

void BM_LayerForward(benchmark::State& st) {
  Fixture& f = fixture();
  const std::int64_t m = st.range(0);
  Tensor x = random_bf16(m, kK, 2);
  const ForwardContext ctx = ForwardContext::make(f.config, f.features, f.model, m);
  (void)f.layer->forward(x, ctx);
  for (auto _ : st) {
    LinearOutput out = f.layer->forward(x, ctx);
    benchmark::DoNotOptimize(out.output.data());
  }
  st.SetLabel(f.gemm->name());  // same list order as the layer's (no chooser: no timing)
}

BENCHMARK(BM_BareGemm)->Arg(1)->Arg(16)->Arg(256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LayerForward)->Arg(1)->Arg(16)->Arg(256)->Unit(benchmark::kMicrosecond);

}  // namespace

// The ops on GPU tensors at world size 1 (one GPU per process: NCCL refuses two ranks on one
// device, so the multi-rank logic is proven by the CPU tests of the same op code).
//
// Each case builds a layer twice from the same weights: on the host (host runtime, CPU GEMM,
// local groups) and on the GPU (CUDA runtime, cuBLASLt, NCCL groups bootstrapped over a
// LocalCommunicator). The host half runs everywhere, so CI checks every case's config and
// selection; the device half skips without a GPU.
//
// Bounds: small-integer f32 data is exact in every GEMM, so float outputs must equal the
// reference bit for bit; random bf16 data uses the CPU op tests' bound |err| <= 0.03 + 0.02·|y|;
// W8A8 (quantize, int8 GEMM, dequantize) must equal the host W8A8 layer bit for bit.
//
// CudaGraph: a decoder MLP under MLP-TP (gate_up, down) runs once to warm the pool, then a second
// eager forward must not allocate device memory, and a forward captured in a CUDA graph must
// reproduce the reference after the input is changed in place.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "harness.h"
#include "tpl/backends.h"
#include "tpl/cuda.h"
#include "tpl/error.h"
#include "tpl/linear.h"
#include "tpl/quant.h"

namespace tpl {
namespace {

using testing::compare;

struct Layer {
  const char* name;
  LayerKind kind;
  std::int64_t in, out;
};
constexpr std::int64_t kHidden = 128, kInter = 192;
const Layer kLayers[] = {
    {"model.layers.0.self_attn.qkv_proj", LayerKind::kQkv, kHidden, 256},
    {"model.layers.0.self_attn.o_proj", LayerKind::kRow, kHidden, kHidden},
    {"model.layers.0.mlp.gate_up_proj", LayerKind::kMergedColumn, kHidden, 2 * kInter},
    {"model.layers.0.mlp.down_proj", LayerKind::kRow, kInter, kHidden},
};

LayerSpec spec_of(const Layer& l, DType dtype, bool bias) {
  LayerSpec s;
  s.prefix = l.name;
  s.kind = l.kind;
  s.in_features = l.in;
  s.out_features = l.out;
  if (l.kind == LayerKind::kQkv) s.qkv = {4, 2, 32};
  if (l.kind == LayerKind::kMergedColumn) s.output_sizes = {kInter, kInter};
  if (std::string(l.name).find("o_proj") != std::string::npos) s.in_unit = 32;
  s.dtype = dtype;
  s.bias = bias;
  return s;
}

Config config_named(const std::string& name) {
  Config c;
  c.layout.tp = 1;
  if (name == "matmul_allreduce") c.matmul_allreduce = true;
  if (name == "mlp_tp") c.mlp_tp = 1;
  if (name == "oproj_tp") {
    c.oproj_tp = 1;
    c.deployment = Deployment::kDecode;  // O-proj TP runs on decode nodes only
  }
  c.validate();
  return c;
}

// Everything one side (host or GPU) of a case needs.
struct Side {
  Side(const Config& c, const ModelInfo& m, Runtime& rt, Communicator& world)
      : features(Features::derive(c, m)),
        groups(world, c.layout, group_sizes(c, features)),
        env{c, features, groups} {
    env.runtime = &rt;
  }
  Features features;
  ProcessGroups groups;
  OpEnv env;
};

class GpuOps : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() > 0) {
      rt_ = make_runtime(Device::kCuda);
      nccl_world_ = make_device_communicator(boot_, *rt_);
    }
  }
  bool gpu() const { return rt_ != nullptr; }

  LocalCommunicator boot_, host_world_;
  std::unique_ptr<Runtime> rt_;
  std::unique_ptr<Communicator> nccl_world_;
};

TEST_F(GpuOps, EveryConfigAndLayerMatchesTheHost) {
  std::set<std::string> kinds;
  int device_cases = 0;
  for (const std::string cfg : {"default", "matmul_allreduce", "mlp_tp", "oproj_tp"}) {
    const Config config = config_named(cfg);
    const ModelInfo model;
    Side host(config, model, host_runtime(), host_world_);
    std::unique_ptr<Side> dev;
    if (gpu()) dev = std::make_unique<Side>(config, model, *rt_, *nccl_world_);
    Selector selector(config, model);
    for (const Layer& l : kLayers) {
      for (const int mode : {0, 1, 2}) {  // int f32 + bias, normal bf16 + bias, W8A8 bf16
        const bool w8a8 = mode == 2;
        const DType dtype = mode == 0 ? DType::kF32 : DType::kBF16;
        const LayerSpec spec = spec_of(l, dtype, !w8a8);
        const float ws = 1.f / std::sqrt(static_cast<float>(l.in));
        Tensor w = mode == 0 ? testing::random_ints(l.out, l.in, 2, 10, dtype)
                             : testing::random_normal(l.out, l.in, ws, 10, dtype);
        Tensor b = mode == 0 ? testing::random_ints(1, l.out, 2, 11, dtype)
                             : testing::random_normal(1, l.out, 1.f, 11, dtype);
        W8A8Params qp;
        if (w8a8)
          qp = make_w8a8_params(w, b,
                                calibrate_activation(testing::random_normal(64, l.in, 1.f, 12)));
        auto make = [&](Side& side, GemmBackend backend) {
          return w8a8 ? std::make_unique<LinearLayer>(spec, selector, side.env, backend, qp)
                      : std::make_unique<LinearLayer>(spec, selector, side.env, backend, w, b);
        };
        auto host_layer = make(host, default_cpu_gemm_backend());
        std::unique_ptr<LinearLayer> dev_layer;
        if (dev) dev_layer = make(*dev, GemmBackend::kCublasLt);
        for (const std::int64_t n : {1, 7, 1001}) {
          const std::string what = cfg + " " + l.name + " " +
                                   op_kind_name(host_layer->choice().kind) +
                                   " mode=" + std::to_string(mode) + " tokens=" + std::to_string(n);
          SCOPED_TRACE(what);
          kinds.insert(op_kind_name(host_layer->choice().kind));
          const ForwardContext ctx = ForwardContext::make(config, host.features, model, n);
          Tensor x = mode == 0 ? testing::random_ints(n, l.in, 2, 13, dtype)
                               : testing::random_normal(n, l.in, 1.f, 13, dtype);
          Tensor y_host = Tensor::copy_of(host_layer->forward(x, ctx).output);
          // The host side against y = x·Wᵀ + b, so a device match means a correct result.
          if (!w8a8) {
            const GemmDesc rd{l.in, l.out, dtype, dtype, DType::kF32};
            Tensor ref(DType::kF32, n, l.out);
            make_reference_gemm(rd, w, b)->run(x, ref, true);
            const double atol = mode == 0 ? 0 : 0.03, rtol = mode == 0 ? 0 : 0.02;
            ASSERT_EQ(compare(y_host, ref, atol, rtol, "host"), "");
          }
          if (!dev_layer) continue;
          Tensor dx = rt_->copy_of(x);
          LinearOutput out = dev_layer->forward(dx, ctx);
          EXPECT_EQ(out.output.device(), Device::kCuda);
          Tensor y_dev = rt_->to_host(out.output);
          const bool exact = mode != 1;
          EXPECT_EQ(compare(y_dev, y_host, exact ? 0 : 0.03, exact ? 0 : 0.02, "device"), "");
          ++device_cases;
        }
      }
    }
  }
  // The configs reach the ops a world-size-1 layout can select.
  const std::set<std::string> reachable{"StandardColumn", "StandardRow", "MatmulAllreduceRow",
                                        "MLPColumn",      "MLPRow",      "OProjRow"};
  EXPECT_EQ(kinds, reachable) << "the ops a world-size-1 layout can select";
  if (!gpu()) GTEST_SKIP() << "no CUDA device: host half checked, " << kinds.size() << " op kinds";
  EXPECT_EQ(device_cases, 4 * 4 * 3 * 3);
}

TEST_F(GpuOps, CudaGraphReplaysAForwardWithoutAllocating) {
  if (!gpu()) GTEST_SKIP() << "no CUDA device";
  // MLP-TP: its ops run NCCL collectives (all-gather, reduce-scatter) even in a size-1 group,
  // so the capture records NCCL's stream joining the compute stream.
  const Config config = config_named("mlp_tp");
  const ModelInfo model;
  Side dev(config, model, *rt_, *nccl_world_);
  Selector selector(config, model);
  const LayerSpec up = spec_of(kLayers[2], DType::kBF16, true);
  LayerSpec down = spec_of(kLayers[3], DType::kBF16, true);
  down.in_features = 2 * kInter;  // consumes gate_up's whole output in this test
  Tensor w1 = testing::random_normal(2 * kInter, kHidden, 0.09f, 20, DType::kBF16);
  Tensor b1 = testing::random_normal(1, 2 * kInter, 1.f, 21, DType::kBF16);
  Tensor w2 = testing::random_normal(kHidden, 2 * kInter, 0.05f, 22, DType::kBF16);
  Tensor b2 = testing::random_normal(1, kHidden, 1.f, 23, DType::kBF16);
  LinearLayer l1(up, selector, dev.env, GemmBackend::kCublasLt, w1, b1);
  LinearLayer l2(down, selector, dev.env, GemmBackend::kCublasLt, w2, b2);
  ASSERT_EQ(l1.choice().kind, OpKind::kMlpColumn);
  ASSERT_EQ(l2.choice().kind, OpKind::kMlpRow);
  const std::int64_t n = 64;
  const ForwardContext ctx = ForwardContext::make(config, dev.features, model, n);
  Tensor x = rt_->copy_of(testing::random_normal(n, kHidden, 1.f, 24, DType::kBF16));
  auto forward = [&] { return std::move(l2.forward(l1.forward(x, ctx).output, ctx).output); };

  // The reference for an input, through the same device layers run eagerly.
  auto eager = [&] { return rt_->to_host(forward()); };
  Tensor first = eager();  // warm-up: plans the GEMMs, fills the pool
  auto& cuda_rt = cuda::as_cuda(*rt_);
  const auto before = cuda_rt.pool_stats();
  Tensor second = eager();
  EXPECT_EQ(cuda_rt.pool_stats().device_allocations, before.device_allocations)
      << "an eager forward after warm-up allocated device memory";
  EXPECT_EQ(compare(second, first, 0, 0, "eager repeat"), "");

  Tensor y;
  cuda::Graph graph(cuda_rt, [&] { y = forward(); });
  EXPECT_GT(graph.num_nodes(), 0u);
  EXPECT_EQ(cuda_rt.pool_stats().device_allocations, before.device_allocations);
  for (std::uint64_t seed : {30u, 31u}) {
    Tensor fresh = testing::random_normal(n, kHidden, 1.f, seed, DType::kBF16);
    rt_->copy(fresh, x);  // in place: the graph reads x's address
    Tensor expected = eager();
    rt_->copy(fresh, x);
    graph.replay();
    EXPECT_EQ(compare(rt_->to_host(y), expected, 0, 0, "graph replay"), "") << seed;
  }
}

}  // namespace
}  // namespace tpl

// CUDA backend tests: cuBLASLt against the reference GEMM, the W8A8 kernels against the host
// quantization code, and the NCCL communicator at world size 1 (the only size a single-GPU
// machine supports), with its deadlines. Every test skips when there is no usable device.
//
// Bounds: relative L2 error against the double-precision reference on the same (already
// rounded) inputs: f32 1e-6 (no TF32), bf16/f16 -> f32 1e-5, bf16 -> bf16 1e-2 (one output
// rounding); int8 -> int32 and the W8A8 kernels are bit-exact.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>

#include "harness.h"
#include "tpl/backends.h"
#include "tpl/cuda.h"
#include "tpl/error.h"
#include "tpl/quant.h"
#include "tpl/watchdog.h"

namespace tpl {
namespace {

using testing::compare;
using testing::random_ints;
using testing::random_normal;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

double rel_l2(const TensorView& a, const TensorView& e) {
  double num = 0, den = 0;
  for (std::int64_t r = 0; r < e.rows(); ++r)
    for (std::int64_t c = 0; c < e.cols(); ++c) {
      const double d = get_f32(a, r, c) - get_f32(e, r, c);
      num += d * d;
      den += double(get_f32(e, r, c)) * get_f32(e, r, c);
    }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

struct Types {
  DType act, out;
};
using Param = std::tuple<Types, std::int64_t, std::int64_t>;  // types, M, k (n = k / 2 + 64)

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  const auto& [t, m, k] = info.param;
  return std::string(dtype_name(t.act)) + "_to_" + dtype_name(t.out) + "_M" + std::to_string(m) +
         "_k" + std::to_string(k);
}

class CublasLtVsReference : public ::testing::TestWithParam<Param> {};

TEST_P(CublasLtVsReference, Matches) {
  SKIP_WITHOUT_GPU();
  const auto [types, m, k] = GetParam();
  const std::int64_t n = k / 2 + 64;
  const bool i8 = types.act == DType::kI8;
  const GemmDesc desc{k, n, types.act, types.act, types.out};
  Tensor w = i8 ? random_ints(n, k, 127, 1, DType::kI8) : random_normal(n, k, 1.f, 1, desc.act);
  Tensor x = i8 ? random_ints(m, k, 127, 2, DType::kI8) : random_normal(m, k, 1.f, 2, desc.act);
  Tensor bias = i8 ? Tensor() : random_normal(1, n, 1.f, 3, DType::kF32);
  auto gemm = make_gemm(GemmBackend::kCublasLt, desc, w, bias);
  EXPECT_EQ(gemm->name(), "cublaslt");
  cuda::DeviceTensor dx = cuda::to_device(x);
  cuda::DeviceTensor dy(desc.out, m, n);
  for (bool with_bias : {false, true}) {
    if (with_bias && i8) continue;
    gemm->run(dx, dy, with_bias);
    Tensor y = cuda::to_host(dy);
    GemmDesc rd = desc;
    if (!i8) rd.out = DType::kF32;
    Tensor ref(rd.out, m, n);
    make_reference_gemm(rd, w, bias)->run(x, ref, with_bias);
    if (i8) {
      EXPECT_EQ(compare(y, ref, 0, 0, "int8"), "");
    } else {
      const double bound = desc.act == DType::kF32 ? 1e-6 : desc.out == DType::kF32 ? 1e-5 : 1e-2;
      EXPECT_LE(rel_l2(y, ref), bound) << "with_bias=" << with_bias;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CublasLtVsReference,
                         ::testing::Combine(::testing::Values(Types{DType::kF32, DType::kF32},
                                                              Types{DType::kBF16, DType::kBF16},
                                                              Types{DType::kBF16, DType::kF32},
                                                              Types{DType::kF16, DType::kF16},
                                                              Types{DType::kI8, DType::kI32}),
                                            ::testing::Values(1, 16, 257),
                                            ::testing::Values(64, 512)),
                         param_name);

TEST(CublasLt, RejectsHostActivations) {
  SKIP_WITHOUT_GPU();
  const GemmDesc desc{64, 64, DType::kF32, DType::kF32, DType::kF32};
  Tensor w(DType::kF32, 64, 64), x(DType::kF32, 4, 64), y(DType::kF32, 4, 64);
  auto gemm = cuda::make_cublaslt_gemm(desc, w, TensorView());
  EXPECT_THROW(gemm->run(x, y, false), InvalidArgument);
}

// Device quantize + int8 GEMM + dequantize epilogue == host quantize_into + w8a8_reference.
TEST(W8A8, DevicePipelineMatchesHostBitExactly) {
  SKIP_WITHOUT_GPU();
  const std::int64_t m = 37, k = 256, n = 192;
  Tensor wf = random_normal(n, k, 0.05f, 4);
  Tensor bias = random_normal(1, n, 0.1f, 5);
  Tensor x = random_normal(m, k, 1.f, 6, DType::kBF16);
  const ActivationQuant act = calibrate_activation(x);
  const W8A8Params p = make_w8a8_params(wf, bias, act);
  Tensor q_host = quantize(x, p.input_scale, p.input_offset);
  for (DType out : {DType::kBF16, DType::kF32}) {
    for (bool add : {true, false}) {
      Tensor ref(out, m, n);
      w8a8_reference(q_host, p, add, ref);

      cuda::DeviceTensor dx = cuda::to_device(x), dq(DType::kI8, m, k);
      cuda::quantize(dx, dq, p.input_scale, p.input_offset);
      EXPECT_EQ(compare(cuda::to_host(dq), q_host, 0, 0, "quantize"), "");
      auto gemm = cuda::make_cublaslt_gemm({k, n, DType::kI8, DType::kI8, DType::kI32}, p.weight,
                                           TensorView());
      cuda::DeviceTensor acc(DType::kI32, m, n), dy(out, m, n);
      gemm->run(dq, acc, false);
      cuda::DeviceTensor qb = cuda::to_device(p.quant_bias), ds = cuda::to_device(p.deq_scale);
      cuda::w8a8_dequantize(acc, qb, ds, add, dy);
      EXPECT_EQ(compare(cuda::to_host(dy), ref, 0, 0, "w8a8"), "") << dtype_name(out) << add;
    }
  }
}

TEST(Quantize, SaturatesAndRoundsHalfToEven) {
  SKIP_WITHOUT_GPU();
  Tensor x = Tensor::from_f32({0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 1000.f, -1000.f, 3.49f}, 1, 8);
  cuda::DeviceTensor dq(DType::kI8, 1, 8);
  cuda::quantize(cuda::to_device(x), dq, 1.f, 0);
  EXPECT_EQ(compare(cuda::to_host(dq), quantize(x, 1.f, 0), 0, 0, "quantize"), "");
}

// World size 1: all-reduce, broadcast are identities; reduce-scatter, all-gather (both dims),
// all-to-all are copies. Inputs are small integers, so every dtype is exact.
TEST(Nccl, SizeOneCollectivesAreCopies) {
  SKIP_WITHOUT_GPU();
  LocalCommunicator boot;
  auto rt = cuda::make_cuda_runtime();
  auto nccl = cuda::make_nccl_communicator(boot, *rt);
  EXPECT_TRUE(nccl->progresses_async());
  ASSERT_EQ(nccl->size(), 1);
  EXPECT_EQ(nccl->name(), "nccl");
  for (DType t : {DType::kF32, DType::kBF16, DType::kI32, DType::kI8}) {
    SCOPED_TRACE(dtype_name(t));
    Tensor h = random_ints(6, 10, 8, 7, t);
    cuda::DeviceTensor a = cuda::to_device(h), b(t, 6, 10);
    if (t != DType::kI8) {
      nccl->all_reduce(a);
      EXPECT_EQ(compare(rt->to_host(a), h, 0, 0, "all_reduce"), "");
      nccl->reduce_scatter(a, b);
      EXPECT_EQ(compare(rt->to_host(b), h, 0, 0, "reduce_scatter"), "");
      // Strided in-place all-reduce through staging.
      auto w = nccl->iall_reduce(a.view().col_slice(2, 5));
      w->wait();
      rt->synchronize();  // wait() orders the runtime's stream; the host syncs to read
      EXPECT_TRUE(w->test());
      EXPECT_EQ(compare(rt->to_host(a), h, 0, 0, "strided all_reduce"), "");
    }
    for (int dim : {0, 1}) {
      cuda::DeviceTensor c(t, 6, 10);
      nccl->all_gather(a, c, dim);
      EXPECT_EQ(compare(rt->to_host(c), h, 0, 0, "all_gather"), "") << dim;
    }
    cuda::DeviceTensor d(t, 10, 6);
    nccl->all_to_all(a, d);
    EXPECT_EQ(compare(rt->to_host(d).view().reshape(6, 10), h, 0, 0, "all_to_all"), "");
    nccl->broadcast(a, 0);
    EXPECT_EQ(compare(rt->to_host(a), h, 0, 0, "broadcast"), "");
  }
  EXPECT_TRUE(nccl->all_true(true));
  nccl->barrier();
  auto sub = nccl->split(0, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->name(), "nccl");
  EXPECT_EQ(nccl->split(-1, 0), nullptr);
}

TEST(Nccl, RejectsHostTensors) {
  SKIP_WITHOUT_GPU();
  LocalCommunicator boot;
  auto rt = cuda::make_cuda_runtime();
  auto nccl = cuda::make_nccl_communicator(boot, *rt);
  Tensor h(DType::kF32, 2, 2);
  EXPECT_THROW(nccl->broadcast(h, 0), InvalidArgument);
}

// Deadlines (tpl/watchdog.h): every collective is watched until its completion event fires, is
// recorded with its op, group and bytes, and retires without firing.
TEST(NcclDeadline, CollectivesAreWatchedAndRetire) {
  SKIP_WITHOUT_GPU();
  LocalCommunicator boot;
  auto rt = cuda::make_cuda_runtime();
  EXPECT_EQ(cuda::make_nccl_communicator(boot, *rt)->watchdog(), nullptr)
      << "a LocalCommunicator bootstrap has no watchdog, so no deadline";
  std::atomic<int> fired{0};
  Watchdog wd(30, 0, [&](const std::string&, const Watchdog&) { ++fired; });
  const Tensor h = random_ints(6, 10, 8, 7, DType::kF32);
  {
    auto nccl = cuda::make_nccl_communicator(boot, *rt, &wd);
    EXPECT_EQ(nccl->watchdog(), &wd);
    cuda::DeviceTensor a = cuda::to_device(h), b(DType::kF32, 6, 10);
    nccl->all_reduce(a);
    nccl->reduce_scatter(a, b);
    nccl->broadcast(b, 0);
    EXPECT_EQ(compare(rt->to_host(b), h, 0, 0, "watched collectives"), "");
    auto sub = nccl->split(0, 0);
    ASSERT_NE(sub, nullptr);
    EXPECT_EQ(sub->watchdog(), &wd) << "split() passes the watchdog on";
  }  // the destructor drains the stream and retires what is left
  EXPECT_EQ(wd.poll(), 0u);
  const auto r = wd.records();
  ASSERT_EQ(r.size(), 3u);
  const char* ops[] = {"all_reduce", "reduce_scatter", "broadcast"};
  for (std::size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(ops[i]);
    EXPECT_EQ(r[i].op, ops[i]);
    EXPECT_EQ(r[i].group, "nccl group of 1 rank (world ranks 0)");
    EXPECT_EQ(r[i].group_seq, i + 1);
    EXPECT_EQ(r[i].bytes, 240);
    EXPECT_TRUE(r[i].completed);
  }
  EXPECT_EQ(fired, 0);
}

// A collective that never completes: a host function holds the runtime's stream, as a stalled
// peer holds NCCL's kernel. Past the deadline the watchdog aborts the NCCL communicator, the
// action gets the line, and the communicator refuses every later call. In a child process (a
// death test re-executing this binary), since the held stream is not recoverable.
void CUDART_CB hold_stream(void*) {
  for (;;) std::this_thread::sleep_for(std::chrono::milliseconds(10));  // until the child exits
}

// The child: prints one line with what it saw, exits 3 if the deadline fired.
[[noreturn]] void run_stuck_collective() {
  LocalCommunicator boot;
  auto rt = cuda::make_cuda_runtime();
  std::mutex mu;
  std::string line;
  std::atomic<bool> fired{false};
  Watchdog wd(0.5, 0, [&](const std::string& l, const Watchdog&) {
    std::lock_guard<std::mutex> lock(mu);
    line = l;
    fired = true;
  });
  auto nccl = cuda::make_nccl_communicator(boot, *rt, &wd);
  cuda::DeviceTensor a(DType::kF32, 4, 256);
  const auto stream = static_cast<cudaStream_t>(cuda::as_cuda(*rt).stream().handle());
  if (cudaLaunchHostFunc(stream, hold_stream, nullptr) != cudaSuccess) std::_Exit(5);
  WorkPtr w = nccl->iall_reduce(a);
  for (int i = 0; i < 200 && !fired; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::string refused, wait_refused;
  try {
    nccl->all_reduce(a);
  } catch (const CommError& e) {
    refused = e.what();
  }
  try {
    w->wait();
  } catch (const CommError& e) {
    wait_refused = e.what();
  }
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "line: %s | refused: %s | wait: %s\n", line.c_str(), refused.c_str(),
               wait_refused.c_str());
  std::fflush(stderr);
  std::_Exit(fired ? 3 : 4);
}

TEST(NcclDeadline, AStuckCollectiveIsAbortedAndNamed) {
  SKIP_WITHOUT_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      run_stuck_collective(), ::testing::ExitedWithCode(3),
      "line: rank 0: all_reduce #1 on nccl group of 1 rank \\(world ranks 0\\), 4096 bytes, "
      "has not completed after .* \\| refused: .*aborted when a collective passed its "
      "deadline.* \\| wait: .*aborted");
}

}  // namespace
}  // namespace tpl

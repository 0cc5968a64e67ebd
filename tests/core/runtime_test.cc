// The host runtime: the primitives the ops use, on strided views, and its device checks. (The
// CUDA runtime is compared against it bit for bit in tests/gpu/gpu_runtime_test.cc.)
#include <gtest/gtest.h>

#include "expect_throw.h"

#include <vector>

#include "tpl/backends.h"
#include "tpl/error.h"
#include "tpl/quant.h"
#include "tpl/runtime.h"

namespace tpl {
namespace {

std::vector<float> values(const TensorView& v) {
  return to_f32_vector(v);
}

TEST(HostRuntime, AllocatesCopiesAndZeroes) {
  Runtime& rt = host_runtime();
  EXPECT_EQ(rt.device(), Device::kHost);
  EXPECT_EQ(make_runtime(Device::kHost)->name(), "host");
  Tensor src = Tensor::from_f32({1, 2, 3, 4, 5, 6}, 2, 3);
  Tensor dst = rt.zeros(DType::kF32, 2, 5);
  rt.copy(src.view().col_slice(1, 2), dst.view().col_slice(3, 2));  // strided both sides
  EXPECT_EQ(values(dst), (std::vector<float>{0, 0, 0, 2, 3, 0, 0, 0, 5, 6}));
  rt.fill_zero(dst.view().col_slice(4, 1));
  EXPECT_EQ(values(dst), (std::vector<float>{0, 0, 0, 2, 0, 0, 0, 0, 5, 0}));
  Tensor copy = rt.copy_of(dst.view().col_slice(3, 1));
  EXPECT_EQ(copy.view().stride(), 1);
  EXPECT_EQ(values(copy), (std::vector<float>{2, 5}));
  EXPECT_EQ(values(rt.to_host(src)), values(src));
}

TEST(HostRuntime, BiasAndW8A8Steps) {
  Runtime& rt = host_runtime();
  Tensor y = Tensor::from_f32({1, 2, 3, 4}, 2, 2, DType::kBF16);
  rt.add_row_bias(y, Tensor::from_f32({0.5f, -1}, 1, 2));
  EXPECT_EQ(values(y), (std::vector<float>{1.5f, 1, 3.5f, 3}));
  Tensor qb = Tensor::from_f32({2, -4}, 1, 2, DType::kI32);
  Tensor deq = Tensor::from_f32({0.5f, 0.25f}, 1, 2);
  Tensor acc = Tensor::from_f32({10, 20, -6, 8}, 2, 2, DType::kI32);
  Tensor out(DType::kF32, 2, 2);
  rt.w8a8_dequantize(acc, qb, deq, true, out);
  EXPECT_EQ(values(out), (std::vector<float>{6, 4, -2, 1}));
  rt.w8a8_dequantize(acc, qb, deq, false, out);
  EXPECT_EQ(values(out), (std::vector<float>{5, 5, -3, 2}));
  rt.add_dequantized_bias(out, qb, deq);
  EXPECT_EQ(values(out), (std::vector<float>{6, 4, -2, 1}));
  Tensor x = Tensor::from_f32({0.5f, 1.5f, 2.5f, 300}, 1, 4);
  Tensor q(DType::kI8, 1, 4);
  rt.quantize(x, q, 1.f, 1);
  // round_half_even(x / scale + offset), saturated: 1.5 -> 2, 2.5 -> 2, 3.5 -> 4. Rounding before
  // adding the odd offset would give 1, 3, 3.
  EXPECT_EQ(values(q), (std::vector<float>{2, 2, 4, 127}));
}

TEST(HostRuntime, RejectsDeviceViewsAndBadShapes) {
  Runtime& rt = host_runtime();
  float cell = 0;
  const TensorView dev(&cell, DType::kF32, 1, 1, -1, Device::kCuda);
  Tensor h(DType::kF32, 1, 1);
  testing::expect_throw_with<InvalidArgument>([&] { rt.copy(dev, h); }, "host tensor");
  testing::expect_throw_with<InvalidArgument>([&] { rt.fill_zero(dev); }, "host tensor");
  testing::expect_throw_with<InvalidArgument>(
      [&] { rt.add_row_bias(h, Tensor(DType::kF32, 1, 3)); }, "bias");
  testing::expect_throw_with<InvalidArgument>(
      [&] {
        rt.w8a8_dequantize(Tensor(DType::kI32, 1, 2), Tensor(DType::kI32, 1, 2),
                           Tensor(DType::kF32, 1, 3), true, Tensor(DType::kF32, 1, 2));
      },
      "deq_scale");
}

TEST(RuntimeRegistry, CudaRuntimeNeedsTheBackendOrADevice) {
  // Without the CUDA backend make_runtime names what is missing; with it but without a GPU the
  // CUDA runtime refuses to start. Either way: Unsupported, never a crash.
  bool has_cuda = false;
  for (const auto& b : built_backends()) has_cuda = has_cuda || b == "cuda";
  try {
    auto rt = make_runtime(Device::kCuda);
    EXPECT_TRUE(has_cuda);
    EXPECT_EQ(rt->device(), Device::kCuda);
  } catch (const Unsupported& e) {
    SUCCEED() << e.what();
  }
}

}  // namespace
}  // namespace tpl

// The CUDA runtime against the host runtime: every primitive the ops use must give bit-identical
// results (strided views, every float dtype), and the pool must reuse freed blocks.
#include <gtest/gtest.h>

#include "harness.h"
#include "tpl/backends.h"
#include "tpl/cuda.h"
#include "tpl/error.h"

namespace tpl {
namespace {

using testing::compare;

class CudaRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    rt_ = make_runtime(Device::kCuda);
  }
  std::unique_ptr<Runtime> rt_;
  Runtime& host_ = host_runtime();
};

TEST(RuntimeRegistry, HostRuntimeIsAlwaysBuilt) {
  auto rt = make_runtime(Device::kHost);
  EXPECT_EQ(rt->device(), Device::kHost);
  EXPECT_THROW(cuda::as_cuda(*rt), InvalidArgument);
}

TEST_F(CudaRuntimeTest, CopiesStridedViewsBothWays) {
  for (DType t : {DType::kF32, DType::kBF16, DType::kI8, DType::kI32}) {
    SCOPED_TRACE(dtype_name(t));
    Tensor h = testing::random_ints(9, 12, 50, 1, t);
    Tensor d = rt_->zeros(t, 9, 20);
    rt_->copy(h.view().col_slice(2, 8), d.view().col_slice(5, 8));  // host -> device, strided
    Tensor back = rt_->to_host(d.view().col_slice(5, 8));           // device -> host
    EXPECT_EQ(compare(back, h.view().col_slice(2, 8), 0, 0, "copy"), "");
    Tensor zeros = rt_->to_host(d.view().col_slice(0, 5));
    EXPECT_EQ(compare(zeros, Tensor(t, 9, 5), 0, 0, "zeros"), "");
  }
}

TEST_F(CudaRuntimeTest, BiasAndW8A8StepsMatchTheHostBitForBit) {
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(t));
    Tensor y = testing::random_normal(33, 40, 3.f, 2, t);
    Tensor bias = testing::random_normal(1, 40, 1.f, 3);
    Tensor qb = testing::random_ints(1, 40, 3000, 4, DType::kI32);
    Tensor deq = testing::random_normal(1, 40, 1e-3f, 5);
    Tensor acc = testing::random_ints(33, 40, 100000, 6, DType::kI32);
    Tensor dy = rt_->copy_of(y), dbias = rt_->copy_of(bias), dqb = rt_->copy_of(qb),
           ddeq = rt_->copy_of(deq), dacc = rt_->copy_of(acc);
    // Strided destination: the middle 30 columns.
    host_.add_row_bias(y.view().col_slice(5, 30), bias.view().col_slice(0, 30));
    rt_->add_row_bias(dy.view().col_slice(5, 30), dbias.view().col_slice(0, 30));
    EXPECT_EQ(compare(rt_->to_host(dy), y, 0, 0, "add_row_bias"), "");
    host_.add_dequantized_bias(y, qb, deq);
    rt_->add_dequantized_bias(dy, dqb, ddeq);
    EXPECT_EQ(compare(rt_->to_host(dy), y, 0, 0, "add_dequantized_bias"), "");
    for (bool add : {false, true}) {
      host_.w8a8_dequantize(acc, qb, deq, add, y);
      rt_->w8a8_dequantize(dacc, dqb, ddeq, add, dy);
      EXPECT_EQ(compare(rt_->to_host(dy), y, 0, 0, "w8a8_dequantize"), "") << add;
    }
    Tensor q(DType::kI8, 33, 40);
    Tensor dq = rt_->empty(DType::kI8, 33, 40);
    host_.quantize(y, q, 0.07f, -3);
    rt_->quantize(dy, dq, 0.07f, -3);
    EXPECT_EQ(compare(rt_->to_host(dq), q, 0, 0, "quantize"), "");
  }
}

TEST_F(CudaRuntimeTest, PoolReusesFreedBlocksAndRefusesGrowthDuringCapture) {
  auto& c = cuda::as_cuda(*rt_);
  { Tensor a = rt_->empty(DType::kF32, 100, 100); }
  const auto before = c.pool_stats();
  {
    Tensor b = rt_->empty(DType::kF32, 100, 100);  // same size class: reused
    EXPECT_EQ(c.pool_stats().device_allocations, before.device_allocations);
    EXPECT_GT(c.pool_stats().bytes_in_use, before.bytes_in_use);
  }
  EXPECT_EQ(c.pool_stats().bytes_in_use, before.bytes_in_use);
  EXPECT_THROW(cuda::Graph(c, [&] { Tensor big = rt_->empty(DType::kF32, 4096, 4096); }),
               BackendError);
  // The failed capture left the stream usable.
  Tensor z = rt_->zeros(DType::kF32, 2, 2);
  EXPECT_EQ(compare(rt_->to_host(z), Tensor(DType::kF32, 2, 2), 0, 0, "after capture"), "");
}

TEST_F(CudaRuntimeTest, RejectsHostTensorsInDeviceSteps) {
  Tensor h(DType::kF32, 2, 2), b(DType::kF32, 1, 2);
  EXPECT_THROW(rt_->fill_zero(h), InvalidArgument);
  EXPECT_THROW(rt_->add_row_bias(h, b), InvalidArgument);
}

}  // namespace
}  // namespace tpl

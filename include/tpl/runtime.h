// Runtime: where an op's tensors live and how its non-GEMM steps run (padding, staging copies,
// bias, W8A8 quantize/dequantize). The ops are written once against this interface; the host
// runtime runs them on the CPU, the CUDA runtime (tpl/cuda.h) on one compute stream. GEMMs and
// collectives have their own interfaces (Gemm, Communicator); a forward uses one runtime, one
// GEMM backend and communicators of the same device.
//
// Contract shared by every implementation:
//  * Work is ordered: each call happens after every earlier call on the same runtime (on a GPU,
//    because everything is enqueued on the runtime's stream; on the host, because it is done on
//    return). Only synchronize() and the functions that return host data wait on the host.
//  * empty() may hand out memory that an earlier, destroyed Tensor used; the order above makes
//    that safe. Its contents are unspecified (the host runtime zero-fills).
//  * Views may be strided; shapes and dtypes must match where stated, else InvalidArgument.
//  * Float math is f32 with one rounding into the destination dtype, bit-identical across
//    runtimes (tests/gpu checks the CUDA kernels against the host code).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "tpl/tensor.h"

namespace tpl {

class Runtime {
 public:
  virtual ~Runtime() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "host", "cuda"

  // A new contiguous tensor on this runtime's device.
  virtual Tensor empty(DType dtype, std::int64_t rows, std::int64_t cols) = 0;
  // dst = src. Either view may be on the host or on this runtime's device.
  virtual void copy(TensorView src, TensorView dst) = 0;
  virtual void fill_zero(TensorView v) = 0;
  // y[r, :] += bias (f32 [1, y.cols]) for every row.
  virtual void add_row_bias(TensorView y, TensorView bias) = 0;
  // q = saturate_int8(round_half_even(x / scale) + offset), x float, q int8 (tpl/quant.h).
  virtual void quantize(TensorView x, TensorView q, float scale, std::int32_t offset) = 0;
  // y = float(acc + (add_quant_bias ? quant_bias : 0)) · deq_scale, per output column; acc
  // int32 [M, n], quant_bias int32 [1, n], deq_scale f32 [1, n], y float [M, n].
  virtual void w8a8_dequantize(TensorView acc, TensorView quant_bias, TensorView deq_scale,
                               bool add_quant_bias, TensorView y) = 0;
  // y += float(quant_bias) · deq_scale per column (W8A8 bias after a fused reduce-scatter).
  virtual void add_dequantized_bias(TensorView y, TensorView quant_bias, TensorView deq_scale) = 0;
  // Blocks the host until everything enqueued on this runtime has finished.
  virtual void synchronize() = 0;

  // Conveniences on top of the primitives.
  Tensor zeros(DType dtype, std::int64_t rows, std::int64_t cols);
  // A contiguous copy of `v` (host or device) on this runtime's device.
  Tensor copy_of(TensorView v);
  // A contiguous host copy of `v`; waits for the copy.
  Tensor to_host(TensorView v);
};

// The CPU runtime. It holds no state, so one instance can serve any number of threads and
// layers; host_runtime() returns such an instance (a stateless strategy, like std::allocator).
std::unique_ptr<Runtime> make_host_runtime();
Runtime& host_runtime();

}  // namespace tpl

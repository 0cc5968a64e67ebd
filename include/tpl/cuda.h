// Public API of the CUDA backend (built when TPL_WITH_CUDA; see docs/gpu.md). Nothing here needs
// CUDA headers: streams are opaque handles, device memory is seen through TensorView with
// Device::kCuda.
//
// Ordering: unless a Stream is passed, work is enqueued on the legacy default stream (stream 0),
// which orders it with every blocking copy below. Functions that return host data synchronise.
#pragma once

#include <cstdint>
#include <memory>

#include "tpl/communicator.h"
#include "tpl/gemm.h"
#include "tpl/quant.h"
#include "tpl/tensor.h"

namespace tpl::cuda {

// Number of usable devices; 0 when the runtime reports any error (no driver, no device).
int device_count();

// An owned CUDA stream (cudaStreamNonBlocking). handle() is a cudaStream_t.
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* handle() const { return handle_; }
  void synchronize() const;

 private:
  void* handle_ = nullptr;
};
// Blocks until all work on the current device has finished.
void synchronize_device();

// Contiguous device memory, freed on destruction (cudaMalloc/cudaFree). Not zero-initialised.
class DeviceTensor {
 public:
  DeviceTensor() = default;
  DeviceTensor(DType dtype, std::int64_t rows, std::int64_t cols);
  ~DeviceTensor();
  DeviceTensor(DeviceTensor&& o) noexcept;
  DeviceTensor& operator=(DeviceTensor&& o) noexcept;
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;

  TensorView view() const { return view_; }      // Device::kCuda
  operator TensorView() const { return view_; }  // NOLINT: as Tensor
  void* data() const { return view_.data(); }

 private:
  void reset();
  TensorView view_;
};

// Copies between any two views (host or device, possibly strided); shapes and dtypes must
// match. Blocking with respect to the host unless `stream` is given (then asynchronous, and the
// host side must stay alive until the stream reaches the copy).
void copy(const TensorView& src, const TensorView& dst, const Stream* stream = nullptr);
DeviceTensor to_device(const TensorView& host);
Tensor to_host(const TensorView& dev);

// cuBLASLt GEMM on device tensors (x, y on Device::kCuda; weight and bias may be host or device
// views and are copied into the Gemm). Supported: f32 -> f32 (no TF32), bf16 -> bf16 | f32,
// f16 -> f16 | f32, int8 -> int32 (no bias). run() is asynchronous on `stream` (stream 0 if
// null; the Stream must outlive the Gemm).
std::unique_ptr<Gemm> make_cublaslt_gemm(const GemmDesc& desc, TensorView weight, TensorView bias,
                                         const Stream* stream = nullptr);

// W8A8 on device (definitions as in tpl/quant.h, bit-identical to quantize_into and
// w8a8_reference): q = saturate_int8(round_half_even(x · (1/scale)) + offset) for f32/bf16/f16 x;
// y = float(acc + quant_bias[c]·add_quant_bias) · deq_scale[c] into f32/bf16/f16 y, with acc
// int32 [M, n], quant_bias int32 [1, n], deq_scale f32 [1, n], all device views.
void quantize(TensorView x, TensorView q, float input_scale, std::int32_t input_offset,
              const Stream* stream = nullptr);
void w8a8_dequantize(TensorView acc, TensorView quant_bias, TensorView deq_scale,
                     bool add_quant_bias, TensorView y, const Stream* stream = nullptr);

// NCCL communicator over the same ranks as `mpi` (a communicator whose name() is "mpi"; the
// call is collective over it). Selects device (node-local rank % device_count()), creates the
// NCCL communicator (unique id broadcast over MPI) and its own communication stream.
// Collectives take Device::kCuda views; work is ordered after everything already enqueued on
// stream 0, and Work::wait() blocks the host until the collective has completed.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& mpi);

}  // namespace tpl::cuda

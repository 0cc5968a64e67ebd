// Device discovery, streams, device memory and host<->device copies. Any error from
// cudaGetDeviceCount (no driver, no device) means "no GPU": a CPU-only machine with the toolkit
// installed must still run the CPU tests.
#include <utility>

#include "cuda_check.h"
#include "kernels.h"

namespace tpl::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // reset the last-error state for later launch checks
    return 0;
  }
  return n;
}

Stream::Stream() {
  cudaStream_t s = nullptr;
  TPL_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  handle_ = s;
}
Stream::~Stream() {
  if (handle_) (void)cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
}
void Stream::synchronize() const {
  TPL_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(handle_)));
}
void synchronize_device() {
  TPL_CUDA_CHECK(cudaDeviceSynchronize());
}

DeviceTensor::DeviceTensor(DType dtype, std::int64_t rows, std::int64_t cols) {
  TPL_CHECK(rows >= 0 && cols >= 0, Where{"DeviceTensor"}, "negative shape ", rows, "x", cols);
  void* p = nullptr;
  const std::size_t bytes = static_cast<std::size_t>(rows * cols) * dtype_size(dtype);
  if (bytes > 0) TPL_CUDA_CHECK(cudaMalloc(&p, bytes));
  view_ = TensorView(p, dtype, rows, cols, -1, Device::kCuda);
}
DeviceTensor::~DeviceTensor() {
  reset();
}
DeviceTensor::DeviceTensor(DeviceTensor&& o) noexcept : view_(std::exchange(o.view_, {})) {}
DeviceTensor& DeviceTensor::operator=(DeviceTensor&& o) noexcept {
  if (this != &o) {
    reset();
    view_ = std::exchange(o.view_, {});
  }
  return *this;
}
void DeviceTensor::reset() {
  if (view_.data()) (void)cudaFree(view_.data());  // destructors must not throw
  view_ = {};
}

void copy(const TensorView& src, const TensorView& dst, const Stream* stream) {
  TPL_CHECK(src.dtype() == dst.dtype() && src.rows() == dst.rows() && src.cols() == dst.cols(),
            Where{"cuda copy"}, "src ", src.describe(), " dst ", dst.describe());
  if (src.empty()) return;
  const std::size_t es = dtype_size(src.dtype());
  const auto kind = [](Device from, Device to) {
    if (from == Device::kHost)
      return to == Device::kHost ? cudaMemcpyHostToHost : cudaMemcpyHostToDevice;
    return to == Device::kHost ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
  }(src.device(), dst.device());
  const std::size_t width = static_cast<std::size_t>(src.cols()) * es;
  const std::size_t spitch = static_cast<std::size_t>(src.stride()) * es;
  const std::size_t dpitch = static_cast<std::size_t>(dst.stride()) * es;
  const auto h = static_cast<std::size_t>(src.rows());
  if (stream) {
    TPL_CUDA_CHECK(cudaMemcpy2DAsync(dst.data(), dpitch, src.data(), spitch, width, h, kind,
                                     stream_of(stream)));
  } else {
    TPL_CUDA_CHECK(cudaMemcpy2D(dst.data(), dpitch, src.data(), spitch, width, h, kind));
  }
}

DeviceTensor to_device(const TensorView& host) {
  DeviceTensor d(host.dtype(), host.rows(), host.cols());
  copy(host, d.view());
  return d;
}

Tensor to_host(const TensorView& dev) {
  Tensor h(dev.dtype(), dev.rows(), dev.cols());
  copy(dev, h.view());
  return h;
}

void quantize(TensorView x, TensorView q, float input_scale, std::int32_t input_offset,
              const Stream* stream) {
  const Where w{"cuda quantize"};
  TPL_CHECK(x.device() == Device::kCuda && q.device() == Device::kCuda, w,
            "x and q must be device tensors");
  TPL_CHECK(q.dtype() == DType::kI8 && q.rows() == x.rows() && q.cols() == x.cols(), w, "x ",
            x.describe(), " q ", q.describe());
  TPL_CHECK(x.dtype() == DType::kF32 || x.dtype() == DType::kBF16 || x.dtype() == DType::kF16, w,
            "x must be a float tensor, got ", x.describe());
  TPL_CHECK_GT(input_scale, 0.f, w, "input_scale must be positive");
  TPL_CUDA_CHECK(kernels::quantize(x.data(), kernel_type(x.dtype()), x.stride(),
                                   q.ptr<std::int8_t>(), q.stride(), x.rows(), x.cols(),
                                   1.f / input_scale, input_offset, stream_of(stream)));
}

void w8a8_dequantize(TensorView acc, TensorView quant_bias, TensorView deq_scale,
                     bool add_quant_bias, TensorView y, const Stream* stream) {
  const Where w{"cuda w8a8_dequantize"};
  TPL_CHECK(acc.device() == Device::kCuda && y.device() == Device::kCuda &&
                deq_scale.device() == Device::kCuda &&
                (!add_quant_bias || quant_bias.device() == Device::kCuda),
            w, "all tensors must be device tensors");
  TPL_CHECK(acc.dtype() == DType::kI32 && y.rows() == acc.rows() && y.cols() == acc.cols(), w,
            "acc ", acc.describe(), " y ", y.describe());
  TPL_CHECK(y.dtype() == DType::kF32 || y.dtype() == DType::kBF16 || y.dtype() == DType::kF16, w,
            "y must be a float tensor, got ", y.describe());
  TPL_CHECK(
      deq_scale.dtype() == DType::kF32 && deq_scale.rows() == 1 && deq_scale.cols() == acc.cols(),
      w, "deq_scale must be f32 [1, ", acc.cols(), "], got ", deq_scale.describe());
  TPL_CHECK(!add_quant_bias || (quant_bias.dtype() == DType::kI32 && quant_bias.rows() == 1 &&
                                quant_bias.cols() == acc.cols()),
            w, "quant_bias must be int32 [1, ", acc.cols(), "], got ", quant_bias.describe());
  TPL_CUDA_CHECK(kernels::w8a8_dequantize(acc.ptr<std::int32_t>(), acc.stride(),
                                          add_quant_bias ? quant_bias.ptr<std::int32_t>() : nullptr,
                                          deq_scale.ptr<float>(), y.data(), kernel_type(y.dtype()),
                                          y.stride(), acc.rows(), acc.cols(), stream_of(stream)));
}

}  // namespace tpl::cuda

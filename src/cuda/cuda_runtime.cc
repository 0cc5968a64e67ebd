// CudaRuntime: the Runtime interface on one compute stream, with a caching memory pool, and CUDA
// graph capture of the work enqueued on that stream.
//
// Pool: blocks are grouped by size class (multiples of 512 B up to 1 MiB, of 2 MiB above). A
// Tensor's release pushes its block back on the free list of its class; the next request of the
// class takes it. Reuse is safe because all work using pool memory is ordered on the runtime's
// stream (the NCCL communicator joins its stream back to it before a block can be released).
// During graph capture a request that would need cudaMalloc throws: the forward must have run
// once before. The pool is shared with every Tensor it handed out, so it outlives the runtime if
// tensors do; it frees its blocks when the last owner goes.
#include <map>
#include <mutex>
#include <vector>

#include "cuda_check.h"
#include "kernels.h"

namespace tpl::cuda {
namespace {

std::size_t size_class(std::size_t bytes) {
  constexpr std::size_t kSmall = 512, kLarge = std::size_t{2} << 20;
  if (bytes <= (std::size_t{1} << 20)) return (bytes + kSmall - 1) / kSmall * kSmall;
  return (bytes + kLarge - 1) / kLarge * kLarge;
}

class Pool {
 public:
  explicit Pool(cudaStream_t stream) : stream_(stream) {}
  ~Pool() {
    for (auto& [cls, blocks] : free_)
      for (void* p : blocks) (void)cudaFree(p);  // destructors must not throw
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  void* allocate(std::size_t cls) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& blocks = free_[cls];
    if (!blocks.empty()) {
      void* p = blocks.back();
      blocks.pop_back();
      stats_.bytes_in_use += cls;
      return p;
    }
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    TPL_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
    if (capture != cudaStreamCaptureStatusNone)
      TPL_THROW(BackendError, Where{"cuda pool"}, "a graph capture needs ", cls,
                " bytes of new device memory; run the forward once before capturing it so the "
                "pool holds every block it uses");
    void* p = nullptr;
    TPL_CUDA_CHECK(cudaMalloc(&p, cls));
    ++stats_.device_allocations;
    stats_.bytes_reserved += cls;
    stats_.bytes_in_use += cls;
    return p;
  }
  void release(void* p, std::size_t cls) {
    std::lock_guard<std::mutex> lock(mu_);
    free_[cls].push_back(p);
    stats_.bytes_in_use -= cls;
  }
  CudaRuntime::PoolStats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  cudaStream_t stream_;
  mutable std::mutex mu_;
  std::map<std::size_t, std::vector<void*>> free_;
  CudaRuntime::PoolStats stats_;
};

void check_device(const TensorView& v, const char* what, const char* op) {
  TPL_CHECK(v.device() == Device::kCuda || v.empty(), (Where{op}), what,
            " must be a device tensor, got a host ", v.describe());
}

void check_same_shape(const TensorView& a, const TensorView& b, const char* op) {
  TPL_CHECK(a.rows() == b.rows() && a.cols() == b.cols(), (Where{op}),
            "shapes differ: ", a.describe(), " and ", b.describe());
}

void check_float(const TensorView& v, const char* what, const char* op) {
  TPL_CHECK(v.dtype() == DType::kF32 || v.dtype() == DType::kBF16 || v.dtype() == DType::kF16,
            (Where{op}), what, " must be a float tensor, got ", v.describe());
}

class CudaRuntimeImpl final : public CudaRuntime {
 public:
  CudaRuntimeImpl() : pool_(std::make_shared<Pool>(stream_of(&stream_))) {
    TPL_CUDA_CHECK(cudaGetDevice(&device_));
  }
  ~CudaRuntimeImpl() override { (void)cudaStreamSynchronize(s()); }

  Device device() const override { return Device::kCuda; }
  std::string name() const override { return "cuda"; }
  const Stream& stream() const override { return stream_; }
  PoolStats pool_stats() const override { return pool_->stats(); }

  Tensor empty(DType dtype, std::int64_t rows, std::int64_t cols) override {
    TPL_CHECK(rows >= 0 && cols >= 0, Where{"cuda runtime"}, "negative shape [", rows, ", ", cols,
              "]");
    const std::size_t bytes = static_cast<std::size_t>(rows * cols) * dtype_size(dtype);
    if (bytes == 0) return Tensor(TensorView(nullptr, dtype, rows, cols, -1, Device::kCuda), {});
    const std::size_t cls = size_class(bytes);
    void* p = pool_->allocate(cls);
    return Tensor(TensorView(p, dtype, rows, cols, -1, Device::kCuda),
                  [pool = pool_, cls](void* q) { pool->release(q, cls); });
  }

  void copy(TensorView src, TensorView dst) override {
    TPL_CHECK(src.dtype() == dst.dtype(), Where{"cuda copy"}, "dtypes differ: ", src.describe(),
              " into ", dst.describe());
    check_same_shape(src, dst, "cuda copy");
    if (src.empty()) return;
    const std::size_t es = dtype_size(src.dtype());
    TPL_CUDA_CHECK(cudaMemcpy2DAsync(dst.data(), dst.stride() * es, src.data(), src.stride() * es,
                                     src.cols() * es, static_cast<std::size_t>(src.rows()),
                                     cudaMemcpyDefault, s()));
  }

  void fill_zero(TensorView v) override {
    check_device(v, "fill_zero's tensor", "cuda fill_zero");
    if (v.empty()) return;
    const std::size_t es = dtype_size(v.dtype());
    TPL_CUDA_CHECK(cudaMemset2DAsync(v.data(), v.stride() * es, 0, v.cols() * es,
                                     static_cast<std::size_t>(v.rows()), s()));
  }

  void add_row_bias(TensorView y, TensorView bias) override {
    const char* op = "cuda add_row_bias";
    check_device(y, "y", op);
    check_device(bias, "bias", op);
    check_float(y, "y", op);
    TPL_CHECK(bias.dtype() == DType::kF32 && bias.rows() == 1 && bias.cols() == y.cols(),
              (Where{op}), "bias must be f32 [1, ", y.cols(), "], got ", bias.describe());
    TPL_CUDA_CHECK(kernels::add_row_bias(y.data(), kernel_type(y.dtype()), y.stride(),
                                         bias.ptr<float>(), y.rows(), y.cols(), s()));
  }

  void quantize(TensorView x, TensorView q, float scale, std::int32_t offset) override {
    cuda::quantize(x, q, scale, offset, &stream_);
  }

  void w8a8_dequantize(TensorView acc, TensorView quant_bias, TensorView deq_scale,
                       bool add_quant_bias, TensorView y) override {
    cuda::w8a8_dequantize(acc, quant_bias, deq_scale, add_quant_bias, y, &stream_);
  }

  void add_dequantized_bias(TensorView y, TensorView quant_bias, TensorView deq_scale) override {
    const char* op = "cuda add_dequantized_bias";
    check_device(y, "y", op);
    check_device(quant_bias, "quant_bias", op);
    check_device(deq_scale, "deq_scale", op);
    check_float(y, "y", op);
    TPL_CHECK(quant_bias.dtype() == DType::kI32 && quant_bias.rows() == 1 &&
                  quant_bias.cols() == y.cols() && deq_scale.dtype() == DType::kF32 &&
                  deq_scale.rows() == 1 && deq_scale.cols() == y.cols(),
              (Where{op}), "quant_bias must be int32 and deq_scale f32, both [1, ", y.cols(),
              "]; got ", quant_bias.describe(), " and ", deq_scale.describe());
    TPL_CUDA_CHECK(kernels::add_dequantized_bias(y.data(), kernel_type(y.dtype()), y.stride(),
                                                 quant_bias.ptr<std::int32_t>(),
                                                 deq_scale.ptr<float>(), y.rows(), y.cols(), s()));
  }

  void synchronize() override { TPL_CUDA_CHECK(cudaStreamSynchronize(s())); }

 private:
  cudaStream_t s() const { return stream_of(&stream_); }
  int device_ = 0;
  Stream stream_;
  std::shared_ptr<Pool> pool_;
};

}  // namespace

std::unique_ptr<Runtime> make_cuda_runtime() {
  TPL_CHECK_T(device_count() > 0, Unsupported, Where{"make_cuda_runtime"},
              "no usable CUDA device (cudaGetDeviceCount found none)");
  return std::make_unique<CudaRuntimeImpl>();
}

CudaRuntime& as_cuda(Runtime& rt) {
  auto* c = dynamic_cast<CudaRuntime*>(&rt);
  TPL_CHECK(c != nullptr, Where{"as_cuda"}, "expected the CUDA runtime, got the '", rt.name(),
            "' runtime");
  return *c;
}

Graph::Graph(CudaRuntime& rt, const std::function<void()>& body) : rt_(rt) {
  const cudaStream_t s = stream_of(&rt.stream());
  // Thread-local mode: other threads (a CommWorker, MPI's) are not affected by the capture.
  TPL_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t g = nullptr;
  try {
    body();
  } catch (...) {
    (void)cudaStreamEndCapture(s, &g);
    if (g) (void)cudaGraphDestroy(g);
    throw;
  }
  TPL_CUDA_CHECK(cudaStreamEndCapture(s, &g));
  graph_ = g;
  try {
    TPL_CUDA_CHECK(cudaGraphGetNodes(g, nullptr, &nodes_));
    cudaGraphExec_t exec = nullptr;
    TPL_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    exec_ = exec;
  } catch (...) {
    (void)cudaGraphDestroy(g);
    throw;
  }
}

Graph::~Graph() {
  if (exec_) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) (void)cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

void Graph::replay() {
  TPL_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), stream_of(&rt_.stream())));
}

}  // namespace tpl::cuda

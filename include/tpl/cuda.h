// Public API of the CUDA backend (built when TPL_WITH_CUDA; see docs/gpu.md). Nothing here needs
// CUDA headers: streams are opaque handles, device memory is seen through TensorView with
// Device::kCuda.
//
// Ordering: the free functions below enqueue on the legacy default stream (stream 0) unless a
// Stream is passed; stream 0 orders them with every blocking copy below, but not with the
// non-blocking stream of a CudaRuntime. Ops, layers and NCCL communicators use the runtime's
// stream (CudaRuntime::stream()); read their results with Runtime::to_host. Functions that
// return host data synchronise.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "tpl/communicator.h"
#include "tpl/gemm.h"
#include "tpl/quant.h"
#include "tpl/runtime.h"
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

// Makes the device of this rank current: its index among the ranks on its host (compared by
// host name over `bootstrap`), modulo the device count. Collective over `bootstrap`; call it
// before make_cuda_runtime(). Unsupported (on every rank) if any rank has no device.
int select_device(Communicator& bootstrap);

// NCCL communicator over the ranks of `bootstrap` (any communicator of host tensors: MPI, or
// LocalCommunicator for one rank; the call is collective over it). Creates the NCCL
// communicator (rank 0's unique id is broadcast over `bootstrap`) and its own communication
// stream, on the current device. Collectives take Device::kCuda views, stream-ordered with `rt` (a
// CUDA runtime): each starts after everything already enqueued on rt's stream, and wait() (or a
// blocking call's return) makes rt's stream wait for it, without blocking the host. split()
// splits `bootstrap` and builds a new NCCL communicator on the same runtime. `rt` must outlive
// the communicator.
//
// Deadlines: each collective is watched by `watchdog` (by default bootstrap.watchdog(): an MPI
// bootstrap's is its MpiSession's, a LocalCommunicator has none, so no deadline), when every
// rank has one. The watchdog polls the collective's completion event; past TPL_TIMEOUT it calls
// ncclCommAbort (so kernels waiting on a stalled peer return), then its action: MpiSession's
// prints one line naming this rank, the collective, its number on this group, the group's world
// ranks and the bytes, and aborts the job. If an action returns instead (a caller's own), the
// communicator is aborted: its calls, and wait()/test() of its works, throw CommError.
// `watchdog` must outlive the communicator; split() passes it on.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, Runtime& rt);
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, Runtime& rt,
                                                     Watchdog* watchdog);

// The CUDA runtime (tpl/runtime.h) on the current device. Everything is enqueued on its own
// non-blocking compute stream. Memory comes from a caching pool: a freed block goes back to the
// pool and is reused, stream-ordered, by a later request of the same size class, so a forward
// allocates device memory only the first time it sees a shape (no cudaMalloc after warm-up).
class CudaRuntime : public Runtime {
 public:
  struct PoolStats {
    std::int64_t device_allocations = 0;  // cudaMalloc calls so far
    std::size_t bytes_reserved = 0;       // held by the pool, in use or free
    std::size_t bytes_in_use = 0;
  };
  virtual const Stream& stream() const = 0;
  virtual PoolStats pool_stats() const = 0;
};
std::unique_ptr<Runtime> make_cuda_runtime();
// `rt` as a CUDA runtime; InvalidArgument if it is another runtime.
CudaRuntime& as_cuda(Runtime& rt);

// A CUDA graph captured from the work `body` enqueues on a CUDA runtime's stream (and on the
// streams that join it through events, such as NCCL's). replay() relaunches it on that stream:
// the same kernels on the same addresses, so inputs are changed in place between replays and
// outputs are read from the tensors the captured forward returned (keep them alive). body must
// not allocate new device memory (run it once before capturing, to warm the pool; the pool
// throws BackendError otherwise) and must not synchronise the host.
class Graph {
 public:
  Graph(CudaRuntime& rt, const std::function<void()>& body);
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void replay();
  std::size_t num_nodes() const { return nodes_; }

 private:
  CudaRuntime& rt_;
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
  std::size_t nodes_ = 0;
};

}  // namespace tpl::cuda

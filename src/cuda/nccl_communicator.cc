// NcclCommunicator: tpl::Communicator over NCCL for Device::kCuda tensors.
//  * Bootstrap over MPI: rank 0 calls ncclGetUniqueId, MPI_Bcast sends it, every rank calls
//    ncclCommInitRank on device (node-local rank % device count). The communicator keeps its own
//    duplicate of the MPI communicator for split(), all_true() and barrier().
//  * Every collective runs on the communicator's own non-blocking stream, after an event
//    recorded on the legacy default stream (so it sees everything enqueued there before), and
//    ends with an event that the Work handle waits on (wait = cudaEventSynchronize, test =
//    cudaEventQuery).
//  * Sums use NCCL's native types (bf16/f16 reduced in NCCL, not staged through f32 as the MPI
//    backend does: see docs/gpu.md). Strided views are staged through contiguous device
//    buffers owned by the Work; all-gather along dim 1 gathers rows then scatters the column
//    blocks with cudaMemcpy2DAsync.
#include <mpi.h>

#include <vector>

#include "comm/mpi_communicator.h"
#include "cuda_check.h"

namespace tpl::cuda {
namespace {

class NcclWork final : public Work {
 public:
  NcclWork(cudaEvent_t done, std::vector<DeviceTensor> staging)
      : done_(done), staging_(std::move(staging)) {}
  ~NcclWork() override {
    (void)cudaEventSynchronize(done_);  // the buffers must outlive the collective
    (void)cudaEventDestroy(done_);
  }
  void wait() override { TPL_CUDA_CHECK(cudaEventSynchronize(done_)); }
  bool test() override {
    const cudaError_t st = cudaEventQuery(done_);
    if (st == cudaErrorNotReady) return false;
    TPL_CUDA_CHECK(st);
    return true;
  }

 private:
  cudaEvent_t done_;
  std::vector<DeviceTensor> staging_;
};

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(std::unique_ptr<Communicator> mpi) : mpi_(std::move(mpi)) {
    auto* m = dynamic_cast<MpiCommunicator*>(mpi_.get());
    TPL_CHECK(m != nullptr, Where{"nccl"}, "needs an MPI communicator, got ", mpi_->name());
    rank_ = m->rank();
    size_ = m->size();
    const int devices = device_count();
    // Failures before ncclCommInitRank are agreed over MPI, so no rank is left waiting.
    TPL_CHECK_T(mpi_->all_true(devices > 0), Unsupported, (Where{"nccl", rank_}),
                "a rank of the group has no CUDA device (this rank has ", devices, ")");
    MPI_Comm local = MPI_COMM_NULL;
    TPL_MPI_CHECK(
        MPI_Comm_split_type(m->handle(), MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local),
        rank_);
    int local_rank = 0;
    const int rc = MPI_Comm_rank(local, &local_rank);
    MPI_Comm_free(&local);
    TPL_MPI_CHECK(rc, rank_);
    device_ = local_rank % devices;
    TPL_CUDA_CHECK(cudaSetDevice(device_));
    ncclUniqueId id{};
    const ncclResult_t id_st = rank_ == 0 ? ncclGetUniqueId(&id) : ncclSuccess;
    TPL_CHECK_T(mpi_->all_true(id_st == ncclSuccess), CommError, (Where{"nccl", rank_}),
                "ncclGetUniqueId failed on rank 0", rank_ == 0 ? ": " : "",
                rank_ == 0 ? ncclGetErrorString(id_st) : "");
    TPL_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, m->handle()), rank_);
    TPL_NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_), rank_);
    try {
      TPL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      TPL_CUDA_CHECK(cudaEventCreateWithFlags(&input_ready_, cudaEventDisableTiming));
    } catch (...) {
      release();
      throw;
    }
  }
  ~NcclCommunicator() override { release(); }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  bool all_true(bool value) override { return mpi_->all_true(value); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    auto sub = mpi_->split(color, key);
    if (!sub) return nullptr;
    return std::make_unique<NcclCommunicator>(std::move(sub));
  }

 protected:
  void do_barrier() override {
    TPL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    mpi_->barrier();
  }

  WorkPtr do_iall_reduce(TensorView inout) override {
    Op op(*this);
    void* p = op.in_place(inout);
    TPL_NCCL_CHECK(
        ncclAllReduce(p, p, count(inout), nccl_type(inout.dtype()), ncclSum, comm_, stream_),
        rank_);
    return op.finish();
  }
  WorkPtr do_ireduce_scatter(TensorView in, TensorView out) override {
    Op op(*this);
    const void* src = op.input(in);
    void* dst = op.output(out);
    TPL_NCCL_CHECK(
        ncclReduceScatter(src, dst, count(out), nccl_type(in.dtype()), ncclSum, comm_, stream_),
        rank_);
    return op.finish();
  }
  WorkPtr do_iall_gather(TensorView in, TensorView out, int dim) override {
    Op op(*this);
    const void* src = op.input(in);
    if (dim == 0) {
      TPL_NCCL_CHECK(
          ncclAllGather(src, op.output(out), count(in), nccl_type(in.dtype()), comm_, stream_),
          rank_);
      return op.finish();
    }
    // dim 1: gather [size*R, C] row blocks, then block j -> columns [j*C, (j+1)*C) of out.
    op.check(out);
    DeviceTensor rows(in.dtype(), in.rows() * size_, in.cols());
    TPL_NCCL_CHECK(
        ncclAllGather(src, rows.data(), count(in), nccl_type(in.dtype()), comm_, stream_), rank_);
    for (int j = 0; j < size_; ++j)
      op.copy_async(rows.view().row_slice(j * in.rows(), in.rows()),
                    out.col_slice(j * in.cols(), in.cols()));
    op.keep(std::move(rows));
    return op.finish();
  }
  WorkPtr do_iall_to_all(TensorView in, TensorView out) override {
    // Both views are contiguous (validated).
    Op op(*this);
    const std::size_t chunk = count(in) / static_cast<std::size_t>(size_);
    const std::size_t bytes = chunk * dtype_size(in.dtype());
    const auto* src = static_cast<const char*>(op.input(in));
    auto* dst = static_cast<char*>(op.output(out));
    const ncclDataType_t t = nccl_type(in.dtype());
    TPL_NCCL_CHECK(ncclGroupStart(), rank_);
    for (int p = 0; p < size_; ++p) {
      TPL_NCCL_CHECK(ncclSend(src + p * bytes, chunk, t, p, comm_, stream_), rank_);
      TPL_NCCL_CHECK(ncclRecv(dst + p * bytes, chunk, t, p, comm_, stream_), rank_);
    }
    TPL_NCCL_CHECK(ncclGroupEnd(), rank_);
    return op.finish();
  }
  WorkPtr do_ibroadcast(TensorView buf, int root) override {
    Op op(*this);
    void* p = op.in_place(buf);
    TPL_NCCL_CHECK(ncclBroadcast(p, p, count(buf), nccl_type(buf.dtype()), root, comm_, stream_),
                   rank_);
    return op.finish();
  }

 private:
  static std::size_t count(const TensorView& v) { return static_cast<std::size_t>(v.numel()); }

  // One enqueued collective: orders the comm stream after stream 0, stages strided views
  // through contiguous device buffers (copy-in before, copy-out after the collective), and
  // ends with the completion event handed to the Work.
  class Op {
   public:
    explicit Op(NcclCommunicator& c) : c_(c) {
      check_device();
      TPL_CUDA_CHECK(cudaEventRecord(c_.input_ready_, nullptr));
      TPL_CUDA_CHECK(cudaStreamWaitEvent(c_.stream_, c_.input_ready_, 0));
    }
    const void* input(const TensorView& v) {
      check(v);
      if (v.contiguous()) return v.data();
      DeviceTensor t(v.dtype(), v.rows(), v.cols());
      copy_async(v, t.view());
      return keep(std::move(t));
    }
    void* output(const TensorView& v) {
      check(v);
      if (v.contiguous()) return v.data();
      DeviceTensor t(v.dtype(), v.rows(), v.cols());
      copy_back_.emplace_back(t.view(), v);
      return keep(std::move(t));
    }
    void* in_place(const TensorView& v) {
      check(v);
      if (v.contiguous()) return v.data();
      DeviceTensor t(v.dtype(), v.rows(), v.cols());
      copy_async(v, t.view());
      copy_back_.emplace_back(t.view(), v);
      return keep(std::move(t));
    }
    void copy_async(const TensorView& src, const TensorView& dst) {
      const std::size_t es = dtype_size(src.dtype());
      TPL_CUDA_CHECK(cudaMemcpy2DAsync(dst.data(), dst.stride() * es, src.data(), src.stride() * es,
                                       src.cols() * es, static_cast<std::size_t>(src.rows()),
                                       cudaMemcpyDeviceToDevice, c_.stream_));
    }
    void* keep(DeviceTensor t) {
      staging_.push_back(std::move(t));
      return staging_.back().data();
    }
    WorkPtr finish() {
      for (auto& [from, to] : copy_back_) copy_async(from, to);
      cudaEvent_t done = nullptr;
      TPL_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
      const cudaError_t st = cudaEventRecord(done, c_.stream_);
      if (st != cudaSuccess) (void)cudaEventDestroy(done);
      TPL_CUDA_CHECK(st);
      return std::make_unique<NcclWork>(done, std::move(staging_));
    }

    void check(const TensorView& v) const {
      TPL_CHECK(v.device() == Device::kCuda || v.empty(), (Where{"nccl", c_.rank_}),
                "NCCL collectives take device tensors, got a host ", v.describe());
    }

   private:
    void check_device() const {
      int dev = -1;
      TPL_CUDA_CHECK(cudaGetDevice(&dev));
      TPL_CHECK(dev == c_.device_, (Where{"nccl", c_.rank_}), "current device ", dev,
                " is not the communicator's device ", c_.device_);
    }
    NcclCommunicator& c_;
    std::vector<DeviceTensor> staging_;
    std::vector<std::pair<TensorView, TensorView>> copy_back_;
  };

  void release() {
    if (input_ready_) (void)cudaEventDestroy(input_ready_);
    if (stream_) {
      (void)cudaStreamSynchronize(stream_);
      (void)cudaStreamDestroy(stream_);
    }
    if (comm_) (void)ncclCommDestroy(comm_);
    input_ready_ = nullptr;
    stream_ = nullptr;
    comm_ = nullptr;
  }

  std::unique_ptr<Communicator> mpi_;
  int rank_ = 0, size_ = 1, device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t input_ready_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& mpi) {
  TPL_CHECK(mpi.name() == "mpi", Where{"make_nccl_communicator"},
            "needs the MPI communicator, got '", mpi.name(), "'");
  // A private duplicate, so the NCCL communicator outlives nothing it does not own.
  return std::make_unique<NcclCommunicator>(mpi.split(0, mpi.rank()));
}

}  // namespace tpl::cuda

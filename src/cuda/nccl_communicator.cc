// NcclCommunicator: tpl::Communicator over NCCL for Device::kCuda tensors, stream-ordered with a
// CUDA runtime.
//  * Bootstrap over any host communicator: rank 0 calls ncclGetUniqueId and broadcasts it as
//    bytes; every rank calls ncclCommInitRank on the runtime's device. Failures before the init
//    are agreed over the bootstrap communicator, so no rank is left waiting. The bootstrap
//    communicator (a private duplicate) also serves split(), all_true() and barrier().
//  * Each collective runs on the communicator's own non-blocking stream, after an event recorded
//    on the runtime's stream (so it sees every kernel enqueued before it), and ends with a
//    "done" event. Work::wait() makes the runtime's stream wait for that event: the host never
//    blocks, and the fork/join of the two streams is what a CUDA graph capture records.
//  * Sums use NCCL's native types (bf16/f16 reduced in NCCL, not staged through f32 as the MPI
//    backend does: see docs/gpu.md). Strided views are staged through contiguous blocks of the
//    runtime's pool, owned by the Work until the runtime's stream has waited for the collective;
//    all-gather along dim 1 gathers rows, then scatters the column blocks with copies on the
//    communication stream.
//  * Deadlines (tpl/watchdog.h): the host never waits on NCCL, so the watchdog polls each
//    collective's "done" event instead (Watchdog::watch_until). Past the deadline it aborts the
//    NCCL communicator (ncclCommAbort: kernels spinning on a stalled peer return), then runs
//    the watchdog's action (MpiSession's: one line, the flight recorders, MPI_Abort). After an
//    abort every call of the communicator, and wait()/test() of its works, throw CommError.
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "tpl/watchdog.h"

namespace tpl::cuda {
namespace {

// Completion events, reused so a forward creates none after warm-up.
class EventPool {
 public:
  ~EventPool() {
    for (cudaEvent_t e : free_) (void)cudaEventDestroy(e);
  }
  cudaEvent_t take() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_.empty()) {
      cudaEvent_t e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    TPL_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }
  void give_back(cudaEvent_t e) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(e);
  }

 private:
  std::mutex mu_;
  std::vector<cudaEvent_t> free_;
};

// A completion event, back to its pool when the last holder (the Work, the watchdog's entry)
// lets go.
using SharedEvent = std::shared_ptr<CUevent_st>;

// The NCCL handle, shared with the watchdog's entries, which may outlive the communicator. Freed
// once: by ncclCommAbort at a deadline (watchdog thread) or ncclCommDestroy (destructor).
class NcclHandle {
 public:
  enum State : int { kLive, kAborted, kDestroyed };
  NcclHandle(ncclComm_t comm, int rank) : comm_(comm), rank_(rank) {}
  ncclComm_t comm() const { return comm_; }
  // Throws CommError once aborted: every call after the deadline, on the calling thread.
  void check_live(const char* what) const {
    TPL_CHECK_T(state_.load(std::memory_order_acquire) == kLive, CommError, (Where{"nccl", rank_}),
                what,
                ": the NCCL communicator was aborted when a collective passed its deadline "
                "(TPL_TIMEOUT); results of collectives in flight then are undefined");
  }
  void abort() {
    int live = kLive;
    if (!state_.compare_exchange_strong(live, kAborted)) return;
    TPL_NCCL_CHECK(ncclCommAbort(comm_), rank_);
  }
  void destroy() {
    int live = kLive;
    if (state_.compare_exchange_strong(live, kDestroyed)) (void)ncclCommDestroy(comm_);
  }

 private:
  ncclComm_t comm_;
  int rank_;
  std::atomic<int> state_{kLive};
};

class NcclWork final : public Work {
 public:
  NcclWork(SharedEvent done, cudaStream_t compute, std::shared_ptr<NcclHandle> handle,
           std::vector<Tensor> staging)
      : done_(std::move(done)),
        compute_(compute),
        handle_(std::move(handle)),
        staging_(std::move(staging)) {}
  ~NcclWork() override {
    // The staging blocks go back to the pool after this; the join orders their reuse.
    if (!joined_) (void)cudaStreamWaitEvent(compute_, done_.get(), 0);
    staging_.clear();
  }
  void wait() override {
    handle_->check_live("wait");
    TPL_CUDA_CHECK(cudaStreamWaitEvent(compute_, done_.get(), 0));
    joined_ = true;
  }
  bool test() override {
    handle_->check_live("test");
    const cudaError_t st = cudaEventQuery(done_.get());
    if (st == cudaErrorNotReady) return false;
    TPL_CUDA_CHECK(st);
    return true;
  }

 private:
  SharedEvent done_;
  cudaStream_t compute_;
  std::shared_ptr<NcclHandle> handle_;
  std::vector<Tensor> staging_;
  bool joined_ = false;
};

// "nccl group of 2 ranks (world ranks 0, 1)", as the MPI communicator names its groups.
std::string describe_group(const std::vector<int>& world_ranks) {
  const std::size_t n = world_ranks.size();
  std::string s = "nccl group of " + std::to_string(n) + " rank" + (n == 1 ? "" : "s");
  if (n == 0) return s;
  s += " (world ranks ";
  for (std::size_t i = 0; i < n && i < 16; ++i)
    s += (i ? ", " : "") + std::to_string(world_ranks[i]);
  return s + (n > 16 ? ", ...)" : ")");
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> boot, CudaRuntime& rt, Watchdog* watchdog)
      : boot_(std::move(boot)), rt_(rt), compute_(stream_of(&rt.stream())) {
    rank_ = boot_->rank();
    size_ = boot_->size();
    const Where w{"nccl", rank_};
    TPL_CUDA_CHECK(cudaGetDevice(&device_));
    // Failures before ncclCommInitRank are agreed, so no rank is left waiting in it.
    ncclUniqueId id{};
    const ncclResult_t id_st = rank_ == 0 ? ncclGetUniqueId(&id) : ncclSuccess;
    TPL_CHECK_T(boot_->all_true(id_st == ncclSuccess), CommError, w,
                "ncclGetUniqueId failed on rank 0", rank_ == 0 ? ": " : "",
                rank_ == 0 ? ncclGetErrorString(id_st) : "");
    Tensor bytes(DType::kI8, 1, static_cast<std::int64_t>(sizeof(id)));
    std::memcpy(bytes.data(), &id, sizeof(id));
    boot_->broadcast(bytes, 0);
    std::memcpy(&id, bytes.data(), sizeof(id));
    ncclComm_t comm = nullptr;
    TPL_NCCL_CHECK(ncclCommInitRank(&comm, size_, id, rank_), rank_);
    nccl_ = std::make_shared<NcclHandle>(comm, rank_);
    try {
      watch_with(watchdog);  // collective over boot_: first, before any one-rank failure
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
  bool progresses_async() const override { return true; }
  bool all_true(bool value) override { return boot_->all_true(value); }
  Watchdog* watchdog() const override { return watchdog_; }
  std::unique_ptr<Communicator> split(int color, int key) override {
    auto sub = boot_->split(color, key);
    if (!sub) return nullptr;
    return std::make_unique<NcclCommunicator>(std::move(sub), rt_, watchdog_);
  }

 protected:
  void do_barrier() override {
    nccl_->check_live("barrier");
    rt_.synchronize();
    TPL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    nccl_->check_live("barrier");  // a deadline may have passed while the host waited
    boot_->barrier();
  }

  WorkPtr do_iall_reduce(TensorView inout) override {
    Op op(*this, "all_reduce");
    void* p = op.in_place(inout);
    TPL_NCCL_CHECK(
        ncclAllReduce(p, p, count(inout), nccl_type(inout.dtype()), ncclSum, nccl(), stream_),
        rank_);
    return op.finish(bytes_of(inout));
  }
  WorkPtr do_ireduce_scatter(TensorView in, TensorView out) override {
    Op op(*this, "reduce_scatter");
    const void* src = op.input(in);
    void* dst = op.output(out);
    TPL_NCCL_CHECK(
        ncclReduceScatter(src, dst, count(out), nccl_type(in.dtype()), ncclSum, nccl(), stream_),
        rank_);
    return op.finish(bytes_of(in));
  }
  WorkPtr do_iall_gather(TensorView in, TensorView out, int dim) override {
    Op op(*this, "all_gather");
    const void* src = op.input(in);
    if (dim == 0) {
      TPL_NCCL_CHECK(
          ncclAllGather(src, op.output(out), count(in), nccl_type(in.dtype()), nccl(), stream_),
          rank_);
      return op.finish(bytes_of(in));
    }
    // dim 1: gather [size*R, C] row blocks, then block j -> columns [j*C, (j+1)*C) of out.
    op.check(out);
    Tensor rows = rt_.empty(in.dtype(), in.rows() * size_, in.cols());
    TPL_NCCL_CHECK(
        ncclAllGather(src, rows.data(), count(in), nccl_type(in.dtype()), nccl(), stream_), rank_);
    for (int j = 0; j < size_; ++j)
      op.copy_async(rows.view().row_slice(j * in.rows(), in.rows()),
                    out.col_slice(j * in.cols(), in.cols()));
    op.keep(std::move(rows));
    return op.finish(bytes_of(in));
  }
  WorkPtr do_iall_to_all(TensorView in, TensorView out) override {
    // Both views are contiguous (validated).
    Op op(*this, "all_to_all");
    const std::size_t chunk = count(in) / static_cast<std::size_t>(size_);
    const std::size_t bytes = chunk * dtype_size(in.dtype());
    const auto* src = static_cast<const char*>(op.input(in));
    auto* dst = static_cast<char*>(op.output(out));
    const ncclDataType_t t = nccl_type(in.dtype());
    TPL_NCCL_CHECK(ncclGroupStart(), rank_);
    for (int p = 0; p < size_; ++p) {
      TPL_NCCL_CHECK(ncclSend(src + p * bytes, chunk, t, p, nccl(), stream_), rank_);
      TPL_NCCL_CHECK(ncclRecv(dst + p * bytes, chunk, t, p, nccl(), stream_), rank_);
    }
    TPL_NCCL_CHECK(ncclGroupEnd(), rank_);
    return op.finish(bytes_of(in));
  }
  void do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts, TensorView out,
                       const std::vector<std::int64_t>& recv_counts) override {
    // Both views are contiguous (validated); stream-ordered like the others.
    Op op(*this, "all_to_all_v");
    const std::size_t es = dtype_size(in.dtype());
    const auto* src = static_cast<const char*>(op.input(in));
    auto* dst = static_cast<char*>(op.output(out));
    const ncclDataType_t t = nccl_type(in.dtype());
    std::size_t so = 0, ro = 0;
    TPL_NCCL_CHECK(ncclGroupStart(), rank_);
    for (int p = 0; p < size_; ++p) {
      const auto sc = static_cast<std::size_t>(send_counts[static_cast<std::size_t>(p)]);
      const auto rc = static_cast<std::size_t>(recv_counts[static_cast<std::size_t>(p)]);
      if (sc > 0) TPL_NCCL_CHECK(ncclSend(src + so * es, sc, t, p, nccl(), stream_), rank_);
      if (rc > 0) TPL_NCCL_CHECK(ncclRecv(dst + ro * es, rc, t, p, nccl(), stream_), rank_);
      so += sc;
      ro += rc;
    }
    TPL_NCCL_CHECK(ncclGroupEnd(), rank_);
    op.finish(so * es)->wait();
  }
  WorkPtr do_ibroadcast(TensorView buf, int root) override {
    Op op(*this, "broadcast");
    void* p = op.in_place(buf);
    TPL_NCCL_CHECK(ncclBroadcast(p, p, count(buf), nccl_type(buf.dtype()), root, nccl(), stream_),
                   rank_);
    return op.finish(bytes_of(buf));
  }

 private:
  static std::size_t count(const TensorView& v) { return static_cast<std::size_t>(v.numel()); }
  static std::size_t bytes_of(const TensorView& v) { return count(v) * dtype_size(v.dtype()); }
  ncclComm_t nccl() const { return nccl_->comm(); }

  // Registers the group with the watchdog when every rank has one (agreed, so the gather of
  // the world ranks below is collective on all of them or none).
  void watch_with(Watchdog* wd) {
    if (!boot_->all_true(wd != nullptr)) return;
    Tensor mine(DType::kI32, 1, 1);
    *static_cast<std::int32_t*>(mine.data()) = wd->world_rank();
    Tensor all(DType::kI32, 1, size_);
    boot_->all_gather(mine, all, 1);
    std::vector<int> world(static_cast<std::size_t>(size_));
    for (int r = 0; r < size_; ++r)
      world[static_cast<std::size_t>(r)] = static_cast<const std::int32_t*>(all.data())[r];
    desc_ = describe_group(world);
    key_ = wd->register_group(desc_, world);
    watchdog_ = wd;
  }

  // One enqueued collective: orders the comm stream after the runtime's stream, stages strided
  // views through contiguous pool blocks (copy-in before, copy-out after the collective), and
  // ends with the completion event handed to the Work.
  class Op {
   public:
    Op(NcclCommunicator& c, const char* name) : c_(c), name_(name) {
      c_.nccl_->check_live(name);
      check_device();
      TPL_CUDA_CHECK(cudaEventRecord(c_.input_ready_, c_.compute_));
      TPL_CUDA_CHECK(cudaStreamWaitEvent(c_.stream_, c_.input_ready_, 0));
    }
    const void* input(const TensorView& v) {
      check(v);
      if (v.contiguous()) return v.data();
      Tensor t = c_.rt_.empty(v.dtype(), v.rows(), v.cols());
      copy_async(v, t.view());
      return keep(std::move(t));
    }
    void* output(const TensorView& v) {
      check(v);
      if (v.contiguous()) return v.data();
      Tensor t = c_.rt_.empty(v.dtype(), v.rows(), v.cols());
      copy_back_.emplace_back(t.view(), v);
      return keep(std::move(t));
    }
    void* in_place(const TensorView& v) {
      check(v);
      if (v.contiguous()) return v.data();
      Tensor t = c_.rt_.empty(v.dtype(), v.rows(), v.cols());
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
    void* keep(Tensor t) {
      staging_.push_back(std::move(t));
      return staging_.back().data();
    }
    // `bytes`: what this rank contributes, for the deadline's line and the flight recorder.
    WorkPtr finish(std::size_t bytes) {
      for (auto& [from, to] : copy_back_) copy_async(from, to);
      std::shared_ptr<EventPool> pool = c_.events_;
      SharedEvent done(pool->take(), [pool](cudaEvent_t e) { pool->give_back(e); });
      TPL_CUDA_CHECK(cudaEventRecord(done.get(), c_.stream_));
      // Nothing runs while a CUDA graph is captured (its replays bypass the communicator), so
      // a captured collective is not watched.
      cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
      TPL_CUDA_CHECK(cudaStreamIsCapturing(c_.stream_, &capturing));
      if (Watchdog* wd = c_.watchdog_; wd && capturing == cudaStreamCaptureStatusNone) {
        const int device = c_.device_;
        std::shared_ptr<NcclHandle> handle = c_.nccl_;
        wd->watch_until(
            name_, &c_.desc_, ++c_.seq_, static_cast<std::int64_t>(bytes), c_.key_,
            [done, device] {
              // The watchdog's thread: the event's device made current there first.
              return cudaSetDevice(device) != cudaSuccess ||
                     cudaEventQuery(done.get()) != cudaErrorNotReady;
            },
            [handle] { handle->abort(); });
      }
      return std::make_unique<NcclWork>(std::move(done), c_.compute_, c_.nccl_,
                                        std::move(staging_));
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
    const char* name_;
    std::vector<Tensor> staging_;
    std::vector<std::pair<TensorView, TensorView>> copy_back_;
  };

  void release() {
    if (input_ready_) (void)cudaEventDestroy(input_ready_);
    if (stream_) {
      (void)cudaStreamSynchronize(stream_);
      (void)cudaStreamDestroy(stream_);
    }
    if (watchdog_) {
      watchdog_->poll();  // the drained stream's collectives retire now, not a tick later
      watchdog_->unregister_group(key_);
    }
    if (nccl_) nccl_->destroy();  // unless the deadline aborted it
    input_ready_ = nullptr;
    stream_ = nullptr;
    nccl_.reset();
    watchdog_ = nullptr;
  }

  std::unique_ptr<Communicator> boot_;
  CudaRuntime& rt_;
  cudaStream_t compute_;
  std::shared_ptr<EventPool> events_ = std::make_shared<EventPool>();
  int rank_ = 0, size_ = 1, device_ = 0;
  std::shared_ptr<NcclHandle> nccl_;
  Watchdog* watchdog_ = nullptr;  // not owned; nullptr: no deadline
  std::string desc_;
  std::uint64_t key_ = 0, seq_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t input_ready_ = nullptr;
};

}  // namespace

int select_device(Communicator& bootstrap) {
  const int rank = bootstrap.rank();
  const int devices = device_count();
  TPL_CHECK_T(bootstrap.all_true(devices > 0), Unsupported, (Where{"select_device", rank}),
              "a rank of the group has no CUDA device (this rank has ", devices, ")");
  // Node-local rank: how many lower ranks run on the same host.
  constexpr std::int64_t kName = 64;
  Tensor name(DType::kI8, 1, kName);
  (void)gethostname(static_cast<char*>(name.data()), kName - 1);
  Tensor all(DType::kI8, bootstrap.size(), kName);
  bootstrap.all_gather(name, all, 0);
  int local = 0;
  for (int r = 0; r < rank; ++r)
    if (std::memcmp(all.view().at(r, 0), name.data(), kName) == 0) ++local;
  const int device = local % devices;
  TPL_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, Runtime& rt) {
  return make_nccl_communicator(bootstrap, rt, bootstrap.watchdog());
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, Runtime& rt,
                                                     Watchdog* watchdog) {
  CudaRuntime& cuda = as_cuda(rt);
  // A private duplicate, so the NCCL communicator owns everything it uses.
  auto boot = bootstrap.split(0, bootstrap.rank());
  TPL_CHECK(boot != nullptr, (Where{"make_nccl_communicator", bootstrap.rank()}),
            "splitting the bootstrap communicator failed");
  return std::make_unique<NcclCommunicator>(std::move(boot), cuda, watchdog);
}

}  // namespace tpl::cuda

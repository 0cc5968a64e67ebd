#include "comm/shm_communicator.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "comm/node_layout.h"
#include "comm/shm_reduce.h"
#include "tpl/error.h"
#include "tpl/placement.h"

namespace tpl {

namespace {

constexpr std::size_t kControlBytes = 4096;  // one page: the control line, alone
constexpr int kMaxMembers = 64;              // shm_reduce's tail arrays

// A contiguous view of `v`: itself, or a staged copy.
struct Staged {
  TensorView view;
  Tensor copy;
  TensorView target;  // where to copy back (outputs), empty for inputs
  void flush() {
    if (!target.empty() && copy.numel() > 0) copy_into(copy.view(), target);
  }
};
Staged stage_in(TensorView v) {
  if (v.contiguous()) return {v, Tensor(), TensorView()};
  Staged s{TensorView(), Tensor::copy_of(v), TensorView()};
  s.view = s.copy.view();
  return s;
}
Staged stage_out(TensorView v, bool read_too) {
  if (v.contiguous()) return {v, Tensor(), TensorView()};
  Staged s{TensorView(), read_too ? Tensor::copy_of(v) : Tensor(v.dtype(), v.rows(), v.cols()), v};
  s.view = s.copy.view();
  return s;
}
std::byte* bytes(const TensorView& v) {
  return static_cast<std::byte*>(v.data());
}

}  // namespace

ShmCommunicator::ShmCommunicator(std::unique_ptr<MpiCommunicator> mpi, ShmOptions options)
    : mpi_(std::move(mpi)), options_(options), rank_(mpi_->rank()), size_(mpi_->size()) {
  const Where where{"shm", rank_};
  isa_ = detect_cpu().effective();
  desc_ = "shm" + mpi_->description().substr(3);
  // Every member must share this node (TPL_NODE_SPLIT parts count as nodes); the layout is the
  // same on every member, so they all throw alike.
  {
    auto watched = mpi_->watch("node_layout", 0);
    const NodeLayout layout = node_layout(*mpi_);
    if (layout.nodes != 1)
      TPL_THROW(ConfigError, where, "TPL_COMM=shm needs every rank of the group on one node, but ",
                "the group of ", size_, " ranks spans ", layout.describe(),
                "; use make_shm_communicator, which serves it by SHM within nodes and MPI ",
                "between them, or TPL_COMM=mpi");
  }
  if (!mpi_->all_true(size_ <= kMaxMembers))
    TPL_THROW(ConfigError, where, "TPL_COMM=shm serves groups of up to ", kMaxMembers,
              " ranks, not ", size_);
  const std::size_t per_rank = kControlBytes + 4 * options_.slot_bytes;
  MPI_Info info;
  MPI_Info_create(&info);
  MPI_Info_set(info, "alloc_shared_noncontig", "true");  // each rank's pages stay its own
  void* base = nullptr;
  auto watched = mpi_->watch("win_allocate_shared", per_rank);
  const int rc = MPI_Win_allocate_shared(static_cast<MPI_Aint>(per_rank), 1, info, mpi_->handle(),
                                         &base, &win_);
  MPI_Info_free(&info);
  if (!mpi_->all_true(rc == MPI_SUCCESS)) {
    if (rc == MPI_SUCCESS) MPI_Win_free(&win_);
    TPL_THROW(ConfigError, where, "cannot allocate the shared window: ", per_rank,
              " bytes per rank (4 slots of ", options_.slot_bytes,
              " bytes); check the size of /dev/shm");
  }
  bases_.resize(static_cast<std::size_t>(size_));
  for (int k = 0; k < size_; ++k) {
    MPI_Aint sz = 0;
    int disp = 0;
    void* p = nullptr;
    TPL_MPI_CHECK(MPI_Win_shared_query(win_, k, &sz, &disp, &p), rank_);
    bases_[static_cast<std::size_t>(k)] = static_cast<std::byte*>(p);
  }
  // A passive-target epoch for the window's lifetime: direct loads and stores are then allowed
  // by MPI's memory model; ordering comes from the control line's atomics.
  TPL_MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, win_), rank_);
  new (bases_[static_cast<std::size_t>(rank_)]) Control();
  mpi_->barrier();  // every control line is constructed before anyone reads one
}

ShmCommunicator::~ShmCommunicator() {
  if (win_ != MPI_WIN_NULL) {
    MPI_Win_unlock_all(win_);
    MPI_Win_free(&win_);
  }
}

std::unique_ptr<Communicator> ShmCommunicator::split(int color, int key) {
  std::unique_ptr<Communicator> sub = mpi_->split(color, key);
  if (!sub) return nullptr;
  std::unique_ptr<MpiCommunicator> m(static_cast<MpiCommunicator*>(sub.release()));
  return std::make_unique<ShmCommunicator>(std::move(m), options_);  // within this node
}

Watchdog::Scope ShmCommunicator::watch(const char* op, std::size_t bytes) {
  Watchdog* wd = mpi_->watchdog();
  if (!wd) return {};
  return wd->watch(op, &desc_, ++seq_, static_cast<std::int64_t>(bytes));
}

ShmCommunicator::Control* ShmCommunicator::control(int member) const {
  return std::launder(reinterpret_cast<Control*>(bases_[static_cast<std::size_t>(member)]));
}

std::byte* ShmCommunicator::slot(int member, int which, std::uint64_t round) const {
  const std::size_t index = static_cast<std::size_t>(2 * which) + (round % 2);
  return bases_[static_cast<std::size_t>(member)] + kControlBytes + index * options_.slot_bytes;
}

void ShmCommunicator::round(const char* what) {
  const std::uint64_t r = ++round_;
  control(rank_)->arrived.store(r, std::memory_order_release);
  const auto start = std::chrono::steady_clock::now();
  // The earlier of ShmOptions::timeout_s and the watchdog's deadline (TPL_TIMEOUT, --timeout;
  // 0 there means none), so that SHM, which knows who is late, usually reports first.
  const Watchdog* wd = mpi_->watchdog();
  const double wd_timeout = wd ? wd->timeout() : 0;
  const double timeout =
      wd_timeout > 0 ? std::min(wd_timeout, options_.timeout_s) : options_.timeout_s;
  const auto deadline = start + std::chrono::duration<double>(timeout);
  for (int k = 0; k < size_; ++k) {
    std::uint64_t spins = 0;
    while (control(k)->arrived.load(std::memory_order_acquire) < r) {
      // Spin briefly (the peer is usually a few hundred ns behind), then give the core away:
      // ranks may outnumber cores.
      if (++spins < 256) {
        _mm_pause();
        continue;
      }
      std::this_thread::yield();
      if ((spins & 1023) == 0 && std::chrono::steady_clock::now() > deadline) {
        std::string late;
        for (int j = 0; j < size_; ++j)
          if (control(j)->arrived.load(std::memory_order_acquire) < r)
            late += (late.empty() ? "" : ", ") + std::to_string(j);
        TPL_THROW(CommError, (Where{"shm", rank_}), what, ": member(s) ", late,
                  " of the group did not arrive within ", timeout, " s (round ", r, ")");
      }
    }
  }
}

void ShmCommunicator::reduce(const std::byte* const* src, DType dt, std::byte* dst,
                             std::size_t count) const {
  const int n = size_;
  if (dt == DType::kF32) {
    const float* s[kMaxMembers];
    for (int k = 0; k < n; ++k) s[k] = reinterpret_cast<const float*>(src[k]);
    shm::sum_f32(s, n, reinterpret_cast<float*>(dst), count, isa_);
    return;
  }
  if (dt == DType::kI32) {
    const std::int32_t* s[kMaxMembers];
    for (int k = 0; k < n; ++k) s[k] = reinterpret_cast<const std::int32_t*>(src[k]);
    shm::sum_i32(s, n, reinterpret_cast<std::int32_t*>(dst), count);
    return;
  }
  // 16-bit floats: widen each member's block to f32, sum in order, round once.
  constexpr std::size_t kBlock = 2048;
  std::vector<float>& wide = wide_;
  wide.resize(static_cast<std::size_t>(n + 1) * kBlock);
  const std::size_t es = dtype_size(dt);
  for (std::size_t at = 0; at < count; at += kBlock) {
    const std::size_t len = std::min(kBlock, count - at);
    const float* s[kMaxMembers];
    for (int k = 0; k < n; ++k) {
      float* w = wide.data() + static_cast<std::size_t>(k) * kBlock;
      convert_to_f32(src[k] + at * es, dt, w, len);
      s[k] = w;
    }
    float* acc = wide.data() + static_cast<std::size_t>(n) * kBlock;
    shm::sum_f32(s, n, acc, len, isa_);
    convert_from_f32(acc, dst + at * es, dt, len);
  }
}

void ShmCommunicator::do_all_reduce(TensorView inout) {
  if (size_ == 1 || inout.empty()) return;
  auto watched = watch("all_reduce", inout.nbytes());
  Staged io = stage_out(inout, true);
  const DType dt = inout.dtype();
  const std::size_t es = dtype_size(dt), total = static_cast<std::size_t>(inout.numel());
  const bool two_shot = total * es >= options_.two_shot_bytes;
  const std::size_t chunk = options_.slot_bytes / es;
  std::byte* data = bytes(io.view);
  const std::byte* src[kMaxMembers];
  for (std::size_t o = 0; o < total; o += chunk) {
    const std::size_t len = std::min(chunk, total - o);
    const std::uint64_t r = next_round();
    std::memcpy(slot(rank_, 0, r), data + o * es, len * es);
    round("all_reduce");
    for (int k = 0; k < size_; ++k) src[k] = slot(k, 0, r);
    if (!two_shot) {  // one-shot: every rank sums the whole chunk itself
      reduce(src, dt, data + o * es, len);
      continue;
    }
    // Two-shot: sum this rank's segment into its result slot, then gather every segment.
    const ShardRange mine = shard_range(static_cast<std::int64_t>(len), size_, rank_);
    for (int k = 0; k < size_; ++k) src[k] += mine.offset * static_cast<std::int64_t>(es);
    reduce(src, dt, slot(rank_, 1, r) + mine.offset * es, static_cast<std::size_t>(mine.size));
    round("all_reduce");
    for (int k = 0; k < size_; ++k) {
      const ShardRange seg = shard_range(static_cast<std::int64_t>(len), size_, k);
      std::memcpy(data + (o + seg.offset) * es, slot(k, 1, r) + seg.offset * es,
                  static_cast<std::size_t>(seg.size) * es);
    }
  }
  io.flush();
}

void ShmCommunicator::do_reduce_scatter(TensorView in, TensorView out) {
  if (in.empty()) return;
  if (size_ == 1) return copy_into(in, out);
  auto watched = watch("reduce_scatter", in.nbytes());
  Staged si = stage_in(in), so = stage_out(out, false);
  const DType dt = in.dtype();
  const std::size_t es = dtype_size(dt), block = static_cast<std::size_t>(out.numel());
  const std::size_t chunk = options_.slot_bytes / (es * static_cast<std::size_t>(size_));
  const std::byte* src[kMaxMembers];
  for (std::size_t o = 0; o < block; o += chunk) {
    const std::size_t len = std::min(chunk, block - o);
    const std::uint64_t r = next_round();
    for (int k = 0; k < size_; ++k)
      std::memcpy(slot(rank_, 0, r) + static_cast<std::size_t>(k) * len * es,
                  bytes(si.view) + (static_cast<std::size_t>(k) * block + o) * es, len * es);
    round("reduce_scatter");
    for (int k = 0; k < size_; ++k)
      src[k] = slot(k, 0, r) + static_cast<std::size_t>(rank_) * len * es;
    reduce(src, dt, bytes(so.view) + o * es, len);
  }
  so.flush();
}

bool ShmCommunicator::to_mpi(std::size_t bytes) const {
  // Same shapes on every member, so every member takes the same path.
  return size_ > 1 && options_.mpi_move_bytes > 0 && bytes >= options_.mpi_move_bytes;
}

void ShmCommunicator::do_all_gather(TensorView in, TensorView out, int dim) {
  if (in.empty()) return;
  if (size_ == 1) return copy_into(in, out);
  if (to_mpi(out.nbytes())) return mpi_->all_gather(in, out, dim);
  auto watched = watch("all_gather", out.nbytes());
  Staged si = stage_in(in), so = stage_out(out, false);
  const std::size_t es = dtype_size(in.dtype()), total = static_cast<std::size_t>(in.numel());
  const std::size_t cols = static_cast<std::size_t>(in.cols());
  const std::size_t chunk = options_.slot_bytes / es;
  std::byte* dst = bytes(so.view);
  for (std::size_t o = 0; o < total; o += chunk) {
    const std::size_t len = std::min(chunk, total - o);
    const std::uint64_t r = next_round();
    std::memcpy(slot(rank_, 0, r), bytes(si.view) + o * es, len * es);
    round("all_gather");
    for (int k = 0; k < size_; ++k) {
      const std::byte* from = slot(k, 0, r);
      if (dim == 0) {
        std::memcpy(dst + (static_cast<std::size_t>(k) * total + o) * es, from, len * es);
        continue;
      }
      // dim 1: member k's element e goes to row e / cols, column k * cols + e % cols.
      for (std::size_t e = o; e < o + len;) {
        const std::size_t row = e / cols, col = e % cols, run = std::min(cols - col, o + len - e);
        std::memcpy(dst + (row * cols * static_cast<std::size_t>(size_) +
                           static_cast<std::size_t>(k) * cols + col) *
                              es,
                    from + (e - o) * es, run * es);
        e += run;
      }
    }
  }
  so.flush();
}

void ShmCommunicator::do_all_to_all(TensorView in, TensorView out) {
  if (in.empty()) return;
  if (to_mpi(in.nbytes())) return mpi_->all_to_all(in, out);
  auto watched = watch("all_to_all", in.nbytes());
  Staged si = stage_in(in), so = stage_out(out, false);
  if (size_ == 1) {  // same element count, maybe another shape
    std::memcpy(bytes(so.view), bytes(si.view), in.nbytes());
    return so.flush();
  }
  const std::size_t es = dtype_size(in.dtype());
  const std::size_t piece = static_cast<std::size_t>(in.numel()) / static_cast<std::size_t>(size_);
  const std::size_t chunk = options_.slot_bytes / (es * static_cast<std::size_t>(size_));
  for (std::size_t o = 0; o < piece; o += chunk) {
    const std::size_t len = std::min(chunk, piece - o);
    const std::uint64_t r = next_round();
    for (int k = 0; k < size_; ++k)
      std::memcpy(slot(rank_, 0, r) + static_cast<std::size_t>(k) * len * es,
                  bytes(si.view) + (static_cast<std::size_t>(k) * piece + o) * es, len * es);
    round("all_to_all");
    for (int k = 0; k < size_; ++k)
      std::memcpy(bytes(so.view) + (static_cast<std::size_t>(k) * piece + o) * es,
                  slot(k, 0, r) + static_cast<std::size_t>(rank_) * len * es, len * es);
  }
  so.flush();
}

void ShmCommunicator::do_broadcast(TensorView buf, int root) {
  if (size_ == 1 || buf.empty()) return;
  if (to_mpi(buf.nbytes())) return mpi_->broadcast(buf, root);
  auto watched = watch("broadcast", buf.nbytes());
  Staged sb = stage_out(buf, rank_ == root);
  const std::size_t es = dtype_size(buf.dtype()), total = static_cast<std::size_t>(buf.numel());
  const std::size_t chunk = options_.slot_bytes / es;
  for (std::size_t o = 0; o < total; o += chunk) {
    const std::size_t len = std::min(chunk, total - o);
    const std::uint64_t r = next_round();
    if (rank_ == root) std::memcpy(slot(root, 0, r), bytes(sb.view) + o * es, len * es);
    round("broadcast");
    if (rank_ != root) std::memcpy(bytes(sb.view) + o * es, slot(root, 0, r), len * es);
  }
  if (rank_ != root) sb.flush();
}

void ShmCommunicator::do_barrier() {
  if (size_ == 1) return;
  auto watched = watch("barrier", 0);
  round("barrier");
}

WorkPtr ShmCommunicator::do_iall_reduce(TensorView inout) {
  do_all_reduce(inout);
  return std::make_unique<CompletedWork>();
}
WorkPtr ShmCommunicator::do_ireduce_scatter(TensorView in, TensorView out) {
  do_reduce_scatter(in, out);
  return std::make_unique<CompletedWork>();
}
WorkPtr ShmCommunicator::do_iall_gather(TensorView in, TensorView out, int dim) {
  do_all_gather(in, out, dim);
  return std::make_unique<CompletedWork>();
}
WorkPtr ShmCommunicator::do_iall_to_all(TensorView in, TensorView out) {
  do_all_to_all(in, out);
  return std::make_unique<CompletedWork>();
}
WorkPtr ShmCommunicator::do_ibroadcast(TensorView buf, int root) {
  do_broadcast(buf, root);
  return std::make_unique<CompletedWork>();
}

}  // namespace tpl

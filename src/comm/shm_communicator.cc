#include "comm/shm_communicator.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "comm/node_layout.h"
#include "tpl/error.h"

namespace tpl {

namespace {

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
  const CpuIsa isa = detect_cpu().effective();  // TPL_CPU_ISA errors before any collective
  desc_ = "shm" + mpi_->description().substr(3);
  if (Watchdog* wd = mpi_->watchdog()) key_ = wd->register_group(desc_, mpi_->world_ranks());
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
  if (!mpi_->all_true(size_ <= ShmGroup::kMaxMembers))
    TPL_THROW(ConfigError, where, "TPL_COMM=shm serves groups of up to ", ShmGroup::kMaxMembers,
              " ranks, not ", size_);
  // One page more than the member needs: OpenMPI's window segments start past a header (an
  // offset of 264 bytes was seen, which UBSan reported as the control line's misaligned
  // access), so each member starts at the next page boundary.
  constexpr std::size_t kPage = 4096;
  const std::size_t per_rank = ShmGroup::member_bytes(options_.slot_bytes) + kPage;
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
  std::vector<std::byte*> bases(static_cast<std::size_t>(size_));
  // pads[k]: how far member k's page boundary is into its segment here; pads[size_ + k] its
  // negation, so one MPI_MAX gives the largest and the smallest any rank sees.
  std::vector<int> pads(2 * static_cast<std::size_t>(size_));
  for (int k = 0; k < size_; ++k) {
    MPI_Aint sz = 0;
    int disp = 0;
    void* p = nullptr;
    TPL_MPI_CHECK(MPI_Win_shared_query(win_, k, &sz, &disp, &p), rank_);
    const int pad = static_cast<int>((kPage - reinterpret_cast<std::uintptr_t>(p) % kPage) % kPage);
    pads[static_cast<std::size_t>(k)] = pad;
    pads[static_cast<std::size_t>(size_ + k)] = -pad;
    bases[static_cast<std::size_t>(k)] = static_cast<std::byte*>(p) + pad;
  }
  // Every rank must find member k's line at the same bytes of its segment. The mappings keep
  // the offset within a page, so this holds; checked rather than assumed.
  TPL_MPI_CHECK(
      MPI_Allreduce(MPI_IN_PLACE, pads.data(), 2 * size_, MPI_INT, MPI_MAX, mpi_->handle()), rank_);
  for (int k = 0; k < size_; ++k)
    if (pads[static_cast<std::size_t>(k)] != -pads[static_cast<std::size_t>(size_ + k)]) {
      MPI_Win_free(&win_);
      TPL_THROW(BackendError, where, "the shared window's segment of rank ", k,
                " starts at different offsets within a page on different ranks");
    }
  // A passive-target epoch for the window's lifetime: direct loads and stores are then allowed
  // by MPI's memory model; ordering comes from the control line's atomics.
  TPL_MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, win_), rank_);
  ShmGroup::init_member(bases[static_cast<std::size_t>(rank_)]);
  // Each wait's deadline: the earlier of ShmOptions::timeout_s and the watchdog's (TPL_TIMEOUT,
  // --timeout; 0 there means none), so that SHM, which knows who is late, usually reports first.
  auto timeout = [this] {
    const Watchdog* wd = mpi_->watchdog();
    const double wd_timeout = wd ? wd->timeout() : 0;
    return wd_timeout > 0 ? std::min(wd_timeout, options_.timeout_s) : options_.timeout_s;
  };
  group_.emplace(std::move(bases), rank_, options_, isa, desc_, timeout);
  mpi_->barrier();  // every control line is constructed before anyone reads one
}

ShmCommunicator::~ShmCommunicator() {
  if (Watchdog* wd = mpi_->watchdog()) wd->unregister_group(key_);
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
  return wd->watch(op, &desc_, ++seq_, static_cast<std::int64_t>(bytes), key_);
}

void ShmCommunicator::do_all_reduce(TensorView inout) {
  if (size_ == 1 || inout.empty()) return;
  auto watched = watch("all_reduce", inout.nbytes());
  Staged io = stage_out(inout, true);
  group_->all_reduce(bytes(io.view), static_cast<std::size_t>(inout.numel()), inout.dtype());
  io.flush();
}

void ShmCommunicator::do_all_reduce_produced(TensorView out, const Producer& produce) {
  if (size_ == 1 || out.empty() || !out.contiguous() || out.nbytes() > options_.slot_bytes ||
      out.nbytes() < options_.two_shot_bytes)
    return Communicator::do_all_reduce_produced(out, produce);
  produce(TensorView(group_->addend_slot(), out.dtype(), out.rows(), out.cols()));
  auto watched = watch("all_reduce", out.nbytes());
  group_->all_reduce_addend(bytes(out), static_cast<std::size_t>(out.numel()), out.dtype());
}

void ShmCommunicator::do_reduce_scatter(TensorView in, TensorView out) {
  if (in.empty()) return;
  if (size_ == 1) return copy_into(in, out);
  auto watched = watch("reduce_scatter", in.nbytes());
  Staged si = stage_in(in), so = stage_out(out, false);
  group_->reduce_scatter(bytes(si.view), bytes(so.view), static_cast<std::size_t>(out.numel()),
                         in.dtype());
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
  group_->all_gather(bytes(si.view), bytes(so.view), static_cast<std::size_t>(in.numel()),
                     static_cast<std::size_t>(in.cols()), dim, in.dtype());
  so.flush();
}

void ShmCommunicator::do_all_to_all(TensorView in, TensorView out) {
  if (in.empty()) return;
  if (to_mpi(in.nbytes())) return mpi_->all_to_all(in, out);
  auto watched = watch("all_to_all", in.nbytes());
  Staged si = stage_in(in), so = stage_out(out, false);
  group_->all_to_all(bytes(si.view), bytes(so.view),
                     static_cast<std::size_t>(in.numel()) / static_cast<std::size_t>(size_),
                     in.dtype());
  so.flush();
}

void ShmCommunicator::do_broadcast(TensorView buf, int root) {
  if (size_ == 1 || buf.empty()) return;
  if (to_mpi(buf.nbytes())) return mpi_->broadcast(buf, root);
  auto watched = watch("broadcast", buf.nbytes());
  Staged sb = stage_out(buf, rank_ == root);
  group_->broadcast(bytes(sb.view), static_cast<std::size_t>(buf.numel()), buf.dtype(), root);
  if (rank_ != root) sb.flush();
}

void ShmCommunicator::do_barrier() {
  if (size_ == 1) return;
  auto watched = watch("barrier", 0);
  group_->barrier();
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
void ShmCommunicator::do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts,
                                      TensorView out,
                                      const std::vector<std::int64_t>& recv_counts) {
  mpi_->all_to_all_v(in, send_counts, out, recv_counts);
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

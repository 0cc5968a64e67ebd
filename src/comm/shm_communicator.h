// Communicator over shared memory for ranks of one node: an MPI-3 shared window
// (MPI_Win_allocate_shared), allocated once, holds per rank a control line and two pairs of
// data/result slots; collectives move data through the slots in chunks, so any message size
// runs in a fixed amount of shared memory. MPI owns the segment (no files of our own, no
// sockets) and still serves split() and all_true().
//
// The window's layout, the rounds that synchronise the ranks (release/acquire on each rank's
// control line), the fixed-order sums and the slot algorithms are ShmGroup's (shm_group.h),
// which knows nothing of MPI, so that a thread harness can run them under ThreadSanitizer. This
// class owns the window, checks the group, stages strided views, watches each collective on the
// MPI group's watchdog and hands large pure data movement (no sums) to the MPI communicator
// underneath.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "comm/mpi_communicator.h"
#include "comm/shm_group.h"
#include "tpl/communicator.h"
#include "tpl/shm.h"

namespace tpl {

class ShmCommunicator final : public Communicator {
 public:
  // Collective over `mpi`. ConfigError (the same on every rank) when its ranks do not all share
  // this node, or when the window cannot be allocated.
  explicit ShmCommunicator(std::unique_ptr<MpiCommunicator> mpi, ShmOptions options = {});
  ~ShmCommunicator() override;
  ShmCommunicator(const ShmCommunicator&) = delete;
  ShmCommunicator& operator=(const ShmCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "shm"; }
  std::unique_ptr<Communicator> split(int color, int key) override;
  // kMpi: the MPI communicator underneath, split.
  std::unique_ptr<Communicator> split_as(int color, int key, CommKind kind) override {
    return kind == CommKind::kMpi ? mpi_->split(color, key) : split(color, key);
  }
  bool all_true(bool value) override { return mpi_->all_true(value); }
  Watchdog* watchdog() const override { return mpi_->watchdog(); }

 protected:
  void do_all_reduce(TensorView inout) override;
  // The addend is produced straight into this rank's data slot when the output is contiguous,
  // fits one slot and takes the two-shot algorithm: from two_shot_bytes to slot_bytes (256 KiB
  // to 1 MiB by default, 16 to 64 tokens of 4096 f32 features), where that measured 5-7 %
  // faster than the copy-in (docs/communication.md). Otherwise the default: one-shot sums in
  // place in the caller's buffer, 4-10 % faster than summing from the slot into a third one,
  // and a GEMM split into slot-sized row blocks would lose more than the copy costs.
  void do_all_reduce_produced(TensorView out, const Producer& produce) override;
  void do_reduce_scatter(TensorView in, TensorView out) override;
  void do_all_gather(TensorView in, TensorView out, int dim) override;
  void do_all_to_all(TensorView in, TensorView out) override;
  void do_broadcast(TensorView buf, int root) override;
  // Unequal pieces go over MPI (rare: FlashComm2 with uneven head slices).
  void do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts, TensorView out,
                       const std::vector<std::int64_t>& recv_counts) override;
  void do_barrier() override;

  // The collectives complete before these return (a valid schedule: every member starts them
  // in the same order); the Work is already complete.
  WorkPtr do_iall_reduce(TensorView inout) override;
  WorkPtr do_ireduce_scatter(TensorView in, TensorView out) override;
  WorkPtr do_iall_gather(TensorView in, TensorView out, int dim) override;
  WorkPtr do_iall_to_all(TensorView in, TensorView out) override;
  WorkPtr do_ibroadcast(TensorView buf, int root) override;

 private:
  // In flight on the MPI group's watchdog until the scope ends (tpl/watchdog.h).
  Watchdog::Scope watch(const char* op, std::size_t bytes);
  // Whether a data-movement collective of `bytes` goes to MPI (ShmOptions::mpi_move_bytes).
  bool to_mpi(std::size_t bytes) const;

  std::unique_ptr<MpiCommunicator> mpi_;
  ShmOptions options_;
  int rank_ = 0, size_ = 1;
  MPI_Win win_ = MPI_WIN_NULL;
  std::string desc_;               // "shm group of 2 ranks (world ranks 0, 1)"
  std::uint64_t seq_ = 0;          // this group's watched collectives
  std::uint64_t key_ = 0;          // the watchdog's key for this group (progress board)
  std::optional<ShmGroup> group_;  // over the window, once it is mapped
};

}  // namespace tpl

// Communicator over shared memory for ranks of one node: an MPI-3 shared window
// (MPI_Win_allocate_shared), allocated once, holds per rank a control line and two pairs of
// data/result slots; collectives move data through the slots in chunks, so any message size
// runs in a fixed amount of shared memory. MPI owns the segment (no files of our own, no
// sockets) and still serves split() and all_true().
//
// Synchronisation: each chunk is a "round". A rank writes its part into its slot of parity
// round % 2, then stores the round number into its control line with release order; readers
// load every member's line with acquire order until it reaches the round, so the writes
// happen-before the reads. A slot of parity p is written again two rounds later, only after the
// writer has seen every member arrive at the round in between, i.e. after every reader finished
// with it. Waits spin briefly, then yield, and give up after a deadline with a CommError that
// names the collective and the ranks that have not arrived.
//
// Sums: every element is summed in member order 0, 1, ..., n-1 (shm_reduce.h), whatever the
// size, chunking or algorithm (one-shot below ShmOptions::two_shot_bytes, reduce-scatter +
// all-gather above), so results are identical on every rank and between fused and unfused
// paths. Large pure data movement (no sums) goes to the MPI communicator underneath.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "comm/mpi_communicator.h"
#include "tpl/communicator.h"
#include "tpl/cpu_isa.h"
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
  bool all_true(bool value) override { return mpi_->all_true(value); }
  Watchdog* watchdog() const override { return mpi_->watchdog(); }

 protected:
  void do_all_reduce(TensorView inout) override;
  void do_reduce_scatter(TensorView in, TensorView out) override;
  void do_all_gather(TensorView in, TensorView out, int dim) override;
  void do_all_to_all(TensorView in, TensorView out) override;
  void do_broadcast(TensorView buf, int root) override;
  void do_barrier() override;

  // The collectives complete before these return (a valid schedule: every member starts them
  // in the same order); the Work is already complete.
  WorkPtr do_iall_reduce(TensorView inout) override;
  WorkPtr do_ireduce_scatter(TensorView in, TensorView out) override;
  WorkPtr do_iall_gather(TensorView in, TensorView out, int dim) override;
  WorkPtr do_iall_to_all(TensorView in, TensorView out) override;
  WorkPtr do_ibroadcast(TensorView buf, int root) override;

 private:
  struct alignas(64) Control {
    std::atomic<std::uint64_t> arrived{0};
  };
  Control* control(int member) const;
  std::byte* slot(int member, int which, std::uint64_t round) const;  // which: 0 data, 1 result
  // Publishes this rank's arrival at the next round and waits for every member's.
  void round(const char* what);
  // In flight on the MPI group's watchdog until the scope ends (tpl/watchdog.h).
  Watchdog::Scope watch(const char* op, std::size_t bytes);
  // Whether a data-movement collective of `bytes` goes to MPI (ShmOptions::mpi_move_bytes).
  bool to_mpi(std::size_t bytes) const;
  std::uint64_t next_round() const { return round_ + 1; }
  // dst = sum over members of src[k], in member order, in dtype `dt`.
  void reduce(const std::byte* const* src, DType dt, std::byte* dst, std::size_t count) const;

  std::unique_ptr<MpiCommunicator> mpi_;
  ShmOptions options_;
  int rank_ = 0, size_ = 1;
  MPI_Win win_ = MPI_WIN_NULL;
  std::vector<std::byte*> bases_;
  std::uint64_t round_ = 0;
  std::string desc_;       // "shm group of 2 ranks (world ranks 0, 1)"
  std::uint64_t seq_ = 0;  // this group's watched collectives
  CpuIsa isa_ = CpuIsa::kSse41;
  mutable std::vector<float> wide_;  // 16-bit sums: the members' blocks widened to f32
};

}  // namespace tpl

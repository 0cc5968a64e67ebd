// Communicator over an MPI communicator (OpenMPI). Collectives are MPI's own; bf16/f16 sums
// are staged through f32 buffers (one rounding, see docs/communication.md).
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tpl/communicator.h"
#include "tpl/watchdog.h"

namespace tpl {

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed with MPI_Comm_free unless it is MPI_COMM_WORLD/SELF).
  // With a watchdog, every collective (and split) is watched against its deadline; groups
  // split from this one share it. `node_part`: which TPL_NODE_SPLIT part of its host this process
  // is in (node_layout.h); groups split from this one keep it.
  explicit MpiCommunicator(MPI_Comm comm, Watchdog* watchdog = nullptr, int node_part = 0);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  std::unique_ptr<Communicator> split(int color, int key) override;
  // kShm: an SHM communicator over the sub-group (make_node_communicator: shm+mpi across nodes).
  std::unique_ptr<Communicator> split_as(int color, int key, CommKind kind) override;
  bool all_true(bool value) override;
  MPI_Comm handle() const { return comm_; }
  Watchdog* watchdog() const override { return watchdog_; }
  int node_part() const { return node_part_; }
  // "mpi group of 2 ranks (world ranks 0, 1)", as the deadline diagnostics name it.
  const std::string& description() const { return desc_; }
  const std::vector<int>& world_ranks() const { return world_ranks_; }
  // In flight until the scope ends (nothing when there is no watchdog).
  Watchdog::Scope watch(const char* op, std::size_t bytes);

 protected:
  void do_all_reduce(TensorView inout) override;
  void do_reduce_scatter(TensorView in, TensorView out) override;
  void do_all_gather(TensorView in, TensorView out, int dim) override;
  void do_all_to_all(TensorView in, TensorView out) override;
  void do_broadcast(TensorView buf, int root) override;
  void do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts, TensorView out,
                       const std::vector<std::int64_t>& recv_counts) override;
  void do_barrier() override;

  WorkPtr do_iall_reduce(TensorView inout) override;
  WorkPtr do_ireduce_scatter(TensorView in, TensorView out) override;
  WorkPtr do_iall_gather(TensorView in, TensorView out, int dim) override;
  WorkPtr do_iall_to_all(TensorView in, TensorView out) override;
  WorkPtr do_ibroadcast(TensorView buf, int root) override;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  Watchdog* watchdog_ = nullptr;
  int node_part_ = 0;
  std::string desc_;
  std::vector<int> world_ranks_;       // the members' world ranks (empty if MPI cannot say)
  std::uint64_t key_ = 0;              // the watchdog's key for this group (progress board)
  std::atomic<std::uint64_t> seq_{0};  // this group's watched collectives
};

}  // namespace tpl

// Checks an MPI return code; names the call, the error string and the rank.
#define TPL_MPI_CHECK(call, rank)                                    \
  do {                                                               \
    int tpl_rc_ = (call);                                            \
    if (tpl_rc_ != MPI_SUCCESS) {                                    \
      char tpl_msg_[MPI_MAX_ERROR_STRING];                           \
      int tpl_len_ = 0;                                              \
      MPI_Error_string(tpl_rc_, tpl_msg_, &tpl_len_);                \
      TPL_THROW(::tpl::CommError, (::tpl::Where{"mpi", (rank)}),     \
                #call " failed: ", std::string(tpl_msg_, tpl_len_)); \
    }                                                                \
  } while (0)

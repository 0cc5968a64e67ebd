// Communicator for a group that spans nodes ("shm+mpi"): shared memory within each node, MPI
// between the nodes' first ranks (the leaders). Built by make_shm_communicator when the group's
// ranks sit on more than one node (node_layout.h) and each node's ranks are consecutive.
//
// Sums stay the left-to-right fold over members 0..n-1, bit for bit the single-node SHM result,
// by a chain over the nodes in order: the leader of node j receives the fold of every rank
// before its node (the prefix) from leader j-1, adds its own values to it (the fold's next
// step, as the leader is the node's first rank), and the node's SHM all-reduce folds the other
// members on top, left to right. Node j's result is the prefix of node j+1. The last node then
// holds the total, which goes back to the leaders by MPI and to their nodes by SHM. The chain
// runs in chunks, so node j+1 works on a chunk while node j works on the next, and the total's
// chunks travel back while later ones travel on. 16-bit floats
// are widened to f32 first and rounded once at the end, as on one node.
//
// Data movement (all-gather, all-to-all, broadcast) is MPI's over the whole group: it has no
// sums whose order matters, and OpenMPI already moves data within a node by shared memory.
#pragma once

#include <memory>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/node_layout.h"
#include "tpl/communicator.h"
#include "tpl/shm.h"

namespace tpl {

class HierCommunicator final : public Communicator {
 public:
  // Collective over `mpi`, whose layout is `layout` (consecutive nodes, at least two).
  HierCommunicator(std::unique_ptr<MpiCommunicator> mpi, const NodeLayout& layout,
                   ShmOptions options);

  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }
  std::string name() const override { return "shm+mpi"; }
  std::unique_ptr<Communicator> split(int color, int key) override;
  // kMpi: the MPI communicator underneath, split.
  std::unique_ptr<Communicator> split_as(int color, int key, CommKind kind) override {
    return kind == CommKind::kMpi ? mpi_->split(color, key) : split(color, key);
  }
  bool all_true(bool value) override { return mpi_->all_true(value); }
  Watchdog* watchdog() const override { return mpi_->watchdog(); }
  int nodes() const { return static_cast<int>(first_.size()); }

 protected:
  void do_all_reduce(TensorView inout) override;
  void do_reduce_scatter(TensorView in, TensorView out) override;
  void do_all_gather(TensorView in, TensorView out, int dim) override;
  void do_all_to_all(TensorView in, TensorView out) override;
  void do_broadcast(TensorView buf, int root) override;
  // Unequal pieces go over MPI (rare: FlashComm2 with uneven head slices).
  void do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts, TensorView out,
                       const std::vector<std::int64_t>& recv_counts) override;
  void do_barrier() override;

  // Sums complete before these return (as SHM's); data movement is MPI's own async.
  WorkPtr do_iall_reduce(TensorView inout) override;
  WorkPtr do_ireduce_scatter(TensorView in, TensorView out) override;
  WorkPtr do_iall_gather(TensorView in, TensorView out, int dim) override;
  WorkPtr do_iall_to_all(TensorView in, TensorView out) override;
  WorkPtr do_ibroadcast(TensorView buf, int root) override;

 private:
  // Folds `w` (contiguous f32 or i32) over the group by the chain above; afterwards the last
  // node's members hold the total in `w`, the others their node's partial fold. With `back` not
  // empty, the other nodes' leaders also receive the total there (same shape as w), each chunk
  // sent as soon as the last node has it; the last node passes any non-empty view.
  void chain(TensorView w, TensorView back);
  bool leader() const { return leaders_ != nullptr; }
  int last() const { return nodes() - 1; }

  std::unique_ptr<MpiCommunicator> mpi_;
  ShmOptions options_;
  std::unique_ptr<Communicator> local_;       // SHM over this rank's node
  std::unique_ptr<MpiCommunicator> leaders_;  // the first rank of every node; null elsewhere
  int node_ = 0;
  std::vector<int> first_, count_;  // per node: first group rank, number of ranks
};

// make_shm_communicator over an MPI group it takes: SHM on one node, shm+mpi across nodes.
std::unique_ptr<Communicator> make_node_communicator(std::unique_ptr<MpiCommunicator> mpi,
                                                     const ShmOptions& options);

}  // namespace tpl

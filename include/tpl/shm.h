// The shared-memory communicator (src/comm/shm_communicator.h): collectives for ranks of one
// node through an MPI-3 shared window, with every sum in member order 0..n-1
// (docs/communication.md). Selected for the world by TPL_COMM=shm (MpiSession::world); groups split
// from it are SHM too.
#pragma once

#include <cstddef>
#include <memory>

#include "tpl/communicator.h"

namespace tpl {

struct ShmOptions {
  // Per slot; 4 slots per rank (docs/performance.md). A multiple of 64 of at least 4096, else
  // make_shm_communicator throws InvalidArgument on every rank.
  std::size_t slot_bytes = 1 << 20;
  std::size_t two_shot_bytes = 256 << 10;  // all-reduce: two-shot at or above this
  // All-gather, all-to-all and broadcast of at least this many bytes go to MPI: they only move
  // data, and OpenMPI's single-copy path (CMA) needs one copy where the slots need two. 0 = never.
  std::size_t mpi_move_bytes = 64 << 10;
  double timeout_s = 300;  // per wait; then CommError naming the members that did not arrive
};

// An SHM communicator over the ranks of `group`, which must be an MPI communicator (collective
// over it). When the ranks span nodes (TPL_NODE_SPLIT=k counts each host as k), it is "shm+mpi":
// SHM within each node, MPI between the nodes, with the same member-order sums
// (docs/communication.md). ConfigError, the same on every rank, when the group is not MPI, when
// a node's ranks are not consecutive in the group, or when the window cannot be allocated;
// Unsupported when the build has no MPI.
std::unique_ptr<Communicator> make_shm_communicator(Communicator& group,
                                                    const ShmOptions& options = {});

}  // namespace tpl

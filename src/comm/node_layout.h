// Which ranks of an MPI group share a node. The node of a process is what
// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) says, cut further into TPL_NODE_SPLIT=k parts of
// consecutive ranks (k "nodes" per host), so the hierarchical path runs and is tested on one
// machine. The cut is made once per process, over the world's ranks of each host
// (MpiSession), so a group's layout does not depend on how it was split.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"

namespace tpl {

struct NodeLayout {
  // node_of[r]: the node index of group rank r, numbered 0, 1, ... in order of first appearance.
  std::vector<int> node_of;
  int nodes = 1;
  // Whether every node's ranks are consecutive in group order (mpirun's default --map-by slot
  // or core); the hierarchical sums need it.
  bool consecutive = true;
  // Group ranks of node `node`, in order.
  std::vector<int> members(int node) const;
  // "2 nodes: ranks 0-1, 2-3" (ranges where consecutive, else lists).
  std::string describe() const;
};

// TPL_NODE_SPLIT (default 1): parts per host. ConfigError for a malformed value.
int node_split_from_env();

// The part of its host this process is in, 0..k-1 with k = TPL_NODE_SPLIT: its local rank on
// the host's share of `world` (MPI_COMM_WORLD), cut into k consecutive blocks. Collective over
// `world`.
int node_part_of_process(MPI_Comm world, int split);

// Collective over `group`: every member gets the same layout.
NodeLayout node_layout(const MpiCommunicator& group);

}  // namespace tpl

#include "comm/node_layout.h"

#include <cstdlib>
#include <map>
#include <string>

#include "tpl/error.h"

namespace tpl {

std::vector<int> NodeLayout::members(int node) const {
  std::vector<int> out;
  for (int r = 0; r < static_cast<int>(node_of.size()); ++r)
    if (node_of[static_cast<std::size_t>(r)] == node) out.push_back(r);
  return out;
}

std::string NodeLayout::describe() const {
  std::string s = std::to_string(nodes) + (nodes == 1 ? " node: ranks " : " nodes: ranks ");
  for (int j = 0; j < nodes; ++j) {
    const std::vector<int> m = members(j);
    if (j) s += "; ";
    const bool run = consecutive && m.size() > 1;
    if (run) {
      s += std::to_string(m.front()) + "-" + std::to_string(m.back());
      continue;
    }
    for (std::size_t i = 0; i < m.size(); ++i) s += (i ? "," : "") + std::to_string(m[i]);
  }
  return s;
}

int node_split_from_env() {
  const char* env = std::getenv("TPL_NODE_SPLIT");
  if (!env || !*env) return 1;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  if (*end != '\0' || v < 1 || v > 4096)
    TPL_THROW(ConfigError, (Where{"TPL_NODE_SPLIT"}),
              "TPL_NODE_SPLIT must be a whole number of parts per host, 1 to 4096, got '", env,
              "'");
  return static_cast<int>(v);
}

int node_part_of_process(MPI_Comm world, int split) {
  if (split <= 1) return 0;
  int rank = 0;
  MPI_Comm_rank(world, &rank);
  MPI_Comm host = MPI_COMM_NULL;
  TPL_MPI_CHECK(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &host), rank);
  int local = 0, local_size = 1;
  MPI_Comm_rank(host, &local);
  MPI_Comm_size(host, &local_size);
  MPI_Comm_free(&host);
  // Consecutive blocks, as even as shard_range makes them: part = floor(local * k / size).
  return static_cast<int>(static_cast<long long>(local) * split / local_size);
}

NodeLayout node_layout(const MpiCommunicator& group) {
  const int rank = group.rank(), size = group.size();
  MPI_Comm host = MPI_COMM_NULL;
  TPL_MPI_CHECK(
      MPI_Comm_split_type(group.handle(), MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &host), rank);
  // A host is named by the lowest group rank on it; a node by (host, part of the host).
  int host_id = rank;
  TPL_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &host_id, 1, MPI_INT, MPI_MIN, host), rank);
  MPI_Comm_free(&host);
  const long long mine[2] = {host_id, group.node_part()};
  std::vector<long long> all(2 * static_cast<std::size_t>(size));
  TPL_MPI_CHECK(MPI_Allgather(mine, 2, MPI_LONG_LONG, all.data(), 2, MPI_LONG_LONG, group.handle()),
                rank);
  NodeLayout layout;
  layout.node_of.resize(static_cast<std::size_t>(size));
  std::map<std::pair<long long, long long>, int> index;
  int last = -1;
  for (int r = 0; r < size; ++r) {
    const auto key = std::make_pair(all[2 * static_cast<std::size_t>(r)],
                                    all[2 * static_cast<std::size_t>(r) + 1]);
    auto [it, fresh] = index.emplace(key, static_cast<int>(index.size()));
    // A node seen before, but not on the previous rank: its ranks are not consecutive.
    if (!fresh && it->second != last) layout.consecutive = false;
    layout.node_of[static_cast<std::size_t>(r)] = last = it->second;
  }
  layout.nodes = static_cast<int>(index.size());
  return layout;
}

}  // namespace tpl

// Whether an overlap worker gets a core of its own (tpl/comm_worker.h). Apart from the worker
// itself, so that the thread harnesses (tests/comm, tsan) build comm_worker.cc without MPI.
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <string>
#include <thread>

#include "tpl/comm_worker.h"
#include "tpl/communicator.h"
#include "tpl/tensor.h"

namespace tpl {

bool worker_has_spare_core(int usable_cores, int gemm_threads) {
  return usable_cores > std::max(1, gemm_threads);
}

bool worker_has_spare_core(Communicator& world) {
  std::array<char, 256> host{};
  if (gethostname(host.data(), host.size() - 1) != 0) host[0] = '\0';
  const std::size_t h = std::hash<std::string>{}(std::string(host.data()));
  Tensor mine(DType::kI32, 1, 2), all(DType::kI32, world.size(), 2);
  mine.ptr<std::int32_t>()[0] = static_cast<std::int32_t>(h & 0x7fffffff);
  mine.ptr<std::int32_t>()[1] = static_cast<std::int32_t>((h >> 32) & 0x7fffffff);
  world.all_gather(mine, all, 0);
  int here = 0;
  for (int r = 0; r < world.size(); ++r)
    here += all.ptr<std::int32_t>()[2 * r] == mine.ptr<std::int32_t>()[0] &&
            all.ptr<std::int32_t>()[2 * r + 1] == mine.ptr<std::int32_t>()[1];
  cpu_set_t set;
  const int affinity = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  const int host_cores = std::max(1u, std::thread::hardware_concurrency());
  const int usable = std::min(affinity, std::max(1, host_cores / std::max(1, here)));
  // Every rank must take the same path: a fused path's chunked collectives do not match an
  // unfused one's single collective.
  return world.all_true(worker_has_spare_core(usable, omp_get_max_threads()));
}

}  // namespace tpl

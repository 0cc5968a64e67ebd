// This machine, as a profile records it (tpl/profile.h); the JSON form is profile_json.cc.
#include <omp.h>
#include <sched.h>

#include <algorithm>

#include "tpl/backends.h"
#include "tpl/comm_worker.h"
#include "tpl/cpu_isa.h"
#include "tpl/profile.h"

namespace tpl {

bool MachineInfo::spare_core() const {
  return worker_has_spare_core(std::max(1, cores / std::max(1, ranks)), omp_get_max_threads());
}

MachineInfo this_machine(int ranks) {
  const CpuInfo cpu = detect_cpu();
  MachineInfo m;
  m.cpu = cpu.model;
  m.isa = cpu_isa_name(cpu.effective());
  m.mpi = mpi_library_version();
  cpu_set_t set;
  m.cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  m.ranks = ranks;
  return m;
}

}  // namespace tpl

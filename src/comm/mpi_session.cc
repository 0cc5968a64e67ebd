#include "comm/mpi_communicator.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "comm/node_layout.h"
#include "tpl/backends.h"
#include "tpl/error.h"
#include "tpl/shm.h"

namespace tpl {
namespace {

// The deadline's action: one line, the flight recorder if asked for, then the whole job goes.
void on_expiry(const std::string& line, const Watchdog& wd) {
  std::string where;
  if (const char* dir = std::getenv("TPL_DUMP_DIR"); dir && *dir) {
    const std::string path =
        std::string(dir) + "/tplinear-flight-rank" + std::to_string(wd.world_rank()) + ".json";
    if (std::FILE* f = std::fopen(path.c_str(), "w")) {
      const std::string json = wd.dump_json();
      std::fwrite(json.data(), 1, json.size(), f);
      std::fclose(f);
      where = "; flight recorder: " + path;
    } else {
      where = "; cannot write the flight recorder to " + path;
    }
  }
  std::fprintf(stderr, "tplinear: error: %s%s; aborting the job\n", line.c_str(), where.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 3);
  std::_Exit(3);  // MPI_Abort does not return; if it did, the job must still end
}

}  // namespace

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    TPL_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &thread_level_), -1);
    owns_ = true;
  } else {
    MPI_Query_thread(&thread_level_);
  }
  // Errors come back as return codes, which TPL_MPI_CHECK turns into CommError.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  double timeout = 300;
  try {
    timeout = Watchdog::timeout_from_env(timeout);
  } catch (const ConfigError& e) {
    timeout_error_ = e.what();  // thrown by world(), where the caller handles errors
  }
  try {
    watchdog_ = std::make_unique<Watchdog>(timeout, rank, on_expiry);
  } catch (const ConfigError& e) {  // a malformed TPL_FAULT_* setting
    timeout_error_ = e.what();
  }
  // Once per process, over the world's ranks of each host, so that every group agrees on which
  // ranks share a node however it was split (comm/node_layout.h). Every rank reads the same
  // setting, so every rank takes part in the collective or none does.
  try {
    node_part_ = node_part_of_process(MPI_COMM_WORLD, node_split_from_env());
  } catch (const ConfigError& e) {
    if (timeout_error_.empty()) timeout_error_ = e.what();
  }
}

MpiSession::~MpiSession() {
  if (!owns_) return;
  // MPI_Finalize waits for every rank; a stalled peer would hold this one here forever.
  std::string what = "MPI_Finalize of the world";
  Watchdog::Scope s = watchdog_ ? watchdog_->watch("finalize", &what, 1, 0) : Watchdog::Scope();
  MPI_Finalize();
}

std::unique_ptr<MpiCommunicator> MpiSession::dup_of(int fortran_handle) const {
  if (!timeout_error_.empty()) throw ConfigError(timeout_error_);
  const MPI_Comm comm = MPI_Comm_f2c(fortran_handle);
  TPL_CHECK_T(comm != MPI_COMM_NULL, ConfigError, (Where{"MpiSession"}),
              "the MPI communicator given (Fortran handle ", fortran_handle, ") is MPI_COMM_NULL");
  MPI_Comm dup;
  TPL_MPI_CHECK(MPI_Comm_dup(comm, &dup), -1);
  return std::make_unique<MpiCommunicator>(dup, watchdog_.get(), node_part_);
}

std::unique_ptr<Communicator> MpiSession::mpi_world() const {
  return dup_of(MPI_Comm_c2f(MPI_COMM_WORLD));
}

std::unique_ptr<Communicator> MpiSession::world(std::string* why) const {
  return world_of(MPI_Comm_c2f(MPI_COMM_WORLD), why);
}

std::unique_ptr<Communicator> MpiSession::world_of(int mpi_comm_fortran_handle,
                                                   std::string* why) const {
  std::unique_ptr<MpiCommunicator> mpi = dup_of(mpi_comm_fortran_handle);
  // TPL_COMM: which communicator serves the world and every group split from it
  // (docs/communication.md).
  const char* env = std::getenv("TPL_COMM");
  const std::string comm = env && *env ? env : "auto";
  auto say = [&](const std::string& s) {
    if (why) *why = s;
  };
  if (comm == "mpi") {
    say("mpi (TPL_COMM=mpi)");
    return mpi;
  }
  if (comm == "shm") {
    auto shm = make_shm_communicator(*mpi);
    say(shm->name() + " (TPL_COMM=shm)");
    return shm;
  }
  if (comm != "auto")
    TPL_THROW(ConfigError, (Where{"TPL_COMM", mpi->rank()}),
              "TPL_COMM must be mpi, shm or auto, got '", comm, "'");
  // auto: SHM when the ranks of each host have a CPU each, within one node or, with each
  // node's ranks consecutive, as shm+mpi across nodes. SHM waits spin (then yield), which costs
  // nothing on a core of one's own and steals time from a peer's GEMM when ranks outnumber the
  // CPUs; MPI's blocking paths are then the better neighbour.
  MPI_Comm host = MPI_COMM_NULL;
  TPL_MPI_CHECK(
      MPI_Comm_split_type(mpi->handle(), MPI_COMM_TYPE_SHARED, mpi->rank(), MPI_INFO_NULL, &host),
      mpi->rank());
  int host_size = 0;
  MPI_Comm_size(host, &host_size);
  MPI_Comm_free(&host);
  const NodeLayout layout = node_layout(*mpi);
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  const bool own_cpu = mpi->all_true(cpus >= host_size);
  const std::string ranks = std::to_string(mpi->size()) + " rank" + (mpi->size() > 1 ? "s" : "");
  const std::string where = layout.nodes == 1 ? "on one node" : "on " + layout.describe();
  if (mpi->size() > 1 && own_cpu && layout.consecutive) {
    try {
      auto shm = make_shm_communicator(*mpi);
      say(shm->name() + " (TPL_COMM=auto: " + ranks + " " + where + ", " + std::to_string(cpus) +
          " CPUs)");
      return shm;
    } catch (const ConfigError& e) {
      // make_shm_communicator fails alike on every rank (its checks are agreed), so every rank
      // falls back together.
      say(std::string("mpi (TPL_COMM=auto: the shared window failed: ") + e.what() + ")");
      return mpi;
    }
  }
  say(mpi->size() == 1 ? "mpi (TPL_COMM=auto: one rank, nothing to share)"
      : !layout.consecutive
          ? "mpi (TPL_COMM=auto: " + ranks + " " + where + ", a node's ranks not consecutive)"
          : "mpi (TPL_COMM=auto: " + std::to_string(host_size) + " ranks on a host of " +
                std::to_string(cpus) + " CPUs; SHM's spinning waits would share cores)");
  return mpi;
}

}  // namespace tpl

#include "comm/mpi_communicator.h"

#include <cstdlib>
#include <string>

#include "tpl/backends.h"
#include "tpl/error.h"
#include "tpl/shm.h"

namespace tpl {

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
}

MpiSession::~MpiSession() {
  if (owns_) MPI_Finalize();
}

std::unique_ptr<Communicator> MpiSession::world() const {
  MPI_Comm dup;
  TPL_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &dup), -1);
  auto mpi = std::make_unique<MpiCommunicator>(dup);
  // TPL_COMM: which communicator serves the world and every group split from it. auto is MPI
  // until the planner chooses per group (docs/communication.md).
  const char* env = std::getenv("TPL_COMM");
  const std::string comm = env && *env ? env : "auto";
  if (comm == "mpi" || comm == "auto") return mpi;
  if (comm == "shm") return make_shm_communicator(*mpi);
  TPL_THROW(ConfigError, (Where{"TPL_COMM", mpi->rank()}),
            "TPL_COMM must be mpi, shm or auto, got '", comm, "'");
}

}  // namespace tpl

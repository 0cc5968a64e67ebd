// The one public header that includes <mpi.h>: tplinear over a caller's MPI_Comm. Everything
// else of the public API is free of MPI's headers (docs/package.md).
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "tpl/backends.h"

namespace tpl {

// MpiSession::world_of for an MPI_Comm (duplicated; see there).
inline std::unique_ptr<Communicator> world_of(const MpiSession& session, MPI_Comm comm,
                                              std::string* why = nullptr) {
  return session.world_of(static_cast<int>(MPI_Comm_c2f(comm)), why);
}

}  // namespace tpl

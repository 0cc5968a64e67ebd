// `tplinear info`: the CPU, the ISA cap, the GEMM choice per dtype and M, MPI and the backends.
#pragma once

#include <cstdint>
#include <string>

#include "tpl/communicator.h"

namespace tpl::cli {

struct InfoOptions {
  std::int64_t k = 1024;  // the shape the GEMM choices are shown for
  std::int64_t n = 1024;
  bool measure = true;       // time the implementations that serve (false: list order)
  std::string communicator;  // the world's communicator and why (MpiSession::world)
};

// Rank 0 prints; returns 0.
int run_info(Communicator& world, const InfoOptions& options);

}  // namespace tpl::cli

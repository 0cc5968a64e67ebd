#pragma once

#include <cstdint>
#include <string>

#include "tpl/communicator.h"

namespace tpl::cli {

struct DemoOptions {
  std::int64_t tokens = 1001;
  std::int64_t hidden = 256;
  std::int64_t intermediate = 704;
  std::string dtype = "bf16";
  std::string strategy = "standard";  // standard, fc1, matmul-allreduce
};

// Collective over `world`; returns the exit code (0 = PASS on every rank).
int run_demo(Communicator& world, const DemoOptions& o);

}  // namespace tpl::cli

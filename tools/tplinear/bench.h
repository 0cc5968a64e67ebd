// `tplinear bench`: a sweep of token counts x strategies over a model's decoder stack, timed per
// linear-layer kind (docs/bench.md).
#pragma once

#include <cstdint>
#include <string>

#include "run.h"
#include "tpl/communicator.h"

namespace tpl::cli {

struct BenchOptions {
  RunOptions model;                    // --model, --dtype, ... (add_model_options)
  std::string tokens = "16,256,1024";  // comma list, per DP replica
  std::string strategies = "standard,fc1,fc2,matmul-allreduce";
  int iters = 3;                  // timed forwards per point; the median is reported
  int warmup = 1;                 // untimed forwards per point
  std::string json, csv, svg;     // output files ("" = none)
  std::string progress = "auto";  // auto (stderr is a TTY), always, never
};

// The known strategy names, comma separated (for --help).
std::string bench_strategy_names();

// Collective over `world`; returns the exit code. Bad options throw tpl::InvalidArgument or
// tpl::ConfigError on every rank.
int run_bench(Communicator& world, const BenchOptions& o);

}  // namespace tpl::cli

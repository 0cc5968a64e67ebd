// `tplinear bench`: a sweep of token counts x strategies over a model's decoder stack, timed per
// linear-layer kind (docs/bench.md).
#pragma once

#include <cstdint>
#include <string>

#include <vector>

#include "run.h"
#include "tpl/communicator.h"
#include "tpl/plan.h"

namespace tpl::cli {

struct BenchOptions {
  RunOptions model;                    // --model, --dtype, ... (add_model_options)
  std::string tokens = "16,256,1024";  // comma list, per DP replica
  std::string strategies = "standard,fc1,fc2,matmul-allreduce";
  int iters = 3;                  // timed forwards per point; the median is reported
  int warmup = 1;                 // untimed forwards per point
  std::string json, csv, svg;     // output files ("" = none)
  std::string progress = "auto";  // auto (stderr is a TTY), always, never
  bool sync_layers = false;       // barrier before each linear layer (StackOptions)
  // Every strategy's stack alive at once, their timed forwards taken round-robin (A B C A B C
  // ...), so the drift of a shared machine hits each alike; costs the memory of all stacks.
  bool interleave = false;
  // > 0: per token count, as many iterations as fill this many ms (at least --iters, at most
  // 10x), so a cheap point gets the repetitions its noise needs.
  double min_time_ms = 0;
  std::string plan;  // plan.json: adds rows "plan:<strategy>" (the bucket's choice)
};

// The known strategy names, comma separated (for --help).
std::string bench_strategy_names();

// The configs of the named strategies (comma list) over `base` for `world_size` ranks; a
// strategy that does not apply is left out with a line in `notes`. InvalidArgument on an unknown
// or repeated name.
std::vector<PlanCandidate> bench_candidates(const RunOptions& base, int world_size,
                                            const std::string& names,
                                            std::vector<std::string>* notes);

// One measured point: the slowest rank's median time of a layer kind (qkv_proj, o_proj,
// gate_up_proj, down_proj, linear = all linear layers, forward = the whole stack).
struct BenchRow {
  std::string strategy, layer;
  std::int64_t tokens;
  double ms, bytes, algbw, busbw;  // GB/s
};

// Collective over `world`; returns the exit code. Bad options throw tpl::InvalidArgument or
// tpl::ConfigError on every rank. `rows` (rank 0) receives every measured row.
int run_bench(Communicator& world, const BenchOptions& o, std::vector<BenchRow>* rows = nullptr);

}  // namespace tpl::cli

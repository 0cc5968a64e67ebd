// `tplinear run` and `tplinear explain`.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "tpl/communicator.h"
#include "tpl/config.h"
#include "tpl/model.h"
#include "tpl/plan.h"
#include "tpl/process_groups.h"

namespace tpl::cli {

struct RunOptions {
  std::string model = "tiny";  // preset name
  std::string hf_config;       // path to a Hugging Face config.json (overrides the preset)
  std::string weights;         // safetensors file or checkpoint directory ("" = seeded random)
  std::string config_file;     // tplinear JSON config (docs/config.md); flags then override
  std::int64_t tokens = 1001;
  std::int64_t layers = 0;  // 0 = the model's own count
  std::string dtype = "f32";
  std::string quant = "none";  // none or w8a8
  int dp = 1;
  bool fc1 = false;
  std::int64_t fc1_threshold = -1;  // -1 = keep (default 1000)
  int fc2 = 0;
  int mlp_tp = 0;
  int oproj_tp = 0;
  bool matmul_allreduce = false;
  int fused_chunks = -1;       // -1 = keep (0 = automatic rule)
  std::string overlap;         // "" = keep (auto); auto, on or off
  std::string layer_sharding;  // comma separated, e.g. "o_proj"
  int prefetch_step = -1;      // -1 = automatic
  std::string deployment;      // mixed, prefill, decode
  std::string dump;            // directory for .npy dumps
  std::string plan;     // run: plan.json; the config of the --tokens bucket replaces the flags
  std::string profile;  // run: profile.json; the cost model's defaults (StackOptions::profile)
  // GEMM of the one-rank reference: "reference" (tplinear's double-accumulating oracle, so the
  // check never compares an implementation with itself), "same" (the ranks' CPU GEMM, for models
  // too big for the oracle), or "auto" (reference up to kAutoReferenceFlops).
  std::string check_gemm = "auto";
  bool no_reference = false;  // run: skip the one-rank reference (and so the check)
  std::uint64_t seed = 1;
  bool verbose = false;  // explain: print every rule considered
  int rank = 0;          // explain: the rank whose coordinates are shown
  int world = 0;         // explain: world size (0 = the job's)
};

// "a,b,,c" -> {"a", "b", "c"}.
std::vector<std::string> split_list(const std::string& s);

// Adds the model and config flags shared by run, explain and bench.
void add_model_options(CLI::App& app, RunOptions& o);
// The model of --model / --hf-config, cut to --layers.
ModelSpec load_model(const RunOptions& o);
// The validated config for `world_size` ranks from the options.
Config make_config(const RunOptions& o, int world_size);

int run_model(Communicator& world, const RunOptions& o);

// TPL_COMM=mpi or shm, set explicitly, overrides a plan's communicator per group (the world's
// kind serves every group): clears plan.comms, saying so on rank 0.
void apply_comm_override(Plan& plan, int rank);
// "communicators: tp shm (2 ranks), mlp_tp mpi (2 ranks)": what serves this rank's groups.
std::string describe_group_comms(const ProcessGroups& groups);
int explain_model(Communicator& world, const RunOptions& o);

}  // namespace tpl::cli

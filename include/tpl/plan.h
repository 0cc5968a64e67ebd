// A plan: the strategy a model runs at each batch size, chosen by the cost model
// (tpl/cost_model.h) for a workload, written by `tplinear plan` (docs/planner.md).
//
// Two levels: the weight layout (what each rank holds: plain TP, FlashComm2's o_proj, MLP-TP,
// ...) is chosen once for the whole workload; within it, each token bucket takes the forward
// choices (FC1 on/off, fused or not, overlap) predicted fastest. A candidate replaces the
// layout's baseline (its first candidate) only when predicted faster by more than `margin`, so
// noise does not flip choices, and a given token count always maps to the same bucket.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tpl/config.h"
#include "tpl/cost_model.h"

namespace tpl {

struct PlanCandidate {
  std::string name;  // e.g. "standard", "fc1", "fc1-serial"
  Config config;
};

struct PlanBucket {
  std::int64_t tokens = 0;      // the workload point it was planned at
  std::int64_t max_tokens = 0;  // batches of up to this many tokens use it (last: -1 = no limit)
  double weight = 0;            // share of the workload
  std::string strategy;
  double predicted_ms = 0;  // linear layers of the whole stack
  std::string runner_up;    // "" when nothing else applied
  double runner_up_ms = 0;
  std::string why;
};

struct Plan {
  int version = 1;
  std::string model;
  int world = 0, tp = 0, dp = 0;
  std::string dtype = "f32";
  bool w8a8 = false;
  std::string layout;       // weight_layout_of() of every bucket's config
  double weight_bytes = 0;  // predicted resident weight bytes per rank of that layout (0 = unknown)
  std::vector<PlanBucket> buckets;
  std::vector<PlanCandidate> configs;  // the chosen strategies' configs, by name
  MachineInfo machine;                 // the profile's machine
  // The communicator of each group the layout uses, by role ("tp": shm, ...), chosen once for
  // the workload like the layout (groups are made at load time); empty when the profile
  // measured one kind only. DecoderStack makes its ProcessGroups with it.
  GroupComms comms;
  // Why each role got its kind: the workload-weighted prediction of every kind measured.
  std::vector<std::string> comms_why;

  const PlanBucket& bucket_for(std::int64_t tokens) const;
  const Config& config_for(std::int64_t tokens) const;
  static Plan from_json(const nlohmann::json& j, const std::string& source);
  static Plan from_file(const std::string& path);
  nlohmann::json to_json() const;
  // ConfigError naming `source` when the plan is for another world size or model, or a config's
  // weight layout for this model is not the plan's.
  void check_matches(const ModelSpec& model, int world_size, const std::string& source) const;
};

// What a config fixes at weight-load time for a model, e.g. "tp", "tp+fc2(P=1)",
// "tp+mlp_tp(2)", "tp+shared_expert_dp" (an MoE model under sequence parallelism).
std::string weight_layout_of(const Config& c, const ModelInfo& model);

struct PlanOptions {
  std::vector<std::pair<std::int64_t, double>> workload;  // (tokens, weight), tokens ascending
  double margin = 0.03;
  CostInputs inputs;
  // Resident weight bytes a rank may hold (StackPrediction::weight_bytes); 0 = no cap. A
  // candidate above it is left out with a note; ConfigError when none fits.
  double memory_cap_bytes = 0;
  // Choose each group's communicator among the kinds the profile measured (Plan::comms). The
  // kind it was calibrated on stays unless another is predicted faster by more than `margin`.
  // Roles fixed in inputs.comms are kept as given.
  bool choose_comms = true;
};

// Candidates whose prediction throws Unsupported are left out with a note. ConfigError when no
// candidate applies or the workload is empty.
Plan make_plan(const CostModel& cost, const ModelSpec& model, int world,
               const std::vector<PlanCandidate>& candidates, const PlanOptions& options,
               std::vector<std::string>* notes);

// The per-batch choices a config leaves to the library, decided by the cost model: overlap =
// auto becomes on or off, and FlashComm1's token threshold (when FC1 is on) becomes a bucket
// edge, for every bucket of `kDefaultWorkload`. The baseline is the config with overlap off and
// its own threshold, so overlap is enabled only where predicted faster by the margin. Returns a
// one-bucket plan of `config` when nothing is left to decide; Unsupported when the cost model
// does not cover the config (the caller keeps the built-in rule).
extern const char* const kDefaultWorkload;  // "1,16,64,256,1024,4096"
Plan default_plan(const CostModel& cost, const ModelSpec& model, const Config& config, int world,
                  const CostInputs& inputs, double margin = 0.03);

// "16:0.7,2048:0.3" or "16,256,1024" (equal weights) -> ascending (tokens, weight), weights
// normalised to sum 1. InvalidArgument on a malformed item.
std::vector<std::pair<std::int64_t, double>> parse_workload(const std::string& s);

}  // namespace tpl

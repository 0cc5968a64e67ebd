// The cost model: an op's forward time predicted from a machine profile (tpl/profile.h).
//
// For every linear layer of a decoder stack it asks the Selector which op the config gives the
// layer (so a prediction follows the same rules as the stack), takes the slowest rank's local
// GEMM shape (uneven shards included), and adds the op's steps as docs/ops.md lists them: the
// GEMM, each collective at its message size over its group, pads and W8A8 (de)quantisation as
// memory passes. A fused path with the overlap worker and more than one chunk costs its measured
// fused/unfused ratio times the unfused sum. docs/planner.md has the formulas.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "tpl/config.h"
#include "tpl/model.h"
#include "tpl/process_groups.h"
#include "tpl/profile.h"

namespace tpl {

struct LayerPrediction {
  std::string prefix;  // e.g. model.layers.0.self_attn.qkv_proj
  std::string op;      // op kind name
  int kind = -1;       // 0 qkv_proj, 1 o_proj, 2 gate_up_proj, 3 down_proj
  double gemm_ms = 0, comm_ms = 0, other_ms = 0, ms = 0;
  double bytes_sent = 0;  // per rank, the docs/ops.md volume (what Communicator counts)
  // Weight memory of the largest shard: the layer's own copy of its shard plus the GEMM's
  // planned copy (reordered, transposed or, for bf16 through f32, widened), as LinearLayer holds
  // them today.
  double weight_bytes = 0;
};

struct StackPrediction {
  std::int64_t tokens = 0;
  std::array<double, 4> kind_ms{};     // qkv_proj, o_proj, gate_up_proj, down_proj
  std::array<double, 4> kind_bytes{};  // bytes sent per rank
  double linear_ms = 0;                // all linear layers
  double weight_bytes = 0;             // resident weight bytes per rank, all linear layers
  std::vector<LayerPrediction> layers;
};

// Layer kinds as `tplinear bench` reports them; -1 when the prefix is none of them.
int linear_kind_of(const std::string& prefix);
extern const std::array<const char*, 4> kLinearKinds;

struct CostInputs {
  DType dtype = DType::kF32;
  bool w8a8 = false;
  // Whether the overlap worker gets a core of its own on the machine the prediction is for
  // (worker_has_spare_core): resolves Config::overlap = auto as DecoderStack does.
  bool spare_core = false;
  // The communicator of each group, by role (ProcessGroups' GroupComms): its collectives are
  // priced from that kind's tables (MachineProfile::collectives_of). A role not named uses the
  // profile's `collectives`, measured on the world's kind.
  GroupComms comms;
};

class CostModel {
 public:
  explicit CostModel(MachineProfile profile);
  const MachineProfile& profile() const { return profile_; }

  // One GEMM of M rows on a [n, k] weight (f32, bf16 or int8 = the W8A8 int8 GEMM alone).
  double gemm_ms(DType dtype, std::int64_t m, std::int64_t n, std::int64_t k) const;
  // The same from any GEMM table of the profile ("f32", ..., "w8a8").
  double table_ms(const std::string& key, std::int64_t m, std::int64_t n, std::int64_t k) const;
  // One collective of S bytes (f32 bytes for sums) on a group of `group` ranks served by `comm`
  // ("" = the kind the profile's `collectives` were measured on); 0 for 1 rank. Unsupported when
  // the profile has no table for that kind and group size.
  double collective_ms(Collective c, double bytes, int group, const std::string& comm = "") const;
  // Fused / unfused time of a fused path at `rows` (1 when the profile has no table).
  double fused_ratio(const std::string& path, std::int64_t rows) const;
  double copy_ms(double bytes) const;

  // The linear layers of `model`'s stack under `config` on `world` ranks at `tokens` per DP
  // replica. Unsupported names an op the model does not cover (MLP-TP, O-proj-TP, DSA-CP).
  StackPrediction predict(const ModelSpec& model, const Config& config, int world,
                          std::int64_t tokens, const CostInputs& in) const;

  // The GEMMs predict() looks up for `configs` at each of `tokens` (configs the model does not
  // cover are skipped): what `calibrate` measures at their exact shapes for a model
  // (CalibrateOptions::layer_shapes), so those lookups read a measurement, not a scaling.
  static std::vector<GemmRequest> gemm_requests(const ModelSpec& model,
                                                const std::vector<Config>& configs, int world,
                                                const std::vector<std::int64_t>& tokens,
                                                const CostInputs& in);

 private:
  using Requests =
      std::map<std::tuple<std::string, std::int64_t, std::int64_t>, std::set<std::int64_t>>;
  MachineProfile profile_;
  // Set only inside gemm_requests: lookups are recorded and priced 1 ms, no table needed.
  Requests* record_ = nullptr;
};

}  // namespace tpl

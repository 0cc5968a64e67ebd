// Simulated hardware for `tplinear simulate`: a cluster described by published figures (GEMM
// throughput, memory bandwidth, intra-node links, inter-node NICs) instead of a calibration, so
// the cost model (tpl/cost_model.h) can predict TP 8-64 on machines this project cannot reach.
//
// The description is turned into an ordinary MachineProfile (synthesize), whose tables the cost
// model reads as it reads a calibrated one; docs/planner.md has the formulas. Each profile file
// also carries published measurements it was *not* fitted to, and validate() reports the
// simulator's error against them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tpl/profile.h"

namespace tpl {

// A link: time of a collective on it = latency_us + steps * step_us + S * factor / busbw, the
// alpha-beta form NCCL's model uses (busbw in nccl-tests' sense: factor = 2(g-1)/g for
// all-reduce, (g-1)/g for reduce-scatter, all-gather and all-to-all, 1 for broadcast).
struct ClusterLink {
  double latency_us = 0;  // once per collective
  double step_us = 0;     // per algorithm step (ring: 2(g-1) for all-reduce, g-1 otherwise)
  std::map<std::string, double> busbw_gbps;  // per collective key ("all_reduce", ...)
};

// One published measurement to validate against.
struct ClusterCheck {
  std::string source;  // where it was published
  std::string kind;    // "gemm" (x = M rows, y = TFLOP/s) or a collective key (x = S bytes,
                       // y = microseconds)
  std::string dtype = "bf16";
  std::int64_t n = 0, k = 0;  // gemm: weight [n, k]
  int group = 0;              // collective: ranks
  std::vector<std::pair<double, double>> points;
};

struct ClusterProfile {
  std::string name;
  std::vector<std::string> sources;  // what each figure is taken from
  int gpus_per_node = 8;
  // GEMM time = launch_us + max(2·M·N·K / (peak · efficiency), bytes / memory_gbps), per dtype;
  // bytes = (N·K + M·K + M·N) elements.
  std::map<std::string, double> peak_tflops;  // "bf16", "int8", "f32"
  double gemm_efficiency = 0.75;              // at large M
  double launch_us = 0;
  double memory_gbps = 0;  // achieved weight-streaming bandwidth
  ClusterLink intra;       // within a node (NVLink)
  ClusterLink inter;       // between nodes, per GPU (its NIC)
  std::vector<ClusterCheck> checks;

  static ClusterProfile from_json(const nlohmann::json& j, const std::string& source);
  static ClusterProfile from_file(const std::string& path);

  // Predicted GEMM time (ms) and collective time (ms) of S bytes over `group` ranks (one node
  // up to gpus_per_node; above, hierarchical: within each node over NVLink, then across nodes
  // over the NICs with the node's share of the data).
  double gemm_ms(const std::string& dtype, double m, double n, double k) const;
  double collective_ms(Collective c, double bytes, int group) const;

  // A MachineProfile with GEMM tables on square weights 2^9 .. 2^15 and one collective table
  // per distinct group size of at least 2 in `groups`, S = 1 KiB .. 1 GiB; no fused ratios (fused
  // paths are priced unfused: nothing measured their overlap here).
  MachineProfile synthesize(const std::vector<int>& groups) const;
};

struct CheckResult {
  std::string source, kind;
  double x = 0, published = 0, predicted = 0;
  double error() const { return predicted / published - 1; }
};
// Every check point, predicted by the profile's model.
std::vector<CheckResult> validate(const ClusterProfile& p);

}  // namespace tpl

// A machine profile: what `tplinear calibrate` measured on this machine, the input of the cost
// model (tpl/cost_model.h). Every number in it is measured, never assumed (docs/planner.md).
//
// GEMM: per dtype, the time of one GEMM at a few row counts M on two reference shapes (a small
// and a large weight); the cost model scales by weight size between them.
// Collectives: per kind and group size, the time of one call at message sizes S (the full
// buffer, f32 bytes for sums, as in docs/communication.md), interpolated piecewise in log-log
// space between the measured points, so cliffs (OpenMPI above 16 MiB) stay where they were.
// Layer GEMMs (optional, `calibrate --model`): the same GEMMs at the exact local shapes a
// model's layers run at (CostModel::gemm_requests), used instead of the scaled reference shapes
// for those shapes: a tall gate_up shard and a square reference run at different rates.
// Fused: per fused GEMM + collective path, fused time / (GEMM alone + collective alone) at a few
// row counts, measured by running the fused path with the overlap worker.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tpl/communicator.h"

namespace tpl {

struct ProfilePoint {
  double x = 0;   // M (rows), S (bytes) or rows, by table
  double ms = 0;  // measured time, or a ratio for the fused tables
};

struct GemmTable {
  std::int64_t k = 0, n = 0;       // the reference shape
  std::string impl;                // the implementation the chooser took
  std::vector<ProfilePoint> rows;  // x = M, ms = one GEMM (the slowest rank, median)
};

struct MachineInfo {
  std::string cpu, isa, mpi;
  int cores = 0;  // cores this process may run on
  int ranks = 0;  // ranks calibrated together
  // Whether those ranks' overlap worker had a core of its own (worker_has_spare_core with
  // cores / ranks usable per rank and this process's GEMM threads): what the cost model
  // resolves Config::overlap = auto with.
  bool spare_core() const;
};

// "all_reduce", "reduce_scatter", "all_gather", "all_to_all", "broadcast" (profile keys).
const char* collective_name(Collective c);

struct MachineProfile {
  int version = 1;
  MachineInfo machine;
  // dtype key ("f32", "bf16", "int8", and "w8a8" = a W8A8 layer's quantise + int8 GEMM +
  // dequantise as LocalGemm runs it) -> reference shapes, smallest weight first.
  std::map<std::string, std::vector<GemmTable>> gemm;
  // The same keys -> tables at exact layer shapes, any order, one per (n, k); may be empty.
  std::map<std::string, std::vector<GemmTable>> layer_gemm;
  // The layer table of exactly [n, k] for `key`, or null.
  const GemmTable* layer_table(const std::string& key, std::int64_t n, std::int64_t k) const;
  // "<collective>/<group size>" -> points, x = S bytes ascending.
  using CollectiveTables = std::map<std::string, std::vector<ProfilePoint>>;
  CollectiveTables collectives;
  // The kind of communicator `collectives` were measured on (Communicator::kind_name: "mpi",
  // "shm", ...); "" in a profile that does not say.
  std::string comm;
  // The same groups measured on the other kinds the world could make (Communicator::split_as),
  // by kind: what the planner chooses each group's communicator from (tpl/plan.h). Never holds
  // `comm` itself.
  std::map<std::string, CollectiveTables> comm_collectives;
  // The tables of `kind`: `collectives` for "" or `comm`; null when that kind was not measured.
  const CollectiveTables* collectives_of(const std::string& kind) const;
  // fused path ("gemm_all_reduce", "gemm_reduce_scatter", "all_gather_gemm") -> x = rows,
  // ms = fused / unfused time ratio.
  std::map<std::string, std::vector<ProfilePoint>> fused;
  double copy_gbps = 0;  // one core's memcpy, for elementwise passes (pads, W8A8 (de)quant)

  static std::string collective_key(Collective c, int group_size);
  // Parses and validates; ConfigError naming `source` and the field.
  static MachineProfile from_json(const nlohmann::json& j, const std::string& source);
  static MachineProfile from_file(const std::string& path);
  nlohmann::json to_json() const;
  // Lines describing how `now` differs from the calibrated machine (CPU, ISA, cores, MPI); empty
  // when it matches.
  std::vector<std::string> mismatches(const MachineInfo& now) const;
};

// This process's machine, as calibrate records it.
MachineInfo this_machine(int ranks);

// A GEMM a cost model asks for: table key ("f32", "bf16", "int8", "w8a8"), weight [n, k], and
// the row counts M it is asked at (ascending).
struct GemmRequest {
  std::string key;
  std::int64_t n = 0, k = 0;
  std::vector<std::int64_t> rows;
};

struct CalibrateOptions {
  bool quick = false;  // fewer sizes and repetitions (tests)
  // Also measured, into MachineProfile::layer_gemm: at each request's rows and the reference
  // row counts below its largest.
  std::vector<GemmRequest> layer_shapes;
  // Called on rank 0 with (step, steps, what) before each measurement.
  std::function<void(int, int, const std::string&)> progress;
};

// Measures this machine over `world` (collective; every rank measures, the slowest counts).
MachineProfile calibrate(Communicator& world, const CalibrateOptions& options);

}  // namespace tpl

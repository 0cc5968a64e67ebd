// `tplinear calibrate` (measure this machine into a profile) and `tplinear plan` (choose a
// strategy per token bucket from the cost model; --check measures every candidate and reports
// the model's error and the plan's regret). docs/planner.md.
#pragma once

#include <string>

#include "run.h"
#include "tpl/communicator.h"

namespace tpl::cli {

struct CalibrateCliOptions {
  std::string out;
  bool quick = false;  // fewer sizes (tests)
  std::string progress = "auto";
  // With a model (--model / --hf-config given): also its layers' GEMMs at their exact local
  // shapes, for the candidates and token counts a plan will price (CostModel::gemm_requests).
  bool for_model = false;
  RunOptions model;
  std::string workload = "16,256,1024";
  std::string strategies = "standard,fc1,fc1-serial,fc2,matmul-allreduce";
};

struct PlanCliOptions {
  RunOptions model;
  std::string profile;  // "" = calibrate now
  std::string workload = "16,256,1024";
  std::string strategies = "standard,fc1,fc1-serial,fc2,matmul-allreduce";
  double margin = 0.03;
  double memory_cap_gib = 0;  // 0 = no cap
  std::string out, json;      // plan file; --check's rows as JSON
  bool strict = false;        // refuse a profile from another machine
  bool check = false;
  int iters = 5, warmup = 1;
  double min_time_ms = 3000;  // --check: per token count, iterations until all candidates fill it
  std::string progress = "auto";
};

struct SimulateCliOptions {
  RunOptions model;                  // --model / --hf-config / --layers / --dtype
  std::string profile;               // cluster profile (tpl/cluster.h)
  std::string world = "8,16,32,64";  // TP sizes (DP 1)
  std::string tokens = "16,2048";
  std::string strategies = "standard,fc1,fc1-serial,fc2,matmul-allreduce";
  std::string json;
  bool validate = false;  // print the profile's published checks against its predictions
};

int run_calibrate(Communicator& world, const CalibrateCliOptions& o);
// Prediction only, on rank 0 (no collective).
int run_simulate(Communicator& world, const SimulateCliOptions& o);
int run_plan(Communicator& world, const PlanCliOptions& o);

}  // namespace tpl::cli

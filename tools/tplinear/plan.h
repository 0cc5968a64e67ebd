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
};

struct PlanCliOptions {
  RunOptions model;
  std::string profile;  // "" = calibrate now
  std::string workload = "16,256,1024";
  std::string strategies = "standard,fc1,fc1-serial,fc2,matmul-allreduce";
  double margin = 0.03;
  std::string out, json;  // plan file; --check's rows as JSON
  bool strict = false;    // refuse a profile from another machine
  bool check = false;
  int iters = 3, warmup = 1;
  std::string progress = "auto";
};

int run_calibrate(Communicator& world, const CalibrateCliOptions& o);
int run_plan(Communicator& world, const PlanCliOptions& o);

}  // namespace tpl::cli

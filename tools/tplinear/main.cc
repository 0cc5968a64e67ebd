// The tplinear command. main() owns MPI (MpiSession) and is the only place that turns errors
// into exit codes: 0 success, 1 a numerical check failed, 2 bad input or any other error.
//
// `tplinear --np N <command> ...` re-launches itself under mpirun with N ranks and the
// environment that root and oversubscription need (scripts/env.sh); without --np it runs
// directly (as one rank, or as a rank of an outer mpirun).
#include <malloc.h>
#include <unistd.h>

#include <mpi.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"
#include "demo.h"
#include "info.h"
#include "plan.h"
#include "run.h"
#include "tpl/backends.h"
#include "tpl/error.h"
#include "tpl/flight_analysis.h"

namespace {

// Handles --np before MPI starts. Returns -1 to continue in this process.
int maybe_relaunch(int argc, char** argv) {
  int np = 0;
  std::vector<std::string> rest;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--np" && i + 1 < argc) {
      np = std::atoi(argv[++i]);
      if (np < 1) {
        std::fprintf(stderr, "tplinear: error: --np needs a positive rank count, got '%s'\n",
                     argv[i]);
        return 2;
      }
    } else if (a.rfind("--np=", 0) == 0) {
      np = std::atoi(a.c_str() + 5);
    } else {
      rest.push_back(a);
    }
  }
  if (np == 0) return -1;
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    std::fprintf(stderr, "tplinear: error: --np given inside an mpirun job; drop one of them\n");
    return 2;
  }
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 0);
  setenv("OMPI_MCA_btl", "self,vader", 0);
  setenv("OMPI_MCA_oob_tcp_if_include", "lo", 0);
  setenv("OMP_NUM_THREADS", "1", 0);
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len <= 0) {
    std::perror("tplinear: cannot find its own executable");
    return 2;
  }
  self[len] = '\0';
  const std::string n = std::to_string(np);
  std::vector<const char*> args{"mpirun", "-np", n.c_str(), "--bind-to", "none", self};
  for (const auto& a : rest) args.push_back(a.c_str());
  args.push_back(nullptr);
  execvp("mpirun", const_cast<char* const*>(args.data()));
  std::perror("tplinear: cannot run mpirun");
  return 2;
}

// Bad input fails the same way on every rank: then every rank gets here, and rank 0 alone
// prints the one line. A rank that fails alone (a file only it reads, a fault) must not return
// normally: MPI_Finalize would wait for peers that wait in a collective for it. So the ranks
// first meet on an MPI_Ibarrier of MPI_COMM_WORLD (which no collective of the library uses);
// if not all arrive within a few seconds, this rank prints its own message and ends the job.
int report_error(int rank, const char* what) {
  constexpr double kMeetSeconds = 5;
  MPI_Request req = MPI_REQUEST_NULL;
  int done = 0;
  if (MPI_Ibarrier(MPI_COMM_WORLD, &req) == MPI_SUCCESS) {
    const auto until =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(kMeetSeconds);
    while (!done && std::chrono::steady_clock::now() < until) {
      if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
      if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  if (done) {
    if (rank == 0) std::fprintf(stderr, "tplinear: error: %s\n", what);
    return 2;
  }
  std::fprintf(stderr, "tplinear: error: %s (this rank alone; aborting the job)\n", what);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 2);
  return 2;
}

// `tplinear analyze`: rank 0 reads the dumps and prints the report.
int analyze(tpl::Communicator& world, const std::vector<std::string>& paths) {
  std::vector<tpl::FlightDump> dumps;
  for (const std::string& p : paths) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream text;
    text << f.rdbuf();
    if (!f && !f.eof()) TPL_THROW(tpl::IoError, (tpl::Where{p}), "cannot read the file");
    dumps.push_back({p, text.str()});
  }
  const std::string report = tpl::analyze_flight_dumps(dumps);
  if (world.rank() == 0) std::fputs(report.c_str(), stdout);
  return 0;
}

}  // namespace

// A forward allocates its activations per call. glibc serves a block above its mmap threshold
// (dynamic, at most 32 MiB) with a fresh mmap and unmaps it on free, so such a buffer faults
// its pages in again on every forward: 37 ms per 50 MiB block against 7 ms from the heap
// (Zen5; a 1024-token qwen3-8b gate_up output at TP 2 is 48 MiB). The allocator policy is the
// application's to set: this one keeps such blocks in the heap. TPL_MALLOC=default keeps
// glibc's (docs/performance.md).
void keep_buffers_in_heap() {
  const char* v = std::getenv("TPL_MALLOC");
  if (v && std::string(v) == "default") return;
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

int main(int argc, char** argv) {
  if (const int rc = maybe_relaunch(argc, argv); rc >= 0) return rc;
  keep_buffers_in_heap();
  tpl::MpiSession session(&argc, &argv);
  std::unique_ptr<tpl::Communicator> world;
  std::string comm_choice;
  try {
    world = session.world(&comm_choice);  // TPL_COMM picks its communicator
  } catch (const tpl::Error& err) {
    // The same setting on every rank, so every rank fails here; one line, from rank 0.
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) std::fprintf(stderr, "tplinear: error: %s\n", err.what());
    return 2;
  }
  CLI::App app{"tplinear: tensor-parallel linear layers across MPI ranks"};
  app.require_subcommand(1);
  app.add_option("--np", "launch N ranks under mpirun (handled before parsing)");
  double timeout = -1;
  app.add_option("--timeout", timeout,
                 "seconds any collective may wait before the job is aborted with a diagnostic "
                 "(0 = no deadline; default TPL_TIMEOUT, else 300)")
      ->check(CLI::Range(0.0, 1e9));

  tpl::cli::DemoOptions demo;
  auto* d = app.add_subcommand("demo", "column + row parallel MLP block, checked against 1 rank");
  d->add_option("--tokens", demo.tokens, "tokens in the batch")->check(CLI::Range(1, 1 << 24));
  d->add_option("--hidden", demo.hidden, "hidden size")->check(CLI::Range(1, 1 << 16));
  d->add_option("--intermediate", demo.intermediate, "MLP intermediate size")
      ->check(CLI::Range(1, 1 << 18));
  d->add_option("--dtype", demo.dtype, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  d->add_option("--strategy", demo.strategy, "standard, fc1 or matmul-allreduce")
      ->check(CLI::IsMember({"standard", "fc1", "matmul-allreduce"}));

  tpl::cli::RunOptions run;
  auto* r = app.add_subcommand("run",
                               "run a model's decoder stack across the ranks and verify it "
                               "against one rank");
  tpl::cli::add_model_options(*r, run);
  r->add_option("--tokens", run.tokens, "prefill tokens per DP replica")
      ->check(CLI::Range(1, 1 << 20));
  r->add_option("--plan", run.plan,
                "plan.json from `tplinear plan`: the strategy of the bucket of --tokens");
  r->add_option("--profile", run.profile,
                "profile.json from `tplinear calibrate`: without --plan, the cost model decides "
                "what the flags leave open (overlap auto, the FC1 threshold)");
  r->add_option("--dump", run.dump,
                "write input, output and reference as .npy into this directory");
  r->add_option("--check-gemm", run.check_gemm,
                "GEMM of the one-rank reference: auto, reference (the oracle) or same")
      ->check(CLI::IsMember({"auto", "reference", "same"}));
  r->add_flag("--no-reference", run.no_reference,
              "skip the one-rank reference: no check, and no full model on one rank (a model "
              "too large for that rank's memory)");

  tpl::cli::RunOptions ex;
  auto* e = app.add_subcommand("explain", "list every linear layer with its op, group and rule");
  tpl::cli::add_model_options(*e, ex);
  e->add_option("--world", ex.world, "world size to plan for (default: this job's)")
      ->check(CLI::Range(1, 1 << 20));
  e->add_option("--rank", ex.rank, "show this rank's coordinates")->check(CLI::Range(0, 1 << 20));
  e->add_flag("-v,--verbose", ex.verbose, "print every rule considered");

  tpl::cli::BenchOptions bo;
  auto* b = app.add_subcommand("bench",
                               "time token counts x strategies per linear-layer kind "
                               "(docs/bench.md)");
  tpl::cli::add_model_options(*b, bo.model);
  b->add_option("--tokens", bo.tokens, "comma list of token counts per DP replica");
  b->add_option("--strategies", bo.strategies,
                "comma list of: " + tpl::cli::bench_strategy_names());
  b->add_option("--iters", bo.iters, "timed forwards per point (median)")
      ->check(CLI::Range(1, 1000));
  b->add_option("--warmup", bo.warmup, "untimed forwards per point")->check(CLI::Range(0, 100));
  b->add_option("--json", bo.json, "write every row as JSON");
  b->add_option("--csv", bo.csv, "write every row as CSV");
  b->add_option("--svg", bo.svg, "plot of linear-layer time vs tokens per strategy");
  b->add_option(
      "--plan", bo.plan,
      "also run a plan from `tplinear plan`: each token count with its bucket's strategy");
  b->add_flag("--sync-layers", bo.sync_layers,
              "barrier before each linear layer: layer times without waits for slower ranks");
  b->add_option(
       "--min-time", bo.min_time_ms,
       "ms per token count: more iterations where a forward is cheap (at most 10x --iters)")
      ->check(CLI::Range(0.0, 1e7));
  b->add_flag("--interleave", bo.interleave,
              "all strategies' stacks at once, timed round-robin (drift hits each alike)");
  b->add_option("--progress", bo.progress, "progress bar on stderr: auto (TTY), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}));

  tpl::cli::InfoOptions io;
  io.communicator = comm_choice;
  auto* inf = app.add_subcommand("info",
                                 "the CPU, its ISA and cap, the GEMM chosen per dtype and M, MPI "
                                 "and the backends built");
  inf->add_option("--k", io.k, "in features of the GEMM shape shown")
      ->check(CLI::Range(1, 1 << 20));
  inf->add_option("--n", io.n, "out features of the GEMM shape shown")
      ->check(CLI::Range(1, 1 << 20));
  inf->add_flag("!--no-measure", io.measure, "list order instead of timing the candidates");

  tpl::cli::CalibrateCliOptions co;
  auto* cal = app.add_subcommand("calibrate",
                                 "measure this machine's GEMMs, collectives and fused paths into a "
                                 "profile (docs/planner.md)");
  cal->add_option("--out", co.out, "profile JSON to write")->required();
  cal->add_flag("--quick", co.quick, "small sizes only (tests; not for planning)");
  cal->add_option("--model", co.model.model,
                  "also measure this preset's layer GEMMs at their exact shapes");
  cal->add_option("--hf-config", co.model.hf_config, "the same for a Hugging Face config.json");
  cal->add_option("--dtype", co.model.dtype, "with a model: f32 or bf16")
      ->check(CLI::IsMember({"f32", "bf16"}));
  cal->add_option("--quant", co.model.quant, "with a model: none or w8a8")
      ->check(CLI::IsMember({"none", "w8a8"}));
  cal->add_option("--workload", co.workload, "with a model: the token counts to plan for");
  cal->add_option("--strategies", co.strategies,
                  "with a model: the candidates to plan over, comma list of: " +
                      tpl::cli::bench_strategy_names());
  cal->add_option("--progress", co.progress, "progress bar on stderr: auto (TTY), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}));

  tpl::cli::PlanCliOptions po;
  auto* pl = app.add_subcommand("plan",
                                "choose a strategy per token bucket from the cost model; --check "
                                "measures the candidates (docs/planner.md)");
  tpl::cli::add_model_options(*pl, po.model);
  pl->add_option("--profile", po.profile,
                 "profile from `tplinear calibrate` (default: calibrate now)");
  pl->add_option("--workload", po.workload,
                 "token counts per DP replica, with optional weights: 16:0.7,2048:0.3");
  pl->add_option("--strategies", po.strategies,
                 "candidates, comma list of: " + tpl::cli::bench_strategy_names());
  pl->add_option("--margin", po.margin,
                 "switch from the baseline only when predicted faster by more");
  pl->add_option("--memory-cap", po.memory_cap_gib,
                 "GiB of weights a rank may hold; layouts above it are left out")
      ->check(CLI::PositiveNumber);
  pl->add_option("--out", po.out, "plan JSON to write");
  pl->add_flag("--strict", po.strict, "refuse a profile measured on another machine");
  pl->add_flag("--check", po.check, "measure every candidate: model error and plan regret");
  pl->add_option("--json", po.json, "with --check: write the points and cells as JSON");
  pl->add_option("--min-time", po.min_time_ms,
                 "with --check: ms of timed rounds per token count (more iterations where cheap)")
      ->check(CLI::Range(0.0, 1e7));
  pl->add_option("--iters", po.iters, "with --check: timed forwards per point")
      ->check(CLI::Range(1, 1000));
  pl->add_option("--warmup", po.warmup, "with --check: untimed forwards per point")
      ->check(CLI::Range(0, 100));
  pl->add_option("--progress", po.progress, "progress bar on stderr: auto (TTY), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}));

  tpl::cli::SimulateCliOptions so;
  so.model.dtype = "bf16";  // GPU clusters: the default inference dtype
  std::vector<std::string> dumps;
  auto* an = app.add_subcommand("analyze",
                                "merge the flight recorders of a job whose deadline expired "
                                "(TPL_DUMP_DIR) and name the first collective the ranks "
                                "disagree on");
  an->add_option("dumps", dumps, "tplinear-flight-rank<r>.json files")
      ->required()
      ->check(CLI::ExistingFile);
  auto* sim = app.add_subcommand("simulate",
                                 "predict per-strategy times on a simulated cluster described by "
                                 "published figures (docs/planner.md)");
  tpl::cli::add_model_options(*sim, so.model);
  sim->add_option("--profile", so.profile, "cluster profile JSON (e.g. profiles/h100-*.json)")
      ->required();
  sim->add_option("--world", so.world, "comma list of TP sizes");
  sim->add_option("--tokens", so.tokens, "comma list of token counts");
  sim->add_option("--strategies", so.strategies,
                  "candidates, comma list of: " + tpl::cli::bench_strategy_names());
  sim->add_option("--json", so.json, "write the predictions as JSON");
  sim->add_flag("--validate", so.validate,
                "compare the profile's model with the published measurements it carries");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& err) {
    const int rank = world->rank();
    world.reset();
    if (err.get_exit_code() == 0) return rank == 0 ? app.exit(err) : 0;  // --help
    // Bad command line: one line, exit code 2, like every other bad input.
    if (rank == 0) std::fprintf(stderr, "tplinear: error: %s (see --help)\n", err.what());
    return 2;
  }
  if (timeout >= 0) session.watchdog().set_timeout(timeout);
  int rc = 0;
  try {
    if (*d) rc = tpl::cli::run_demo(*world, demo);
    if (*r) rc = tpl::cli::run_model(*world, run);
    if (*e) rc = tpl::cli::explain_model(*world, ex);
    if (*b) rc = tpl::cli::run_bench(*world, bo);
    if (*inf) rc = tpl::cli::run_info(*world, io);
    co.for_model = cal->count("--model") + cal->count("--hf-config") > 0;
    if (*cal) rc = tpl::cli::run_calibrate(*world, co);
    if (*pl) rc = tpl::cli::run_plan(*world, po);
    if (*sim) rc = tpl::cli::run_simulate(*world, so);
    if (*an) rc = analyze(*world, dumps);
  } catch (const tpl::CommError& err) {
    // A communication fault is this rank's own (a peer stalled or died, a deadline passed):
    // say so from here, and end the job, since the peers may be waiting in a collective.
    std::fprintf(stderr, "tplinear: error: %s; aborting the job\n", err.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 3);
    return 3;
  } catch (const tpl::Error& err) {
    rc = report_error(world->rank(), err.what());
  } catch (const std::exception& err) {
    rc = report_error(world->rank(), err.what());
  }
  world.reset();
  return rc;
}

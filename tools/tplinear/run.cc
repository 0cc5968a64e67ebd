// `tplinear run`: a model's decoder stack across the job's ranks under the chosen strategy,
// checked against the same stack on one rank. `tplinear explain`: which op every linear layer
// gets, with its group and the rule that chose it.
#include "run.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>

#include "tpl/error.h"
#include "tpl/memory.h"
#include "tpl/model.h"
#include "tpl/npy.h"
#include "tpl/plan.h"
#include "tpl/profile.h"
#include "tpl/safetensors.h"
#include "tpl/watchdog.h"

namespace tpl::cli {

namespace {

class CheckpointWeights final : public WeightProvider {
 public:
  explicit CheckpointWeights(const std::string& path) : dir_(SafetensorsDir::open(path)) {}
  Tensor get(const std::string& name, std::int64_t rows, std::int64_t cols, DType dtype,
             float) const override {
    check(name, rows, cols);
    return as(dir_.read(name), dtype);
  }
  // Only the block this rank needs is read from the file.
  Tensor get_rows(const std::string& name, std::int64_t rows, std::int64_t cols, DType dtype, float,
                  ShardRange b) const override {
    check(name, rows, cols);
    return as(dir_.read_rows(name, b.offset, b.size), dtype);
  }
  Tensor get_cols(const std::string& name, std::int64_t rows, std::int64_t cols, DType dtype, float,
                  ShardRange b) const override {
    check(name, rows, cols);
    return as(dir_.read_cols(name, b.offset, b.size), dtype);
  }

 private:
  void check(const std::string& name, std::int64_t rows, std::int64_t cols) const {
    const TensorInfo info = dir_.info(name);
    if (info.rows() != rows || info.cols() != cols)
      TPL_THROW(IoError, (Where{"weights"}), "inconsistent sizes: tensor '", name, "' in '",
                dir_.path(), "' is ", info.describe(), ", the model config needs [", rows, ", ",
                cols, "]");
  }
  static Tensor as(Tensor raw, DType dtype) {
    if (raw.dtype() == dtype) return raw;
    Tensor t(dtype, raw.rows(), raw.cols());
    convert_into(raw, t);
    return t;
  }

 public:
 private:
  SafetensorsDir dir_;
};

// Remembers every tensor the stack asked for, so --dump can write the full weights.
class RecordingWeights final : public WeightProvider {
 public:
  explicit RecordingWeights(const WeightProvider& inner) : inner_(inner) {}
  struct Use {
    std::int64_t rows, cols;
    DType dtype;
    float stddev;
  };
  Tensor get(const std::string& n, std::int64_t r, std::int64_t c, DType d,
             float s) const override {
    seen_[n] = {r, c, d, s};
    return inner_.get(n, r, c, d, s);
  }
  Tensor get_rows(const std::string& n, std::int64_t r, std::int64_t c, DType d, float s,
                  ShardRange b) const override {
    seen_[n] = {r, c, d, s};
    return inner_.get_rows(n, r, c, d, s, b);
  }
  Tensor get_cols(const std::string& n, std::int64_t r, std::int64_t c, DType d, float s,
                  ShardRange b) const override {
    seen_[n] = {r, c, d, s};
    return inner_.get_cols(n, r, c, d, s, b);
  }
  void dump(const std::string& dir) const {
    for (const auto& [n, u] : seen_)
      write_npy(dir + "/" + n + ".npy", inner_.get(n, u.rows, u.cols, u.dtype, u.stddev));
  }

 private:
  const WeightProvider& inner_;
  mutable std::map<std::string, Use> seen_;
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (b >= 1024 && u < 3) b /= 1024, ++u;
  return fmt::format("{:.1f} {}", b, units[u]);
}

}  // namespace

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) v.push_back(item);
  return v;
}

void add_model_options(CLI::App& app, RunOptions& o) {
  app.add_option(
      "--model", o.model, "built-in preset: " + [] {
        std::string s;
        for (const auto& p : ModelSpec::presets()) s += (s.empty() ? "" : ", ") + p;
        return s;
      }());
  app.add_option("--hf-config", o.hf_config, "a Hugging Face config.json (instead of --model)");
  app.add_option("--weights", o.weights,
                 "safetensors file or checkpoint directory (default: seeded random)");
  app.add_option("--config", o.config_file,
                 "tplinear JSON config (docs/config.md); flags override it");
  app.add_option("--layers", o.layers, "run only the first N decoder layers")
      ->check(CLI::Range(1, 1000));
  app.add_option("--dtype", o.dtype, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--quant", o.quant, "none or w8a8")->check(CLI::IsMember({"none", "w8a8"}));
  app.add_option("--dp", o.dp, "data-parallel replicas (TP = ranks / DP)")
      ->check(CLI::Range(1, 4096));
  app.add_flag("--fc1", o.fc1, "FlashComm1 sequence parallelism");
  app.add_option("--fc1-threshold", o.fc1_threshold,
                 "FC1 only above this many tokens (dense models)")
      ->check(CLI::Range(0, 1 << 30));
  app.add_option("--fc2", o.fc2, "FlashComm2 with O-proj TP size P (0 = off)")
      ->check(CLI::Range(0, 4096));
  app.add_option("--mlp-tp", o.mlp_tp, "MLP-TP group size (0 = off)")->check(CLI::Range(0, 4096));
  app.add_option("--oproj-tp", o.oproj_tp, "O-proj TP group size (0 = off)")
      ->check(CLI::Range(0, 4096));
  app.add_flag("--matmul-allreduce", o.matmul_allreduce, "fused GEMM + all-reduce row ops");
  app.add_option("--fused-chunks", o.fused_chunks,
                 "chunks of fused GEMM + collective paths (1 = no overlap, 0 = automatic)")
      ->check(CLI::Range(0, 64));
  app.add_option("--overlap", o.overlap,
                 "fused paths' collectives on the overlap thread: on, off, or auto (only when "
                 "each rank has a core to spare for it)")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  app.add_option("--layer-sharding", o.layer_sharding,
                 "comma-separated layer suffixes, e.g. o_proj");
  app.add_option("--prefetch-step", o.prefetch_step, "layer-sharding prefetch distance k")
      ->check(CLI::Range(-1, 64));
  app.add_option("--deployment", o.deployment, "mixed, prefill or decode")
      ->check(CLI::IsMember({"mixed", "prefill", "decode"}));
  app.add_option("--seed", o.seed, "seed of random weights and inputs");
}

ModelSpec load_model(const RunOptions& o) {
  ModelSpec m = o.hf_config.empty() ? ModelSpec::load(o.model) : ModelSpec::from_file(o.hf_config);
  if (o.layers > 0) m.layers = std::min(m.layers, o.layers);
  return m;
}

Config make_config(const RunOptions& o, int world_size) {
  nlohmann::json j = nlohmann::json::object();
  if (!o.config_file.empty()) {
    std::ifstream in(o.config_file);
    if (!in) TPL_THROW(IoError, (Where{"config"}), "cannot open config '", o.config_file, "'");
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      TPL_THROW(ConfigError, (Where{"config"}), "'", o.config_file,
                "' is not valid JSON: ", e.what());
    }
  }
  if (!j.is_object()) TPL_THROW(ConfigError, (Where{"config"}), "config must be a JSON object");
  if (o.dp != 1 || !j.contains("dp")) j["dp"] = o.dp;
  const int dp = j["dp"].is_number_integer() ? j["dp"].get<int>() : 1;
  if (dp < 1 || world_size % dp != 0)
    TPL_THROW(ConfigError, (Where{"config"}), "DP = ", dp, " does not divide the ", world_size,
              " ranks");
  j["tp"] = world_size / dp;
  j["pp"] = 1;
  if (o.fc1) j["flashcomm1"] = true;
  if (o.fc1_threshold >= 0) j["flashcomm1_threshold"] = o.fc1_threshold;
  if (o.fc2) j["flashcomm2_p"] = o.fc2;
  if (o.mlp_tp) j["mlp_tp"] = o.mlp_tp;
  if (o.oproj_tp) j["oproj_tp"] = o.oproj_tp;
  if (o.matmul_allreduce) j["matmul_allreduce"] = true;
  if (o.fused_chunks >= 0) j["fused_chunks"] = o.fused_chunks;
  if (!o.overlap.empty()) j["overlap"] = o.overlap;
  if (!o.layer_sharding.empty()) j["layer_sharding"] = split_list(o.layer_sharding);
  if (!o.deployment.empty()) j["deployment"] = o.deployment;
  return Config::from_json(j);
}

void apply_comm_override(Plan& plan, int rank) {
  const char* env = std::getenv("TPL_COMM");
  const std::string comm = env ? env : "";
  if (plan.comms.empty() || (comm != "mpi" && comm != "shm")) return;
  if (rank == 0)
    fmt::print(
        "# note: TPL_COMM={} serves every group; the plan's communicators per group are "
        "not used\n",
        comm);
  plan.comms.clear();
}

std::string describe_group_comms(const ProcessGroups& groups) {
  std::string s = "communicators:";
  for (const auto& [role, c] : groups.communicators())
    s += fmt::format("{} {} {} ({} rank{})", s.back() == ':' ? "" : ",", role, c->name(), c->size(),
                     c->size() == 1 ? "" : "s");
  return s;
}

int run_model(Communicator& world, const RunOptions& o) {
  const ModelSpec model = load_model(o);
  Config cfg = make_config(o, world.size());
  if (!o.profile.empty() && !o.plan.empty())
    TPL_THROW(InvalidArgument, (Where{"run"}),
              "--profile and --plan both given: a plan already holds the cost model's choices");
  Plan plan;
  if (!o.plan.empty()) {
    plan = Plan::from_file(o.plan);
    plan.check_matches(model, world.size(), o.plan);
    cfg = plan.config_for(o.tokens);
    if (world.rank() == 0)
      fmt::print("plan {}: {} tokens -> bucket of {} tokens, strategy {} ({})\n", o.plan, o.tokens,
                 plan.bucket_for(o.tokens).tokens, plan.bucket_for(o.tokens).strategy, plan.layout);
    apply_comm_override(plan, world.rank());
  }
  StackOptions so;
  so.dtype = parse_dtype(o.dtype);
  so.w8a8 = o.quant == "w8a8";
  so.prefetch_step = o.prefetch_step;
  MachineProfile profile;
  if (!o.profile.empty()) {
    profile = MachineProfile::from_file(o.profile);
    if (world.rank() == 0)
      for (const auto& d : profile.mismatches(this_machine(world.size())))
        fmt::print("# WARNING: {}: {}\n", o.profile, d);
    so.profile = &profile;
  }
  // `--model DIR` (a checkpoint directory, as vLLM takes it) loads its safetensors too.
  std::string weights_from = o.weights;
  std::error_code ec;
  if (weights_from.empty() && o.hf_config.empty() && std::filesystem::is_directory(o.model, ec))
    for (const auto& e : std::filesystem::directory_iterator(o.model, ec))
      if (e.path().extension() == ".safetensors") weights_from = o.model;
  std::unique_ptr<WeightProvider> source =
      weights_from.empty() ? make_random_weights(o.seed)
                           : std::unique_ptr<WeightProvider>(new CheckpointWeights(weights_from));
  RecordingWeights recorded(*source);
  const WeightProvider* weights = &recorded;
  if (cfg.layout.tp > model.heads)
    TPL_THROW(ConfigError, (Where{"run"}),
              "more ranks than the model can shard: TP = ", cfg.layout.tp, " exceeds the ",
              model.heads, " attention heads");

  // The oracle runs at about 1 GFLOP/s: beyond this the check uses the ranks' GEMM instead.
  constexpr double kAutoReferenceFlops = 10e9;
  const double per_layer =
      4.0 * model.hidden * model.hidden +
      3.0 * model.hidden * double(model.intermediate + model.shared_expert_intermediate);
  const double flops = 2.0 * double(o.tokens) * double(model.layers) * per_layer;
  const bool oracle =
      o.check_gemm == "reference" || (o.check_gemm == "auto" && flops <= kAutoReferenceFlops);
  StackOptions ref_so = so;
  if (oracle) ref_so.backend = GemmBackend::kReference;
  // TP rank 0 of each replica checks it against the same stack on one rank.
  const bool checker = coord_of(cfg.layout, world.rank()).t == 0 && !o.no_reference;

  // Before anything is loaded: this rank's share of the stack, plus the whole model once more
  // on a checking rank; the ranks of a node must fit in its memory together (tpl/memory.h).
  MemoryEstimate need = estimate_stack_memory(model, cfg, so, world.size(), o.tokens);
  if (checker) {
    need.then("one-rank reference", estimate_stack_memory(model, Config{}, ref_so, 1, o.tokens));
  }
  check_host_memory(world, need, "tplinear run",
                    "try --layers N, more ranks (on more nodes), --dtype bf16, or "
                    "--no-reference (no full model on one rank, and no check)");
  const ResidentMemory before = resident_memory();
  so.check_memory = false;  // checked above, with the reference
  ref_so.check_memory = false;

  // A plan's stack holds all its strategies; forward() takes the bucket of o.tokens.
  DecoderStack stack = o.plan.empty() ? DecoderStack(world, model, cfg, *weights, so)
                                      : DecoderStack(world, model, plan, *weights, so);
  const int d = stack.dp_rank();
  // Each DP replica gets its own seeded input.
  std::mt19937_64 gen(o.seed * 7919 + static_cast<std::uint64_t>(d));
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> xv(static_cast<std::size_t>(o.tokens * model.hidden));
  for (auto& v : xv) v = dist(gen);
  Tensor x = Tensor::from_f32(xv, o.tokens, model.hidden, so.dtype);

  stack.forward(x);  // warm-up: oneDNN JIT, first-touch
  if (world.rank() == 0) fmt::print("{}\n", describe_group_comms(stack.groups()));
  for (auto& r : const_cast<std::vector<LayerReport>&>(stack.report())) r.ms = 0, r.bytes_sent = 0;
  world.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  Tensor y = stack.forward(x);
  const double total_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  // Reference: the same stack on one rank, computed by TP rank 0 of each replica.
  double max_abs = 0, max_ref = 0;
  Tensor ref;
  // The others wait in all_true below while each checker computes the whole model alone, which
  // can take minutes: no deadline for that wait (tpl/watchdog.h).
  std::optional<Watchdog::Suspension> long_wait;
  long_wait.emplace(world.watchdog());
  if (checker) {
    LocalCommunicator one;
    Config single;
    DecoderStack ref_stack(one, model, single, *weights, ref_so);
    ref = ref_stack.forward(x);
    for (std::int64_t r = 0; r < y.rows(); ++r)
      for (std::int64_t c = 0; c < y.cols(); ++c) {
        max_abs = std::max(max_abs, double(std::fabs(get_f32(y, r, c) - get_f32(ref, r, c))));
        max_ref = std::max(max_ref, double(std::fabs(get_f32(ref, r, c))));
      }
  }
  // Tolerance relative to max |reference|: f32 differs only by summation order; bf16 rounds
  // partial sums and activations (layers compound it); W8A8 adds per-rank dequantization.
  const double tol = so.w8a8 ? 5e-2 : so.dtype == DType::kF32 ? 1e-4 : 3e-2;
  const double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
  const bool ok = world.all_true(!checker || rel <= tol);
  long_wait.reset();
  Tensor err(DType::kF32, 1, 2), errs(DType::kF32, world.size(), 2);
  err.ptr<float>()[0] = checker ? float(max_abs) : -1.f;
  err.ptr<float>()[1] = checker ? float(rel) : -1.f;
  world.all_gather(err, errs, 0);

  // TP rank 0 of each replica dumps, with or without the one-rank reference: under
  // --no-reference the dump is what an outside check (tests/model/hf_reference.py) reads.
  if (!o.dump.empty() && coord_of(cfg.layout, world.rank()).t == 0) {
    std::filesystem::create_directories(o.dump);
    const std::string tag = "dp" + std::to_string(d);
    write_npy(o.dump + "/input_" + tag + ".npy", x);
    write_npy(o.dump + "/output_" + tag + ".npy", y);
    if (checker) write_npy(o.dump + "/reference_" + tag + ".npy", ref);
    if (world.rank() == 0) recorded.dump(o.dump);  // full (unsharded) weights
  }
  if (world.rank() == 0) {
    fmt::print("tplinear run: {} ({}), {} layers, {} tokens, {}{}, {} ranks = DP {} x TP {}\n",
               model.name, model.model_type, model.layers, o.tokens, o.dtype,
               so.w8a8 ? " W8A8" : "", world.size(), cfg.layout.dp, cfg.layout.tp);
    fmt::print("config: {}\n", cfg.to_json().dump());
    fmt::print("weights: {}\n", weights_from.empty()
                                    ? fmt::format("seeded random (seed {})", o.seed)
                                    : weights_from);
    fmt::print("strategy for {} tokens: {} (of {}), overlap of fused paths {}{}\n", o.tokens,
               stack.strategy_for(o.tokens), stack.num_strategies(),
               stack.overlap_for(o.tokens) ? "on" : "off",
               so.profile ? " (cost model, " + o.profile + ")"
               : cfg.overlap == Overlap::kAuto && o.plan.empty()
                   ? " (overlap auto: on only with a core to spare per rank)"
                   : "");
    fmt::print("{:<44} {:<20} {:<10} {:>9} {:>12} {:>9}\n", "layer (rank 0)", "op", "group",
               "rank/size", "sent/rank", "ms");
    double bytes = 0, ms = 0;
    for (const auto& r : stack.report()) {
      fmt::print("{:<44} {:<20} {:<10} {:>9} {:>12} {:>9.2f}\n", r.prefix, r.op, r.group,
                 fmt::format("{}/{}", r.tp_rank, r.tp_size), human_bytes(r.bytes_sent), r.ms);
      bytes += r.bytes_sent;
      ms += r.ms;
    }
    fmt::print("{:<44} {:<20} {:<10} {:>9} {:>12} {:>9.2f}\n", "total (linear layers)", "", "", "",
               human_bytes(bytes), ms);
    fmt::print("forward (whole stack, incl. attention and norms): {:.2f} ms on rank 0\n", total_ms);
    if (stack.layer_shard_bytes())
      fmt::print("layer-sharded weights: {} resident per rank (own layers + {} windows)\n",
                 human_bytes(double(stack.layer_shard_bytes())), stack.layer_shard_windows());
    for (const auto& s : stack.skipped()) fmt::print("skipped: {}\n", s);
    for (int r = 0; r < world.size(); ++r)
      if (errs.ptr<float>()[2 * r] >= 0)
        fmt::print("rank {} (replica check): max abs error {:.3e}, max rel error {:.3e}\n", r,
                   errs.ptr<float>()[2 * r], errs.ptr<float>()[2 * r + 1]);
    const ResidentMemory after = resident_memory();
    fmt::print(
        "host memory (rank 0): estimated {} before loading; resident set grew {} (peak {})\n",
        need.describe(), human_bytes(after.peak - before.now), human_bytes(after.peak));
    if (o.no_reference) {
      fmt::print("reference: skipped (--no-reference)\nUNCHECKED\n");
      return 0;
    }
    fmt::print("reference: the same stack on one rank, {}\n",
               oracle ? "GEMMs by the reference oracle (double accumulation)"
                      : "GEMMs by the ranks' CPU GEMM (--check-gemm reference for the oracle)");
    fmt::print("{} (tolerance {:.0e} relative to max |reference|)\n", ok ? "PASS" : "FAIL", tol);
  }
  return ok ? 0 : 1;
}

int explain_model(Communicator& world, const RunOptions& o) {
  const ModelSpec model = load_model(o);
  const int n = o.world > 0 ? o.world : world.size();
  const Config cfg = make_config(o, n);
  if (o.rank < 0 || o.rank >= n)
    TPL_THROW(InvalidArgument, (Where{"explain"}), "--rank ", o.rank, " outside ", n, " ranks");
  Selector sel(cfg, model.info);
  if (world.rank() != 0) return 0;
  fmt::print("tplinear explain: {} ({}), {} ranks = DP {} x TP {}, coordinates of rank {}\n",
             model.name, model.model_type, n, cfg.layout.dp, cfg.layout.tp, o.rank);
  fmt::print("config: {}\n", cfg.to_json().dump());
  if (!model.unsupported.empty())
    fmt::print("note: `tplinear run` refuses this model: {}\n", model.unsupported);
  // Every group is split from the world, so the world's kind serves them all (TPL_COMM); an
  // shm+mpi world's groups are SHM where they lie within one node.
  if (world.name() == "shm+mpi")
    fmt::print(
        "communicator: shm for a group within one node, shm+mpi for one spanning nodes, "
        "of this run's {} ranks (TPL_COMM)\n",
        world.size());
  else
    fmt::print("communicator: {} for every group of this run's {} ranks (TPL_COMM)\n", world.name(),
               world.size());
  fmt::print("{:<50} {:<20} {:<10} {:>9}  {}\n", "layer", "op", "group", "rank/size", "rule");
  // The layers `run` builds (decoder_linear_specs), so explain and run cannot disagree.
  for (std::int64_t l = 0; l < model.layers; ++l) {
    for (const LayerSpec& spec : decoder_linear_specs(model, l, DType::kF32)) {
      const OpChoice c = sel.choose(spec.prefix, direction_of(spec.kind), spec.disable_tp);
      const ShardCoord sc = shard_coord(c, cfg, o.rank);
      fmt::print("{:<50} {:<20} {:<10} {:>9}  {}\n", spec.prefix, op_kind_name(c.kind), sc.group,
                 fmt::format("{}/{}", sc.tp_rank, sc.tp_size), c.rule);
      if (o.verbose) fmt::print("{}", c.explanation);
    }
    if (model.layer_is_moe(l))
      fmt::print("  (layer {}: routed experts are not linear ops of tplinear)\n", l);
  }
  return 0;
}

}  // namespace tpl::cli

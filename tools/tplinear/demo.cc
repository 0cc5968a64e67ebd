// `tplinear demo`: a column-parallel layer, an activation and a row-parallel layer (an MLP
// block) across the ranks of the job, under a chosen strategy, checked against the same block
// computed on one rank with the full weights.
#include "demo.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <random>

#include "tpl/linear.h"

namespace tpl::cli {

namespace {

Tensor random_tensor(std::int64_t rows, std::int64_t cols, float stddev, std::uint64_t seed,
                     DType dtype) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.f, stddev);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = dist(gen);
  return Tensor::from_f32(v, rows, cols, dtype);
}

void silu_inplace(TensorView t) {
  for (std::int64_t r = 0; r < t.rows(); ++r)
    for (std::int64_t c = 0; c < t.cols(); ++c) {
      const float x = get_f32(t, r, c);
      set_f32(t, r, c, x / (1.f + std::exp(-x)));
    }
}

Config config_for(const DemoOptions& o, int world) {
  Config c;
  c.layout = {1, 1, world};
  if (o.strategy == "fc1") {
    c.flashcomm1 = true;
    c.flashcomm1_threshold = 0;
  } else if (o.strategy == "matmul-allreduce") {
    c.matmul_allreduce = true;
  } else if (o.strategy != "standard") {
    TPL_THROW(ConfigError, Where{"demo"}, "unknown strategy '", o.strategy,
              "' (expected standard, fc1 or matmul-allreduce)");
  }
  c.validate();
  return c;
}

struct BlockResult {
  Tensor y;  // this rank's output
  Placement placement;
  std::string column_op, row_op;
  double ms = 0;
};

// gate_up-like column layer -> SiLU -> down-like row layer, for one configuration.
BlockResult run_block(Communicator& world, const Config& cfg, const DemoOptions& o, TensorView w1,
                      TensorView w2, TensorView x_full) {
  ModelInfo model;
  const Features f = Features::derive(cfg, model);
  ProcessGroups groups(world, cfg.layout, group_sizes(cfg, f));
  Selector selector(cfg, model);
  OpEnv env{cfg, f, groups, nullptr};
  const DType dt = parse_dtype(o.dtype);
  LayerSpec up{"model.layers.0.mlp.gate_up_proj", LayerKind::kColumn, o.hidden, o.intermediate};
  up.dtype = dt;
  LayerSpec down{"model.layers.0.mlp.down_proj", LayerKind::kRow, o.intermediate, o.hidden};
  down.dtype = dt;
  LinearLayer l1(up, selector, env, default_cpu_gemm_backend(), w1, {});
  LinearLayer l2(down, selector, env, default_cpu_gemm_backend(), w2, {});
  ForwardContext ctx = ForwardContext::make(cfg, f, model, o.tokens);

  // Entry placement of the column op: FC1 starts from the sequence shard of the residual.
  Tensor shard;
  TensorView x = x_full;
  if (l1.op().input_placement(ctx).kind == PlacementKind::kShard) {
    Tensor padded(dt, o.tokens + ctx.pad_size, o.hidden);
    copy_into(x_full, padded.view().row_slice(0, o.tokens));
    const std::int64_t b = padded.rows() / world.size();
    shard = Tensor::copy_of(padded.view().row_slice(world.rank() * b, b));
    x = shard.view();
  }
  world.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  LinearOutput h = l1.forward(x, ctx);
  silu_inplace(h.output);
  LinearOutput y = l2.forward(h.output, ctx);
  const auto t1 = std::chrono::steady_clock::now();
  return {std::move(y.output), y.placement, op_kind_name(l1.choice().kind),
          op_kind_name(l2.choice().kind),
          std::chrono::duration<double, std::milli>(t1 - t0).count()};
}

}  // namespace

int run_demo(Communicator& world, const DemoOptions& o) {
  const DType dt = parse_dtype(o.dtype);
  const Config cfg = config_for(o, world.size());
  // Same seeds on every rank: every rank can build the full problem and its reference.
  Tensor w1 = random_tensor(o.intermediate, o.hidden, 1.f / std::sqrt(float(o.hidden)), 1, dt);
  Tensor w2 =
      random_tensor(o.hidden, o.intermediate, 1.f / std::sqrt(float(o.intermediate)), 2, dt);
  Tensor x = random_tensor(o.tokens, o.hidden, 1.f, 3, dt);

  BlockResult par = run_block(world, cfg, o, w1, w2, x);
  LocalCommunicator one;
  Config single;
  BlockResult ref = run_block(one, single, o, w1, w2, x);

  // Compare this rank's output with its slice of the one-rank result.
  TensorView expect = ref.y;
  std::int64_t rows = par.y.rows();
  if (par.placement.kind == PlacementKind::kShard) {
    const std::int64_t b = par.y.rows();
    const std::int64_t begin = world.rank() * b;
    rows = std::clamp<std::int64_t>(o.tokens - begin, 0, b);
    expect = ref.y.view().row_slice(std::min(begin, o.tokens), rows);
  }
  double max_abs = 0, max_ref = 0;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < o.hidden; ++c) {
      max_abs = std::max(max_abs, double(std::fabs(get_f32(par.y, r, c) - get_f32(expect, r, c))));
      max_ref = std::max(max_ref, double(std::fabs(get_f32(expect, r, c))));
    }
  // f32: oneDNN may sum in a different order per shard width; bf16 rounds each partial.
  const double tol = dt == DType::kF32 ? 1e-4 : 3e-2;
  const double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
  const bool ok = world.all_true(rel <= tol);
  Tensor errs(DType::kF32, 1, 1), all_errs(DType::kF32, world.size(), 1);
  errs.ptr<float>()[0] = static_cast<float>(rel);
  world.all_gather(errs, all_errs, 0);
  if (world.rank() == 0) {
    fmt::print(
        "tplinear demo: MLP block over {} ranks, strategy {}, {} tokens, hidden {}, "
        "intermediate {}, {}\n",
        world.size(), o.strategy, o.tokens, o.hidden, o.intermediate, o.dtype);
    fmt::print("  gate_up_proj -> {:<16} down_proj -> {:<16} output {}\n", par.column_op,
               par.row_op, par.placement.to_string());
    fmt::print("  {:>5} {:>14}\n", "rank", "max rel error");
    for (int r = 0; r < world.size(); ++r)
      fmt::print("  {:>5} {:>14.3e}\n", r, all_errs.ptr<float>()[r]);
    fmt::print("  time {:.2f} ms (rank 0, {} ranks on this machine)\n", par.ms, world.size());
    fmt::print("{} (tolerance {:.0e} relative to max |y|)\n", ok ? "PASS" : "FAIL", tol);
  }
  return ok ? 0 : 1;
}

}  // namespace tpl::cli

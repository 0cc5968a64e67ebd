// A tensor-parallel MLP block, as an inference engine would build it with tplinear: the
// program owns the full weights (here seeded random, the same on every rank), hands tplinear
// its MPI communicator, and gets y = down(silu(gate_up(x))) split over the ranks. Checked on
// every rank against the block computed here in double precision, without tplinear.
//
//   mpirun -np 2 tp_mlp [tokens]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "tpl/linear.h"
#include "tpl/mpi.h"

namespace {

std::vector<float> randn(std::size_t n, float stddev, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  // The engine's MPI (tplinear's session attaches to it); MULTIPLE for the overlap thread.
  int level = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &level);
  int status = 1;
  try {
    tpl::MpiSession session;
    const std::unique_ptr<tpl::Communicator> world = tpl::world_of(session, MPI_COMM_WORLD);
    const int tp = world->size();
    const std::int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 37, hidden = 256, inter = 704;

    // Full weights [out, in], as a checkpoint would give them; x replicated on every rank.
    const auto w1 = randn(std::size_t(inter * hidden), 1.f / 16, 1);
    const auto w2 = randn(std::size_t(hidden * inter), 1.f / 26, 2);
    const auto xv = randn(std::size_t(tokens * hidden), 1.f, 3);
    const tpl::Tensor W1 = tpl::Tensor::from_f32(w1, inter, hidden);
    const tpl::Tensor W2 = tpl::Tensor::from_f32(w2, hidden, inter);
    const tpl::Tensor x = tpl::Tensor::from_f32(xv, tokens, hidden);

    tpl::Config cfg;
    cfg.layout = {1, 1, tp};
    cfg.validate();
    const tpl::ModelInfo model;
    const tpl::Features features = tpl::Features::derive(cfg, model);
    const tpl::ProcessGroups groups(*world, cfg.layout, tpl::group_sizes(cfg, features));
    const tpl::Selector selector(cfg, model);
    const tpl::OpEnv env{cfg, features, groups};
    const tpl::LayerSpec up{"model.layers.0.mlp.up_proj", tpl::LayerKind::kColumn, hidden, inter};
    const tpl::LayerSpec down{"model.layers.0.mlp.down_proj", tpl::LayerKind::kRow, inter, hidden};
    // Each rank keeps only its shard of the weights it was given.
    tpl::LinearLayer l1(up, selector, env, tpl::default_cpu_gemm_backend(), W1, {});
    tpl::LinearLayer l2(down, selector, env, tpl::default_cpu_gemm_backend(), W2, {});

    const tpl::ForwardContext ctx = tpl::ForwardContext::make(cfg, features, model, tokens);
    tpl::LinearOutput h = l1.forward(x, ctx);  // Shard(features) of the intermediate
    for (std::int64_t r = 0; r < h.output.rows(); ++r)
      for (std::int64_t c = 0; c < h.output.cols(); ++c) {
        const float v = tpl::get_f32(h.output, r, c);
        tpl::set_f32(h.output, r, c, v / (1.f + std::exp(-v)));
      }
    const tpl::LinearOutput y = l2.forward(h.output, ctx);  // all-reduced: Replicated

    // The same block in double, from the full weights.
    double max_err = 0, max_ref = 0;
    std::vector<double> a(static_cast<std::size_t>(inter));
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t j = 0; j < inter; ++j) {
        double s = 0;
        for (std::int64_t i = 0; i < hidden; ++i)
          s += double(xv[t * hidden + i]) * w1[j * hidden + i];
        a[j] = s / (1 + std::exp(-s));
      }
      for (std::int64_t o = 0; o < hidden; ++o) {
        double s = 0;
        for (std::int64_t j = 0; j < inter; ++j) s += a[j] * w2[o * inter + j];
        max_err = std::max(max_err, std::fabs(s - tpl::get_f32(y.output, t, o)));
        max_ref = std::max(max_ref, std::fabs(s));
      }
    }
    const double rel = max_err / max_ref;
    const bool ok = world->all_true(rel < 1e-4);
    std::printf("rank %d/%d: %s -> %s, output %s, max rel error %.2e\n", world->rank(), tp,
                tpl::op_kind_name(l1.choice().kind), tpl::op_kind_name(l2.choice().kind),
                y.placement.to_string().c_str(), rel);
    if (world->rank() == 0) std::printf("%s\n", ok ? "PASS" : "FAIL");
    status = ok ? 0 : 1;
  } catch (const tpl::Error& e) {
    std::fprintf(stderr, "tp_mlp: error: %s\n", e.what());
    status = 2;
  }
  MPI_Finalize();
  return status;
}

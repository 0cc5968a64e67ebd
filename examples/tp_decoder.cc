// A decoder stack run with a plan from `tplinear plan`: the plan fixes the weight layout once and
// a strategy per token bucket, and forward() takes the bucket of each batch. Checked against the
// same stack on one rank (TP rank 0 computes it, the others wait).
//
//   tplinear plan --np 2 --model tiny --profile P --workload 16,1024 --out plan.json
//   mpirun -np 2 tp_decoder plan.json [tokens...]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "tpl/backends.h"
#include "tpl/model.h"
#include "tpl/plan.h"

int main(int argc, char** argv) {
  tpl::MpiSession session(&argc, &argv);
  int status = 1;
  try {
    const std::unique_ptr<tpl::Communicator> world = session.world();
    if (argc < 2) throw tpl::InvalidArgument("usage: tp_decoder plan.json [tokens...]");
    const tpl::Plan plan = tpl::Plan::from_file(argv[1]);
    const tpl::ModelSpec model = tpl::ModelSpec::preset(plan.model);
    const auto weights = tpl::make_random_weights(7);
    const tpl::StackOptions options;
    tpl::DecoderStack stack(*world, model, plan, *weights, options);
    std::vector<std::int64_t> batches;
    for (int i = 2; i < argc; ++i) batches.push_back(std::atoll(argv[i]));
    if (batches.empty()) batches = {5, 300};

    bool ok = true;
    for (const std::int64_t tokens : batches) {
      std::mt19937 gen(static_cast<unsigned>(tokens));
      std::normal_distribution<float> d(0.f, 1.f);
      std::vector<float> xv(static_cast<std::size_t>(tokens * model.hidden));
      for (auto& v : xv) v = d(gen);
      const tpl::Tensor x = tpl::Tensor::from_f32(xv, tokens, model.hidden);
      const tpl::Tensor y = stack.forward(x);
      double rel = 0;
      if (stack.groups().tp().rank() == 0) {
        tpl::LocalCommunicator one;
        tpl::DecoderStack single(one, model, tpl::Config{}, *weights, options);
        const tpl::Tensor ref = single.forward(x);
        double err = 0, top = 0;
        for (std::int64_t r = 0; r < tokens; ++r)
          for (std::int64_t c = 0; c < model.hidden; ++c) {
            err = std::max(err, double(std::fabs(tpl::get_f32(y, r, c) - tpl::get_f32(ref, r, c))));
            top = std::max(top, double(std::fabs(tpl::get_f32(ref, r, c))));
          }
        rel = err / top;
      }
      const bool here = world->all_true(rel < 1e-4);
      if (world->rank() == 0)
        std::printf("%lld tokens: strategy %s, max rel error %.2e (rank 0)\n",
                    static_cast<long long>(tokens), stack.strategy_for(tokens).c_str(), rel);
      ok = ok && here;
    }
    if (world->rank() == 0) std::printf("%s\n", ok ? "PASS" : "FAIL");
    status = ok ? 0 : 1;
  } catch (const tpl::Error& e) {
    std::fprintf(stderr, "tp_decoder: error: %s\n", e.what());
    status = 2;
  }
  return status;
}

// The cost model against the ops it models: at 1-4 ranks, for every strategy it covers, the
// bytes it predicts per layer are the bytes the stack's communicators counted in a real forward.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "harness.h"
#include "tpl/cost_model.h"
#include "tpl/error.h"
#include "tpl/model.h"

namespace tpl {
namespace {

MachineProfile flat_profile(int group) {
  MachineProfile p;
  for (const char* dt : {"f32", "bf16", "int8"}) p.gemm[dt] = {{64, 64, "x", {{1, 1}, {16, 2}}}};
  for (Collective c : {Collective::kAllReduce, Collective::kReduceScatter, Collective::kAllGather,
                       Collective::kAllToAll, Collective::kBroadcast})
    for (int g = 2; g <= group; ++g)
      p.collectives[MachineProfile::collective_key(c, g)] = {{4096, 1}, {1 << 20, 2}};
  p.copy_gbps = 1;
  return p;
}

TEST(CostModelVsOps, PredictedBytesMatchTheCountedBytes) {
  Communicator& world = testing::world();
  const int w = world.size();
  // 12 heads of 16 (MHA, so every TP size up to 12 splits the attention), an intermediate size
  // that 3 ranks split unevenly.
  const ModelSpec model = ModelSpec::from_hf_json({{"model_type", "llama"},
                                                   {"hidden_size", 192},
                                                   {"intermediate_size", 352},
                                                   {"num_attention_heads", 12},
                                                   {"num_key_value_heads", 12},
                                                   {"num_hidden_layers", 2}},
                                                  "mha12");
  const CostModel cm(flat_profile(w));
  const auto weights = make_random_weights(3);
  std::vector<nlohmann::json> configs{
      nlohmann::json::object(),
      {{"flashcomm1", true}, {"flashcomm1_threshold", 0}},
      {{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"fused_chunks", 1}},
      {{"matmul_allreduce", true}},
      {{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"flashcomm2_p", 1}}};
  for (auto j : configs) {
    j["tp"] = w, j["dp"] = 1, j["pp"] = 1;
    if (w == 1 && j.contains("flashcomm1")) continue;  // FlashComm1 needs TP > 1
    const Config cfg = Config::from_json(j);
    for (std::int64_t n : {7, 33}) {
      SCOPED_TRACE(j.dump() + " tokens=" + std::to_string(n));
      StackPrediction pred;
      try {
        pred = cm.predict(model, cfg, w, n, {});
      } catch (const Unsupported& e) {
        continue;  // e.g. FlashComm2 with unequal head slices at 3 ranks
      }
      DecoderStack stack(world, model, cfg, *weights, StackOptions{});
      stack.forward(testing::random_normal(n, model.hidden, 1.f, 5));
      const auto& rep = stack.report();
      ASSERT_EQ(rep.size(), pred.layers.size());
      std::string bad;
      for (std::size_t i = 0; i < rep.size(); ++i)
        if (rep[i].prefix != pred.layers[i].prefix ||
            std::abs(rep[i].bytes_sent - pred.layers[i].bytes_sent) >
                1e-6 * (1 + rep[i].bytes_sent))
          bad += rep[i].prefix + " (" + rep[i].op + "): counted " +
                 std::to_string(rep[i].bytes_sent) + ", predicted " +
                 std::to_string(pred.layers[i].bytes_sent) + "; ";
      testing::expect_agreed(world, bad);
    }
  }
}

}  // namespace
}  // namespace tpl

// Layer-sharded weights (seed-spec §7b, invariant §15 item 7): over many forward passes and
// k in {0, 1, 2}, every wait_weight(l) finds layer l's exact weight, no window is refilled
// before its consumer ran, and each rank holds only its own layers plus k+1 windows.
#include <gtest/gtest.h>

#include "harness.h"
#include "tpl/layer_shard.h"
#include "tpl/linear.h"
#include "tpl/quant.h"

namespace tpl {
namespace {

using testing::compare;
using testing::expect_agreed;
using testing::world;

Tensor layer_weight(int l) {
  return testing::random_ints(6, 10, 50, 700 + l, DType::kBF16);
}

TEST(LayerShard, RingDeliversEveryLayerOverManyPasses) {
  Communicator& w = world();
  for (int start : {0, 30})  // a series that does not start at 0 (seed §16 item 13)
    for (int k : {0, 1, 2})
      for (int layers : {k + 2, 7}) {
        LayerShardSeries series(w, k);
        for (int l = start + layers - 1; l >= start; --l) series.add_layer(l, layer_weight(l));
        series.finalize();
        std::string msg;
        int own = 0;
        for (int l = start; l < start + layers; ++l) own += series.is_source(l);
        const std::size_t per = layer_weight(0).nbytes();
        if (series.memory_bytes() != per * static_cast<std::size_t>(own + k + 1))
          msg = "memory " + std::to_string(series.memory_bytes()) + " != (own " +
                std::to_string(own) + " + k+1 windows) x " + std::to_string(per);
        for (int pass = 0; pass < 3 && msg.empty(); ++pass)
          for (int l = start; l < start + layers && msg.empty(); ++l) {
            series.reach_layer_index(l);  // QKV of layer l
            Tensor expect = layer_weight(l);
            msg = compare(series.wait_weight(l), expect, 0, 0,  // o_proj of layer l
                          "start=" + std::to_string(start) + " k=" + std::to_string(k) +
                              " L=" + std::to_string(layers) + " pass " + std::to_string(pass) +
                              " layer " + std::to_string(l));
          }
        expect_agreed(w, msg);
      }
}

TEST(LayerShard, OwnershipIsRelativeToTheSeriesStart) {
  LayerShardSeries series(world(), 1);
  for (int l = 30; l < 34; ++l) series.add_layer(l, layer_weight(l));
  series.finalize();
  EXPECT_EQ(series.owner(30), 0);
  EXPECT_EQ(series.owner(31), 1 % world().size());
}

TEST(LayerShard, MisuseIsAClearError) {
  Communicator& w = world();
  LayerShardSeries series(w, 1);
  for (int l = 0; l < 4; ++l) series.add_layer(l, layer_weight(l));
  series.finalize();
  // Layer 2 was never reached: no window holds it.
  EXPECT_THROW(series.wait_weight(2), InvalidArgument);
  series.reach_layer_index(0);  // prefetch layer 1 into window 1
  // Reaching again before layer 0's o_proj consumed window 0 would overwrite it.
  EXPECT_THROW(series.reach_layer_index(1), InvalidArgument);
  LayerShardSeries bad(w, 3);
  for (int l = 0; l < 4; ++l) bad.add_layer(l, layer_weight(l));
  EXPECT_THROW(bad.finalize(), InvalidArgument);  // k > L - 2
  LayerShardSeries gap(w, 0);
  gap.add_layer(0, layer_weight(0));
  gap.add_layer(2, layer_weight(2));
  EXPECT_THROW(gap.finalize(), InvalidArgument);  // not consecutive
}

}  // namespace
}  // namespace tpl

namespace tpl {
namespace {

// FlashComm2 o_proj layers over a decoder stack with layer sharding (QKV triggers the prefetch,
// o_proj waits for its window): outputs equal those of the same layers with resident weights.
TEST(LayerShard, ShardedOprojEqualsResidentWeights) {
  Communicator& w = world();
  if (w.size() < 2) GTEST_SKIP() << "FlashComm2 needs TP > 1";
  for (int p = 1; p < w.size(); ++p) {
    if (w.size() % p) continue;
    for (int k : {0, 1, 2}) {
      const int layers = 5;
      Config cfg;
      cfg.layout = {1, 1, w.size()};
      cfg.flashcomm2_p = p;
      cfg.layer_sharding = {"o_proj"};
      const Features f = Features::derive(cfg, {});
      ProcessGroups groups(w, cfg.layout, group_sizes(cfg, f));
      Selector sel(cfg, {});
      LayerShardSeries series(groups.shard_weight(), k);
      OpEnv sharded{cfg, f, groups, &series, nullptr, nullptr, &series};
      OpEnv resident{cfg, f, groups};
      std::vector<std::unique_ptr<LinearLayer>> qkv, o_sharded, o_resident;
      std::vector<Tensor> w_qkv, w_o;
      const std::int64_t hidden = 16, attn = 12 * w.size();
      for (int l = 0; l < layers; ++l) {
        const std::string base = "model.layers." + std::to_string(l) + ".self_attn.";
        LayerSpec sq{base + "qkv_proj", LayerKind::kColumn, hidden, attn};
        LayerSpec so{base + "o_proj", LayerKind::kRow, attn, hidden};
        w_qkv.push_back(testing::random_ints(attn, hidden, 2, 100 + l));
        w_o.push_back(testing::random_ints(hidden, attn, 2, 200 + l));
        qkv.push_back(std::make_unique<LinearLayer>(sq, sel, sharded, default_cpu_gemm_backend(),
                                                    w_qkv.back(), TensorView()));
        o_sharded.push_back(std::make_unique<LinearLayer>(
            so, sel, sharded, default_cpu_gemm_backend(), w_o.back(), TensorView()));
        o_resident.push_back(std::make_unique<LinearLayer>(
            so, sel, resident, default_cpu_gemm_backend(), w_o.back(), TensorView()));
      }
      series.finalize();
      std::string msg;
      for (int pass = 0; pass < 2 && msg.empty(); ++pass) {
        const std::int64_t n = pass ? 7 : 1001;
        const ForwardContext ctx = ForwardContext::make(cfg, f, {}, n);
        Tensor x = testing::random_ints(n, hidden, 2, 300 + pass);
        for (int l = 0; l < layers && msg.empty(); ++l) {
          Tensor h = qkv[l]->forward(x, ctx).output;  // triggers the prefetch of layer l+k
          Tensor a = o_sharded[l]->forward(h, ctx).output;
          Tensor b = o_resident[l]->forward(h, ctx).output;
          msg = compare(a, b, 0, 0,
                        "P=" + std::to_string(p) + " k=" + std::to_string(k) + " pass " +
                            std::to_string(pass) + " layer " + std::to_string(l));
        }
      }
      expect_agreed(w, msg);
    }
  }
}

// The W8A8 twin: int8 o_proj weights come from the series, each layer's deq_scale and
// quant_bias stay resident on every rank (they are per layer: weights of growing scale, a bias
// and per-layer activation calibration make them differ). Int8 GEMMs accumulate exactly and
// the dequantization is the same code, so outputs are bit-identical to resident weights.
TEST(LayerShard, ShardedW8A8OprojEqualsResidentWeights) {
  Communicator& w = world();
  if (w.size() < 2) GTEST_SKIP() << "FlashComm2 needs TP > 1";
  for (int p = 1; p < w.size(); ++p) {
    if (w.size() % p) continue;
    for (int k : {0, 1, 2}) {
      const int layers = 5;
      Config cfg;
      cfg.layout = {1, 1, w.size()};
      cfg.flashcomm2_p = p;
      cfg.layer_sharding = {"o_proj"};
      const Features f = Features::derive(cfg, {});
      ProcessGroups groups(w, cfg.layout, group_sizes(cfg, f));
      Selector sel(cfg, {});
      LayerShardSeries series(groups.shard_weight(), k);
      OpEnv sharded{cfg, f, groups, &series, nullptr, nullptr, &series};
      OpEnv resident{cfg, f, groups};
      std::vector<std::unique_ptr<LinearLayer>> qkv, o_sharded, o_resident;
      const std::int64_t hidden = 16, attn = 12 * w.size();
      for (int l = 0; l < layers; ++l) {
        const std::string base = "model.layers." + std::to_string(l) + ".self_attn.";
        LayerSpec sq{base + "qkv_proj", LayerKind::kColumn, hidden, attn};
        LayerSpec so{base + "o_proj", LayerKind::kRow, attn, hidden};
        const W8A8Params pq = make_w8a8_params(
            testing::random_normal(attn, hidden, 0.25f, 100 + l), TensorView(),
            calibrate_activation(testing::random_normal(32, hidden, 1.f, 400 + l)));
        const Tensor o_bias = testing::random_normal(1, hidden, 0.5f, 500 + l);
        const W8A8Params po = make_w8a8_params(
            testing::random_normal(hidden, attn, 0.1f * float(l + 1), 200 + l), o_bias.view(),
            calibrate_activation(testing::random_normal(32, attn, 0.5f + float(l), 600 + l)));
        qkv.push_back(
            std::make_unique<LinearLayer>(sq, sel, sharded, default_cpu_gemm_backend(), pq));
        o_sharded.push_back(
            std::make_unique<LinearLayer>(so, sel, sharded, default_cpu_gemm_backend(), po));
        o_resident.push_back(
            std::make_unique<LinearLayer>(so, sel, resident, default_cpu_gemm_backend(), po));
      }
      series.finalize();
      const std::string tag = "P=" + std::to_string(p) + " k=" + std::to_string(k);
      std::string msg;
      // The weight lives in the series only: int8, the owner's layers plus k+1 windows.
      const TensorView one = o_resident[0]->local_weight();
      int own = 0;
      for (int l = 0; l < layers; ++l) own += series.is_source(l);
      if (one.dtype() != DType::kI8 || !o_sharded[0]->local_weight().empty() ||
          series.memory_bytes() != one.nbytes() * static_cast<std::size_t>(own + k + 1))
        msg = tag + ": series holds " + std::to_string(series.memory_bytes()) + " bytes, want (" +
              std::to_string(own) + " own + " + std::to_string(k + 1) + " windows) x " +
              std::to_string(one.nbytes()) + " of int8, and no resident copy in the layer";
      const std::int64_t tokens[] = {1, 7, 37, 1};
      for (int pass = 0; pass < 4 && msg.empty(); ++pass) {
        const std::int64_t n = tokens[pass];
        const ForwardContext ctx = ForwardContext::make(cfg, f, {}, n);
        Tensor x = testing::random_normal(n, hidden, 1.f, 300 + pass);
        for (int l = 0; l < layers && msg.empty(); ++l) {
          Tensor h = qkv[l]->forward(x, ctx).output;  // triggers the prefetch of layer l+k
          Tensor a = o_sharded[l]->forward(h, ctx).output;
          Tensor b = o_resident[l]->forward(h, ctx).output;
          msg = compare(a, b, 0, 0,
                        tag + " pass " + std::to_string(pass) + " tokens " + std::to_string(n) +
                            " layer " + std::to_string(l));
        }
      }
      expect_agreed(w, msg);
    }
  }
}

}  // namespace
}  // namespace tpl

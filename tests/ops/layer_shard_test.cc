// Layer-sharded weights (seed-spec §7b, invariant §15 item 7): over many forward passes and
// k in {0, 1, 2}, every wait_weight(l) finds layer l's exact weight, no window is refilled
// before its consumer ran, and each rank holds only its own layers plus k+1 windows.
#include <gtest/gtest.h>

#include "harness.h"
#include "tpl/layer_shard.h"

namespace tpl {
namespace {

using testing::compare;
using testing::expect_agreed;
using testing::world;

Tensor layer_weight(int l) { return testing::random_ints(6, 10, 50, 700 + l, DType::kBF16); }

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
            series.reach_layer_index(l);           // QKV of layer l
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

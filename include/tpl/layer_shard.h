// Layer-sharded weights with asynchronous broadcast prefetch (seed-spec §7b).
//
// A series is a run of same-shaped layers (o_proj of layers start..start+L-1). Layer l's weight
// lives only on member (l - start) mod size of the shard-weight group (its "source"); every
// other member receives it just in time into a ring of k+1 windows, where k = prefetch_step:
//   * reach_layer(l), called by layer l's QKV op before its GEMM, starts the broadcast of layer
//     start + ((l - start + k) mod L) into the next window of the ring;
//   * wait_weight(l), called before layer l's o_proj GEMM, waits for l's broadcast and returns
//     the weight (the resident copy on its source).
// A window is reused every k+1 layers; the broadcast into it is issued at the next layer's QKV,
// after the o_proj that last read it, so no window is overwritten before its consumer ran.
// Memory per rank: its own layers plus k+1 windows (memory_bytes()).
// Indices are relative to `start`, so a series that does not begin at layer 0 (a pipeline stage)
// works (the seed used the absolute index, §16 item 13).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "tpl/communicator.h"
#include "tpl/linear_op.h"

namespace tpl {

// Where a layer gets its weight just before its GEMM.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual TensorView wait_weight(int layer_index) = 0;
};

class LayerShardSeries final : public OShardTrigger, public WeightSource {
 public:
  // group: the shard-weight group; prefetch_step: k >= 0; rt: where the resident layers and the
  // windows live (nullptr = host), the device of `group`'s tensors.
  LayerShardSeries(Communicator& group, int prefetch_step, Runtime* rt = nullptr);

  // Registration (construction time): every member calls it for every layer of the series, in
  // any order, with the layer's local weight; only the source keeps a copy.
  void add_layer(int layer_index, TensorView weight);
  // Collective: sorts and checks the layers (consecutive, same shape, 0 <= k <= max(0, L-2)),
  // fills windows 0..k-1 with layers start..start+k-1 by blocking broadcasts and allocates
  // window k empty.
  void finalize();

  void reach_layer(const LayerName& qkv_layer) override;
  void reach_layer_index(int layer_index);
  TensorView wait_weight(int layer_index) override;

  bool is_source(int layer_index) const;
  int owner(int layer_index) const;
  bool contains(int layer_index) const;
  bool empty() const { return layers_.empty(); }
  std::size_t memory_bytes() const;  // resident layers + windows on this rank
  int num_windows() const { return static_cast<int>(windows_.size()); }
  int start_layer() const { return start_; }
  int num_layers() const { return num_layers_; }

 private:
  struct Window {
    Tensor buf;
    int layer = -1;        // layer whose weight the window holds (or is receiving)
    bool consumed = true;  // its o_proj has read it since it was filled
    WorkPtr pending;
  };
  Window* window_of(int layer_index);
  TensorView buffer_for(int layer_index, Window& w);
  Where where() const { return Where{"layer shard series", group_.rank()}; }

  Communicator& group_;
  Runtime& rt_;
  int k_;
  bool finalized_ = false;
  std::map<int, Tensor> resident_;  // layers this member is the source of
  std::vector<int> layers_;         // registered indices
  DType dtype_ = DType::kF32;
  std::int64_t rows_ = -1, cols_ = -1;
  int start_ = 0, num_layers_ = 0;
  std::vector<Window> windows_;
  int window_offset_ = 0;
};

}  // namespace tpl

#include "tpl/layer_shard.h"

#include <algorithm>

#include "tpl/error.h"

namespace tpl {

LayerShardSeries::LayerShardSeries(Communicator& group, int prefetch_step, Runtime* rt)
    : group_(group), rt_(rt ? *rt : host_runtime()), k_(prefetch_step) {
  TPL_CHECK_GE(prefetch_step, 0, where(), "prefetch_step must be >= 0");
}

void LayerShardSeries::add_layer(int layer_index, TensorView weight) {
  TPL_CHECK(!finalized_, where(), "add_layer after finalize");
  TPL_CHECK(std::find(layers_.begin(), layers_.end(), layer_index) == layers_.end(), where(),
            "layer ", layer_index, " registered twice");
  if (rows_ < 0) {
    rows_ = weight.rows();
    cols_ = weight.cols();
    dtype_ = weight.dtype();
  }
  TPL_CHECK(weight.rows() == rows_ && weight.cols() == cols_ && weight.dtype() == dtype_, where(),
            "layer ", layer_index, " weight ", weight.describe(),
            " differs from the series shape; a series needs identical layers");
  layers_.push_back(layer_index);
  // Ownership is decided after finalize() knows `start`; keep every weight until then.
  resident_.emplace(layer_index, rt_.copy_of(weight));
}

void LayerShardSeries::finalize() {
  TPL_CHECK(!finalized_, where(), "finalize called twice");
  TPL_CHECK(!layers_.empty(), where(), "no layers in the series");
  std::sort(layers_.begin(), layers_.end());
  for (std::size_t i = 1; i < layers_.size(); ++i)
    TPL_CHECK_EQ(layers_[i], layers_[i - 1] + 1, where(), "series layers must be consecutive");
  start_ = layers_.front();
  num_layers_ = static_cast<int>(layers_.size());
  TPL_CHECK(k_ <= std::max(0, num_layers_ - 2), where(), "prefetch_step ", k_, " too large for ",
            num_layers_, " layers (needs k <= max(0, L - 2))");
  // Drop what this member does not own.
  for (auto it = resident_.begin(); it != resident_.end();)
    it = is_source(it->first) ? std::next(it) : resident_.erase(it);
  finalized_ = true;
  windows_.resize(k_ + 1);
  for (int w = 0; w <= k_; ++w) windows_[w].buf = rt_.empty(dtype_, rows_, cols_);
  for (int step = 0; step < k_; ++step) {
    const int l = start_ + step;
    Window& w = windows_[step];
    group_.broadcast(buffer_for(l, w), owner(l));
    w.layer = l;
    w.consumed = false;
  }
  window_offset_ = k_;
}

bool LayerShardSeries::contains(int l) const {
  return std::find(layers_.begin(), layers_.end(), l) != layers_.end();
}
int LayerShardSeries::owner(int l) const {
  return (l - start_) % group_.size();
}
bool LayerShardSeries::is_source(int l) const {
  return owner(l) == group_.rank();
}

TensorView LayerShardSeries::buffer_for(int l, Window& w) {
  return is_source(l) ? resident_.at(l).view() : w.buf.view();
}

void LayerShardSeries::reach_layer(const LayerName& qkv_layer) {
  if (!qkv_layer.layer_index || !contains(*qkv_layer.layer_index)) return;  // not in the series
  reach_layer_index(*qkv_layer.layer_index);
}

void LayerShardSeries::reach_layer_index(int l) {
  TPL_CHECK(finalized_, where(), "reach_layer before finalize");
  TPL_CHECK(contains(l), where(), "layer ", l, " is not in the series");
  const int next = start_ + (l - start_ + k_) % num_layers_;
  Window& w = windows_[window_offset_];
  window_offset_ = (window_offset_ + 1) % (k_ + 1);
  TPL_CHECK(w.layer != next, where(), "window already holds layer ", next);
  // §15 item 7: the previous occupant's o_proj must have run before the window is refilled.
  TPL_CHECK(w.consumed, where(), "window holding layer ", w.layer,
            " would be overwritten before its o_proj ran (reaching layer ", l, ")");
  if (w.pending) w.pending->wait();
  w.layer = next;
  w.consumed = false;
  w.pending = group_.ibroadcast(buffer_for(next, w), owner(next));
}

LayerShardSeries::Window* LayerShardSeries::window_of(int l) {
  for (auto& w : windows_)
    if (w.layer == l) return &w;
  return nullptr;
}

TensorView LayerShardSeries::wait_weight(int l) {
  TPL_CHECK(finalized_, where(), "wait_weight before finalize");
  Window* w = window_of(l);
  TPL_CHECK(w != nullptr, where(), "no window holds layer ", l,
            " (its QKV op did not reach it k layers ahead)");
  if (w->pending) {
    w->pending->wait();
    w->pending.reset();
  }
  w->consumed = true;
  return buffer_for(l, *w);
}

std::size_t LayerShardSeries::memory_bytes() const {
  std::size_t b = 0;
  for (const auto& [l, t] : resident_) b += t.nbytes();
  for (const auto& w : windows_) b += w.buf.nbytes();
  return b;
}

}  // namespace tpl

// Linear layers (seed-spec §10): Column, MergedColumn (gate/up), QKV, Row and Replicated.
//
// A layer asks the Selector for its op exactly once (the seed built QKV/merged ops twice, §16
// item 21), takes the op's (tp_rank, tp_size) and narrows the full, unsharded weight with them,
// so a custom group changes the sharding (FlashComm2 with P = 1 keeps the full o_proj).
//
// Sharding rules (uneven sizes are allowed; see docs/architecture.md):
//   Column        output rows shard_range_units(out / out_unit, out_unit, tp_size, tp_rank)
//   MergedColumn  each logical output (gate, up) split separately, then concatenated
//   QKV           query heads split by shard_range over heads (any TP size from 1 to the
//                 number of query heads); each rank holds the contiguous run of KV heads its
//                 query heads read (GQA), so KV heads that ranks share are replicated. Even
//                 splits give the usual layouts: KV heads split when tp_size divides them,
//                 rank r holds KV head r / (tp_size / kv_heads) when tp_size is a multiple
//   Row           input columns shard_range_units(in / in_unit, in_unit, tp_size, tp_rank);
//                 bias full
//   Replicated    full weight
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tpl/backends.h"
#include "tpl/linear_op.h"
#include "tpl/quant.h"

namespace tpl {

enum class LayerKind { kColumn, kMergedColumn, kQkv, kRow, kReplicated };

struct QkvShape {
  std::int64_t num_heads = 0;
  std::int64_t num_kv_heads = 0;
  std::int64_t head_dim = 0;
};

// Column for Column, MergedColumn and QKV; Row; Replicated.
Direction direction_of(LayerKind kind);

struct LayerSpec {
  std::string prefix;  // dotted module name, e.g. "model.layers.3.self_attn.o_proj"
  LayerKind kind = LayerKind::kColumn;
  std::int64_t in_features = 0;
  std::int64_t out_features = 0;           // ignored for MergedColumn and QKV (derived)
  std::vector<std::int64_t> output_sizes;  // MergedColumn: logical outputs, e.g. {I, I}
  QkvShape qkv;                            // QKV only
  // Row layers: the input is split in whole units of this many features (o_proj: head_dim, so
  // the split follows the attention heads of the QKV layer before it).
  std::int64_t in_unit = 1;
  // Column layers: the output is split in whole units of this many rows (MLA's q_b_proj and
  // kv_b_proj: one attention head each).
  std::int64_t out_unit = 1;
  bool bias = false;
  LinearFlags flags;
  DType dtype = DType::kF32;  // weights, activations and outputs
  bool disable_tp = false;
};

// Reads the parts of a layer's full weight [out, in] (and bias [1, out]) that a rank needs, so a
// rank can read only its shard from a checkpoint. Column-like layers ask for row blocks, row
// layers for one column block; each reader returns a new tensor of exactly that block, in the
// layer's dtype.
struct WeightLoader {
  std::function<Tensor(ShardRange rows)> rows;
  std::function<Tensor(ShardRange cols)> cols;
  std::function<Tensor(ShardRange cols)> bias;  // empty: no bias
};

struct LinearOutput {
  Tensor output;
  Placement placement;
  // The bias the op did not add (return_bias with skip_bias_add); empty otherwise. Every op
  // handles return_bias this same way (seed §16 item 2).
  std::optional<TensorView> bias;
};

class LinearLayer {
 public:
  // full_weight: [out, in] unsharded; full_bias: [1, out] or empty. Both are copied (narrowed).
  LinearLayer(const LayerSpec& spec, const Selector& selector, const OpEnv& env,
              GemmBackend backend, TensorView full_weight, TensorView full_bias);

  // Reads only this rank's shard through `loader`.
  LinearLayer(const LayerSpec& spec, const Selector& selector, const OpEnv& env,
              GemmBackend backend, const WeightLoader& loader);

  // W8A8 layer from full (unsharded) W8A8 parameters (make_w8a8_params); spec.bias must be
  // false (the float bias is folded into quant_bias); outputs are spec.dtype (f32 or bf16).
  LinearLayer(const LayerSpec& spec, const Selector& selector, const OpEnv& env,
              GemmBackend backend, const W8A8Params& quant);

  // Not movable: the local GEMM holds pointers into the layer.
  LinearLayer(const LinearLayer&) = delete;
  LinearLayer& operator=(const LinearLayer&) = delete;

  // Runs the op variant ctx.variant (0, the op chosen at construction, unless add_variant added
  // more); InvalidArgument when there is no such variant.
  LinearOutput forward(TensorView x, const ForwardContext& ctx);
  // Adds another op for this layer over the same weight shard, chosen by `selector` (a plan's
  // other strategy, with its own config in `env`), and returns its variant index. ConfigError
  // unless the new op holds exactly this shard: the same (tp_rank, tp_size) and unsharded flag,
  // and a layer-sharded o_proj only with another of the same kind. No weight is loaded.
  int add_variant(const Selector& selector, const OpEnv& env);
  int num_variants() const { return static_cast<int>(variants_.size()); }

  const LayerSpec& spec() const { return spec_; }
  const OpChoice& choice() const { return choice_; }  // variant 0's
  const LinearOp& op() const { return op_at(0); }     // variant 0's
  const LinearOp& op(int variant) const { return op_at(variant); }
  int tp_rank() const { return op_at(0).tp_rank(); }
  int tp_size() const { return op_at(0).tp_size(); }
  // This rank's weight shard (host; the GEMM keeps its own copy, on the device for cuBLASLt)
  // and float bias (on the runtime's device).
  TensorView local_weight() const { return weight_; }
  TensorView local_bias() const { return bias_; }
  std::int64_t full_out_features() const { return full_out_features(spec_); }
  // Output features of the whole layer (the sum of a merged layer's parts, q + k + v for QKV).
  static std::int64_t full_out_features(const LayerSpec& spec);
  // Input columns this rank holds (row layers: whole in_unit blocks).
  static ShardRange input_cols(const LayerSpec& spec, int tp_rank, int tp_size);

  // Rows of the full weight this rank holds, in local order (column-like layers).
  static std::vector<ShardRange> output_rows(const LayerSpec& spec, int tp_rank, int tp_size);
  // The [n, k] of the weight shard this rank holds (row layers: all outputs, its input columns;
  // replicated or unsplit: the full weight; column-like: its output rows, all inputs).
  static std::pair<std::int64_t, std::int64_t> local_weight_shape(const LayerSpec& spec,
                                                                  int tp_rank, int tp_size);

 private:
  LayerSpec spec_;
  OpChoice choice_;
  struct Variant {
    OpChoice choice;
    std::unique_ptr<LinearOp> op;
  };
  std::vector<Variant> variants_;      // [0]: the op chosen at construction
  LinearOp& op_at(int variant) const;  // InvalidArgument when out of range
  Tensor weight_;
  Tensor bias_;
  void init(const Selector& selector, const OpEnv& env, GemmBackend backend,
            const WeightLoader& load, const W8A8Params* quant);
  // The equal-split constraints of `choice`'s op, checked before any collective runs.
  void check_op(const OpChoice& choice, const LinearOp& op, const OpEnv& env, const Where& w) const;
  void check_full(TensorView full_weight, TensorView full_bias, const Where& w);
  static WeightLoader view_loader(TensorView weight, TensorView bias);

  std::unique_ptr<Gemm> gemm_;
  LocalGemm local_;
  Tensor deq_scale_, quant_bias_;  // W8A8 only
  W8A8Local quant_local_;
  WeightPrefetchHook* prefetch_ = nullptr;
  // Layer-sharded weight: fetched from the series before each forward (see layer_shard.h).
  LayerShardSeries* layer_shard_ = nullptr;
  int layer_index_ = -1;
  std::string shard_impl_;  // the CPU GEMM implementation its window is planned on
  GemmBackend backend_ = GemmBackend::kReference;
  GemmDesc desc_;
  Runtime* rt_ = nullptr;  // env.runtime: where bias_ and the W8A8 vectors live
  // env.cpu_gemm, or this layer's own chooser: a layer-sharded o_proj re-plans its GEMM every
  // forward, and CPU detection and the exactness probe belong to construction, not to a forward.
  CpuGemmChooser* cpu_gemm_ = nullptr;
  std::unique_ptr<CpuGemmChooser> own_cpu_gemm_;
};

}  // namespace tpl

// Linear ops (seed-spec §6). An op fixes a layer's communication group, hence its weight
// sharding (tp_rank, tp_size), and its forward: the collectives around the local GEMM. Every op
// states its entry and exit placement; docs/ops.md has the steps and bytes per rank.
//
// Adding an op = one class deriving from LinearOp (one file in src/ops/) + one row in the
// selection rule table (src/policy/selection.cc) + one case in make_linear_op().
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "tpl/comm_worker.h"
#include "tpl/cpu_gemm.h"
#include "tpl/error.h"
#include "tpl/forward_context.h"
#include "tpl/gemm.h"
#include "tpl/placement.h"
#include "tpl/process_groups.h"
#include "tpl/runtime.h"
#include "tpl/selection.h"

namespace tpl {

// vLLM's per-layer flags (§1.3).
struct LinearFlags {
  bool skip_bias_add = false;     // do not add the bias; return it instead (with return_bias)
  bool return_bias = false;       // forward also returns the bias that was not added
  bool gather_output = false;     // column: all-gather the feature shards
  bool input_is_parallel = true;  // row: input is already this rank's feature shard
  bool reduce_results = true;     // row: reduce the partial sums
};

// W8A8 parameters of this rank's shard (see quant.h).
// The vectors live on the layer's runtime device.
struct W8A8Local {
  float input_scale = 1.f;
  std::int32_t input_offset = 0;
  TensorView deq_scale;   // f32 [1, out_local]
  TensorView quant_bias;  // int32 [1, out_local]
};

// What an op runs locally: this rank's weight shard, planned once, and the layer's bias terms.
//
// `bias_here` says whether this rank adds the layer's bias terms: column ops always, row ops
// only on the reducing group's rank 0 (so a sum counts them once). The float bias is still left
// out when skip_bias_add; W8A8's quant_bias is never skipped, because it also carries the
// activation zero-point correction.
struct LocalGemm {
  Gemm* gemm = nullptr;  // float: x·Wᵀ (+ planned bias); W8A8: int8 x int8 -> int32
  DType out_dtype = DType::kF32;
  std::int64_t in_features = 0;        // in_local
  std::int64_t out_features = 0;       // out_local
  std::int64_t full_out_features = 0;  // out over the whole group (for feature gathers)
  std::int64_t full_in_features = 0;   // the layer's whole input (FlashComm2's head slices)
  TensorView bias;                     // f32 [1, out_local] float bias, empty if none
  bool skip_bias_add = false;
  std::int64_t in_unit = 1;          // row layers: input split granularity (LayerSpec)
  const W8A8Local* quant = nullptr;  // non-null for W8A8 layers
  // Where x, y, the bias and the W8A8 vectors live and where the non-GEMM steps run; the ops
  // allocate their temporaries here too. nullptr means the host runtime.
  Runtime* rt = nullptr;

  Runtime& runtime() const { return rt ? *rt : host_runtime(); }
  bool quantized() const { return quant != nullptr; }
  // W8A8: the int8 activations the GEMM consumes (any float x; int8 x is returned as a copy).
  Tensor quantize(TensorView x) const;
  // y = x·Wᵀ plus the bias terms when bias_here. W8A8 quantizes a float x first; an int8 x is
  // taken as already quantized.
  Tensor run(TensorView x, bool bias_here) const;
  void run_into(TensorView x, TensorView y, bool bias_here) const;
  // Adds the bias terms to rows that were reduced already (the fused reduce-scatter path, where
  // every reduced row lives on exactly one rank): the float bias unless skipped, and for W8A8
  // quant_bias·deq_scale.
  void add_bias_terms(TensorView y) const;
  bool has_bias() const { return !bias.empty() || quantized(); }
};

class LayerShardSeries;

// Called by Flashcomm2OshardQKV before its GEMM to start the weight broadcast of a later
// layer's o_proj (§7b). The default does nothing (layer sharding is a later issue).
class OShardTrigger {
 public:
  virtual ~OShardTrigger() = default;
  virtual void reach_layer(const LayerName& qkv_layer) = 0;
};

// Weight-prefetch hook (seed §9): called after every row op with its output, e.g. to warm the
// cache with the next MLP weight while vector work runs. It must not change any value; the
// default (no hook) does nothing.
class WeightPrefetchHook {
 public:
  virtual ~WeightPrefetchHook() = default;
  virtual void after_row_op(const LayerName& layer, const ForwardContext& ctx,
                            TensorView output) = 0;
};

// Everything an op may depend on, passed explicitly.
struct OpEnv {
  const Config& config;
  const Features& features;
  const ProcessGroups& groups;
  OShardTrigger* oshard = nullptr;
  // Runs the collectives of fused GEMM+collective paths; nullptr = no overlap (GEMM, then the
  // collective). Owned by the caller; one per process is enough.
  CommWorker* overlap = nullptr;
  WeightPrefetchHook* prefetch = nullptr;  // optional, see WeightPrefetchHook
  // Layer-sharded weights (§7b): FlashComm2 o_proj layers, and under DSA-CP on a prefill node
  // the ShardedCP layers given a series, register their weight here and take it from here
  // before each GEMM. Usually the same object as `oshard`.
  LayerShardSeries* layer_shard = nullptr;
  // Device of the layers' tensors; nullptr = the host runtime. Its communicators (groups) and
  // GEMM backend must be of the same device: host with MPI and the CPU GEMMs, CUDA with NCCL
  // and cuBLASLt.
  Runtime* runtime = nullptr;
  // Chooses the CPU GEMM implementation of layers on the cpu backend and caches its
  // measurements (tpl/cpu_gemm.h); nullptr = list order, no timing. Owned by the caller.
  CpuGemmChooser* cpu_gemm = nullptr;
};

class LinearOp {
 public:
  virtual ~LinearOp() = default;
  virtual OpKind kind() const = 0;
  // Weight-sharding coordinates (the seed's tp_rank/tp_size).
  virtual int tp_rank() const = 0;
  virtual int tp_size() const = 0;
  // Placement of this rank's input and output for a batch, over the op's group.
  virtual Placement input_placement(const ForwardContext& ctx) const = 0;
  virtual Placement output_placement(const ForwardContext& ctx) const = 0;
  // The op's steps, in order. Returns this rank's output in output_placement(ctx).
  virtual Tensor forward(TensorView x, const ForwardContext& ctx, const LocalGemm& g) = 0;
  // Whether forward() adds the layer bias itself (false only when skip_bias_add).
  const LinearFlags& flags() const { return flags_; }
  const LayerName& name() const { return name_; }

 protected:
  LinearOp(LayerName name, LinearFlags flags, int world_rank)
      : name_(std::move(name)), flags_(flags), world_rank_(world_rank) {}
  // Error location: op, layer and world rank.
  Where where() const {
    return Where{std::string(op_kind_name(kind())) + " " + name_.prefix, world_rank_};
  }
  LayerName name_;
  LinearFlags flags_;
  int world_rank_;
};

// Builds the op `choice` names, for the layer `prefix`, in the groups of `env`.
std::unique_ptr<LinearOp> make_linear_op(const OpChoice& choice, const LayerName& name,
                                         const LinearFlags& flags, const OpEnv& env);

}  // namespace tpl

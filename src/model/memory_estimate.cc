// estimate_stack_memory (tpl/memory.h): DecoderStack's allocations, counted the way
// src/model/decoder.cc and src/linear/linear_layer.cc make them, before any is made.
#include <algorithm>

#include "gemm/cpu_gemm_impls.h"
#include "tpl/cpu_gemm.h"
#include "tpl/memory.h"
#include "tpl/model.h"
#include "tpl/process_groups.h"
#include "tpl/selection.h"

namespace tpl {

namespace {

// Bytes per weight element the layer's GEMM keeps, for the backend the stack plans on.
double gemm_held_bytes(GemmBackend backend, const GemmDesc& desc, const CpuGemmChooser* chooser) {
  switch (backend) {
    case GemmBackend::kCpu:
      return chooser->held_bytes_per_weight(desc);
    case GemmBackend::kReference:
      return reference_gemm_held_bytes(desc);
    case GemmBackend::kOneDnn:
      return double(dtype_size(desc.weight));
    case GemmBackend::kCublasLt:
      return 0;  // on the device
  }
  return double(dtype_size(desc.weight));
}

struct RankBytes {
  double weights = 0, copies = 0, small = 0, windows = 0, transient = 0;
  double total() const { return weights + copies + small + windows + transient; }
};

}  // namespace

MemoryEstimate estimate_stack_memory(const ModelSpec& model, const Config& config,
                                     const StackOptions& options, int world_size,
                                     std::int64_t tokens) {
  model.validate();
  Config cfg = config;
  cfg.validate();
  const Features features = Features::derive(cfg, model.info);
  const Selector selector(cfg, model.info);
  const DType dt = options.dtype;
  const double e = double(dtype_size(dt));
  std::unique_ptr<CpuGemmChooser> chooser;
  if (options.backend == GemmBackend::kCpu) chooser = std::make_unique<CpuGemmChooser>();

  // Layer sharding: which world ranks share a shard-weight group (each holds its own layers of
  // the series, plus k + 1 windows of one layer).
  const GroupSizes sizes = group_sizes(cfg, features);
  GroupTable sw;
  if (features.flashcomm2_oshard && sizes.shard_weight)
    sw = shard_weight_groups(cfg.layout, *sizes.shard_weight, sizes.flashcomm2_p);
  const int k = prefetch_step_for(options, model.layers);

  RankBytes most;
  for (int rank = 0; rank < world_size; ++rank) {
    RankBytes b;
    double sharded_layer = 0;  // one layer-sharded o_proj's local weight (int8 under W8A8)
    double sharded_plan = 0;   // the GEMM planned over its window, as the layer's dtypes hold it
    std::int64_t sharded_layers = 0;
    for (std::int64_t l = 0; l < model.layers; ++l) {
      b.small += 2.0 * model.hidden * 4;  // the two RMSNorm weights, f32
      for (const LayerSpec& spec : decoder_linear_specs(model, l, dt)) {
        const OpChoice c = selector.choose(spec.prefix, direction_of(spec.kind), spec.disable_tp);
        const ShardCoord sc = shard_coord(c, cfg, rank);
        const int size = c.unsharded ? 1 : sc.tp_size, r = c.unsharded ? 0 : sc.tp_rank;
        const std::int64_t full_out = LinearLayer::full_out_features(spec);
        const auto [n, kk] = LinearLayer::local_weight_shape(spec, r, size);
        const double elems = double(n) * double(kk);
        GemmDesc desc;
        desc.n = n;
        desc.k = kk;
        desc.act = desc.weight = desc.out = options.w8a8 ? DType::kI8 : dt;
        if (options.w8a8) desc.out = DType::kI32;
        const double held = gemm_held_bytes(options.backend, desc, chooser.get());
        const double own = options.w8a8 ? 1.0 : e;  // the layer's shard (int8 under W8A8)
        if (spec.bias || options.w8a8) b.small += double(full_out) * 4 * (options.w8a8 ? 3 : 1);
        // Loading one layer: a seeded source makes each part (q, k, v; gate, up) in full before
        // the loader copies the block it needs (a checkpoint reads only the block); W8A8
        // quantises the whole weight, then takes its shard; a measuring chooser holds the best
        // copy so far next to the one it times (beyond the copy it keeps).
        const double full = double(full_out) * double(spec.in_features);
        const bool timed = options.backend == GemmBackend::kCpu && chooser->options().measure;
        const double load = options.w8a8 ? 2.0 * full * e + full : (full + elems) * e;
        b.transient = std::max(b.transient, load + (timed ? 2 * elems * held : 0));
        if (features.flashcomm2_oshard && c.kind == OpKind::kFlashcomm2OProjRow) {
          sharded_layer = elems * own;
          sharded_plan = elems * held * (timed ? 2 : 1);  // the first plan may be timed
          ++sharded_layers;
          continue;
        }
        b.weights += elems * own;
        b.copies += elems * held;
      }
    }
    if (sharded_layers > 0) {
      const auto m = find_membership(sw, rank);
      const int g = m ? static_cast<int>(sw[m->group].size()) : 1;
      const int member = m ? m->member : 0;
      std::int64_t mine = 0;
      for (std::int64_t i = 0; i < sharded_layers; ++i) mine += (i % g == member) ? 1 : 0;
      b.weights += double(mine) * sharded_layer;
      // Windows, and the GEMM planned over the window each forward uses (one at a time).
      b.windows += double(k + 1) * sharded_layer + sharded_plan;
    }
    double forward = 0;
    if (tokens > 0) {
      // A forward: the residual, the norms' outputs, qkv, the attention's f32 q/k/v and its
      // output, gate_up and its activation, each [tokens, width], plus FC1's padded copies.
      const double t = double(tokens) + world_size;
      const double q = double(model.heads) * model.head_dim,
                   kv = double(model.kv_heads) * model.head_dim;
      const double inter = double(std::max(model.intermediate, model.shared_expert_intermediate));
      forward = t * (4.0 * model.hidden * e + (q + 2 * kv) * (e + 4) + q * e + 3.0 * inter * e +
                     2.0 * inter * 4);
    }
    b.transient = std::max(b.transient, forward);  // loading is over before a forward
    if (b.total() > most.total()) most = b;
  }
  MemoryEstimate est;
  est.add("weights", most.weights);
  est.add("GEMM copies", most.copies);
  est.add("layer-shard windows", most.windows);
  est.add("norms and biases", most.small);
  // Measured, not derived: the tiny preset's run grows 56-58 MiB, 45 MiB more than its tensors
  // (oneDNN's JIT code and scratchpads, OpenMP and worker thread stacks, the chooser's probes,
  // and freed transients that malloc keeps).
  est.runtime = 64.0 * 1024 * 1024;
  est.transient = most.transient;
  return est;
}

}  // namespace tpl

#include "tpl/linear.h"

#include <numeric>

#include "tpl/error.h"
#include "tpl/layer_shard.h"

namespace tpl {

Direction direction_of(LayerKind k) {
  switch (k) {
    case LayerKind::kColumn:
    case LayerKind::kMergedColumn:
    case LayerKind::kQkv:
      return Direction::kColumn;
    case LayerKind::kRow:
      return Direction::kRow;
    case LayerKind::kReplicated:
      return Direction::kReplicated;
  }
  return Direction::kColumn;
}

namespace {

std::vector<ShardRange> qkv_rows_of(const QkvShape& s, int rank, int size, const Where& w);

// Every rank's split is checked, so a layout that fails on any rank fails on all of them the
// same way, before any collective.
std::vector<ShardRange> qkv_rows(const QkvShape& s, int rank, int size, const Where& w) {
  for (int r = 0; r < size; ++r)
    if (r != rank) qkv_rows_of(s, r, size, w);
  return qkv_rows_of(s, rank, size, w);
}

std::vector<ShardRange> qkv_rows_of(const QkvShape& s, int rank, int size, const Where& w) {
  TPL_CHECK(s.num_heads > 0 && s.num_kv_heads > 0 && s.head_dim > 0, w,
            "QKV shape must be positive");
  TPL_CHECK_EQ(s.num_heads % s.num_kv_heads, 0, w, "num_heads must be a multiple of num_kv_heads");
  TPL_CHECK(size <= s.num_heads, w, "QKV with ", s.num_heads, " query heads cannot be split over ",
            size, " ranks: every rank needs at least one query head (TP size 1..", s.num_heads,
            ")");
  const std::int64_t hd = s.head_dim;
  const ShardRange q = shard_range_units(s.num_heads, hd, size, rank);
  // GQA: the rank holds the KV heads its query heads read, a contiguous run; ranks whose queries
  // share a KV head each hold a copy. When the heads divide evenly this is the plain split (TP <=
  // KV heads) or the usual replication (TP a multiple of the KV heads).
  const std::int64_t group = s.num_heads / s.num_kv_heads;
  const std::int64_t first = q.offset / hd, last = (q.offset + q.size) / hd - 1;
  const ShardRange kv_heads{first / group, last / group - first / group + 1};
  const std::int64_t q_total = s.num_heads * hd, kv_total = s.num_kv_heads * hd;
  return {q,
          {q_total + kv_heads.offset * hd, kv_heads.size * hd},
          {q_total + kv_total + kv_heads.offset * hd, kv_heads.size * hd}};
}

}  // namespace

std::vector<ShardRange> LinearLayer::output_rows(const LayerSpec& spec, int rank, int size) {
  const Where w{"linear " + spec.prefix, -1};
  switch (spec.kind) {
    case LayerKind::kColumn:
      TPL_CHECK(spec.out_unit >= 1 && spec.out_features % spec.out_unit == 0, w, "out_unit ",
                spec.out_unit, " must divide the output features ", spec.out_features);
      return {shard_range_units(spec.out_features / spec.out_unit, spec.out_unit, size, rank)};
    case LayerKind::kMergedColumn: {
      std::vector<ShardRange> v;
      std::int64_t base = 0;
      for (std::int64_t s : spec.output_sizes) {
        ShardRange r = shard_range(s, size, rank);
        v.push_back({base + r.offset, r.size});
        base += s;
      }
      return v;
    }
    case LayerKind::kQkv:
      return qkv_rows(spec.qkv, rank, size, w);
    case LayerKind::kRow:
    case LayerKind::kReplicated:
      return {{0, spec.out_features}};
  }
  return {};
}

std::pair<std::int64_t, std::int64_t> LinearLayer::local_weight_shape(const LayerSpec& spec,
                                                                      int tp_rank, int tp_size) {
  if (spec.kind == LayerKind::kRow)
    return {full_out_features(spec), input_cols(spec, tp_rank, tp_size).size};
  if (spec.kind == LayerKind::kReplicated || tp_size <= 1)
    return {full_out_features(spec), spec.in_features};
  std::int64_t n = 0;
  for (const ShardRange& r : output_rows(spec, tp_rank, tp_size)) n += r.size;
  return {n, spec.in_features};
}

std::int64_t LinearLayer::full_out_features(const LayerSpec& spec) {
  switch (spec.kind) {
    case LayerKind::kMergedColumn:
      return std::accumulate(spec.output_sizes.begin(), spec.output_sizes.end(), std::int64_t{0});
    case LayerKind::kQkv:
      return (spec.qkv.num_heads + 2 * spec.qkv.num_kv_heads) * spec.qkv.head_dim;
    default:
      return spec.out_features;
  }
}

ShardRange LinearLayer::input_cols(const LayerSpec& spec, int tp_rank, int tp_size) {
  return shard_range_units(spec.in_features / spec.in_unit, spec.in_unit, tp_size, tp_rank);
}

namespace {
// Rows `rows` of `full` (in order) as one contiguous tensor.
// Rows `rows` (in order) of the full weight, read through the loader, as one tensor.
Tensor take_rows(const WeightLoader& load, const std::vector<ShardRange>& rows, DType dtype,
                 std::int64_t cols, const Where& w) {
  std::int64_t n = 0;
  for (const auto& r : rows) n += r.size;
  Tensor t(dtype, n, cols);
  std::int64_t at = 0;
  for (const auto& r : rows) {
    if (r.size == 0) continue;
    Tensor part = load.rows(r);
    TPL_CHECK(part.rows() == r.size && part.cols() == cols && part.dtype() == dtype, w,
              "weight loader returned ", part.view().describe(), " for rows [", r.offset, ", ",
              r.offset + r.size, ") of a [*, ", cols, "] ", dtype, " weight");
    copy_into(part, t.view().row_slice(at, r.size));
    at += r.size;
  }
  return t;
}
// Columns `cols` of a [1, out] vector, converted to `dtype`.
Tensor take_cols(TensorView full, const std::vector<ShardRange>& cols, DType dtype) {
  std::int64_t n = 0;
  for (const auto& r : cols) n += r.size;
  Tensor t(dtype, 1, n);
  std::int64_t at = 0;
  for (const auto& r : cols) {
    convert_into(full.col_slice(r.offset, r.size), t.view().col_slice(at, r.size));
    at += r.size;
  }
  return t;
}
}  // namespace

LinearLayer::LinearLayer(const LayerSpec& spec, const Selector& selector, const OpEnv& env,
                         GemmBackend backend, TensorView full_weight, TensorView full_bias)
    : spec_(spec) {
  const Where w{"linear " + spec.prefix, env.groups.world_rank()};
  TPL_CHECK_EQ(full_weight.dtype(), spec_.dtype, w, "weight dtype");
  check_full(full_weight, full_bias, w);
  init(selector, env, backend, view_loader(full_weight, full_bias), nullptr);
}

LinearLayer::LinearLayer(const LayerSpec& spec, const Selector& selector, const OpEnv& env,
                         GemmBackend backend, const WeightLoader& loader)
    : spec_(spec) {
  const Where w{"linear " + spec.prefix, env.groups.world_rank()};
  TPL_CHECK(loader.rows && loader.cols, w, "weight loader needs rows and cols readers");
  TPL_CHECK_EQ(spec.bias, static_cast<bool>(loader.bias), w, "bias reader given iff spec.bias");
  init(selector, env, backend, loader, nullptr);
}

WeightLoader LinearLayer::view_loader(TensorView weight, TensorView bias) {
  WeightLoader l;
  l.rows = [weight](ShardRange r) { return Tensor::copy_of(weight.row_slice(r.offset, r.size)); };
  l.cols = [weight](ShardRange c) { return Tensor::copy_of(weight.col_slice(c.offset, c.size)); };
  if (!bias.empty())
    l.bias = [bias](ShardRange c) { return Tensor::copy_of(bias.col_slice(c.offset, c.size)); };
  return l;
}

void LinearLayer::check_full(TensorView full_weight, TensorView full_bias, const Where& w) {
  std::int64_t out = spec_.out_features;
  if (spec_.kind == LayerKind::kMergedColumn || spec_.kind == LayerKind::kQkv)
    out = full_out_features();
  TPL_CHECK(full_weight.rows() == out && full_weight.cols() == spec_.in_features, w, "full weight ",
            full_weight.describe(), " does not match [out=", out, ", in=", spec_.in_features, "]");
  TPL_CHECK_EQ(spec_.bias, !full_bias.empty(), w, "bias given iff spec.bias");
  if (spec_.bias)
    TPL_CHECK(full_bias.rows() == 1 && full_bias.cols() == out, w, "bias ", full_bias.describe(),
              " must be [1, ", out, "]");
}

LinearLayer::LinearLayer(const LayerSpec& spec, const Selector& selector, const OpEnv& env,
                         GemmBackend backend, const W8A8Params& quant)
    : spec_(spec) {
  const Where w{"linear " + spec.prefix, env.groups.world_rank()};
  TPL_CHECK(!spec.bias, w, "a W8A8 layer has no float bias: fold it into quant_bias ",
            "(make_w8a8_params does)");
  TPL_CHECK(spec.dtype == DType::kF32 || spec.dtype == DType::kBF16, w,
            "W8A8 outputs f32 or bf16, got ", spec.dtype);
  TPL_CHECK_EQ(quant.weight.dtype(), DType::kI8, w, "W8A8 weight dtype");
  check_full(quant.weight, {}, w);
  init(selector, env, backend, view_loader(quant.weight, {}), &quant);
}

void LinearLayer::init(const Selector& selector, const OpEnv& env, GemmBackend backend,
                       const WeightLoader& load, const W8A8Params* quant) {
  const Where w{"linear " + spec_.prefix, env.groups.world_rank()};
  if (spec_.kind == LayerKind::kMergedColumn) {
    TPL_CHECK(!spec_.output_sizes.empty(), w, "MergedColumn needs output_sizes");
    spec_.out_features = full_out_features();
  } else if (spec_.kind == LayerKind::kQkv) {
    spec_.out_features = full_out_features();
  }
  TPL_CHECK(spec_.in_features > 0 && spec_.out_features > 0, w, "layer sizes must be positive");
  if (spec_.kind == LayerKind::kRow && !spec_.flags.reduce_results && spec_.bias &&
      !spec_.flags.skip_bias_add)
    TPL_THROW(InvalidArgument, w,
              "when reduce_results is false, a bias must be skipped (skip_bias_add) so the "
              "caller can add it after its own reduction");

  // One selection, one op (seed §16 item 21).
  const LayerName name = parse_layer_name(spec_.prefix);
  choice_ = selector.choose(spec_.prefix, direction_of(spec_.kind), spec_.disable_tp);
  variants_.push_back({choice_, make_linear_op(choice_, name, spec_.flags, env)});
  const LinearOp& op = *variants_.front().op;
  const int rank = op.tp_rank(), size = op.tp_size();
  prefetch_ = env.prefetch;
  check_op(choice_, op, env, w);

  // Narrow the weight and the per-output-channel vectors by the op's coordinates. Row layers
  // split the input features and keep every output channel (bias, deq_scale, quant_bias full).
  std::vector<ShardRange> out_cols{{0, spec_.out_features}};
  if (spec_.kind == LayerKind::kRow) {
    TPL_CHECK(spec_.in_unit >= 1 && spec_.in_features % spec_.in_unit == 0, w, "in_unit ",
              spec_.in_unit, " must divide the input features ", spec_.in_features);
    ShardRange cols = input_cols(spec_, rank, size);
    if (choice_.kind == OpKind::kFlashcomm2OProjRow && size > 1) {
      // FC2-OTP rank j multiplies the head slices its ODP block gathered, TP ranks j*G ..
      // j*G + G-1: with uneven heads that is not the even split over P.
      const int t = env.config.layout.tp, g = t / size;
      const ShardRange first = input_cols(spec_, rank * g, t),
                       last = input_cols(spec_, rank * g + g - 1, t);
      cols = {first.offset, last.offset + last.size - first.offset};
    }
    weight_ = load.cols(cols);
    TPL_CHECK(weight_.rows() == spec_.out_features && weight_.cols() == cols.size, w,
              "weight loader returned ", weight_.view().describe(), " for columns [", cols.offset,
              ", ", cols.offset + cols.size, ")");
  } else {
    if (spec_.kind != LayerKind::kReplicated && size > 1) out_cols = output_rows(spec_, rank, size);
    weight_ = take_rows(load, out_cols, quant ? DType::kI8 : spec_.dtype, spec_.in_features, w);
    if (spec_.flags.gather_output && size > 1 && spec_.kind != LayerKind::kColumn) {
      // QKV splits by heads (out_features is derived, not given): both head counts must divide,
      // or a rank's block is not the plain split the gather assumes (a KV head shared by ranks
      // has no rank-major gathered layout at all).
      const QkvShape& q = spec_.qkv;
      for (std::int64_t s : spec_.kind == LayerKind::kQkv
                                ? std::vector<std::int64_t>{q.num_heads, q.num_kv_heads}
                                : spec_.output_sizes)
        TPL_CHECK_EQ(s % size, 0, w, "gather_output on a merged/QKV layer needs every logical ",
                     "output divisible by the TP size");
    }
  }
  if (spec_.bias) {
    std::int64_t n = 0;
    for (const auto& r : out_cols) n += r.size;
    bias_ = Tensor(DType::kF32, 1, n);
    std::int64_t at = 0;
    for (const auto& r : out_cols) {
      if (r.size == 0) continue;
      Tensor b = load.bias(r);
      TPL_CHECK(b.rows() == 1 && b.cols() == r.size, w, "bias loader returned ",
                b.view().describe(), " for ", r.size, " entries");
      convert_into(b, bias_.view().col_slice(at, r.size));
      at += r.size;
    }
  }
  // The runtime's device and the GEMM backend's must agree (a cuBLASLt GEMM takes device
  // activations, oneDNN and the reference host ones).
  Runtime& rt = env.runtime ? *env.runtime : host_runtime();
  rt_ = &rt;
  const bool device_gemm = backend == GemmBackend::kCublasLt;
  TPL_CHECK(device_gemm == (rt.device() == Device::kCuda), w, "GEMM backend ",
            gemm_backend_name(backend), " does not run on the ", rt.name(),
            " runtime's tensors (use cublaslt with the cuda runtime, cpu, onednn or reference "
            "with the host runtime)");
  cpu_gemm_ = env.cpu_gemm;
  if (!cpu_gemm_ && backend == GemmBackend::kCpu) {
    own_cpu_gemm_ = make_default_cpu_gemm_chooser();
    cpu_gemm_ = own_cpu_gemm_.get();
  }
  GemmDesc desc;
  desc.k = weight_.cols();
  desc.n = weight_.rows();
  desc.act = desc.weight = desc.out = spec_.dtype;
  if (quant) {
    deq_scale_ = rt.copy_of(take_cols(quant->deq_scale, out_cols, DType::kF32));
    quant_bias_ = rt.copy_of(take_cols(quant->quant_bias, out_cols, DType::kI32));
    quant_local_.input_scale = quant->input_scale;
    quant_local_.input_offset = quant->input_offset;
    quant_local_.deq_scale = deq_scale_.view();
    quant_local_.quant_bias = quant_bias_.view();
    local_.quant = &quant_local_;
    desc.act = desc.weight = DType::kI8;
    desc.out = DType::kI32;
  }
  backend_ = backend;
  desc_ = desc;
  // DSA-CP's ShardedCP layers hold the full weight, which a prefill node shards by layers over
  // its ranks (the seed does it outside linear_op, §6.10).
  const bool shardable =
      choice_.kind == OpKind::kFlashcomm2OProjRow ||
      (env.features.dsa_cp_with_layer_shard &&
       (choice_.kind == OpKind::kShardedCpRow || choice_.kind == OpKind::kShardedCpColumn));
  if (env.layer_shard && shardable) {
    TPL_CHECK(name.layer_index.has_value(), w,
              "a layer-sharded layer needs a layer index in its name");
    // The series keeps the weight (int8 under W8A8) on its source member only; this layer plans
    // its GEMM over the window it receives, just before each forward. W8A8's deq_scale and
    // quant_bias stay here on every rank, as in the seed (§7b.2 c): a row layer's vectors are
    // full (out_features each), and every rank builds them from the same parameters.
    env.layer_shard->add_layer(*name.layer_index, weight_);
    layer_shard_ = env.layer_shard;
    layer_index_ = *name.layer_index;
    weight_ = Tensor();
  } else {
    gemm_ =
        make_gemm(backend, desc, weight_, spec_.bias ? bias_.view() : TensorView(), &rt, cpu_gemm_);
  }
  if (spec_.bias && rt.device() != Device::kHost) bias_ = rt.copy_of(bias_);
  local_.rt = &rt;
  local_.gemm = gemm_.get();
  local_.out_dtype = spec_.dtype;
  local_.in_features = desc.k;
  local_.out_features = desc.n;
  local_.full_out_features = size == 1 ? desc.n : full_out_features();
  local_.full_in_features = spec_.in_features;
  if (spec_.bias) local_.bias = bias_.view();
  local_.skip_bias_add = spec_.flags.skip_bias_add;
  local_.in_unit = spec_.kind == LayerKind::kRow ? spec_.in_unit : 1;
}

void LinearLayer::check_op(const OpChoice& choice, const LinearOp& op, const OpEnv& env,
                           const Where& w) const {
  // Checked at construction, so every rank fails the same way before any collective runs.
  if (choice.kind == OpKind::kFlashcomm2OProjRow) {
    const std::int64_t unit = spec_.kind == LayerKind::kRow ? spec_.in_unit : 1;
    TPL_CHECK(spec_.in_features / unit >= env.config.layout.tp, w, "FlashComm2 gives every TP ",
              "rank a head slice: ", spec_.in_features / unit, " heads of ", unit,
              " features do not cover ", env.config.layout.tp, " ranks");
  }
  if (choice.kind == OpKind::kOProjRow)
    TPL_CHECK_EQ(spec_.in_features % op.tp_size(), 0, w,
                 "O-proj TP cuts the features into equal slices: the input features must be "
                 "divisible by the O-proj TP size");
}

int LinearLayer::add_variant(const Selector& selector, const OpEnv& env) {
  const Where w{"linear " + spec_.prefix, env.groups.world_rank()};
  const OpChoice choice = selector.choose(spec_.prefix, direction_of(spec_.kind), spec_.disable_tp);
  std::unique_ptr<LinearOp> op =
      make_linear_op(choice, parse_layer_name(spec_.prefix), spec_.flags, env);
  const LinearOp& base = op_at(0);
  if (op->tp_rank() != base.tp_rank() || op->tp_size() != base.tp_size() ||
      choice.unsharded != choice_.unsharded)
    TPL_THROW(ConfigError, w, "op variant ", op_kind_name(choice.kind), " shards the weight as ",
              op->tp_rank(), "/", op->tp_size(), choice.unsharded ? " (unsharded)" : "",
              " but the layer holds shard ", base.tp_rank(), "/", base.tp_size(),
              choice_.unsharded ? " (unsharded)" : "",
              ": a plan's strategies must share one weight layout");
  const bool sharded_here = layer_shard_ != nullptr;
  const bool sharded_there = env.layer_shard && choice.kind == OpKind::kFlashcomm2OProjRow;
  if ((sharded_here || sharded_there) && choice.kind != choice_.kind)
    TPL_THROW(ConfigError, w, "op variant ", op_kind_name(choice.kind), " and the layer's ",
              op_kind_name(choice_.kind),
              " differ in whether the o_proj weight is layer-sharded: a plan's strategies must "
              "share one weight layout");
  check_op(choice, *op, env, w);
  variants_.push_back({choice, std::move(op)});
  return static_cast<int>(variants_.size()) - 1;
}

LinearOp& LinearLayer::op_at(int variant) const {
  TPL_CHECK(variant >= 0 && variant < num_variants(), (Where{"linear " + spec_.prefix}),
            "no op variant ", variant, " (the layer has ", num_variants(), ")");
  return *variants_[static_cast<std::size_t>(variant)].op;
}

LinearOutput LinearLayer::forward(TensorView x, const ForwardContext& ctx) {
  LinearOp& op_here = op_at(ctx.variant);
  LinearOutput out;
  if (layer_shard_) {
    // Re-plan over this layer's window (oneDNN reorders it once) and drop the plan afterwards,
    // so a rank holds k+1 windows, not a copy of every layer.
    const TensorView window = layer_shard_->wait_weight(layer_index_);
    const TensorView bias = spec_.bias ? bias_.view() : TensorView();
    // The first plan chooses (and agrees across ranks); later ones reuse that implementation.
    if (backend_ != GemmBackend::kCpu)
      gemm_ = make_gemm(backend_, desc_, window, bias, rt_, cpu_gemm_);
    else if (shard_impl_.empty())
      gemm_ = cpu_gemm_->make(desc_, window, bias, &shard_impl_);
    else
      gemm_ = cpu_gemm_->make_as(shard_impl_, desc_, window, bias);
    local_.gemm = gemm_.get();
  }
  out.output = op_here.forward(x, ctx, local_);
  if (layer_shard_) {
    gemm_.reset();
    local_.gemm = nullptr;
  }
  out.placement = op_here.output_placement(ctx);
  if (prefetch_ && direction_of(spec_.kind) == Direction::kRow)
    prefetch_->after_row_op(op_here.name(), ctx, out.output);
  if (spec_.flags.return_bias && spec_.flags.skip_bias_add && spec_.bias) out.bias = bias_.view();
  return out;
}

}  // namespace tpl

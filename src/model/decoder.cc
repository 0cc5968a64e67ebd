#include <chrono>
#include <cmath>
#include <functional>
#include <random>

#include "tpl/error.h"
#include "tpl/memory.h"
#include "tpl/model.h"
#include "tpl/plan.h"
#include "tpl/quant.h"

namespace tpl {

namespace {

class RandomWeights final : public WeightProvider {
 public:
  explicit RandomWeights(std::uint64_t seed) : seed_(seed) {}
  Tensor get(const std::string& name, std::int64_t rows, std::int64_t cols, DType dtype,
             float stddev) const override {
    std::mt19937_64 gen(seed_ ^ std::hash<std::string>{}(name));
    // Norm weights scatter around 1, as trained ones do.
    const float mean = name.find("norm") != std::string::npos ? 1.f : 0.f;
    std::normal_distribution<float> dist(mean, stddev);
    Tensor t(dtype, rows, cols);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) set_f32(t, r, c, dist(gen));
    return t;
  }

 private:
  std::uint64_t seed_;
};

// y = x / rms(x) * w, per row, in f32, rounded to x's dtype.
Tensor rms_norm(TensorView x, TensorView w, double eps) {
  Tensor y(x.dtype(), x.rows(), x.cols());
  for (std::int64_t r = 0; r < x.rows(); ++r) {
    double ss = 0;
    for (std::int64_t c = 0; c < x.cols(); ++c) {
      const double v = get_f32(x, r, c);
      ss += v * v;
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / double(x.cols()) + eps));
    for (std::int64_t c = 0; c < x.cols(); ++c)
      set_f32(y, r, c, get_f32(x, r, c) * inv * get_f32(w, 0, c));
  }
  return y;
}

// SiLU(gate) * up on [rows, 2*I] laid out [gate | up] -> [rows, I].
Tensor silu_mul(TensorView gu) {
  const std::int64_t i = gu.cols() / 2;
  Tensor y(gu.dtype(), gu.rows(), i);
  for (std::int64_t r = 0; r < gu.rows(); ++r)
    for (std::int64_t c = 0; c < i; ++c) {
      const float g = get_f32(gu, r, c), u = get_f32(gu, r, i + c);
      set_f32(y, r, c, g / (1.f + std::exp(-g)) * u);
    }
  return y;
}

// Synthetic calibration samples shaped like a layer's input (W8A8 static activation scales).
ActivationQuant calibrate_for(const std::string& kind, std::int64_t cols, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  Tensor s(DType::kF32, 256, cols);
  for (std::int64_t r = 0; r < 256; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      float v = n(gen);
      if (kind == "down") {  // SiLU(a)·b
        const float b = n(gen);
        v = v / (1.f + std::exp(-v)) * b;
      } else if (kind == "o_proj") {
        v *= 0.5f;  // attention averages values
      }
      s.ptr<float>()[r * cols + c] = v;
    }
  return calibrate_activation(s);
}

}  // namespace

Tensor WeightProvider::get_rows(const std::string& name, std::int64_t rows, std::int64_t cols,
                                DType dtype, float stddev, ShardRange block) const {
  return Tensor::copy_of(
      get(name, rows, cols, dtype, stddev).view().row_slice(block.offset, block.size));
}
Tensor WeightProvider::get_cols(const std::string& name, std::int64_t rows, std::int64_t cols,
                                DType dtype, float stddev, ShardRange block) const {
  return Tensor::copy_of(
      get(name, rows, cols, dtype, stddev).view().col_slice(block.offset, block.size));
}

namespace {
// A layer weight stored as several checkpoint tensors stacked along the output dimension
// (q|k|v, gate|up): reads the blocks a rank needs from each part.
struct Part {
  std::string name;
  std::int64_t rows;
};
WeightLoader stacked_loader(const WeightProvider& wp, std::vector<Part> parts,
                            std::vector<Part> bias_parts, std::int64_t cols, DType dt,
                            float stddev) {
  WeightLoader l;
  l.rows = [&wp, parts, cols, dt, stddev](ShardRange r) {
    Tensor out(dt, r.size, cols);
    std::int64_t base = 0, at = 0;
    for (const Part& p : parts) {
      const std::int64_t lo = std::max(r.offset, base),
                         hi = std::min(r.offset + r.size, base + p.rows);
      if (lo < hi) {
        Tensor b = wp.get_rows(p.name, p.rows, cols, dt, stddev, {lo - base, hi - lo});
        copy_into(b, out.view().row_slice(at, hi - lo));
        at += hi - lo;
      }
      base += p.rows;
    }
    return out;
  };
  l.cols = [&wp, parts, cols, dt, stddev](ShardRange c) {
    std::int64_t rows = 0;
    for (const Part& p : parts) rows += p.rows;
    Tensor out(dt, rows, c.size);
    std::int64_t at = 0;
    for (const Part& p : parts) {
      copy_into(wp.get_cols(p.name, p.rows, cols, dt, stddev, c), out.view().row_slice(at, p.rows));
      at += p.rows;
    }
    return out;
  };
  if (!bias_parts.empty())
    l.bias = [&wp, bias_parts, dt](ShardRange r) {
      Tensor out(dt, 1, r.size);
      std::int64_t base = 0, at = 0;
      for (const Part& p : bias_parts) {
        const std::int64_t lo = std::max(r.offset, base),
                           hi = std::min(r.offset + r.size, base + p.rows);
        if (lo < hi) {
          copy_into(wp.get_cols(p.name, 1, p.rows, dt, 0.1f, {lo - base, hi - lo}),
                    out.view().col_slice(at, hi - lo));
          at += hi - lo;
        }
        base += p.rows;
      }
      return out;
    };
  return l;
}
}  // namespace

std::unique_ptr<WeightProvider> make_random_weights(std::uint64_t seed) {
  return std::make_unique<RandomWeights>(seed);
}

struct DecoderStack::Variant {
  std::string name;
  Config config;
  Features features;
  std::unique_ptr<Selector> selector;
  std::unique_ptr<OpEnv> env;
  bool overlap = false;  // config.overlap resolved: the worker runs the fused collectives
};

struct DecoderStack::Layer {
  int index = 0;
  bool moe = false;
  std::unique_ptr<LinearLayer> qkv, o, gate_up, down;  // gate_up/down null: MLP skipped
  Tensor norm1, norm2;
  Tensor q_norm, k_norm;             // [1, head_dim] when the model has qk_norm (Qwen3)
  std::vector<ShardRange> qkv_rows;  // global rows of q, k, v this rank holds
  // MLA (qkv null): q is q_proj, or q_b_proj after q_a_proj and its norm.
  std::unique_ptr<LinearLayer> q_a, q, kv_a, kv_b;
  Tensor q_a_norm, kv_a_norm;
  ShardRange heads;  // the query heads q and kv_b hold (all of them under DSA-CP)

  // The linear layers in forward order: decoder_linear_specs()'s, as the report lists them.
  std::vector<LinearLayer*> linears() const {
    std::vector<LinearLayer*> v;
    for (LinearLayer* l : {qkv.get(), q_a.get(), q.get(), kv_a.get(), kv_b.get(), o.get(),
                           gate_up.get(), down.get()})
      if (l) v.push_back(l);
    return v;
  }
};

DecoderStack::~DecoderStack() = default;

int DecoderStack::dp_rank() const {
  return coord_of(config_.layout, world_.rank()).d;
}

std::size_t DecoderStack::layer_shard_bytes() const {
  std::size_t b = series_ ? series_->memory_bytes() : 0;
  for (const CpSeries& s : cp_series_) b += s.series->memory_bytes();
  return b;
}

int DecoderStack::layer_shard_windows() const {
  int n = series_ ? series_->num_windows() : 0;
  for (const CpSeries& s : cp_series_) n += s.series->num_windows();
  return n;
}

std::vector<LayerSpec> decoder_linear_specs(const ModelSpec& model, std::int64_t l, DType dtype) {
  const std::int64_t h = model.hidden, hd = model.head_dim;
  const std::int64_t q_out = model.heads * hd;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  std::vector<LayerSpec> v;
  auto add = [&](const std::string& name, LayerKind kind, std::int64_t in, std::int64_t out) {
    LayerSpec s{p + name, kind, in, out};
    s.dtype = dtype;
    v.push_back(s);
    return &v.back();
  };
  if (model.mla) {
    // MLA: the latent projections are replicated (as vLLM's DeepSeek builds them); q_b_proj,
    // kv_b_proj and o_proj split by heads.
    const ModelSpec::Mla& a = *model.mla;
    const std::int64_t heads = model.heads, kv_head = a.qk_nope_head_dim + a.v_head_dim;
    if (a.q_lora_rank == 0) {
      add("self_attn.q_proj", LayerKind::kColumn, h, heads * hd)->out_unit = hd;
    } else {
      add("self_attn.q_a_proj", LayerKind::kReplicated, h, a.q_lora_rank);
      add("self_attn.q_b_proj", LayerKind::kColumn, a.q_lora_rank, heads * hd)->out_unit = hd;
    }
    add("self_attn.kv_a_proj_with_mqa", LayerKind::kReplicated, h,
        a.kv_lora_rank + a.qk_rope_head_dim);
    add("self_attn.kv_b_proj", LayerKind::kColumn, a.kv_lora_rank, heads * kv_head)->out_unit =
        kv_head;
    add("self_attn.o_proj", LayerKind::kRow, heads * a.v_head_dim, h)->in_unit = a.v_head_dim;
  } else {
    LayerSpec* qkv = add("self_attn.qkv_proj", LayerKind::kQkv, h, 0);
    qkv->qkv = {model.heads, model.kv_heads, hd};
    qkv->bias = model.qkv_bias;
    // o_proj splits by heads, like the QKV layer before it.
    add("self_attn.o_proj", LayerKind::kRow, q_out, h)->in_unit = hd;
  }
  std::string mlp = p + "mlp.";
  std::int64_t inter = model.intermediate;
  if (model.layer_is_moe(l)) {
    if (model.shared_expert_intermediate <= 0) return v;  // routed experts only: skipped
    mlp += model.shared_expert_module + ".";
    inter = model.shared_expert_intermediate;
  }
  LayerSpec gu{mlp + "gate_up_proj", LayerKind::kMergedColumn, h, 0};
  gu.output_sizes = {inter, inter};
  gu.dtype = dtype;
  v.push_back(gu);
  LayerSpec dn{mlp + "down_proj", LayerKind::kRow, inter, h};
  dn.dtype = dtype;
  v.push_back(dn);
  return v;
}

DecoderStack::Strategies DecoderStack::strategies_for(const Plan& plan) {
  Strategies st;
  for (const PlanBucket& b : plan.buckets) {
    bool seen = false;
    for (const auto& s : st.list) seen = seen || s.first == b.strategy;
    if (seen) continue;
    const PlanCandidate* c = nullptr;
    for (const PlanCandidate& pc : plan.configs)
      if (pc.name == b.strategy) c = &pc;
    TPL_CHECK(c != nullptr, (Where{"plan"}), "bucket of ", b.tokens, " tokens names strategy '",
              b.strategy, "', which the plan's configs do not define");
    st.list.emplace_back(c->name, c->config);
  }
  TPL_CHECK(!st.list.empty(), (Where{"plan"}), "the plan has no buckets");
  st.plan = std::make_unique<Plan>(plan);
  return st;
}

DecoderStack::Strategies DecoderStack::strategies_for(const ModelSpec& model, const Config& config,
                                                      int world, const StackOptions& options) {
  const bool open = config.overlap == Overlap::kAuto || config.flashcomm1;
  if (options.profile && open && config.layout.world_size() == world) {
    CostInputs in;
    in.dtype = options.dtype;
    in.w8a8 = options.w8a8;
    in.spare_core = options.profile->machine.spare_core();
    try {
      const CostModel cost(*options.profile);
      return strategies_for(default_plan(cost, model, config, world, in));
    } catch (const Unsupported&) {
      // Not covered by the cost model (e.g. MLP-TP): the built-in rule below.
    }
  }
  Strategies st;
  st.list.emplace_back("config", config);
  return st;
}

DecoderStack::DecoderStack(Communicator& world, const ModelSpec& model, const Config& config,
                           const WeightProvider& weights, const StackOptions& options)
    : DecoderStack(world, model, strategies_for(model, config, world.size(), options), weights,
                   options) {}

int prefetch_step_for(const StackOptions& options, std::int64_t layers) {
  if (options.prefetch_step >= 0) return options.prefetch_step;
  return static_cast<int>(std::min<std::int64_t>(1, std::max<std::int64_t>(0, layers - 2)));
}

DecoderStack::DecoderStack(Communicator& world, const ModelSpec& model, const Plan& plan,
                           const WeightProvider& weights, const StackOptions& options)
    : DecoderStack(world, model, strategies_for(plan), weights, options) {}

DecoderStack::DecoderStack(Communicator& world, const ModelSpec& model, Strategies st,
                           const WeightProvider& weights, const StackOptions& options)
    : world_(world),
      model_(model),
      config_(st.list.front().second),
      options_(options),
      plan_(std::move(st.plan)) {
  const auto& strategies = st.list;
  const Where where{"decoder", world.rank()};
  TPL_CHECK_T(model.unsupported.empty(), Unsupported, where, "model '", model.name,
              "': ", model.unsupported, "; `tplinear explain` shows its op selection");
  if (plan_) plan_->check_matches(model, world.size(), "plan");
  config_.validate();
  features_ = Features::derive(config_, model_.info);
  if (options.check_memory)
    check_host_memory(world, estimate_stack_memory(model_, config_, options, world.size()),
                      "the decoder stack's weights",
                      "load fewer layers, spread the model over more ranks on more nodes, or "
                      "use bf16 weights");
  const auto sizes = group_sizes(config_, features_);
  // A plan's communicator per group (Plan::comms); otherwise every group is the world's kind.
  groups_ = std::make_unique<ProcessGroups>(world, config_.layout, sizes,
                                            plan_ ? plan_->comms : GroupComms{});
  worker_ = std::make_unique<CommWorker>();
  // overlap = auto: the worker runs the fused paths' collectives only with a core of its own.
  const bool spare_core = worker_has_spare_core(world);
  if (options.backend == GemmBackend::kCpu) {
    cpu_gemm_ = std::make_unique<CpuGemmChooser>();
    // Rank 0's measured choices hold on every rank, so replicated layers round alike.
    if (world.size() > 1) {
      gemm_comm_ = world.split(0, world.rank());
      cpu_gemm_->set_agreement(gemm_agreement_from_root(*gemm_comm_));
    }
  }
  const int prefetch_k = prefetch_step_for(options, model.layers);
  if (features_.flashcomm2_oshard && !features_.dsa_cp_with_layer_shard)
    series_ = std::make_unique<LayerShardSeries>(groups_->shard_weight(), prefetch_k);
  if (features_.dsa_cp_with_layer_shard) {
    for (const std::string& name : config_.layer_sharding) {
      TPL_CHECK_T(name == "q_b_proj" || name == "kv_b_proj" || name == "o_proj", ConfigError, where,
                  "layer_sharding entry '", name, "': under DSA-CP on a prefill node the ",
                  "ShardedCP layers q_b_proj, kv_b_proj and o_proj can be layer-sharded");
      cp_series_.push_back(
          {name, std::make_unique<LayerShardSeries>(groups_->shard_weight(), prefetch_k), nullptr});
    }
  } else if (!config_.layer_sharding.empty() && !features_.flashcomm2_oshard) {
    TPL_THROW(ConfigError, where, "layer_sharding takes effect with FlashComm2 (o_proj) or under ",
              "DSA-CP on a prefill node (index_topk, FC1, deployment prefill); this config has ",
              "neither, so the weights would stay resident");
  }
  for (const auto& [name, cfg] : strategies) {
    auto v = std::make_unique<Variant>();
    v->name = name;
    v->config = cfg;
    v->config.validate();
    v->features = Features::derive(v->config, model_.info);
    // Every strategy runs over the same groups and weights; a plan whose strategies differ in
    // either needs a reload, which a running stack never does.
    TPL_CHECK(
        v->config.layout == config_.layout && group_sizes(v->config, v->features) == sizes &&
            v->features.flashcomm2_oshard == features_.flashcomm2_oshard &&
            weight_layout_of(v->config, model_.info) == weight_layout_of(config_, model_.info),
        where, "strategy '", name, "' needs other process groups or weight layout (",
        weight_layout_of(v->config, model_.info), ") than '", strategies.front().first, "' (",
        weight_layout_of(config_, model_.info), "): one stack holds one weight layout");
    v->selector = std::make_unique<Selector>(v->config, model_.info);
    v->env = std::make_unique<OpEnv>(OpEnv{v->config, v->features, *groups_});
    v->overlap = overlap_enabled(v->config.overlap, spare_core);
    if (v->overlap) v->env->overlap = worker_.get();
    v->env->cpu_gemm = cpu_gemm_.get();
    v->env->oshard = series_.get();
    v->env->layer_shard = series_.get();
    // DSA-CP (index_topk under FC1) shards MLA's attention by tokens: ShardedCP q_b_proj and
    // kv_b_proj hold every head. A model without MLA, or MLA with a plain (TP-sharded) q_proj,
    // has no such attention.
    if (v->features.dsa_cp) {
      TPL_CHECK_T(model.mla.has_value(), ConfigError, where, "model '", model.name,
                  "' sets index_topk (DSA context parallelism under FC1, DeepSeek-V3.2's sparse ",
                  "attention) but has no multi-head latent attention");
      TPL_CHECK_T(model.mla->q_lora_rank > 0, ConfigError, where, "model '", model.name,
                  "': DSA-CP needs field 'q_lora_rank' (q_a_proj -> q_b_proj, as DeepSeek-V3.2 ",
                  "has): a plain q_proj is TP-sharded, not a ShardedCP op");
    }
    variants_.push_back(std::move(v));
  }
  if (plan_)
    for (const PlanBucket& b : plan_->buckets)
      for (std::size_t i = 0; i < variants_.size(); ++i)
        if (variants_[i]->name == b.strategy) bucket_variant_.push_back(static_cast<int>(i));
  const Selector& selector0 = *variants_.front()->selector;
  const OpEnv& env0 = *variants_.front()->env;
  for (CpSeries& s : cp_series_) {
    s.env = std::make_unique<OpEnv>(env0);
    s.env->layer_shard = s.series.get();
  }
  const DType dt = options.dtype;
  const std::int64_t h = model.hidden, hd = model.head_dim;
  const std::int64_t q_out = model.heads * hd, kv_out = model.kv_heads * hd;
  // Float layers read only this rank's blocks; W8A8 needs whole rows of the weight for its
  // per-channel scales, so it quantizes the full weight (every rank, deterministic).
  auto make = [&](const LayerSpec& spec, std::vector<Part> parts, std::vector<Part> bias_parts,
                  float stddev, const char* kind) {
    const WeightLoader load =
        stacked_loader(weights, parts, bias_parts, spec.in_features, dt, stddev);
    const OpEnv* env = &env0;
    for (const CpSeries& s : cp_series_)
      if (spec.prefix.ends_with("self_attn." + s.name)) env = s.env.get();
    std::unique_ptr<LinearLayer> layer;
    if (!options.w8a8) {
      layer = std::make_unique<LinearLayer>(spec, selector0, *env, options.backend, load);
    } else {
      std::int64_t out = 0;
      for (const Part& p : parts) out += p.rows;
      Tensor w = load.rows({0, out});
      Tensor b = bias_parts.empty() ? Tensor() : load.bias({0, out});
      LayerSpec s = spec;
      s.bias = false;
      const W8A8Params p = make_w8a8_params(w, bias_parts.empty() ? TensorView() : b.view(),
                                            calibrate_for(kind, spec.in_features, 99));
      layer = std::make_unique<LinearLayer>(s, selector0, *env, options.backend, p);
    }
    for (std::size_t i = 1; i < variants_.size(); ++i)
      layer->add_variant(*variants_[i]->selector, *variants_[i]->env);
    return layer;
  };
  for (std::int64_t l = 0; l < model.layers; ++l) {
    auto L = std::make_unique<Layer>();
    L->index = static_cast<int>(l);
    L->moe = model.layer_is_moe(l);
    const std::string p = "model.layers." + std::to_string(l) + ".";
    L->norm1 = weights.get(p + "input_layernorm.weight", 1, h, DType::kF32, 0.1f);
    L->norm2 = weights.get(p + "post_attention_layernorm.weight", 1, h, DType::kF32, 0.1f);
    if (model.qk_norm) {
      L->q_norm = weights.get(p + "self_attn.q_norm.weight", 1, model.head_dim, DType::kF32, 0.1f);
      L->k_norm = weights.get(p + "self_attn.k_norm.weight", 1, model.head_dim, DType::kF32, 0.1f);
    }

    const std::vector<LayerSpec> specs = decoder_linear_specs(model, l, dt);
    const float s_in = 1.f / std::sqrt(float(h));
    const std::string a = p + "self_attn.";
    std::size_t next = 0;  // specs[next]: the next layer in forward order
    auto one = [&](const std::string& name, float stddev, const char* kind) {
      const LayerSpec& s = specs[next++];
      return make(s, {{a + name + ".weight", LinearLayer::full_out_features(s)}}, {}, stddev, kind);
    };
    if (model.mla) {
      const ModelSpec::Mla& m = *model.mla;
      if (m.q_lora_rank > 0) {
        L->q_a = one("q_a_proj", s_in, "qkv");
        L->q_a_norm = weights.get(a + "q_a_layernorm.weight", 1, m.q_lora_rank, DType::kF32, 0.1f);
        L->q = one("q_b_proj", 1.f / std::sqrt(float(m.q_lora_rank)), "qkv");
      } else {
        L->q = one("q_proj", s_in, "qkv");
      }
      L->kv_a = one("kv_a_proj_with_mqa", s_in, "qkv");
      L->kv_a_norm = weights.get(a + "kv_a_layernorm.weight", 1, m.kv_lora_rank, DType::kF32, 0.1f);
      L->kv_b = one("kv_b_proj", 1.f / std::sqrt(float(m.kv_lora_rank)), "qkv");
      L->o = one("o_proj", 1.f / std::sqrt(float(model.heads * m.v_head_dim)), "o_proj");
      // q and kv_b split by heads alike (both hold all heads under DSA-CP's ShardedCP ops).
      const ShardRange qh =
          LinearLayer::output_rows(L->q->spec(), L->q->tp_rank(), L->q->tp_size())[0];
      const ShardRange kvh =
          LinearLayer::output_rows(L->kv_b->spec(), L->kv_b->tp_rank(), L->kv_b->tp_size())[0];
      L->heads = {qh.offset / hd, qh.size / hd};
      const std::int64_t kv_head = m.qk_nope_head_dim + m.v_head_dim;
      TPL_CHECK(kvh.offset / kv_head == L->heads.offset && kvh.size / kv_head == L->heads.size,
                where, p, "q (", op_kind_name(L->q->choice().kind), ") holds heads [",
                L->heads.offset, ", ", L->heads.offset + L->heads.size, ") but kv_b_proj (",
                op_kind_name(L->kv_b->choice().kind), ") heads [", kvh.offset / kv_head, ", ",
                (kvh.offset + kvh.size) / kv_head, "): the config splits them differently");
    } else {
      std::vector<Part> qkv_bias;
      if (model.qkv_bias)
        qkv_bias = {
            {a + "q_proj.bias", q_out}, {a + "k_proj.bias", kv_out}, {a + "v_proj.bias", kv_out}};
      L->qkv = make(specs[next++],
                    {{a + "q_proj.weight", q_out},
                     {a + "k_proj.weight", kv_out},
                     {a + "v_proj.weight", kv_out}},
                    qkv_bias, s_in, "qkv");
      L->qkv_rows = LinearLayer::output_rows(L->qkv->spec(), L->qkv->tp_rank(), L->qkv->tp_size());
      if (L->qkv->tp_size() == 1) {
        L->qkv_rows = {{0, q_out}, {q_out, kv_out}, {q_out + kv_out, kv_out}};
      }
      L->o = one("o_proj", 1.f / std::sqrt(float(q_out)), "o_proj");
    }

    if (L->moe) {
      if (specs.size() > next) {
        skipped_.push_back(p + "mlp.experts (" + std::to_string(model.num_experts) +
                           " routed experts; shared expert run)");
      } else {
        skipped_.push_back(p + "mlp (" + std::to_string(model.num_experts) +
                           " routed experts, no shared expert)");
        layers_.push_back(std::move(L));
        continue;
      }
    }
    const LayerSpec& gu = specs[next];
    const LayerSpec& dn = specs[next + 1];
    const std::int64_t inter = dn.in_features;
    const std::string mlp =
        gu.prefix.substr(0, gu.prefix.size() - std::string("gate_up_proj").size());
    L->gate_up = make(gu, {{mlp + "gate_proj.weight", inter}, {mlp + "up_proj.weight", inter}}, {},
                      s_in, "gate_up");
    L->down = make(dn, {{mlp + "down_proj.weight", h}}, {}, 1.f / std::sqrt(float(inter)), "down");
    layers_.push_back(std::move(L));
  }
  // No o_proj may have registered (e.g. matmul-allreduce took the row layers); an empty series
  // has nothing to prefetch.
  if (series_ && !series_->empty()) series_->finalize();
  for (CpSeries& s : cp_series_)
    if (!s.series->empty()) s.series->finalize();
  for (const auto& L : layers_)
    for (const LinearLayer* ll : L->linears()) {
      const ShardCoord sc = shard_coord(ll->choice(), config_, world.rank());
      report_.push_back({ll->spec().prefix, op_kind_name(ll->choice().kind), sc.group,
                         ll->tp_rank(), ll->tp_size(), 0, 0});
    }
}

namespace {

// Causal GQA attention with RoPE over this rank's heads. qkv: [N, q_local + 2*kv_local] laid out
// q | k | v; rows = global rows of each part (heads are head_dim rows each). With q_norm/k_norm
// (Qwen3) each q and k head is RMS-normalised over head_dim before RoPE.
Tensor attention(TensorView qkv, const std::vector<ShardRange>& rows, const ModelSpec& m,
                 TensorView q_norm, TensorView k_norm) {
  const std::int64_t n = qkv.rows(), hd = m.head_dim;
  const std::int64_t q_local = rows[0].size / hd, kv_local = rows[1].size / hd;
  const std::int64_t q_head0 = rows[0].offset / hd;
  const std::int64_t kv_head0 = (rows[1].offset - m.heads * hd) / hd;
  const std::int64_t group = m.heads / m.kv_heads;
  // f32 copies of q and k with RoPE applied (rotate-half convention), and v.
  std::vector<double> inv_freq(static_cast<std::size_t>(hd / 2));
  for (std::int64_t d = 0; d < hd / 2; ++d) inv_freq[d] = m.rope_inv_freq(d);
  auto load = [&](std::int64_t col0, std::int64_t heads, bool rope, TensorView norm) {
    std::vector<float> t(static_cast<std::size_t>(n * heads * hd));
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t hh = 0; hh < heads; ++hh) {
        float* dst = &t[(i * heads + hh) * hd];
        for (std::int64_t d = 0; d < hd; ++d) dst[d] = get_f32(qkv, i, col0 + hh * hd + d);
        if (!norm.empty()) {
          double ss = 0;
          for (std::int64_t d = 0; d < hd; ++d) ss += double(dst[d]) * dst[d];
          const float inv = static_cast<float>(1.0 / std::sqrt(ss / double(hd) + m.rms_eps));
          for (std::int64_t d = 0; d < hd; ++d) dst[d] = dst[d] * inv * get_f32(norm, 0, d);
        }
        if (!rope) continue;
        for (std::int64_t d = 0; d < hd / 2; ++d) {
          const double freq = inv_freq[d];
          const float c = float(std::cos(double(i) * freq)), s = float(std::sin(double(i) * freq));
          const float a = dst[d], b = dst[d + hd / 2];
          dst[d] = a * c - b * s;
          dst[d + hd / 2] = b * c + a * s;
        }
      }
    return t;
  };
  const std::vector<float> q = load(0, q_local, true, q_norm);
  const std::vector<float> k = load(rows[0].size, kv_local, true, k_norm);
  const std::vector<float> v = load(rows[0].size + rows[1].size, kv_local, false, TensorView());
  Tensor out(qkv.dtype(), n, q_local * hd);
  const float scale = 1.f / std::sqrt(float(hd));
  std::vector<float> p(static_cast<std::size_t>(n)), acc(static_cast<std::size_t>(hd));
  for (std::int64_t hh = 0; hh < q_local; ++hh) {
    const std::int64_t kvh = (q_head0 + hh) / group - kv_head0;
    TPL_CHECK(kvh >= 0 && kvh < kv_local, (Where{"attention"}), "query head ", q_head0 + hh,
              " has no local KV head");
    for (std::int64_t i = 0; i < n; ++i) {
      const float* qi = &q[(i * q_local + hh) * hd];
      float mx = -INFINITY;
      for (std::int64_t j = 0; j <= i; ++j) {
        const float* kj = &k[(j * kv_local + kvh) * hd];
        float s = 0;
        for (std::int64_t d = 0; d < hd; ++d) s += qi[d] * kj[d];
        p[j] = s * scale;
        mx = std::max(mx, p[j]);
      }
      float sum = 0;
      for (std::int64_t j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
      std::fill(acc.begin(), acc.end(), 0.f);
      for (std::int64_t j = 0; j <= i; ++j) {
        const float* vj = &v[(j * kv_local + kvh) * hd];
        const float w = p[j] / sum;
        for (std::int64_t d = 0; d < hd; ++d) acc[d] += w * vj[d];
      }
      for (std::int64_t d = 0; d < hd; ++d) set_f32(out, i, hh * hd + d, acc[d]);
    }
  }
  return out;
}

// Multi-head latent attention over `heads` local heads (DeepSeek-V2's DeepseekV2Attention).
// q: [R, heads * (nope + rope)], query row i at position pos0 + i; k_pe: [K, rope], the keys'
// shared RoPE part (positions 0..K-1); kv: [K, heads * (nope + v)], kv_b_proj's k_nope | value
// per head. Query i attends keys 0..pos0+i; rows at positions >= valid are pad and get zeros.
// RoPE pairs dims (2i, 2i+1) as DeepSeek's apply_rotary_pos_emb does (it de-interleaves, then
// rotates halves), scaled by yarn's mscale; q and k are written out in that de-interleaved order,
// which leaves their dot products unchanged.
Tensor mla_attention(TensorView q, TensorView k_pe, TensorView kv, std::int64_t heads,
                     std::int64_t pos0, std::int64_t valid, const ModelSpec& m) {
  const ModelSpec::Mla& a = *m.mla;
  const std::int64_t nope = a.qk_nope_head_dim, rope = a.qk_rope_head_dim, vd = a.v_head_dim;
  const std::int64_t qhd = nope + rope, kvd = nope + vd, rows = q.rows(), keys = k_pe.rows();
  std::vector<double> inv_freq(static_cast<std::size_t>(rope / 2));
  for (std::int64_t d = 0; d < rope / 2; ++d) inv_freq[d] = m.rope_inv_freq(d);
  const double mscale = m.rope_mscale();
  auto rotate = [&](const float* x, std::int64_t pos, float* out) {
    for (std::int64_t i = 0; i < rope / 2; ++i) {
      const double f = double(pos) * inv_freq[i];
      const float c = float(std::cos(f) * mscale), s = float(std::sin(f) * mscale);
      const float x0 = x[2 * i], x1 = x[2 * i + 1];
      out[i] = x0 * c - x1 * s;
      out[i + rope / 2] = x1 * c + x0 * s;
    }
  };
  std::vector<float> kr(static_cast<std::size_t>(keys * rope)), tmp(static_cast<std::size_t>(rope));
  for (std::int64_t j = 0; j < keys; ++j) {
    for (std::int64_t d = 0; d < rope; ++d) tmp[d] = get_f32(k_pe, j, d);
    rotate(tmp.data(), j, &kr[j * rope]);
  }
  Tensor out(q.dtype(), rows, heads * vd);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < heads * vd; ++c) set_f32(out, r, c, 0.f);
  const float scale = static_cast<float>(m.softmax_scale());
  std::vector<float> qi(static_cast<std::size_t>(qhd)), p(static_cast<std::size_t>(keys)),
      acc(static_cast<std::size_t>(vd));
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t pos = pos0 + i;
    if (pos >= valid) continue;
    const std::int64_t last = std::min(pos, keys - 1);
    for (std::int64_t hh = 0; hh < heads; ++hh) {
      for (std::int64_t d = 0; d < nope; ++d) qi[d] = get_f32(q, i, hh * qhd + d);
      for (std::int64_t d = 0; d < rope; ++d) tmp[d] = get_f32(q, i, hh * qhd + nope + d);
      rotate(tmp.data(), pos, &qi[nope]);
      float mx = -INFINITY;
      for (std::int64_t j = 0; j <= last; ++j) {
        float s = 0;
        for (std::int64_t d = 0; d < nope; ++d) s += qi[d] * get_f32(kv, j, hh * kvd + d);
        for (std::int64_t d = 0; d < rope; ++d) s += qi[nope + d] * kr[j * rope + d];
        p[j] = s * scale;
        mx = std::max(mx, p[j]);
      }
      float sum = 0;
      for (std::int64_t j = 0; j <= last; ++j) sum += (p[j] = std::exp(p[j] - mx));
      std::fill(acc.begin(), acc.end(), 0.f);
      for (std::int64_t j = 0; j <= last; ++j) {
        const float w = p[j] / sum;
        for (std::int64_t d = 0; d < vd; ++d) acc[d] += w * get_f32(kv, j, hh * kvd + nope + d);
      }
      for (std::int64_t d = 0; d < vd; ++d) set_f32(out, i, hh * vd + d, acc[d]);
    }
  }
  return out;
}

}  // namespace

int DecoderStack::variant_for(std::int64_t tokens) const {
  if (!plan_) return 0;
  const PlanBucket& b = plan_->bucket_for(tokens);
  return bucket_variant_[static_cast<std::size_t>(&b - plan_->buckets.data())];
}

const std::string& DecoderStack::strategy_for(std::int64_t tokens) const {
  return variants_[static_cast<std::size_t>(variant_for(tokens))]->name;
}

bool DecoderStack::overlap_for(std::int64_t tokens) const {
  return variants_[static_cast<std::size_t>(variant_for(tokens))]->overlap;
}

Tensor DecoderStack::forward(TensorView hidden) {
  return run_variant(hidden, variant_for(hidden.rows()));
}

std::vector<std::string> DecoderStack::strategy_names() const {
  std::vector<std::string> v;
  for (const auto& var : variants_) v.push_back(var->name);
  return v;
}

Tensor DecoderStack::forward_with(TensorView hidden, const std::string& strategy) {
  for (std::size_t i = 0; i < variants_.size(); ++i)
    if (variants_[i]->name == strategy) return run_variant(hidden, static_cast<int>(i));
  std::string known;
  for (const auto& var : variants_) known += (known.empty() ? "" : ", ") + var->name;
  TPL_THROW(InvalidArgument, (Where{"decoder", world_.rank()}), "the stack holds no strategy '",
            strategy, "' (it holds: ", known, ")");
}

Tensor DecoderStack::run_variant(TensorView hidden, int vi) {
  const std::int64_t n = hidden.rows();
  const int d = dp_rank();
  std::vector<std::int64_t> across;
  if (config_.layout.dp > 1) {
    // Every replica's token count, so pads and module groups agree (a tiny collective).
    Tensor mine(DType::kI32, 1, 1), all(DType::kI32, world_.size(), 1);
    mine.ptr<std::int32_t>()[0] = static_cast<std::int32_t>(n);
    world_.all_gather(mine, all, 0);
    across.assign(config_.layout.dp, 0);
    for (int r = 0; r < world_.size(); ++r)
      across[coord_of(config_.layout, r).d] = all.ptr<std::int32_t>()[r];
  }
  // DSA's lightning indexer is not modelled: attention is dense, which is DSA's exactly while
  // every query has at most index_topk keys.
  if (model_.mla && model_.mla->index_topk > 0)
    TPL_CHECK(n <= model_.mla->index_topk, (Where{"decoder", world_.rank()}), "a batch of ", n,
              " tokens exceeds index_topk ", model_.mla->index_topk,
              ": tplinear runs DSA's attention densely (its lightning indexer is not modelled), ",
              "which equals DSA only up to index_topk tokens");
  const Variant& var = *variants_[static_cast<std::size_t>(vi)];
  ForwardContext ctx = ForwardContext::make(var.config, var.features, model_.info, n, across);
  ctx.variant = vi;
  Communicator& tp = groups_->tp();
  const int t = tp.rank(), T = tp.size();
  (void)d;

  // Residual stream: Replicated [N, H], or under FC1 this rank's sequence shard of the padded
  // batch (what the embedding's pad + reduce-scatter would produce).
  Placement res_pl = Placement::replicated();
  Tensor resid;
  if (ctx.flash_comm_v1_enabled) {
    const std::int64_t b = (n + ctx.pad_size) / T;
    Tensor padded(hidden.dtype(), n + ctx.pad_size, hidden.cols());
    copy_into(hidden, padded.view().row_slice(0, n));
    resid = Tensor::copy_of(padded.view().row_slice(t * b, b));
    res_pl = Placement::shard_tokens();
  } else {
    resid = Tensor::copy_of(hidden);
  }
  // Brings `x` (placement `pl` over TP) to the residual's placement.
  auto to_residual = [&](Tensor x, Placement pl) -> Tensor {
    if (pl == res_pl) return x;
    if (pl.kind == PlacementKind::kReplicated && res_pl.kind == PlacementKind::kShard) {
      const std::int64_t b = (n + ctx.pad_size) / T;
      Tensor padded(x.dtype(), n + ctx.pad_size, x.cols());
      copy_into(x, padded.view().row_slice(0, n));
      return Tensor::copy_of(padded.view().row_slice(t * b, b));
    }
    if (pl.kind == PlacementKind::kShard && res_pl.kind == PlacementKind::kReplicated) {
      Tensor all(x.dtype(), x.rows() * T, x.cols());
      tp.all_gather(x, all, 0);
      return Tensor::copy_of(all.view().row_slice(0, n));
    }
    TPL_THROW(Error, (Where{"decoder", world_.rank()}), "cannot bring ", pl.to_string(), " to ",
              res_pl.to_string());
  };
  std::size_t ri = 0;
  // Bytes of the decoder's own collectives (MLA's gathers and head exchange), reported with the
  // linear layer that follows them, as the cost model prices them.
  double carry_bytes = 0;
  auto counted = [&](auto&& collective) {
    const double b0 = groups_->bytes_sent();
    auto r = collective();
    carry_bytes += groups_->bytes_sent() - b0;
    return r;
  };
  auto run = [&](LinearLayer& ll, TensorView x) {
    // Profiling: start every layer together, so a layer's time excludes the wait for ranks
    // still in the attention or norms before it.
    if (options_.sync_layers) world_.barrier();
    const double b0 = groups_->bytes_sent();
    const auto t0 = std::chrono::steady_clock::now();
    LinearOutput out = ll.forward(x, ctx);
    const auto t1 = std::chrono::steady_clock::now();
    report_[ri].ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
    report_[ri].bytes_sent += groups_->bytes_sent() - b0 + carry_bytes;
    carry_bytes = 0;
    ++ri;
    // An unsharded op (shared expert under shared-expert DP) keeps its input's rows.
    if (ll.choice().unsharded) out.placement = res_pl;
    return out;
  };
  // All N tokens of a residual-shaped tensor (FC1's shard gathered, the pad dropped).
  auto all_tokens = [&](Tensor x) -> Tensor {
    if (res_pl.kind != PlacementKind::kShard) return x;
    Tensor all(x.dtype(), x.rows() * T, x.cols());
    tp.all_gather(x, all, 0);
    return Tensor::copy_of(all.view().row_slice(0, n));
  };
  // Multi-head latent attention and o_proj. Plain TP: every rank has all N tokens and its heads.
  // DSA-CP: every rank has its token shard (FC1's rows t*b.., or all N when FC1 is off for the
  // batch) and all heads; the latent K/V of every token is all-gathered, and o_proj gets what its
  // op takes: the shard as it is (ShardedCPRow), or all N' tokens with this rank's head slice.
  const double latent_eps = 1e-6;  // q_a_layernorm, kv_a_layernorm: DeepseekV2RMSNorm's default
  auto mla = [&](Layer& L, Tensor h) -> LinearOutput {
    const ModelSpec::Mla& a = *model_.mla;
    // MLA has no QKV op to start the layer-shard prefetch (Flashcomm2OshardQkv's trigger): the
    // layer does it before its first GEMM.
    if (series_ && !series_->empty()) series_->reach_layer_index(L.index);
    for (CpSeries& s : cp_series_)
      if (!s.series->empty()) s.series->reach_layer_index(L.index);
    const bool cp = var.features.dsa_cp, shard = res_pl.kind == PlacementKind::kShard;
    Tensor x = cp ? std::move(h) : counted([&] { return all_tokens(std::move(h)); });
    const std::int64_t pos0 = cp && shard ? t * x.rows() : 0;
    Tensor q_latent;
    if (L.q_a) q_latent = rms_norm(run(*L.q_a, x).output, L.q_a_norm, latent_eps);
    LinearOutput q = run(*L.q, L.q_a ? q_latent.view() : x.view());
    LinearOutput kva = run(*L.kv_a, x);
    Tensor ckv = rms_norm(kva.output.view().col_slice(0, a.kv_lora_rank), L.kv_a_norm, latent_eps);
    Tensor k_pe = Tensor::copy_of(kva.output.view().col_slice(a.kv_lora_rank, a.qk_rope_head_dim));
    if (cp && shard) {
      ckv = counted([&] { return all_tokens(std::move(ckv)); });
      k_pe = counted([&] { return all_tokens(std::move(k_pe)); });
    }
    LinearOutput kv = run(*L.kv_b, ckv);
    Tensor att = mla_attention(q.output, k_pe, kv.output, L.heads.size, pos0, n, model_);
    const LinearLayer& o = *L.o;
    const Placement in_pl = o.op(vi).input_placement(ctx);
    if (cp && in_pl == Placement::shard_features()) {
      // This rank's head slice of every token (SequenceRow, FlashComm2), from the TP group.
      std::vector<ShardRange> slice(static_cast<std::size_t>(T));
      for (int s = 0; s < T; ++s) slice[s] = LinearLayer::input_cols(o.spec(), s, T);
      if (!shard) {
        att = Tensor::copy_of(att.view().col_slice(slice[t].offset, slice[t].size));
      } else {
        // Member s receives this shard's rows of its head slice: [b, w_s] pieces.
        const std::int64_t b = att.rows();
        std::vector<std::int64_t> send, recv(static_cast<std::size_t>(T), b * slice[t].size);
        std::int64_t total = 0;
        for (const ShardRange& r : slice) total += b * r.size;
        Tensor buf(att.dtype(), 1, total);
        std::int64_t at = 0;
        for (const ShardRange& r : slice) {
          copy_into(att.view().col_slice(r.offset, r.size),
                    buf.view().col_slice(at, b * r.size).reshape(b, r.size));
          send.push_back(b * r.size);
          at += b * r.size;
        }
        Tensor heads(att.dtype(), b * T, slice[t].size);  // all N' tokens, rank order
        counted([&] {
          tp.all_to_all_v(buf, send, heads, recv);
          return 0;
        });
        // SequenceRow takes DSA-CP's N' rows as they are (seed §6.9 a); the others pad N.
        att = o.op(vi).kind() == OpKind::kSequenceRow
                  ? std::move(heads)
                  : Tensor::copy_of(heads.view().row_slice(0, n));
      }
    } else if (cp && in_pl == Placement::replicated()) {
      att = counted([&] { return all_tokens(std::move(att)); });
    }
    LinearOutput out = run(*L.o, att);
    // ShardedCPRow keeps the rows it was given: the residual's.
    if (cp && in_pl == Placement::shard_tokens()) out.placement = res_pl;
    return out;
  };
  for (auto& L : layers_) {
    Tensor h = rms_norm(resid, L->norm1, model_.rms_eps);
    LinearOutput o;
    if (model_.mla) {
      o = mla(*L, std::move(h));
    } else {
      LinearOutput qkv = run(*L->qkv, h);
      Tensor a = attention(qkv.output, L->qkv_rows, model_, L->q_norm.view(), L->k_norm.view());
      o = run(*L->o, a);
    }
    add_into(to_residual(std::move(o.output), o.placement), resid);
    if (!L->gate_up) continue;
    Tensor h2 = rms_norm(resid, L->norm2, model_.rms_eps);
    LinearOutput gu = run(*L->gate_up, h2);
    Tensor act = silu_mul(gu.output);
    LinearOutput dn = run(*L->down, act);
    add_into(to_residual(std::move(dn.output), dn.placement), resid);
  }
  if (res_pl.kind == PlacementKind::kShard) {
    Tensor all(resid.dtype(), resid.rows() * T, resid.cols());
    tp.all_gather(resid, all, 0);
    return Tensor::copy_of(all.view().row_slice(0, n));
  }
  return resid;
}

}  // namespace tpl

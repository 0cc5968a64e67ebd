#include "tpl/cost_model.h"

#include <algorithm>
#include <cmath>

#include "ops/gemm_collectives.h"
#include "tpl/error.h"
#include "tpl/forward_context.h"
#include "tpl/linear.h"
#include "tpl/placement.h"
#include "tpl/selection.h"

namespace tpl {

const std::array<const char*, 4> kLinearKinds{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"};

int linear_kind_of(const std::string& prefix) {
  for (int k = 0; k < 4; ++k) {
    const std::string s = kLinearKinds[k];
    if (prefix.size() >= s.size() && prefix.compare(prefix.size() - s.size(), s.size(), s) == 0)
      return k;
  }
  return -1;
}

namespace {

const Where kWhere{"cost model"};

// Piecewise-linear in x between points (x ascending); below the first point its value, above the
// last the line through the origin and the last point (time proportional to x).
double interp_linear(const std::vector<ProfilePoint>& pts, double x) {
  if (x <= pts.front().x) return pts.front().ms;
  for (std::size_t i = 1; i < pts.size(); ++i)
    if (x <= pts[i].x) {
      const double f = (x - pts[i - 1].x) / (pts[i].x - pts[i - 1].x);
      return pts[i - 1].ms + f * (pts[i].ms - pts[i - 1].ms);
    }
  return pts.back().ms * x / pts.back().x;
}

// Piecewise-linear in log-log space (collectives: latency then bandwidth regimes); above the
// last point proportional to x, below the first its value (the latency floor).
double interp_loglog(const std::vector<ProfilePoint>& pts, double x) {
  if (x <= pts.front().x) return pts.front().ms;
  for (std::size_t i = 1; i < pts.size(); ++i)
    if (x <= pts[i].x) {
      const double f = std::log(x / pts[i - 1].x) / std::log(pts[i].x / pts[i - 1].x);
      return std::exp(std::log(pts[i - 1].ms) + f * std::log(pts[i].ms / pts[i - 1].ms));
    }
  return pts.back().ms * x / pts.back().x;
}

const char* gemm_key(DType d) {
  switch (d) {
    case DType::kI8:
      return "int8";
    case DType::kBF16:
      return "bf16";
    default:
      return "f32";
  }
}

// The largest local slice over the group's ranks (the slowest rank's shape).
std::int64_t max_out_local(const LayerSpec& spec, int t) {
  std::int64_t best = 0;
  for (int r = 0; r < t; ++r)
    best = std::max(best, LinearLayer::local_weight_shape(spec, r, t).first);
  return best;
}
std::int64_t max_in_local(const LayerSpec& spec, int t) {
  std::int64_t best = 0;
  for (int r = 0; r < t; ++r)
    best = std::max(best, LinearLayer::local_weight_shape(spec, r, t).second);
  return best;
}

}  // namespace

CostModel::CostModel(MachineProfile profile) : profile_(std::move(profile)) {}

double CostModel::gemm_ms(DType dtype, std::int64_t m, std::int64_t n, std::int64_t k) const {
  return table_ms(gemm_key(dtype), m, n, k);
}

double CostModel::table_ms(const std::string& key, std::int64_t m, std::int64_t n,
                           std::int64_t k) const {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  if (record_) {
    (*record_)[{key, n, k}].insert(m);
    return 1;
  }
  // A table measured at this exact shape (calibrate --model) is read as it is.
  if (const GemmTable* t = profile_.layer_table(key, n, k))
    return interp_linear(t->rows, double(m));
  const auto it = profile_.gemm.find(key);
  TPL_CHECK_T(it != profile_.gemm.end() && !it->second.empty(), Unsupported, kWhere,
              "the profile has no ", key, " GEMM table");
  // Time per weight element at M rows on each reference shape, interpolated in log(n*k).
  const auto& tabs = it->second;
  const double w = double(n) * double(k);
  auto per_elem = [&](const GemmTable& t) {
    return interp_linear(t.rows, double(m)) / (double(t.n) * double(t.k));
  };
  const double w0 = double(tabs.front().n) * tabs.front().k;
  const double w1 = double(tabs.back().n) * tabs.back().k;
  if (tabs.size() == 1 || w <= w0) return per_elem(tabs.front()) * w;
  if (w >= w1) return per_elem(tabs.back()) * w;
  for (std::size_t i = 1; i < tabs.size(); ++i) {
    const double a = double(tabs[i - 1].n) * tabs[i - 1].k, b = double(tabs[i].n) * tabs[i].k;
    if (w <= b) {
      const double f = std::log(w / a) / std::log(b / a);
      return std::exp(std::log(per_elem(tabs[i - 1])) +
                      f * std::log(per_elem(tabs[i]) / per_elem(tabs[i - 1]))) *
             w;
    }
  }
  return per_elem(tabs.back()) * w;
}

double CostModel::collective_ms(Collective c, double bytes, int group,
                                const std::string& comm) const {
  if (group <= 1 || bytes <= 0) return 0;
  if (record_) return 1;
  const std::string key = MachineProfile::collective_key(c, group);
  const MachineProfile::CollectiveTables* tables = profile_.collectives_of(comm);
  TPL_CHECK_T(tables, Unsupported, kWhere, "the profile has no tables of the '", comm,
              "' communicator (it was calibrated on '", profile_.comm, "')");
  const auto it = tables->find(key);
  TPL_CHECK_T(it != tables->end() && !it->second.empty(), Unsupported, kWhere,
              "the profile has no '", key, "' table", comm.empty() ? "" : " for " + comm,
              " (calibrate with ", group, " ranks)");
  return interp_loglog(it->second, bytes);
}

std::vector<GemmRequest> CostModel::gemm_requests(const ModelSpec& model,
                                                  const std::vector<Config>& configs, int world,
                                                  const std::vector<std::int64_t>& tokens,
                                                  const CostInputs& in) {
  CostModel recorder{MachineProfile{}};
  Requests seen;
  recorder.record_ = &seen;
  for (const Config& c : configs)
    for (const std::int64_t n : tokens) {
      try {
        recorder.predict(model, c, world, n, in);
      } catch (const Unsupported&) {
        break;  // an op the model does not price: nothing to measure for it
      }
    }
  std::vector<GemmRequest> v;
  for (const auto& [shape, rows] : seen)
    v.push_back({std::get<0>(shape), std::get<1>(shape), std::get<2>(shape),
                 std::vector<std::int64_t>(rows.begin(), rows.end())});
  return v;
}

double CostModel::fused_ratio(const std::string& path, std::int64_t rows) const {
  const auto it = profile_.fused.find(path);
  if (it == profile_.fused.end() || it->second.empty()) return 1.0;
  const auto& pts = it->second;
  if (rows <= pts.front().x) return pts.front().ms;
  if (rows >= pts.back().x) return pts.back().ms;
  return interp_linear(pts, double(rows));
}

double CostModel::copy_ms(double bytes) const {
  return profile_.copy_gbps > 0 ? bytes / (profile_.copy_gbps * 1e6) : 0;
}

StackPrediction CostModel::predict(const ModelSpec& model, const Config& config, int world,
                                   std::int64_t tokens, const CostInputs& in) const {
  config.validate();
  TPL_CHECK(config.layout.world_size() == world, kWhere, "config is for ",
            config.layout.world_size(), " ranks, not ", world);
  const Features features = Features::derive(config, model.info);
  TPL_CHECK_T(!features.dsa_cp || model.mla, Unsupported, kWhere, "model '", model.name,
              "': index_topk (DSA-CP) without multi-head latent attention, which the decoder ",
              "refuses");
  const Selector selector(config, model.info);
  const ForwardContext ctx = ForwardContext::make(config, features, model.info, tokens);
  const int tp = config.layout.tp;
  const std::int64_t n_tok = tokens, n_pad = ctx.padded_tokens();
  const double e = double(dtype_size(in.dtype));
  const double e_r = in.dtype == DType::kF32 ? e : 4.0;  // sums staged through f32

  // Overlap as DecoderStack resolves it: on, off, or auto = the worker has a core of its own.
  const bool overlap = overlap_enabled(config.overlap, in.spare_core);
  auto chunks = [&](std::int64_t rows) {
    return ops::fused_chunk_count(rows, config.fused_chunks);
  };
  // A fused path: the unfused steps times the measured fused / unfused ratio.
  auto fuse = [&](const char* path, std::int64_t rows, LayerPrediction& lp) {
    const double r = fused_ratio(path, rows);
    lp.gemm_ms *= r, lp.comm_ms *= r, lp.other_ms *= r;
  };
  // Resident bytes per weight element: the layer's shard in its dtype plus the GEMM's copy (4
  // bytes when bf16 runs through f32 on this machine's profile).
  const auto gemm_table = profile_.gemm.find(in.w8a8 ? "int8" : dtype_name(in.dtype));
  const bool widened = !in.w8a8 && in.dtype == DType::kBF16 && gemm_table != profile_.gemm.end() &&
                       !gemm_table->second.empty() &&
                       gemm_table->second.front().impl.rfind("bf16_via_f32", 0) == 0;
  const double per_weight = in.w8a8 ? 2.0 : e + (widened ? 4.0 : e);
  // A local GEMM: float, or W8A8's quantise + int8 GEMM + dequantise passes.
  auto local_gemm = [&](std::int64_t m, std::int64_t n, std::int64_t k, LayerPrediction& lp) {
    lp.weight_bytes = double(n) * double(k) * per_weight;
    if (in.w8a8 && (record_ || profile_.gemm.count("w8a8"))) {
      lp.gemm_ms += table_ms("w8a8", m, n, k);  // measured as the layer runs it
    } else if (in.w8a8) {
      lp.gemm_ms += gemm_ms(DType::kI8, m, n, k);
      lp.other_ms += copy_ms(double(m) * k * (e + 1)) + copy_ms(double(m) * n * (4 + e));
    } else {
      lp.gemm_ms += gemm_ms(in.dtype, m, n, k);
    }
  };
  // The communicator kind serving a group, by role ("" = the profile's own tables); FlashComm2's
  // ODP group is the TP group when P = 1.
  auto comm_of = [&](std::string role) -> std::string {
    if (role == "fc2_odp" && config.flashcomm2_p == 1) role = "tp";
    const auto it = in.comms.find(role);
    return it == in.comms.end() ? "" : comm_kind_name(it->second);
  };
  auto coll = [&](Collective c, double s, int g, const char* role, LayerPrediction& lp) {
    lp.comm_ms += collective_ms(c, s, g, comm_of(role));
    lp.bytes_sent += collective_bytes_sent(c, s, g);
  };

  StackPrediction out;
  out.tokens = tokens;
  for (std::int64_t l = 0; l < model.layers; ++l) {
    for (const LayerSpec& spec : decoder_linear_specs(model, l, in.dtype)) {
      const OpChoice choice =
          selector.choose(spec.prefix, direction_of(spec.kind), spec.disable_tp);
      const int t = choice.unsharded ? 1 : shard_coord(choice, config, 0).tp_size;
      LayerPrediction lp;
      lp.prefix = spec.prefix;
      lp.op = op_kind_name(choice.kind);
      lp.kind = linear_kind_of(spec.prefix);
      const std::int64_t out_f = LinearLayer::full_out_features(spec);
      // An unsharded op (an MoE shared expert under sequence parallelism) runs on the rows of
      // the residual it reads, which FC1 shards: the rank's part of the padded batch.
      std::int64_t rows =
          choice.unsharded && ctx.flash_comm_v1_enabled ? n_pad / std::max(1, tp) : n_tok;
      // DSA-CP (docs/architecture.md): the attention runs on the rank's token shard, all heads.
      const bool cp =
          features.dsa_cp && model.mla && spec.prefix.find(".self_attn.") != std::string::npos;
      const bool cp_shard = cp && ctx.flash_comm_v1_enabled && tp > 1;
      const std::int64_t shard_rows = cp_shard ? n_pad / tp : n_tok;
      if (cp && !spec.prefix.ends_with("kv_b_proj")) rows = shard_rows;
      // The decoder's own collectives around the MLA linears, charged to the next linear as the
      // stack's report does. Plain MLA under FC1: the normed tokens gathered before the latent
      // projections (replicated ops that do not gather). DSA-CP: every token's latent and k_pe
      // gathered before kv_b_proj (which runs on all N), and o_proj's head slices exchanged.
      const bool mla_entry =
          model.mla && (spec.prefix.ends_with("self_attn.q_a_proj") ||
                        (model.mla->q_lora_rank == 0 && spec.prefix.ends_with("self_attn.q_proj")));
      if (mla_entry && !features.dsa_cp && ctx.flash_comm_v1_enabled && tp > 1)
        coll(Collective::kAllGather, double(n_pad) * model.hidden * e, tp, "tp", lp);
      if (cp_shard && spec.prefix.ends_with("kv_b_proj")) {
        coll(Collective::kAllGather, double(n_pad) * model.mla->kv_lora_rank * e, tp, "tp", lp);
        coll(Collective::kAllGather, double(n_pad) * model.mla->qk_rope_head_dim * e, tp, "tp", lp);
      }
      if (cp_shard && spec.kind == LayerKind::kRow && choice.kind != OpKind::kShardedCpRow) {
        // all_to_all_v: rank 0 (the widest slice) sends its rows of every other slice.
        const double others = double(spec.in_features - LinearLayer::input_cols(spec, 0, tp).size);
        const double s = double(shard_rows) * others * e;
        lp.comm_ms +=
            collective_ms(Collective::kAllToAll, s * tp / std::max(1, tp - 1), tp, comm_of("tp"));
        lp.bytes_sent += s;
      }
      switch (choice.kind) {
        case OpKind::kStandardColumn:
        case OpKind::kReplicated:
          local_gemm(rows, choice.kind == OpKind::kReplicated ? out_f : max_out_local(spec, t),
                     spec.in_features, lp);
          break;
        case OpKind::kStandardRow:
        case OpKind::kMatmulAllreduceRow: {
          local_gemm(rows, out_f, max_in_local(spec, t), lp);
          coll(Collective::kAllReduce, double(rows) * out_f * e_r, t, "tp", lp);
          if (choice.kind == OpKind::kMatmulAllreduceRow && t > 1 && overlap && chunks(n_tok) > 1)
            fuse("gemm_all_reduce", n_tok, lp);
          break;
        }
        case OpKind::kSequenceColumn:
        case OpKind::kFlashcomm2OshardQkv: {
          const std::int64_t k = spec.in_features, n = max_out_local(spec, t);
          if (ctx.flash_comm_v1_enabled && t > 1) {
            const bool int8 =
                in.w8a8 && config.fc1_quantized_allgather && choice.kind == OpKind::kSequenceColumn;
            coll(Collective::kAllGather, double(n_pad) * k * (int8 ? 1.0 : e), t, "tp", lp);
            local_gemm(n_tok, n, k, lp);
            if (choice.kind == OpKind::kSequenceColumn && overlap && chunks(n_pad) > 1)
              fuse("all_gather_gemm", n_pad, lp);
          } else {
            local_gemm(n_tok, n, k, lp);
          }
          break;
        }
        case OpKind::kSequenceRow: {
          const std::int64_t k = max_in_local(spec, t);
          if (ctx.flash_comm_v1_enabled && t > 1) {
            if (n_pad > n_tok) lp.other_ms += copy_ms(double(n_pad) * k * e);
            local_gemm(n_pad, out_f, k, lp);
            coll(Collective::kReduceScatter, double(n_pad) * out_f * e_r, t, "tp", lp);
            if (ctx.mmrs_fusion && overlap && chunks(n_pad) > 1)
              fuse("gemm_reduce_scatter", n_pad, lp);
          } else {
            local_gemm(n_tok, out_f, k, lp);
            coll(Collective::kAllReduce, double(n_tok) * out_f * e_r, t, "tp", lp);
          }
          break;
        }
        // MLP-TP and O-proj-TP run over m DP replicas with equal token counts here (the stack
        // passes no per-replica counts), so Bmax = N: rows are m·N after the token exchange.
        case OpKind::kMlpColumn: {
          const std::int64_t rows = std::int64_t(t) * n_tok;
          if (t > 1)
            coll(Collective::kAllGather, double(rows) * spec.in_features * e, t, "mlp_tp", lp);
          local_gemm(rows, max_out_local(spec, t), spec.in_features, lp);
          break;
        }
        case OpKind::kMlpRow: {
          const std::int64_t rows = std::int64_t(t) * n_tok;
          local_gemm(rows, out_f, max_in_local(spec, t), lp);
          if (t > 1) coll(Collective::kReduceScatter, double(rows) * out_f * e_r, t, "mlp_tp", lp);
          break;
        }
        case OpKind::kOProjRow: {
          const std::int64_t rows = std::int64_t(t) * n_tok, c = spec.in_features / t;
          lp.other_ms += copy_ms(double(rows) * c * e);  // the padded send buffer
          if (t > 1) coll(Collective::kAllToAll, double(rows) * c * e, t, "oproj_tp", lp);
          local_gemm(rows, out_f, c, lp);
          if (t > 1)
            coll(Collective::kReduceScatter, double(rows) * out_f * e_r, t, "oproj_tp", lp);
          break;
        }
        case OpKind::kFlashcomm2OProjRow: {
          const int p = std::max(1, config.flashcomm2_p), g = tp / p;
          const std::int64_t unit = std::max<std::int64_t>(1, spec.in_unit);
          // Uneven heads: the widest slice (all_to_all_v) bounds the exchange.
          const std::int64_t f = (spec.in_features / unit + tp - 1) / tp * unit;
          const std::int64_t np = pad_to_multiple(n_tok, tp) + n_tok;  // N' without FC1's pad
          const std::int64_t nprime = ctx.flash_comm_v1_enabled ? n_pad : np;
          const std::int64_t b = nprime / tp;
          const double ex = in.w8a8 ? 1.0 : e;
          lp.other_ms += 2 * copy_ms(double(nprime) * f * ex);  // reorder before, regroup after
          coll(Collective::kAllToAll, double(nprime) * f * ex, g, "fc2_odp", lp);
          local_gemm(p * b, out_f, static_cast<std::int64_t>(g) * f, lp);
          if (p > 1)
            coll(Collective::kReduceScatter, double(p) * b * out_f * e_r, p, "fc2_otp", lp);
          if (!ctx.flash_comm_v1_enabled)
            coll(Collective::kAllGather, double(nprime) * out_f * e, tp, "tp", lp);
          break;
        }
        case OpKind::kShardedCpColumn:
        case OpKind::kShardedCpRow:
          // The full weight on the rows the decoder gives it (the shard; kv_b_proj all N).
          local_gemm(rows, out_f, spec.in_features, lp);
          break;
        default:
          TPL_THROW(Unsupported, kWhere, spec.prefix, ": the cost model does not cover op ",
                    op_kind_name(choice.kind));
      }
      lp.ms = lp.gemm_ms + lp.comm_ms + lp.other_ms;
      if (lp.kind >= 0) {
        out.kind_ms[lp.kind] += lp.ms;
        out.kind_bytes[lp.kind] += lp.bytes_sent;
      }
      out.linear_ms += lp.ms;
      out.weight_bytes += lp.weight_bytes;
      out.layers.push_back(std::move(lp));
    }
  }
  return out;
}

}  // namespace tpl

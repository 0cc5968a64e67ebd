#!/usr/bin/python3
"""An independent reference for `tplinear run --dump DIR`: recomputes the decoder stack in float64
NumPy from the dumped input and full weights, following Hugging Face's modelling code (Llama,
Qwen2, Qwen3): RMSNorm, rotate-half RoPE with rope_scaling (linear, llama3), GQA repeat_kv,
causal softmax, q/k-norm (Qwen3), q/k/v biases (Qwen2), SwiGLU; and DeepSeek-V2/V3's multi-head
latent attention (MLA, model_type deepseek_v2 / deepseek_v3: low-rank q and kv, decoupled
interleaved RoPE on the qk_rope part, rope_scaling default, linear or DeepSeek yarn). It shares no
code with tplinear, so it checks the model's math where `run`'s one-rank comparison checks the
sharding.

usage: hf_reference.py --config config.json --dump DIR [--tol 1e-4] [--shared-experts-only]
Exit 0 when every replica's output is within tol of the reference, relative to max |reference|.
--shared-experts-only (DeepSeek only): an MoE layer is checked as h + shared_experts(
post_attention_layernorm(h)), what tplinear's stack runs (no router, no routed experts); that is
NOT the full Hugging Face MoE layer. Without it an MoE layer ends the check with an error.
"""
import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np

LLAMA_FAMILY = ("llama", "qwen2", "qwen3")
# deepseek_v32 (V3.2) adds DSA's lightning indexer, which picks index_topk keys per query; with
# at most index_topk tokens every key is picked, so its attention is the dense MLA below.
DEEPSEEK_FAMILY = ("deepseek_v2", "deepseek_v3", "deepseek_v32")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--shared-experts-only", action="store_true",
                    help="DeepSeek MoE layers: check h + shared_experts(post_attention_layernorm"
                         "(h)) only, as tplinear's stack runs them (NOT the full HF MoE layer)")
    a = ap.parse_args()
    with open(a.config) as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)
    mtype = cfg.get("model_type", "llama")
    if mtype not in LLAMA_FAMILY + DEEPSEEK_FAMILY:
        sys.exit(f"hf_reference: model_type {mtype} is not covered (dense Llama, Qwen2, Qwen3; "
                 "DeepSeek-V2/V3 MLA)")
    if a.shared_experts_only and mtype not in DEEPSEEK_FAMILY:
        sys.exit(f"hf_reference: --shared-experts-only applies to deepseek_v2/deepseek_v3, "
                 f"not {mtype}")
    eps = cfg.get("rms_norm_eps", 1e-6)

    def w(name):
        path = os.path.join(a.dump, name + ".npy")
        if not os.path.exists(path):
            sys.exit(f"hf_reference: {name}.npy is missing from {a.dump}")
        return np.load(path).astype(np.float64)

    def has(name):
        return os.path.exists(os.path.join(a.dump, name + ".npy"))

    def rmsnorm(x, weight, eps=eps):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight.reshape(-1)

    def linear(x, prefix):
        y = x @ w(prefix + ".weight").T
        return y + w(prefix + ".bias").reshape(-1) if has(prefix + ".bias") else y

    def swiglu(x, prefix):  # DeepseekV2MLP / LlamaMLP with hidden_act silu
        g, u = linear(x, prefix + ".gate_proj"), linear(x, prefix + ".up_proj")
        return linear(g / (1 + np.exp(-g)) * u, prefix + ".down_proj")

    ctx = dict(cfg=cfg, w=w, has=has, rmsnorm=rmsnorm, linear=linear, swiglu=swiglu)
    if mtype in LLAMA_FAMILY:  # before the dump is read, as the rope_scaling check always was
        layer, note = llama_layer(mtype, **ctx), None

    layers = sorted({int(m.group(1)) for f in glob.glob(os.path.join(a.dump, "model.layers.*"))
                     if (m := re.search(r"model\.layers\.(\d+)\.", os.path.basename(f)))})
    if not layers:
        sys.exit(f"hf_reference: no model.layers.* weights in {a.dump}")
    inputs = sorted(glob.glob(os.path.join(a.dump, "input_dp*.npy")))
    if not inputs:
        sys.exit(f"hf_reference: no input_dp*.npy in {a.dump}")
    if mtype in DEEPSEEK_FAMILY:
        layer, note = deepseek_layer(layers, a.shared_experts_only, **ctx)
    if note:
        print(note)
    worst_all = 0.0
    for inp in inputs:
        tag = os.path.basename(inp)[len("input_"):-len(".npy")]
        h = np.load(inp).astype(np.float64)
        n = h.shape[0]
        mask = np.triu(np.full((n, n), -np.inf), k=1)
        for l in layers:
            h = layer(h, l, mask)
        y = np.load(os.path.join(a.dump, f"output_{tag}.npy")).astype(np.float64)
        if y.shape != h.shape:
            sys.exit(f"hf_reference: {tag}: output shape {y.shape}, reference {h.shape}")
        err = np.abs(y - h)
        idx = np.unravel_index(np.argmax(err), err.shape)
        rel = err.max() / max(np.abs(h).max(), 1e-30)
        worst_all = max(worst_all, rel)
        print(f"HF reference {tag}: {n} tokens, {len(layers)} layers, max |y - ref| / max |ref| = "
              f"{rel:.3e} (worst at row {idx[0]} col {idx[1]}: expected {h[idx]:.6g}, "
              f"got {y[idx]:.6g})")
    if worst_all > a.tol:
        print(f"FAIL: above the tolerance {a.tol:g}")
        return 1
    print(f"PASS: within {a.tol:g} of the Hugging Face math" +
          (" (MoE layers: shared experts only, NOT the full HF MoE layer)" if note else ""))
    return 0


def llama_layer(mtype, cfg, w, has, rmsnorm, linear, swiglu):
    """Llama / Qwen2 / Qwen3 (transformers' LlamaDecoderLayer, Qwen2/Qwen3 likewise)."""
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or H // nh
    theta = cfg.get("rope_theta", 10000.0)

    # HF: inv_freq = 1 / base^(arange(0, dim, 2) / dim), then rope_scaling.
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    rs = cfg.get("rope_scaling") or {}
    rtype = rs.get("rope_type", rs.get("type", "default"))
    if rtype == "linear":
        inv_freq = inv_freq / rs["factor"]
    elif rtype == "llama3":  # transformers' _compute_llama3_parameters
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv_freq = np.where(medium, smoothed, scaled)
    elif rtype != "default":
        sys.exit(f"hf_reference: rope_scaling type {rtype} is not covered")

    def rope(x):  # x [heads, N, hd], positions 0..N-1
        freqs = np.outer(np.arange(x.shape[1], dtype=np.float64), inv_freq)
        emb = np.concatenate([freqs, freqs], axis=-1)
        rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], axis=-1)
        return x * np.cos(emb) + rot * np.sin(emb)

    def layer(h, l, mask):
        n = h.shape[0]
        p = f"model.layers.{l}."
        x = rmsnorm(h, w(p + "input_layernorm.weight"))
        q = linear(x, p + "self_attn.q_proj").reshape(n, nh, hd).transpose(1, 0, 2)
        k = linear(x, p + "self_attn.k_proj").reshape(n, nkv, hd).transpose(1, 0, 2)
        v = linear(x, p + "self_attn.v_proj").reshape(n, nkv, hd).transpose(1, 0, 2)
        if mtype == "qwen3":  # Qwen3Attention: q_norm / k_norm over head_dim, before RoPE
            q = rmsnorm(q, w(p + "self_attn.q_norm.weight"))
            k = rmsnorm(k, w(p + "self_attn.k_norm.weight"))
        q, k = rope(q), rope(k)
        k = np.repeat(k, nh // nkv, axis=0)  # repeat_kv
        v = np.repeat(v, nh // nkv, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        o = (s / s.sum(-1, keepdims=True)) @ v
        h = h + linear(o.transpose(1, 0, 2).reshape(n, nh * hd), p + "self_attn.o_proj")
        if not has(p + "mlp.gate_proj.weight"):
            sys.exit(f"hf_reference: layer {l} has no dense MLP (MoE is not covered)")
        return h + swiglu(rmsnorm(h, w(p + "post_attention_layernorm.weight")), p + "mlp")

    return layer


# ---- DeepSeek-V2 / V3: multi-head latent attention ----
#
# Source followed: DeepSeek's own remote code shipped with the checkpoints
# (deepseek-ai/DeepSeek-V2[-Lite] modeling_deepseek.py; DeepSeek-V3's is the same for attention):
#   DeepseekV2Attention.__init__ / ._init_rope / .forward   (projections, softmax_scale)
#   DeepseekV2RotaryEmbedding, DeepseekV2LinearScalingRotaryEmbedding,
#   DeepseekV2YarnRotaryEmbedding._set_cos_sin_cache, yarn_find_correction_dim,
#   yarn_find_correction_range, yarn_get_mscale, yarn_linear_ramp_mask   (inv_freq, cos/sin mscale)
#   apply_rotary_pos_emb + rotate_half                                     (the RoPE convention)
#   DeepseekV2DecoderLayer (dense vs MoE: n_routed_experts is not None and
#   layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0), DeepseekV2MLP,
#   DeepseekV2MoE
# cross-read with transformers' src/transformers/models/deepseek_v2/modeling_deepseek_v2.py
# (DeepseekV2Attention.forward, apply_rotary_emb, DeepseekV2RotaryEmbedding), which agrees
# except for two points noted below.
#
# RoPE convention: in apply_rotary_pos_emb the rope slice x[0..d) (d = qk_rope_head_dim) is viewed
# [d/2, 2] and transposed, i.e. reordered to (x0, x2, x4, ..., x1, x3, x5, ...), and then the usual
# rotate_half with emb = cat(freqs, freqs) is applied. So the rotation pairs are the INTERLEAVED
# pairs (x[2i], x[2i+1]) with frequency inv_freq[i] (not Llama's (x[i], x[i + d/2])):
#   out[i]       = x[2i]   cos(t f_i) - x[2i+1] sin(t f_i)
#   out[i + d/2] = x[2i+1] cos(t f_i) + x[2i]   sin(t f_i)         (i < d/2, position t)
# and the output stays in the de-interleaved order. transformers' port (apply_rotary_emb, complex
# view_as_complex on [..., d/2, 2]) computes the same pairs but writes them back interleaved
# (out[2i], out[2i+1]); since q_pe and k_pe get the same permutation, q_pe . k_pe and therefore the
# layer's output are identical under both. This file follows DeepSeek's order.
#
# Softmax scale: q_head_dim^-0.5, times mscale^2 with mscale = yarn_get_mscale(factor,
# mscale_all_dim) when rope_scaling is set and mscale_all_dim is non-zero (DeepseekV2Attention.
# __init__; transformers' deepseek_v3 does the same, its deepseek_v2 port lacked it until
# huggingface/transformers PR #47435). Under yarn cos/sin are also multiplied by
# yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim) (1 when the two are
# equal, as in the released V2/V3 configs). The latent norms q_a_layernorm / kv_a_layernorm are
# DeepseekV2RMSNorm(rank) with the class default eps 1e-6, not rms_norm_eps (both in DeepSeek's
# code and transformers'); input/post_attention layernorms use rms_norm_eps.

def yarn_get_mscale(scale=1.0, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def deepseek_rope_tables(cfg):
    """inv_freq [d/2], the cos/sin multiplier and the softmax-scale multiplier of MLA's rope."""
    d = cfg["qk_rope_head_dim"]
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta") or rs.get("rope_theta") or 10000.0
    rtype = rs.get("rope_type", rs.get("type", "default"))
    exps = np.arange(0, d, 2, dtype=np.float64) / d
    inv_freq = 1.0 / theta ** exps
    cos_sin_mscale, score_mult = 1.0, 1.0
    if rtype == "default":
        return inv_freq, cos_sin_mscale, score_mult
    if rtype == "linear":  # DeepseekV2LinearScalingRotaryEmbedding: t / factor
        inv_freq = inv_freq / rs["factor"]
    elif rtype == "yarn":  # DeepseekV2YarnRotaryEmbedding._set_cos_sin_cache
        factor = rs["factor"]
        orig = rs.get("original_max_position_embeddings", 4096)
        beta_fast, beta_slow = rs.get("beta_fast", 32), rs.get("beta_slow", 1)
        mscale, mscale_all_dim = rs.get("mscale", 1), rs.get("mscale_all_dim", 0)

        def corr_dim(rot):  # yarn_find_correction_dim
            return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(corr_dim(beta_fast)), 0)       # yarn_find_correction_range
        high = min(math.ceil(corr_dim(beta_slow)), d - 1)
        if low == high:
            high += 0.001  # yarn_linear_ramp_mask: prevent the singularity
        ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        extra_mask = 1.0 - ramp  # inv_freq_mask: 1 keeps the original (extrapolated) frequency
        freq_extra = 1.0 / theta ** exps
        freq_inter = 1.0 / (factor * theta ** exps)
        inv_freq = freq_inter * (1.0 - extra_mask) + freq_extra * extra_mask
        cos_sin_mscale = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
    else:
        sys.exit(f"hf_reference: rope_scaling type {rtype} is not covered for "
                 f"{cfg.get('model_type')} (default, linear, yarn)")
    # DeepseekV2Attention.__init__: any rope_scaling with a non-zero mscale_all_dim.
    mscale_all_dim = rs.get("mscale_all_dim", 0)
    if mscale_all_dim:
        score_mult = yarn_get_mscale(rs["factor"], mscale_all_dim) ** 2
    return inv_freq, cos_sin_mscale, score_mult


def deepseek_layer(layers, shared_experts_only, cfg, w, has, rmsnorm, linear, swiglu):
    """DeepseekV2DecoderLayer / DeepseekV3DecoderLayer, MLA attention; see the notes above."""
    nh = cfg["num_attention_heads"]
    q_lora = cfg.get("q_lora_rank")
    r = cfg["kv_lora_rank"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    dq = dn + dr
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        sys.exit(f"hf_reference: hidden_act {act} is not covered (silu)")
    if dr % 2:
        sys.exit(f"hf_reference: qk_rope_head_dim {dr} is odd")
    inv_freq, cos_sin_mscale, score_mult = deepseek_rope_tables(cfg)
    scale = dq ** -0.5 * score_mult
    latent_eps = 1e-6  # DeepseekV2RMSNorm's default, used by q_a_layernorm / kv_a_layernorm

    n_routed = cfg.get("n_routed_experts")
    first_dense = cfg.get("first_k_dense_replace", 0) or 0
    freq = cfg.get("moe_layer_freq", 1) or 1
    n_shared = cfg.get("n_shared_experts")
    moe_inter = cfg.get("moe_intermediate_size")
    moe_layers = []
    for l in layers:
        p = f"model.layers.{l}.mlp."
        cfg_moe = n_routed is not None and l >= first_dense and l % freq == 0
        dense = has(p + "gate_proj.weight")
        if cfg_moe == dense:
            sys.exit(f"hf_reference: layer {l}: the config makes it "
                     f"{'an MoE' if cfg_moe else 'a dense'} layer (n_routed_experts {n_routed}, "
                     f"first_k_dense_replace {first_dense}, moe_layer_freq {freq}) but the dump "
                     f"{'has a' if dense else 'has no'} dense mlp.gate_proj")
        if cfg_moe:
            moe_layers.append(l)
            if not has(p + "shared_experts.gate_proj.weight"):
                sys.exit(f"hf_reference: layer {l} is an MoE layer without shared experts in the "
                         "dump (routed experts are not covered)")
            if not shared_experts_only:
                sys.exit(f"hf_reference: layer {l} is an MoE layer (routed experts and the router "
                         "are not covered); pass --shared-experts-only to check the shared-experts-"
                         "only stack that tplinear runs")
            got = w(p + "shared_experts.gate_proj.weight").shape[0]
            if n_shared is not None and moe_inter is not None and got != moe_inter * n_shared:
                sys.exit(f"hf_reference: layer {l}: shared_experts.gate_proj has {got} rows, "
                         f"moe_intermediate_size * n_shared_experts = {moe_inter * n_shared}")
    note = None
    if moe_layers:
        note = (f"NOTE: --shared-experts-only: MoE layers {moe_layers} are checked as h + "
                "shared_experts(post_attention_layernorm(h)), without the router and the routed "
                "experts: this is NOT the full Hugging Face MoE layer")

    def rope(x):  # x [..., N, dr]; DeepSeek's apply_rotary_pos_emb (see the notes above)
        t = np.arange(x.shape[-2], dtype=np.float64)
        freqs = np.outer(t, inv_freq)
        emb = np.concatenate([freqs, freqs], axis=-1)
        x = np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)  # view [d/2, 2], transpose
        rot = np.concatenate([-x[..., dr // 2:], x[..., : dr // 2]], axis=-1)  # rotate_half
        return x * (np.cos(emb) * cos_sin_mscale) + rot * (np.sin(emb) * cos_sin_mscale)

    def attention(x, p, mask):
        n = x.shape[0]
        if q_lora is None:
            q = linear(x, p + "q_proj")
        else:
            q = linear(rmsnorm(linear(x, p + "q_a_proj"), w(p + "q_a_layernorm.weight"),
                               latent_eps), p + "q_b_proj")
        q = q.reshape(n, nh, dq).transpose(1, 0, 2)  # [heads, N, q_head_dim]
        q_nope, q_pe = q[..., :dn], q[..., dn:]
        ckv = linear(x, p + "kv_a_proj_with_mqa")  # [N, kv_lora_rank + qk_rope]
        c, k_pe = ckv[:, :r], ckv[:, r:][None]  # k_pe [1, N, qk_rope], shared by all heads
        kv = linear(rmsnorm(c, w(p + "kv_a_layernorm.weight"), latent_eps), p + "kv_b_proj")
        kv = kv.reshape(n, nh, dn + dv).transpose(1, 0, 2)
        k_nope, v = kv[..., :dn], kv[..., dn:]
        q_pe, k_pe = rope(q_pe), rope(k_pe)
        query = np.concatenate([q_nope, q_pe], axis=-1)
        key = np.concatenate([k_nope, np.broadcast_to(k_pe, (nh, n, dr))], axis=-1)
        s = query @ key.transpose(0, 2, 1) * scale + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        o = (s / s.sum(-1, keepdims=True)) @ v  # [heads, N, v_head_dim]
        return linear(o.transpose(1, 0, 2).reshape(n, nh * dv), p + "o_proj")

    def layer(h, l, mask):
        p = f"model.layers.{l}."
        h = h + attention(rmsnorm(h, w(p + "input_layernorm.weight")), p + "self_attn.", mask)
        x = rmsnorm(h, w(p + "post_attention_layernorm.weight"))
        if l in moe_layers:  # shared experts only: DeepseekV2MLP(moe_inter * n_shared wide)
            return h + swiglu(x, p + "mlp.shared_experts")
        return h + swiglu(x, p + "mlp")

    return layer, note


if __name__ == "__main__":
    sys.exit(main())

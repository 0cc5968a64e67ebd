#!/usr/bin/python3
"""An independent reference for `tplinear run --dump DIR`: recomputes the decoder stack in float64
NumPy from the dumped input and full weights, following Hugging Face's modelling code (Llama,
Qwen2, Qwen3): RMSNorm, rotate-half RoPE with rope_scaling (linear, llama3), GQA repeat_kv,
causal softmax, q/k-norm (Qwen3), q/k/v biases (Qwen2), SwiGLU. It shares no code with tplinear,
so it checks the model's math where `run`'s one-rank comparison checks the sharding.

usage: hf_reference.py --config config.json --dump DIR [--tol 1e-4]
Exit 0 when every replica's output is within tol of the reference, relative to max |reference|.
"""
import argparse
import glob
import json
import os
import re
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    with open(a.config) as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)
    mtype = cfg.get("model_type", "llama")
    if mtype not in ("llama", "qwen2", "qwen3"):
        sys.exit(f"hf_reference: model_type {mtype} is not covered (dense Llama, Qwen2, Qwen3)")
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or H // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
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

    def w(name):
        return np.load(os.path.join(a.dump, name + ".npy")).astype(np.float64)

    def has(name):
        return os.path.exists(os.path.join(a.dump, name + ".npy"))

    def rmsnorm(x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight.reshape(-1)

    def rope(x):  # x [heads, N, hd], positions 0..N-1
        freqs = np.outer(np.arange(x.shape[1], dtype=np.float64), inv_freq)
        emb = np.concatenate([freqs, freqs], axis=-1)
        rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], axis=-1)
        return x * np.cos(emb) + rot * np.sin(emb)

    def linear(x, prefix):
        y = x @ w(prefix + ".weight").T
        return y + w(prefix + ".bias").reshape(-1) if has(prefix + ".bias") else y

    layers = sorted({int(m.group(1)) for f in glob.glob(os.path.join(a.dump, "model.layers.*"))
                     if (m := re.search(r"model\.layers\.(\d+)\.", os.path.basename(f)))})
    if not layers:
        sys.exit(f"hf_reference: no model.layers.* weights in {a.dump}")
    inputs = sorted(glob.glob(os.path.join(a.dump, "input_dp*.npy")))
    if not inputs:
        sys.exit(f"hf_reference: no input_dp*.npy in {a.dump}")
    worst_all = 0.0
    for inp in inputs:
        tag = os.path.basename(inp)[len("input_"):-len(".npy")]
        h = np.load(inp).astype(np.float64)
        n = h.shape[0]
        mask = np.triu(np.full((n, n), -np.inf), k=1)
        for l in layers:
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
            x = rmsnorm(h, w(p + "post_attention_layernorm.weight"))
            g, u = linear(x, p + "mlp.gate_proj"), linear(x, p + "mlp.up_proj")
            h = h + linear(g / (1 + np.exp(-g)) * u, p + "mlp.down_proj")
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
    print(f"PASS: within {a.tol:g} of the Hugging Face math")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Self-test of hf_reference.py's DeepSeek-V2/V3 MLA path (and a smoke test of its Llama path).

Builds synthetic `tplinear run --dump` directories (random f32 weights under their Hugging Face
names, input_dp*.npy, output_dp*.npy) whose outputs come from a deliberately different formulation
of the same math, written here without hf_reference.py's code:
  * per token, per head loops with a streaming (online) softmax;
  * the "absorbed" MLA form (as vLLM's MLA backends run decode): q_nope is multiplied into
    kv_b_proj's k part, the scores and the value sum run in the kv_lora_rank latent space, and
    kv_b_proj's v part is applied after the softmax;
  * RoPE as complex multiplication on the interleaved pairs (x[2i], x[2i+1]) (transformers'
    apply_rotary_emb form), the rope score as Re(sum z_q conj(z_k));
  * yarn's inv_freq computed per frequency in scalar math.
Then runs hf_reference.py and expects PASS, and expects FAIL on outputs made with a perturbed
weight, with k_pe left unrotated, with Llama's rotate-half pairs (x[i], x[i + d/2]), without
yarn's mscale^2 softmax correction, without yarn's cos/sin multiplier, without yarn's frequency
interpolation, and with rms_norm_eps in the latent norms. Also: an MoE layer without
--shared-experts-only is refused, with it passes; the Llama path passes against its own per-token
formulation; rope_scaling dynamic is refused.

usage: mla_selftest.py [--keep DIR]     exit 0 when every case comes out as expected
"""
import argparse
import cmath
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "hf_reference.py")
N = 9  # tokens

BASE = {"model_type": "deepseek_v2", "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 4, "q_lora_rank": 24, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8, "v_head_dim": 16, "intermediate_size": 96, "num_hidden_layers": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None, "hidden_act": "silu",
        "n_routed_experts": None, "first_k_dense_replace": 0, "moe_layer_freq": 1,
        "n_shared_experts": None, "moe_intermediate_size": 12, "max_position_embeddings": 163840}


# ---- the independent formulation ----

def silu(g):
    return g * 0.5 * (1.0 + np.tanh(0.5 * g))  # = g * sigmoid(g)


def norm_vec(v, wt, eps):
    return v * wt.reshape(-1) / math.sqrt(float(v @ v) / v.size + eps)


def mlp_tok(x, W, p):
    g = W[p + ".gate_proj.weight"] @ x
    u = W[p + ".up_proj.weight"] @ x
    return W[p + ".down_proj.weight"] @ (silu(g) * u)


def yarn_mscale(scale, m):
    if scale <= 1:
        return 1.0
    return 1.0 + 0.1 * m * math.log(scale)


def rope_params(cfg, variant=None):
    """(list of inv_freq, cos/sin multiplier, softmax multiplier), one frequency at a time."""
    d, base = cfg["qk_rope_head_dim"], cfg["rope_theta"]
    rs = cfg.get("rope_scaling") or {}
    freqs = [base ** (-(2.0 * i) / d) for i in range(d // 2)]
    if not rs:
        return freqs, 1.0, 1.0
    assert rs["type"] == "yarn"
    f, L = rs["factor"], rs["original_max_position_embeddings"]
    bf, bs = rs.get("beta_fast", 32), rs.get("beta_slow", 1)
    m, mall = rs.get("mscale", 1), rs.get("mscale_all_dim", 0)

    def dim_for(rotations):  # the dim whose wavelength makes `rotations` turns over L positions
        return d * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = max(0, math.floor(dim_for(bf))), min(d - 1, math.ceil(dim_for(bs)))
    if hi == lo:
        hi += 0.001
    out = []
    for i, fr in enumerate(freqs):
        gamma = min(1.0, max(0.0, (i - lo) / (hi - lo)))  # 0: keep fr, 1: interpolate fr / f
        if variant == "yarn_no_interpolation":
            gamma = 0.0
        out.append((1.0 - gamma) * fr + gamma * fr / f)
    softmax_mult = yarn_mscale(f, mall) ** 2 if mall else 1.0
    cos_sin = 1.0 if variant == "no_cos_sin_mscale" else yarn_mscale(f, m) / yarn_mscale(f, mall)
    return out, cos_sin, softmax_mult


def pairs(x, neox):
    d = x.size
    if neox:  # Llama / GPT-NeoX pairs, the WRONG convention for DeepSeek (a FAIL variant)
        return [complex(x[i], x[i + d // 2]) for i in range(d // 2)]
    return [complex(x[2 * i], x[2 * i + 1]) for i in range(d // 2)]


def mla_expected(cfg, W, h_in, variant=None):
    """The decoder stack, token by token, MLA in the absorbed latent form."""
    nh = cfg["num_attention_heads"]
    r, dn, dr, dv = cfg["kv_lora_rank"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], \
        cfg["v_head_dim"]
    dq = dn + dr
    eps = cfg["rms_norm_eps"]
    leps = eps if variant == "latent_eps_from_config" else 1e-6
    freqs, csm, smult = rope_params(cfg, variant)
    if variant == "no_softmax_mscale":
        smult = 1.0
    scale = smult / math.sqrt(dq)
    neox = variant == "neox_pairs"
    n_layers = cfg["num_hidden_layers"]
    h = [h_in[t].copy() for t in range(h_in.shape[0])]
    T = len(h)
    for l in range(n_layers):
        p = f"model.layers.{l}."
        a = p + "self_attn."
        Wkvb = W[a + "kv_b_proj.weight"].reshape(nh, dn + dv, r)
        W_uk, W_uv = Wkvb[:, :dn, :], Wkvb[:, dn:, :]  # per head [dn, r], [dv, r]
        lat, kpe, qn, qpe = [], [], [], []
        for t in range(T):
            x = norm_vec(h[t], W[p + "input_layernorm.weight"], eps)
            if cfg.get("q_lora_rank") is None:
                q = W[a + "q_proj.weight"] @ x
            else:
                cq = norm_vec(W[a + "q_a_proj.weight"] @ x, W[a + "q_a_layernorm.weight"], leps)
                q = W[a + "q_b_proj.weight"] @ cq
            q = q.reshape(nh, dq)
            kv = W[a + "kv_a_proj_with_mqa.weight"] @ x
            lat.append(norm_vec(kv[:r], W[a + "kv_a_layernorm.weight"], leps))
            rot = [cmath.exp(1j * t * f) * csm for f in freqs]
            zk = pairs(kv[r:], neox)
            if variant != "no_kpe_rope":
                zk = [z * e for z, e in zip(zk, rot)]
            kpe.append(zk)
            qn.append(q[:, :dn])
            qpe.append([[z * e for z, e in zip(pairs(q[hd, dn:], neox), rot)] for hd in range(nh)])
        new_h = []
        for t in range(T):
            heads = []
            for hd in range(nh):
                q_lat = W_uk[hd].T @ qn[t][hd]  # q_nope absorbed into kv_b_proj's k part
                mx, den, acc = -math.inf, 0.0, np.zeros(r)
                for s in range(t + 1):  # causal, streaming softmax
                    pe = sum((zq * zk.conjugate()).real for zq, zk in zip(qpe[t][hd], kpe[s]))
                    sc = (float(q_lat @ lat[s]) + pe) * scale
                    m2 = max(mx, sc)
                    c_old, c_new = math.exp(mx - m2) if mx > -math.inf else 0.0, math.exp(sc - m2)
                    den = den * c_old + c_new
                    acc = acc * c_old + c_new * lat[s]
                    mx = m2
                heads.append(W_uv[hd] @ (acc / den))  # v part of kv_b_proj after the softmax
            attn = W[a + "o_proj.weight"] @ np.concatenate(heads)
            new_h.append(h[t] + attn)
        h = new_h
        mlp = p + "mlp"
        if mlp + ".shared_experts.gate_proj.weight" in W:
            mlp += ".shared_experts"
        h = [ht + mlp_tok(norm_vec(ht, W[p + "post_attention_layernorm.weight"], eps), W, mlp)
             for ht in h]
    return np.stack(h)


def llama_expected(cfg, W, h_in):
    """Llama GQA, per token and head, RoPE on the rotate-half pairs as complex numbers."""
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = H // nh
    eps, base = cfg["rms_norm_eps"], cfg["rope_theta"]
    freqs = [base ** (-(2.0 * i) / hd) for i in range(hd // 2)]
    h = [h_in[t].copy() for t in range(h_in.shape[0])]
    T = len(h)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = p + "self_attn."
        Q, K, V = [], [], []
        for t in range(T):
            x = norm_vec(h[t], W[p + "input_layernorm.weight"], eps)
            rot = [cmath.exp(1j * t * f) for f in freqs]
            q = (W[a + "q_proj.weight"] @ x).reshape(nh, hd)
            k = (W[a + "k_proj.weight"] @ x).reshape(nkv, hd)
            Q.append([[z * e for z, e in zip(pairs(q[i], True), rot)] for i in range(nh)])
            K.append([[z * e for z, e in zip(pairs(k[i], True), rot)] for i in range(nkv)])
            V.append((W[a + "v_proj.weight"] @ x).reshape(nkv, hd))
        new_h = []
        for t in range(T):
            heads = []
            for i in range(nh):
                g = i // (nh // nkv)
                sc = [sum((zq * zk.conjugate()).real for zq, zk in zip(Q[t][i], K[s][g]))
                      / math.sqrt(hd) for s in range(t + 1)]
                m = max(sc)
                e = [math.exp(v - m) for v in sc]
                heads.append(sum(ei * V[s][g] for s, ei in enumerate(e)) / sum(e))
            new_h.append(h[t] + W[a + "o_proj.weight"] @ np.concatenate(heads))
        h = new_h
        h = [ht + mlp_tok(norm_vec(ht, W[p + "post_attention_layernorm.weight"], eps), W, p + "mlp")
             for ht in h]
    return np.stack(h)


# ---- synthetic dumps ----

def weights(cfg, rng, moe_layers=()):
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    W = {}

    def lin(name, out, inp):
        W[name] = rng.standard_normal((out, inp)) / math.sqrt(inp)

    def norm(name, n):
        W[name] = 1.0 + 0.1 * rng.standard_normal((1, n))

    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = p + "self_attn."
        norm(p + "input_layernorm.weight", H)
        norm(p + "post_attention_layernorm.weight", H)
        if cfg["model_type"] == "llama":
            hd, nkv = H // nh, cfg["num_key_value_heads"]
            lin(a + "q_proj.weight", nh * hd, H)
            lin(a + "k_proj.weight", nkv * hd, H)
            lin(a + "v_proj.weight", nkv * hd, H)
            lin(a + "o_proj.weight", H, nh * hd)
        else:
            dq = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
            r = cfg["kv_lora_rank"]
            if cfg.get("q_lora_rank") is None:
                lin(a + "q_proj.weight", nh * dq, H)
            else:
                lin(a + "q_a_proj.weight", cfg["q_lora_rank"], H)
                norm(a + "q_a_layernorm.weight", cfg["q_lora_rank"])
                lin(a + "q_b_proj.weight", nh * dq, cfg["q_lora_rank"])
            lin(a + "kv_a_proj_with_mqa.weight", r + cfg["qk_rope_head_dim"], H)
            norm(a + "kv_a_layernorm.weight", r)
            lin(a + "kv_b_proj.weight", nh * (cfg["qk_nope_head_dim"] + cfg["v_head_dim"]), r)
            lin(a + "o_proj.weight", H, nh * cfg["v_head_dim"])
        if l in moe_layers:
            inter = cfg["moe_intermediate_size"] * cfg["n_shared_experts"]
            m = p + "mlp.shared_experts."
            lin(p + "mlp.gate.weight", cfg["n_routed_experts"], H)  # the router: to be ignored
        else:
            inter = cfg["intermediate_size"]
            m = p + "mlp."
        lin(m + "gate_proj.weight", inter, H)
        lin(m + "up_proj.weight", inter, H)
        lin(m + "down_proj.weight", H, inter)
    # What the dump holds is f32: round the weights, then compute from the rounded values.
    return {k: v.astype(np.float32).astype(np.float64) for k, v in W.items()}


def write_dump(d, cfg, W, inputs, outputs):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    for k, v in W.items():
        np.save(os.path.join(d, k + ".npy"), v.astype(np.float32))
    for i, (x, y) in enumerate(zip(inputs, outputs)):
        np.save(os.path.join(d, f"input_dp{i}.npy"), x.astype(np.float32))
        np.save(os.path.join(d, f"output_dp{i}.npy"), y.astype(np.float32))


def run_ref(d, extra=()):
    p = subprocess.run([sys.executable, REF, "--config", os.path.join(d, "config.json"),
                        "--dump", d, *extra], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def worst(out):
    v = [float(x) for x in re.findall(r"max \|y - ref\| / max \|ref\| = (\S+)", out)]
    return max(v) if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="write the dumps under this directory and keep them")
    a = ap.parse_args()
    rng = np.random.default_rng(20240507)
    tmp = None if a.keep else tempfile.TemporaryDirectory(prefix="mla_selftest_")
    root = a.keep or tmp.name
    failures = 0

    def check(name, d, expect_rc, extra=(), must=None):
        nonlocal failures
        rc, out = run_ref(d, extra)
        ok = (rc == 0) == (expect_rc == 0) and (must is None or re.search(must, out))
        verdict = "ok" if ok else "UNEXPECTED"
        failures += not ok
        last = [s for s in out.strip().splitlines() if s][-1] if out.strip() else ""
        print(f"[{verdict}] {name}: rc {rc} (expected {'0' if expect_rc == 0 else 'non-zero'}), "
              f"worst rel {worst(out):.3e}: {last}")
        if not ok:
            print(out)

    def case(name, overrides, variants=(), moe_layers=(), llama=False):
        cfg = dict(BASE, **overrides)
        W = weights(cfg, rng, moe_layers)
        inputs = [rng.standard_normal((N, cfg["hidden_size"])) for _ in range(2)]
        inputs = [x.astype(np.float32).astype(np.float64) for x in inputs]
        f = llama_expected if llama else mla_expected
        d = os.path.join(root, name)
        write_dump(d, cfg, W, inputs, [f(cfg, W, x) for x in inputs])
        if moe_layers:
            check(name + " (MoE, no flag)", d, 1, must=r"MoE layer.*--shared-experts-only")
            check(name + " --shared-experts-only", d, 0, ["--shared-experts-only"],
                  must=r"(?m)NOT the full Hugging Face MoE layer[\s\S]*^PASS: within 0.0001 of the "
                       r"Hugging Face math")
        else:
            check(name, d, 0, must=r"(?m)^PASS: within 0.0001 of the Hugging Face math")
        for v in variants:
            if v == "perturbed_weight":  # one kv_b_proj element (head 2, k_nope part) moved
                W2 = dict(W)
                k = "model.layers.0.self_attn.kv_b_proj.weight"
                W2[k] = W[k].copy()
                W2[k][2 * (cfg["qk_nope_head_dim"] + cfg["v_head_dim"]) + 3, 5] += 0.05
                outs = [mla_expected(cfg, W2, x) for x in inputs]
            else:
                outs = [mla_expected(cfg, W, x, v) for x in inputs]
            dv = os.path.join(root, f"{name}-{v}")
            write_dump(dv, cfg, W, inputs, outs)
            check(f"{name} / {v}", dv, 1, must=r"(?m)^FAIL: above the tolerance")

    case("mla_qlora24", {}, ["perturbed_weight", "no_kpe_rope", "neox_pairs"])
    case("mla_qproj", {"q_lora_rank": None}, ["no_kpe_rope", "neox_pairs"])
    # DeepSeek-V2's own yarn numbers (factor 40, mscale = mscale_all_dim = 0.707), original
    # context 64 so that at d 8 the ramp covers all regimes (kept, blended, interpolated).
    case("mla_yarn_v2", {"rope_scaling": {"type": "yarn", "factor": 40, "mscale": 0.707,
                                          "mscale_all_dim": 0.707, "beta_fast": 32,
                                          "beta_slow": 1, "original_max_position_embeddings": 64}},
         ["no_softmax_mscale", "yarn_no_interpolation", "neox_pairs"])
    # mscale != mscale_all_dim: cos/sin carry a multiplier too; deepseek_v3, q_proj.
    case("mla_yarn_v3", {"model_type": "deepseek_v3", "q_lora_rank": None,
                         "rope_scaling": {"type": "yarn", "factor": 8, "mscale": 1.0,
                                          "mscale_all_dim": 0.5,
                                          "original_max_position_embeddings": 4096}},
         ["no_softmax_mscale", "no_cos_sin_mscale", "yarn_no_interpolation"])
    # rms_norm_eps large enough to see: the latent norms keep DeepseekV2RMSNorm's 1e-6.
    case("mla_eps", {"rms_norm_eps": 0.05}, ["latent_eps_from_config"])
    # DeepSeek-V3 layout: layer 0 dense, layer 1 MoE (shared experts 2 x 12 = 24 wide).
    case("mla_moe_v3", {"model_type": "deepseek_v3", "n_routed_experts": 8, "n_shared_experts": 2,
                        "first_k_dense_replace": 1, "num_experts_per_tok": 2}, moe_layers=(1,))
    # The Llama path, unchanged, against its own per-token formulation.
    case("llama_gqa", {"model_type": "llama", "num_key_value_heads": 2, "intermediate_size": 96},
         llama=True)
    # Error paths.
    bad = os.path.join(root, "mla_qlora24-dynamic")
    os.makedirs(bad, exist_ok=True)
    cfg = dict(BASE, rope_scaling={"type": "dynamic", "factor": 2})
    src = os.path.join(root, "mla_qlora24")
    for f in os.listdir(src):
        if f.endswith(".npy"):
            os.symlink(os.path.join(src, f), os.path.join(bad, f))
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(cfg, f)
    check("rope_scaling dynamic is refused", bad, 1,
          must=r"rope_scaling type dynamic is not covered")
    print("mla_selftest: " +
          ("all cases as expected" if not failures else f"{failures} UNEXPECTED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

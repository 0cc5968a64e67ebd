"""The Python module under mpirun (1-3 ranks): every op against x @ W.T + b on one process
(column, row, replicated, merged, QKV, FlashComm1, MLP-TP, O-proj-TP, FlashComm2, W8A8),
NumPy and torch, awkward token counts, zero copy, errors. A failure names the rank, the case,
the index, expected and actual values; every rank takes part in every collective, and the
verdicts are gathered so that all ranks fail together."""
import os
import sys
import tempfile
import traceback

import numpy as np
from mpi4py import MPI

import tplinear

comm = MPI.COMM_WORLD
world = tplinear.world(comm)
R, N = world.rank, world.size
failures = []


def check(cond, what):
    if not cond:
        failures.append(f"rank {R}: {what}")


def close(name, actual, expected, rtol):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        failures.append(f"rank {R}: {name}: shape {actual.shape}, expected {expected.shape}")
        return
    err = np.abs(actual - expected)
    tol = rtol * max(1.0, float(np.abs(expected).max(initial=0)))
    if err.size and err.max() > tol:
        i = np.unravel_index(int(err.argmax()), err.shape)
        failures.append(f"rank {R}: {name}: index {tuple(int(v) for v in i)} expected "
                        f"{expected[i]:.6g} got {actual[i]:.6g} (|err| {err.max():.3g} > {tol:.3g})")


def case(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001: a failure of this rank, reported with the others
        failures.append(f"rank {R}: {fn.__name__} raised:\n{traceback.format_exc()}")
    return fn


rng = np.random.default_rng(7)
H, I = 48, 5 * 7 * 3  # 105: splits unevenly over 2 and 4 ranks
W_col = rng.standard_normal((I, H), dtype=np.float32)
b_col = rng.standard_normal(I, dtype=np.float32)
W_row = rng.standard_normal((H, I), dtype=np.float32)
b_row = rng.standard_normal(H, dtype=np.float32)
env = tplinear.Env(world, tplinear.Config({"tp": N, "dp": 1, "pp": 1}))


def col_slice(layer):
    """The output features this rank holds: its weight shard's rows in the full weight."""
    local = layer.local_weight()
    start = [i for i in range(I - local.shape[0] + 1) if np.array_equal(W_col[i], local[0])]
    return start[0], local.shape[0]


@case
def column_and_row_numpy():
    col = tplinear.LinearLayer(env, "model.layers.0.mlp.up_proj", "column", W_col, bias=b_col)
    row = tplinear.LinearLayer(env, "model.layers.0.mlp.down_proj", "row", W_row, bias=b_row)
    check(col.op == "StandardColumn" and row.op == "StandardRow", f"ops {col.op}, {row.op}")
    for tokens in (1, 7, 33):
        x = rng.standard_normal((tokens, H), dtype=np.float32)
        x = comm.bcast(x)  # the same batch on every rank
        h = col.forward(x)
        start, n = col_slice(col)
        ref_h = x.astype(np.float64) @ W_col.T + b_col
        close(f"column tokens={tokens}", h, ref_h[:, start:start + n], 1e-5)
        check(col.placement == ("Shard(features)" if N > 1 else "Replicated") or N == 1,
              f"column placement {col.placement}")
        full_h = np.concatenate(comm.allgather(h), axis=1)
        close(f"gathered column tokens={tokens}", full_h, ref_h, 1e-5)
        y = row.forward(h)
        close(f"row tokens={tokens}", y, full_h.astype(np.float64) @ W_row.T + b_row, 1e-4)
        check(row.placement == "Replicated", f"row placement {row.placement}")


@case
def replicated_and_gathered():
    rep = tplinear.LinearLayer(env, "model.layers.0.replicated_test", "replicated", W_col)
    x = comm.bcast(rng.standard_normal((5, H), dtype=np.float32))
    close("replicated", rep.forward(x), x.astype(np.float64) @ W_col.T, 1e-5)
    gat = tplinear.LinearLayer(env, "model.layers.0.mlp.gate_test", "column", W_col[: 8 * N],
                               gather_output=True)
    close("gather_output", gat.forward(x), x.astype(np.float64) @ W_col[: 8 * N].T, 1e-5)


def check_shards(name, layer, W, x, h):
    """A column-like layer: this rank's output is x @ (its shard).T, its shard is rows of W,
    and the ranks' shards together hold every row of W exactly once."""
    local = np.array(layer.local_weight())
    close(f"{name} output", h, x.astype(np.float64) @ local.T, 1e-5)
    rows = np.concatenate(comm.allgather(local), axis=0)
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    check(key(rows) == key(W), f"{name}: the shards do not partition the weight's rows")


@case
def merged_and_qkv_columns():
    x = comm.bcast(rng.standard_normal((11, H), dtype=np.float32))
    Wm = rng.standard_normal((50 + 34, H), dtype=np.float32)
    merged = tplinear.LinearLayer(env, "model.layers.5.mlp.gate_up_proj", "merged_column", Wm,
                                  output_sizes=[50, 34])
    check_shards("merged_column", merged, Wm, x, merged.forward(x))
    heads, kv, hd = 6, 6, 8  # MHA: every test size (1-3 ranks) splits the heads
    Wq = rng.standard_normal(((heads + 2 * kv) * hd, H), dtype=np.float32)
    qkv = tplinear.LinearLayer(env, "model.layers.5.self_attn.qkv_proj", "qkv", Wq,
                               qkv=[heads, kv, hd])
    check(qkv.op == "QkvColumn" or qkv.op.endswith("Column"), f"qkv op {qkv.op}")
    check_shards("qkv", qkv, Wq, x, qkv.forward(x))


@case
def flashcomm1_sequence_parallel():
    if N == 1:
        return  # FlashComm1 needs TP > 1
    fenv = tplinear.Env(world, tplinear.Config({"tp": N, "dp": 1, "pp": 1, "flashcomm1": True,
                                                "flashcomm1_threshold": 0}))
    col = tplinear.LinearLayer(fenv, "model.layers.0.mlp.gate_up_proj", "column", W_col)
    row = tplinear.LinearLayer(fenv, "model.layers.0.mlp.down_proj", "row", W_row)
    check(col.op == "SequenceColumn" and row.op == "SequenceRow", f"FC1 ops {col.op}, {row.op}")
    for tokens in (5, 31):
        x = comm.bcast(rng.standard_normal((tokens, H), dtype=np.float32))
        b = -(-tokens // N)  # rows per rank after padding to a multiple of N
        padded = np.zeros((b * N, H), np.float32)
        padded[:tokens] = x
        h = col.forward(padded[R * b:(R + 1) * b], tokens=tokens)  # Shard(tokens) in
        y = row.forward(h, tokens=tokens)                         # Shard(tokens) out
        check(row.placement == "Shard(tokens)", f"FC1 row placement {row.placement}")
        ref = np.zeros((b * N, H))
        ref[:tokens] = x.astype(np.float64) @ W_col.T @ W_row.T
        close(f"FC1 tokens={tokens}", y[: max(0, min(b, tokens - R * b))],
              ref[R * b:R * b + max(0, min(b, tokens - R * b))], 1e-4)


@case
def torch_in_torch_out():
    import torch
    col = tplinear.LinearLayer(env, "model.layers.1.mlp.up_proj", "column",
                               torch.nn.Parameter(torch.from_numpy(W_col.copy())))
    row = tplinear.LinearLayer(env, "model.layers.1.mlp.down_proj", "row", torch.from_numpy(W_row))
    x = torch.from_numpy(comm.bcast(rng.standard_normal((9, H), dtype=np.float32)))
    h = col.forward(x)
    check(isinstance(h, torch.Tensor), f"torch in gave {type(h)} out")
    y = row.forward(h)
    full = np.concatenate(comm.allgather(h.numpy()), axis=1)
    close("torch row", y.numpy(), full.astype(np.float64) @ W_row.T, 1e-4)
    # bf16 through torch: weights and activations bf16, sums in f32, one rounding.
    wb, xb = torch.from_numpy(W_col).bfloat16(), x.bfloat16()
    cb = tplinear.LinearLayer(env, "model.layers.2.mlp.up_proj", "column", wb)
    hb = cb.forward(xb)
    check(hb.dtype == torch.bfloat16, f"bf16 in gave {hb.dtype} out")
    ref = (xb.double() @ wb.double().T).numpy()
    gathered = np.concatenate(comm.allgather(hb.float().numpy()), axis=1)
    close("bf16 column (gathered)", gathered, ref, 1e-2)


@case
def zero_copy():
    import torch
    x = comm.bcast(rng.standard_normal((4, H), dtype=np.float32))
    check(tplinear._data_ptr(x) == x.ctypes.data, "numpy input was copied")
    t = torch.from_numpy(x)
    check(tplinear._data_ptr(t) == t.data_ptr(), "torch input was copied")
    # A row-strided view (every other row of a wider array) is taken as it is.
    wide = comm.bcast(rng.standard_normal((8, 2 * H), dtype=np.float32))
    v = wide[::2, :H]
    check(tplinear._data_ptr(v) == v.ctypes.data, "strided view was copied")
    col = tplinear.LinearLayer(env, "model.layers.3.mlp.up_proj", "column", W_col)
    start, n = col_slice(col)
    close("strided input", col.forward(v), (v.astype(np.float64) @ W_col.T)[:, start:start + n],
          1e-5)
    # The layer's weight shard: a view both sides see; it outlives the Python name of the layer.
    w = col.local_weight()
    w[0, 0] = 1234.5
    check(col.local_weight()[0, 0] == np.float32(1234.5), "a mutation of the view is not seen")
    # An output handed on through DLPack is the same memory.
    y = col.forward(x)
    ty = torch.from_dlpack(y)
    ty[0, 0] = -7.0
    check(y[0, 0] == np.float32(-7.0), "torch.from_dlpack(output) copied it")
    del col
    check(np.isfinite(y).all() and w.shape[1] == H, "arrays died with their layer")


@case
def bad_arguments_raise_on_every_rank():
    col = tplinear.LinearLayer(env, "model.layers.4.mlp.up_proj", "column", W_col)
    for bad, kind, needle in [
            (np.zeros((3, H + 1), np.float32), tplinear.InvalidArgument, ""),
            (np.zeros((3, H), np.float64), tplinear.InvalidArgument, "float64"),
            (np.zeros((H, 3), np.float32).T, tplinear.InvalidArgument, "unit column stride"),
            ([[1.0] * H], tplinear.InvalidArgument, "numpy array or a torch tensor")]:
        try:
            col.forward(bad)
            failures.append(f"rank {R}: {bad!r:.40} did not raise")
        except kind as e:
            check(needle in str(e), f"message '{e}' lacks '{needle}'")
    try:
        tplinear.Config({"tp": N, "no_such_option": 1})
        failures.append(f"rank {R}: a bad config key did not raise")
    except tplinear.ConfigError as e:
        check("no_such_option" in str(e), f"config message: {e}")
    check(issubclass(tplinear.OutOfMemory, tplinear.Error) and
          issubclass(tplinear.Error, RuntimeError), "exception hierarchy")


@case
def decoder_stack_and_explain():
    # 6 heads, 6 KV heads: every TP size of the test splits them.
    model = {"model_type": "llama", "hidden_size": 96, "intermediate_size": 200,
             "num_attention_heads": 6, "num_key_value_heads": 6, "num_hidden_layers": 2}
    stack = tplinear.DecoderStack(world, model, tplinear.Config({"tp": N, "dp": 1, "pp": 1}))
    one = None
    x = comm.bcast(rng.standard_normal((13, stack.hidden), dtype=np.float32))
    y = stack.forward(x)
    ys = comm.allgather(y)
    if R == 0:
        single = tplinear.world(MPI.COMM_SELF)
        one = tplinear.DecoderStack(single, model).forward(x)
        close("decoder stack vs one rank", y, one, 1e-4)
    for r in range(1, N):
        close(f"decoder stack replicated on rank {r}", ys[r], ys[0], 0)
    rows = tplinear.explain("tiny", tplinear.Config({"tp": 4, "dp": 1, "pp": 1}), rank=1)
    check(len(rows) == 8 and rows[0]["op"] == "StandardColumn" and rows[0]["tp_size"] == 4
          and rows[0]["tp_rank"] == 1, f"explain: {rows[:1]}")


@case
def w8a8_layer_sharded_stack():
    # FC2 o_proj weights layer-sharded as int8: bit-identical to the same stack holding them.
    if N < 2:
        return
    model = {"model_type": "llama", "hidden_size": 96, "intermediate_size": 200,
             "num_attention_heads": 6, "num_key_value_heads": 6, "num_hidden_layers": 3}
    fc2 = {"tp": N, "dp": 1, "pp": 1, "flashcomm2_p": 1}
    sharded = tplinear.DecoderStack(
        world, model, tplinear.Config(dict(fc2, layer_sharding=["o_proj"])), w8a8=True)
    resident = tplinear.DecoderStack(world, model, tplinear.Config(fc2), w8a8=True)
    ops = {r["op"] for r in sharded.report() if r["layer"].endswith("o_proj")}
    check(ops == {"Flashcomm2OProjRow"}, f"layer-sharded o_proj ops {ops}")
    xrng = np.random.default_rng(13)  # its own draws: later cases keep their data
    for tokens in (1, 7, 37):
        x = comm.bcast(xrng.standard_normal((tokens, sharded.hidden), dtype=np.float32))
        close(f"W8A8 layer-sharded stack, {tokens} tokens", sharded.forward(x),
              resident.forward(x), 0)


@case
def mlp_tp_over_dp_replicas():
    # MLP-TP: the DP replicas form the group (TP 1, DP N, mlp_tp N); each rank brings its own B
    # tokens, gate_up gathers every member's tokens, down reduce-scatters them back.
    menv = tplinear.Env(world, tplinear.Config({"tp": 1, "dp": N, "pp": 1, "mlp_tp": N}))
    B = 7
    Wgu = rng.standard_normal((2 * I, H), dtype=np.float32)
    gate_up = tplinear.LinearLayer(menv, "model.layers.0.mlp.gate_up_proj", "merged_column", Wgu,
                                   output_sizes=[I, I])
    down = tplinear.LinearLayer(menv, "model.layers.0.mlp.down_proj", "row", W_row, bias=b_row)
    check(gate_up.op == "MLPColumn" and down.op == "MLPRow", f"MLP-TP ops {gate_up.op}, {down.op}")
    x = np.random.default_rng(100 + R).standard_normal((B, H), dtype=np.float32)
    xs = np.concatenate(comm.allgather(x), axis=0)  # member order, as the all-gather makes it
    check_shards("MLP-TP gate_up", gate_up, Wgu, xs, gate_up.forward(x))
    check(gate_up.placement == ("Shard(features)" if N > 1 else "Replicated") or N == 1,
          f"MLP-TP gate_up placement {gate_up.placement}")
    # down: this rank's feature slice of every member's tokens in; its own tokens out, summed
    # over the slices (the full down_proj of the gathered features).
    width = down.local_weight().shape[1]
    z = np.random.default_rng(200 + R).standard_normal((N * B, width), dtype=np.float32)
    full = np.concatenate(comm.allgather(z), axis=1)  # slices in member order = all I features
    check(full.shape[1] == I, f"MLP-TP down slices cover {full.shape[1]} of {I} features")
    y = down.forward(z, tokens=B)  # each replica's own count (ForwardContext)
    ref = full.astype(np.float64) @ W_row.T + b_row
    close("MLP-TP down (own tokens)", y, ref[R * B:(R + 1) * B], 1e-4)


@case
def oproj_tp_over_dp_replicas():
    # O-proj-TP (decode node, TP 1): every rank holds all heads of its own tokens; the group
    # exchanges feature slices, each member multiplies its slice, the sum comes back per rank.
    oenv = tplinear.Env(world, tplinear.Config({"tp": 1, "dp": N, "pp": 1, "oproj_tp": N,
                                                "deployment": "decode"}))
    F = 8 * 6  # o_proj input: 6 heads of 8, divisible by 1-3 ranks
    Wo = rng.standard_normal((H, F), dtype=np.float32)
    bo = rng.standard_normal(H, dtype=np.float32)
    o = tplinear.LinearLayer(oenv, "model.layers.0.self_attn.o_proj", "row", Wo, bias=bo, in_unit=8)
    check(o.op == "OProjRow", f"O-proj-TP op {o.op}")
    for B in (1, 5):
        x = np.random.default_rng(300 + 10 * B + R).standard_normal((B, F), dtype=np.float32)
        close(f"O-proj-TP tokens={B}", o.forward(x), x.astype(np.float64) @ Wo.T + bo, 1e-4)


@case
def flashcomm2_oproj():
    if N == 1:
        return  # FlashComm2 needs TP > P >= 1
    heads, hd = 6, 8  # 6 heads split over 2 and 3 ranks
    F = heads * hd
    Wo = rng.standard_normal((H, F), dtype=np.float32)
    for fc1 in (False, True):
        fenv = tplinear.Env(world, tplinear.Config({"tp": N, "dp": 1, "pp": 1, "flashcomm2_p": 1,
                                                    "flashcomm1": fc1, "flashcomm1_threshold": 0}))
        o = tplinear.LinearLayer(fenv, "model.layers.0.self_attn.o_proj", "row", Wo, in_unit=hd)
        check(o.op == "Flashcomm2OProjRow", f"FC2 op {o.op}")
        for tokens in (4 * N, 7) if not fc1 else (4 * N,):
            x = comm.bcast(rng.standard_normal((tokens, F), dtype=np.float32))
            lo = R * (F // N)
            y = o.forward(np.ascontiguousarray(x[:, lo:lo + F // N]), tokens=tokens)
            ref = x.astype(np.float64) @ Wo.T
            if fc1:  # Shard(tokens): this rank's rows of the (padded) batch
                b = tokens // N
                check(o.placement == "Shard(tokens)", f"FC2+FC1 placement {o.placement}")
                close(f"FC2+FC1 tokens={tokens}", y, ref[R * b:(R + 1) * b], 1e-4)
            else:
                check(o.placement == "Replicated", f"FC2 placement {o.placement}")
                close(f"FC2 tokens={tokens}", y, ref, 1e-4)


def w8a8_reference(x, Wq, deq, qb, scale, offset):
    """seed §8 in float64: q = saturate(round_half_even(x / scale + offset)), then
    (q @ Wq.T + quant_bias) * deq_scale, the integer part exact."""
    q = np.clip(np.rint(x.astype(np.float64) / scale + offset), -128, 127).astype(np.int64)
    return (q @ Wq.astype(np.int64).T + qb.astype(np.int64)) * deq.astype(np.float64)


@case
def w8a8_column_and_row():
    # A power-of-two input scale, so x / scale is exact and the int8 activations are the
    # reference's bit for bit; what remains is f32 rounding of the dequantised sums.
    scale, offset = 1.0 / 16, 3
    wrng = np.random.default_rng(11)
    Wq_c = wrng.integers(-127, 128, (I, H), dtype=np.int8)
    deq_c = (wrng.random(I, dtype=np.float32) + 0.5) * np.float32(1e-3)
    qb_c = wrng.integers(-5000, 5000, I, dtype=np.int32)
    col = tplinear.LinearLayer(env, "model.layers.3.mlp.up_proj", "column", Wq_c,
                               quant={"deq_scale": deq_c, "quant_bias": qb_c,
                                      "input_scale": scale, "input_offset": offset})
    Wq_r = wrng.integers(-127, 128, (H, I), dtype=np.int8)
    deq_r = (wrng.random(H, dtype=np.float32) + 0.5) * np.float32(1e-3)
    qb_r = wrng.integers(-5000, 5000, H, dtype=np.int32)
    row = tplinear.LinearLayer(env, "model.layers.3.mlp.down_proj", "row", Wq_r,
                               quant={"deq_scale": deq_r, "quant_bias": qb_r,
                                      "input_scale": scale, "input_offset": offset})
    for tokens in (1, 6, 33):
        x = comm.bcast(rng.standard_normal((tokens, H), dtype=np.float32) * 4)
        h = col.forward(x)
        full = np.concatenate(comm.allgather(h), axis=1)
        close(f"W8A8 column tokens={tokens} (gathered)", full,
              w8a8_reference(x, Wq_c, deq_c, qb_c, scale, offset), 1e-6)
        # Row: this rank's feature slice in; quant_bias added once, partial sums all-reduced.
        z = comm.bcast(rng.standard_normal((tokens, I), dtype=np.float32) * 4)
        widths = comm.allgather(row.local_weight().shape[1])
        lo = sum(widths[:R])
        y = row.forward(np.ascontiguousarray(z[:, lo:lo + widths[R]]))
        close(f"W8A8 row tokens={tokens}", y, w8a8_reference(z, Wq_r, deq_r, qb_r, scale, offset),
              1e-5)
    for bad, what in (({"deq_scale": deq_c}, "quant= needs 'quant_bias'"),
                      ({"deq_scale": deq_c[:5], "quant_bias": qb_c, "input_scale": scale,
                        "input_offset": 0}, "quant['deq_scale'] must be float32 with 105")):
        try:
            tplinear.LinearLayer(env, "model.layers.3.mlp.up_proj", "column", Wq_c, quant=bad)
            check(False, f"W8A8 {what}: no error")
        except tplinear.InvalidArgument as e:
            check(what in str(e), f"W8A8 bad quant: {e}")


@case
def plan_and_run_it():
    # The planner over this program's own candidates: calibrated now (quick), then a stack runs
    # the plan; the plan saved and loaded again gives the same buckets.
    model = {"model_type": "llama", "hidden_size": 96, "intermediate_size": 200,
             "num_attention_heads": 6, "num_key_value_heads": 6, "num_hidden_layers": 1}
    cands = {"standard": tplinear.Config({"tp": N, "dp": 1, "pp": 1})}
    if N > 1:
        cands["fc1"] = tplinear.Config({"tp": N, "dp": 1, "pp": 1, "flashcomm1": True,
                                        "flashcomm1_threshold": 0})
    p = tplinear.plan(world, model, cands, workload="4,64", quick=True)
    check(len(p.buckets) >= 1 and all(b["strategy"] in cands for b in p.buckets),
          f"plan buckets {p.buckets}")
    check(p.world == N and p.layout == "tp", f"plan world {p.world}, layout {p.layout}")
    check(p.bucket_for(1)["strategy"] == p.buckets[0]["strategy"], "bucket_for(1)")
    path = comm.bcast(os.path.join(tempfile.gettempdir(),
                                   f"tplinear-python-plan-{os.getpid()}-{N}.json") if R == 0 else None)
    if R == 0:
        p.save(path)
    comm.Barrier()
    again = tplinear.Plan.load(path)
    check(again.buckets == p.buckets, f"loaded plan {again.buckets} != {p.buckets}")
    stack = tplinear.DecoderStack(world, model, plan=p)
    x = comm.bcast(rng.standard_normal((5, stack.hidden), dtype=np.float32))
    y = stack.forward(x)
    check(stack.strategy_for(5) == p.bucket_for(5)["strategy"],
          f"stack runs {stack.strategy_for(5)} at 5 tokens, the plan says {p.bucket_for(5)}")
    check(np.isfinite(y).all() and y.shape == (5, stack.hidden), f"planned stack output {y.shape}")
    try:
        tplinear.plan(world, model, {}, quick=True)
        check(False, "plan() with no candidates did not raise")
    except tplinear.InvalidArgument as e:
        check("candidates must name at least one config" in str(e), f"plan() error: {e}")


bad = comm.allgather(failures)
if R == 0:
    allf = [f for fs in bad for f in fs]
    for f in allf:
        print("FAIL:", f)
    print(f"python tests at {N} ranks: {'PASS' if not allf else f'{len(allf)} failures'}")
sys.exit(1 if any(bad) else 0)

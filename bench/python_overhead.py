"""What the Python wrapper adds to LinearLayer.forward at M = 1, side by side in one run: the
same layer and input timed through Python (numpy in/out, torch in/out) and in a C++ loop
(LinearLayer._cpp_seconds_per_forward). Warm-up first; median of rounds, whose order flips each
round; one rank. The control row "numpy, torch call" runs the numpy path on `xt.numpy()`: one
torch call per forward that tplinear does not make, to tell torch's effect on the rest of the
loop from the wrapper's own work (docs/python.md).

    PYTHONPATH=build/python /usr/bin/python3 bench/python_overhead.py [k n]
"""
import statistics
import sys
import time

import numpy as np
import torch

import tplinear

k, n = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (1024, 1024)
iters, rounds = 2000, 8
world = tplinear.world()
env = tplinear.Env(world, tplinear.Config({"tp": world.size, "dp": 1, "pp": 1}))
rng = np.random.default_rng(0)
layer = tplinear.LinearLayer(env, "model.layers.0.mlp.up_proj", "column",
                             rng.standard_normal((n, k), dtype=np.float32))
x = rng.standard_normal((1, k), dtype=np.float32)
xt = torch.from_numpy(x.copy())


def per_call(fn):
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


fns = {
    "cpp": lambda: layer._cpp_seconds_per_forward(x, iters),
    "numpy": lambda: per_call(lambda: layer.forward(x)),
    "torch": lambda: per_call(lambda: layer.forward(xt)),
    "numpy, torch call": lambda: per_call(lambda: layer.forward(xt.numpy())),
}
rows = {key: [] for key in fns}
for _ in range(2):  # warm-up: GEMM plans, page faults
    layer.forward(x), layer.forward(xt), layer._cpp_seconds_per_forward(x, 200)
for r in range(rounds):
    for key in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
        rows[key].append(fns[key]())
med = {key: statistics.median(v) * 1e6 for key, v in rows.items()}
print(f"LinearLayer.forward, M=1, k={k}, n={n}, {world.size} rank(s), median of {rounds} x {iters}")
print(f"{'path':<18} {'us/call':>9} {'over C++':>9}")
for key in fns:
    print(f"{key:<18} {med[key]:9.2f} {med[key] - med['cpp']:9.2f}")

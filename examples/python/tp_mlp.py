"""A tensor-parallel MLP block from Python: the program owns the full weights (numpy), tplinear
shards them over the ranks and runs column -> SiLU -> row; every rank checks the result against
x @ W.T computed here on one process.

    mpirun -np 2 /usr/bin/python3 examples/python/tp_mlp.py
(with PYTHONPATH=<build>/python, or <prefix>/lib/python3/dist-packages after an install)
"""
import sys

import numpy as np
from mpi4py import MPI

import tplinear

world = tplinear.world(MPI.COMM_WORLD)
tokens, hidden, inter = 37, 256, 704
rng = np.random.default_rng(1)  # the same seed on every rank: the same full weights
w_up = rng.standard_normal((inter, hidden), dtype=np.float32) / 16
w_down = rng.standard_normal((hidden, inter), dtype=np.float32) / 26
x = rng.standard_normal((tokens, hidden), dtype=np.float32)

env = tplinear.Env(world, tplinear.Config({"tp": world.size, "dp": 1, "pp": 1}))
up = tplinear.LinearLayer(env, "model.layers.0.mlp.up_proj", "column", w_up)
down = tplinear.LinearLayer(env, "model.layers.0.mlp.down_proj", "row", w_down)
h = up.forward(x)          # this rank's feature shard
h = h / (1 + np.exp(-h))   # SiLU, on the shard
y = down.forward(h)        # all-reduced: every rank holds the whole output

a = x.astype(np.float64) @ w_up.T.astype(np.float64)
ref = (a / (1 + np.exp(-a))) @ w_down.T.astype(np.float64)
rel = float(np.abs(y - ref).max() / np.abs(ref).max())
ok = MPI.COMM_WORLD.allreduce(rel < 1e-4, op=MPI.LAND)
print(f"rank {world.rank}/{world.size}: {up.op} -> {down.op}, output {down.placement}, "
      f"max rel error {rel:.2e}")
if world.rank == 0:
    print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)

#!/usr/bin/env bash
# The main job: a tensor-parallel MLP block across 4 ranks under each strategy, each checked
# against the same block on one rank. Exits non-zero on the first mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
for strategy in standard fc1 matmul-allreduce; do
  mpirun -np 4 --bind-to none build/tools/tplinear/tplinear demo --strategy "$strategy" "$@"
done

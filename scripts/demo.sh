#!/usr/bin/env bash
# The main job: the default model preset's decoder stack across 4 ranks (plain TP, then
# FlashComm1 sequence parallelism), each checked against the same stack on one rank.
# Extra arguments go to `tplinear run`. Exits non-zero on the first mismatch or error.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
build/tools/tplinear/tplinear --np 4 run "$@"
build/tools/tplinear/tplinear --np 4 run --fc1 "$@"

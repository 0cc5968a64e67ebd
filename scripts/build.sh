#!/usr/bin/env bash
# Configures and builds tplinear (library, CLI, tests, benchmarks) into ./build.
set -euo pipefail
cd "$(dirname "$0")/.."
# The main build requires MPI, oneDNN, OpenBLAS and the Python module (AUTO would quietly build
# less); pass -DTPL_MPI=AUTO etc. to override.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTPL_MPI=ON -DTPL_ONEDNN=ON \
  -DTPL_OPENBLAS=ON -DTPL_PYTHON=ON "$@"
cmake --build build -j "$(nproc)"

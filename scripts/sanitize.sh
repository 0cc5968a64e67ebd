#!/usr/bin/env bash
# Builds tplinear with AddressSanitizer + UndefinedBehaviorSanitizer (TPL_SANITIZE) into
# build-asan/ and runs the test suite there (docs/errors.md "Sanitizers"): the unit, multi-rank,
# CLI, fault, stress and fuzz-replay tests with leak detection on, and the Python tests with the
# ASan runtime preloaded into /usr/bin/python3 (leak detection off there; tests/python). Any
# report fails its test. Left out: the package tests (a plain consumer cannot link an
# instrumented library) and the GPU tests.
#
#   scripts/sanitize.sh [CTEST_ARGS...]
#
# Environment: TPL_SAN_BUILD (build dir, default build-asan/ in this clone, ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${TPL_SAN_BUILD:-$root/build-asan}
# -O1 -g1 (no NDEBUG): line numbers in every report, and asserts on.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="-O1 -g1" \
  -DTPL_SANITIZE=address,undefined -DTPL_MPI=ON -DTPL_ONEDNN=ON -DTPL_OPENBLAS=ON \
  -DTPL_PYTHON=ON -DTPL_CUDA=OFF -DTPL_BUILD_BENCHMARKS=OFF > "${TMPDIR:-/tmp}/tpl-sanitize-configure.log" ||
  { cat "${TMPDIR:-/tmp}/tpl-sanitize-configure.log"; exit 2; }
cmake --build "$build" -j "$(nproc)"
# Inherited by mpirun's ranks. MpiSession leaves OpenMPI's init allocations out and checks for
# leaks just before MPI_Finalize; the suppression file names only PMIx and hwloc (no
# leak:libmpi, which would hide tplinear's own leaks of MPI objects).
export ASAN_OPTIONS=detect_leaks=1:check_initialization_order=1:strict_init_order=1
export LSAN_OPTIONS=suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$build" --output-on-failure -j 2 -LE '^gpu$' "$@" || {
  rc=$?
  ./scripts/ctest-failures.sh "$build"
  exit $rc
}

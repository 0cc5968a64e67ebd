#!/usr/bin/env bash
# Runs the whole test suite (unit and multi-rank tests at 1-4 ranks) with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
# On failure the end of each failed test's output is printed again, last (scripts/ctest-failures.sh).
ctest --test-dir build --output-on-failure -j 2 "$@" || {
  rc=$?
  ./scripts/ctest-failures.sh build
  exit $rc
}

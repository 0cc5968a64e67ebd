#!/usr/bin/env bash
# Runs the whole test suite (unit and multi-rank tests at 1-4 ranks) with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
ctest --test-dir build --output-on-failure -j 2 "$@"

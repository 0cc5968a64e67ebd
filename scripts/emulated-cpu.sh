#!/usr/bin/env bash
# Runs tplinear on emulated CPUs without AVX-512 (qemu-user; docs/gemm.md, "Emulated CPUs"): an
# AVX2 + FMA EPYC (Zen 2, "EPYC-Rome") and a pre-AVX x86-64 ("Nehalem", SSE4.2). The program sees
# that CPU's own cpuid, so what oneDNN, OpenBLAS and tplinear detect by themselves, with no
# TPL_CPU_ISA cap, is what such a machine would see. Per CPU: `tplinear info` must report the
# ISA, the GEMM unit tests must pass, and checked 2- and 3-rank runs (f32, bf16, W8A8, FlashComm1,
# fused GEMM + all-reduce) must PASS against their one-rank reference. The two CPUs run side by
# side (each process is one thread). Correctness only: emulation is 20-40x slower, so no timing
# here means anything.
# Usage: scripts/emulated-cpu.sh [build-dir] [gtest filter for the GEMM tests]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
FILTER=${2:-*}
command -v qemu-x86_64 >/dev/null ||
  { echo "emulated-cpu: qemu-x86_64 missing (scripts/install-deps.sh installs qemu-user)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
unset TPL_CPU_ISA TPL_COMM TPL_GEMM OPENBLAS_CORETYPE
CLI=$B/tools/tplinear/tplinear
LOG=${TMPDIR:-/tmp}/tpl-emulated-cpu
rm -rf "$LOG"
mkdir -p "$LOG"
quiet() { grep -v "TCG doesn't support" || true; }  # qemu names each cpuid bit it cannot emulate

# check <qemu cpu model> <isa tplinear must detect>: prints a summary; exit status 1 on a failure.
check() {
  local cpu=$1 isa=$2 fail=0 t0=$SECONDS
  local q=(qemu-x86_64 -cpu "$cpu")
  echo "== $cpu (expect isa $isa)"
  # The list order, untimed: emulated timings mean nothing.
  "${q[@]}" "$CLI" info --no-measure >"$LOG/$cpu-info.txt" 2>&1 || fail=1
  if grep -q "^isa: $isa (detected $isa; cap: none)" "$LOG/$cpu-info.txt"; then
    grep -E "^(features|isa|library): " "$LOG/$cpu-info.txt"
    grep -E "^  (f32|bf16|int8) +M=16 " "$LOG/$cpu-info.txt"
  else
    echo "FAIL: tplinear info does not report isa $isa:"; quiet <"$LOG/$cpu-info.txt" | head -5
    fail=1
  fi
  if "${q[@]}" "$B/tests/gemm/tpl_gemm_tests" --gtest_brief=1 --gtest_filter="$FILTER" \
      >"$LOG/$cpu-gemm.txt" 2>&1; then
    echo "gemm tests: $(grep -E '^\[  PASSED  \]' "$LOG/$cpu-gemm.txt")" \
         "$(grep -E '^\[  SKIPPED \]' "$LOG/$cpu-gemm.txt" || true)"
  else
    echo "FAIL: GEMM tests:"; quiet <"$LOG/$cpu-gemm.txt" | grep -E "Failure|FAILED|signal" -A3 | head -40
    fail=1
  fi
  local run np args i=0
  for run in "2 --dtype f32" "2 --dtype bf16" "2 --quant w8a8 --check-gemm reference" "3 --fc1" \
             "3 --quant w8a8 --matmul-allreduce --check-gemm reference"; do
    read -r np args <<<"$run"
    i=$((i + 1))
    # shellcheck disable=SC2086
    if mpirun -np "$np" --oversubscribe --bind-to none "${q[@]}" "$CLI" run --model tiny \
        --tokens 37 $args >"$LOG/$cpu-run$i.txt" 2>&1 && grep -q "^PASS" "$LOG/$cpu-run$i.txt"; then
      echo "run np $np $args: $(grep '^PASS' "$LOG/$cpu-run$i.txt")"
    else
      echo "FAIL: run np $np $args:"; quiet <"$LOG/$cpu-run$i.txt" | tail -8
      fail=1
    fi
  done
  echo "($cpu: $((SECONDS - t0)) s)"
  return $fail
}

check EPYC-Rome avx2 >"$LOG/EPYC-Rome.summary" 2>&1 &
rome=$!
check Nehalem sse41 >"$LOG/Nehalem.summary" 2>&1 &
nehalem=$!
rc=0
wait $rome || rc=1
wait $nehalem || rc=1
cat "$LOG/EPYC-Rome.summary" "$LOG/Nehalem.summary"
if [ "$rc" = 0 ]; then echo "emulated-cpu: all passed"; else echo "emulated-cpu: FAILED (logs in $LOG)"; fi
exit $rc

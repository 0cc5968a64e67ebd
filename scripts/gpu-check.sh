#!/usr/bin/env bash
# GPU check (docs/gpu.md): builds the CUDA backend, runs the GPU tests and compares tplinear's
# cuBLASLt bf16 / W8A8 GEMMs with torch on the Qwen3-8B shapes. Needs nvcc (CUDA 12+), NCCL,
# cmake, ninja, mpirun, the CPU build's libraries (scripts/install-deps.sh: oneDNN, GTest, ...)
# and Python with PyTorch. Installs nothing. Usage: scripts/gpu-check.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
B=${1:-build-gpu}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || { echo "gpu-check: no GPU" >&2; exit 2; }
if ! cmake -S . -B "$B" -G Ninja -DTPL_CUDA=ON -DTPL_BUILD_BENCHMARKS=OFF >"$B.configure.log" 2>&1; then
  grep -E 'Could not find|not found|Error' "$B.configure.log" | head -5 >&2
  echo "gpu-check: configure failed (missing package? see $B.configure.log and scripts/install-deps.sh)" >&2
  exit 2
fi
cmake --build "$B" -j "$(nproc)" --target tpl_gpu_tests tpl_gpu_bench
echo "== GPU tests"
rc=0
"$B/tests/gpu/tpl_gpu_tests" --gtest_brief=1 >"$B/gpu_tests.log" 2>&1 || rc=$?
grep -E '^\[ *(PASSED|FAILED|SKIPPED) *\]|Failure|error' "$B/gpu_tests.log" | head -40 || true
echo "gpu tests exit code: $rc"
echo "== GEMM throughput (tplinear cuBLASLt vs torch; bf16 TFLOP/s, int8 TOPS)"
"$B/tests/gpu/tpl_gpu_bench" >"$B/gpu_bench.csv"
python3 - "$B/gpu_bench.csv" <<'PY'
import csv, sys, torch, torch.nn.functional as F
def bench(f, it=20):
    for _ in range(3): f()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(it): f()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / 1e3 / it
print(f"{'shape':8}{'M':>6}{'k':>7}{'n':>7} | {'tpl bf16':>9}{'torch bf16':>11} | "
      f"{'tpl int8':>9}{'tpl w8a8':>9}{'torch _int_mm':>14}")
for r in csv.DictReader(open(sys.argv[1])):
    m, k, n = int(r["M"]), int(r["k"]), int(r["n"])
    ops = 2 * m * k * n
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    tb = ops / bench(lambda: F.linear(x, w)) / 1e12
    xi = torch.randint(-64, 64, (max(m, 17), k), device="cuda", dtype=torch.int8)  # _int_mm: M > 16
    wi = torch.randint(-64, 64, (n, k), device="cuda", dtype=torch.int8)
    ti = 2 * xi.shape[0] * k * n / bench(lambda: torch._int_mm(xi, wi.t())) / 1e12
    print(f"{r['shape']:8}{m:>6}{k:>7}{n:>7} | {float(r['bf16_tflops']):>9.1f}{tb:>11.1f} | "
          f"{float(r['int8_tops']):>9.1f}{float(r['w8a8_tops']):>9.1f}{ti:>14.1f}")
PY
exit $rc

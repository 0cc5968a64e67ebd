#!/usr/bin/env bash
# GPU check (docs/gpu.md): builds the CUDA backend, runs the GPU tests and compares tplinear's
# cuBLASLt bf16 / W8A8 GEMMs with torch on the Qwen3-8B shapes. Needs nvcc (CUDA 12+), NCCL
# (system, $NCCL_HOME or the pip wheel nvidia-nccl-cu13), cmake, ninja and Python with PyTorch;
# MPI and oneDNN are used when found (TPL_MPI=AUTO, TPL_ONEDNN=AUTO), not needed. GoogleTest and
# nlohmann-json come from the system or, on a machine without Debian dev packages, from the .deb
# files that scripts/pack-device-deps.sh put in .devdeps/ (carry that folder along): they are
# unpacked with `dpkg -x` into <build-dir>/deps, never into /. Installs nothing.
# Usage: scripts/gpu-check.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
B=${1:-build-gpu}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || { echo "gpu-check: no GPU" >&2; exit 2; }
mkdir -p "$B"
B_ABS=$(cd "$B" && pwd)

# Carried dependencies: .devdeps/*.deb unpacked into a private prefix.
unpack_deb() {  # <deb> <dir>
  if command -v dpkg-deb >/dev/null 2>&1; then
    dpkg-deb -x "$1" "$2"
  else  # no dpkg: read the ar archive's data.tar.* with Python
    python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not a .deb"
pos = 8
while pos + 60 <= len(data):
    name, size = data[pos:pos + 16].decode().strip(), int(data[pos + 48:pos + 58])
    body = data[pos + 60:pos + 60 + size]
    if name.rstrip("/").startswith("data.tar"):
        kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        tarfile.open(fileobj=io.BytesIO(body), mode="r:*").extractall(sys.argv[2], **kw)
        break
    pos += 60 + size + (size & 1)
else:
    sys.exit("no data.tar in " + sys.argv[1])
PY
  fi
}
PREFIX_ARGS=()
DEPS="$B_ABS/deps"
if compgen -G ".devdeps/*.deb" >/dev/null; then
  rm -rf "$DEPS"
  mkdir -p "$DEPS"
  n=0
  for deb in .devdeps/*.deb; do unpack_deb "$deb" "$DEPS"; n=$((n + 1)); done
  echo "gpu-check: unpacked $n carried packages into $DEPS"
  PREFIX_ARGS=(-DCMAKE_PREFIX_PATH="$DEPS/usr")
  for d in "$DEPS"/usr/lib/x86_64-linux-gnu "$DEPS"/usr/lib; do
    if [ -d "$d" ]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
  done
fi

if ! cmake -S . -B "$B" -G Ninja ${PREFIX_ARGS[@]+"${PREFIX_ARGS[@]}"} -DTPL_CUDA=ON \
     -DTPL_MPI=AUTO -DTPL_ONEDNN=AUTO -DTPL_BUILD_BENCHMARKS=OFF -DTPL_BUILD_TOOLS=OFF \
     >"$B/configure.log" 2>&1; then
  grep -E 'Could not find|not found|Error' "$B/configure.log" | head -5 >&2
  echo "gpu-check: configure failed (missing package? see $B/configure.log;" \
       "on a machine without Debian dev packages run scripts/pack-device-deps.sh where apt works" \
       "and carry .devdeps)" >&2
  exit 2
fi
grep -E 'tplinear: (CUDA|NCCL)' "$B/configure.log" || true
grep -E '^(GTest_DIR|nlohmann_json_DIR|NCCL_LIBRARY):' "$B/CMakeCache.txt" || true
# NCCL's directory (the pip wheel's, say) for the test programs, besides their RPATH.
nccl_lib=$(sed -n 's/^NCCL_LIBRARY:FILEPATH=//p' "$B/CMakeCache.txt")
if [ -n "$nccl_lib" ]; then
  nccl_dir=$(dirname "$nccl_lib")
  export LD_LIBRARY_PATH="$nccl_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
cmake --build "$B" -j "$(nproc)" --target tpl_gpu_tests tpl_gpu_bench
echo "== GPU tests"
rc=0
"$B/tests/gpu/tpl_gpu_tests" --gtest_brief=1 >"$B/gpu_tests.log" 2>&1 || rc=$?
grep -E '^\[ *(PASSED|FAILED|SKIPPED) *\]|Failure|error' "$B/gpu_tests.log" | head -40 || true
echo "gpu tests exit code: $rc"
echo "== Qwen3-8B shapes: bf16 TFLOP/s and int8 TOPS, tplinear cuBLASLt vs torch; op overhead"
"$B/tests/gpu/tpl_gpu_bench" >"$B/gpu_bench.csv"
python3 - "$B/gpu_bench.csv" <<'PY'
import csv, sys, torch, torch.nn.functional as F
def bench(f, it=50):
    for _ in range(5): f()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(it): f()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / 1e3 / it
print(torch.cuda.get_device_name(), "| torch", torch.__version__)
print(f"{'shape':8}{'M':>6}{'k':>7}{'n':>7} | {'tpl bf16':>9}{'torch':>7}{'ratio':>7} | "
      f"{'tpl int8':>9}{'w8a8':>7}{'/bf16':>7}{'_int_mm':>9} | "
      f"{'gemm us':>8}{'op us':>8}{'ovh us':>8}{'host ovh':>9}")
for r in csv.DictReader(open(sys.argv[1])):
    m, k, n = int(r["M"]), int(r["k"]), int(r["n"])
    ops = 2 * m * k * n
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    tb = ops / bench(lambda: F.linear(x, w)) / 1e12
    xi = torch.randint(-64, 64, (max(m, 17), k), device="cuda", dtype=torch.int8)  # _int_mm: M > 16
    wi = torch.randint(-64, 64, (n, k), device="cuda", dtype=torch.int8)
    ti = 2 * xi.shape[0] * k * n / bench(lambda: torch._int_mm(xi, wi.t())) / 1e12
    bf, i8, w8 = float(r["bf16_tflops"]), float(r["int8_tops"]), float(r["w8a8_tops"])
    g, o = float(r["gemm_us"]), float(r["op_us"])
    hg, ho = float(r["host_gemm_us"]), float(r["host_op_us"])
    print(f"{r['shape']:8}{m:>6}{k:>7}{n:>7} | {bf:>9.1f}{tb:>7.1f}{bf / tb:>7.2f} | "
          f"{i8:>9.1f}{w8:>7.1f}{w8 / bf:>7.2f}{ti:>9.1f} | "
          f"{g:>8.2f}{o:>8.2f}{o - g:>8.2f}{ho - hg:>9.2f}")
PY
exit $rc

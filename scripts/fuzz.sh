#!/usr/bin/env bash
# Fuzzes tplinear's parsers (docs/fuzzing.md): builds the libFuzzer harnesses of tests/fuzz with
# clang-16 and ASan + UBSan into a build directory outside the source tree, then runs each for
# its share of SECONDS_TOTAL (default 600) over a copy of its seed corpus and past crashes.
# Exits non-zero when any harness crashes, hangs, leaks, breaks an invariant or allocates beyond
# the limit; the input that did it is kept and its path printed. Prints executions, exec/s and
# coverage per harness.
#
#   scripts/fuzz.sh [SECONDS_TOTAL]
#
# Environment: TPL_FUZZ_CXX (clang++-16), TPL_FUZZ_BUILD (build dir, default build-fuzz/ in
# this clone, ignored by git, so two clones never share a CMake cache), TPL_FUZZ_WORK (run dir,
# default a fresh one under $TMPDIR, kept on failure), TPL_FUZZ_ONLY (space-separated harness names), TPL_FUZZ_JOBS (build jobs, 2),
# TPL_FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
total=${1:-600}
[[ "$total" =~ ^[0-9]+$ ]] && [ "$total" -ge 1 ] || {
  echo "usage: scripts/fuzz.sh [SECONDS_TOTAL]" >&2
  exit 2
}
cxx=${TPL_FUZZ_CXX:-clang++-16}
command -v "$cxx" > /dev/null || {
  echo "fuzz.sh: $cxx not found (scripts/install-deps.sh installs clang-16 libclang-rt-16-dev)" >&2
  exit 2
}
tmp=${TMPDIR:-/tmp}
build=${TPL_FUZZ_BUILD:-$root/build-fuzz}
work=${TPL_FUZZ_WORK:-$(mktemp -d "$tmp/tplinear-fuzz.XXXXXX")}

# The harness list is tests/fuzz/harnesses.cmake's, so the two builds cannot disagree.
read -r -a all < <(sed -n 's/^set(TPL_FUZZ_HARNESSES \(.*\))$/\1/p' tests/fuzz/harnesses.cmake)
read -r -a harnesses <<< "${TPL_FUZZ_ONLY:-${all[*]}}"

t0=$(date +%s)
cmake -S tests/fuzz/libfuzzer -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" > "$work/configure.log" ||
  { cat "$work/configure.log"; exit 2; }
cmake --build "$build" -j "${TPL_FUZZ_JOBS:-2}" -- $(printf 'fuzz_%s ' "${harnesses[@]}") > "$work/build.log" ||
  { tail -40 "$work/build.log"; exit 2; }
echo "fuzz.sh: built ${#harnesses[@]} harnesses in $(($(date +%s) - t0)) s ($build)"

per=$((total / ${#harnesses[@]}))
[ "$per" -ge 1 ] || per=1
# Inputs up to 16 KiB; no single allocation may reach 1 MiB (64 times the largest input): the
# parsers allocate in proportion to their input, never to sizes the input claims.
flags=(-max_total_time="$per" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1 -max_len=16384
  -print_final_stats=1 ${TPL_FUZZ_ARGS:-})
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=()
summary=()
for h in "${harnesses[@]}"; do
  mkdir -p "$work/corpus/$h" "$work/artifacts/$h"
  cp -r tests/fuzz/corpus/"$h"/. "$work/corpus/$h/"
  find tests/fuzz/crashes/"$h" -type f ! -name .gitkeep ! -name 'README*' -exec cp {} "$work/corpus/$h/" \;
  log="$work/$h.log"
  echo "fuzz.sh: $h for ${per} s"
  rc=0
  "$build/fuzz_$h" "${flags[@]}" -artifact_prefix="$work/artifacts/$h/" "$work/corpus/$h" \
    > "$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
  units=$(find "$work/corpus/$h" -type f | wc -l)
  summary+=("$(printf '%-18s %12s execs %8s exec/s  %-22s corpus %5s  rc %s' "$h" "${execs:-?}" \
    "${rate:-?}" "${cov:-cov: ? ft: ?}" "$units" "$rc")")
  if [ "$rc" -ne 0 ]; then
    failed+=("$h")
    grep -m5 -E 'ERROR|invariant failed|unexpected exception|runtime error' "$log" || true
    ls "$work/artifacts/$h"/* 2> /dev/null || true
  fi
done

echo "fuzz.sh: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), ${total} s requested," \
  "$(($(date +%s) - t0)) s in all"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]}; logs and inputs in $work (copy an input to" \
    "tests/fuzz/crashes/<harness>/ and add a unit test)" >&2
  exit 1
fi
[ -n "${TPL_FUZZ_WORK:-}" ] || rm -rf "$work"
echo "fuzz.sh: no crash, hang, leak or oversized allocation"

#!/usr/bin/env bash
# memory.sh COMMAND...: runs a `tplinear run` COMMAND and checks its host-memory line: the
# estimate made before loading (tpl/memory.h) must not be below what rank 0's resident set grew
# by (VmHWM at the end minus VmRSS before loading), nor more than twice it.
set -u
out=$(mktemp)
trap 'rm -f "$out"' EXIT
timeout -k 5 "${TPL_EXPECT_TIMEOUT:-100}" "$@" >"$out" 2>&1 </dev/null
rc=$?
line=$(grep -E '^host memory [(]rank 0[)]: estimated ' "$out")
if [[ $rc -ne 0 || -z $line ]]; then
  cat "$out"
  echo "FAIL: exit status $rc, or no host memory line"
  exit 1
fi
# "estimated 3.4 GiB = ... before loading; resident set grew 3.0 GiB (peak 3.2 GiB)"
to_mib() { awk -v v="$1" -v u="$2" 'BEGIN { s = (u == "GiB") ? 1024 : (u == "MiB") ? 1 : (u == "KiB") ? 1 / 1024 : 1 / 1048576; printf "%.3f", v * s }'; }
read -r est_v est_u < <(sed -E 's/.*estimated ([0-9.]+) ([KMG]?i?B) .*/\1 \2/' <<<"$line")
read -r grew_v grew_u < <(sed -E 's/.*resident set grew ([0-9.]+) ([KMG]?i?B) .*/\1 \2/' <<<"$line")
est=$(to_mib "$est_v" "$est_u")
grew=$(to_mib "$grew_v" "$grew_u")
echo "$line"
echo "estimate ${est} MiB, resident growth ${grew} MiB"
if ! awk -v e="$est" -v g="$grew" 'BEGIN { exit !(e >= g && e <= 2 * g) }'; then
  echo "FAIL: the estimate is not within [1, 2] x the resident growth"
  exit 1
fi
echo "OK"

#!/usr/bin/env bash
# hf_check.sh CONFIG TPLINEAR ARGS...: runs `TPLINEAR ARGS... run --hf-config CONFIG --dump DIR`
# (ARGS carry --np and the strategy flags) and checks the dump against hf_reference.py, passing it
# $HF_REFERENCE_ARGS (e.g. --shared-experts-only).
set -u
config=$1 tplinear=$2
shift 2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
here=$(dirname "$0")
if ! timeout -k 5 "${TPL_EXPECT_TIMEOUT:-100}" "$tplinear" "$@" --hf-config "$config" \
    --dump "$dir" >"$dir/run.log" 2>&1 </dev/null; then
  cat "$dir/run.log"
  echo "FAIL: tplinear run failed"
  exit 1
fi
grep -E '^(PASS|FAIL)' "$dir/run.log"
# shellcheck disable=SC2086
/usr/bin/python3 "$here/hf_reference.py" --config "$config" --dump "$dir" ${HF_REFERENCE_ARGS:-}

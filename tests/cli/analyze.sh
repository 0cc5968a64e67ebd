#!/usr/bin/env bash
# analyze.sh TPLINEAR REGEX MARKER COMMAND...
#
# A fault test whose ranks write their flight recorders (TPL_DUMP_DIR, a fresh directory), then
# `tplinear analyze` of every recorder written: passes when fault.sh passes (exit, deadline, no
# process left; its regex is the diagnostic's "never joined" clause) and the analysis matches
# the extended regex REGEX (lines joined by '|').
set -u
if [[ $# -lt 4 ]]; then
  echo "usage: analyze.sh TPLINEAR REGEX MARKER COMMAND..." >&2
  exit 2
fi
tplinear=$1
regex=$2
marker=$3
shift 3
here=$(dirname "$0")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
TPL_DUMP_DIR=$dir "$here/fault.sh" 2 "never joined: rank" "$marker" "$@" || exit 1
shopt -s nullglob
dumps=("$dir"/tplinear-flight-rank*.json)
echo "analyze.sh: ${#dumps[@]} flight recorders: ${dumps[*]##*/}"
out=$("$tplinear" analyze "${dumps[@]}" 2>&1)
rc=$?
echo "$out"
if [[ $rc -ne 0 ]]; then
  echo "FAIL: tplinear analyze exited $rc"
  exit 1
fi
if ! tr '\n' '|' <<<"$out" | grep -Eq -- "$regex"; then
  echo "FAIL: the analysis does not match /$regex/"
  exit 1
fi
echo "analyze.sh: the analysis matched"

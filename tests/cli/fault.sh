#!/usr/bin/env bash
# fault.sh DEADLINE REGEX MARKER COMMAND...
#
# A fault test (tpl/watchdog.h): COMMAND runs a job in which one rank stalls (TPL_FAULT_STALL).
# Passes when the job ends with a non-zero status within DEADLINE + 10 s, its output matches the
# extended regex REGEX (the diagnostic naming the waiting rank and the collective), and no
# process whose command line contains MARKER outlives it.
set -u
if [[ $# -lt 4 ]]; then
  echo "usage: fault.sh DEADLINE REGEX MARKER COMMAND..." >&2
  exit 2
fi
deadline=$1
regex=$2
marker=$3
shift 3
# A preloaded sanitizer runtime (the Python tests under scripts/sanitize.sh) is for the job only:
# pgrep under a preloaded libasan never returns, so this script's own tools run without it.
preload=${LD_PRELOAD-}
unset LD_PRELOAD
job=("$@")
[[ -n $preload ]] && job=(env "LD_PRELOAD=$preload" "$@")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s%N)
timeout -k 5 $((deadline + 30)) "${job[@]}" >"$out" 2>&1 </dev/null
rc=$?
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
# The PIDs whose command line holds the marker, this script's own and its caller's (analyze.sh)
# left out. Into a file, not $(...): a command substitution's subshell carries this script's
# command line too.
leftovers() {
  pgrep -f -- "$marker" >"$out.left" || true
  grep -v -x -e "$$" -e "$PPID" "$out.left" || true
  rm -f "$out.left"
}
fail() {
  for p in $(leftovers); do kill -9 "$p" 2>/dev/null; done
  echo "---- command: $*" | head -c 4000
  echo "---- exit status: $rc, after ${elapsed_ms} ms (deadline ${deadline} s)"
  echo "---- output:"
  cat "$out"
  echo "----"
  echo "FAIL: $FAIL_REASON"
  exit 1
}
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  FAIL_REASON="still running $((deadline + 30)) s later (hang)"
  fail "$@"
fi
if [[ $rc -eq 0 ]]; then
  FAIL_REASON="exit status 0: the stall went unnoticed"
  fail "$@"
fi
if ((elapsed_ms > (deadline + 10) * 1000)); then
  FAIL_REASON="ended after ${elapsed_ms} ms, more than the deadline + 10 s"
  fail "$@"
fi
if ! grep -Eq -- "$regex" "$out"; then
  FAIL_REASON="output does not match /$regex/"
  fail "$@"
fi
sleep 1
leftovers >"$out.pids"
if [[ -s $out.pids ]]; then
  FAIL_REASON="processes outlived the job: $(ps -o pid=,args= -p "$(paste -sd, "$out.pids")")"
  rm -f "$out.pids"
  fail "$@"
fi
rm -f "$out.pids"
echo "fault.sh: exit $rc after ${elapsed_ms} ms, diagnostic matched, no process left"

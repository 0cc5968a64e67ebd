#!/usr/bin/env bash
# expect.sh EXIT_CODE REGEX COMMAND...
#
# Runs COMMAND under `timeout`, captures stdout + stderr together and checks that
#   - it finished (a timeout is a hang and fails the test),
#   - its exit status is exactly EXIT_CODE,
#   - the output matches the extended regex REGEX (grep -E),
#   - it did not crash (no signal exit, no core dump / abort / MPI abort text),
#   - when EXIT_CODE is 2 (bad input): the error is reported as exactly one line, and that line
#     starts with "tplinear: error:" (lines that mpirun itself adds, and "# WARNING: " lines,
#     are not counted). mpirun's lines include libevent's "[warn] Epoll MOD(1) on fd N failed"
#     that it sometimes prints while it tears down a job whose rank exited non-zero: a race in
#     the launcher (open-mpi/ompi#2004), seen under ASan, not output of tplinear.
# The time limit is $TPL_EXPECT_TIMEOUT seconds (default 60); keep it below the CTest TIMEOUT.
set -u
if [[ $# -lt 3 ]]; then
  echo "usage: expect.sh EXIT_CODE REGEX COMMAND..." >&2
  exit 2
fi
want=$1
regex=$2
shift 2
limit=${TPL_EXPECT_TIMEOUT:-60}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# -k: if mpirun ignores SIGTERM, SIGKILL it 5 s later.
timeout -k 5 "$limit" "$@" >"$out" 2>&1 </dev/null
rc=$?

fail() {
  echo "---- command: $*" | head -c 4000
  echo "---- exit status: $rc (expected $want)"
  echo "---- output:"
  cat "$out"
  echo "----"
  echo "FAIL: $FAIL_REASON"
  exit 1
}

if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  FAIL_REASON="timed out after ${limit}s (hang)"
  fail "$@"
fi
if [[ $rc -ne $want ]]; then
  FAIL_REASON="exit status $rc, expected $want"
  fail "$@"
fi
if ! grep -Eq -- "$regex" "$out"; then
  FAIL_REASON="output does not match /$regex/"
  fail "$@"
fi
if [[ $rc -gt 128 ]] ||
   grep -Eq 'core dumped|Segmentation fault|^Aborted|terminate called|MPI_ABORT|Process received signal|exited on signal|Sanitizer' "$out"; then
  FAIL_REASON="output shows a crash"
  fail "$@"
fi
if [[ $want -eq 2 ]]; then
  # Everything but mpirun's own report of the non-zero exit, libevent's teardown warnings (see
  # above) and our warnings (such as a profile measured under another ISA cap) must be the one
  # error line.
  lines=$(grep -Ev '^# WARNING: |^-+$|^ *$|^\[warn\] Epoll (ADD|MOD|DEL)\([0-9]+\) on fd [0-9]+ failed\. |^Primary job +terminated normally|^a non-zero exit code\. Per user-direction|^mpirun detected that one or more processes|^the job to be terminated\. The first process|^ +Process name: |^ +Exit code: ' "$out")
  n=$(printf '%s' "$lines" | grep -c '' || true)
  if [[ $n -ne 1 ]]; then
    FAIL_REASON="expected the error as exactly one line, got $n lines besides mpirun's report"
    fail "$@"
  fi
  if [[ $lines != "tplinear: error: "* ]]; then
    FAIL_REASON="the error line does not start with 'tplinear: error: '"
    fail "$@"
  fi
fi
echo "ok: exit $rc, output matches /$regex/"
sed -n '1,40p' "$out"
exit 0

#!/usr/bin/env bash
# ctest-failures.sh BUILD_DIR [LINES]
#
# Prints, after a failed ctest run, the last LINES (default 60) lines of each failed test's
# output from BUILD_DIR/Testing/Temporary/LastTest.log. A CI log of a thousand tests is read
# from its end, where --output-on-failure's text of a test that failed early is long gone.
set -u
build=${1:?usage: ctest-failures.sh BUILD_DIR [LINES]}
lines=${2:-60}
tmp=$build/Testing/Temporary
[[ -s $tmp/LastTestsFailed.log ]] || exit 0
echo "==== failed tests, the end of each one's output ($tmp/LastTest.log has all of it):"
cut -d: -f2- "$tmp/LastTestsFailed.log" | head -n 20 | while IFS= read -r name; do
  echo "==== $name"
  awk -v t="$name" '
    $0 ~ /^[0-9]+\/[0-9]+ Test: / { sub(/^[0-9]+\/[0-9]+ Test: /, ""); on = ($0 == t); next }
    on && /^<end of output>$/ { on = 0 }
    on { print }' "$tmp/LastTest.log" | tail -n "$lines"
done

#!/usr/bin/env bash
# Run the whole suite and end with one total line ("tests: N passed, N failed"),
# since cargo's own last line belongs to whichever target ran last (often
# doctests with 0 tests). --no-fail-fast: one failing target does not hide
# the rest, so a CI failure shows every failing test at once. Exit status is
# cargo's.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"

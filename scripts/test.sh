#!/usr/bin/env bash
# Run the whole suite — the Rust workspace, then the Python library's pytest
# suite (in target/pyenv, made by scripts/setup.sh) — and end with one total
# line ("tests: N passed, N failed"),
# since cargo's own last line belongs to whichever target ran last (often
# doctests with 0 tests). --no-fail-fast: one failing target does not hide
# the rest, so a CI failure shows every failing test at once. Exits non-zero
# if either suite fails.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# The Python library: its tests against the source, then the installed
# package (pip install ./python) imported from outside the source tree.
py=target/pyenv/bin/python
if [ ! -x "$py" ]; then
  echo "test: $py missing: run scripts/setup.sh (make test does)" >&2
  exit 1
fi
(cd python && "../$py" -m pytest -q -p no:cacheprovider tests) 2>&1 | tee -a "$log"
pystatus=${PIPESTATUS[0]}
installed=$(cd /tmp && "$OLDPWD/$py" -c 'import ttg; print(ttg.__file__)' 2>&1) || pystatus=1
case "$installed" in
  */site-packages/ttg/*) echo "python: pip-installed ttg imports from $installed" ;;
  *) echo "python: the pip-installed ttg is not importable: $installed" >&2; pystatus=1 ;;
esac
[ "$status" = 0 ] && status=$pystatus
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
# pytest's summary line: "10 passed in 0.3s", "1 failed, 9 passed in …".
pyline=$(grep -E '^[0-9]+ (passed|failed).* in [0-9.]+s' "$log" | tail -1)
passed=$((passed + $(echo "$pyline" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+' || echo 0)))
failed=$((failed + $(echo "$pyline" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+' || echo 0)))
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"

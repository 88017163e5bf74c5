#!/usr/bin/env bash
# Runs every `go test -fuzz` target of the root module for FUZZTIME each (default 20s) and prints
# a table of targets, executions and executions per second. Targets are found, not listed: any
# new `func FuzzXxx(f *testing.F)` in a _test.go file is picked up. Seed corpora live in
# <pkg>/testdata/fuzz/<FuzzName>/ and run with plain `go test` too; a failure found here is
# written there by the go tool, ready to commit as a regression test once fixed.
#
#   FUZZTIME=1m bash scripts/fuzz.sh          # longer
#   FUZZ='Trust|ARN' bash scripts/fuzz.sh     # only targets matching a regular expression
#   FUZZFLAGS='-parallel 1' bash scripts/fuzz.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZTIME="${FUZZTIME:-20s}"
FUZZ="${FUZZ:-.}"
read -r -a EXTRA <<<"${FUZZFLAGS:-}"
cd "$ROOT"
export AWS_EC2_METADATA_DISABLED=true

# "<package dir> <FuzzName>" per target; e2e is its own module and has none.
mapfile -t targets < <(
  grep -rEo --include='*_test.go' --exclude-dir=e2e --exclude-dir=.git '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' . |
    sed -E 's#^\./(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+).*#\1 \2#; s#^\./[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+).*#. \1#' |
    sort -u | grep -E " .*(${FUZZ})" || true
)
if [ "${#targets[@]}" -eq 0 ]; then
  echo "no fuzz targets match FUZZ=${FUZZ}" >&2
  exit 1
fi

failed=()
summary=()
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
  read -r dir name <<<"$t"
  echo "== $dir $name ($FUZZTIME)"
  start=$(date +%s)
  if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "${EXTRA[@]}" "./$dir" 2>&1 | tee "$log"; then
    status=ok
  else
    status=FAIL
    failed+=("$dir $name")
  fi
  # The last progress line carries the total: "fuzz: elapsed: 21s, execs: 30579 (0/sec), ...".
  line="$(grep -E '^fuzz: elapsed: [0-9]+s, execs: [0-9]+' "$log" | tail -n1 || true)"
  execs="$(sed -E 's/.*execs: ([0-9]+).*/\1/' <<<"$line")"
  secs="$(sed -E 's/^fuzz: elapsed: ([0-9]+)s.*/\1/' <<<"$line")"
  rate=0
  if [ -n "$execs" ] && [ -n "$secs" ] && [ "$secs" -gt 0 ]; then rate=$((execs / secs)); fi
  summary+=("$(printf '%-7s %-20s %-28s %10s %8s/s %5ss' "$status" "$dir" "$name" "${execs:-0}" "$rate" "$(($(date +%s) - start))")")
done

echo
printf '%-7s %-20s %-28s %10s %10s %6s\n' STATUS PACKAGE TARGET EXECS RATE WALL
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo
  echo "failing inputs were written to <package>/testdata/fuzz/<FuzzName>/ by go test:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi

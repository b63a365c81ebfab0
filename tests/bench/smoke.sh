#!/usr/bin/env bash
# Both benchmarks end to end at a tiny size, so that they keep working between
# the runs that produce the README's numbers (no numbers are checked here: timings
# on shared machines belong to the benchmark, not to tests). Each bench starts and
# removes its own PostgreSQL and Redis; this checks they exit 0, print their
# tables, and leave no server or directory behind.
set -euo pipefail
: "${BF:?BF must name the backfill binary}" "${BF_SIMWORKERS:?BF_SIMWORKERS must name bf_simworkers}"
SRC=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mktemp -d /tmp/bf-benchsmoke.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
before=$(find /tmp -maxdepth 1 \( -name 'bf-bench.*' -o -name 'bf-cbench.*' \) | wc -l)

BF=$BF BF_SIMWORKERS=$BF_SIMWORKERS bash "$SRC/bench/coordinator.sh" --workers 50 --ranges 3000 \
    --plan-ranges 3000 --rate 2000 --out "$OUT/coord.md" >/dev/null 2>"$OUT/coord.err" ||
    { rc=$?; cat "$OUT/coord.err" >&2; fail "bench/coordinator.sh exited $rc"; }
grep -q '^| saturated: ranges leased and finished | 3000 / 3000 |$' "$OUT/coord.md" ||
    { cat "$OUT/coord.md"; fail "saturated run did not finish every range"; }
grep -q '^| paced at 2000 leases/s: ranges leased and finished | 3000 / 3000 |$' "$OUT/coord.md" ||
    { cat "$OUT/coord.md"; fail "paced run did not finish every range"; }
grep -q '^| plan + store 3000 ranges' "$OUT/coord.md" || fail "no planning time"

BF=$BF bash "$SRC/bench/bench.sh" --rows 20000 --workers "1 2" --no-pgcopydb --wide-rows 3 \
    --skew-rows 20000 --no-coordinator --rounds 2 --out "$OUT/bench.md" >/dev/null 2>"$OUT/bench.err" ||
    { rc=$?; cat "$OUT/bench.err" >&2; fail "bench/bench.sh exited $rc"; }
for row in 'pipe (binary COPY)' 'staging + ON CONFLICT' 'backfill insert, 2 workers' \
    'backfill upsert, 1 workers'; do
    grep -qF "| $row" "$OUT/bench.md" || { cat "$OUT/bench.md"; fail "no row for $row"; }
done
# rows/s, MB/s, ratio, then the machine's CPU busy share (a number, 0-100) and
# the machine's CPU seconds per million rows
grep -Eq '^\| backfill insert, 2 workers \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| ([0-9]|[1-9][0-9]|100) \| [0-9]+\.[0-9]+ \|' \
    "$OUT/bench.md" || { cat "$OUT/bench.md"; fail "no CPU busy share or CPU per row for backfill"; }
grep -q '^- skewed: .*planned as 1 range, 4 workers: .*most idle' "$OUT/bench.md" ||
    { cat "$OUT/bench.md"; fail "no skewed one-range line"; }
grep -q '^- wide rows: 3 rows' "$OUT/bench.md" || { cat "$OUT/bench.md"; fail "no wide-row line"; }

after=$(find /tmp -maxdepth 1 \( -name 'bf-bench.*' -o -name 'bf-cbench.*' \) | wc -l)
[ "$after" -le "$before" ] || fail "a bench left its directory in /tmp"
echo "PASS: bench smoke"

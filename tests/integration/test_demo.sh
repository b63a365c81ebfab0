#!/usr/bin/env bash
# `backfill demo` (smaller data) starts its own servers, copies with 3 workers,
# verifies, prints the summary and leaves nothing running.
. "$(dirname "$0")/lib.sh"
"$BF" demo --rows 120000 --workers 3 >"$WORK/demo.out" 2>"$WORK/demo.err" ||
    { rc=$?; tail -20 "$WORK/demo.err"; fail "demo exited $rc"; }
grep -q 'verify: OK' "$WORK/demo.out" || fail "no 'verify: OK' in the demo output"
grep -Eq '^summary: 370000 rows in 3 tables copied by 3 workers in [0-9.]+ s \([0-9]+ rows/s\), verify: OK' \
    "$WORK/demo.out" || { cat "$WORK/demo.out"; fail "summary line"; }
dir=$(grep -o 'env in [^ ]*' "$WORK/demo.err" | head -1 | sed 's/env in //; s#/env$##')
[ -n "$dir" ] || fail "sandbox dir not logged"
[ ! -e "$dir" ] || fail "demo left $dir behind"

# Interrupted while it loads the sample data, it still stops its servers.
"$BF" demo --rows 300000 >"$WORK/int.out" 2>"$WORK/int.err" &
pid=$!
BG_PIDS+=("$pid")
loading() { grep -q 'creating the monolith' "$WORK/int.err"; }
wait_for 60 loading || fail "demo never started loading"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
expect_eq "$rc" 130 "interrupted demo's exit code"
dir=$(grep -o 'env in [^ ]*' "$WORK/int.err" | head -1 | sed 's/env in //; s#/env$##')
[ -n "$dir" ] && [ ! -e "$dir" ] || fail "interrupted demo left ${dir:-its sandbox} behind"
if pgrep -f "postgres -D $dir/pgdata" >/dev/null; then fail "interrupted demo left PostgreSQL running"; fi

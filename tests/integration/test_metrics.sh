#!/usr/bin/env bash
# Prometheus metrics: `run --metrics` serves /metrics during the run; the text is
# valid exposition format (checked line by line here, and by promtool when it is
# installed) and its row counters match `backfill status`.
. "$(dirname "$0")/lib.sh"
fresh_db mt_src mt_tgt
make_monolith mt_src 300000
make_service mt_tgt
forget_job mt
JOB_BATCH_MS=1000 write_job "$WORK/job.yaml" mt mt_src mt_tgt 5000 50000

# A bad address is refused before anything starts.
if "$BF" run "$WORK/job.yaml" --metrics nonsense 2>"$WORK/bad.err"; then fail "bad --metrics accepted"; fi
grep -q 'expected HOST:PORT' "$WORK/bad.err" || { cat "$WORK/bad.err"; fail "unclear --metrics error"; }

copied() { redis_cmd HGET 'bf:{mt}:stats' rows:0; }
has_rows() { [ "$(copied)" -gt 0 ] 2>/dev/null; }
# A random port: another one when it happens to be taken (the run stops at once,
# before any row moves; the next run resumes the same plan).
started() { has_rows || ! kill -0 "$RUN" 2>/dev/null; }
for attempt in 1 2 3 4 5; do
    PORT=$((20000 + RANDOM % 30000))
    "$BF" run "$WORK/job.yaml" --workers 2 --metrics "tcp://127.0.0.1:$PORT" >"$WORK/run.out" 2>"$WORK/run.err" &
    RUN=$!
    BG_PIDS+=("$RUN")
    wait_for 60 started || { tail "$WORK/run.err"; fail "no rows copied"; }
    has_rows && break
    grep -q 'cannot serve metrics' "$WORK/run.err" && [ "$attempt" -lt 5 ] ||
        { tail "$WORK/run.err"; fail "no rows copied"; }
    wait "$RUN" 2>/dev/null || true
    # A run that stopped there leaves no socket file behind.
    [ ! -e "/tmp/backfill-run-$RUN.sock" ] || fail "run left /tmp/backfill-run-$RUN.sock"
done
"$BF" throttle "$WORK/job.yaml" --rows-per-second 30000 >/dev/null
URL="http://127.0.0.1:$PORT/metrics"
# Both workers joined (the first rows may come before the second one has).
both_joined() {
    curl -fsS "$URL" >"$WORK/m1.txt" && grep -q '^backfill_workers_connected{job="mt"} 2$' "$WORK/m1.txt"
}
wait_for 30 both_joined || { tail "$WORK/run.err"; cat "$WORK/m1.txt"; fail "GET /metrics: not 2 workers"; }

# Exposition format: HELP/TYPE lines, then samples name{label="value",...} number,
# every sample of a declared family; histogram buckets cumulative, +Inf = _count.
awk '
/^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* / { next }
/^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$/ { type[$3] = $4; next }
/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")*\})? -?[0-9.e+]+$/ {
    name = $1; sub(/\{.*/, "", name); fam = name
    if (!(fam in type)) { sub(/_(bucket|sum|count)$/, "", fam) }
    if (!(fam in type)) { print "undeclared family: " $0; bad = 1 }
    if (name ~ /_bucket$/) { if ($2 < last) { print "bucket not cumulative: " $0; bad = 1 }; last = $2 }
    if (name ~ /_count$/ && fam != name && $2 != last) { print "count != +Inf bucket: " $0; bad = 1 }
    n++; next
}
{ print "bad line: " $0; bad = 1 }
END { if (n < 20) { print "only " n " samples"; bad = 1 }; exit bad }' "$WORK/m1.txt" ||
    fail "invalid exposition format"
if command -v promtool >/dev/null; then
    promtool check metrics <"$WORK/m1.txt" || fail "promtool rejects /metrics"
fi
grep -q '^backfill_throttle_rows_per_second{job="mt"} 30000$' "$WORK/m1.txt" || fail "throttle gauge"
grep -q '^backfill_batch_duration_seconds_count{job="mt"} [1-9]' "$WORK/m1.txt" || fail "no batch latency"
grep -q '^backfill_deferred_total{job="mt"} 0$' "$WORK/m1.txt" || fail "no deferred counter"
grep -q '^backfill_rows_parked{job="mt",table="public.orders"} 0$' "$WORK/m1.txt" ||
    fail "no parked gauge"
grep -q '^backfill_table_waiting{job="mt",table="public.orders"} 0$' "$WORK/m1.txt" ||
    fail "no waiting gauge"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/nothing")
expect_eq "$code" 404 "status of another path"

# Paused, the counters hold still (once the batches in flight are in): /metrics
# and status must then agree exactly.
"$BF" pause "$WORK/job.yaml" >/dev/null
counters() { # FILE: the rows counters of /metrics, one line per table
    sed -n 's/^backfill_rows_copied_total{job="mt",table="\([^"]*\)"} \([0-9]*\)$/\1 \2/p' "$1"
}
agree() {
    curl -fsS "$URL" >"$WORK/m2.txt" || return 1
    "$BF" status "$WORK/job.yaml" --json >"$WORK/status.json" || return 1
    curl -fsS "$URL" >"$WORK/m3.txt" || return 1
    [ "$(counters "$WORK/m2.txt")" = "$(counters "$WORK/m3.txt")" ] || return 1
    local t m s
    for t in public.orders public.users public.notes; do
        m=$(counters "$WORK/m2.txt" | awk -v t="$t" '$1 == t { print $2 }')
        s=$(sed -n "s/.*\"table\":\"$t\",[^}]*\"rows\":\([0-9]*\).*/\1/p" "$WORK/status.json")
        [ -n "$m" ] && [ "$m" = "$s" ] || return 1
    done
}
wait_for 20 agree || { counters "$WORK/m2.txt"; cat "$WORK/status.json"; fail "/metrics and status disagree while paused"; }
grep -q '^backfill_paused{job="mt"} 1$' "$WORK/m2.txt" || fail "paused gauge"
[ "$(counters "$WORK/m2.txt" | awk '$1 == "public.orders" { print $2 }')" -gt 0 ] || fail "no orders rows counted"

"$BF" throttle "$WORK/job.yaml" --rows-per-second 0 >/dev/null
"$BF" resume "$WORK/job.yaml" >/dev/null
wait "$RUN" || { rc=$?; tail "$WORK/run.err"; fail "run exited $rc"; }
grep -q 'job complete' "$WORK/run.out" || fail "run did not complete"
expect_same mt_src mt_tgt

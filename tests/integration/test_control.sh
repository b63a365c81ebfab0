#!/usr/bin/env bash
# Live control of a running job, through Redis: `throttle` holds 3 workers to the
# asked rate within 5 s, `pause` stops all copying within 3 s, `resume` continues,
# `cancel` ends the run (exit 130) leaving it resumable (with no coordinator
# running, it says there is nothing to cancel), and a second run finishes it with
# every row copied once.
. "$(dirname "$0")/lib.sh"
fresh_db ct_src ct_tgt
make_monolith ct_src 800000
make_service ct_tgt
forget_job ct
JOB_BATCH_MS=1000 write_job "$WORK/job.yaml" ct ct_src ct_tgt 5000 50000
total=$(q ct_src "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM users) + (SELECT count(*) FROM notes)")

# Not started yet: nothing to control, and the message says so.
if "$BF" pause "$WORK/job.yaml" 2>"$WORK/early.err"; then fail "pause of an unplanned job succeeded"; fi
grep -q 'has not started' "$WORK/early.err" || { cat "$WORK/early.err"; fail "unclear error"; }
if "$BF" throttle "$WORK/job.yaml" --rows-per-second -5 2>/dev/null; then fail "negative rate accepted"; fi

copied() { redis_cmd HMGET 'bf:{ct}:stats' rows:0 rows:1 rows:2 | awk '{ s += $1 } END { print s + 0 }'; }
has_rows() { [ "$(copied)" -gt 0 ]; }
now() { date +%s.%N; }

"$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run.out" 2>"$WORK/run.err" &
RUN=$!
BG_PIDS+=("$RUN")
wait_for 60 has_rows || { tail "$WORK/run.err"; fail "no rows copied"; }

# Throttle: after 5 s the rate over 6 s is 20,000 rows/s +-15%.
"$BF" throttle "$WORK/job.yaml" --rows-per-second 20000 >"$WORK/throttle.out"
grep -q 'throttled to 20000 rows/s' "$WORK/throttle.out" || fail "throttle output"
sleep 5
r1=$(copied) t1=$(now)
sleep 6
r2=$(copied) t2=$(now)
rate=$(awk -v a="$r1" -v b="$r2" -v s="$t1" -v e="$t2" 'BEGIN { printf "%.0f", (b - a) / (e - s) }')
echo "throttled rate: $rate rows/s ($r1 -> $r2)"
[ "$rate" -ge 17000 ] && [ "$rate" -le 23000 ] || fail "throttled rate $rate rows/s, want 20000 +-15%"
"$BF" status "$WORK/job.yaml" >"$WORK/status1.out"
grep -q 'throttled to 20000 rows/s' "$WORK/status1.out" || { cat "$WORK/status1.out"; fail "status shows no throttle"; }

# Pause: within 3 s no row moves.
"$BF" pause "$WORK/job.yaml" >/dev/null
sleep 3
p1=$(copied)
sleep 2
p2=$(copied)
expect_eq "$p2" "$p1" "rows copied while paused (after 3 s)"
"$BF" status "$WORK/job.yaml" --json >"$WORK/status2.json"
grep -q '"paused":true' "$WORK/status2.json" || { cat "$WORK/status2.json"; fail "status not paused"; }
grep -q 'paused (backfill pause)' "$WORK/run.err" || fail "workers did not say they paused"

# Resume: rows move again.
"$BF" resume "$WORK/job.yaml" >/dev/null
sleep 3
p3=$(copied)
[ "$p3" -gt "$p2" ] || fail "no rows copied after resume ($p2 -> $p3)"

# Cancel: the run ends as interrupted, the job is not complete.
"$BF" cancel "$WORK/job.yaml" >/dev/null
rc=0
wait_for 20 bash -c "! kill -0 $RUN 2>/dev/null" || fail "run still going 20 s after cancel"
wait "$RUN" || rc=$?
expect_eq "$rc" 130 "exit code of the cancelled run"
grep -q 'job cancelled' "$WORK/run.err" || fail "run did not say it was cancelled"
left=$(copied)
[ "$left" -lt "$total" ] || fail "cancel came too late: all $total rows were copied already"
# With no coordinator running there is nothing to cancel: it says so and sets nothing.
redis_cmd HDEL 'bf:{ct}:meta' cancel >/dev/null
"$BF" cancel "$WORK/job.yaml" >"$WORK/cancel2.out" || fail "cancel with no coordinator"
grep -q '^job ct: no coordinator is running it; nothing to cancel$' "$WORK/cancel2.out" ||
    fail "cancel with no coordinator: $(cat "$WORK/cancel2.out")"
expect_eq "$(redis_cmd HGET 'bf:{ct}:meta' cancel)" "" "cancel flag with no coordinator"

# A second run (throttle lifted) resumes and finishes: every row exactly once.
"$BF" throttle "$WORK/job.yaml" --rows-per-second 0 >/dev/null
"$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run2.out" 2>"$WORK/run2.err" ||
    { tail "$WORK/run2.err"; fail "second run"; }
grep -q 'job complete' "$WORK/run2.out" || fail "second run did not complete"
"$BF" verify "$WORK/job.yaml" >"$WORK/verify.out" || { cat "$WORK/verify.out"; fail "verify"; }
expect_same ct_src ct_tgt

#!/usr/bin/env bash
# Issue 4, acceptance 5: Redis goes down for 20 s in the middle of a job (killed,
# so writes since the last AOF fsync may be lost) and comes back. Nothing
# crashes: the coordinator and every worker wait and retry with backoff, the job
# completes after Redis returns, and source and target match exactly.
. "$(dirname "$0")/lib.sh"
fresh_db rr_src rr_tgt
make_monolith rr_src 300000
make_service rr_tgt
forget_job rrj
write_job "$WORK/job.yaml" rrj rr_src rr_tgt 1000 20000

"$BF" run "$WORK/job.yaml" --workers 2 --lease-ttl 5 >"$WORK/run.out" 2>"$WORK/run.err" &
pid=$!
BG_PIDS+=("$pid")
some_rows() { [ "$(q rr_tgt 'SELECT count(*) FROM orders')" -gt 20000 ]; }
wait_for 30 some_rows || fail "nothing copied"
redis_pid=$(redis_cmd INFO server | tr -d '\r' | sed -n 's/^process_id://p')
kill -9 "$redis_pid"
down_at=$(q rr_tgt 'SELECT count(*) FROM orders')
sleep 20
kill -0 "$pid" 2>/dev/null || fail "run exited while redis was down: $(tail -3 "$WORK/run.err")"
workers=$(pgrep -f "backfill-run-$pid.sock" | wc -l)
expect_eq "$workers" 2 "workers alive after 20 s without redis"
"$BF" sandbox restart-redis --dir "$BF_ENV_DIR" 2>>"$WORK/sandbox.err" ||
    { cat "$WORK/sandbox.err"; fail "redis did not come back"; }
rc=0
wait "$pid" || rc=$?
expect_eq "$rc" 0 "run exit code ($(tail -3 "$WORK/run.err"))"
grep -q 'redis' "$WORK/run.err" || fail "the outage was not even noticed"
if grep -q 'died' "$WORK/run.err"; then fail "a worker died: $(grep died "$WORK/run.err")"; fi
if grep -qi 'duplicate key' "$WORK/run.err"; then fail "duplicate key error"; fi
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same rr_src rr_tgt
echo "redis down 20 s after $down_at rows; the job completed and matches"

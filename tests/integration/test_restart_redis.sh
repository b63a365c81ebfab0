#!/usr/bin/env bash
# Redis goes down mid-job (writes since the last AOF fsync may be lost) and comes
# back: nothing crashes, the job completes and source and target match exactly.
. "$(dirname "$0")/lib.sh"
fresh_db rr_src rr_tgt
make_monolith rr_src 300000
make_service rr_tgt
forget_job rrj
write_job "$WORK/job.yaml" rrj rr_src rr_tgt 1000 20000

"$BF" run "$WORK/job.yaml" --workers 2 --lease-ttl 5 >"$WORK/run.out" 2>"$WORK/run.err" &
pid=$!
BG_PIDS+=("$pid")
for _ in $(seq 1 300); do
    [ "$(q rr_tgt 'SELECT count(*) FROM orders')" -gt 20000 ] && break
    sleep 0.1
done
redis-cli -p "$BF_REDIS_PORT" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
sleep 3
"$BF" sandbox restart-redis --dir "$BF_ENV_DIR" 2>>"$WORK/sandbox.err" ||
    { cat "$WORK/sandbox.err"; fail "redis did not come back"; }
rc=0
wait "$pid" || rc=$?
expect_eq "$rc" 0 "run exit code ($(tail -3 "$WORK/run.err"))"
grep -q 'redis' "$WORK/run.err" || fail "the outage was not even noticed"
if grep -qi 'duplicate key' "$WORK/run.err"; then fail "duplicate key error"; fi
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same rr_src rr_tgt

#!/usr/bin/env bash
# Graceful stop (issue 4). A worker whose batch is stuck (the target table is
# locked by "a migration") gets SIGTERM: it abandons the batch within its grace
# period, hands the range back and exits 0. Then `backfill run` gets SIGTERM (its
# pid only, not the group): it drains every worker, leaves no lease behind, exits
# 130, and a second run completes the job exactly.
. "$(dirname "$0")/lib.sh"
fresh_db st_src st_tgt
make_monolith st_src 200000
make_service st_tgt
forget_job st
write_job "$WORK/job.yaml" st st_src st_tgt 2000 50000

# 1. A worker stuck behind a lock on the target.
psql -X -q -h 127.0.0.1 -p "$BF_PGPORT" -U "$BF_PGUSER" -d st_tgt \
    -c "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120); COMMIT" \
    >/dev/null 2>&1 &
locker=$!
BG_PIDS+=("$locker")
waiting_copy() {
    [ "$(q st_tgt "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
        AND query LIKE 'COPY%'")" -ge 1 ]
}
start_coordinator coord auto "$WORK/job.yaml" --lease-ttl 5
start_worker wa
wa=$WPID
wait_for 30 waiting_copy || fail "worker A never blocked on the locked table"
sleep 8 # longer than the coordinator's liveness window: A must still be alive for it
grep -q 'considered dead' "$WORK/coord.err" && fail "A was declared dead while it waited on a lock"
t0=$(date +%s%N)
kill -TERM "$wa"
rc=0
wait "$wa" || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
expect_eq "$rc" 0 "worker A exit code after SIGTERM"
[ "$ms" -lt 10000 ] || fail "worker A took $ms ms to stop (grace is 5 s)"
grep -q 'handed back at its last checkpoint' "$WORK/wa.err" ||
    fail "worker A did not hand its range back: $(tail -3 "$WORK/wa.err")"
expect_eq "$(redis_cmd ZCARD "bf:{st}:leases")" 0 "leases left in redis"
echo "worker A stopped in $ms ms while blocked on a lock"
q st_tgt "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE query LIKE 'BEGIN; LOCK TABLE%' AND pid <> pg_backend_pid()" >/dev/null
kill -TERM "$CPID"
wait "$CPID" || true

# 2. `backfill run` stopped with SIGTERM to its own pid.
"$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run1.out" 2>"$WORK/run1.err" &
run=$!
BG_PIDS+=("$run")
some_rows() { [ "$(q st_tgt 'SELECT count(*) FROM orders')" -gt 30000 ]; }
wait_for 60 some_rows || fail "run copied nothing"
t0=$(date +%s%N)
kill -TERM "$run"
rc=0
wait "$run" || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
expect_eq "$rc" 130 "run exit code after SIGTERM"
[ "$ms" -lt 20000 ] || fail "run took $ms ms to stop"
if pgrep -f "backfill-run-$run.sock" >/dev/null; then fail "workers of run $run still alive"; fi
expect_eq "$(redis_cmd ZCARD "bf:{st}:leases")" 0 "leases left in redis after run's SIGTERM"
grep -q 'kill' "$WORK/run1.err" && fail "run had to kill workers: $(grep kill "$WORK/run1.err")"
echo "run stopped in $ms ms"

"$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run2.out" 2>"$WORK/run2.err" ||
    fail "second run: $(tail -3 "$WORK/run2.err")"
if grep -qi 'duplicate key' "$WORK"/*.err; then fail "duplicate key error"; fi
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same st_src st_tgt

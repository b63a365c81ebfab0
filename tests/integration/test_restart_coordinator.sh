#!/usr/bin/env bash
# The coordinator is killed (-9) mid-job and started again: workers started by hand
# notice the new epoch, join again by themselves, and the job completes exactly.
. "$(dirname "$0")/lib.sh"
fresh_db rc_src rc_tgt
make_monolith rc_src 400000
make_service rc_tgt
forget_job rcj
write_job "$WORK/job.yaml" rcj rc_src rc_tgt 1000 20000

start_coordinator c1 auto "$WORK/job.yaml"
c1=$CPID
port=$PORT
start_worker w1
w1=$WPID
start_worker w2
w2=$WPID
for _ in $(seq 1 300); do
    [ "$(q rc_tgt 'SELECT count(*) FROM orders')" -gt 20000 ] && break
    sleep 0.1
done
kill -9 "$c1"
wait "$c1" 2>/dev/null || true
copied=$(q rc_tgt "SELECT count(*) FROM orders")
[ "$copied" -lt 400000 ] || fail "job finished before the coordinator was killed"
sleep 1
"$BF" coordinator "$WORK/job.yaml" --bind "tcp://127.0.0.1:$port" >"$WORK/c2.out" 2>"$WORK/c2.err" ||
    { rc=$?; tail "$WORK/c2.err"; fail "restarted coordinator exited $rc"; }
grep -q 'resuming job rcj' "$WORK/c2.err" || fail "restarted coordinator did not resume"
wait "$w1" || fail "worker 1 exit code $?"
wait "$w2" || fail "worker 2 exit code $?"
grep -q 'epoch 2' "$WORK/w1.err" || fail "worker 1 did not join the new coordinator"
if grep -qi 'duplicate key' "$WORK"/*.err; then fail "duplicate key error"; fi
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same rc_src rc_tgt

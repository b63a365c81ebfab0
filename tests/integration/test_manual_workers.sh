#!/usr/bin/env bash
# `backfill coordinator` on a TCP port with `backfill worker`s started by hand;
# workers join at different times; the coordinator exits 0 when done.
. "$(dirname "$0")/lib.sh"
fresh_db mw_src mw_tgt
make_monolith mw_src 400000
make_service mw_tgt
forget_job mw
write_job "$WORK/job.yaml" mw mw_src mw_tgt 2000 20000

start_coordinator coord auto "$WORK/job.yaml"
cpid=$CPID
port=$PORT

"$BF" worker --connect "tcp://127.0.0.1:$port" 2>"$WORK/w1.err" &
w1=$!
BG_PIDS+=("$w1")
# The second worker joins while the first is already copying.
for _ in $(seq 1 100); do
    grep -q 'joined coordinator' "$WORK/w1.err" && break
    sleep 0.1
done
"$BF" worker --connect "tcp://127.0.0.1:$port" 2>"$WORK/w2.err" &
w2=$!
BG_PIDS+=("$w2")
rc=0
wait "$cpid" || rc=$?
expect_eq "$rc" 0 "coordinator exit code"
wait "$w1" || fail "worker 1 exit code $?"
wait "$w2" || fail "worker 2 exit code $?"
grep -q 'job complete' "$WORK/coord.out" || fail "coordinator did not report completion"
grep -q 'joined coordinator' "$WORK/w1.err" || fail "worker 1 never joined"
grep -q 'joined coordinator' "$WORK/w2.err" || fail "worker 2 never joined"
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same mw_src mw_tgt

#!/usr/bin/env bash
# `backfill coordinator` on a TCP port with `backfill worker`s started by hand;
# workers join at different times; the coordinator exits 0 when done. A worker
# given an address ZeroMQ cannot use exits 2 at once.
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
expect_job_done mw_src mw_tgt w1="$w1" w2="$w2"

# A worker that arrives just as the job finishes (its HELLO reaches a coordinator
# that is done) is told so and exits 0 instead of waiting for a coordinator.
forget_job mw
q mw_tgt "TRUNCATE orders, users, notes, backfill_fence" >/dev/null
start_coordinator coord auto "$WORK/job.yaml"
"$BF" worker --connect "$ENDPOINT" 2>"$WORK/w4.err" &
BG_PIDS+=("$!")
for _ in $(seq 1 600); do
    grep -q 'job complete' "$WORK/coord.out" && break
    sleep 0.1
done
"$BF" worker --connect "$ENDPOINT" 2>"$WORK/w3.err" &
w3=$!
BG_PIDS+=("$w3")
wait_for 10 eval '! kill -0 '"$w3"' 2>/dev/null' || fail "late worker still waiting: $(tail -3 "$WORK/w3.err")"
wait "$w3" || fail "late worker exit code $?"
grep -q 'job finished (the coordinator says so)' "$WORK/w3.err" || fail "late worker: $(tail -3 "$WORK/w3.err")"
wait "$CPID" || fail "coordinator exit code $?"

# A worker given an address ZeroMQ cannot use says so and exits 2 (it waited
# forever, as for a coordinator not up yet).
rc=0
timeout 10 "$BF" worker --connect nohost:5570 >"$WORK/wbad.out" 2>"$WORK/wbad.err" || rc=$?
expect_eq "$rc" 2 "exit code of a worker with a bad endpoint"
grep -q 'cannot connect to nohost:5570: .* (an endpoint is tcp://HOST:PORT or ipc:///PATH)' "$WORK/wbad.err" ||
    fail "bad endpoint: $(cat "$WORK/wbad.err")"

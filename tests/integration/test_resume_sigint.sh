#!/usr/bin/env bash
# `backfill run` interrupted with SIGINT (to the whole process group, like Ctrl-C),
# then started and killed (-9) alone (its workers must go too), then run again:
# exact match, no duplicate-key error ever.
. "$(dirname "$0")/lib.sh"
fresh_db rs_src rs_tgt
make_monolith rs_src 600000
make_service rs_tgt
forget_job rs
write_job "$WORK/job.yaml" rs rs_src rs_tgt 2000 30000

setsid "$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run1.out" 2>"$WORK/run1.err" &
pid=$!
BG_PIDS+=("$pid")
# Interrupt once some rows are copied but well before the end.
for _ in $(seq 1 300); do
    rows=$(q rs_tgt "SELECT count(*) FROM orders")
    [ "$rows" -gt 20000 ] && break
    sleep 0.1
done
kill -INT -- "-$pid"
rc=0
wait "$pid" || rc=$?
expect_eq "$rc" 130 "exit code of the interrupted run"
grep -q 'run the same command again to resume' "$WORK/run1.out" || fail "no resume hint"
copied=$(q rs_tgt "SELECT count(*) FROM orders")
[ "$copied" -lt 600000 ] || fail "the run finished before the interrupt; make the table bigger"
# No process of the interrupted run is left behind.
sleep 0.5
if pgrep -f "backfill-run-$pid.sock" >/dev/null; then fail "workers left running"; fi

"$BF" status "$WORK/job.yaml" >"$WORK/status.out"
grep -q 'public.orders' "$WORK/status.out" || fail "status"

# `run` itself killed (-9, it alone): its workers must not outlive it (they would
# retry its socket for ever). Short leases: the next run takes their ranges soon.
"$BF" run "$WORK/job.yaml" --workers 3 --lease-ttl 5 >"$WORK/runk.out" 2>"$WORK/runk.err" &
pid=$!
BG_PIDS+=("$pid")
CLEANUP_CMDS+=("rm -f /tmp/backfill-run-$pid.sock")
for _ in $(seq 1 100); do
    [ "$(pgrep -fc "backfill-run-$pid.sock" || true)" -ge 3 ] && break
    sleep 0.1
done
[ "$(pgrep -fc "backfill-run-$pid.sock" || true)" -ge 3 ] || fail "run started no workers"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
for _ in $(seq 1 100); do
    pgrep -f "backfill-run-$pid.sock" >/dev/null || break
    sleep 0.1
done
if pgrep -f "backfill-run-$pid.sock" >/dev/null; then fail "workers outlived a killed run"; fi

"$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run2.out" 2>"$WORK/run2.err" ||
    { tail -20 "$WORK/run2.err"; fail "resumed run failed"; }
grep -q 'resuming job rs' "$WORK/run2.err" || fail "second run did not resume"
if grep -qi 'duplicate key' "$WORK"/*.err "$WORK"/*.out; then fail "duplicate key error surfaced"; fi

"$BF" verify "$WORK/job.yaml" >"$WORK/verify.out" || { cat "$WORK/verify.out"; fail "verify"; }
expect_same rs_src rs_tgt

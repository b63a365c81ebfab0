#!/usr/bin/env bash
# Redis loses writes while a job runs: its fencing counter goes back below tokens
# the targets' fence rows already hold (set back here by hand, as a lost write
# would leave it), and a worker is killed in the middle of a range, so that the
# range is leased again. That lease must not carry an older token than its fence
# row's (it would be fenced out, and so would every later one), twice over:
#   reconnect: every client connection is killed too. The coordinator, its
#     connections to Redis made again (Redis may have restarted), raises the
#     counter past the targets' tokens within seconds and says so.
#   worker: the coordinator notices nothing. The worker fenced by a target whose
#     token is newer than a lease Redis still holds raises the counter itself and
#     puts the range back at once, and its next lease goes on from the fence row.
#     Meanwhile a second worker goes on asking for ranges, and the first raise
#     fails (the targets' fence table is locked for a while, and that worker's
#     commits wait for it too): the coordinator's
#     lease thread, its connection made again too, hands out none until the
#     counter is raised (a lease taken before would carry a token from the counter
#     set back).
# Either way the range is finished within seconds and the job ends exactly. A
# third scenario, tail, is described at its function.
. "$(dirname "$0")/lib.sh"
fresh_db rf_src
make_monolith rf_src 20000

# start_job JOB RANGE_ROWS ROWS_PER_SECOND: empty targets, the job's coordinator
# (debug log), throttled.
start_job() {
    fresh_db rf_tgt
    make_service rf_tgt
    forget_job "$1"
    write_job "$WORK/$1.yaml" "$1" rf_src rf_tgt 500 "$2"
    start_coordinator "coord-$1" auto "$WORK/$1.yaml" --log-level debug
    "$BF" throttle "$WORK/$1.yaml" --rows-per-second "$3" >/dev/null
}

# lock_fence SECONDS: the targets' fence table locked for that long (a migration),
# from when this returns.
lock_fence() {
    q rf_tgt "BEGIN; LOCK TABLE public.backfill_fence IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep($1); COMMIT" >/dev/null &
    BG_PIDS+=("$!")
    locked() { [ "$(q rf_tgt "SELECT count(*) FROM pg_locks WHERE relation = 'public.backfill_fence'::regclass AND mode = 'AccessExclusiveLock' AND granted")" = 1 ]; }
    wait_for 10 locked || fail "the fence table was not locked"
}

# scenario JOB MODE
scenario() {
    local job=$1 mode=$2 w1 w2 wa t0 tok
    start_job "$job" 2000 4000
    start_worker "w1-$job"
    w1=$WPID
    if [ "$mode" = reconnect ]; then
        start_worker "wa-$job"
        wa=$WPID
    fi
    fence_max() { q rf_tgt "SELECT coalesce(max(token), 0) FROM public.backfill_fence WHERE job = '$job'"; }
    committed() { [ "$(q rf_tgt "SELECT count(*) FROM public.backfill_fence WHERE job = '$job' AND seq > 0")" -ge 3 ]; }
    wait_for 30 committed || fail "$job: no three ranges committed batches"
    # The range w1 holds (its id is host:pid:...), once it has committed a batch
    # (its fence row has a token).
    held() {
        local k
        for k in $(redis_cmd --scan --pattern "bf:{$job}:range:*"); do
            if [ "$(redis_cmd HGET "$k" state)" = leased ] && [ "$(redis_cmd HGET "$k" seq)" -gt 0 ] &&
                [[ "$(redis_cmd HGET "$k" owner)" == *":$w1:"* ]]; then
                HELD=${k##*:}
                return 0
            fi
        done
        return 1
    }
    # (looked for with w1 stopped, so that the range is still its own when it dies)
    stopped_held() {
        kill -STOP "$w1"
        held && return 0
        kill -CONT "$w1"
        return 1
    }
    wait_for 20 stopped_held || fail "$job: no leased range with a committed batch"
    t0=$(fence_max)
    kill -9 "$w1"
    if [ "$mode" = reconnect ]; then
        # The targets' fence table locked for 4 s (a migration): the coordinator's
        # first raise times out after 2 s and the next comes 5 s after that. The
        # other worker's batches wait for the lock too; then it asks for ranges
        # again, before that second raise.
        lock_fence 4
        # The counter set back and every connection killed at once, as Redis
        # coming back without its last writes would leave them.
        printf 'MULTI\nSET bf:{%s}:fence 5\nCLIENT KILL TYPE normal\nEXEC\n' "$job" | redis_cmd >/dev/null
        above() { [ "$(redis_cmd GET "bf:{$job}:fence")" -gt "$(fence_max)" ]; }
        wait_for 15 above || fail "$job: redis's fencing counter ($(redis_cmd GET "bf:{$job}:fence")) not raised past the targets' tokens ($(fence_max))"
        grep -q 'connected to redis again: raising its counters' "$WORK/coord-$job.err" ||
            fail "$job: the coordinator did not say it raised the counters after reconnecting"
        grep -q 'the targets hold fencing tokens up to' "$WORK/coord-$job.err" ||
            fail "$job: the coordinator did not warn that redis lost tokens"
        # (the lock made the first raise fail: leases waited for the second)
        grep -q "cannot compare redis's counters with the targets' fence rows" "$WORK/coord-$job.err" ||
            fail "$job: the first raise did not fail on the locked fence table"
    else
        redis_cmd SET "bf:{$job}:fence" 5 >/dev/null
    fi
    "$BF" throttle "$WORK/$job.yaml" --rows-per-second 0 >/dev/null
    start_worker "w2-$job"
    w2=$WPID
    range_done() { [ "$(redis_cmd HGET "bf:{$job}:range:$HELD" state)" = done ]; }
    wait_for 30 range_done ||
        fail "$job: range $HELD, held by the killed worker, was not finished again within 30 s: $(grep 'fenced:' "$WORK/w2-$job.err" | tail -1)"
    expect_job_done_as "$job" "$w2"
    if [ "$mode" = reconnect ]; then
        wait "$wa" || fail "$job: the worker that went on exit code $?"
        # Tokens from before the counter was set back are past a million (each
        # coordinator start adds one); those after it, before the raise, are below.
        low=$(sed -n 's/.*leased range \([0-9]*\) to .* (token \([0-9]*\))$/\1 \2/p' "$WORK/coord-$job.err" |
            awk '$2 < 1000000' | head -3)
        [ -z "$low" ] || fail "$job: leases handed out under tokens of the counter set back (range token): $low"
        grep -q 'leased range .* (token' "$WORK/coord-$job.err" || fail "$job: no lease in the debug log"
    fi
    tok=$(q rf_tgt "SELECT token FROM public.backfill_fence WHERE job = '$job' AND range_id = $HELD")
    [ "$tok" -gt "$t0" ] ||
        fail "$job: range $HELD, held by the killed worker, was finished under token $tok, not above $t0"
    if [ "$mode" = reconnect ] && grep "fenced:" "$WORK/w2-$job.err" | grep -q "range $HELD\b"; then
        fail "$job: range $HELD was leased again under an old token"
    fi
    if [ "$mode" = worker ]; then
        grep -q "range $HELD: a target holds token .* redis lost writes" "$WORK/w2-$job.err" ||
            fail "$job: the fenced worker did not say redis lost writes"
    fi
}

# expect_job_done_as JOB WORKER_PID: like expect_job_done, for this job's files.
expect_job_done_as() {
    local job=$1 rc=0
    wait "$CPID" || rc=$?
    [ "$rc" -eq 0 ] || tail -n 30 "$WORK/coord-$job.err"
    expect_eq "$rc" 0 "$job: coordinator exit code"
    wait "$2" || fail "$job: second worker exit code $?"
    "$BF" verify "$WORK/$job.yaml" >/dev/null || fail "$job: verify"
    expect_same rf_src rf_tgt
}

# tail: the job's ranges are being split for an idle worker (nothing else is
# pending) when the connections to Redis are made again and the first raise fails
# (the fence table locked again). No split is asked for until the counters are
# raised: a split's new part takes its id from Redis's counter, which could be
# behind the targets' fence rows of a split Redis lost.
tail_scenario() {
    local job=rct w1 w2 w3 n0
    start_job "$job" 100000 1500
    start_worker "w1-$job"
    w1=$WPID
    start_worker "w2-$job"
    w2=$WPID
    # (three: the one that copies the small table is idle early, with most rows left)
    start_worker "w3-$job"
    w3=$WPID
    splitting() { grep -q 'asked .* to split range' "$WORK/coord-$job.err"; }
    wait_for 30 splitting || fail "$job: no split asked for"
    lock_fence 4
    n0=$(wc -l <"$WORK/coord-$job.err")
    redis_cmd CLIENT KILL TYPE normal >/dev/null
    # The second try to raise the counters (the first times out on the lock).
    raised() { [ "$(tail -n +"$n0" "$WORK/coord-$job.err" | grep -c 'connected to redis again: raising')" -ge 2 ]; }
    wait_for 20 raised || fail "$job: the counters were not raised twice: $(tail -n +"$n0" "$WORK/coord-$job.err" | grep -i raising)"
    # What the coordinator logged from the first try (it knows of the reconnect
    # from then on) to the second.
    tail -n +"$((n0 + 1))" "$WORK/coord-$job.err" |
        sed -n '/connected to redis again: raising/,/connected to redis again: raising/p' >"$WORK/window"
    grep -q "cannot compare redis's counters" "$WORK/window" ||
        fail "$job: the first raise did not fail on the locked fence table"
    if grep -q 'asked .* to split range' "$WORK/window"; then
        fail "$job: a split was asked for before the counters were raised: $(grep 'asked .* to split range' "$WORK/window" | head -2)"
    fi
    "$BF" throttle "$WORK/$job.yaml" --rows-per-second 0 >/dev/null
    wait "$CPID" || fail "$job: coordinator exit code $?"
    wait "$w1" || fail "$job: worker 1 exit code $?"
    wait "$w2" || fail "$job: worker 2 exit code $?"
    wait "$w3" || fail "$job: worker 3 exit code $?"
    "$BF" verify "$WORK/$job.yaml" >/dev/null || fail "$job: verify"
    expect_same rf_src rf_tgt
}

scenario rcf reconnect
scenario rcg worker
tail_scenario

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
# Either way the range is finished within seconds and the job ends exactly.
# (Leases the coordinator's leaser takes ahead before a raise may still carry low
# tokens: a range never leased before takes any token; one that was is fenced
# once and put back.)
. "$(dirname "$0")/lib.sh"
fresh_db rf_src
make_monolith rf_src 20000

# scenario JOB MODE
scenario() {
    local job=$1 mode=$2 w1 w2 t0 tok
    fresh_db rf_tgt
    make_service rf_tgt
    forget_job "$job"
    write_job "$WORK/$job.yaml" "$job" rf_src rf_tgt 500 2000
    start_coordinator "coord-$job" auto "$WORK/$job.yaml" --log-level debug
    "$BF" throttle "$WORK/$job.yaml" --rows-per-second 4000 >/dev/null
    start_worker "w1-$job"
    w1=$WPID
    fence_max() { q rf_tgt "SELECT coalesce(max(token), 0) FROM public.backfill_fence WHERE job = '$job'"; }
    committed() { [ "$(q rf_tgt "SELECT count(*) FROM public.backfill_fence WHERE job = '$job' AND seq > 0")" -ge 3 ]; }
    wait_for 30 committed || fail "$job: no three ranges committed batches"
    # The range w1 holds, once it has committed a batch (its fence row has a token).
    held() {
        local k
        for k in $(redis_cmd --scan --pattern "bf:{$job}:range:*"); do
            if [ "$(redis_cmd HGET "$k" state)" = leased ] && [ "$(redis_cmd HGET "$k" seq)" -gt 0 ]; then
                HELD=${k##*:}
                return 0
            fi
        done
        return 1
    }
    wait_for 20 held || fail "$job: no leased range with a committed batch"
    t0=$(fence_max)
    kill -9 "$w1"
    redis_cmd SET "bf:{$job}:fence" 5 >/dev/null
    if [ "$mode" = reconnect ]; then
        redis_cmd CLIENT KILL TYPE normal >/dev/null
        above() { [ "$(redis_cmd GET "bf:{$job}:fence")" -gt "$(fence_max)" ]; }
        wait_for 15 above || fail "$job: redis's fencing counter ($(redis_cmd GET "bf:{$job}:fence")) not raised past the targets' tokens ($(fence_max))"
        grep -q 'connected to redis again: raising its counters' "$WORK/coord-$job.err" ||
            fail "$job: the coordinator did not say it raised the counters after reconnecting"
        grep -q 'the targets hold fencing tokens up to' "$WORK/coord-$job.err" ||
            fail "$job: the coordinator did not warn that redis lost tokens"
    fi
    "$BF" throttle "$WORK/$job.yaml" --rows-per-second 0 >/dev/null
    start_worker "w2-$job"
    w2=$WPID
    range_done() { [ "$(redis_cmd HGET "bf:{$job}:range:$HELD" state)" = done ]; }
    wait_for 30 range_done ||
        fail "$job: range $HELD, held by the killed worker, was not finished again within 30 s: $(grep 'fenced:' "$WORK/w2-$job.err" | tail -1)"
    expect_job_done_as "$job" "$w2"
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

scenario rcf reconnect
scenario rcg worker

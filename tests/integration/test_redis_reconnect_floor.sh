#!/usr/bin/env bash
# A running coordinator whose connections to Redis are cut and made again (Redis
# may have restarted without its last writes) raises Redis's fencing counter past
# every token the targets' fence rows hold: here Redis's counter is set back below
# the tokens already used (as a lost write would leave it), every client
# connection is killed, and so is the worker, in the middle of a range. Within
# seconds the counter is above the targets' tokens, and the range the worker held
# is leased again to a new worker with a token above its fence row's: without the
# raise that lease would carry an older token and be fenced out. (Leases the
# coordinator's leaser takes ahead in the second before the raise may still carry
# low tokens; a range never leased before takes any token, and one that was is
# fenced once and leased again.) Then the job finishes exactly.
. "$(dirname "$0")/lib.sh"
fresh_db rf_src rf_tgt
make_monolith rf_src 20000
make_service rf_tgt
forget_job rcf
write_job "$WORK/job.yaml" rcf rf_src rf_tgt 500 2000
start_coordinator coord auto "$WORK/job.yaml" --log-level debug
"$BF" throttle "$WORK/job.yaml" --rows-per-second 4000 >/dev/null
start_worker w1
W1=$WPID
fence_max() { q rf_tgt "SELECT coalesce(max(token), 0) FROM public.backfill_fence WHERE job = 'rcf'"; }
committed() { [ "$(q rf_tgt "SELECT count(*) FROM public.backfill_fence WHERE job = 'rcf' AND seq > 0")" -ge 3 ]; }
wait_for 30 committed || fail "no three ranges committed batches"
# The range w1 holds, once it has committed a batch (its fence row has a token).
held() {
    local k
    for k in $(redis_cmd --scan --pattern 'bf:{rcf}:range:*'); do
        if [ "$(redis_cmd HGET "$k" state)" = leased ] && [ "$(redis_cmd HGET "$k" seq)" -gt 0 ]; then
            HELD=${k##*:}
            return 0
        fi
    done
    return 1
}
wait_for 20 held || fail "no leased range with a committed batch"
T0=$(fence_max)
kill -9 "$W1"
redis_cmd SET 'bf:{rcf}:fence' 5 >/dev/null
redis_cmd CLIENT KILL TYPE normal >/dev/null
above() { [ "$(redis_cmd GET 'bf:{rcf}:fence')" -gt "$(fence_max)" ]; }
wait_for 15 above || fail "redis's fencing counter ($(redis_cmd GET 'bf:{rcf}:fence')) not raised past the targets' tokens ($(fence_max))"
grep -q 'connected to redis again: raising its counters' "$WORK/coord.err" ||
    fail "the coordinator did not say it raised the counters after reconnecting"
grep -q 'the targets hold fencing tokens up to' "$WORK/coord.err" ||
    fail "the coordinator did not warn that redis lost tokens"
"$BF" throttle "$WORK/job.yaml" --rows-per-second 0 >/dev/null
start_worker w2
W2=$WPID
range_done() { [ "$(redis_cmd HGET "bf:{rcf}:range:$HELD" state)" = done ]; }
wait_for 30 range_done ||
    fail "range $HELD, held by the killed worker, was not finished again within 30 s: $(grep 'fenced:' "$WORK/w2.err" | tail -1)"
expect_job_done rf_src rf_tgt w2="$W2"
tok=$(q rf_tgt "SELECT token FROM public.backfill_fence WHERE job = 'rcf' AND range_id = $HELD")
[ "$tok" -gt "$T0" ] ||
    fail "range $HELD, held by the killed worker, was finished under token $tok, not above $T0"
if grep "fenced:" "$WORK/w2.err" | grep -q "range $HELD\b"; then
    fail "range $HELD was leased again under an old token"
fi

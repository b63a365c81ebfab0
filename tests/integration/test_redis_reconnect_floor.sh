#!/usr/bin/env bash
# A running coordinator whose connections to Redis are cut and made again (Redis
# may have restarted without its last writes) raises Redis's fencing counter past
# every token the targets' fence rows hold, before leasing on: here Redis's
# counter is set back below the tokens already used (as a lost write would leave
# it) and every client connection is killed. Without the raise, the next leases
# would reuse tokens of ranges already committed. Then the job finishes exactly.
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
redis_cmd SET 'bf:{rcf}:fence' 5 >/dev/null
redis_cmd CLIENT KILL TYPE normal >/dev/null
above() { [ "$(redis_cmd GET 'bf:{rcf}:fence')" -gt "$(fence_max)" ]; }
wait_for 15 above || fail "redis's fencing counter ($(redis_cmd GET 'bf:{rcf}:fence')) not raised past the targets' tokens ($(fence_max))"
grep -q 'connected to redis again: raising its counters' "$WORK/coord.err" ||
    fail "the coordinator did not say it raised the counters after reconnecting"
grep -q 'the targets hold fencing tokens up to' "$WORK/coord.err" ||
    fail "the coordinator did not warn that redis lost tokens"
"$BF" throttle "$WORK/job.yaml" --rows-per-second 0 >/dev/null
expect_job_done rf_src rf_tgt w1="$W1"
if grep -q 'fenced:' "$WORK/w1.err"; then fail "a lease was fenced out"; fi

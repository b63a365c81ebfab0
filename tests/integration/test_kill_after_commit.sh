#!/usr/bin/env bash
# Issue 4, acceptance 3: in insert mode (plain COPY), a worker killed (SIGKILL)
# after a batch committed on the target but before its Redis checkpoint. The
# range is resumed by another worker from the target's fence row, so the batch is
# not copied again and no duplicate-key error ever surfaces.
. "$(dirname "$0")/lib.sh"
fresh_db ka_src ka_tgt
make_monolith ka_src 60000
make_service ka_tgt
forget_job ka
write_job "$WORK/job.yaml" ka ka_src ka_tgt 4000 1000000

start_coordinator coord auto "$WORK/job.yaml" --lease-ttl 5
start_worker wa BF_FAULT=after-commit:3:kill
wa=$WPID
rc=0
wait "$wa" || rc=$?
expect_eq "$rc" 137 "worker A's exit status (killed by SIGKILL)"
committed=$(q ka_tgt "SELECT count(*) FROM orders") # orders is the first table
expect_eq "$committed" 12000 "rows committed by worker A before it was killed"
range=$(q ka_tgt "SELECT range_id FROM backfill_fence WHERE job = 'ka' AND seq = 3")
[ -n "$range" ] || fail "no fence row at seq 3"
expect_eq "$(redis_cmd HGET "bf:{ka}:range:$range" seq)" 2 "redis checkpoint seq (one behind)"

start_worker wb
wb=$WPID
rc=0
wait "$CPID" || rc=$?
expect_eq "$rc" 0 "coordinator exit code"
wait "$wb" || fail "worker B exit code $?"
grep -q "range $range: target fence (seq 3.*continuing from the fence" "$WORK/wb.err" ||
    fail "worker B did not resume range $range from the fence: $(grep "range $range" "$WORK/wb.err")"
if grep -qi 'duplicate key' "$WORK"/*.err; then fail "duplicate key error"; fi
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same ka_src ka_tgt

#!/usr/bin/env bash
# Issue 4, acceptance 2: a worker stopped (SIGSTOP) past its lease while its batch
# is open on the target, then continued (SIGCONT) after another worker finished
# the range. The new lease ends the paused worker's open transaction, the second
# worker finishes the range, the first one's late attempt is fenced, and the
# target holds every row exactly once.
. "$(dirname "$0")/lib.sh"
fresh_db fp_src fp_tgt
make_monolith fp_src 60000
make_service fp_tgt
forget_job fp
# One table, one range (range_rows > rows), batches of 5000 rows.
cat >"$WORK/job.yaml" <<YAML
name: fp
source: $(uri fp_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri fp_tgt)
batch_rows: 5000
batch_ms: 0
range_rows: 1000000
tables:
  - from: public.orders
    to: svc.public.orders
YAML

start_coordinator coord auto "$WORK/job.yaml" --lease-ttl 5
# Worker A stops itself (a real SIGSTOP) while the rows of its 3rd batch stream
# into the target: its transaction is open and holds the range.
start_worker wa BF_FAULT=in-copy:3:stop
wa=$WPID
stopped() { [ "$(ps -o stat= -p "$wa" | cut -c1)" = T ]; }
wait_for 30 stopped || fail "worker A never stopped itself"
copied=$(q fp_tgt "SELECT count(*) FROM orders")
expect_eq "$copied" 10000 "rows committed before worker A stopped"
holds=$(q fp_tgt "SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' AND
    query LIKE 'COPY%orders%'")
expect_eq "$holds" 1 "open COPY transactions of worker A"

start_worker wb
wb=$WPID
rc=0
wait "$CPID" || rc=$?
expect_eq "$rc" 0 "coordinator exit code (range finished while A is stopped)"
wait "$wb" || fail "worker B exit code $?"
stopped || fail "worker A is not stopped any more"
grep -q 'terminating target backend' "$WORK/wb.err" ||
    fail "worker B did not end A's open transaction: $(tail -5 "$WORK/wb.err")"

# A wakes up after B finished the range: its batch must not land.
kill -CONT "$wa"
wait_for 30 grep -q 'fenced' "$WORK/wa.err" ||
    fail "worker A's late attempt was not logged as fenced: $(tail -5 "$WORK/wa.err")"
# Then it stops: by itself (no lease, the coordinator gone, the job done in Redis:
# exit 0), or on SIGTERM if it is still looking for the coordinator.
kill -TERM "$wa" 2>/dev/null || true
rc=0
wait "$wa" || rc=$?
[ "$rc" = 0 ] || [ "$rc" = 130 ] || [ "$rc" = 143 ] || fail "worker A exit code $rc"
sleep 0.5

n=$(q fp_tgt "SELECT count(*) FROM orders")
expect_eq "$n" 60000 "rows in the target"
expect_eq "$(q fp_tgt "SELECT count(DISTINCT id) FROM orders")" 60000 "distinct keys"
expect_eq "$(table_md5 fp_tgt orders id)" "$(table_md5 fp_src orders id)" "md5 of orders"
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
state=$(redis_cmd HGET "bf:{fp}:range:0" state)
done_by=$(redis_cmd HGET "bf:{fp}:range:0" done_by)
expect_eq "$state" done "range 0 state in redis"
case "$done_by" in
*":$wb:"*) ;;
*) fail "range 0 done by '$done_by', expected worker B (pid $wb)" ;;
esac
if grep -qi 'duplicate key' "$WORK"/*.err; then fail "duplicate key error"; fi
echo "worker A (pid $wa) fenced; range done by $done_by"

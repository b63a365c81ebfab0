#!/usr/bin/env bash
# Straggler splitting: a table planned as one range still uses every worker. The
# coordinator sees idle workers and nothing pending and asks the owner (SHRINK) to
# split its range past its cursor; the new parts are leased to the idle workers.
# Insert mode with a primary key on the target: a row copied twice would fail the
# job, a row never copied fails the comparison.
. "$(dirname "$0")/lib.sh"
fresh_db sp_src sp_tgt
make_monolith sp_src 300000
make_service sp_tgt
forget_job sp
cat >"$WORK/job.yaml" <<YAML
name: sp
source: $(uri sp_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri sp_tgt)
batch_rows: 100
batch_ms: 0
range_rows: 10000000
tables:
  - from: public.orders
    to: svc.public.orders
YAML

"$BF" plan "$WORK/job.yaml" >"$WORK/plan.out"
ranges=$(grep -c 'public.orders' "$WORK/plan.out")
expect_eq "$ranges" 1 "ranges planned for orders"

"$BF" run "$WORK/job.yaml" --workers 3 --log-level debug >"$WORK/run.out" 2>"$WORK/run.err" ||
    { rc=$?; tail -30 "$WORK/run.err"; fail "run exited $rc"; }
grep -q 'job complete' "$WORK/run.out" || fail "no 'job complete' in run output"
splits=$(grep -c 'split at key' "$WORK/run.err" || true)
[ "$splits" -ge 2 ] || { grep -E 'split|SHRINK' "$WORK/run.err" | tail; fail "expected >= 2 splits, saw $splits"; }
# Every worker copied rows.
grep 'copied by this worker' "$WORK/run.err" >"$WORK/finished.txt"
expect_eq "$(wc -l <"$WORK/finished.txt")" 3 "workers that finished"
if grep -q ' 0 rows copied by this worker' "$WORK/finished.txt"; then
    cat "$WORK/finished.txt"
    fail "a worker copied nothing: the range was not shared"
fi

for t in orders; do
    a=$(q sp_src "SELECT count(*), sum(hashtext(o::text)) FROM $t o")
    b=$(q sp_tgt "SELECT count(*), sum(hashtext(o::text)) FROM $t o")
    expect_eq "$b" "$a" "rows and checksum of $t"
done
"$BF" verify "$WORK/job.yaml" >"$WORK/verify.out" || { cat "$WORK/verify.out"; fail "verify"; }
grep -q 'verify: OK' "$WORK/verify.out" || fail "verify did not say OK"
"$BF" status "$WORK/job.yaml" --json >"$WORK/status.json"
grep -q '"table":"public.orders","ranges":[0-9]*,"done":[0-9]*,"leased":0,"pending":0,"failed":0,"rows":300000' \
    "$WORK/status.json" || { cat "$WORK/status.json"; fail "status rows"; }

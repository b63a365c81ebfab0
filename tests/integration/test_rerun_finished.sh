#!/usr/bin/env bash
# Running a finished job again says so, exits 0 and writes nothing.
. "$(dirname "$0")/lib.sh"
fresh_db rf_src rf_tgt
make_monolith rf_src 20000
make_service rf_tgt
forget_job rf
write_job "$WORK/job.yaml" rf rf_src rf_tgt
"$BF" run "$WORK/job.yaml" --workers 2 >/dev/null 2>"$WORK/run1.err" || fail "first run"
before=$(q rf_tgt "SELECT max(xmin::text::bigint) FROM orders")
"$BF" run "$WORK/job.yaml" --workers 2 >"$WORK/run2.out" 2>"$WORK/run2.err" || fail "second run"
grep -q 'already complete' "$WORK/run2.out" || fail "second run did not say the job is complete"
after=$(q rf_tgt "SELECT max(xmin::text::bigint) FROM orders")
expect_eq "$after" "$before" "target untouched by the second run"
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"

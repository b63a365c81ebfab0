#!/usr/bin/env bash
# A row the target rejects (here: the key is already there, in insert mode) stops
# the job with exit 4 and an error naming the table and the key; everything that
# was committed stays checkpointed, and once the conflict is resolved a re-run
# finishes exactly.
. "$(dirname "$0")/lib.sh"
fresh_db tr_src tr_tgt
make_monolith tr_src 50000
make_service tr_tgt
forget_job trj
write_job "$WORK/job.yaml" trj tr_src tr_tgt 1000 10000
q tr_tgt "INSERT INTO orders SELECT * FROM (VALUES (31337::bigint, 1, 'X', 1::numeric, NULL::jsonb,
    now())) v" >/dev/null

rc=0
"$BF" run "$WORK/job.yaml" --workers 2 >"$WORK/run1.out" 2>"$WORK/run1.err" || rc=$?
expect_eq "$rc" 4 "exit code when the target rejects a row"
grep -q 'public.orders -> svc.public.orders' "$WORK/run1.err" || fail "table not named: $(grep error "$WORK/run1.err")"
grep -q 'Key (id)=(31337) already exists' "$WORK/run1.err" || fail "key not named: $(grep error "$WORK/run1.err")"
grep -q 'job stopped' "$WORK/run1.err" || fail "no 'job stopped' line"

q tr_tgt "DELETE FROM orders WHERE id = 31337" >/dev/null
"$BF" run "$WORK/job.yaml" --workers 2 >"$WORK/run2.out" 2>"$WORK/run2.err" ||
    { tail "$WORK/run2.err"; fail "re-run after the fix"; }
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same tr_src tr_tgt

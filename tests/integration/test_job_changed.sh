#!/usr/bin/env bash
# A job file whose tables changed after the job was planned. The plan's ranges and
# checkpoints belong to its tables by position: resuming them with other tables
# would copy the wrong table's ranges (an interrupted job whose tables were
# swapped lost rows), and a table added to a finished job was never copied while
# `run` said the job was complete. Now every command that reads the plan (run,
# coordinator, status, verify) refuses a job file whose tables differ, saying what
# differs and what to do (exit 2); `--replan` plans such a job afresh, and a
# worker that outlived its coordinator stops rather than run the new job's ranges
# against its old tables. A changed mode, columns or filter is only a warning.
. "$(dirname "$0")/lib.sh"
fresh_db jc_src jc_tgt jcw_tgt
make_monolith jc_src 20000
make_service jc_tgt
make_service jcw_tgt
q jc_src "CREATE TABLE extra (id bigint PRIMARY KEY, v text);
    INSERT INTO extra SELECT g, 'v' || g FROM generate_series(1, 3000) g; ANALYZE extra" >/dev/null
q jc_tgt "CREATE TABLE extra (id bigint PRIMARY KEY, v text)" >/dev/null
forget_job jc
write_job "$WORK/job.yaml" jc jc_src jc_tgt 5000 8000
"$BF" run "$WORK/job.yaml" --workers 2 >/dev/null 2>"$WORK/run1.err" || { tail -5 "$WORK/run1.err"; fail "first run"; }

# expect_refused NAME CMD...: exit 2 and the message naming what differs.
expect_refused() {
    local name=$1 rc=0
    shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    expect_eq "$rc" 2 "exit code of $name"
    grep -q "job jc: the job file's tables are not those of the plan in redis ($WHAT)\. .*start this job over (empty its target tables, then run it with --replan)" \
        "$WORK/$name.err" || fail "$name does not say what differs: $(cat "$WORK/$name.err" "$WORK/$name.out")"
}

# A table added to the finished job.
cp "$WORK/job.yaml" "$WORK/added.yaml"
printf '  - from: extra\n    to: svc.extra\n' >>"$WORK/added.yaml"
WHAT="the plan has 3 tables, the job file lists 4"
expect_refused run_added "$BF" run "$WORK/added.yaml" --workers 2
expect_eq "$(q jc_tgt "SELECT count(*) FROM extra")" 0 "rows of the added table"
expect_refused status_added "$BF" status "$WORK/added.yaml"
expect_refused verify_added "$BF" verify "$WORK/added.yaml"

# A table left out (verify said it could not read a range, exit 3).
head -n -2 "$WORK/job.yaml" >"$WORK/removed.yaml"
WHAT="the plan has 3 tables, the job file lists 2"
expect_refused verify_removed "$BF" verify "$WORK/removed.yaml"

# Two tables swapped.
sed -e 's/^  - from: users$/  - from: XX/' -e 's/^    to: svc.users$/    to: svc.XX/' \
    -e 's/^  - from: public.notes$/  - from: users/' -e 's/^    to: svc.public.notes$/    to: svc.users/' \
    -e 's/^  - from: XX$/  - from: public.notes/' -e 's/^    to: svc.XX$/    to: svc.public.notes/' \
    "$WORK/job.yaml" >"$WORK/swapped.yaml"
WHAT="table 2 of the job file (line 12) is public.notes -> svc.public.notes, but the plan's table 2 is public.users -> svc.public.users"
expect_refused run_swapped "$BF" run "$WORK/swapped.yaml" --workers 2
expect_refused coordinator_swapped "$BF" coordinator "$WORK/swapped.yaml" --bind "ipc://$WORK/c.sock"

# A plan stored by an older version has no signatures: the tables' source names
# are compared, and a coordinator that finds them matching stores the signatures.
for t in 0 1 2; do redis_cmd HDEL 'bf:{jc}:meta' "tbl:$t:sig" "tbl:$t:map" >/dev/null; done
WHAT="table 2 of the job file (line 12) is read from public.notes, but the plan's table 2 from public.users"
expect_refused run_swapped_old "$BF" run "$WORK/swapped.yaml" --workers 2
"$BF" run "$WORK/job.yaml" --workers 2 >"$WORK/old.out" 2>"$WORK/old.err" || fail "run of an older plan: $(cat "$WORK/old.err")"
grep -q '^job is already complete' "$WORK/old.out" || fail "run of an older plan: $(cat "$WORK/old.out")"
expect_eq "$(redis_cmd HGET 'bf:{jc}:meta' tbl:1:sig)" "public.users -> svc.public.users" "signature stored for an older plan"

# Another target table for a table.
sed 's/^    to: svc.users$/    to: svc.people/' "$WORK/job.yaml" >"$WORK/retarget.yaml"
WHAT="table 2 of the job file (line 12) is public.users -> svc.public.people, but the plan's table 2 is public.users -> svc.public.users"
expect_refused status_retarget "$BF" status "$WORK/retarget.yaml" --json

# The same tables written another way: a warning, and the job stays complete.
cat "$WORK/job.yaml" >"$WORK/mode.yaml"
printf '    mode: upsert\n' >>"$WORK/mode.yaml"
"$BF" run "$WORK/mode.yaml" --workers 2 >"$WORK/mode.out" 2>"$WORK/mode.err" ||
    { cat "$WORK/mode.err"; fail "run with a changed mode"; }
grep -q '^job is already complete' "$WORK/mode.out" || fail "run with a changed mode: $(cat "$WORK/mode.out")"
grep -q 'the mode, columns, where or route conditions of table public.notes (line 14) changed since the job was planned' \
    "$WORK/mode.err" || fail "no warning for a changed mode: $(cat "$WORK/mode.err")"
"$BF" verify "$WORK/job.yaml" >/dev/null 2>&1 || fail "verify of the unchanged job file"

# A worker that outlives its coordinator does not take a changed job for its own:
# a coordinator restarted with the tables swapped and --replan would otherwise
# have it read the new plan's ranges against its old tables.
# Nor does it write into the emptied targets of the new plan before it finds out:
# its lease is of the old plan, and the fence rows' floor is above its token.
forget_job jcw
sed -e 's/^name: jc$/name: jcw/' -e 's#/jc_tgt$#/jcw_tgt#' "$WORK/job.yaml" >"$WORK/w.yaml"
sed -e 's/^name: jc$/name: jcw/' -e 's#/jc_tgt$#/jcw_tgt#' "$WORK/swapped.yaml" >"$WORK/w2.yaml"
start_coordinator coordw auto "$WORK/w.yaml"
"$BF" pause "$WORK/w.yaml" >/dev/null
start_worker w1
wait_for 10 grep -q 'joined coordinator' "$WORK/w1.err" || fail "worker did not join: $(cat "$WORK/w1.err")"
wait_for 10 grep -q 'paused (backfill pause)' "$WORK/w1.err" || fail "worker did not pause: $(cat "$WORK/w1.err")"
kill -9 "$CPID"
wait "$CPID" 2>/dev/null || true
start_coordinator coordw2 "$PORT" "$WORK/w2.yaml" --replan
rc=0
wait_for 20 eval '! kill -0 '"$WPID"' 2>/dev/null' || fail "worker kept running with the old job: $(tail -3 "$WORK/w1.err")"
wait "$WPID" || rc=$?
expect_eq "$rc" 2 "exit code of a worker whose coordinator came back with another job"
grep -q "the coordinator at $ENDPOINT now runs another version of job jcw (its job file or the variables it references changed); this worker stops" \
    "$WORK/w1.err" || fail "worker did not say why it stopped: $(tail -3 "$WORK/w1.err")"
kill "$CPID"
wait "$CPID" 2>/dev/null || true
for t in orders users notes; do
    expect_eq "$(q jcw_tgt "SELECT count(*) FROM $t")" 0 "rows the old plan's worker wrote into $t after --replan"
done
expect_eq "$(q jcw_tgt "SELECT token > 0 FROM backfill_fence WHERE job = 'jcw' AND range_id = -1")" t \
    "fence floor after --replan"
forget_job jcw

# Started over on purpose: the targets emptied, --replan plans the new tables.
q jc_tgt "TRUNCATE orders, users, notes" >/dev/null
"$BF" run "$WORK/added.yaml" --workers 2 --replan >"$WORK/replan.out" 2>"$WORK/replan.err" ||
    { tail -5 "$WORK/replan.err"; fail "run --replan of the changed job"; }
grep -q "the job file's tables are not those of the plan in redis (the plan has 3 tables, the job file lists 4): planning afresh (--replan)" \
    "$WORK/replan.err" || fail "--replan does not say it plans afresh: $(cat "$WORK/replan.err")"
expect_eq "$(q jc_tgt "SELECT count(*) FROM extra")" 3000 "rows of the added table after --replan"
expect_same jc_src jc_tgt
"$BF" verify "$WORK/added.yaml" >"$WORK/verify.out" 2>&1 || { cat "$WORK/verify.out"; fail "verify after --replan"; }
"$BF" status "$WORK/added.yaml" >/dev/null 2>&1 || fail "status after --replan"
forget_job jc

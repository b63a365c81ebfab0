#!/usr/bin/env bash
# backfill's Redis Functions carry a version in their library's name
# (common/functions.lua): a binary loads them over an older version (the library
# of releases before versions, "backfill", deleted in the same transaction),
# refuses to start (exit 2, naming both versions) when Redis holds a newer
# version, and an older release's FUNCTION LOAD REPLACE of "backfill" then fails
# on the function names instead of bringing back its older functions (that last
# is Redis's rule for function names, checked here because the versioning relies
# on it). Functions gone from Redis mid-job are loaded again by the first process
# that misses them.
. "$(dirname "$0")/lib.sh"
LUA="$BF_SOURCE_DIR/common/functions.lua"
V=$(sed -n '1s/^#!lua name=backfill_v\([0-9]*\)$/\1/p' "$LUA")
[ -n "$V" ] || fail "functions.lua's first line names no version"
fresh_db fv_src fv_tgt
make_monolith fv_src 3000
make_service fv_tgt
forget_job fv
write_job "$WORK/job.yaml" fv fv_src fv_tgt
# The libraries of backfill's that Redis holds, sorted, on one line.
libs() {
    redis_cmd FUNCTION LIST LIBRARYNAME 'backfill*' | grep -A1 '^library_name$' |
        grep -v '^library_name$' | grep -v '^--$' | sort | tr '\n' ' ' | sed 's/ $//'
}
CLEANUP_CMDS+=("redis-cli -p $BF_REDIS_PORT FUNCTION DELETE backfill_v999")

# An older release loaded its functions: the same names, in library "backfill".
sed '1s/.*/#!lua name=backfill/' "$LUA" >"$WORK/old.lua"
redis_cmd FUNCTION DELETE "backfill_v$V" >/dev/null
redis_cmd -x FUNCTION LOAD REPLACE <"$WORK/old.lua" >/dev/null
expect_eq "$(libs)" "backfill" "libraries before the upgrade"
"$BF" run "$WORK/job.yaml" --workers 2 >/dev/null 2>"$WORK/run.err" ||
    { cat "$WORK/run.err" >&2; fail "run over the older functions"; }
expect_eq "$(libs)" "backfill_v$V" "libraries after the run"
grep -q "functions upgraded to version $V" "$WORK/run.err" || fail "the upgrade was not logged"
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same fv_src fv_tgt

# The older release starting again cannot replace them.
out=$(redis_cmd -x FUNCTION LOAD REPLACE <"$WORK/old.lua" 2>&1 || true)
case "$out" in *"already exists"*) ;; *) fail "an older library replaced ours: $out" ;; esac
expect_eq "$(libs)" "backfill_v$V" "libraries after the older release's load"

# A newer release's functions: this binary refuses, naming both versions, and
# leaves them alone.
printf '#!lua name=backfill_v999\nredis.register_function("bf_from_the_future", function() return 1 end)\n' |
    redis_cmd -x FUNCTION LOAD >/dev/null
for cmd in status run; do
    rc=0
    "$BF" "$cmd" "$WORK/job.yaml" >"$WORK/$cmd.out" 2>"$WORK/$cmd.err" || rc=$?
    expect_eq "$rc" 2 "$cmd exit code against newer functions"
    grep -q "newer release (library backfill_v999, version 999; this binary has version $V)" \
        "$WORK/$cmd.err" || { cat "$WORK/$cmd.err" >&2; fail "$cmd did not name the versions"; }
done
expect_eq "$(libs)" "backfill_v$V backfill_v999" "libraries after the refusals"
redis_cmd FUNCTION DELETE backfill_v999 >/dev/null
"$BF" status "$WORK/job.yaml" >/dev/null || fail "status once the newer functions are gone"

# Functions gone from Redis while a job runs (FUNCTION FLUSH, a Redis replaced):
# the next process to call one loads this binary's version again, and the job
# finishes.
fresh_db fv_tgt
make_service fv_tgt
forget_job fv
start_coordinator coord auto "$WORK/job.yaml"
"$BF" throttle "$WORK/job.yaml" --rows-per-second 3000 >/dev/null
start_worker w1
W1=$WPID
some() { [ "$(q fv_tgt "SELECT count(*) FROM orders")" -gt 0 ]; }
wait_for 30 some || fail "no rows copied"
redis_cmd FUNCTION DELETE "backfill_v$V" >/dev/null
expect_job_done fv_src fv_tgt w1="$W1"
grep -q 'lost the backfill functions; loading them again' "$WORK/coord.err" "$WORK/w1.err" ||
    fail "nobody said it loaded the functions again"
expect_eq "$(libs)" "backfill_v$V" "libraries after the job"

#!/usr/bin/env bash
# One coordinator per job (the lock bf:{job}:lock in Redis):
#  1. a second coordinator of a running job stops at once with exit 2, naming the
#     first (pid, endpoint), without touching the job (epoch unchanged); `status`
#     names the running one;
#  2. a lock of another machine's coordinator is waited for until it expires (a
#     killed coordinator), and refused as soon as it is seen renewed (a live one);
#     one with no expiry is refused with the key to delete; Ctrl-C ends the wait;
#  3. a coordinator whose lock vanished (Redis lost it) takes it again and runs on;
#     one whose lock another coordinator took stops with exit 2, leaving its
#     workers to wait for a coordinator (not drained);
#  4. a coordinator killed -9 is replaced at once on the same machine (no wait for
#     the lock to expire), the job completes exactly, and the lock is deleted at
#     the end.
. "$(dirname "$0")/lib.sh"
fresh_db cl_src cl_tgt
make_monolith cl_src 100000
make_service cl_tgt
forget_job clj
write_job "$WORK/job.yaml" clj cl_src cl_tgt 1000 10000
LOCK='bf:{clj}:lock'
# Locks as another machine's coordinators would hold them.
FOREIGN='pid 4242 on elsewhere, listening on tcp://10.0.0.9:5570, since 2026-01-01 00:00:00 UTC|boot=00000000-0000-0000-0000-000000000000 ns=pid:[1] pid=4242 start=1 nonce=1'
FOREIGN2='pid 4343 on elsewhere, by hand "x\\y", since 2026-01-01 00:00:00 UTC|boot=00000000-0000-0000-0000-000000000000 ns=pid:[1] pid=4343 start=1 nonce=2'
epoch() { redis_cmd HGET 'bf:{clj}:meta' epoch; }
# second NAME: a coordinator started while the lock is held; its exit code in RC
# and its run time in ms in MS.
second() {
    local t0
    t0=$(date +%s%3N)
    RC=0
    timeout 60 "$BF" coordinator "$WORK/job.yaml" --bind "tcp://127.0.0.1:$((20000 + RANDOM % 30000))" \
        >"$WORK/$1.out" 2>"$WORK/$1.err" || RC=$?
    MS=$(($(date +%s%3N) - t0))
    echo "$1: exit $RC after $MS ms: $(grep -E 'error|warn' "$WORK/$1.err" | head -2)"
}

# 1. A second coordinator of a running job.
start_coordinator c1 auto "$WORK/job.yaml"
c1=$CPID
port1=$PORT
e1=$(epoch)
"$BF" status "$WORK/job.yaml" >"$WORK/status.txt"
grep -q "^coordinator: pid $c1 on .*, listening on tcp://127.0.0.1:$port1, since " "$WORK/status.txt" ||
    { cat "$WORK/status.txt" >&2; fail "status does not name the running coordinator"; }
timeout 2 "$BF" status "$WORK/job.yaml" --watch --interval 0.5 >"$WORK/watch1.txt" || true
grep -q '^clj ' "$WORK/watch1.txt" || { cat "$WORK/watch1.txt" >&2; fail "status --watch drew no frame"; }
if grep -q 'NO COORDINATOR' "$WORK/watch1.txt"; then fail "status --watch: no coordinator while c1 runs"; fi
"$BF" status "$WORK/job.yaml" --json >"$WORK/status.json"
grep -q "\"coordinator\":\"pid $c1 on " "$WORK/status.json" ||
    fail "status --json does not name the running coordinator"
json_ok() { ! command -v python3 >/dev/null || python3 -m json.tool "$1" >/dev/null; }
json_ok "$WORK/status.json" || { cat "$WORK/status.json" >&2; fail "status --json is not JSON"; }
second c2
expect_eq "$RC" 2 "exit code of a second coordinator"
grep -q "job clj is being run by another coordinator: pid $c1 on .*listening on tcp://127.0.0.1:$port1" \
    "$WORK/c2.err" || { cat "$WORK/c2.err" >&2; fail "the second coordinator did not name the first"; }
[ "$MS" -lt 5000 ] || fail "the second coordinator took $MS ms to see a live coordinator of this machine"
expect_eq "$(epoch)" "$e1" "epoch after a second coordinator was refused"
kill -0 "$c1" || fail "the first coordinator died"
# The plan was stored after the lock was taken (the plan replaces the job's keys):
# the lock survived it (a renewal since would have found it gone).
sleep 2.5
if grep -q 'had vanished' "$WORK/c1.err"; then fail "storing the plan deleted the lock"; fi
kill -TERM "$c1"
wait "$c1" 2>/dev/null || true
expect_eq "$(redis_cmd EXISTS "$LOCK")" 0 "lock after a clean stop"
"$BF" status "$WORK/job.yaml" | grep -q '^coordinator: none running' || fail "status after stop"
timeout 2 "$BF" status "$WORK/job.yaml" --watch --interval 0.5 >"$WORK/watch.txt" || true
grep -q '^clj .* NO COORDINATOR RUNNING$' "$WORK/watch.txt" ||
    { cat "$WORK/watch.txt" >&2; fail "status --watch does not say no coordinator runs the job"; }

# 2. Another machine's lock: expired (its coordinator was killed), renewed (it runs),
# or with no expiry.
redis_cmd SET "$LOCK" "$FOREIGN" PX 6000 >/dev/null
t0=$(date +%s%3N)
"$BF" coordinator "$WORK/job.yaml" --bind "tcp://127.0.0.1:$port1" >"$WORK/c3.out" 2>"$WORK/c3.err" &
c3=$!
BG_PIDS+=("$c3")
wait_for 20 grep -q 'coordinator listening' "$WORK/c3.err" ||
    { cat "$WORK/c3.err" >&2; fail "c3 did not take an expired lock"; }
MS=$(($(date +%s%3N) - t0))
echo "c3: took an expired lock after $MS ms"
grep -q 'job clj is held by another coordinator (pid 4242 on elsewhere.*); waiting up to' \
    "$WORK/c3.err" || { cat "$WORK/c3.err" >&2; fail "c3 did not say it waits"; }
[ "$MS" -ge 3000 ] || fail "c3 did not wait for the lock to expire ($MS ms)"
kill -TERM "$c3"
wait "$c3" 2>/dev/null || true
e1=$((e1 + 1))
# Ctrl-C while waiting: exit 130 at once, the job untouched.
redis_cmd SET "$LOCK" "$FOREIGN" PX 8000 >/dev/null
"$BF" coordinator "$WORK/job.yaml" --bind "tcp://127.0.0.1:$port1" >"$WORK/cint.out" 2>"$WORK/cint.err" &
cint=$!
BG_PIDS+=("$cint")
wait_for 20 grep -q 'waiting up to' "$WORK/cint.err" || { cat "$WORK/cint.err" >&2; fail "cint did not wait"; }
kill -INT "$cint"
wait_for 3 eval '! kill -0 "$cint" 2>/dev/null' || fail "a waiting coordinator ignored SIGINT"
rc=0
wait "$cint" || rc=$?
expect_eq "$rc" 130 "exit code of a coordinator interrupted while waiting"
expect_eq "$(redis_cmd GET "$LOCK" | cut -c1-8)" "pid 4242" "the lock after an interrupted wait"
# Renewed while this one waits: another machine's coordinator runs the job.
redis_cmd SET "$LOCK" "$FOREIGN" PX 6000 >/dev/null
(while sleep 0.3; do
    redis_cmd EVAL "if redis.call('GET', KEYS[1]) == ARGV[1] then
        return redis.call('PEXPIRE', KEYS[1], 6000) end return 0" 1 "$LOCK" "$FOREIGN" >/dev/null
done) &
renewer=$!
BG_PIDS+=("$renewer")
second c4
kill "$renewer"
expect_eq "$RC" 2 "exit code with a live coordinator elsewhere"
grep -q "being run by another coordinator: pid 4242 on elsewhere, listening on tcp://10.0.0.9:5570" \
    "$WORK/c4.err" || { cat "$WORK/c4.err" >&2; fail "c4 did not name the holder"; }
[ "$MS" -lt 6000 ] || fail "c4 took $MS ms to see the lock renewed"
# No expiry (set by hand, with quotes and a backslash: status stays JSON).
redis_cmd SET "$LOCK" "$FOREIGN2" >/dev/null
"$BF" status "$WORK/job.yaml" --json >"$WORK/status2.json"
json_ok "$WORK/status2.json" || { cat "$WORK/status2.json" >&2; fail "status --json with a hand-set lock"; }
second c5
expect_eq "$RC" 2 "exit code with a lock without expiry"
grep -q "a lock with no expiry.*delete the key bf:{clj}:lock" "$WORK/c5.err" ||
    { cat "$WORK/c5.err" >&2; fail "c5 did not say which key to delete"; }
redis_cmd DEL "$LOCK" >/dev/null
expect_eq "$(epoch)" "$e1" "epoch after refused coordinators"

# 3. A lock that vanished is taken again; one taken by another coordinator stops
# this one.
start_coordinator c6 auto "$WORK/job.yaml"
c6=$CPID
redis_cmd DEL "$LOCK" >/dev/null
wait_for 10 grep -q 'had vanished' "$WORK/c6.err" || fail "c6 did not take its vanished lock again"
redis_cmd GET "$LOCK" | grep -q "^pid $c6 on " || fail "the lock does not name c6 again"
# A worker of c6 (the job paused, so that it holds a lease and waits) is not told
# to drain when c6 stops: it keeps its lease and waits for a coordinator there.
"$BF" pause "$WORK/job.yaml" >/dev/null
start_worker w0
w0=$WPID
wait_for 10 grep -q 'joined coordinator' "$WORK/w0.err" || fail "w0 did not join c6"
redis_cmd SET "$LOCK" "$FOREIGN" PX 60000 >/dev/null
wait_for 15 eval '! kill -0 "$c6" 2>/dev/null' || fail "c6 did not stop when its lock was taken"
rc6=0
wait "$c6" || rc6=$?
expect_eq "$rc6" 2 "exit code of a coordinator whose lock was taken"
grep -q "another coordinator took job clj while this one could not renew its lock: pid 4242 on elsewhere" \
    "$WORK/c6.err" || { cat "$WORK/c6.err" >&2; fail "c6 did not say who took its lock"; }
sleep 1.5
kill -0 "$w0" 2>/dev/null || { cat "$WORK/w0.err" >&2; fail "c6's worker exited (drained) when c6 lost its lock"; }
kill -TERM "$w0"
wait "$w0" 2>/dev/null || true
"$BF" resume "$WORK/job.yaml" >/dev/null
expect_eq "$(redis_cmd GET "$LOCK" | cut -c1-8)" "pid 4242" "the other coordinator's lock (not deleted)"
redis_cmd DEL "$LOCK" >/dev/null

# 4. Killed -9 and started again at once, with workers: no wait, the job completes
# (throttled, so that it is killed mid-way).
"$BF" throttle "$WORK/job.yaml" --rows-per-second 20000 >/dev/null
copied_over() { [ "$(q cl_tgt 'SELECT count(*) FROM orders')" -gt "$1" ]; }
start_coordinator c7 auto "$WORK/job.yaml"
c7=$CPID
port7=$PORT
start_worker w1
w1=$WPID
start_worker w2
w2=$WPID
wait_for 30 copied_over 10000 || fail "no rows copied"
kill -9 "$c7"
wait "$c7" 2>/dev/null || true
redis_cmd GET "$LOCK" | grep -q "^pid $c7 on " || fail "the killed coordinator's lock is gone"
copied_over 99999 && fail "the job was done before the coordinator was killed"
t0=$(date +%s%3N)
timeout 120 "$BF" coordinator "$WORK/job.yaml" --bind "tcp://127.0.0.1:$port7" >"$WORK/c8.out" 2>"$WORK/c8.err" ||
    { rc=$?; tail "$WORK/c8.err" >&2; fail "c8 exited $rc"; }
grep -q "its last coordinator (pid $c7 on .*) is no longer running; taking over" "$WORK/c8.err" ||
    { cat "$WORK/c8.err" >&2; fail "c8 did not take over at once"; }
if grep -q 'waiting up to' "$WORK/c8.err"; then fail "c8 waited for a dead coordinator's lock"; fi
echo "c8: took over and finished the job in $(($(date +%s%3N) - t0)) ms"
wait "$w1" || fail "worker 1 exit code $?"
wait "$w2" || fail "worker 2 exit code $?"
expect_eq "$(redis_cmd EXISTS "$LOCK")" 0 "lock after the job completed"
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same cl_src cl_tgt

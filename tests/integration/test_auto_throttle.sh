#!/usr/bin/env bash
# Automatic throttle: the coordinator runs the job's throttle_query (here a value
# in a table the test sets, standing in for replication lag) every 2 s; above
# throttle_max every worker backs off until it is below again. A throttle_query
# that cannot run stops the coordinator before anything is copied, naming the
# file and line.
. "$(dirname "$0")/lib.sh"
fresh_db at_src at_tgt
make_monolith at_src 300000
make_service at_tgt
q at_src "CREATE TABLE public.lag (v numeric); INSERT INTO public.lag VALUES (0)" >/dev/null
forget_job at
JOB_BATCH_MS=250 write_job "$WORK/job.yaml" at at_src at_tgt 5000 50000
cp "$WORK/job.yaml" "$WORK/bad.yaml"
printf 'throttle_query: SELECT v FROM public.lag\nthrottle_max: 5\n' >>"$WORK/job.yaml"
printf 'throttle_query: SELECT v FROM public.no_such_table\nthrottle_max: 5\n' >>"$WORK/bad.yaml"

if "$BF" run "$WORK/bad.yaml" --workers 1 >"$WORK/bad.out" 2>"$WORK/bad.err"; then fail "a broken throttle_query was accepted"; fi
grep -q "bad.yaml:[0-9]*: throttle_query cannot be used: .*no_such_table" "$WORK/bad.err" ||
    { cat "$WORK/bad.err"; fail "unclear throttle_query error"; }
forget_job at

copied() { redis_cmd HMGET 'bf:{at}:stats' rows:0 rows:1 rows:2 | awk '{ s += $1 } END { print s + 0 }'; }
has_rows() { [ "$(copied)" -gt 0 ]; }
"$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run.out" 2>"$WORK/run.err" &
RUN=$!
BG_PIDS+=("$RUN")
wait_for 60 has_rows || { tail "$WORK/run.err"; fail "no rows copied"; }
"$BF" throttle "$WORK/job.yaml" --rows-per-second 20000 >/dev/null

# "Lag" above throttle_max: within 2 s (the check) plus a batch, nothing moves.
q at_src "UPDATE public.lag SET v = 12.5" >/dev/null
sleep 4
p1=$(copied)
sleep 2
p2=$(copied)
expect_eq "$p2" "$p1" "rows copied while backing off"
grep -q 'throttle_query returned 12.5, above throttle_max 5: workers back off' "$WORK/run.err" ||
    fail "the coordinator did not say it backs off"
"$BF" status "$WORK/job.yaml" >"$WORK/status.out"
grep -q 'backing off' "$WORK/status.out" || { cat "$WORK/status.out"; fail "status does not show the back-off"; }

# Back under: the copy goes on and finishes.
q at_src "UPDATE public.lag SET v = 1" >/dev/null
sleep 4
p3=$(copied)
[ "$p3" -gt "$p2" ] || fail "no rows copied after the value went down ($p2 -> $p3)"
grep -q 'not above throttle_max 5: workers go on' "$WORK/run.err" || fail "no 'go on' line"
"$BF" throttle "$WORK/job.yaml" --rows-per-second 0 >/dev/null
wait "$RUN" || { rc=$?; tail "$WORK/run.err"; fail "run exited $rc"; }
grep -q 'job complete' "$WORK/run.out" || fail "run did not complete"
expect_same at_src at_tgt

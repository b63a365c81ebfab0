#!/usr/bin/env bash
# Hostile peers on the coordinator's port: 10,000 malformed or unauthorised frames
# (tests/tools/bf_spam.c) before any worker joins and 10,000 more while two workers
# copy. The coordinator drops them, logs the drops rate-limited, keeps serving, and
# the job completes exactly.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
: "${BF_SPAM:?BF_SPAM must point to the bf_spam binary}"
fresh_db hf_src hf_tgt
make_monolith hf_src 200000
make_service hf_tgt
forget_job hf
write_job "$WORK/job.yaml" hf hf_src hf_tgt 2000 20000

start_coordinator coord auto "$WORK/job.yaml"
cpid=$CPID
port=$PORT
endpoint="tcp://127.0.0.1:$port"

# Before any worker: the coordinator has nobody else to serve.
"$BF_SPAM" "$endpoint" 10000 1 >"$WORK/spam1.out" 2>"$WORK/spam1.err" ||
    { cat "$WORK/spam1.err"; fail "bf_spam (before workers) exit code $?"; }
grep -q '^sent [0-9]* frames' "$WORK/spam1.out" || fail "bf_spam (before workers) did not report"
kill -0 "$cpid" 2>/dev/null || { tail -n 20 "$WORK/coord.err"; fail "coordinator died under spam"; }

"$BF" worker --connect "$endpoint" 2>"$WORK/w1.err" &
w1=$!
"$BF" worker --connect "$endpoint" 2>"$WORK/w2.err" &
w2=$!
BG_PIDS+=("$w1" "$w2")
for _ in $(seq 1 100); do
    grep -q 'joined coordinator' "$WORK/w1.err" && grep -q 'joined coordinator' "$WORK/w2.err" && break
    sleep 0.1
done
# While they copy.
"$BF_SPAM" "$endpoint" 10000 2 >"$WORK/spam2.out" 2>"$WORK/spam2.err" ||
    { cat "$WORK/spam2.err"; fail "bf_spam (while copying) exit code $?"; }
grep -q '^sent [0-9]* frames' "$WORK/spam2.out" || fail "bf_spam (while copying) did not report"

expect_job_done hf_src hf_tgt w1="$w1" w2="$w2"

# The drops were logged, but rate-limited.
grep -q 'dropped' "$WORK/coord.err" || fail "coordinator logged no dropped frame"
# Every drop is counted and every 1000th logged: about 16,600 of the 20,000 frames
# are malformed (the rest are well-formed with a made-up session), so at least the
# first run's 8,000 and most of the second's must have been read.
dropped=$(grep -o '[0-9]* dropped so far' "$WORK/coord.err" | tail -n 1 | cut -d' ' -f1 || true)
[ "${dropped:-0}" -ge 10000 ] || fail "coordinator counted only ${dropped:-0} dropped frames"
lines=$(wc -l <"$WORK/coord.err")
[ "$lines" -lt 200 ] || { head -n 50 "$WORK/coord.err"; fail "coordinator logged $lines lines (drop log not rate-limited?)"; }
echo "$(cat "$WORK/spam1.out"), $(cat "$WORK/spam2.out"); coordinator logged $lines lines," \
    "$dropped dropped so far"

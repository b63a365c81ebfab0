#!/usr/bin/env bash
# CURVE between coordinator and workers: `backfill keygen` makes the keys; a worker
# whose public key is not in the coordinator's --curve-allow folder is refused and
# the coordinator logs it; a worker without CURVE is refused too; an allowed worker
# copies the job. A relay in front of the coordinator (bf_tap) dumps the bytes on
# the wire: with CURVE none of the protocol's text (message types, the job file
# with its DSNs) is readable; without CURVE, the same dump shows them.
. "$(dirname "$0")/lib.sh"
: "${BF_TAP:?BF_TAP must point to the bf_tap binary}"
fresh_db cv_src cv_tgt
make_monolith cv_src 50000
make_service cv_tgt
forget_job cv
write_job "$WORK/job.yaml" cv cv_src cv_tgt 5000 20000

K=$WORK/keys
mkdir -p "$K/allowed"
for name in coordinator good bad; do
    "$BF" keygen "$K/$name" >/dev/null || fail "keygen $name"
done
cp "$K/good" "$K/allowed/good.key" # the public half only
expect_eq "$(stat -c %a "$K/good_secret")" 600 "mode of the secret key file"
if "$BF" keygen "$K/good" 2>"$WORK/keygen.err"; then fail "keygen overwrote a key"; fi
grep -q 'exists already' "$WORK/keygen.err" || fail "keygen overwrite message"
if "$BF" coordinator "$WORK/job.yaml" --curve-cert "$K/coordinator" 2>"$WORK/half.err"; then
    fail "--curve-cert without --curve-allow accepted"
fi
grep -q 'needs both --curve-cert and --curve-allow' "$WORK/half.err" || fail "half CURVE message"

# tap PORT DUMP: a relay from a free port to the coordinator's; sets TAP_ENDPOINT.
tap() {
    local port
    for _ in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 30000))
        "$BF_TAP" "127.0.0.1:$port" "127.0.0.1:$1" "$2" >"$WORK/tap.out" 2>&1 &
        BG_PIDS+=("$!")
        tapped() { grep -q listening "$WORK/tap.out"; }
        if wait_for 5 tapped; then
            TAP_ENDPOINT="tcp://127.0.0.1:$port"
            return 0
        fi
    done
    fail "bf_tap did not start"
}

start_coordinator coord auto "$WORK/job.yaml" --curve-cert "$K/coordinator" --curve-allow "$K/allowed"
tap "$PORT" "$WORK/wire.bin"
worker() { # NAME ARGS...: a worker through the tap, stderr in NAME.err; sets WPID
    local name=$1
    shift
    "$BF" worker --connect "$TAP_ENDPOINT" "$@" 2>"$WORK/$name.err" &
    WPID=$!
    BG_PIDS+=("$WPID")
}

# No CURVE at all: refused and logged (before any other refusal, so that the line
# is this worker's).
worker plain
PLAIN=$WPID
refused_plain() { grep -q 'refused a connection on .*CURVE handshake failed' "$WORK/coord.err"; }
wait_for 20 refused_plain || { tail "$WORK/coord.err"; fail "a worker without CURVE was not refused"; }
if grep -q 'refused a worker' "$WORK/coord.err"; then fail "a plain worker logged as a wrong key"; fi
# A key the coordinator does not know: refused and logged, never joins.
worker bad --curve-cert "$K/bad" --curve-server "$K/coordinator"
BAD=$WPID
refused() { grep -q 'refused a worker on .*its public key is not in' "$WORK/coord.err"; }
wait_for 20 refused || { tail "$WORK/coord.err"; fail "the unknown worker was not refused and logged"; }
sleep 1
kill "$BAD" "$PLAIN" 2>/dev/null || true
wait "$BAD" "$PLAIN" 2>/dev/null || true
if grep -q 'joined coordinator' "$WORK/bad.err" "$WORK/plain.err"; then fail "a refused worker joined"; fi
if grep -q 'joined (' "$WORK/coord.err"; then fail "the coordinator let a refused worker join"; fi

# The allowed worker copies the whole job.
worker good --curve-cert "$K/good" --curve-server "$K/coordinator"
expect_job_done cv_src cv_tgt good="$WPID"

# On the wire: the ZMTP greeting names the mechanism in clear (the dump saw the
# traffic), but nothing of our messages is readable: field names, the job file
# with its DSNs. (HELLO and WELCOME are also CURVE's own handshake commands, in
# clear by design, so they prove nothing either way.)
grep -aq CURVE "$WORK/wire.bin" || fail "the dump holds no CURVE greeting"
for text in worker_id heartbeat_ms range_id cv_src postgresql:// public.orders; do
    if grep -aq "$text" "$WORK/wire.bin"; then fail "'$text' readable on the wire with CURVE on"; fi
done

# Control: the same without CURVE shows the protocol in clear on the same tap.
forget_job cv
q cv_tgt "TRUNCATE orders, users, notes; DROP TABLE IF EXISTS backfill_fence" >/dev/null
start_coordinator coord2 auto "$WORK/job.yaml"
tap "$PORT" "$WORK/wire2.bin"
worker good2
W2=$WPID
CPID_SAVED=$CPID
wait "$CPID_SAVED" || fail "plain coordinator exit $?"
wait "$W2" || fail "plain worker exit $?"
grep -aq heartbeat_ms "$WORK/wire2.bin" && grep -aq 'postgresql://' "$WORK/wire2.bin" ||
    fail "the control run's dump shows no clear text: the tap did not see the traffic"

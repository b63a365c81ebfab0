#!/usr/bin/env bash
# A worker and a coordinator of different releases refuse each other at their
# first exchange: each side's release runs its own Redis functions against the
# job's state, so HELLO and WELCOME carry the release's functions version (fv).
# - The coordinator answers the HELLO of a worker of another release (or of a
#   release from before HELLO carried fv) with ERR VERSION naming both releases,
#   logs it, and keeps serving its own workers: the job finishes exactly.
# - A worker refused so (ERR VERSION), or WELCOMEd by a coordinator of another release (or one
#   from before WELCOME carried fv), exits 2 saying so, without touching Redis or
#   the targets.
# The other releases are played by bf_peer (tests/tools/bf_peer.c).
. "$(dirname "$0")/lib.sh"
: "${BF_PEER:?BF_PEER must point to the bf_peer tool}"
LUA="$BF_SOURCE_DIR/common/functions.lua"
V=$(sed -n '1s/^#!lua name=backfill_v\([0-9]*\)$/\1/p' "$LUA")
[ -n "$V" ] || fail "functions.lua's first line names no version"
OTHER=$((V + 1))
# start_peer MODE ARGS...: `bf_peer MODE ENDPOINT ARGS...` on a free port (another
# is tried when the port is taken). Sets PEER (its pid) and PEER_EP.
start_peer() {
    local mode=$1
    shift
    for _ in 1 2 3 4 5; do
        PEER_EP="tcp://127.0.0.1:$((20000 + RANDOM % 30000))"
        "$BF_PEER" "$mode" "$PEER_EP" "$@" >"$WORK/peer.out" 2>&1 &
        PEER=$!
        BG_PIDS+=("$PEER")
        for _ in $(seq 1 100); do
            grep -q listening "$WORK/peer.out" && return 0
            kill -0 "$PEER" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$PEER" 2>/dev/null || true
    done
    fail "bf_peer $mode did not start: $(cat "$WORK/peer.out")"
}
fresh_db rm_src rm_tgt
make_monolith rm_src 20000
make_service rm_tgt
forget_job rm
write_job "$WORK/job.yaml" rm rm_src rm_tgt 1000 5000

# The coordinator's side.
start_coordinator coord auto "$WORK/job.yaml"
for fv in 0 "$OTHER"; do
    out=$("$BF_PEER" hello "$ENDPOINT" "$fv") || fail "bf_peer hello $fv: no answer"
    case "$out" in "ERR VERSION "*) ;; *) fail "a HELLO with fv $fv was answered: $out" ;; esac
    if [ "$fv" = 0 ]; then
        want="runs an older release of backfill (0.0.1-old, from before releases said"
    else
        want="runs backfill 9.9.9-peer (Redis functions version $OTHER), this coordinator"
    fi
    case "$out" in *"$want"*) ;; *) fail "the refusal of fv $fv does not say '$want': $out" ;; esac
    case "$out" in *"(Redis functions version $V): the workers and the coordinator of a job must run the same release"*) ;;
    *) fail "the refusal of fv $fv does not name this release: $out" ;; esac
done
grep -q 'refused worker bf-peer-old on peer.invalid runs an older release' "$WORK/coord.err" ||
    fail "the coordinator did not log the refusal: $(tail -5 "$WORK/coord.err")"
grep -q 'joined' "$WORK/coord.err" && fail "a refused worker joined: $(grep joined "$WORK/coord.err")"
# (the same release is welcomed)
out=$("$BF_PEER" hello "$ENDPOINT" "$V") || fail "bf_peer hello $V: no answer"
expect_eq "$out" "WELCOME" "answer to a HELLO of this release"
# Its own workers still join and finish the job (the welcomed bf_peer took no lease:
# it asked for none, and its session is dropped when it falls silent).
start_worker w1
w1=$WPID
start_worker w2
w2=$WPID
expect_job_done rm_src rm_tgt w1="$w1" w2="$w2"

# The worker's side: a coordinator of another release, and one from before
# WELCOME carried fv.
forget_job rm
q rm_tgt "TRUNCATE orders, users, notes, backfill_fence" >/dev/null
keys_before=$(redis_cmd --scan --pattern 'bf:{rm}:*' | wc -l)
for fv in "$OTHER" 0; do
    start_peer coordinator "$fv" "$WORK/job.yaml"
    rc=0
    timeout 30 "$BF" worker --connect "$PEER_EP" >/dev/null 2>"$WORK/wv$fv.err" || rc=$?
    expect_eq "$rc" 2 "exit code of a worker WELCOMEd by a coordinator with fv $fv"
    wait "$PEER" || fail "bf_peer coordinator: $(cat "$WORK/peer.out")"
    if [ "$fv" = 0 ]; then
        want="the coordinator at $PEER_EP runs an older release of backfill (from before releases said"
    else
        want="the coordinator at $PEER_EP runs backfill 9.9.9-peer (Redis functions version $OTHER), this worker"
    fi
    grep -qF "$want" "$WORK/wv$fv.err" || fail "worker of fv $fv: $(cat "$WORK/wv$fv.err")"
    grep -q 'joined coordinator' "$WORK/wv$fv.err" && fail "the worker joined a coordinator of fv $fv"
done
expect_eq "$(redis_cmd --scan --pattern 'bf:{rm}:*' | wc -l)" "$keys_before" "job keys in redis after the refused workers"
expect_eq "$(q rm_tgt "SELECT count(*) FROM orders")" 0 "rows the refused workers wrote"

# A worker refused by its coordinator (ERR VERSION, as the coordinator above
# answered bf_peer) exits 2 at once with the coordinator's words, instead of
# saying HELLO again.
start_peer refuse
rc=0
timeout 30 "$BF" worker --connect "$PEER_EP" >/dev/null 2>"$WORK/wref.err" || rc=$?
expect_eq "$rc" 2 "exit code of a worker refused by its coordinator"
wait "$PEER" || fail "bf_peer refuse: $(cat "$WORK/peer.out")"
grep -qF "the coordinator at $PEER_EP refuses this worker: bf_peer refuses worker" "$WORK/wref.err" ||
    fail "refused worker: $(cat "$WORK/wref.err")"

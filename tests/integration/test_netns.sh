#!/usr/bin/env bash
# Across machines, simulated with Linux network namespaces: the coordinator in one
# namespace, two workers in two others, joined by a bridge and talking TCP with
# CURVE on. PostgreSQL and Redis stay on the host's loopback; relays (bf_tap) on
# the bridge address forward to them, as a database host would be reached. Skips
# (exit 77) where namespaces cannot be made (not root, no CAP_NET_ADMIN, a
# container) and says why.
. "$(dirname "$0")/lib.sh"
: "${BF_TAP:?BF_TAP must point to the bf_tap binary}"
[ "$(id -u)" = 0 ] || skip "network namespaces need root"
command -v ip >/dev/null || skip "no ip(8) (iproute2)"
S=$$
BR=bfbr$S NSC=bfc$S NS1=bfw1$S NS2=bfw2$S NET=10.231.$((S % 200 + 20))
ip netns add "$NSC" 2>"$WORK/netns.err" || skip "cannot create a network namespace: $(cat "$WORK/netns.err")"
CLEANUP_CMDS+=("ip netns del $NSC")
ip link add "$BR" type bridge 2>"$WORK/br.err" || skip "cannot create a bridge: $(cat "$WORK/br.err")"
CLEANUP_CMDS+=("ip link del $BR")
ip addr add "$NET.1/24" dev "$BR"
ip link set "$BR" up
n=2
for ns in "$NSC" "$NS1" "$NS2"; do
    [ "$ns" = "$NSC" ] || { ip netns add "$ns" && CLEANUP_CMDS+=("ip netns del $ns"); }
    ip link add "vh$n$S" type veth peer name "vn$n$S"
    ip link set "vn$n$S" netns "$ns"
    ip link set "vh$n$S" master "$BR" up
    ip netns exec "$ns" ip addr add "$NET.$n/24" dev "vn$n$S"
    ip netns exec "$ns" ip link set "vn$n$S" up
    ip netns exec "$ns" ip link set lo up
    n=$((n + 1))
done
COORD=$NET.2

# The servers, reachable on the bridge.
"$BF_TAP" "$NET.1:$BF_PGPORT" "127.0.0.1:$BF_PGPORT" >"$WORK/tap_pg.out" 2>&1 &
BG_PIDS+=("$!")
"$BF_TAP" "$NET.1:$BF_REDIS_PORT" "127.0.0.1:$BF_REDIS_PORT" >"$WORK/tap_redis.out" 2>&1 &
BG_PIDS+=("$!")
taps_up() { grep -q listening "$WORK/tap_pg.out" && grep -q listening "$WORK/tap_redis.out"; }
wait_for 10 taps_up || fail "relays did not start: $(cat "$WORK"/tap_*.out)"
reach() { timeout 3 ip netns exec "$NS1" bash -c "exec 3<>/dev/tcp/$NET.1/$BF_PGPORT"; }
reach || skip "namespaces cannot reach each other over the bridge (filtered by the host?)"

fresh_db nn_src nn_tgt
make_monolith nn_src 100000
make_service nn_tgt
forget_job nn
JOB_REDIS="redis://$NET.1:$BF_REDIS_PORT/0" \
    JOB_TARGET="postgresql://$BF_PGUSER@$NET.1:$BF_PGPORT/nn_tgt" \
    write_job "$WORK/job.yaml" nn nn_src nn_tgt 5000 20000
sed -i "s#^source: .*#source: postgresql://$BF_PGUSER@$NET.1:$BF_PGPORT/nn_src#" "$WORK/job.yaml"

K=$WORK/keys
mkdir -p "$K/allowed"
for name in coordinator w1 w2; do "$BF" keygen "$K/$name" >/dev/null; done
cp "$K/w1" "$K/allowed/w1.key"
cp "$K/w2" "$K/allowed/w2.key"

ip netns exec "$NSC" "$BF" coordinator "$WORK/job.yaml" --bind "tcp://$COORD:5570" \
    --curve-cert "$K/coordinator" --curve-allow "$K/allowed" >"$WORK/coord.out" 2>"$WORK/coord.err" &
CPID=$!
BG_PIDS+=("$CPID")
listening() { grep -q 'coordinator listening' "$WORK/coord.err"; }
wait_for 60 listening || { cat "$WORK/coord.err"; fail "coordinator did not start in its namespace"; }
grep -q 'CURVE on' "$WORK/coord.err" || fail "CURVE is not on"
ip netns exec "$NS1" "$BF" worker --connect "tcp://$COORD:5570" --curve-cert "$K/w1" \
    --curve-server "$K/coordinator" 2>"$WORK/w1.err" &
W1=$!
BG_PIDS+=("$W1")
ip netns exec "$NS2" "$BF" worker --connect "tcp://$COORD:5570" --curve-cert "$K/w2" \
    --curve-server "$K/coordinator" 2>"$WORK/w2.err" &
W2=$!
BG_PIDS+=("$W2")
expect_job_done nn_src nn_tgt w1="$W1" w2="$W2"
# Both hosts copied rows.
for w in w1 w2; do
    grep -q 'copied by this worker' "$WORK/$w.err" || fail "$w did not finish"
    if grep -q ' 0 rows copied by this worker' "$WORK/$w.err"; then fail "$w copied nothing"; fi
done
grep -q "worker .* joined (2 connected)" "$WORK/coord.err" || fail "not both workers joined"

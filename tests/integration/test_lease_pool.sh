#!/usr/bin/env bash
# The coordinator's pool of leases taken ahead (its leaser thread), driven by
# simulated workers (bf_simworkers: many small ranges, so that hand-outs run at
# hundreds per second and the pool fills):
#  1. a coordinator that stops (SIGTERM) puts its pool back to pending;
#  2. one killed (-9) leaves its pool leased under its name; the next coordinator
#     puts that pool back at start, long before the leases would expire, and
#     leaves the leases of workers alone;
#  3. `status` counts a pool as pending, a worker's lease as leased; a coordinator
#     that cannot bind its port leaves a pool alone; a worker on a host called
#     "coordinator" is not taken for a pool;
#  4. every range ends done by a worker, named as such (not by the pool).
. "$(dirname "$0")/lib.sh"
: "${BF_SIMWORKERS:?BF_SIMWORKERS must point to bf_simworkers}"
fresh_db lp_src lp_tgt
q lp_src "CREATE TABLE r (id bigint PRIMARY KEY); INSERT INTO r SELECT generate_series(1, 20000)"
q lp_tgt "CREATE TABLE r (id bigint PRIMARY KEY)"
forget_job lpj
cat >"$WORK/job.yaml" <<YAML
name: lpj
source: $(uri lp_src)
redis: $BF_REDIS_URL
targets:
  tgt: $(uri lp_tgt)
range_rows: 1
tables:
  - from: r
    to: tgt.r
YAML
NR=20000

# leases_owned PREFIX: leased ranges whose owner starts with PREFIX.
leases_owned() {
    redis_cmd EVAL "local n = 0
        for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
          local o = redis.call('HGET', 'bf:{lpj}:range:' .. id, 'owner') or ''
          if string.sub(o, 1, #ARGV[1]) == ARGV[1] then n = n + 1 end
        end
        return n" 1 'bf:{lpj}:leases' "$1"
}
pending() { redis_cmd ZCARD 'bf:{lpj}:pending'; }
# sim RATE SECONDS: simulated workers against the coordinator for that long (or
# until the job is done); their pid in SIM.
sim() {
    "$BF_SIMWORKERS" --connect "$ENDPOINT" --workers 20 --redis "$BF_REDIS_URL" --job lpj \
        --rate "$1" >>"$WORK/sim.out" 2>>"$WORK/sim.err" &
    SIM=$!
    BG_PIDS+=("$SIM")
}

# 1. A clean stop returns the pool.
start_coordinator c1 auto "$WORK/job.yaml" --lease-ttl 10
c1=$CPID
sim 1000
sleep 2
pooled=$(leases_owned @coordinator:)
echo "while running: $pooled leases pooled, $(leases_owned sim-) held by workers"
[ "$pooled" -gt 0 ] || fail "no pool at 1,000 hand-outs per second"
kill -TERM "$c1"
wait "$c1" 2>/dev/null || true
kill -9 "$SIM" 2>/dev/null || true
wait "$SIM" 2>/dev/null || true
expect_eq "$(leases_owned @coordinator:)" 0 "pooled leases after the coordinator stopped"

# 2. A killed coordinator's pool is put back by the next one, at start.
start_coordinator c2 auto "$WORK/job.yaml" --lease-ttl 10
c2=$CPID
sim 1000
sleep 2
kill -9 "$c2"
wait "$c2" 2>/dev/null || true
kill -9 "$SIM" 2>/dev/null || true
wait "$SIM" 2>/dev/null || true
left=$(leases_owned @coordinator:)
echo "after kill -9: $left leases pooled"
[ "$left" -gt 0 ] || fail "the killed coordinator had no pool"
# A coordinator that cannot bind (here: PostgreSQL's port; in life, perhaps a
# running coordinator's) leaves the pool alone.
if "$BF" coordinator "$WORK/job.yaml" --bind "tcp://127.0.0.1:$BF_PGPORT" \
    >"$WORK/nobind.out" 2>"$WORK/nobind.err"; then
    fail "a coordinator bound a taken port"
fi
grep -q 'cannot bind' "$WORK/nobind.err" || { cat "$WORK/nobind.err" >&2; fail "no bind error"; }
expect_eq "$(leases_owned @coordinator:)" "$left" "pooled leases after a coordinator failed to bind"
# Workers that outlive the coordinator hold leases (taken here by hand), one on a
# host named "coordinator" (worker ids are host:pid:tag).
mapfile -t held < <(redis_cmd FCALL bf_lease 1 'bf:{lpj}:meta' 600000 held-by-worker)
[ "${#held[@]}" -eq 7 ] || fail "could not take a lease by hand: ${held[*]}"
mapfile -t held2 < <(redis_cmd FCALL bf_lease 1 'bf:{lpj}:meta' 600000 coordinator:4242:beef)
[ "${#held2[@]}" -eq 7 ] || fail "could not take a lease by hand: ${held2[*]}"
# status: the dead coordinator's pool is pending (no worker copies it), the
# worker's lease is leased.
# (A simulated worker killed between its LEASE and its checkpoint holds one too.)
simheld=$(leases_owned sim-)
"$BF" status "$WORK/job.yaml" --json >"$WORK/status.json"
expect_eq "$(sed -n 's/.*"leased":\([0-9]*\).*/\1/p' "$WORK/status.json")" "$((2 + simheld))" \
    "leased ranges in status (2 by hand, $simheld of killed simulated workers)"
expect_eq "$(sed -n 's/.*"pending":\([0-9]*\).*/\1/p' "$WORK/status.json")" \
    "$(($(pending) + left))" "pending ranges in status (pending set and the pool)"
start_coordinator c3 auto "$WORK/job.yaml" --lease-ttl 10
c3=$CPID
grep -q "$left ranges an earlier coordinator had leased ahead are pending again" "$WORK/c3.err" ||
    { cat "$WORK/c3.err" >&2; fail "the new coordinator did not put the old pool back"; }
expect_eq "$(leases_owned @coordinator:)" 0 "leases of the killed coordinator's pool"
expect_eq "$(leases_owned held-by-worker)" 1 "the worker's lease"
expect_eq "$(leases_owned coordinator:4242:)" 1 "the lease of the worker on host 'coordinator'"
# Those workers give their ranges back (clean hand-back, not an attempt).
expect_eq "$(redis_cmd FCALL bf_release 1 'bf:{lpj}:meta' "${held[0]}" "${held[1]}" '' 0 5)" \
    PENDING "hand-back"
expect_eq "$(redis_cmd FCALL bf_release 1 'bf:{lpj}:meta' "${held2[0]}" "${held2[1]}" '' 0 5)" \
    PENDING "hand-back"

# 4. The rest of the job.
sim 2000
wait "$c3" || { tail "$WORK/c3.err" >&2; fail "coordinator exit code $?"; }
wait "$SIM" 2>/dev/null || true
expect_eq "$(redis_cmd HGET 'bf:{lpj}:stats' done_total)" "$NR" "ranges done"
expect_eq "$(redis_cmd ZCARD 'bf:{lpj}:leases')" 0 "leases left"
bad=$(redis_cmd EVAL "local n = 0
    for id = 0, tonumber(ARGV[1]) - 1 do
      local d = redis.call('HGET', 'bf:{lpj}:range:' .. id, 'done_by') or ''
      if string.sub(d, 1, 4) ~= 'sim-' then n = n + 1 end
    end
    return n" 0 "$NR")
expect_eq "$bad" 0 "ranges not done by a named worker"
forget_job lpj

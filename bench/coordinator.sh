#!/usr/bin/env bash
# Coordinator at scale: a real `backfill coordinator` serving simulated workers
# (build/bf_simworkers: each simulated worker a TCP connection speaking ZMTP, plus
# Redis; no databases on the workers' side).
#
#   bench/coordinator.sh [--workers 1000] [--ranges 100000] [--plan-ranges 1000000]
#                        [--rate 20000] [--out F.md]
#
# 1. Plans a job of --plan-ranges ranges (a one-column bigint table of that many
#    rows, range_rows 1) and reports how long the coordinator takes from start to
#    listening: planning plus storing the plan in Redis.
# 2. Starts a coordinator on a job of --ranges ranges, connects --workers simulated
#    workers over TCP; each asks for one lease at a time, records it finished in
#    Redis (bf_checkpoint, as a real worker's last batch does) and says DONE.
#    a. saturated: every worker asks again at once; the most hand-outs per second
#       the coordinator manages (the latency is then the queue of 1,000 requests);
#    b. paced: the workers ask for --rate leases per second in all, each on a fixed
#       timetable; the latency of each request (p50, p99, max) counts from when
#       the timetable asked it, so a coordinator falling behind is charged for it.
#    Reports hand-outs per second, latencies and the coordinator's peak RSS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORKERS=1000
RANGES=100000
PLAN_RANGES=1000000
RATE=20000
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --ranges) RANGES=$2; shift 2 ;;
    --plan-ranges) PLAN_RANGES=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
    esac
done
BF=${BF:-build/backfill}
SIM=${BF_SIMWORKERS:-build/bf_simworkers}
for b in "$BF" "$SIM"; do
    [ -x "$b" ] || { echo "bench: $b not built; run ./bootstrap.sh test or cmake first" >&2; exit 2; }
done
export PGOPTIONS="-c client_min_messages=warning"
DIR=$(mktemp -d /tmp/bf-cbench.XXXXXX)
rmdir "$DIR"
CPID=""
cleanup() {
    [ -z "$CPID" ] || kill "$CPID" 2>/dev/null || true
    pkill -f "coordinator $DIR/" 2>/dev/null || true # one a failed simulate() left
    "$BF" sandbox stop --dir "$DIR" >/dev/null 2>&1 || true
    rm -rf "$DIR" # the bench's own files (job, logs) are left after the servers go
}
trap cleanup EXIT
"$BF" sandbox start --dir "$DIR" 2>/dev/null
# shellcheck disable=SC1091
. "$DIR/env"
q() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BF_PGPORT" -U "$BF_PGUSER" -d "$1" -c "$2"; }
now() { date +%s.%N; }
q postgres "CREATE DATABASE cb_src" >/dev/null
q postgres "CREATE DATABASE cb_tgt" >/dev/null
for n in $(printf "%s\n" "$RANGES" "$PLAN_RANGES" | sort -u); do
    q cb_src "CREATE TABLE r$n (id bigint PRIMARY KEY);
        INSERT INTO r$n SELECT g FROM generate_series(1, $n) g" >/dev/null
    q cb_src "VACUUM ANALYZE r$n" >/dev/null
    q cb_tgt "CREATE TABLE r$n (id bigint PRIMARY KEY)" >/dev/null
done
job() { # job NAME TABLE
    cat <<YAML
name: $1
source: postgresql://$BF_PGUSER@127.0.0.1:$BF_PGPORT/cb_src
redis: $BF_REDIS_URL
targets:
  tgt: postgresql://$BF_PGUSER@127.0.0.1:$BF_PGPORT/cb_tgt
range_rows: 1
tables:
  - from: $2
    to: tgt.$2
YAML
}
# start_coordinator NAME: in the background on a free port; sets CPID, PORT.
start_coordinator() {
    for _ in 1 2 3 4 5; do
        PORT=$((20000 + RANDOM % 30000))
        "$BF" coordinator "$DIR/$1.yaml" --bind "tcp://127.0.0.1:$PORT" --lease-ttl 60 \
            --log-level warn >"$DIR/$1.out" 2>"$DIR/$1.err" &
        CPID=$!
        while kill -0 "$CPID" 2>/dev/null; do
            ss -ltn 2>/dev/null | grep -q ":$PORT " && return 0
            sleep 0.05
        done
        CPID=""
        grep -q 'cannot bind' "$DIR/$1.err" || { cat "$DIR/$1.err" >&2; exit 1; }
    done
    echo "bench: no free port" >&2
    exit 1
}

echo "bench: planning $PLAN_RANGES ranges" >&2
job plan "r$PLAN_RANGES" >"$DIR/plan.yaml"
t0=$(now)
start_coordinator plan
t1=$(now)
kill "$CPID"
wait "$CPID" 2>/dev/null || true
CPID=""
PLANNED=$(redis-cli -p "$BF_REDIS_PORT" HGET 'bf:{plan}:meta' nranges)
PLAN_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
redis-cli -p "$BF_REDIS_PORT" FLUSHALL >/dev/null

job scale "r$RANGES" >"$DIR/scale.yaml"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# simulate RATE: a fresh plan of RANGES ranges, a coordinator, the simulated
# workers asking RATE leases/s in all (0 = as fast as they are answered); prints
# the simulator's key=value line.
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }
# Redis's CPU seconds so far (all its threads).
redis_cpu() {
    redis-cli -p "$BF_REDIS_PORT" INFO cpu |
        awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.3f", s }'
}
simulate() {
    redis-cli -p "$BF_REDIS_PORT" FLUSHALL >/dev/null
    start_coordinator scale
    local out r0 r1
    r0=$(redis_cpu)
    # (set -e does not hold in a command substitution: check each step.)
    out=$("$SIM" --connect "tcp://127.0.0.1:$PORT" --workers "$WORKERS" --redis "$BF_REDIS_URL" \
        --job scale --pid "$CPID" --rate "$1") ||
        {
            kill "$CPID"
            echo "$out" >&2
            tail -5 "$DIR/scale.err" >&2
            echo "bench: simulated workers failed" >&2
            exit 1
        }
    wait "$CPID" || { tail -5 "$DIR/scale.err" >&2; echo "bench: coordinator failed" >&2; exit 1; }
    CPID=""
    r1=$(redis_cpu)
    # Redis's share over the simulator's measured span (its connecting phase is idle).
    echo "$out redis_cpu_pct=$(awk -v a="$r0" -v b="$r1" -v w="$(field cpu_wall_s "$out")" \
        'BEGIN { if (w > 0) printf "%.0f", 100 * (b - a) / w; else printf "-" }')"
}
echo "bench: $WORKERS simulated workers, $RANGES ranges, saturated" >&2
SAT=$(simulate 0)
echo "bench: $WORKERS simulated workers, $RANGES ranges, asking $RATE leases/s" >&2
PACED=$(simulate "$RATE")
rss() { awk -v a="$(field coordinator_rss_mb "$SAT")" -v b="$(field coordinator_rss_mb "$PACED")" \
    'BEGIN { print (a > b ? a : b) }'; }
{
    echo "| coordinator | value |"
    echo "|---|---|"
    echo "| plan + store $PLANNED ranges (start to listening) | $PLAN_S s |"
    echo "| simulated workers connected | $(field workers "$SAT") |"
    echo "| saturated: ranges leased and finished | $(field finished "$SAT") / $(field ranges "$SAT") |"
    echo "| saturated: lease hand-outs per second | $(field leases_per_s "$SAT") |"
    echo "| saturated: CREDIT to LEASE p50 / p99 (a queue of $WORKERS requests) | $(field p50_ms "$SAT") / $(field p99_ms "$SAT") ms |"
    echo "| paced at $RATE leases/s: ranges leased and finished | $(field finished "$PACED") / $(field ranges "$PACED") |"
    echo "| paced at $RATE leases/s: lease hand-outs per second | $(field leases_per_s "$PACED") |"
    echo "| paced at $RATE leases/s: latency from the asked time p50 / p99 / max | $(field p50_ms "$PACED") / $(field p99_ms "$PACED") / $(field max_ms "$PACED") ms |"
    echo "| paced at $RATE leases/s: CPU, % of one core: coordinator / Redis / simulated workers | $(field coordinator_cpu_pct "$PACED") / $(field redis_cpu_pct "$PACED") / $(field sim_cpu_pct "$PACED") |"
    echo "| coordinator peak RSS | $(rss) MB |"
    echo
    echo "$(nproc) cores; Redis $(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p'); $(date -u +%Y-%m-%d)"
} | tee "${OUT:-/dev/null}"

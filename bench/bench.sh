#!/usr/bin/env bash
# Throughput benchmark: backfill against a raw binary COPY pipe, measured in the
# same run on the same throwaway PostgreSQL (absolute numbers drift on shared
# machines; the ratios are what to compare).
#
#   bench/bench.sh [--rows N] [--workers "1 2 4"] [--modes "insert upsert"]
#                  [--wide-rows N] [--skew-rows N] [--no-pgcopydb] [--no-coordinator]
#                  [--rounds N] [--out FILE.md]
#
# Creates a Django-style trading_order table (bigint id, text, numeric, jsonb,
# timestamps; about 200 bytes a row, as in DESIGN.md), then measures:
#   pipe        COPY (binary) TO STDOUT | COPY FROM STDIN, one stream (the ceiling)
#   pipe-text   the same in text format
#   staging     COPY into a staging table + INSERT ... ON CONFLICT DO UPDATE
#   pgcopydb    `pgcopydb copy table-data`, 4 table jobs, the table split 4 ways
#               (when installed; installed from Debian when run as root)
#   backfill    `backfill run` in each mode with each worker count
#   wide rows   --wide-rows rows of 1 MB jsonb with 2 workers: worker peak RSS
#   skewed      --skew-rows rows (default: --rows) with 90% of them in the last 1%
#               of the key space, 4 workers, as the planner splits it and as one
#               range: each worker's busy time (straggler splitting keeps them all
#               busy to the end) and the splits made
# and prints a Markdown table (also written to --out) with rows/s, MB/s, the ratio
# to the pipe, the share of the machine's CPU busy meanwhile, worker CPU seconds
# per million rows and peak RSS (worker and coordinator). The pipes, pgcopydb and
# backfill insert run --rounds times (default 3), taking turns, and each keeps its
# fastest run: the machine is shared and has slow spells of tens of seconds. Upsert runs start from a target holding every row (all updates).
# Then, its servers stopped, it runs bench/coordinator.sh (1,000 simulated
# workers, 100,000 ranges, a 1M-range plan) and adds that table, unless
# --no-coordinator.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROWS=3000000
WORKERS="1 2 4"
MODES="insert upsert"
WIDE_ROWS=200
SKEW_ROWS=""
PGCOPYDB=1
COORDINATOR=1
ROUNDS=3
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
    --rows) ROWS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --wide-rows) WIDE_ROWS=$2; shift 2 ;;
    --skew-rows) SKEW_ROWS=$2; shift 2 ;;
    --no-pgcopydb) PGCOPYDB=0; shift ;;
    --no-coordinator) COORDINATOR=0; shift ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
    esac
done

SKEW_ROWS=${SKEW_ROWS:-$ROWS}
BF=${BF:-build/backfill}
export PGOPTIONS="-c client_min_messages=warning"
[ -x "$BF" ] || { echo "bench: $BF not built; run ./bootstrap.sh test or cmake first" >&2; exit 2; }
DIR=$(mktemp -d /tmp/bf-bench.XXXXXX)
rmdir "$DIR"
cleanup() { # the servers, then the bench's own files (job, logs)
    "$BF" sandbox stop --dir "$DIR" >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
"$BF" sandbox start --dir "$DIR" 2>/dev/null
# shellcheck disable=SC1091
. "$DIR/env"
q() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BF_PGPORT" -U "$BF_PGUSER" -d "$1" -c "$2"; }
now() { date +%s.%N; }
# The machine's CPU counters (busy, all) in jiffies: a path's share of both cores.
cpustat() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat; }
# mark0 / mark1: the start and end of a timed path (T0, T1; BUSY: % of all cores
# busy in between, whatever process it was).
mark0() { read -r B0 A0 < <(cpustat); T0=$(now); }
mark1() {
    T1=$(now)
    read -r B1 A1 < <(cpustat)
    BUSY=$(awk -v b=$((B1 - B0)) -v a=$((A1 - A0)) 'BEGIN { if (a > 0) printf "%.0f", 100 * b / a; else printf "-" }')
}

TABLE_DDL="(id bigint PRIMARY KEY, user_id integer NOT NULL, symbol text NOT NULL,
    side smallint NOT NULL, quantity numeric(18,8) NOT NULL, price numeric(18,8) NOT NULL,
    status smallint NOT NULL, client_order_id text NOT NULL, metadata jsonb,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)"
echo "bench: creating $ROWS rows" >&2
q postgres "CREATE DATABASE bench_src" >/dev/null
q postgres "CREATE DATABASE bench_tgt" >/dev/null
q bench_src "CREATE TABLE trading_order $TABLE_DDL;
INSERT INTO trading_order SELECT g, 1 + g % 100000, (ARRAY['BTC-USD','ETH-USD','SOL-USD'])[1 + g % 3],
    g % 2, (g % 1000) / 7.0, 100 + (g % 977) * 1.5, g % 5, md5(g::text),
    jsonb_build_object('channel', 'web', 'ip', '10.0.' || (g % 255) || '.1', 'n', g),
    '2021-01-01'::timestamptz + g * interval '1 second',
    '2021-01-01'::timestamptz + g * interval '2 second' FROM generate_series(1, $ROWS) g" >/dev/null
q bench_src "VACUUM ANALYZE trading_order" >/dev/null
q bench_tgt "CREATE TABLE trading_order $TABLE_DDL" >/dev/null
BYTES=$(q bench_src "SELECT pg_table_size('trading_order')")

NAMES=() RATES=() MBS=() CPUS=() RSS=() CRSS=() BUSYS=()
PIPE_RATE=0
STAGING_RATE=0
PGCOPYDB_RATE=0 # 4 jobs
PGCOPYDB_BEST=0
PGCOPYDB_BEST_JOBS=0
PGCOPYDB_BEST_IDX=""
declare -A PGC
declare -A IDX # path name -> its row in the table
# record NAME SECONDS [CPU_S] [WORKER_RSS_MB] [COORDINATOR_RSS_MB]: one timed run of a
# path; the table keeps each path's fastest run of the rounds. Sets RATE to that
# best rate (rows/s).
record() {
    local mb cpu="-" rss="-" crss="-" rate i
    rate=$(awk -v r="$ROWS" -v s="$2" 'BEGIN { printf "%.0f", r / s }')
    mb=$(awk -v b="$BYTES" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1e6 }')
    [ -n "${3:-}" ] && cpu=$(awk -v c="$3" -v r="$ROWS" 'BEGIN { printf "%.1f", c / (r / 1e6) }')
    [ -n "${4:-}" ] && rss=$4
    [ -n "${5:-}" ] && crss=$5
    i=${IDX[$1]:-}
    if [ -z "$i" ]; then
        i=${#NAMES[@]}
        IDX[$1]=$i
        NAMES+=("$1"); RATES+=(0); MBS+=(-); CPUS+=(-); BUSYS+=(-); RSS+=(-); CRSS+=(-)
    fi
    if [ "$rate" -gt "${RATES[$i]}" ]; then
        RATES[i]=$rate; MBS[i]=$mb; CPUS[i]=$cpu; BUSYS[i]=${BUSY:--}; RSS[i]=$rss; CRSS[i]=$crss
    fi
    RATE=${RATES[$i]}
    LAST_IDX=$i
    [ "$1" = "pipe (binary COPY)" ] && PIPE_RATE=$RATE
    echo "bench: $1: $rate rows/s (x$(ratio "$rate" "$PIPE_RATE")), round $ROUND" >&2
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
NCPU=$(nproc)
# cpu_per_m I: CPU seconds (all processes, all cores) per million rows of the
# path in row I of the table, from its best run's rate and busy share.
cpu_per_m() {
    awk -v b="${BUSYS[$1]}" -v r="${RATES[$1]}" -v n="$NCPU" \
        'BEGIN { if (b != "-" && r > 0) printf "%.2f", b / 100 * n * 1e6 / r; else printf "-" }'
}
# A fresh target table for each timed path: one path's leftovers (pgcopydb ends
# with VACUUM ANALYZE, whose statistics a TRUNCATE keeps) do not carry over.
reset_target() {
    q bench_tgt "DROP TABLE IF EXISTS trading_order; CREATE TABLE trading_order $TABLE_DDL; CHECKPOINT" >/dev/null
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }

PSQL=(psql -X -q -h 127.0.0.1 -p "$BF_PGPORT" -U "$BF_PGUSER")
run_pipes() {
    for fmt in binary text; do
        reset_target
        mark0
        "${PSQL[@]}" -d bench_src -c "COPY trading_order TO STDOUT (FORMAT $fmt)" |
            "${PSQL[@]}" -d bench_tgt -c "COPY trading_order FROM STDIN (FORMAT $fmt)"
        mark1
        record "pipe ($fmt COPY)" "$(elapsed "$T0" "$T1")"
    done
}

# The staging pipe writes over a full target (every row an update), as upsert does.
run_staging() {
    mark0
    "${PSQL[@]}" -d bench_src -c "COPY trading_order TO STDOUT (FORMAT binary)" |
        "${PSQL[@]}" -d bench_tgt -c "CREATE UNLOGGED TABLE staging (LIKE trading_order);" \
            -c "COPY staging FROM STDIN (FORMAT binary)" \
            -c "INSERT INTO trading_order SELECT * FROM staging ON CONFLICT (id) DO UPDATE SET
                user_id = excluded.user_id, symbol = excluded.symbol, side = excluded.side,
                quantity = excluded.quantity, price = excluded.price, status = excluded.status,
                client_order_id = excluded.client_order_id, metadata = excluded.metadata,
                created_at = excluded.created_at, updated_at = excluded.updated_at" \
            -c "DROP TABLE staging"
    mark1
    record "staging + ON CONFLICT (target full)" "$(elapsed "$T0" "$T1")"
    STAGING_RATE=$RATE
}

if [ "$PGCOPYDB" = 1 ] && ! command -v pgcopydb >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "bench: installing pgcopydb (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgcopydb >/dev/null 2>&1 || true
fi
# pgcopydb with 4 jobs (DESIGN.md's anchor) and with 2 (one per core), the table
# split as many ways: the fastest of the two is compared with backfill's fastest.
run_pgcopydb() {
    if [ "$PGCOPYDB" = 1 ] && command -v pgcopydb >/dev/null; then
        for jobs in 4 2; do
            reset_target
            rm -rf "$DIR/pgcopydb"
            mark0
            PGCOPYDB_SPLIT_TABLES_LARGER_THAN="$((BYTES / jobs / 1000000)) MB" pgcopydb copy table-data \
                --source "postgresql://$BF_PGUSER@127.0.0.1:$BF_PGPORT/bench_src" \
                --target "postgresql://$BF_PGUSER@127.0.0.1:$BF_PGPORT/bench_tgt" \
                --table-jobs "$jobs" --dir "$DIR/pgcopydb" >"$DIR/pgcopydb.log" 2>&1 ||
                { tail -5 "$DIR/pgcopydb.log" >&2; echo "bench: pgcopydb failed" >&2; exit 1; }
            mark1
            got=$(q bench_tgt "SELECT count(*) FROM trading_order")
            [ "$got" = "$ROWS" ] || { echo "bench: pgcopydb copied $got rows of $ROWS" >&2; exit 1; }
            parts=$(grep -c 'COPY (SELECT .* BETWEEN' "$DIR/pgcopydb.log" || true)
            record "pgcopydb copy table-data, $jobs jobs, table in $parts parts" "$(elapsed "$T0" "$T1")"
            PGC[$jobs]=$RATE
            if [ "${RATE%.*}" -gt "${PGCOPYDB_BEST%.*}" ]; then
                PGCOPYDB_BEST=$RATE
                PGCOPYDB_BEST_JOBS=$jobs
                PGCOPYDB_BEST_IDX=$LAST_IDX
            fi
        done
        PGCOPYDB_RATE=${PGC[4]}
    fi
}

# run_backfill LABEL WORKERS MODE TABLE: one `backfill run` from a fresh job state.
run_backfill() {
    redis-cli -p "$BF_REDIS_PORT" FLUSHALL >/dev/null
    q bench_tgt "DROP TABLE IF EXISTS backfill_fence" >/dev/null
    cat >"$DIR/job.yaml" <<YAML
name: bench
source: postgresql://$BF_PGUSER@127.0.0.1:$BF_PGPORT/bench_src
redis: $BF_REDIS_URL
targets:
  tgt: postgresql://$BF_PGUSER@127.0.0.1:$BF_PGPORT/bench_tgt
batch_rows: 20000
range_rows: ${RANGE_ROWS:-$(((ROWS + 4 * $2 - 1) / (4 * $2)))}
tables:
  - from: $4
    to: tgt.$4
    mode: $3
YAML
    mark0
    "$BF" run "$DIR/job.yaml" --workers "$2" --log-level "${RUN_LOG:-warn}" >"$DIR/run.out" \
        2>"$DIR/run.err" || { tail -20 "$DIR/run.err" >&2; echo "bench: run failed" >&2; exit 1; }
    mark1
    RUN_SECS=$(elapsed "$T0" "$T1")
    RUN_CPU=$(sed -n 's/.*workers cpu \([0-9.]*\) s.*/\1/p' "$DIR/run.out")
    RUN_RSS=$(sed -n 's/.*worker peak rss \([0-9.]*\) MB.*/\1/p' "$DIR/run.out")
    RUN_CRSS=$(sed -n 's/.*coordinator peak rss \([0-9.]*\) MB.*/\1/p' "$DIR/run.out")
}

declare -A BEST
run_mode() { # MODE: backfill in that mode with each worker count
    for w in $WORKERS; do
        # insert starts from an empty target; upsert overwrites every row.
        [ "$1" = insert ] && reset_target
        run_backfill "$1" "$w" "$1" trading_order
        record "backfill $1, $w workers" "$RUN_SECS" "$RUN_CPU" "$RUN_RSS" "$RUN_CRSS"
        BEST[$1/$w]=$RATE
    done
}

# Rounds: the pipes, pgcopydb and backfill insert take turns, so that the machine's
# slow and fast spells (it is shared) fall on all of them; each keeps its fastest
# run. The slow paths (staging, upsert) run once.
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    run_pipes
    [ "$ROUND" -gt 1 ] || run_staging
    run_pgcopydb
    case " $MODES " in *" insert "*) run_mode insert ;; esac
done
ROUND=1
for mode in $MODES; do
    [ "$mode" = insert ] || run_mode "$mode"
done
if [ -n "$MODES" ]; then
    "$BF" verify "$DIR/job.yaml" >/dev/null || { echo "bench: verify failed" >&2; exit 1; }
fi

WIDE=""
if [ "$WIDE_ROWS" -gt 0 ]; then
    # 1 MB jsonb documents (incompressible text so TOAST keeps them large).
    q bench_src "CREATE TABLE wide (id bigint PRIMARY KEY, doc jsonb NOT NULL);
        ALTER TABLE wide ALTER doc SET STORAGE EXTERNAL" >/dev/null
    q bench_src "INSERT INTO wide SELECT g, jsonb_build_object('blob',
        (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 32768) i))
        FROM generate_series(1, $WIDE_ROWS) g" >/dev/null
    q bench_tgt "CREATE TABLE wide (id bigint PRIMARY KEY, doc jsonb NOT NULL)" >/dev/null
    run_backfill wide 2 insert wide
    got=$(q bench_tgt "SELECT count(*) FROM wide")
    [ "$got" = "$WIDE_ROWS" ] || { echo "bench: wide copied $got rows of $WIDE_ROWS" >&2; exit 1; }
    WIDE="$WIDE_ROWS rows of $(q bench_src "SELECT round(avg(octet_length(doc::text)) / 1e6, 2) FROM wide") MB jsonb, 2 workers: $RUN_SECS s, worker peak RSS $RUN_RSS MB"
    echo "bench: wide rows: $WIDE" >&2
fi

SKEW=""
if [ "$SKEW_ROWS" -gt 0 ]; then
    # Keys 990, 1980, ... for the first 10% of the rows (99% of the key space),
    # then dense: 90% of the rows in the last 1%.
    n=$SKEW_ROWS sparse=$((SKEW_ROWS / 10))
    echo "bench: creating $n skewed rows" >&2
    q bench_src "CREATE TABLE skewed AS SELECT CASE WHEN id <= $sparse THEN id * 990
        ELSE $((99 * n)) + id - $sparse END AS id, user_id, symbol, side, quantity, price,
        status, client_order_id, metadata, created_at, updated_at
        FROM trading_order WHERE id <= $n;
        ALTER TABLE skewed ADD PRIMARY KEY (id)" >/dev/null
    q bench_src "VACUUM ANALYZE skewed" >/dev/null
    q bench_tgt "CREATE TABLE skewed $TABLE_DDL" >/dev/null
    # skew_run RANGE_ROWS: the skewed table with 4 workers; appends a line to SKEW.
    skew_run() {
        q bench_tgt "TRUNCATE skewed" >/dev/null
        RANGE_ROWS=$1 RUN_LOG=info run_backfill skewed 4 insert skewed
        got=$(q bench_tgt "SELECT count(*) FROM skewed")
        [ "$got" = "$n" ] || { echo "bench: skewed copied $got rows of $n" >&2; exit 1; }
        splits=$(redis-cli -p "$BF_REDIS_PORT" HGET 'bf:{bench}:stats' splits)
        ranges=$(redis-cli -p "$BF_REDIS_PORT" HGET 'bf:{bench}:meta' nranges)
        # "busy B s of S s since its first lease", one line per worker: idle = 1 - B /
        # span, span = the longest S (the copy phase; waiting for a first lease is idle).
        line=$(sed -n 's/.*busy \([0-9.]*\) s of \([0-9.]*\) s since its first lease.*/\1 \2/p' \
            "$DIR/run.err" | awk -v n="$n" -v secs="$RUN_SECS" -v splits="${splits:-0}" \
            -v planned=$((ranges - ${splits:-0})) '
            { busy[NR] = $1; if ($2 > span) span = $2 }
            END {
                list = ""; worst = 0
                for (i = 1; i <= NR; i++) {
                    idle = span > 0 ? 100 * (span - busy[i]) / span : 100
                    if (idle > worst) worst = idle
                    list = list (i > 1 ? ", " : "") busy[i]
                }
                printf "%d rows (90%% in the last 1%% of the key space) planned as %d range%s, 4 workers: %.0f rows/s, %d splits; workers busy %s s of %.1f s, most idle %.0f%%", n, planned, planned == 1 ? "" : "s", n / secs, splits, list, span, worst
            }')
        echo "bench: skewed: $line" >&2
        SKEW="$SKEW${SKEW:+
}- skewed: $line"
    }
    skew_run "" # the planner's ranges (equal row counts)
    # One range: only splitting spreads it over the workers (range_rows well above
    # the row count: the planner's estimate, from the statistics, may exceed it).
    skew_run $((10 * n))
fi

{
    echo "| path | rows/s | MB/s | vs. pipe | machine CPU busy % | machine CPU s / M rows | worker CPU s / M rows | worker peak RSS MB | coordinator peak RSS MB |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for i in "${!NAMES[@]}"; do
        echo "| ${NAMES[$i]} | ${RATES[$i]} | ${MBS[$i]} | $(ratio "${RATES[$i]}" "$PIPE_RATE") | ${BUSYS[$i]} | $(cpu_per_m "$i") | ${CPUS[$i]} | ${RSS[$i]} | ${CRSS[$i]} |"
    done
    echo
    [ -z "${BEST[insert/2]:-}" ] || echo "- insert, 2 workers vs. binary pipe: $(ratio "${BEST[insert/2]}" "$PIPE_RATE")"
    [ -z "${BEST[upsert/2]:-}" ] || echo "- upsert, 2 workers vs. staging + ON CONFLICT: $(ratio "${BEST[upsert/2]}" "$STAGING_RATE")"
    if [ "$PGCOPYDB_RATE" != 0 ] && [ -n "${BEST[insert/4]:-}" ]; then
        echo "- insert, 4 workers vs. pgcopydb (4 jobs): $(ratio "${BEST[insert/4]}" "$PGCOPYDB_RATE")"
    fi
    if [ "$PGCOPYDB_BEST" != 0 ]; then
        fast=0 fastw=0
        for w in $WORKERS; do
            r=${BEST[insert/$w]:-0}
            if [ "${r%.*}" -gt "${fast%.*}" ]; then fast=$r fastw=$w; fi
        done
        [ "$fastw" = 0 ] ||
            echo "- fastest insert ($fastw workers) vs. fastest pgcopydb ($PGCOPYDB_BEST_JOBS jobs): $(ratio "$fast" "$PGCOPYDB_BEST")"
    fi
    if [ "$PGCOPYDB_BEST" != 0 ] && [ "$fastw" != 0 ]; then
        # What one row costs the whole machine (every process: backends, workers,
        # Redis), and the rate that cost allows with every core busy.
        bi=${IDX["backfill insert, $fastw workers"]} pi=$PGCOPYDB_BEST_IDX
        if [ "$(cpu_per_m "$bi")" != - ]; then
            cap=$(awk -v c="$(cpu_per_m "$bi")" -v n="$NCPU" 'BEGIN { printf "%.0f", n * 1e6 / c }')
            echo "- machine CPU per million rows: pipe $(cpu_per_m "${IDX["pipe (binary COPY)"]}") s, fastest pgcopydb $(cpu_per_m "$pi") s, fastest insert $(cpu_per_m "$bi") s; with all $NCPU cores busy that cost allows insert at most $cap rows/s = $(ratio "$cap" "$PGCOPYDB_BEST") x fastest pgcopydb"
        fi
    fi
    [ -z "$WIDE" ] || echo "- wide rows: $WIDE"
    [ -z "$SKEW" ] || echo "$SKEW"
    echo
    echo "$ROWS rows, $((BYTES / 1000000)) MB; $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); PostgreSQL $(q postgres 'SHOW server_version'); $(date -u +%Y-%m-%d)"
} | tee "${OUT:-/dev/null}"
if [ "$COORDINATOR" = 1 ]; then
    cleanup # this bench's servers are not needed any more
    echo >>"${OUT:-/dev/null}"
    BF=$BF bash bench/coordinator.sh | tee -a "${OUT:-/dev/null}"
fi

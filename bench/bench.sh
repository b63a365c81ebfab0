#!/usr/bin/env bash
# Throughput benchmark: backfill against a raw binary COPY pipe, measured in the
# same run on the same throwaway PostgreSQL (absolute numbers drift on shared
# machines; the ratios are what to compare).
#
#   bench/bench.sh [--rows N] [--workers "1 2 4"] [--out FILE.md]
#
# Creates a Django-style trading_order table (bigint id, text, numeric, jsonb,
# timestamps; about 200 bytes a row, as in DESIGN.md), then measures:
#   pipe        COPY (binary) TO STDOUT | COPY FROM STDIN, one stream (the ceiling)
#   pipe-text   the same in text format
#   staging     COPY into a staging table + INSERT ... ON CONFLICT DO UPDATE
#   backfill    `backfill run` in insert mode with each worker count
# and prints a Markdown table (also written to --out) with rows/s, MB/s, the ratio
# to the pipe, worker CPU seconds per million rows and peak RSS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROWS=3000000
WORKERS="1 2 4"
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
    --rows) ROWS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
    esac
done

BF=${BF:-build/backfill}
export PGOPTIONS="-c client_min_messages=warning"
[ -x "$BF" ] || { echo "bench: $BF not built; run ./bootstrap.sh test or cmake first" >&2; exit 2; }
DIR=$(mktemp -d /tmp/bf-bench.XXXXXX)
rmdir "$DIR"
cleanup() { "$BF" sandbox stop --dir "$DIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$BF" sandbox start --dir "$DIR" 2>/dev/null
# shellcheck disable=SC1091
. "$DIR/env"
q() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BF_PGPORT" -U "$BF_PGUSER" -d "$1" -c "$2"; }
now() { date +%s.%N; }

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

declare -a NAMES RATES MBS RATIOS CPUS RSS
PIPE_RATE=0
record() { # name seconds [cpu_s] [rss_mb]
    local rate mb ratio cpu="-" rss="-"
    rate=$(awk -v r="$ROWS" -v s="$2" 'BEGIN { printf "%.0f", r / s }')
    mb=$(awk -v b="$BYTES" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1e6 }')
    [ "$PIPE_RATE" = 0 ] && PIPE_RATE=$rate
    ratio=$(awk -v a="$rate" -v p="$PIPE_RATE" 'BEGIN { printf "%.2f", a / p }')
    [ -n "${3:-}" ] && cpu=$(awk -v c="$3" -v r="$ROWS" 'BEGIN { printf "%.1f", c / (r / 1e6) }')
    [ -n "${4:-}" ] && rss=$4
    NAMES+=("$1"); RATES+=("$rate"); MBS+=("$mb"); RATIOS+=("$ratio"); CPUS+=("$cpu"); RSS+=("$rss")
    echo "bench: $1: $rate rows/s (x$ratio)" >&2
}
reset_target() { q bench_tgt "TRUNCATE trading_order; CHECKPOINT" >/dev/null; }

PSQL=(psql -X -q -h 127.0.0.1 -p "$BF_PGPORT" -U "$BF_PGUSER")
for fmt in binary text; do
    reset_target
    t0=$(now)
    "${PSQL[@]}" -d bench_src -c "COPY trading_order TO STDOUT (FORMAT $fmt)" |
        "${PSQL[@]}" -d bench_tgt -c "COPY trading_order FROM STDIN (FORMAT $fmt)"
    t1=$(now)
    record "pipe ($fmt COPY)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
done

reset_target
t0=$(now)
"${PSQL[@]}" -d bench_src -c "COPY trading_order TO STDOUT (FORMAT binary)" |
    "${PSQL[@]}" -d bench_tgt -c "CREATE UNLOGGED TABLE staging (LIKE trading_order);" \
        -c "COPY staging FROM STDIN (FORMAT binary)" \
        -c "INSERT INTO trading_order SELECT * FROM staging ON CONFLICT (id) DO UPDATE SET
            user_id = excluded.user_id, symbol = excluded.symbol, side = excluded.side,
            quantity = excluded.quantity, price = excluded.price, status = excluded.status,
            client_order_id = excluded.client_order_id, metadata = excluded.metadata,
            created_at = excluded.created_at, updated_at = excluded.updated_at" \
        -c "DROP TABLE staging"
t1=$(now)
record "staging + ON CONFLICT" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"

for w in $WORKERS; do
    reset_target
    redis-cli -p "$BF_REDIS_PORT" FLUSHALL >/dev/null
    q bench_tgt "DROP TABLE IF EXISTS backfill_fence" >/dev/null
    cat >"$DIR/job.yaml" <<YAML
name: bench
source: postgresql://$BF_PGUSER@127.0.0.1:$BF_PGPORT/bench_src
redis: $BF_REDIS_URL
targets:
  tgt: postgresql://$BF_PGUSER@127.0.0.1:$BF_PGPORT/bench_tgt
batch_rows: 20000
range_rows: $(((ROWS + 4 * w - 1) / (4 * w)))
tables:
  - from: trading_order
    to: tgt.trading_order
YAML
    t0=$(now)
    "$BF" run "$DIR/job.yaml" --workers "$w" --log-level warn >"$DIR/run.out"
    t1=$(now)
    cpu=$(sed -n 's/.*workers cpu \([0-9.]*\) s.*/\1/p' "$DIR/run.out")
    rss=$(sed -n 's/.*worker peak rss \([0-9.]*\) MB.*/\1/p' "$DIR/run.out")
    record "backfill insert, $w workers" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        "$cpu" "$rss"
done
"$BF" verify "$DIR/job.yaml" >/dev/null || { echo "bench: verify failed" >&2; exit 1; }

{
    echo "| path | rows/s | MB/s | vs. pipe | worker CPU s / M rows | worker peak RSS MB |"
    echo "|---|---|---|---|---|---|"
    for i in "${!NAMES[@]}"; do
        echo "| ${NAMES[$i]} | ${RATES[$i]} | ${MBS[$i]} | ${RATIOS[$i]} | ${CPUS[$i]} | ${RSS[$i]} |"
    done
    echo
    echo "$ROWS rows, $((BYTES / 1000000)) MB; $(nproc) cores; PostgreSQL $(q postgres 'SHOW server_version'); $(date -u +%Y-%m-%d)"
} | tee "${OUT:-/dev/null}"

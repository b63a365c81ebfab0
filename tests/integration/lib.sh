# shellcheck shell=bash
# Shared helpers for integration tests. Each test runs against the PostgreSQL and
# Redis that the CTest fixture started (`backfill sandbox start`), uses its own
# databases and job name, and removes them at the end.
set -euo pipefail
: "${BF:?BF must point to the backfill binary}"
: "${BF_ENV_DIR:?BF_ENV_DIR must point to a sandbox directory}"
# shellcheck disable=SC1091
. "$BF_ENV_DIR/env"

TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "/tmp/bf-${TEST_NAME}.XXXXXX")
CREATED_DBS=()
BG_PIDS=()
SANDBOXES=() # private sandboxes (start_sandbox), stopped at exit
CLEANUP_CMDS=() # more to undo at exit (shell commands, run last to first)

cleanup() {
    local rc=$? i
    for pid in "${BG_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for sb in "${SANDBOXES[@]}"; do "$BF" sandbox stop --dir "$sb" >/dev/null 2>&1 || true; done
    for ((i = ${#CLEANUP_CMDS[@]} - 1; i >= 0; i--)); do eval "${CLEANUP_CMDS[$i]}" >/dev/null 2>&1 || true; done
    for db in "${CREATED_DBS[@]}"; do
        psql -X -q -h 127.0.0.1 -p "$BF_PGPORT" -U "$BF_PGUSER" -d postgres \
            -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    if [ "${BF_KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
    if [ "$rc" -eq 0 ]; then
        echo "PASS: $TEST_NAME"
    elif [ "$rc" -eq 77 ]; then
        echo "SKIP: $TEST_NAME"
    else
        echo "FAIL: $TEST_NAME (exit $rc)"
    fi
}
trap cleanup EXIT
# (a test stopped by a signal, e.g. CTest's timeout, must not report PASS)
trap 'exit 143' TERM

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# skip REASON: this machine cannot run the test (CTest counts exit 77 as skipped).
skip() {
    echo "SKIP: $*" >&2
    exit 77
}

# q DB SQL: runs SQL, prints unaligned tuples (on port $QPORT when set, else the
# fixture's PostgreSQL).
q() {
    psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${QPORT:-$BF_PGPORT}" -U "$BF_PGUSER" \
        -d "$1" -c "$2"
}

# start_sandbox DIR: a private PostgreSQL + Redis (`backfill sandbox`) for tests
# that restart servers; stopped at exit. Source DIR/env to get its ports.
start_sandbox() {
    "$BF" sandbox start --dir "$1" >"$WORK/sandbox-start.log" 2>&1 ||
        { cat "$WORK/sandbox-start.log" >&2; fail "private sandbox did not start"; }
    SANDBOXES+=("$1")
}

# fresh_db NAME...: (re)creates databases, dropped again at exit.
fresh_db() {
    for db in "$@"; do
        q postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
        q postgres "CREATE DATABASE $db" >/dev/null
        CREATED_DBS+=("$db")
    done
}

uri() { echo "postgresql://$BF_PGUSER@127.0.0.1:$BF_PGPORT/$1"; }

# forget_job NAME: removes a job's keys from Redis.
forget_job() {
    redis-cli -p "$BF_REDIS_PORT" --scan --pattern "bf:{$1}:*" |
        xargs -r -n 1000 redis-cli -p "$BF_REDIS_PORT" UNLINK >/dev/null
}

expect_eq() {
    [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"
}

# table_md5 DB TABLE KEY: md5 of every row's text, ordered by key.
table_md5() {
    q "$1" "SELECT md5(coalesce(string_agg(t::text, E'\n' ORDER BY $3), '')) FROM $2 t"
}

# Creates a monolith with three tables: orders (bigint key, with a gap of 9e11),
# users (integer key) and notes (smallint key, awkward text), N order rows.
make_monolith() {
    local db=$1 n=$2
    q "$db" "
    CREATE TABLE orders (id bigint PRIMARY KEY, user_id integer NOT NULL, symbol text NOT NULL,
        qty numeric(18,8) NOT NULL, meta jsonb, created_at timestamptz NOT NULL);
    INSERT INTO orders SELECT CASE WHEN g <= $n * 4 / 5 THEN g ELSE 900000000000 + g END,
        g % 1000, 'SYM' || (g % 7), g / 7.0, jsonb_build_object('g', g),
        '2020-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, $n) g;
    CREATE TABLE users (id integer PRIMARY KEY, name varchar(100) NOT NULL, active boolean,
        code char(3) NOT NULL);
    INSERT INTO users SELECT g, 'user ' || g, g % 3 = 0, (ARRAY['EUR','US','X'])[1 + abs(g) % 3]
        FROM generate_series(-500, 20000) g;
    CREATE TABLE notes (id smallint PRIMARY KEY, body text);
    INSERT INTO notes SELECT g, CASE WHEN g % 5 = 0 THEN NULL
        ELSE E'tab\there, newline\nthere, backslash \\\\ and caf\u00e9 ' || g END
        FROM generate_series(-32768, -30000) g;
    ANALYZE;" >/dev/null
}

make_service() {
    q "$1" "
    CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL, symbol text NOT NULL,
        qty numeric(18,8) NOT NULL, meta jsonb, created_at timestamptz NOT NULL);
    CREATE TABLE users (id integer PRIMARY KEY, name varchar(100) NOT NULL, active boolean,
        code char(3) NOT NULL);
    CREATE TABLE notes (id smallint PRIMARY KEY, body text);" >/dev/null
}

# write_job FILE NAME SRC_DB TGT_DB [batch_rows] [range_rows]: the standard
# monolith's three tables into svc. JOB_REDIS / JOB_TARGET override the Redis URL
# and the target DSN (servers other than the fixture's); batches keep batch_rows
# (tests count rows per batch) unless JOB_BATCH_MS sets a target batch duration.
write_job() {
    cat >"$1" <<YAML
name: $2
source: $(uri "$3")
redis: ${JOB_REDIS:-$BF_REDIS_URL}
targets:
  svc: ${JOB_TARGET:-$(uri "$4")}
batch_rows: ${5:-5000}
batch_ms: ${JOB_BATCH_MS:-0}
range_rows: ${6:-50000}
tables:
  - from: public.orders
    to: svc.public.orders
  - from: users
    to: svc.users
  - from: public.notes
    to: svc.public.notes
YAML
}

# expect_same DB1 DB2: every table of the standard monolith matches row for row.
expect_same() {
    for t in orders users notes; do
        local a b
        a=$(q "$1" "SELECT count(*) FROM $t")
        b=$(q "$2" "SELECT count(*) FROM $t")
        expect_eq "$b" "$a" "row count of $t"
        a=$(table_md5 "$1" "$t" id)
        b=$(table_md5 "$2" "$t" id)
        expect_eq "$b" "$a" "md5 of $t"
    done
}

# wait_for SECONDS CMD...: runs CMD every 0.1 s until it succeeds; 1 on timeout.
wait_for() {
    local tries=$(($1 * 10))
    shift
    for _ in $(seq 1 "$tries"); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# start_coordinator NAME PORT JOB [ARGS...]: `backfill coordinator JOB` in the
# background on 127.0.0.1:PORT ("auto": a free one, retried on a clash), output in
# $WORK/NAME.out and NAME.err. Sets CPID, PORT and ENDPOINT.
start_coordinator() {
    local name=$1 want=$2 job=$3
    shift 3
    for _ in 1 2 3 4 5; do
        PORT=$want
        [ "$want" != auto ] || PORT=$((20000 + RANDOM % 30000))
        "$BF" coordinator "$job" --bind "tcp://127.0.0.1:$PORT" "$@" \
            >"$WORK/$name.out" 2>"$WORK/$name.err" &
        CPID=$!
        BG_PIDS+=("$CPID")
        for _ in $(seq 1 100); do
            grep -q 'coordinator listening' "$WORK/$name.err" && break
            kill -0 "$CPID" 2>/dev/null || break
            sleep 0.1
        done
        if grep -q 'coordinator listening' "$WORK/$name.err"; then
            ENDPOINT="tcp://127.0.0.1:$PORT"
            return 0
        fi
        # Not listening after 10 s (a slow machine): stop this attempt before the
        # next (a second coordinator of the job would be refused its lock).
        kill -9 "$CPID" 2>/dev/null || true
        wait "$CPID" 2>/dev/null || true
        [ "$want" = auto ] || sleep 1
    done
    cat "$WORK/$name.err" >&2
    fail "coordinator $name did not start"
}

# start_worker NAME [ENV=VALUE...]: `backfill worker --connect $ENDPOINT` in the
# background, stderr in $WORK/NAME.err. Sets WPID.
start_worker() {
    local name=$1
    shift
    env "$@" "$BF" worker --connect "$ENDPOINT" 2>"$WORK/$name.err" &
    WPID=$!
    BG_PIDS+=("$WPID")
}

# redis_cmd ARGS...: a command against the sandbox's Redis.
redis_cmd() {
    redis-cli -p "$BF_REDIS_PORT" "$@"
}

# expect_job_done SRC_DB TGT_DB WORKER_NAME=PID...: the coordinator $CPID exits 0
# reporting completion, each worker exits 0 after joining, verify passes and the
# tables match.
expect_job_done() {
    local src=$1 tgt=$2 rc=0 spec
    shift 2
    wait "$CPID" || rc=$?
    [ "$rc" -eq 0 ] || tail -n 30 "$WORK/coord.err"
    expect_eq "$rc" 0 "coordinator exit code"
    grep -q 'job complete' "$WORK/coord.out" || fail "coordinator did not report completion"
    for spec in "$@"; do
        wait "${spec#*=}" || fail "worker ${spec%%=*} exit code $?"
        grep -q 'joined coordinator' "$WORK/${spec%%=*}.err" || fail "worker ${spec%%=*} never joined"
    done
    "$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
    expect_same "$src" "$tgt"
}

#!/usr/bin/env bash
# Passwords never leak: PostgreSQL (scram-sha-256) and Redis (AUTH) passwords come
# from the environment (${VAR} in the job file); plan, run (debug and JSON logs),
# status, verify, /metrics, the process titles (status and throttle run without
# the PostgreSQL password in the environment: they only talk to Redis), and the errors of a wrong
# password (exit 2, not 3: retrying cannot fix it) and of passwords libpq cannot
# use as written (a space in key=value, "/", "@" or "%" in a URI: libpq quotes
# pieces of them), are searched for them (and their pieces) and must not hold them. sslmode in a DSN passes
# through to libpq (require fails against this server without SSL, naming SSL).
. "$(dirname "$0")/lib.sh"
SB=$WORK/sb
start_sandbox "$SB"
PGP=$(. "$SB/env" && echo "$BF_PGPORT")
RDP=$(. "$SB/env" && echo "$BF_REDIS_PORT")
export QPORT=$PGP
export BF_TEST_PG_PASSWORD="pgS3cret-$RANDOM$RANDOM" BF_TEST_REDIS_PASSWORD="rdS3cret-$RANDOM$RANDOM"
export BF_TEST_WRONG_PASSWORD="wrongS3cret-$RANDOM$RANDOM"
q postgres "CREATE ROLE bfsecret LOGIN SUPERUSER PASSWORD '$BF_TEST_PG_PASSWORD'" >/dev/null
q postgres "CREATE DATABASE sec_src OWNER bfsecret" >/dev/null
q postgres "CREATE DATABASE sec_tgt OWNER bfsecret" >/dev/null
hba=$(q postgres "SHOW hba_file")
sed -i "1i host all bfsecret 127.0.0.1/32 scram-sha-256" "$hba"
q postgres "SELECT pg_reload_conf()" >/dev/null
redis-cli -p "$RDP" CONFIG SET requirepass "$BF_TEST_REDIS_PASSWORD" >/dev/null
R() { redis-cli -p "$RDP" -a "$BF_TEST_REDIS_PASSWORD" --no-auth-warning "$@"; }
make_monolith sec_src 60000
make_service sec_tgt

# job FILE PG_PASSWORD_VAR REDIS_PASSWORD_VAR [SSLMODE]
job() {
    cat >"$1" <<YAML
name: sec
source: postgresql://bfsecret:\${$2}@127.0.0.1:$PGP/sec_src?sslmode=${4:-disable}
redis: redis://:\${$3}@127.0.0.1:$RDP/0
targets:
  svc: postgresql://bfsecret:\${$2}@127.0.0.1:$PGP/sec_tgt?sslmode=${4:-disable}
batch_rows: 5000
batch_ms: 200
range_rows: 20000
tables:
  - from: public.orders
    to: svc.public.orders
  - from: users
    to: svc.users
YAML
}
job "$WORK/job.yaml" BF_TEST_PG_PASSWORD BF_TEST_REDIS_PASSWORD
OUT=$WORK/out
mkdir -p "$OUT"
# The password must really be needed (no trust fallback).
if PGPASSWORD=nope psql -X -h 127.0.0.1 -p "$PGP" -U bfsecret -d sec_src -c 'SELECT 1' >/dev/null 2>&1; then
    fail "the test role logs in without its password"
fi

"$BF" plan "$WORK/job.yaml" >"$OUT/plan.out" 2>"$OUT/plan.err" || { cat "$OUT/plan.err"; fail "plan"; }
MPORT=$((20000 + RANDOM % 30000))
"$BF" run "$WORK/job.yaml" --workers 2 --log-level debug --log-format json --metrics "127.0.0.1:$MPORT" \
    >"$OUT/run.out" 2>"$OUT/run.err" &
RUN=$!
BG_PIDS+=("$RUN")
has_rows() { [ "$(R HGET 'bf:{sec}:stats' rows:0)" -gt 0 ] 2>/dev/null; }
wait_for 60 has_rows || { tail "$OUT/run.err"; fail "no rows copied"; }
"$BF" throttle "$WORK/job.yaml" --rows-per-second 20000 >"$OUT/throttle.out" 2>&1
ps -eo pid,args >"$OUT/ps.txt"
curl -fsS "http://127.0.0.1:$MPORT/metrics" >"$OUT/metrics.txt" || fail "metrics"
"$BF" status "$WORK/job.yaml" >"$OUT/status.out" 2>&1
"$BF" throttle "$WORK/job.yaml" --rows-per-second 0 >>"$OUT/throttle.out" 2>&1
wait "$RUN" || { rc=$?; tail "$OUT/run.err"; fail "run exited $rc"; }
grep -q 'job complete' "$OUT/run.out" || fail "run did not complete"
grep -q '"level":"debug"' "$OUT/run.err" || fail "no JSON debug lines"
"$BF" status "$WORK/job.yaml" --json >"$OUT/status.json" 2>&1
"$BF" verify "$WORK/job.yaml" >"$OUT/verify.out" 2>&1 || { cat "$OUT/verify.out"; fail "verify"; }
# Commands that only talk to Redis need only its secret (an operator's machine need
# not hold the databases' passwords); those that reach PostgreSQL say what is unset.
env -u BF_TEST_PG_PASSWORD "$BF" status "$WORK/job.yaml" >"$OUT/status_nopg.out" 2>&1 ||
    { cat "$OUT/status_nopg.out"; fail "status without the PostgreSQL password in the environment"; }
grep -q 'public.orders' "$OUT/status_nopg.out" || fail "status without the PostgreSQL password: $(cat "$OUT/status_nopg.out")"
env -u BF_TEST_PG_PASSWORD "$BF" throttle "$WORK/job.yaml" --rows-per-second 0 >>"$OUT/throttle.out" 2>&1 ||
    fail "throttle without the PostgreSQL password in the environment"
rc=0
env -u BF_TEST_PG_PASSWORD "$BF" verify "$WORK/job.yaml" >"$OUT/verify_nopg.out" 2>&1 || rc=$?
expect_eq "$rc" 2 "exit code of verify without the PostgreSQL password in the environment"
grep -q 'environment variable BF_TEST_PG_PASSWORD is not set' "$OUT/verify_nopg.out" ||
    fail "verify without the PostgreSQL password: $(cat "$OUT/verify_nopg.out")"
rc=0
env -u BF_TEST_REDIS_PASSWORD "$BF" status "$WORK/job.yaml" >"$OUT/status_noredis.out" 2>&1 || rc=$?
expect_eq "$rc" 2 "exit code of status without the Redis password in the environment"
# A variable in both source: and redis: is still needed for redis:.
sed "s/BF_TEST_REDIS_PASSWORD/BF_TEST_PG_PASSWORD/" "$WORK/job.yaml" >"$WORK/shared.yaml"
rc=0
env -u BF_TEST_PG_PASSWORD "$BF" status "$WORK/shared.yaml" >"$OUT/status_shared.out" 2>&1 || rc=$?
expect_eq "$rc" 2 "exit code of status without a variable both source: and redis: use"
grep -q "environment variable BF_TEST_PG_PASSWORD is not set (referenced by 'redis')" "$OUT/status_shared.out" ||
    fail "status without a shared variable: $(cat "$OUT/status_shared.out")"

# Wrong passwords, and sslmode passed through: clear errors, no password in them.
# A wrong password is not "unreachable, retry" (3): exit 2.
job "$WORK/wrong_pg.yaml" BF_TEST_WRONG_PASSWORD BF_TEST_REDIS_PASSWORD
rc=0
"$BF" plan "$WORK/wrong_pg.yaml" >"$OUT/wrong_pg.out" 2>&1 || rc=$?
expect_eq "$rc" 2 "exit code of plan with a wrong PostgreSQL password"
grep -q 'password authentication failed' "$OUT/wrong_pg.out" || { cat "$OUT/wrong_pg.out"; fail "unclear error"; }
rc=0
"$BF" run "$WORK/wrong_pg.yaml" >"$OUT/wrong_pg_run.out" 2>&1 || rc=$?
expect_eq "$rc" 2 "exit code of run with a wrong PostgreSQL password"
# Passwords libpq cannot use as written: its complaint quotes pieces of them
# ('missing "=" after "<second word>"', a URI's "/" or "@" making a piece of it
# the port, a "%" not followed by hex). None may appear; the error says how to
# write them.
export BF_TEST_SPACED_PASSWORD="first$RANDOM second$RANDOM third$RANDOM"
export BF_TEST_SLASH_PASSWORD="aa$RANDOM/bb$RANDOM" BF_TEST_AT_PASSWORD="cc$RANDOM@dd$RANDOM:ee$RANDOM"
export BF_TEST_PERCENT_PASSWORD="ff$RANDOM%zz"
sed "s#^source: .*#source: host=127.0.0.1 port=$PGP user=bfsecret password=\${BF_TEST_SPACED_PASSWORD} dbname=sec_src#" \
    "$WORK/job.yaml" >"$WORK/spaced.yaml"
for v in SPACED SLASH AT PERCENT; do
    [ "$v" = SPACED ] || job "$WORK/$v.yaml" "BF_TEST_${v}_PASSWORD" BF_TEST_REDIS_PASSWORD
    f=$WORK/$v.yaml
    [ "$v" = SPACED ] && f=$WORK/spaced.yaml
    rc=0
    "$BF" plan "$f" >"$OUT/malformed_$v.out" 2>&1 || rc=$?
    expect_eq "$rc" 2 "exit code of plan with a $v password libpq cannot parse"
    grep -q 'percent-encode the characters of the user name and password' "$OUT/malformed_$v.out" ||
        fail "no hint for a $v password: $(cat "$OUT/malformed_$v.out")"
done
job "$WORK/wrong_redis.yaml" BF_TEST_PG_PASSWORD BF_TEST_WRONG_PASSWORD
if "$BF" status "$WORK/wrong_redis.yaml" >"$OUT/wrong_redis.out" 2>&1; then fail "a wrong Redis password worked"; fi
grep -qi 'pass' "$OUT/wrong_redis.out" || { cat "$OUT/wrong_redis.out"; fail "unclear Redis auth error"; }
job "$WORK/ssl.yaml" BF_TEST_PG_PASSWORD BF_TEST_REDIS_PASSWORD require
if "$BF" plan "$WORK/ssl.yaml" >"$OUT/ssl.out" 2>&1; then fail "sslmode=require worked without SSL"; fi
grep -qi 'ssl' "$OUT/ssl.out" || { cat "$OUT/ssl.out"; fail "sslmode=require: no SSL error"; }

for pw in "$BF_TEST_PG_PASSWORD" "$BF_TEST_REDIS_PASSWORD" "$BF_TEST_WRONG_PASSWORD" \
    $BF_TEST_SPACED_PASSWORD ${BF_TEST_SLASH_PASSWORD/\// } ${BF_TEST_AT_PASSWORD//[@:]/ } \
    "${BF_TEST_PERCENT_PASSWORD%\%zz}"; do
    if grep -rlF "$pw" "$OUT"; then fail "a password appears in the files above"; fi
done
[ "$(cat "$OUT"/*.out "$OUT"/*.err "$OUT"/*.txt "$OUT"/*.json | wc -c)" -gt 10000 ] ||
    fail "too little output searched"

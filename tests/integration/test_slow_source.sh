#!/usr/bin/env bash
# A source that sends rows slowly, one at a time (here a filter that sleeps 0.5 s
# on each of the first 30 rows, of 10 KB each so that each goes out at once; a
# selective `where` on a big table, or a loaded source, looks the same): the first
# batch takes 15 s, longer than the coordinator waits for a silent worker (3
# heartbeats of 2.5 s, looked at every 2.5 s). The worker keeps talking to the
# coordinator while it waits for rows: it is not taken for dead, its lease is not
# handed out again, and the job completes with no retry. Then the source
# connection is cut in the middle of such a batch: the worker notices, copies the
# range again and the job completes with every row once. Last, the target keeps
# the worker waiting (a COPY that waits for an application's uncommitted row):
# the worker still talks to the coordinator.
. "$(dirname "$0")/lib.sh"
fresh_db ss_src ss_tgt
q ss_src "CREATE TABLE s (id bigint PRIMARY KEY, v text NOT NULL);
    INSERT INTO s SELECT g, CASE WHEN g <= 30 THEN repeat(md5(g::text), 320) ELSE 'v' END
        FROM generate_series(1, 5000) g; ANALYZE s"
q ss_tgt "CREATE TABLE s (id bigint PRIMARY KEY, v text NOT NULL)"
forget_job ssj
cat >"$WORK/job.yaml" <<YAML
name: ssj
source: $(uri ss_src)
redis: $BF_REDIS_URL
targets:
  t: $(uri ss_tgt)
batch_rows: 100
batch_ms: 0
tables:
  - from: s
    to: t.s
    where: "id > 30 OR pg_sleep(0.5) IS NOT NULL"
YAML
start_coordinator c auto "$WORK/job.yaml"
cpid=$CPID
start_worker w
wpid=$WPID
wait "$cpid" || { tail "$WORK/c.err" "$WORK/w.err" >&2; fail "coordinator exit $?"; }
wait "$wpid" || fail "worker exit $?"
if grep -E 'considered dead|silent' "$WORK/c.err" "$WORK/w.err"; then
    fail "the worker went silent while the source sent rows slowly"
fi
expect_eq "$(q ss_tgt 'SELECT count(*) FROM s')" 5000 "rows copied"
expect_eq "$(redis_cmd HGET 'bf:{ssj}:stats' retries)" 0 "retries"

# The source connection is cut in the middle of such a batch: the worker notices
# (it is not left waiting on a dead socket), reconnects and copies the range again
# from its checkpoint; the job completes with every row once.
forget_job ssj
q ss_tgt "TRUNCATE s; DROP TABLE backfill_fence"
start_coordinator c2 auto "$WORK/job.yaml"
cpid=$CPID
start_worker w2
wpid=$WPID
copying() { [ "$(q ss_src "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT%'")" -gt 0 ]; }
wait_for 30 copying || fail "no COPY on the source"
sleep 2
q ss_src "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT%'" >/dev/null
rc=0
timeout 120 tail --pid="$cpid" -f /dev/null || rc=$?
[ "$rc" = 0 ] || fail "the job did not end after the source connection was cut"
wait "$cpid" || { tail "$WORK/c2.err" "$WORK/w2.err" >&2; fail "coordinator exit $?"; }
wait "$wpid" || fail "worker exit $?"
grep -q 'terminat\|connection' "$WORK/w2.err" || { cat "$WORK/w2.err" >&2; fail "the worker did not report the cut"; }
expect_eq "$(q ss_tgt 'SELECT count(*), count(DISTINCT id) FROM s')" "5000|5000" "rows after the cut"

# The target keeps the worker waiting instead: an application transaction holds an
# uncommitted row with a key the batch inserts (a dual write), so the batch's COPY
# waits for it (15 s, then it rolls back) and stops reading: 16 MB of rows after
# that key do not fit the socket's buffers. The worker keeps talking to the
# coordinator while the target does not read (its target connection does not
# block during a COPY): not taken for dead, no retry, every row once.
forget_job ssj3
q ss_src "CREATE TABLE w (id bigint PRIMARY KEY, v text NOT NULL);
    INSERT INTO w SELECT g, repeat(md5(g::text), 128) FROM generate_series(1, 5000) g; ANALYZE w"
q ss_tgt "CREATE TABLE w (id bigint PRIMARY KEY, v text NOT NULL)"
cat >"$WORK/job3.yaml" <<YAML
name: ssj3
source: $(uri ss_src)
redis: $BF_REDIS_URL
targets:
  t: $(uri ss_tgt)
batch_rows: 5000
batch_ms: 0
tables:
  - from: w
    to: t.w
YAML
psql -X -q -h 127.0.0.1 -p "$BF_PGPORT" -U "$BF_PGUSER" -d ss_tgt \
    -c "BEGIN; INSERT INTO w VALUES (1000, 'app'); SELECT pg_sleep(15); ROLLBACK" >/dev/null &
BG_PIDS+=($!)
holding() { [ "$(q ss_tgt "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(15)%' AND state = 'active' AND pid <> pg_backend_pid()")" -gt 0 ]; }
wait_for 20 holding || fail "the application transaction did not start"
t0=$SECONDS
start_coordinator c3 auto "$WORK/job3.yaml"
cpid=$CPID
start_worker w3
wpid=$WPID
wait "$cpid" || { tail "$WORK/c3.err" "$WORK/w3.err" >&2; fail "coordinator exit $?"; }
wait "$wpid" || fail "worker exit $?"
[ $((SECONDS - t0)) -ge 8 ] || fail "the batch did not wait for the application's row ($((SECONDS - t0)) s)"
if grep -E 'considered dead|silent' "$WORK/c3.err" "$WORK/w3.err"; then
    fail "the worker went silent while the target did not read"
fi
expect_eq "$(q ss_tgt 'SELECT count(*), count(DISTINCT id) FROM w')" "5000|5000" "rows after the wait"
expect_eq "$(redis_cmd HGET 'bf:{ssj3}:stats' retries)" 0 "retries"
forget_job ssj3

#!/usr/bin/env bash
# A source that sends rows slowly, one at a time (here a filter that sleeps 0.5 s
# on each of the first 30 rows, of 10 KB each so that each goes out at once; a
# selective `where` on a big table, or a loaded source, looks the same): the first
# batch takes 15 s, longer than the coordinator waits for a silent worker (3
# heartbeats of 2.5 s, looked at every 2.5 s). The worker keeps talking to the
# coordinator while it waits for rows: it is not taken for dead, its lease is not
# handed out again, and the job completes with no retry. Then the source
# connection is cut in the middle of such a batch: the worker notices, copies the
# range again and the job completes with every row once.
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

#!/usr/bin/env bash
# A source that sends rows slowly, one at a time (here a filter that sleeps 0.5 s
# on each of the first 30 rows, of 10 KB each so that each goes out at once; a
# selective `where` on a big table, or a loaded source, looks the same): the first
# batch takes 15 s, longer than the coordinator waits for a silent worker (3
# heartbeats of 2.5 s, looked at every 2.5 s). The worker keeps talking to the coordinator while it waits for rows: it
# is not taken for dead, its lease is not handed out again, and the job completes
# with no retry.
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

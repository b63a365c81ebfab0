#!/usr/bin/env bash
# A routed table's batch reads the source once per route. Rows change while the
# backfill runs (the monolith is live): a row whose routing column changes between
# two of those reads must still go to exactly one target, never both or neither.
# The worker stops (SIGSTOP, fault point between-targets) after the batch was
# written to the first target; meanwhile row 1 moves eu -> us and row 2 us -> eu on
# the source; then it goes on. With one snapshot for the batch's reads, row 1 is in
# eu only and row 2 in us only (the source as it was when the batch started).
. "$(dirname "$0")/lib.sh"
fresh_db rs_src rs_eu rs_us
q rs_src "CREATE TABLE acct (id bigint PRIMARY KEY, region text NOT NULL, v integer);
    INSERT INTO acct SELECT g, CASE WHEN g % 2 = 1 THEN 'eu' ELSE 'us' END, g
    FROM generate_series(1, 100) g; ANALYZE" >/dev/null
for db in rs_eu rs_us; do
    q "$db" "CREATE TABLE acct (id bigint PRIMARY KEY, region text NOT NULL, v integer)" >/dev/null
done
forget_job rs
cat >"$WORK/job.yaml" <<YAML
name: rs
source: $(uri rs_src)
redis: $BF_REDIS_URL
targets:
  eu: $(uri rs_eu)
  us: $(uri rs_us)
batch_rows: 1000
batch_ms: 0
range_rows: 100000
tables:
  - from: acct
    route:
      - when: region = 'eu'
        to: eu.acct
      - to: us.acct
YAML
start_coordinator coord auto "$WORK/job.yaml"
start_worker w1 BF_FAULT=between-targets:1:stop
stopped() { grep -q '^State:.*T (stopped)' "/proc/$WPID/status" 2>/dev/null; }
wait_for 30 stopped || fail "the worker did not stop between the targets"
expect_eq "$(q rs_eu "SELECT count(*) FROM acct")" 50 "rows on eu before the stop"
q rs_src "UPDATE acct SET region = 'us' WHERE id = 1; UPDATE acct SET region = 'eu' WHERE id = 2" >/dev/null
kill -CONT "$WPID"
rc=0
wait "$CPID" || rc=$?
[ "$rc" -eq 0 ] || tail -n 20 "$WORK/coord.err"
expect_eq "$rc" 0 "coordinator exit code"
wait "$WPID" || fail "worker exit code $?"
expect_eq "$(q rs_eu "SELECT string_agg(id::text, ',' ORDER BY id) FROM acct WHERE id <= 2")" 1 \
    "rows 1-2 on eu (the batch's snapshot: 1 was eu)"
expect_eq "$(q rs_us "SELECT string_agg(id::text, ',' ORDER BY id) FROM acct WHERE id <= 2")" 2 \
    "rows 1-2 on us (the batch's snapshot: 2 was us)"
expect_eq "$(($(q rs_eu "SELECT count(*) FROM acct") + $(q rs_us "SELECT count(*) FROM acct")))" 100 \
    "rows on both targets together"
forget_job rs

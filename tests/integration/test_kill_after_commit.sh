#!/usr/bin/env bash
# Issue 4, acceptance 3: in insert mode (plain COPY), a worker killed (SIGKILL)
# after a batch committed on the target but before its Redis checkpoint. The
# range is resumed by another worker from the target's fence row, so the batch is
# not copied again and no duplicate-key error ever surfaces.
. "$(dirname "$0")/lib.sh"
fresh_db ka_src ka_tgt
make_monolith ka_src 60000
make_service ka_tgt
forget_job ka
write_job "$WORK/job.yaml" ka ka_src ka_tgt 4000 1000000

start_coordinator coord auto "$WORK/job.yaml" --lease-ttl 5
start_worker wa BF_FAULT=after-commit:3:kill
wa=$WPID
rc=0
wait "$wa" || rc=$?
expect_eq "$rc" 137 "worker A's exit status (killed by SIGKILL)"
committed=$(q ka_tgt "SELECT count(*) FROM orders") # orders is the first table
expect_eq "$committed" 12000 "rows committed by worker A before it was killed"
range=$(q ka_tgt "SELECT range_id FROM backfill_fence WHERE job = 'ka' AND seq = 3")
[ -n "$range" ] || fail "no fence row at seq 3"
expect_eq "$(redis_cmd HGET "bf:{ka}:range:$range" seq)" 2 "redis checkpoint seq (one behind)"

start_worker wb
wb=$WPID
rc=0
wait "$CPID" || rc=$?
expect_eq "$rc" 0 "coordinator exit code"
wait "$wb" || fail "worker B exit code $?"
grep -q "range $range: target fence (seq 3.*continuing from the fence" "$WORK/wb.err" ||
    fail "worker B did not resume range $range from the fence: $(grep "range $range" "$WORK/wb.err")"
if grep -qi 'duplicate key' "$WORK"/*.err; then fail "duplicate key error"; fi
"$BF" verify "$WORK/job.yaml" >/dev/null || fail "verify"
expect_same ka_src ka_tgt

# With a route to two databases, one batch is two target transactions. Killed after
# the first target of a batch committed (commit 3: batch 2 on billing), the first
# target is ahead of the second and of Redis; the next lease copies that batch only
# to the target that lacks it.
fresh_db ka_src2 ka_b ka_o
q ka_src2 "CREATE TABLE inv (id bigint PRIMARY KEY, pub integer, amount integer);
    INSERT INTO inv SELECT g, g % 10, g FROM generate_series(1, 20000) g; ANALYZE" >/dev/null
for db in ka_b ka_o; do q "$db" "CREATE TABLE inv (id bigint PRIMARY KEY, pub integer, amount integer)" >/dev/null; done
forget_job ka2
cat >"$WORK/job2.yaml" <<YAML
name: ka2
source: $(uri ka_src2)
redis: $BF_REDIS_URL
targets:
  billing: $(uri ka_b)
  ops: $(uri ka_o)
batch_rows: 1000
batch_ms: 0
range_rows: 100000
tables:
  - from: inv
    route:
      - when: pub < 5
        to: billing.inv
      - to: ops.inv
YAML
start_coordinator coord2 auto "$WORK/job2.yaml" --lease-ttl 5
start_worker wa2 BF_FAULT=after-commit:3:kill
rc=0
wait "$WPID" || rc=$?
expect_eq "$rc" 137 "routed: worker A's exit status"
expect_eq "$(q ka_b "SELECT count(*) FROM inv")" 1000 "routed: billing rows (2 batches)"
expect_eq "$(q ka_o "SELECT count(*) FROM inv")" 500 "routed: ops rows (1 batch)"
start_worker wb2
rc=0
wait "$CPID" || rc=$?
expect_eq "$rc" 0 "routed: coordinator exit code"
grep -q 'continuing from the fence on target billing' "$WORK/wb2.err" ||
    fail "routed: worker B did not follow billing's fence: $(grep range "$WORK/wb2.err" | head -3)"
if grep -qi 'duplicate key' "$WORK"/*.err; then fail "routed: duplicate key error"; fi
"$BF" verify "$WORK/job2.yaml" >/dev/null || fail "routed: verify"
expect_eq "$(q ka_b "SELECT count(*) FROM inv")" 10000 "routed: billing rows"
expect_eq "$(q ka_o "SELECT count(*) FROM inv")" 10000 "routed: ops rows"

# The row right after the fence is one the target refuses: killed after commit 3
# (rows 1-3000; Redis one batch behind), the next lease starts at the fence, its
# batch fails, is halved down to row 3001 and, with --max-rejects, sets it aside
# (one route: every isolating batch starts at the fence, so the row is the one
# refused; the job used to stop, the fence being ahead of Redis).
fresh_db ka_src3 ka_t3
q ka_src3 "CREATE TABLE items (id bigint PRIMARY KEY, code text NOT NULL);
    INSERT INTO items SELECT g, 'C' || g FROM generate_series(1, 10000) g;
    UPDATE items SET code = 'much-too-long' WHERE id = 3001; ANALYZE" >/dev/null
q ka_t3 "CREATE TABLE items (id bigint PRIMARY KEY, code varchar(10) NOT NULL)" >/dev/null
forget_job ka3
cat >"$WORK/job3.yaml" <<YAML
name: ka3
source: $(uri ka_src3)
redis: $BF_REDIS_URL
targets:
  svc: $(uri ka_t3)
batch_rows: 1000
batch_ms: 0
range_rows: 1000000
tables:
  - from: items
    to: svc.items
YAML
start_coordinator coord3 auto "$WORK/job3.yaml" --lease-ttl 5 --max-rejects 5
start_worker wa3 BF_FAULT=after-commit:3:kill
rc=0
wait "$WPID" || rc=$?
expect_eq "$rc" 137 "refused row: worker A's exit status"
expect_eq "$(redis_cmd HGET 'bf:{ka3}:range:0' cursor)" 2000 "refused row: redis cursor (one behind)"
start_worker wb3
rc=0
wait "$CPID" || rc=$?
[ "$rc" -eq 0 ] || tail -n 5 "$WORK/wb3.err"
expect_eq "$rc" 0 "refused row: coordinator exit code"
expect_eq "$(q ka_t3 "SELECT count(*) FROM items")" 9999 "refused row: rows landed"
expect_eq "$(q ka_t3 "SELECT key FROM backfill_rejects WHERE job = 'ka3'")" 3001 "refused row: set aside"
for j in ka ka2 ka3; do forget_job "$j"; done

#!/usr/bin/env bash
# Foreign keys on the targets. A Django service's tables refer to each other
# (DEFERRABLE INITIALLY DEFERRED) and a child row cannot land before its parent.
#  1. Order: fill -> trading_order -> customer, listed child first in the job:
#     the coordinator reads the targets' foreign keys and leases a table's ranges
#     only once the tables it refers to are done. `plan` prints the order; `status`
#     shows the tables waiting (a coordinator with no workers yet); no batch ever
#     fails on a foreign key (nothing deferred), every row lands, verify passes.
#  2. A self-reference (category.parent_id -> category, each row referring to a row
#     anywhere below it, so most to lower ranges): its ranges are copied one after
#     another in key order (`plan` says so), so no batch waits for a row of another
#     range: nothing deferred, nothing split, every row lands with 3 workers (side
#     by side, 10-13 batches a run were set back). A row referring to a row with a
#     greater key (node 150 -> 2900, in a later range whose rows refer to rows
#     below it): found in its batch by the key value, parked with the rows that
#     refer to it (found in the source before their batches are tried, not each
#     by a refused batch, and each tried once, in the savepoint that parks it),
#     written when every range is done; every row lands.
#  3. An orphan (a row referring to a row the source does not have): the range is
#     set back while other batches commit (deferred), then the row is parked; the
#     rest lands and the job ends naming table, key and the missing row (exit 4),
#     again when run again; with that row put on the target, a run of the finished
#     job writes it. With --max-rejects it is set aside and counted. In a routed
#     table the orphan is found by its value too (not by halving). Two source
#     tables into one target table with an orphan of the same key each: both
#     parked, both written (they overwrote each other before). A foreign key of
#     two columns: the orphan is found by its values too. Parked rows
#     are counted as the workers park them (`status`, --json, the run's summary), then as what is still parked once they were written again.
#  4. A cycle (a -> b -> a, nullable): not ordered (`plan` says so), copied side by
#     side with deferrals; every row lands.
. "$(dirname "$0")/lib.sh"
fresh_db fk_src fk_tgt fk_tgt2 fk_tgt3 fk_tgt4 fk_tgt5 fk_tgt6 fk_tgt7
q fk_src "
CREATE TABLE customer (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO customer SELECT g, 'customer ' || g FROM generate_series(1, 20000) g;
CREATE TABLE trading_order (id bigint PRIMARY KEY, customer_id bigint NOT NULL, qty int);
INSERT INTO trading_order SELECT g, 1 + (g::bigint * 7919) % 20000, g % 100 FROM generate_series(1, 60000) g;
CREATE TABLE fill (id bigint PRIMARY KEY, order_id bigint NOT NULL, price numeric(12,2));
INSERT INTO fill SELECT g, 1 + (g::bigint * 104729) % 60000, g / 100.0 FROM generate_series(1, 60000) g;
CREATE TABLE category (id bigint PRIMARY KEY, parent_id bigint, name text);
INSERT INTO category SELECT g, CASE WHEN g <= 10 THEN NULL ELSE 1 + abs(hashint4(g)) % (g - 1) END,
    'cat ' || g FROM generate_series(1, 30000) g;
CREATE TABLE node (id bigint PRIMARY KEY, parent_id bigint);
INSERT INTO node SELECT g, CASE WHEN g > 1 THEN g - 1 - abs(hashint4(g)) % least(g - 1, 50) END
    FROM generate_series(1, 3000) g;
UPDATE node SET parent_id = 2900 WHERE id = 150;
UPDATE node SET parent_id = 150 WHERE id IN (160, 420, 700, 1300, 2100, 2600);
CREATE TABLE a (id bigint PRIMARY KEY, b_id bigint);
CREATE TABLE b (id bigint PRIMARY KEY, a_id bigint);
INSERT INTO b SELECT g, CASE WHEN g > 500 THEN 1 + g % 100 END FROM generate_series(1, 1000) g;
INSERT INTO a SELECT g, 1 + g % 500 FROM generate_series(1, 1000) g;
ANALYZE;" >/dev/null
for db in fk_tgt fk_tgt2 fk_tgt3 fk_tgt4 fk_tgt5 fk_tgt6; do
    q "$db" "
    CREATE TABLE customer (id bigint PRIMARY KEY, name text NOT NULL);
    CREATE TABLE trading_order (id bigint PRIMARY KEY, customer_id bigint NOT NULL
        CONSTRAINT trading_order_customer_fk REFERENCES customer DEFERRABLE INITIALLY DEFERRED,
        qty int);
    CREATE TABLE fill (id bigint PRIMARY KEY, order_id bigint NOT NULL
        CONSTRAINT fill_order_fk REFERENCES trading_order, price numeric(12,2));
    CREATE TABLE category (id bigint PRIMARY KEY, parent_id bigint
        CONSTRAINT category_parent_fk REFERENCES category DEFERRABLE INITIALLY DEFERRED, name text);
    CREATE TABLE node (id bigint PRIMARY KEY, parent_id bigint
        CONSTRAINT node_parent_fk REFERENCES node DEFERRABLE INITIALLY DEFERRED);
    CREATE TABLE a (id bigint PRIMARY KEY, b_id bigint);
    CREATE TABLE b (id bigint PRIMARY KEY, a_id bigint CONSTRAINT b_a_fk REFERENCES a);
    ALTER TABLE a ADD CONSTRAINT a_b_fk FOREIGN KEY (b_id) REFERENCES b;" >/dev/null
done

# expect_located ERR_FILE WHAT PATTERN: the row a foreign key refused was found by
# its value (PATTERN logged), not by halving the batch.
expect_located() {
    grep -q "$3" "$1" || fail "$2 was not found by its value: $(grep -m3 'refused\|isolate' "$1")"
    if grep -q 'to isolate it' "$1"; then
        fail "a batch was halved for $2: $(grep -m1 'to isolate it' "$1")"
    fi
}

job() { # job NAME DB TABLES...
    local name=$1 db=$2
    shift 2
    cat <<YAML
name: $name
source: $(uri fk_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri "$db")
batch_rows: 2000
batch_ms: 0
range_rows: 5000
tables:
YAML
    for t in "$@"; do printf '  - from: %s\n    to: svc.%s\n' "$t" "$t"; done
}

# 1. Order, with the children listed first.
forget_job fko
job fko fk_tgt fill trading_order customer >"$WORK/job.yaml"
"$BF" plan "$WORK/job.yaml" >"$WORK/plan.out" 2>&1 || { cat "$WORK/plan.out"; fail "plan"; }
grep -q '^table public.fill is copied after public.trading_order: foreign key fill_order_fk of svc.public.fill refers to svc.public.trading_order$' \
    "$WORK/plan.out" || fail "plan does not show fill after trading_order: $(tail -5 "$WORK/plan.out")"
grep -q '^table public.trading_order is copied after public.customer: foreign key trading_order_customer_fk' \
    "$WORK/plan.out" || fail "plan does not show trading_order after customer: $(tail -5 "$WORK/plan.out")"
# A coordinator with no workers: the plan is stored, the children wait.
start_coordinator coord auto "$WORK/job.yaml"
"$BF" status "$WORK/job.yaml" >"$WORK/status.out" 2>&1 || { cat "$WORK/status.out"; fail "status"; }
grep -q '^public.fill waits for public.trading_order (foreign keys on the target)$' "$WORK/status.out" ||
    fail "status does not show fill waiting: $(cat "$WORK/status.out")"
grep -q '^public.trading_order waits for public.customer' "$WORK/status.out" ||
    fail "status does not show trading_order waiting: $(cat "$WORK/status.out")"
"$BF" status "$WORK/job.yaml" --json >"$WORK/status.json"
if command -v python3 >/dev/null; then
    python3 -m json.tool "$WORK/status.json" >/dev/null || fail "status --json is not JSON: $(cat "$WORK/status.json")"
fi
grep -q '"table":"public.fill",[^}]*"waits_for":\["public.trading_order"\]' "$WORK/status.json" ||
    fail "status --json does not show fill waiting: $(cat "$WORK/status.json")"
grep -q '"table":"public.customer",[^}]*"waits_for":\[\]' "$WORK/status.json" ||
    fail "status --json: customer should wait for nothing: $(cat "$WORK/status.json")"
expect_eq "$(redis_cmd ZCARD 'bf:{fko}:pending')" 4 "pending ranges before any worker (customer's)"
start_worker w1
W1=$WPID
start_worker w2
W2=$WPID
start_worker w3
W3=$WPID
expect_job_done_fk() {
    local rc=0
    wait "$CPID" || rc=$?
    [ "$rc" -eq 0 ] || tail -n 30 "$WORK/coord.err"
    expect_eq "$rc" 0 "coordinator exit code"
    for p in "$W1" "$W2" "$W3"; do wait "$p" || fail "a worker exited $?"; done
}
expect_job_done_fk
grep -q 'table public.fill is copied after public.trading_order' "$WORK/coord.err" ||
    fail "coordinator did not log the order"
expect_eq "$(redis_cmd HGET 'bf:{fko}:stats' deferred)" "" "batches deferred (the order left none)"
cat "$WORK"/w*.err >"$WORK/workers.err"
if grep -q 'violates foreign key' "$WORK/workers.err"; then
    fail "a batch failed on a foreign key: $(grep -m1 'violates foreign key' "$WORK/workers.err")"
fi
for t in customer trading_order fill; do
    expect_eq "$(table_md5 fk_tgt "$t" id)" "$(table_md5 fk_src "$t" id)" "md5 of $t"
done
"$BF" verify "$WORK/job.yaml" >"$WORK/verify.out" 2>&1 || { cat "$WORK/verify.out"; fail "verify"; }

# 2. A self-reference: copied in key order, one range after another.
forget_job fks
job fks fk_tgt category >"$WORK/self.yaml"
"$BF" plan "$WORK/self.yaml" >"$WORK/plan2.out" 2>&1 || { cat "$WORK/plan2.out"; fail "plan"; }
grep -q '^table public.category is copied in key order on svc: foreign key category_parent_fk of svc.public.category refers to its own table; one range after another' \
    "$WORK/plan2.out" || fail "plan does not tell the self-reference: $(tail -3 "$WORK/plan2.out")"
nr=$(grep -c '^[0-9]* *public\.category ' "$WORK/plan2.out")
[ "$nr" -ge 4 ] || fail "category should be planned as about 6 ranges: $(cat "$WORK/plan2.out")"
"$BF" run "$WORK/self.yaml" --workers 3 >"$WORK/run2.out" 2>"$WORK/run2.err" ||
    { tail -20 "$WORK/run2.err"; fail "self-referencing table"; }
expect_eq "$(table_md5 fk_tgt category id)" "$(table_md5 fk_src category id)" "md5 of category"
expect_eq "$(redis_cmd HGET 'bf:{fks}:stats' deferred)" "" "batches deferred (key order left none)"
expect_eq "$(redis_cmd HGET 'bf:{fks}:stats' splits)" "" "ranges split (a part would wait for the rows before it)"
expect_eq "$(redis_cmd HGET 'bf:{fks}:stats' done_total)" "$nr" "ranges done"
expect_eq "$(q fk_tgt "SELECT count(*) FROM backfill_rejects")" 0 "rows set aside"
# A row referring to a later range: parked (found by its foreign key value, not by
# halving the batch, not deferred), and so are the rows that refer to it; written
# when every range is done. Every row lands.
forget_job fkn
job fkn fk_tgt node | sed 's/range_rows: 5000/range_rows: 500/; s/batch_rows: 2000/batch_rows: 200/' \
    >"$WORK/node.yaml"
rollbacks() { q postgres "SELECT xact_rollback FROM pg_stat_database WHERE datname = 'fk_tgt'"; }
rb0=$(rollbacks)
"$BF" run "$WORK/node.yaml" --workers 2 >"$WORK/run2b.out" 2>"$WORK/run2b.err" ||
    { tail -20 "$WORK/run2b.err"; fail "a row referring to a later range"; }
sleep 1 # (the workers' statistics reach pg_stat_database when they exit)
rb1=$(rollbacks)
expect_eq "$(table_md5 fk_tgt node id)" "$(table_md5 fk_src node id)" "md5 of node"
grep -q 'table public.node -> svc.public.node: row with key 150 refers to a row target svc does not have yet: parked in public.backfill_rejects there, tried again when every range is done (insert or update on table "node" violates foreign key constraint "node_parent_fk" (Key (parent_id)=(2900) is not present in table "node".))' \
    "$WORK/run2b.err" || fail "row 150 not parked: $(grep -i 'node' "$WORK/run2b.err" | tail -3)"
grep -q 'range 0: target svc refused row 150 of a 200-row batch' "$WORK/run2b.err" ||
    fail "the refused row was not found by its key value: $(grep -m3 'range 0' "$WORK/run2b.err")"
parked=$(grep -c 'parked in public.backfill_rejects' "$WORK/run2b.err")
# The rows under 150 (spread over the ranges) are found in the source before their
# batch is tried, by either worker (the keys parked on the target, and the column
# from their errors, read at each lease): 150's batch is refused, and one after a
# stretch of 4 batches with none (the worker stops looking there), not one per row.
located=$(grep -c 'target svc refused row' "$WORK/run2b.err")
[ "$parked" -ge 20 ] || fail "only $parked rows parked (the test data should park the subtree under 150)"
[ "$located" -le 3 ] || fail "$located refused batches for $parked parked rows"
# A row found that way is tried once, in the savepoint that parks it: not first in
# a batch of its own that the target refuses (a rolled-back transaction each).
[ $((rb1 - rb0)) -le 10 ] || fail "$((rb1 - rb0)) transactions rolled back on the target for $parked parked rows"
grep -q "target svc: writing $parked parked rows again" "$WORK/run2b.err" ||
    fail "parked rows not written again: $(grep -i 'parked' "$WORK/run2b.err" | tail -3)"
if grep -q 'to isolate it\|is retried in' "$WORK/run2b.err"; then
    fail "a batch was halved or deferred: $(grep -m1 'to isolate it\|is retried in' "$WORK/run2b.err")"
fi
expect_eq "$(q fk_tgt "SELECT count(*) FROM backfill_rejects WHERE job = 'fkn'")" 0 "rows left parked"
expect_eq "$(redis_cmd HGET 'bf:{fkn}:stats' parked_total)" 0 "rows counted as parked once written"
expect_eq "$(redis_cmd HGET 'bf:{fkn}:stats' rows:0)" 3000 "rows counted as copied (the parked ones too)"

# 3. An orphan: parked once waiting cannot help; every other row lands, and the job
#    ends naming it (exit 4). With the row it refers to on the target, a run of the
#    finished job writes it.
q fk_src "INSERT INTO trading_order VALUES (60001, 777777, 1); ANALYZE trading_order" >/dev/null
forget_job fkx
job fkx fk_tgt2 trading_order customer >"$WORK/orphan.yaml"
rc=0
"$BF" run "$WORK/orphan.yaml" --workers 2 >"$WORK/run3.out" 2>"$WORK/run3.err" || rc=$?
expect_eq "$rc" 4 "exit code with an orphan row"
expect_eq "$(q fk_tgt2 "SELECT count(*) FROM trading_order")" 60000 "orders landed but the orphan"
grep -q '^every range is done, but not every row is on the targets' "$WORK/run3.out" ||
    fail "run did not say rows are missing: $(cat "$WORK/run3.out")"
grep -q '^  public.trading_order  *60000 rows .*  1 parked$' "$WORK/run3.out" ||
    fail "summary does not count the parked row: $(cat "$WORK/run3.out")"
grep -q '^parked: 1 rows still refer to rows their targets do not have' "$WORK/run3.out" ||
    fail "summary does not say what parked means: $(cat "$WORK/run3.out")"
"$BF" verify "$WORK/orphan.yaml" >"$WORK/verify3.out" 2>&1 || { cat "$WORK/verify3.out"; fail "verify with a parked row"; }
grep -q '^public.trading_order .* 0 mismatching, 1 parked rows (backfill_rejects: they refer to rows the target does not have) not compared$' \
    "$WORK/verify3.out" || fail "verify does not name the parked row: $(cat "$WORK/verify3.out")"
grep -q '^1 parked rows are not on the targets yet' "$WORK/verify3.out" ||
    fail "verify does not say a row is still to be written: $(cat "$WORK/verify3.out")"
"$BF" status "$WORK/orphan.yaml" --json >"$WORK/status3.json"
grep -q '"table":"public.trading_order",[^}]*"rejects":0,"parked":1,' "$WORK/status3.json" ||
    fail "status --json does not count the parked row: $(cat "$WORK/status3.json")"
deferred=$(redis_cmd HGET 'bf:{fkx}:stats' deferred)
[ "${deferred:-0}" -gt 0 ] || fail "the orphan's batch was not deferred (the test did not exercise the path)"
grep -q 'a row refers to one target svc does not have yet (insert or update on table "trading_order" violates foreign key constraint "trading_order_customer_fk"' \
    "$WORK/run3.err" || fail "no deferral logged: $(grep -m3 -i 'foreign' "$WORK/run3.err")"
grep -q '1 parked rows (rows that referred to rows their targets did not have) are still refused (first: svc.public.trading_order key 60001: insert or update on table "trading_order" violates foreign key constraint "trading_order_customer_fk" (Key (customer_id)=(777777) is not present in table "customer".)); they stay parked in public.backfill_rejects' \
    "$WORK/run3.err" || fail "error does not name the orphan: $(grep -i 'error' "$WORK/run3.err" | tail -3)"
expect_eq "$(q fk_tgt2 "SELECT count(*) FROM customer")" 20000 "customers"
rc=0
"$BF" run "$WORK/orphan.yaml" --workers 2 >"$WORK/run3b.out" 2>"$WORK/run3b.err" || rc=$?
expect_eq "$rc" 4 "exit code of the finished job with the orphan still parked"
q fk_tgt2 "INSERT INTO customer VALUES (777777, 'came later')" >/dev/null
"$BF" run "$WORK/orphan.yaml" --workers 2 >"$WORK/run3c.out" 2>"$WORK/run3c.err" ||
    { tail -5 "$WORK/run3c.err"; fail "finished job with the orphan's customer on the target"; }
grep -q '^job is already complete' "$WORK/run3c.out" || fail "run 3c: $(cat "$WORK/run3c.out")"
expect_eq "$(q fk_tgt2 "SELECT count(*) FROM trading_order")" 60001 "orders with the parked one"
expect_eq "$(q fk_tgt2 "SELECT count(*) FROM backfill_rejects WHERE job = 'fkx'")" 0 "rows left parked"
expect_eq "$(redis_cmd HGET 'bf:{fkx}:stats' parked:0)" 0 "parked count once the row went in"
expect_eq "$(redis_cmd HGET 'bf:{fkx}:stats' rows:0)" 60001 "copied count once the row went in"
forget_job fkx2
sed 's/^name: fkx$/name: fkx2/' "$WORK/orphan.yaml" >"$WORK/orphan2.yaml"
sed -i "s#$(uri fk_tgt2)#$(uri fk_tgt3)#" "$WORK/orphan2.yaml"
# Killed before it writes the parked rows again: the count is the workers'.
rc=0
BF_FAULT=before-finish:1:kill "$BF" run "$WORK/orphan2.yaml" --workers 2 --max-rejects 5 \
    >"$WORK/run4k.out" 2>"$WORK/run4k.err" &
kpid=$!
wait "$kpid" 2>/dev/null || rc=$?
rm -f "/tmp/backfill-run-$kpid.sock" # (a killed run cannot remove its socket)
expect_eq "$rc" 137 "exit of the run killed before writing the parked rows again"
expect_eq "$(redis_cmd HGET 'bf:{fkx2}:stats' parked_total)" 1 "rows the workers parked"
"$BF" status "$WORK/orphan2.yaml" >"$WORK/status4.out"
grep -q '^public.trading_order .* 0 *1$' "$WORK/status4.out" ||
    fail "status does not count the parked row: $(cat "$WORK/status4.out")"
"$BF" run "$WORK/orphan2.yaml" --workers 2 --max-rejects 5 >"$WORK/run4.out" 2>"$WORK/run4.err" ||
    { tail -20 "$WORK/run4.err"; fail "orphan with --max-rejects"; }
expect_eq "$(redis_cmd HGET 'bf:{fkx2}:stats' parked_total)" 0 "rows parked once set aside"
# The orphan in a routed table (odd orders to one database, even to another): found
# by the missing value among every route's rows, not by halving the batch.
forget_job fkr
cat >"$WORK/routed.yaml" <<YAML
name: fkr
source: $(uri fk_src)
redis: $BF_REDIS_URL
targets:
  even: $(uri fk_tgt4)
  odd: $(uri fk_tgt5)
batch_rows: 2000
batch_ms: 0
range_rows: 5000
tables:
  - from: customer
    to: even.customer
  - from: customer
    to: odd.customer
  - from: trading_order
    route:
      - when: "id % 2 = 0"
        to: even.trading_order
      - to: odd.trading_order
YAML
rc=0
"$BF" run "$WORK/routed.yaml" --workers 2 >"$WORK/run3r.out" 2>"$WORK/run3r.err" || rc=$?
expect_eq "$rc" 4 "exit code with an orphan row in a routed table"
expect_eq "$(q fk_tgt4 "SELECT count(*) FROM trading_order")" 30000 "even orders"
expect_eq "$(q fk_tgt5 "SELECT count(*) FROM trading_order")" 30000 "odd orders but the orphan"
expect_eq "$(q fk_tgt5 "SELECT key || ' ' || parked FROM backfill_rejects WHERE job = 'fkr'")" "60001 true" \
    "orphan parked on its route's target"
expect_located "$WORK/run3r.err" "the routed orphan" \
    'target odd refused row [0-9]* of a [0-9]*-row batch (insert or update on table "trading_order" violates foreign key constraint "trading_order_customer_fk"'
expect_eq "$(q fk_tgt3 "SELECT count(*) FROM trading_order")" 60000 "orders landed"
expect_eq "$(q fk_tgt3 "SELECT key || ' ' || parked FROM backfill_rejects WHERE job = 'fkx2'")" "60001 false" \
    "orphan set aside"
expect_eq "$(redis_cmd HGET 'bf:{fkx2}:stats' rejects_total)" 1 "rows set aside (counted)"
q fk_src "DELETE FROM trading_order WHERE id = 60001" >/dev/null
# Two source tables into one target table, each with an orphan of the same key
# (7): two parked rows, told apart by their source table (kept under one key they
# overwrote each other, and one row was never written). The target's rejects table
# is of the older layout (no parked, no src): the coordinator brings it up to date.
q fk_src "CREATE TABLE order_a (id bigint PRIMARY KEY, customer_id bigint NOT NULL);
CREATE TABLE order_b (id bigint PRIMARY KEY, customer_id bigint NOT NULL);
INSERT INTO order_a SELECT g, CASE WHEN g = 7 THEN 888888 ELSE 1 + g % 100 END FROM generate_series(1, 300) g;
INSERT INTO order_b SELECT g, CASE WHEN g = 7 THEN 888888 ELSE 1 + g % 100 END FROM generate_series(1, 300) g;
ANALYZE order_a, order_b" >/dev/null
q fk_tgt6 "CREATE TABLE orders_all (id bigint PRIMARY KEY, customer_id bigint NOT NULL
    CONSTRAINT orders_all_customer_fk REFERENCES customer DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE public.backfill_rejects (job text NOT NULL, range_id bigint NOT NULL, tbl text NOT NULL,
    key text NOT NULL, error text NOT NULL, row jsonb, at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, tbl, key))" >/dev/null
forget_job fkm
cat >"$WORK/merge.yaml" <<YAML
name: fkm
source: $(uri fk_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri fk_tgt6)
tables:
  - from: customer
    to: svc.customer
  - from: order_a
    to: svc.orders_all
  - from: order_b
    to: svc.orders_all
    columns:
      id: id + 1000000
YAML
rc=0
"$BF" run "$WORK/merge.yaml" --workers 2 >"$WORK/run3m.out" 2>"$WORK/run3m.err" || rc=$?
expect_eq "$rc" 4 "exit code with an orphan of the same key in two source tables"
expect_eq "$(q fk_tgt6 "SELECT count(*) FROM backfill_rejects WHERE job = 'fkm' AND parked")" 2 \
    "orphans parked"
expect_eq "$(q fk_tgt6 "SELECT string_agg(src || ' ' || key || ' ' || parked, ', ' ORDER BY src)
    FROM backfill_rejects WHERE job = 'fkm'")" "public.order_a 7 true, public.order_b 7 true" \
    "both orphans parked"
q fk_tgt6 "INSERT INTO customer VALUES (888888, 'came later')" >/dev/null
"$BF" run "$WORK/merge.yaml" --workers 2 >"$WORK/run3n.out" 2>"$WORK/run3n.err" ||
    { tail -5 "$WORK/run3n.err"; fail "merged tables with the orphans' customer on the target"; }
expect_eq "$(q fk_tgt6 "SELECT count(*) FROM orders_all")" 600 "orders of both source tables"
expect_eq "$(q fk_tgt6 "SELECT count(*) FROM orders_all WHERE id IN (7, 1000007)")" 2 "both orphans written"

# A foreign key of two columns (region, code): the refusal prints both values
# joined by ", " (one holds ", " itself); the orphan is found by them, not by
# halving the batch.
q fk_src "CREATE TABLE warehouse (region text, code int, PRIMARY KEY (region, code));
INSERT INTO warehouse SELECT r, c FROM unnest(ARRAY['eu', 'us, east']) r, generate_series(1, 20) c;
CREATE TABLE stock (id bigint PRIMARY KEY, region text NOT NULL, code int NOT NULL, qty int);
INSERT INTO stock SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us, east' END, 1 + g % 20, g
    FROM generate_series(1, 3000) g;
UPDATE stock SET code = 99 WHERE id = 1235;
ANALYZE warehouse, stock" >/dev/null
q fk_tgt7 "CREATE TABLE warehouse (region text, code int, PRIMARY KEY (region, code));
CREATE TABLE stock (id bigint PRIMARY KEY, region text NOT NULL, code int NOT NULL, qty int,
    CONSTRAINT stock_warehouse_fk FOREIGN KEY (region, code) REFERENCES warehouse)" >/dev/null
forget_job fkw
job fkw fk_tgt7 stock warehouse >"$WORK/composite.yaml"
rc=0
"$BF" run "$WORK/composite.yaml" --workers 2 >"$WORK/run3w.out" 2>"$WORK/run3w.err" || rc=$?
expect_eq "$rc" 4 "exit code with an orphan of a two-column foreign key"
expect_eq "$(q fk_tgt7 "SELECT count(*) FROM stock")" 2999 "stock but the orphan"
expect_eq "$(q fk_tgt7 "SELECT key || ' ' || parked FROM backfill_rejects WHERE job = 'fkw'")" "1235 true" \
    "orphan of a two-column key parked"
expect_located "$WORK/run3w.err" "the orphan of a two-column key" \
    'target svc refused row 1235 of a 2000-row batch (insert or update on table "stock" violates foreign key constraint "stock_warehouse_fk"'

# 4. A cycle: not ordered; deferrals bring it through.
forget_job fkc
job fkc fk_tgt3 a b | sed 's/range_rows: 5000/range_rows: 400/; s/batch_rows: 2000/batch_rows: 200/' \
    >"$WORK/cycle.yaml"
"$BF" plan "$WORK/cycle.yaml" >"$WORK/plan4.out" 2>&1 || { cat "$WORK/plan4.out"; fail "plan"; }
grep -q 'not ordered on svc: foreign key a_b_fk of svc.public.a refers to svc.public.b, which refers back to it (a cycle)' \
    "$WORK/plan4.out" || fail "plan does not warn about the cycle: $(tail -3 "$WORK/plan4.out")"
"$BF" run "$WORK/cycle.yaml" --workers 2 >"$WORK/run5.out" 2>"$WORK/run5.err" ||
    { tail -20 "$WORK/run5.err"; fail "cycle"; }
for t in a b; do
    expect_eq "$(table_md5 fk_tgt3 "$t" id)" "$(table_md5 fk_src "$t" id)" "md5 of $t"
done
for j in fko fks fkn fkx fkx2 fkc fkw fkr fkm; do forget_job "$j"; done

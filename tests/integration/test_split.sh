#!/usr/bin/env bash
# Straggler splitting: a table planned as one range still uses every worker. The
# coordinator sees idle workers and nothing pending and asks the owner (SHRINK) to
# split its range past its cursor; the new parts are leased to the idle workers.
# Insert mode with a primary key on the target: a row copied twice would fail the
# job, a row never copied fails the comparison. Twice: split keys placed from the
# column's histogram (pg_stats), then with the column's statistics removed, found
# by reading keys. Then once with batches of seconds: the owner ends
# the batch in flight early (at the last row it relayed, committed) so that the
# split need not wait for the whole batch.
. "$(dirname "$0")/lib.sh"
fresh_db sp_src sp_tgt
make_monolith sp_src 300000
make_service sp_tgt

# split_run JOB HOW: copies orders planned as one range with 3 workers; every
# split's keys must come from HOW.
split_run() {
    local job=$1 how=$2
    forget_job "$job"
    q sp_tgt "TRUNCATE orders" >/dev/null
    cat >"$WORK/$job.yaml" <<YAML
name: $job
source: $(uri sp_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri sp_tgt)
batch_rows: 100
batch_ms: 0
range_rows: 10000000
tables:
  - from: public.orders
    to: svc.public.orders
YAML
    "$BF" plan "$WORK/$job.yaml" >"$WORK/$job.plan"
    expect_eq "$(grep -c 'public.orders' "$WORK/$job.plan")" 1 "ranges planned for orders"

    "$BF" run "$WORK/$job.yaml" --workers 3 --log-level debug >"$WORK/$job.out" 2>"$WORK/$job.err" ||
        { rc=$?; tail -30 "$WORK/$job.err"; fail "run exited $rc"; }
    grep -q 'job complete' "$WORK/$job.out" || fail "no 'job complete' in run output"
    local splits
    splits=$(grep -c 'split at key' "$WORK/$job.err" || true)
    [ "$splits" -ge 2 ] || { grep -E 'split|SHRINK' "$WORK/$job.err" | tail; fail "expected >= 2 splits, saw $splits"; }
    grep -q "split keys from $how" "$WORK/$job.err" ||
        { grep 'split keys from' "$WORK/$job.err"; fail "no split keys from $how"; }
    # Every worker copied rows.
    grep 'copied by this worker' "$WORK/$job.err" >"$WORK/$job.finished"
    expect_eq "$(wc -l <"$WORK/$job.finished")" 3 "workers that finished"
    if grep -q ' 0 rows copied by this worker' "$WORK/$job.finished"; then
        cat "$WORK/$job.finished"
        fail "a worker copied nothing: the range was not shared"
    fi
    a=$(q sp_src "SELECT count(*), sum(hashtext(o::text)) FROM orders o")
    b=$(q sp_tgt "SELECT count(*), sum(hashtext(o::text)) FROM orders o")
    expect_eq "$b" "$a" "rows and checksum of orders"
    "$BF" verify "$WORK/$job.yaml" >"$WORK/$job.verify" || { cat "$WORK/$job.verify"; fail "verify"; }
    grep -q 'verify: OK' "$WORK/$job.verify" || fail "verify did not say OK"
    "$BF" status "$WORK/$job.yaml" --json >"$WORK/$job.json"
    grep -q '"table":"public.orders","ranges":[0-9]*,"done":[0-9]*,"leased":0,"pending":0,"failed":0,"rows":300000' \
        "$WORK/$job.json" || { cat "$WORK/$job.json"; fail "status rows"; }
}

split_run sp "the column's histogram"
# Without statistics on the key column the histogram cannot place the keys.
# (Statistics target 0 keeps ANALYZE off the column; the old row is deleted: the
# test's user is the sandbox's superuser.)
q sp_src "ALTER TABLE orders ALTER COLUMN id SET STATISTICS 0;
    DELETE FROM pg_statistic WHERE starelid = 'orders'::regclass
        AND staattnum = (SELECT attnum FROM pg_attribute
                         WHERE attrelid = 'orders'::regclass AND attname = 'id');
    ANALYZE orders" >/dev/null
expect_eq "$(q sp_src "SELECT count(*) FROM pg_stats WHERE tablename = 'orders' AND attname = 'id'")" 0 \
    "statistics left on orders.id"
split_run sp2 "index reads"

# One batch would be the whole table (1.5M rows, seconds): the first SHRINK comes
# while it streams, and must not wait for it.
q sp_src "CREATE TABLE big (id bigint PRIMARY KEY, v text, n numeric);
    INSERT INTO big SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 1500000) g;
    ANALYZE big" >/dev/null
q sp_tgt "CREATE TABLE big (id bigint PRIMARY KEY, v text, n numeric)" >/dev/null
forget_job spb
cat >"$WORK/spb.yaml" <<YAML
name: spb
source: $(uri sp_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri sp_tgt)
batch_rows: 1500000
batch_ms: 0
range_rows: 10000000
tables:
  - from: big
    to: svc.big
YAML
"$BF" run "$WORK/spb.yaml" --workers 3 --log-level debug >"$WORK/spb.out" 2>"$WORK/spb.err" ||
    { rc=$?; tail -30 "$WORK/spb.err"; fail "run exited $rc"; }
grep -q 'batch ended early after [0-9]* rows, at key [0-9]*, to split' "$WORK/spb.err" ||
    { grep -E 'split|batch' "$WORK/spb.err" | tail; fail "no batch was ended early for a split"; }
# (Parts of at least a quarter batch: with batches this large, fewer splits.)
grep -q 'split at key' "$WORK/spb.err" || fail "the range was not split"
expect_eq "$(q sp_tgt "SELECT count(*), sum(hashtext(b::text)) FROM big b")" \
    "$(q sp_src "SELECT count(*), sum(hashtext(b::text)) FROM big b")" "rows and checksum of big"
"$BF" verify "$WORK/spb.yaml" >"$WORK/spb.verify" || { cat "$WORK/spb.verify"; fail "verify"; }
forget_job spb

#!/usr/bin/env bash
# Issue 3, acceptance 2: one monolith table split between two services. A `where`
# filter drops cancelled invoices, `columns` renames and computes columns, and
# `route` sends even publishers to billing and every other row (odd or NULL
# publisher) to operations. Each target holds exactly its rows, with the
# expressions' values, and verify passes.
. "$(dirname "$0")/lib.sh"
fresh_db tr_src tr_billing tr_ops
q tr_src "
CREATE TABLE billing_invoice (id bigint PRIMARY KEY, publisher_id integer, amount numeric(12,2)
    NOT NULL, status smallint NOT NULL, created_at timestamptz NOT NULL, note text);
INSERT INTO billing_invoice SELECT g, CASE WHEN g % 17 = 0 THEN NULL ELSE g % 50 END,
    (g % 1000) / 7.0, g % 5, '2022-01-01'::timestamptz + g * interval '1 minute',
    'note ' || g FROM generate_series(1, 30000) g;
ANALYZE;" >/dev/null
for db in tr_billing tr_ops; do
    q "$db" "CREATE TABLE invoice (id bigint PRIMARY KEY, customer_id integer,
        amount_cents bigint NOT NULL, created timestamptz NOT NULL, kind text DEFAULT 'legacy',
        note text)" >/dev/null
done
forget_job tr
cat >"$WORK/job.yaml" <<YAML
name: tr
source: $(uri tr_src)
redis: $BF_REDIS_URL
targets:
  billing: $(uri tr_billing)
  operations: $(uri tr_ops)
batch_rows: 1000
range_rows: 8000
tables:
  - from: public.billing_invoice
    where: "status <> 4"
    columns:
      customer_id: publisher_id
      amount_cents: (amount * 100)::bigint
      created: created_at
      note: ~
    route:
      - when: "publisher_id % 2 = 0"
        to: billing.public.invoice
      - to: operations.invoice
YAML
"$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run.out" 2>"$WORK/run.err" ||
    fail "run: $(tail -5 "$WORK/run.err")"
"$BF" verify "$WORK/job.yaml" >"$WORK/verify.out" 2>&1 || { cat "$WORK/verify.out"; fail "verify"; }

# Exactly the right rows on each side: compare ordered md5s with the same rows
# computed on the source.
expected() { # expected CONDITION
    q tr_src "SELECT md5(coalesce(string_agg(id || '|' || coalesce(publisher_id::text, 'N') || '|' ||
        (amount * 100)::bigint || '|' || created_at || '|legacy|N', E'\n' ORDER BY id), ''))
        FROM billing_invoice WHERE status <> 4 AND ($1)"
}
actual() { # actual DB
    q "$1" "SELECT md5(coalesce(string_agg(id || '|' || coalesce(customer_id::text, 'N') || '|' ||
        amount_cents || '|' || created || '|' || kind || '|' || coalesce(note, 'N'), E'\n'
        ORDER BY id), '')) FROM invoice"
}
expect_eq "$(actual tr_billing)" "$(expected "publisher_id % 2 = 0")" "billing rows"
expect_eq "$(actual tr_ops)" "$(expected "publisher_id % 2 <> 0 OR publisher_id IS NULL")" \
    "operations rows"
nb=$(q tr_billing "SELECT count(*) FROM invoice")
no=$(q tr_ops "SELECT count(*) FROM invoice")
want=$(q tr_src "SELECT count(*) FROM billing_invoice WHERE status <> 4")
expect_eq "$((nb + no))" "$want" "rows in both targets"
expect_eq "$(q tr_ops "SELECT count(*) FROM invoice WHERE customer_id IS NULL")" \
    "$(q tr_src "SELECT count(*) FROM billing_invoice WHERE status <> 4 AND publisher_id IS NULL")" \
    "NULL publishers routed to operations"
expect_eq "$(q tr_billing "SELECT count(*) FROM invoice WHERE customer_id % 2 <> 0")" 0 \
    "odd publishers in billing"
echo "billing $nb rows, operations $no rows, filtered $(($(q tr_src 'SELECT count(*) FROM billing_invoice') - want))"

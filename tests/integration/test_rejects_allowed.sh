#!/usr/bin/env bash
# Issue 3, acceptance 4: the target refuses 3 rows of 100,000 (a value too long
# for its varchar(10) column, and a CHECK constraint). With --max-rejects 10 the job
# finishes: 99,997 rows land and the 3 are in backfill_rejects with their keys,
# errors and the row as JSON; status and the summary count them; verify passes
# (refused rows are left out of the comparison). With the default (0) the job stops
# with an error naming the table and the key.
. "$(dirname "$0")/lib.sh"
fresh_db rj_src rj_tgt rj_tgt2 rj_tgt3
q rj_src "
CREATE TABLE items (id bigint PRIMARY KEY, code text NOT NULL, qty integer NOT NULL);
INSERT INTO items SELECT g, 'C' || g, g % 100 FROM generate_series(1, 100000) g;
UPDATE items SET code = 'much-too-long-' || id WHERE id IN (12345, 67890);
UPDATE items SET qty = -5 WHERE id = 99999;
ANALYZE;" >/dev/null
for db in rj_tgt rj_tgt2 rj_tgt3; do
    q "$db" "CREATE TABLE items (id bigint PRIMARY KEY, code varchar(10) NOT NULL,
        qty integer NOT NULL CHECK (qty >= 0))" >/dev/null
done
job() { # job NAME DB
    cat <<YAML
name: $1
source: $(uri rj_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri "$2")
batch_rows: 4000
range_rows: 25000
tables:
  - from: items
    to: svc.items
YAML
}
forget_job rja
job rja rj_tgt >"$WORK/allowed.yaml"
"$BF" run "$WORK/allowed.yaml" --workers 3 --max-rejects 10 >"$WORK/run.out" 2>"$WORK/run.err" ||
    fail "run with --max-rejects 10: $(grep -i error "$WORK/run.err" | tail -3)"
expect_eq "$(q rj_tgt "SELECT count(*) FROM items")" 99997 "rows landed"
expect_eq "$(q rj_tgt "SELECT string_agg(key, ',' ORDER BY key::bigint) FROM backfill_rejects
    WHERE job = 'rja' AND tbl = 'svc.public.items'")" "12345,67890,99999" "rejected keys"
q rj_tgt "SELECT key, error, row FROM backfill_rejects ORDER BY key::bigint" >"$WORK/rejects.txt"
grep -q '^12345|.*too long.*|{"id": 12345, "qty": 45, "code": "much-too-long-12345"}$' "$WORK/rejects.txt" ||
    fail "reject 12345 not as expected: $(cat "$WORK/rejects.txt")"
grep -q '^99999|.*violates check constraint' "$WORK/rejects.txt" ||
    fail "reject 99999 not as expected: $(cat "$WORK/rejects.txt")"
grep -q 'rejected: 3 rows' "$WORK/run.out" || fail "summary does not count them: $(cat "$WORK/run.out")"
"$BF" status "$WORK/allowed.yaml" --json >"$WORK/status.json"
grep -q '"rejects":3' "$WORK/status.json" || fail "status does not count them: $(cat "$WORK/status.json")"
"$BF" verify "$WORK/allowed.yaml" >"$WORK/verify.out" 2>&1 || { cat "$WORK/verify.out"; fail "verify"; }
grep -q '3 refused rows' "$WORK/verify.out" || fail "verify does not mention them: $(cat "$WORK/verify.out")"
expect_eq "$(table_md5 rj_tgt items id)" \
    "$(q rj_src "SELECT md5(coalesce(string_agg(t::text, E'\n' ORDER BY id), '')) FROM items t
        WHERE id NOT IN (12345, 67890, 99999)")" "md5 of the rows that landed"

# The default: the first refused row stops the job, naming table and key.
forget_job rjd
job rjd rj_tgt2 >"$WORK/default.yaml"
rc=0
"$BF" run "$WORK/default.yaml" --workers 2 >"$WORK/run2.out" 2>"$WORK/run2.err" || rc=$?
expect_eq "$rc" 4 "exit code with the default --max-rejects"
grep -q 'table public.items -> svc.public.items: the target refused the row with key [0-9]*: value too long\|table public.items -> svc.public.items: the target refused the row with key 99999: new row for relation "items" violates check constraint' "$WORK/run2.err" ||
    fail "error does not name table and key: $(grep -i error "$WORK/run2.err" | tail -3)"
grep -q 'job stopped' "$WORK/run2.err" || fail "no 'job stopped' line"
expect_eq "$(q rj_tgt2 "SELECT count(*) FROM backfill_rejects")" 0 "rows set aside with the default"

# Past the allowance: with --max-rejects 2 the third refused row stops the job, and
# the rows set aside so far are shown with their errors.
forget_job rjm
job rjm rj_tgt3 >"$WORK/max2.yaml"
rc=0
"$BF" run "$WORK/max2.yaml" --workers 1 --max-rejects 2 >"$WORK/run3.out" 2>"$WORK/run3.err" || rc=$?
expect_eq "$rc" 4 "exit code past --max-rejects 2"
grep -q 'the target refused the row with key 99999: .*2 rows were refused already, the most --max-rejects allows (2)' \
    "$WORK/run3.err" || fail "no past-the-limit error: $(grep -i error "$WORK/run3.err" | tail -3)"
expect_eq "$(grep -c 'refused earlier' "$WORK/run3.err")" 2 "earlier refused rows shown"
grep -q 'refused earlier (first of 2 in public.backfill_rejects on svc): svc.public.items key 12345: value too long' \
    "$WORK/run3.err" || fail "first refused row not shown: $(grep 'refused earlier' "$WORK/run3.err")"

# A row refused while its batch was isolated is tried once more before it is set
# aside (it may have changed, or the row it refers to come meanwhile): here the
# target refuses row 5 only its first 5 times (a trigger counting with a sequence,
# which a rollback does not undo). Batches of 8: (0,8] fails, (0,4] lands, (4,12],
# (4,8], (4,6] and (4,5] fail; the 6th try, the one before setting it aside, lets
# it in: every row lands, nothing is set aside.
fresh_db rj_src2 rj_tgt4
q rj_src2 "CREATE TABLE items (id bigint PRIMARY KEY, code text NOT NULL, qty integer NOT NULL);
    INSERT INTO items SELECT g, 'C' || g, g FROM generate_series(1, 20) g; ANALYZE" >/dev/null
q rj_tgt4 "CREATE TABLE items (id bigint PRIMARY KEY, code text NOT NULL, qty integer NOT NULL);
    CREATE SEQUENCE tries;
    CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS \$\$
    BEGIN
        IF NEW.id = 5 AND nextval('tries') <= 5 THEN
            RAISE EXCEPTION 'row 5 refused (try %)', currval('tries') USING ERRCODE = '23514';
        END IF;
        RETURN NEW;
    END \$\$;
    CREATE TRIGGER flaky BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION flaky();" >/dev/null
forget_job rjt
cat >"$WORK/retry.yaml" <<YAML
name: rjt
source: $(uri rj_src2)
redis: $BF_REDIS_URL
targets:
  svc: $(uri rj_tgt4)
batch_rows: 8
batch_ms: 0
range_rows: 1000
tables:
  - from: items
    to: svc.items
YAML
"$BF" run "$WORK/retry.yaml" --workers 1 --max-rejects 5 >"$WORK/run5.out" 2>"$WORK/run5.err" ||
    { tail -5 "$WORK/run5.err"; fail "run with a row refused 5 times"; }
expect_eq "$(q rj_tgt4 "SELECT count(*) FROM items")" 20 "rows landed"
expect_eq "$(q rj_tgt4 "SELECT count(*) FROM backfill_rejects")" 0 "rows set aside"
expect_eq "$(q rj_tgt4 "SELECT last_value FROM tries")" 6 "tries of row 5"
grep -q 'range 0: the row target svc refused went in when tried again (row 5 refused (try 5)' \
    "$WORK/run5.err" || fail "the second try is not logged: $(grep -i 'refused' "$WORK/run5.err" | tail -3)"
forget_job rjt

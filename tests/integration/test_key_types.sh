#!/usr/bin/env bash
# Issue 3, acceptance 1: every key type and every column shape. Tables keyed by
# bigint, integer and smallint (negative keys, both ends of each range: the worker
# reads these keys binary), text in an ICU collation,
# uuid, a composite key (integer, varchar, bigint), a unique non-primary key named
# with `key:`, plus an empty and a one-row table. Columns: numeric (NaN, huge),
# jsonb, arrays, bytea with NUL bytes, inet, timestamptz with +-infinity, text
# with tabs, newlines, backslashes and non-ASCII, NULLs. Small ranges and batches
# put boundaries and cursors inside every key type. Verify passes and every
# table's row-level md5 (ordered by key, computed in SQL) matches.
. "$(dirname "$0")/lib.sh"
fresh_db kt_src kt_tgt
coll=$(q postgres "SELECT collname FROM pg_collation WHERE collname = 'en-x-icu'")
coll_clause=${coll:+COLLATE \"$coll\"}
ddl="
CREATE TABLE big (id bigint PRIMARY KEY, n numeric, j jsonb, a int[], b bytea, ip inet,
    ts timestamptz, t text);
CREATE TABLE txt (code text $coll_clause PRIMARY KEY, v integer, note varchar(40));
CREATE TABLE uu (id uuid PRIMARY KEY, payload jsonb, tags text[]);
CREATE TABLE comp (tenant integer, code varchar(20), seq bigint, v text, d date,
    PRIMARY KEY (tenant, code, seq));
CREATE TABLE ukey (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text);
CREATE TABLE empty (id integer PRIMARY KEY, v text);
CREATE TABLE small (id smallint PRIMARY KEY, v text);
CREATE TABLE mid (id integer PRIMARY KEY, v text);
CREATE TABLE one (k text PRIMARY KEY, v text);
CREATE TABLE late (v text, id bigint PRIMARY KEY);"
q kt_src "$ddl" >/dev/null
q kt_tgt "$ddl" >/dev/null
# An integer key copied to a wider column (cast: not relayed as the row's first
# field) and one that is not the first column: the key comes as an extra column.
q kt_src "CREATE TABLE widened (id integer PRIMARY KEY, v text)" >/dev/null
q kt_tgt "CREATE TABLE widened (id bigint PRIMARY KEY, v text)" >/dev/null
q kt_src "
INSERT INTO big SELECT g * 7919 - 40000000, CASE WHEN g % 11 = 0 THEN NULL WHEN g % 13 = 0
        THEN 'NaN' ELSE (g * 1.000000001) ^ 3 END,
    CASE WHEN g % 5 = 0 THEN NULL ELSE jsonb_build_object('g', g, 'nested', jsonb_build_array(g,
        'x', jsonb_build_object('k', E'v\\t\"q\"'))) END,
    ARRAY[g, -g, NULL], CASE WHEN g % 4 = 0 THEN NULL ELSE decode(lpad(to_hex(g), 8, '0') ||
        '00ff00', 'hex') END, CASE WHEN g % 2 = 0 THEN ('10.0.' || (g % 256) || '.1')::inet
        ELSE ('2001:db8::' || to_hex(g))::inet END,
    CASE WHEN g % 97 = 0 THEN 'infinity' WHEN g % 89 = 0 THEN '-infinity' ELSE
        '2001-02-03 04:05:06.789+02'::timestamptz + g * interval '1 hour 1 second' END,
    CASE WHEN g % 3 = 0 THEN NULL ELSE E'tab\there\nnew line \\\\ back\\\\slash caf\u00e9 \u65e5\u672c '
        || g END
    FROM generate_series(1, 12000) g;
INSERT INTO big VALUES (9223372036854775807, 1, '{}', '{}', '', '::1', 'infinity', 'max'),
    (-9223372036854775808, -1, '[]', NULL, NULL, NULL, '-infinity', 'min'),
    (0, 0, 'null', '{0}', '\\x00', '0.0.0.0/0', 'epoch', '');
INSERT INTO txt SELECT w, g, 'note ' || g FROM (SELECT g, (ARRAY['apple', 'Apple', E'\u00e9clair',
    'eclair', 'Zebra', 'zebra', E'\u00c5ngstr\u00f6m', 'a b', 'a-b', 'ab', '10', '9', E'caf\u00e9',
    E'\u65e5\u672c', E'x\ty'])[1 + g % 15] || ' ' || g AS w FROM generate_series(1, 6000) g) s;
INSERT INTO uu SELECT md5(g::text)::uuid, jsonb_build_object('g', g), ARRAY['t' || g, NULL]
    FROM generate_series(1, 8000) g;
INSERT INTO comp SELECT g % 7 - 3, (ARRAY['EUR', 'usd', E'J\u00fcrgen', 'a''b', ''])[1 + g % 5],
    g, 'v' || g, DATE '2020-01-01' + g FROM generate_series(1, 9000) g;
INSERT INTO ukey (email, name) SELECT 'user' || g || '@example.' || (ARRAY['com', 'org'])[1 + g % 2],
    'User ' || g FROM generate_series(1, 3000) g;
INSERT INTO one VALUES ('only', 'row');
INSERT INTO small SELECT g, 's' || g FROM generate_series(-32768, 32766, 7) g;
INSERT INTO small VALUES (32767, 'max');
INSERT INTO mid SELECT g::bigint * 429497 - 2147483648, 'm' || g FROM generate_series(0, 9999) g;
INSERT INTO mid VALUES (2147483647, 'max'), (-1, 'minus one');
INSERT INTO late SELECT 'l' || g, g * 13 - 30000 FROM generate_series(1, 5000) g;
INSERT INTO widened SELECT g * 3 - 7000, 'w' || g FROM generate_series(1, 5000) g;
ANALYZE;" >/dev/null
forget_job kt
cat >"$WORK/job.yaml" <<YAML
name: kt
source: $(uri kt_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri kt_tgt)
batch_rows: 700
range_rows: 2500
tables:
  - from: big
    to: svc.big
  - from: txt
    to: svc.txt
  - from: uu
    to: svc.uu
  - from: comp
    to: svc.comp
  - from: ukey
    key: [email]
    to: svc.ukey
  - from: empty
    to: svc.empty
  - from: one
    to: svc.one
  - from: late
    to: svc.late
  - from: widened
    to: svc.widened
  - from: small
    to: svc.small
  - from: mid
    to: svc.mid
YAML
"$BF" plan "$WORK/job.yaml" >"$WORK/plan.out" 2>"$WORK/plan.err" || fail "plan: $(cat "$WORK/plan.err")"
for t in big txt uu comp ukey small mid late widened; do
    n=$(grep -c "public.$t " "$WORK/plan.out" || true)
    [ "$n" -ge 2 ] || fail "table $t planned as $n ranges, expected several: $(cat "$WORK/plan.out")"
done
"$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run.out" 2>"$WORK/run.err" ||
    fail "run: $(tail -5 "$WORK/run.err")"
"$BF" verify "$WORK/job.yaml" >"$WORK/verify.out" 2>&1 || { cat "$WORK/verify.out"; fail "verify"; }
for spec in big:id txt:code uu:id "comp:tenant, code, seq" ukey:email empty:id one:k small:id \
    mid:id late:id widened:id; do
    t=${spec%%:*} k=${spec#*:}
    expect_eq "$(q kt_tgt "SELECT count(*) FROM $t")" "$(q kt_src "SELECT count(*) FROM $t")" \
        "row count of $t"
    expect_eq "$(table_md5 kt_tgt "$t" "$k")" "$(table_md5 kt_src "$t" "$k")" "md5 of $t"
done
# Collation-correct: the text key's ranges follow the column's ICU order, so every
# row landed (checked above) and the bounds interleave upper and lower case.
echo "$(grep -c . "$WORK/plan.out") ranges; collation ${coll:-default}; all tables match"
# verify names the keys that differ, a key of several columns too (its text is the
# same on both sides: each column as text, whatever its type).
IFS='|' read -r ct cc cs < <(q kt_tgt "SELECT tenant, code, seq FROM comp ORDER BY 1, 2, 3 OFFSET 10 LIMIT 1")
q kt_tgt "UPDATE comp SET v = v || 'x' WHERE (tenant, code, seq) = ($ct, '$cc', $cs)" >/dev/null
rc=0
"$BF" verify "$WORK/job.yaml" >"$WORK/verify2.out" 2>&1 || rc=$?
expect_eq "$rc" 1 "exit code of verify with a changed row of a three-column key"
grep -A1 '^MISMATCH public.comp' "$WORK/verify2.out" | grep -qxF "  key [\"$ct\", \"$cc\", \"$cs\"]: different values" ||
    fail "the changed row of comp is not named: $(grep -A3 '^MISMATCH public.comp' "$WORK/verify2.out")"

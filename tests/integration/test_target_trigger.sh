#!/usr/bin/env bash
# A target table whose BEFORE INSERT trigger drops some rows (a trigger that skips
# rows the service already has, say): COPY then reports fewer rows than the
# worker sent, which must not be taken for the end of the range. Every row the
# trigger lets through arrives, in insert and in upsert mode; also, text keys
# longer than 512 bytes of a row the target rejects are kept whole. Then the
# sessions' text: encoding and DateStyle (below).
. "$(dirname "$0")/lib.sh"
fresh_db tt_src tt_tgt
q tt_src "CREATE TABLE ev (id bigint PRIMARY KEY, v text NOT NULL);
    INSERT INTO ev SELECT g, 'v' || g FROM generate_series(1, 20000) g;
    CREATE TABLE lk (k text PRIMARY KEY, v int NOT NULL);
    INSERT INTO lk SELECT lpad(g::text, 600, 'k'), g FROM generate_series(1, 50) g; ANALYZE"
q tt_tgt "CREATE TABLE ev (id bigint PRIMARY KEY, v text NOT NULL);
    CREATE FUNCTION drop_odd() RETURNS trigger LANGUAGE plpgsql AS
        \$\$ BEGIN IF NEW.id % 2 = 1 THEN RETURN NULL; END IF; RETURN NEW; END \$\$;
    CREATE TRIGGER drop_odd BEFORE INSERT ON ev FOR EACH ROW EXECUTE FUNCTION drop_odd();
    CREATE TABLE lk (k text PRIMARY KEY, v int NOT NULL CHECK (v <> 7))"
for mode in insert upsert; do
    forget_job "tt$mode"
    q tt_tgt "TRUNCATE ev, lk; DROP TABLE IF EXISTS backfill_fence, backfill_rejects"
    cat >"$WORK/job.yaml" <<YAML
name: tt$mode
source: $(uri tt_src)
redis: $BF_REDIS_URL
targets:
  t: $(uri tt_tgt)
batch_rows: 1000
batch_ms: 0
range_rows: 10000
tables:
  - from: ev
    to: t.ev
    mode: $mode
  - from: lk
    to: t.lk
    mode: $mode
YAML
    "$BF" run "$WORK/job.yaml" --workers 2 --max-rejects 5 >"$WORK/$mode.out" 2>"$WORK/$mode.err" ||
        { tail "$WORK/$mode.err" >&2; fail "$mode: run exited $?"; }
    expect_eq "$(q tt_tgt 'SELECT count(*) FROM ev')" 10000 "$mode: rows the trigger let through"
    expect_eq "$(q tt_tgt 'SELECT max(id) FROM ev')" 20000 "$mode: the last even row"
    expect_eq "$(q tt_tgt 'SELECT count(*) FROM lk')" 49 "$mode: long-key rows"
    expect_eq "$(q tt_tgt "SELECT length(key) FROM backfill_rejects WHERE job = 'tt$mode'")" 600 \
        "$mode: the rejected row's key, whole"
done

# Sessions: text goes as UTF-8 whatever each database's encoding (a LATIN1
# target gets 'café', not its UTF-8 bytes as two characters), and keys are the
# same text for a coordinator whose environment sets another DateStyle than its
# workers' (range bounds of a date key).
q postgres "DROP DATABASE IF EXISTS tt_l1"
q postgres "CREATE DATABASE tt_l1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
CREATED_DBS+=(tt_l1)
q tt_src "CREATE TABLE dk (d date PRIMARY KEY, s text NOT NULL);
    INSERT INTO dk SELECT DATE '2020-01-01' + g, 'café ' || g FROM generate_series(0, 999) g; ANALYZE dk"
q tt_l1 "CREATE TABLE dk (d date PRIMARY KEY, s text NOT NULL)"
forget_job ttenc
cat >"$WORK/enc.yaml" <<YAML
name: ttenc
source: $(uri tt_src)
redis: $BF_REDIS_URL
targets:
  t: $(uri tt_l1)
batch_rows: 100
batch_ms: 0
range_rows: 100
tables:
  - from: dk
    to: t.dk
YAML
PGDATESTYLE='SQL, DMY' start_coordinator cenc auto "$WORK/enc.yaml"
cenc=$CPID
start_worker wenc
rc=0
wait "$cenc" || rc=$?
[ "$rc" = 0 ] || { tail "$WORK/cenc.err" "$WORK/wenc.err" >&2; fail "encoding job: coordinator exit $rc"; }
wait "$WPID" || fail "encoding job: worker exit $?"
expect_eq "$(q tt_l1 'SELECT count(*) FROM dk')" 1000 "date-keyed rows"
expect_eq "$(PGCLIENTENCODING=UTF8 q tt_l1 "SELECT count(*) FROM dk WHERE s = 'café ' || (d - DATE '2020-01-01')")" 1000 \
    "rows whose text arrived as the same characters in a LATIN1 database"

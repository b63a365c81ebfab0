#!/usr/bin/env bash
# Issue 3, acceptance 3: the target already holds rows the application changed.
# skip keeps them (and rows the application writes while the job runs), upsert
# overwrites them, newer overwrites exactly those whose version is older than the
# source's. Every row of every table is checked. Rows the columns map to one target
# key (the latest event per account) meet in one batch: newer keeps the one with
# the greatest version.
. "$(dirname "$0")/lib.sh"
fresh_db md_src md_tgt
q md_src "
CREATE TABLE acct (id bigint PRIMARY KEY, balance integer NOT NULL, updated_at timestamptz NOT NULL);
INSERT INTO acct SELECT g, g * 3, '2023-01-01'::timestamptz + g * interval '1 second'
    FROM generate_series(1, 20000) g;
CREATE TABLE ev (id bigint PRIMARY KEY, acct_id bigint NOT NULL, balance integer NOT NULL,
    at timestamptz NOT NULL);
INSERT INTO ev SELECT g, g / 40, g, '2023-01-01'::timestamptz + ((g * 7919) % 20000) * interval '1 second'
    FROM generate_series(1, 20000) g;
ANALYZE;" >/dev/null
q md_tgt "CREATE TABLE acct_latest (id bigint PRIMARY KEY, balance integer NOT NULL,
    updated_at timestamptz NOT NULL)" >/dev/null
for t in acct_skip acct_upsert acct_newer; do
    # The application's rows: ids 1-50 newer than the source, 51-100 older.
    q md_tgt "
    CREATE TABLE $t (id bigint PRIMARY KEY, balance integer NOT NULL, updated_at timestamptz NOT NULL);
    INSERT INTO $t SELECT g, -1, '2023-01-01'::timestamptz + g * interval '1 second' +
        CASE WHEN g <= 50 THEN interval '1 day' ELSE - interval '1 day' END
        FROM generate_series(1, 100) g;" >/dev/null
done
forget_job md
cat >"$WORK/job.yaml" <<YAML
name: md
source: $(uri md_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri md_tgt)
batch_rows: 500
range_rows: 5000
tables:
  - from: acct
    to: svc.acct_skip
    mode: skip
  - from: acct
    to: svc.acct_upsert
    mode: upsert
  - from: acct
    to: svc.acct_newer
    mode: newer
    version: updated_at
  - from: ev
    to: svc.acct_latest
    columns:
      id: acct_id
      updated_at: at
    mode: newer
    version: updated_at
YAML
# The application writes rows 200-300 of acct_skip while the job runs (dual writes).
(
    for _ in $(seq 1 40); do
        q md_tgt "INSERT INTO acct_skip SELECT g, -2, now() FROM generate_series(200, 300) g
            ON CONFLICT (id) DO UPDATE SET balance = -2, updated_at = now()" >/dev/null
        sleep 0.05
    done
) &
app=$!
BG_PIDS+=("$app")
"$BF" run "$WORK/job.yaml" --workers 3 >"$WORK/run.out" 2>"$WORK/run.err" ||
    fail "run: $(tail -5 "$WORK/run.err")"
wait "$app" || fail "the application's writes failed"

# mismatches TABLE EXPECTED_BALANCE_SQL EXPECTED_TS_SQL: rows that differ from the
# expectation, computed on the source and compared row by row.
mismatches() {
    local exp act
    exp=$(q md_src "SELECT string_agg(id || ':' || ($2) || ':' || extract(epoch FROM $3), ',' ORDER BY id)
        FROM acct")
    act=$(q md_tgt "SELECT string_agg(id || ':' || balance || ':' || extract(epoch FROM updated_at), ','
        ORDER BY id) FROM $1 WHERE id NOT BETWEEN 200 AND 300 OR '$1' <> 'acct_skip'")
    [ "$1" != acct_skip ] || exp=$(q md_src "SELECT string_agg(id || ':' || ($2) || ':' ||
        extract(epoch FROM $3), ',' ORDER BY id) FROM acct WHERE id NOT BETWEEN 200 AND 300")
    diff <(tr ',' '\n' <<<"$exp") <(tr ',' '\n' <<<"$act") | grep -c '^[<>]' || true
}
app_ts="updated_at + CASE WHEN id <= 50 THEN interval '1 day' ELSE - interval '1 day' END"
n=$(mismatches acct_skip "CASE WHEN id <= 100 THEN -1 ELSE balance END" \
    "CASE WHEN id <= 100 THEN $app_ts ELSE updated_at END")
expect_eq "$n" 0 "acct_skip rows differing from 'application rows kept'"
expect_eq "$(q md_tgt "SELECT count(*) FROM acct_skip WHERE id BETWEEN 200 AND 300 AND balance = -2")" \
    101 "rows the application wrote during the job, kept by skip"
n=$(mismatches acct_upsert "balance" "updated_at")
expect_eq "$n" 0 "acct_upsert rows differing from the source"
n=$(mismatches acct_newer "CASE WHEN id <= 50 THEN -1 ELSE balance END" \
    "CASE WHEN id <= 50 THEN $app_ts ELSE updated_at END")
expect_eq "$n" 0 "acct_newer rows differing from 'newer version wins'"
for t in acct_skip acct_upsert acct_newer; do
    expect_eq "$(q md_tgt "SELECT count(*) FROM $t")" 20000 "rows in $t"
done
latest=$(q md_src "SELECT string_agg(acct_id || ':' || balance, ',' ORDER BY acct_id) FROM
    (SELECT DISTINCT ON (acct_id) acct_id, balance FROM ev ORDER BY acct_id, at DESC) x")
expect_eq "$(q md_tgt "SELECT string_agg(id || ':' || balance, ',' ORDER BY id) FROM acct_latest")" \
    "$latest" "the latest event per account (newer, keys mapped together)"
expect_eq "$(q md_tgt "SELECT count(*) FROM acct_latest")" 501 "accounts in acct_latest"
if grep -qi 'duplicate key\|error' "$WORK/run.err"; then fail "errors: $(grep -i 'error' "$WORK/run.err" | head -3)"; fi

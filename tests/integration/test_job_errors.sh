#!/usr/bin/env bash
# Bad job files and unreachable servers fail fast (< 10 s) with one line that
# names the file and line or the server, never a password, and exit != 0.
. "$(dirname "$0")/lib.sh"
fresh_db je_src je_tgt
make_monolith je_src 1000
make_service je_tgt
forget_job je
SECRET=hunter2-$$
export JE_SECRET=$SECRET

# expect_error NAME EXPECTED_EXIT PATTERN -- CMD...
expect_error() {
    local name=$1 want=$2 pattern=$3
    shift 4
    local t0 rc=0
    t0=$(date +%s)
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    local secs=$(($(date +%s) - t0))
    [ "$rc" -ne 0 ] || fail "$name: exit 0"
    expect_eq "$rc" "$want" "$name: exit code"
    [ "$secs" -lt 10 ] || fail "$name: took $secs s"
    local lines
    lines=$(grep -c . "$WORK/$name.err" || true)
    expect_eq "$lines" 1 "$name: lines on stderr ($(cat "$WORK/$name.err"))"
    grep -qE "$pattern" "$WORK/$name.err" || fail "$name: '$pattern' not in: $(cat "$WORK/$name.err")"
    if grep -q "$SECRET" "$WORK/$name.err" "$WORK/$name.out"; then fail "$name: password leaked"; fi
}

good() {
    cat <<YAML
name: je
source: postgresql://$BF_PGUSER:\${JE_SECRET}@127.0.0.1:$BF_PGPORT/je_src
redis: $BF_REDIS_URL
targets:
  svc: $(uri je_tgt)
tables:
  - from: public.orders
    to: svc.public.orders
YAML
}

good | sed 's/^tables:/tabels:/' >"$WORK/typo.yaml"
expect_error typo 2 "typo.yaml:6: unknown key 'tabels' \(did you mean 'tables'\?\)" -- \
    "$BF" run "$WORK/typo.yaml" --workers 1

good | sed 's/public.orders$/public.nope/; s/from: public.nope/from: public.nope/' |
    sed 's/    to: svc.public.nope/    to: svc.public.orders/' >"$WORK/missing.yaml"
expect_error missing_table 4 "missing.yaml:7: source table public.nope does not exist" -- \
    "$BF" run "$WORK/missing.yaml" --workers 1

good | sed "s/@127.0.0.1:$BF_PGPORT\/je_src/@127.0.0.1:1\/je_src/" >"$WORK/unreachable.yaml"
expect_error unreachable_pg 3 "cannot connect to source at postgresql://$BF_PGUSER:\*\*\*@127.0.0.1:1/je_src" -- \
    "$BF" run "$WORK/unreachable.yaml" --workers 1

good | sed "s#^redis: .*#redis: redis://:\${JE_SECRET}@127.0.0.1:1/0#" >"$WORK/noredis.yaml"
expect_error unreachable_redis 3 "cannot connect to redis at redis://:\*\*\*@127.0.0.1:1/0" -- \
    "$BF" run "$WORK/noredis.yaml" --workers 1

# Issue 3, acceptance 5: transform mistakes are one line naming file, line and fix,
# before anything is copied.
with_lines() { # with_lines FILE LINES...: the good job plus lines under the table
    local f=$1
    shift
    good >"$f"
    printf '%s\n' "$@" >>"$f"
}
with_lines "$WORK/badexpr.yaml" "    columns:" "      user_id: (usr_id + 1)"
expect_error bad_expression 4 \
    "badexpr.yaml:10: table public.orders -> svc.public.orders: column user_id: expression '\(usr_id \+ 1\)' is not valid on the source: column \"usr_id\" does not exist" -- \
    "$BF" run "$WORK/badexpr.yaml" --workers 1
with_lines "$WORK/badcast.yaml" "    columns:" "      qty: created_at"
expect_error bad_cast 4 "badcast.yaml:10: .*column qty: 'created_at' cannot be written to a column of type numeric\(18,8\)" -- \
    "$BF" plan "$WORK/badcast.yaml"
with_lines "$WORK/badcol.yaml" "    columns:" "      quantity: qty"
expect_error unknown_target_column 4 "badcol.yaml:10: columns: target table svc.public.orders has no column 'quantity'" -- \
    "$BF" plan "$WORK/badcol.yaml"
with_lines "$WORK/badkey.yaml" "    key: [order_id]"
expect_error bad_key 4 "badkey.yaml:9: table public.orders: key column 'order_id' does not exist in the source table \(columns: id, user_id" -- \
    "$BF" run "$WORK/badkey.yaml" --workers 1
with_lines "$WORK/nonunique.yaml" "    key: [user_id]"
expect_error non_unique_key 4 "nonunique.yaml:9: table public.orders: the key is not unique" -- \
    "$BF" plan "$WORK/nonunique.yaml"
with_lines "$WORK/badwhere.yaml" "    where: stat <> 4"
expect_error bad_where 4 "badwhere.yaml:9: table public.orders: 'where: stat <> 4' is not valid on the source: column \"stat\" does not exist" -- \
    "$BF" plan "$WORK/badwhere.yaml"
good | sed 's/^    to: svc.public.orders/    route:\n      - when: user_id % 2 = 0\n        to: svc.public.orders\n      - to: billing.public.orders/' >"$WORK/badroute.yaml"
expect_error unknown_route_target 2 "badroute.yaml:11: table public.orders: target 'billing' is not defined under targets \(defined: svc\)" -- \
    "$BF" run "$WORK/badroute.yaml" --workers 1
with_lines "$WORK/newer.yaml" "    mode: newer"
expect_error newer_without_version 2 "newer.yaml:9: table public.orders: 'mode: newer' needs 'version: COLUMN'" -- \
    "$BF" run "$WORK/newer.yaml" --workers 1
with_lines "$WORK/badversion.yaml" "    mode: newer" "    version: updated_at"
expect_error bad_version 4 "badversion.yaml:10: table public.orders: 'version: updated_at' is not a column written to target table svc.public.orders" -- \
    "$BF" plan "$WORK/badversion.yaml"
expect_eq "$(q je_tgt 'SELECT count(*) FROM orders')" 0 "rows copied despite the errors"

unset JE_SECRET
good >"$WORK/noenv.yaml"
expect_error unset_env 2 "noenv.yaml:2: environment variable JE_SECRET is not set" -- \
    "$BF" plan "$WORK/noenv.yaml"

# --help is there for every command.
for c in run coordinator worker plan status verify demo sandbox; do
    "$BF" "$c" --help >/dev/null || fail "$c --help"
done

# Numbers on the command line are whole numbers in range (atoi took "2abc" as 2 and
# a lease TTL of 3000000 s overflowed), and `run --bind` is refused, not ignored.
good >"$WORK/good.yaml"
expect_error workers_junk 2 "^backfill: --workers takes a number from 1 to 256 \(run only\)$" -- \
    "$BF" run "$WORK/good.yaml" --workers 2abc
expect_error lease_ttl_huge 2 "^backfill: --lease-ttl takes seconds, from 5 to 86400$" -- \
    "$BF" run "$WORK/good.yaml" --lease-ttl 3000000
expect_error max_rejects_huge 2 "^backfill: --max-rejects takes a number of rows \(0 or more\)$" -- \
    "$BF" coordinator "$WORK/good.yaml" --max-rejects 99999999999999999999
expect_error throttle_huge 2 "^backfill throttle: --rows-per-second wants a whole number from 0 to 1000000000000, not '99999999999999999999'$" -- \
    "$BF" throttle "$WORK/good.yaml" --rows-per-second 99999999999999999999
expect_error run_bind 2 "^backfill run: --bind is for \`backfill coordinator\`" -- \
    "$BF" run "$WORK/good.yaml" --bind tcp://127.0.0.1:5999

# A column renamed in the service: the source's column is not copied and the
# target's gets its default. `plan` lists both and warns (they were dropped without
# a word); with the target column set to ~ under columns: it is meant, no warning.
q je_src "CREATE TABLE customer (id bigint PRIMARY KEY, name text, email text, text text);
    INSERT INTO customer VALUES (1, 'a', 'a@x', 't'); ANALYZE customer" >/dev/null
q je_tgt "CREATE TABLE customer (id bigint PRIMARY KEY, name text, email_address text)" >/dev/null
export JE_SECRET=$SECRET
good | sed 's/public.orders$/customer/' >"$WORK/renamed.yaml"
# (A column named like the type in a cast, name::text, is not read by it.)
printf '    columns:\n      name: name::text\n' >>"$WORK/renamed.yaml"
"$BF" plan "$WORK/renamed.yaml" >"$WORK/renamed.out" 2>"$WORK/renamed.err" || fail "plan of a renamed column"
grep -q '^public.customer -> svc.public.customer: source columns not copied: email, text$' "$WORK/renamed.out" ||
    fail "plan does not list the column not copied: $(cat "$WORK/renamed.out")"
grep -q '^public.customer -> svc.public.customer: target columns left to their default: email_address$' \
    "$WORK/renamed.out" || fail "plan does not list the defaulted column: $(cat "$WORK/renamed.out")"
grep -q "renamed.yaml:8: table public.customer -> svc.public.customer: source column(s) email, text are not copied and target column(s) email_address get their default: if a column was renamed, map it under 'columns:'" \
    "$WORK/renamed.err" || fail "no warning for a renamed column: $(cat "$WORK/renamed.err")"
printf '      email_address: ~\n' >>"$WORK/renamed.yaml"
"$BF" plan "$WORK/renamed.yaml" >"$WORK/renamed2.out" 2>"$WORK/renamed2.err" || fail "plan with email_address: ~"
if grep -q 'warn' "$WORK/renamed2.err"; then fail "warning although the column is set to ~: $(cat "$WORK/renamed2.err")"; fi

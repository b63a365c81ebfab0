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

# A key type this version does not split is refused before anything is copied.
q je_src "CREATE TABLE tkey (code text PRIMARY KEY, v int)" >/dev/null
q je_tgt "CREATE TABLE tkey (code text PRIMARY KEY, v int)" >/dev/null
good | sed 's/from: public.orders/from: public.tkey/; s/to: svc.public.orders/to: svc.public.tkey/' >"$WORK/textkey.yaml"
expect_error text_key 4 "textkey.yaml:7: source table public.tkey: primary key column code has type text" -- \
    "$BF" run "$WORK/textkey.yaml" --workers 1
expect_eq "$(q je_tgt 'SELECT count(*) FROM tkey')" 0 "rows copied despite the error"

unset JE_SECRET
good >"$WORK/noenv.yaml"
expect_error unset_env 2 "noenv.yaml:2: environment variable JE_SECRET is not set" -- \
    "$BF" plan "$WORK/noenv.yaml"

# --help is there for every command.
for c in run coordinator worker plan status verify demo sandbox; do
    "$BF" "$c" --help >/dev/null || fail "$c --help"
done

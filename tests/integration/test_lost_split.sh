#!/usr/bin/env bash
# Redis loses acknowledged writes (a failover to a replica that lagged, a crash
# with appendfsync everysec): here, everything after a snapshot taken before a
# straggler split, restored once the split-off part and the rest of the range had
# both committed batches. The targets' fence rows recorded the split before Redis
# made it; the next lease of the range finds its fence rows end where Redis says
# it goes on, makes the split again and gives the part after it the id it had (its
# fence rows tell where it got to). Every row lands once: in insert mode a row
# copied twice fails the job with a duplicate key. The fencing counter, behind the
# targets' tokens, is raised past them. Twice: the range still copying its part
# when Redis loses the split, and the range done with its part (its last fence row
# final: taken for the whole range, the split-off part was never copied again).
. "$(dirname "$0")/lib.sh"
fresh_db ls_src
q ls_src "CREATE TABLE items (id bigint PRIMARY KEY, body text);
    INSERT INTO items SELECT g, repeat('x', 100) || g FROM generate_series(1, 30000) g; ANALYZE" >/dev/null
# scenario JOB DONE: DONE=1 lets range 0 finish its part before the loss.
scenario() {
    local job=$1 done=$2
    forget_job "$job"
    fresh_db ls_tgt
    q ls_tgt "CREATE TABLE items (id bigint PRIMARY KEY, body text)" >/dev/null
    cat >"$WORK/$job.yaml" <<YAML
name: $job
source: $(uri ls_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri ls_tgt)
batch_rows: 500
batch_ms: 0
range_rows: 1000000
tables:
  - from: items
    to: svc.items
YAML
    start_coordinator "coord-$job" auto "$WORK/$job.yaml" --lease-ttl 5
    "$BF" throttle "$WORK/$job.yaml" --rows-per-second 3000 >/dev/null
    start_worker "wa-$job"
    local wa=$WPID
    seq_of() { redis_cmd HGET "bf:{$job}:range:$1" seq; }
    at_least() { local v; v=$(seq_of "$1"); [ -n "$v" ] && [ "$v" -ge "$2" ]; }
    is_done() { [ "$(redis_cmd HGET "bf:{$job}:range:$1" state)" = done ]; }
    wait_for 30 at_least 0 3 || fail "$job: range 0 did not get to 3 batches"
    expect_eq "$(redis_cmd HGET "bf:{$job}:meta" nranges)" 1 "$job: ranges before the snapshot"
    # The snapshot: every key of the job, as Redis will "lose" back to.
    local k
    for k in $(redis_cmd --scan --pattern "bf:{$job}:*"); do
        redis_cmd COPY "$k" "snap:$k" REPLACE >/dev/null
    done
    local snap_seq
    snap_seq=$(seq_of 0)
    start_worker "wb-$job"
    local wb=$WPID
    wait_for 30 at_least 1 2 || fail "$job: no split, or the split-off range did not get to 2 batches"
    if [ "$done" = 1 ]; then
        # B stops where it is; A finishes its part at full speed.
        kill -STOP "$wb"
        "$BF" throttle "$WORK/$job.yaml" --rows-per-second 0 >/dev/null
        wait_for 30 is_done 0 || fail "$job: range 0 did not finish its part"
    else
        wait_for 30 at_least 0 $((snap_seq + 3)) || fail "$job: range 0 did not go on after the split"
    fi
    kill -9 "$CPID" "$wa" "$wb"
    wait "$CPID" "$wa" "$wb" 2>/dev/null || true
    local key
    key=$(redis_cmd HGET "bf:{$job}:range:1" lo)
    expect_eq "$(q ls_tgt "SELECT hi FROM backfill_fence WHERE job = '$job' AND range_id = 0")" \
        "=$key" "$job: range 0's fence row records the split"
    if [ "$done" = 1 ]; then
        expect_eq "$(q ls_tgt "SELECT final FROM backfill_fence WHERE job = '$job' AND range_id = 0")" \
            t "$job: range 0's fence row is final"
    fi
    # Redis loses every write since the snapshot.
    for k in $(redis_cmd --scan --pattern "bf:{$job}:*"); do redis_cmd DEL "$k" >/dev/null; done
    for k in $(redis_cmd --scan --pattern "snap:bf:{$job}:*"); do
        redis_cmd COPY "$k" "${k#snap:}" REPLACE >/dev/null
        redis_cmd DEL "$k" >/dev/null
    done
    expect_eq "$(redis_cmd HGET "bf:{$job}:meta" nranges)" 1 "$job: ranges after the loss"
    "$BF" throttle "$WORK/$job.yaml" --rows-per-second 0 >/dev/null
    local rc=0
    "$BF" run "$WORK/$job.yaml" --workers 2 >"$WORK/run-$job.out" 2>"$WORK/run-$job.err" || rc=$?
    [ "$rc" -eq 0 ] || tail -n 20 "$WORK/run-$job.err"
    expect_eq "$rc" 0 "$job: run after the loss"
    grep -q "range 0: its fence rows say it was split at key $key, which redis does not know .*split again: range 1 takes the part after it (the id it had" \
        "$WORK/run-$job.err" || fail "$job: no re-split logged: $(grep -i 'split' "$WORK/run-$job.err" | head -3)"
    grep -q 'the targets hold fencing tokens up to .*redis lost writes' "$WORK/run-$job.err" ||
        fail "$job: the fencing counter was not raised: $(grep -i token "$WORK/run-$job.err" | head -3)"
    if grep -qi 'duplicate key' "$WORK/run-$job.err"; then fail "$job: a row was copied twice"; fi
    expect_eq "$(q ls_tgt "SELECT count(*) FROM items")" 30000 "$job: rows on the target"
    expect_eq "$(table_md5 ls_tgt items id)" "$(table_md5 ls_src items id)" "$job: md5 of items"
    "$BF" verify "$WORK/$job.yaml" >"$WORK/verify-$job.out" 2>&1 ||
        { cat "$WORK/verify-$job.out"; fail "$job: verify"; }
    forget_job "$job"
}

scenario ls 0
scenario lsd 1

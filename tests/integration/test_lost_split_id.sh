#!/usr/bin/env bash
# Redis loses a straggler split (a failover to a replica that lagged, a crash with
# appendfsync everysec) whose split-off part had committed batches: the part's
# fence rows on the target hold its range id, Redis does not. Before the split is
# made again (when its range is next leased), another range of the job is split.
# That split must not get the lost part's id: the other range would find the lost
# part's fence row under its id (and stop the job: "belongs to another range"),
# and the lost split could not be made again with its id ("gave the id ... to
# another range"). Redis's next range id is raised past the targets' fence rows,
# the other split gets a new id, the lost split is made again with its own, and
# every row lands once (insert mode: a row copied twice is a duplicate key).
# Twice: Redis loses the writes while everything is down and a new `run` follows
# (its coordinator raises Redis's next id past the targets' fence rows at start),
# and while the coordinator runs on, with new workers (Redis does not restart, so
# only the worker that splits can tell: it takes the floor from its targets).
. "$(dirname "$0")/lib.sh"
fresh_db li_src
q li_src "CREATE TABLE items (id bigint PRIMARY KEY, body text);
    CREATE TABLE notes (id bigint PRIMARY KEY, body text);
    INSERT INTO items SELECT g, repeat('x', 100) || g FROM generate_series(1, 30000) g;
    INSERT INTO notes SELECT g, repeat('n', 80) || g FROM generate_series(1, 30000) g; ANALYZE" >/dev/null

# scenario JOB MODE: MODE "restart" (everything killed, then `backfill run`) or
# "live" (the coordinator runs on; new workers join it).
scenario() {
    local job=$1 mode=$2
    forget_job "$job"
    fresh_db li_tgt
    q li_tgt "CREATE TABLE items (id bigint PRIMARY KEY, body text);
        CREATE TABLE notes (id bigint PRIMARY KEY, body text)" >/dev/null
    cat >"$WORK/$job.yaml" <<YAML
name: $job
source: $(uri li_src)
redis: $BF_REDIS_URL
targets:
  svc: $(uri li_tgt)
batch_rows: 500
batch_ms: 0
range_rows: 1000000
tables:
  - from: items
    to: svc.items
  - from: notes
    to: svc.notes
YAML
    range_field() { redis_cmd HGET "bf:{$job}:range:$1" "$2"; }
    at_least() { local v; v=$(range_field "$1" seq); [ -n "$v" ] && [ "$v" -ge "$2" ]; }
    is_leased() { [ "$(range_field "$1" state)" = leased ]; }

    # Items (range 0) copying on worker A; notes (range 1) leased by worker B,
    # which then dies; the snapshot Redis will "lose" back to; worker C
    # comes idle, A splits items for it, and C copies the part after the split.
    start_coordinator "coord-$job" auto "$WORK/$job.yaml" --lease-ttl 5
    # (slow: no part of the job finishes before the loss, so no further split)
    "$BF" throttle "$WORK/$job.yaml" --rows-per-second 1000 >/dev/null
    start_worker "wa-$job"
    local wa=$WPID
    wait_for 30 at_least 0 3 || fail "$job: range 0 did not get to 3 batches"
    start_worker "wb-$job"
    local wb=$WPID
    wait_for 30 is_leased 1 || fail "$job: range 1 was not leased"
    kill -9 "$wb"
    expect_eq "$(redis_cmd HGET "bf:{$job}:meta" nranges)" 2 "$job: ranges before the snapshot"
    local k
    CLEANUP_CMDS+=("redis-cli -p $BF_REDIS_PORT --scan --pattern 'snap:bf:{$job}:*' | xargs -r redis-cli -p $BF_REDIS_PORT UNLINK")
    for k in $(redis_cmd --scan --pattern "bf:{$job}:*"); do
        # (not the coordinator's lock: the coordinator holds it on)
        [ "$k" = "bf:{$job}:lock" ] || redis_cmd COPY "$k" "snap:$k" REPLACE >/dev/null
    done
    start_worker "wc-$job"
    local wc=$WPID
    wait_for 30 at_least 2 2 ||
        fail "$job: no split of range 0, or its part (range 2) did not get to 2 batches"
    expect_eq "$(range_field 2 tbl)" 0 "$job: range 2 is a part of items"
    # The coordinator knows B is gone (it renews no lease of B's after the loss).
    b_dead() { grep -q "range 1 of worker .* back to pending (worker died)" "$WORK/coord-$job.err"; }
    wait_for 20 b_dead || fail "$job: the coordinator did not find worker B dead"
    expect_eq "$(redis_cmd HGET "bf:{$job}:meta" nranges)" 3 "$job: ranges before the loss"
    if [ "$mode" = restart ]; then
        kill -9 "$CPID" "$wa" "$wc"
        wait "$CPID" "$wa" "$wb" "$wc" 2>/dev/null || true
    else
        kill -9 "$wa" "$wc"
        wait "$wa" "$wb" "$wc" 2>/dev/null || true
    fi
    local key
    key=$(range_field 2 lo)
    expect_eq "$(q li_tgt "SELECT lo FROM backfill_fence WHERE job = '$job' AND range_id = 2")" \
        "=$key" "$job: range 2's fence row (the part of items after the split)"

    # Redis loses every write since the snapshot. Range 0 stays leased for 15 s
    # more, under a token no worker holds (so that a live coordinator, finding A
    # dead, cannot hand it back sooner); notes' lease, B's, is over: notes is split
    # first.
    for k in $(redis_cmd --scan --pattern "bf:{$job}:*"); do
        [ "$k" = "bf:{$job}:lock" ] || redis_cmd DEL "$k" >/dev/null
    done
    for k in $(redis_cmd --scan --pattern "snap:bf:{$job}:*"); do
        redis_cmd COPY "$k" "${k#snap:}" REPLACE >/dev/null
        redis_cmd DEL "$k" >/dev/null
    done
    expect_eq "$(redis_cmd HGET "bf:{$job}:meta" nranges)" 2 "$job: ranges after the loss"
    local now_ms
    now_ms=$(redis_cmd TIME | awk 'NR == 1 { s = $1 } NR == 2 { printf "%.0f", s * 1000 + $1 / 1000 }')
    redis_cmd ZADD "bf:{$job}:leases" $((now_ms + 15000)) 0 >/dev/null
    redis_cmd HSET "bf:{$job}:range:0" token 0 >/dev/null

    # Two workers: notes' lease has expired, one takes it, the other is idle and
    # notes is split; then range 0 comes back and is split again.
    local log pid rc=0
    if [ "$mode" = restart ]; then
        log=$WORK/run-$job.err
        "$BF" run "$WORK/$job.yaml" --workers 2 --lease-ttl 5 --log-level info \
            >"$WORK/run-$job.out" 2>"$log" &
        pid=$!
        BG_PIDS+=("$pid")
    else
        log=$WORK/workers-$job.err
        start_worker "wd-$job"
        local wd=$WPID
        start_worker "we-$job"
        local we=$WPID
        pid=$CPID
    fi
    # Full speed once notes is split (or range 0 came back first: the test fails).
    moved() {
        grep -qs "range 1 split at key\|range 0: its fence rows say it was split" "$log" \
            "$WORK/wd-$job.err" "$WORK/we-$job.err"
    }
    for _ in $(seq 1 300); do
        moved || ! kill -0 "$pid" 2>/dev/null && break
        sleep 0.1
    done
    "$BF" throttle "$WORK/$job.yaml" --rows-per-second 0 >/dev/null
    wait "$pid" || rc=$?
    if [ "$mode" = live ]; then
        wait "$wd" "$we" 2>/dev/null || true
        cat "$WORK/coord-$job.err" "$WORK/wd-$job.err" "$WORK/we-$job.err" >"$log"
    fi
    [ "$rc" -eq 0 ] || tail -n 20 "$log"
    expect_eq "$rc" 0 "$job: the job after the loss"
    if [ "$mode" = restart ]; then
        grep -q "targets hold fence rows of ranges up to id 2, which redis has not issued" "$log" ||
            fail "$job: the next range id was not raised: $(grep -i 'redis lost' "$log" | head -3)"
    fi
    local split_id
    split_id=$(sed -n 's/.*range 1 split at key [0-9]* for idle workers: range \([0-9]*\) takes.*/\1/p' \
        "$log" | head -1)
    [ -n "$split_id" ] || fail "$job: notes (range 1) was not split before range 0 came back"
    [ "$split_id" -ge 3 ] || fail "$job: notes' split got id $split_id, the lost part's id or below"
    # (ISO times: they compare as text)
    local at_split at_resplit
    at_split=$(grep "range 1 split at key .* range $split_id takes" "$log" | head -1 | cut -d' ' -f1)
    at_resplit=$(grep "range 0: its fence rows say it was split" "$log" | head -1 | cut -d' ' -f1)
    [[ "$at_split" < "$at_resplit" ]] ||
        fail "$job: range 0 was split again ($at_resplit) before notes was split ($at_split)"
    grep -q "split again: range 2 takes the part after it (the id it had" "$log" ||
        fail "$job: the lost split was not made again with its id: $(grep -i 'split' "$log" | head -5)"
    if grep -qi 'duplicate key\|belongs to another range' "$log"; then
        fail "$job: $(grep -i 'duplicate key\|belongs to another range' "$log" | head -2)"
    fi
    local t
    for t in items notes; do
        expect_eq "$(q li_tgt "SELECT count(*) FROM $t")" 30000 "$job: rows of $t on the target"
        expect_eq "$(table_md5 li_tgt "$t" id)" "$(table_md5 li_src "$t" id)" "$job: md5 of $t"
    done
    "$BF" verify "$WORK/$job.yaml" >"$WORK/verify-$job.out" 2>&1 ||
        { cat "$WORK/verify-$job.out"; fail "$job: verify"; }
    forget_job "$job"
    echo "$job ($mode): notes' split got range $split_id, the lost part kept 2"
}

scenario lsi restart
scenario lsl live

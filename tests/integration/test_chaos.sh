#!/usr/bin/env bash
# Chaos (issue 4): a three-table job with 4 workers and small batches while faults
# are injected at random moments: workers killed (-9) and replaced, the
# coordinator killed (-9) and restarted, a worker SIGSTOPped past its lease and
# continued later, Redis killed (-9) and restarted from its AOF, the target
# PostgreSQL restarted, the source PostgreSQL restarted. At the end: the coordinator exits 0, `verify` passes, and
# every table's row count and row-level md5 match on both sides.
#
# The target is a private PostgreSQL + Redis (so that they can be restarted); its
# orders table has a statement trigger that sleeps 30 ms, a slow target that keeps
# the job running while the faults land. BF_CHAOS_SEED=N replays a schedule.
. "$(dirname "$0")/lib.sh"
seed=${BF_CHAOS_SEED:-$RANDOM}
RANDOM=$seed
echo "chaos seed $seed (BF_CHAOS_SEED=$seed replays the schedule)"

fresh_db ch_src
make_monolith ch_src 450000
start_sandbox "$WORK/tsb"
TPORT=$(. "$WORK/tsb/env" && echo "$BF_PGPORT")
TREDIS=$(. "$WORK/tsb/env" && echo "$BF_REDIS_PORT")
QPORT=$TPORT q postgres "CREATE DATABASE ch_tgt" >/dev/null
QPORT=$TPORT make_service ch_tgt
QPORT=$TPORT q ch_tgt "
    CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
        \$\$ BEGIN PERFORM pg_sleep(0.03); RETURN NULL; END \$\$;
    CREATE TRIGGER slow AFTER INSERT ON orders FOR EACH STATEMENT EXECUTE FUNCTION slow();"
JOB_REDIS=redis://127.0.0.1:$TREDIS/0 JOB_TARGET=postgresql://$BF_PGUSER@127.0.0.1:$TPORT/ch_tgt \
    write_job "$WORK/job.yaml" chaos ch_src - 300 20000

workers=()
nworkers=0
spawn_worker() {
    nworkers=$((nworkers + 1))
    start_worker "w$nworkers"
    workers+=("$WPID")
}
alive_workers() {
    local out=() p
    for p in "${workers[@]}"; do kill -0 "$p" 2>/dev/null && out+=("$p"); done
    echo "${out[@]:-}"
}
ncoord=1
start_coordinator c1 auto "$WORK/job.yaml" --lease-ttl 5
for _ in 1 2 3 4; do spawn_worker; done
copied() { QPORT=$TPORT q ch_tgt "SELECT count(*) FROM orders"; }
job_done() { ! kill -0 "$CPID" 2>/dev/null; }
some_progress() { [ "$(copied)" -gt "$1" ]; }

injected=()
inject() {
    injected+=("$(date +%T) $*")
    echo "inject: $*"
}
pause() { sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.1f", 0.5 + r % 15 / 10 }')"; }

stopped=""
steps=(kill_worker kill_coordinator stop_worker kill_worker restart_redis kill_worker
    restart_target cont_worker restart_source kill_coordinator kill_worker)
t_start=$(date +%s)
for step in "${steps[@]}"; do
    job_done && break
    pause
    job_done && break
    case $step in
    kill_worker)
        read -ra alive <<<"$(alive_workers)"
        victim=${alive[$((RANDOM % ${#alive[@]}))]}
        [ "$victim" = "$stopped" ] && continue
        kill -9 "$victim" 2>/dev/null || true
        spawn_worker
        inject "kill -9 worker $victim, started worker $WPID"
        ;;
    kill_coordinator)
        kill -9 "$CPID" 2>/dev/null || true
        wait "$CPID" 2>/dev/null || true
        sleep 0.$((RANDOM % 9 + 1))
        ncoord=$((ncoord + 1))
        start_coordinator "c$ncoord" "$PORT" "$WORK/job.yaml" --lease-ttl 5
        inject "kill -9 coordinator, restarted it (c$ncoord, pid $CPID)"
        ;;
    stop_worker)
        read -ra alive <<<"$(alive_workers)"
        stopped=${alive[$((RANDOM % ${#alive[@]}))]}
        kill -STOP "$stopped"
        spawn_worker
        inject "SIGSTOP worker $stopped (lease TTL 5 s), started worker $WPID"
        ;;
    cont_worker)
        [ -n "$stopped" ] || continue
        kill -CONT "$stopped" 2>/dev/null || true
        inject "SIGCONT worker $stopped"
        stopped=""
        ;;
    restart_redis)
        redis_pid=$(redis-cli -p "$TREDIS" INFO server | tr -d '\r' | sed -n 's/^process_id://p')
        kill -9 "$redis_pid"
        sleep 2
        "$BF" sandbox restart-redis --dir "$WORK/tsb" >>"$WORK/sandbox.log" 2>&1 ||
            fail "redis did not restart: $(tail -3 "$WORK/sandbox.log")"
        inject "kill -9 redis (pid $redis_pid), down 2 s, restarted from its AOF"
        ;;
    restart_source)
        "$BF" sandbox restart-pg --dir "$BF_ENV_DIR" --down 1 >>"$WORK/sandbox.log" 2>&1 ||
            fail "source postgres did not restart: $(tail -3 "$WORK/sandbox.log")"
        inject "source PostgreSQL stopped (fast), down 1 s, started"
        ;;
    restart_target)
        "$BF" sandbox restart-pg --dir "$WORK/tsb" --down 2 >>"$WORK/sandbox.log" 2>&1 ||
            fail "target postgres did not restart: $(tail -3 "$WORK/sandbox.log")"
        inject "target PostgreSQL stopped (fast), down 2 s, started"
        ;;
    esac
done
[ -z "$stopped" ] || { kill -CONT "$stopped" 2>/dev/null || true; inject "SIGCONT worker $stopped"; }
t_chaos=$(($(date +%s) - t_start))

# Let the job finish (workers that died for good are replaced above).
wait_for 150 job_done || fail "the job did not finish within 150 s after the chaos"
t_tail=$(($(date +%s) - t_start - t_chaos))
rc=0
wait "$CPID" || rc=$?
expect_eq "$rc" 0 "final coordinator's exit code ($(tail -2 "$WORK/c$ncoord.err"))"
# Every worker exits by itself: with DRAIN from the coordinator, or, when the
# coordinator is gone, after seeing in Redis that every range is done.
no_workers() { [ -z "$(alive_workers)" ]; }
if ! wait_for 45 no_workers; then
    for i in "${!workers[@]}"; do
        kill -0 "${workers[$i]}" 2>/dev/null || continue
        echo "--- w$((i + 1)) (pid ${workers[$i]}), still running:"
        tail -5 "$WORK/w$((i + 1)).err"
    done
    fail "workers still running 45 s after the job finished: $(alive_workers)"
fi

echo "injected ${#injected[@]} faults in ${t_chaos} s; the job finished ${t_tail} s later:"
printf '  %s\n' "${injected[@]}"
[ "${#injected[@]}" -ge 6 ] || fail "the job finished before enough faults were injected"
if grep -qi 'duplicate key' "$WORK"/*.err; then fail "duplicate key error"; fi
"$BF" verify "$WORK/job.yaml" >"$WORK/verify.out" 2>&1 || { cat "$WORK/verify.out"; fail "verify"; }
for t in orders users notes; do
    expect_eq "$(QPORT=$TPORT q ch_tgt "SELECT count(*) FROM $t")" \
        "$(q ch_src "SELECT count(*) FROM $t")" "row count of $t"
    expect_eq "$(QPORT=$TPORT table_md5 ch_tgt "$t" id)" "$(table_md5 ch_src "$t" id)" "md5 of $t"
done
retries=$(redis-cli -p "$TREDIS" HGET "bf:{chaos}:stats" retries)
batches=$(redis-cli -p "$TREDIS" HGET "bf:{chaos}:stats" batches)
fenced=$(cat "$WORK"/w*.err | grep -c 'fenced' || true)
adopted=$(cat "$WORK"/w*.err | grep -c 'continuing from the fence' || true)
echo "retried ranges: $retries, batches: $batches, fenced attempts: $fenced," \
    "resumed from a fence row: $adopted; all tables match"

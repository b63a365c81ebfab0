/* `backfill plan JOB.yaml` and `backfill status JOB.yaml [--json | --watch]`. */
#include "commands.h"
#include "coordinator.h"
#include "exitcodes.h"
#include "fkorder.h"
#include "jobctx.h"
#include "joblock.h"
#include "log.h"
#include "planner.h"
#include "progress.h"
#include "strbuf.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Parses `CMD JOB.yaml [--json]`; returns the job path or NULL (usage printed;
 * *rc is the exit code). */
static const char *s_args(int argc, char **argv, bool *json, const char *usage, int *rc)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    *rc = BF_EXIT_OK;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'j' && json) {
            *json = true;
        } else if (c == 'h') {
            fputs(usage, stdout);
            return NULL;
        } else {
            fputs(usage, stderr);
            *rc = BF_EXIT_USAGE;
            return NULL;
        }
    }
    if (optind + 1 != argc) {
        fputs(usage, stderr);
        *rc = BF_EXIT_USAGE;
        return NULL;
    }
    return argv[optind];
}

int bf_cmd_plan(int argc, char **argv)
{
    int rc;
    const char *path =
        s_args(argc, argv, NULL,
               "usage: backfill plan JOB.yaml\n\n"
               "Checks the job against the real source and target schemas and prints the\n"
               "ranges it would hand out (table, lo, hi, estimated rows), then the order the\n"
               "targets' foreign keys impose (a table whose target table refers to another\n"
               "job table's is copied after it). Copies nothing and does not touch Redis.\n"
               "lo is inclusive, hi exclusive, '-' is an open end.\n",
               &rc);
    if (!path)
        return rc;
    bf_log_set_role("plan");
    bf_jobctx_t ctx;
    rc = bf_jobctx_open(&ctx, path, BF_NEED_TABLES);
    if (rc == BF_EXIT_OK) {
        printf("%-6s %-32s %-20s %-20s %12s\n", "range", "table", "lo", "hi", "est_rows");
        int id = 0;
        for (int t = 0; t < ctx.job->ntables && rc == BF_EXIT_OK; t++) {
            bf_plan_range_t *r = NULL;
            size_t n = 0;
            if (bf_plan_table(ctx.src, &ctx.tables[t], ctx.job->range_rows, &r, &n) != 0) {
                rc = BF_EXIT_CONNECT;
                break;
            }
            for (size_t i = 0; i < n; i++)
                printf("%-6d %-32s %-20s %-20s %12lld\n", id++, ctx.tables[t].src_label,
                       r[i].lo ? r[i].lo : "-", r[i].hi ? r[i].hi : "-", (long long)r[i].est);
            bf_plan_ranges_free(r, n);
        }
    }
    /* Columns that are not carried over, so that a renamed one is seen. */
    for (int t = 0; rc == BF_EXIT_OK && t < ctx.job->ntables; t++)
        for (int r = 0; r < ctx.tables[t].nroutes; r++) {
            const bf_route_plan_t *rp = &ctx.tables[t].routes[r];
            if (rp->unread)
                printf("%s -> %s: source columns not copied: %s\n", ctx.tables[t].src_label,
                       rp->label, rp->unread);
            if (rp->defaulted)
                printf("%s -> %s: target columns left to their default: %s\n",
                       ctx.tables[t].src_label, rp->label, rp->defaulted);
        }
    if (rc == BF_EXIT_OK) {
        /* The order the targets' foreign keys impose. */
        bf_fk_graph_t fks;
        char err[1024];
        const char **labels = bf_xcalloc((size_t)ctx.job->ntables, sizeof *labels);
        for (int t = 0; t < ctx.job->ntables; t++)
            labels[t] = ctx.tables[t].src_label;
        if (bf_fk_read(&fks, ctx.job, ctx.tables, ctx.tgt, err, sizeof err) != 0) {
            log_error("%s", err);
            rc = BF_EXIT_CONNECT;
        } else {
            bf_fk_report(&fks, labels, ctx.job, stdout);
            bf_fk_clear(&fks);
        }
        free(labels);
    }
    bf_jobctx_close(&ctx);
    return rc;
}

static volatile sig_atomic_t s_stop = 0;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

/* Rate window of `status --watch`: rows/s over about the last 5 s. */
#define WATCH_WINDOW_MS 5000

/* `status --watch`: redraws the progress display every interval_ms until the job
 * is complete (exit 0), ranges failed for good (exit 1), or Ctrl-C. */
static int s_watch(bf_jobctx_t *ctx, int interval_ms)
{
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int n = ctx->job->ntables;
    bf_table_progress_t *p = bf_xcalloc((size_t)n, sizeof *p);
    bf_progress_view_t view = {.out = stdout, .tty = isatty(STDOUT_FILENO)};
    bf_rate_window_t win = {0}, bwin = {0};
    long long start = bf_now_ms();
    bool warned = false;
    int rc = BF_EXIT_INTERRUPTED;
    while (!s_stop) {
        if (bf_progress_read(ctx->redis, n, p, NULL, NULL) != 0) {
            if (!warned)
                log_warn("%s (retrying)", ctx->redis->errmsg);
            warned = true;
        } else {
            warned = false;
            int64_t done = 0, ranges = 0, failed = 0, leased = 0;
            for (int t = 0; t < n; t++) {
                done += p[t].done;
                ranges += p[t].ranges;
                failed += p[t].failed;
                leased += p[t].leased;
            }
            long long now = bf_now_ms();
            bf_progress_info_t info = {.elapsed_s = (double)(now - start) / 1000.0};
            bf_progress_estimate(&info, &win, &bwin, p, n, now, WATCH_WINDOW_MS,
                                 (double)ctx->job->batch_ms / 2000.0);
            bf_progress_control(ctx->redis, &info);
            char holder[700];
            info.no_coordinator = bf_joblock_holder(ctx->redis, holder, sizeof holder) == 0;
            if (!view.tty && win.n > 1)
                fputc('\n', stdout); /* plain frames, one after the other */
            bf_progress_draw(&view, ctx->job->name, p, n, &info);
            if (done == ranges) {
                rc = BF_EXIT_OK;
                break;
            }
            if (failed > 0 && done + failed == ranges && leased == 0) {
                fprintf(stderr, "%lld ranges failed for good; `backfill status %s` shows them\n",
                        (long long)failed, ctx->job->path);
                rc = BF_EXIT_FAILED;
                break;
            }
        }
        for (long long until = bf_now_ms() + interval_ms; !s_stop && bf_now_ms() < until;)
            usleep(50000);
    }
    free(p);
    return rc;
}

int bf_cmd_status(int argc, char **argv)
{
    static const char *usage =
        "usage: backfill status JOB.yaml [--json] [--watch [--interval SECONDS]]\n\n"
        "Per table: ranges done/leased/pending/failed, rows copied, rate and ETA, rows\n"
        "set aside (rejects) and parked (they referred to rows the target did not have;\n"
        "written again when every range is done), read from the job's checkpoints in\n"
        "Redis, and the coordinator running the job (pid, host, endpoint). Works while\n"
        "the job runs and after.\n"
        "  --json          one JSON object (for scripts)\n"
        "  --watch         redraw a progress bar per table (rows, bytes, rate over the last\n"
        "                  5 s, ETA, workers, rejects, parked rows, stuck ranges, whether a\n"
        "                  coordinator runs the job) until the job is complete (exit 0),\n"
        "                  ranges failed for good (exit 1) or Ctrl-C;\n"
        "                  plain frames when stdout is not a terminal\n"
        "  --interval S    seconds between redraws (default 2)\n";
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"watch", no_argument, NULL, 'w'},
                                         {"interval", required_argument, NULL, 'i'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    bool json = false, watch = false;
    double interval = 2;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'j':
            json = true;
            break;
        case 'w':
            watch = true;
            break;
        case 'i':
            interval = strtod(optarg, &end);
            if (end == optarg || *end || interval < 0.1 || interval > 3600) {
                fprintf(stderr, "backfill status: --interval takes seconds, 0.1 to 3600\n");
                return BF_EXIT_USAGE;
            }
            break;
        case 'h':
            fputs(usage, stdout);
            return BF_EXIT_OK;
        default:
            fputs(usage, stderr);
            return BF_EXIT_USAGE;
        }
    }
    if (optind + 1 != argc || (json && watch)) {
        if (json && watch)
            fprintf(stderr, "backfill status: --json and --watch do not go together\n");
        fputs(usage, stderr);
        return BF_EXIT_USAGE;
    }
    const char *path = argv[optind];
    int rc;
    bf_log_set_role("status");
    bf_jobctx_t ctx;
    rc = bf_jobctx_open(&ctx, path, BF_NEED_REDIS | BF_REDIS_ONLY);
    if (rc != BF_EXIT_OK) {
        bf_jobctx_close(&ctx);
        return rc;
    }
    int planned = bf_rstate_is_planned(ctx.redis);
    char holder[700] = "";
    int held = planned >= 0 ? bf_joblock_holder(ctx.redis, holder, sizeof holder) : -1;
    if (planned <= 0) {
        if (planned < 0)
            log_error("%s", ctx.redis->errmsg);
        else if (json)
            printf("{\"job\":\"%s\",\"planned\":false,\"coordinator\":%s%s%s}\n", ctx.job->name,
                   held == 1 ? "\"" : "", held == 1 ? holder : "null", held == 1 ? "\"" : "");
        else if (held == 1)
            printf("job %s has no plan in redis yet; its coordinator is planning it: %s\n",
                   ctx.job->name, holder);
        else
            printf("job %s has not started (no plan in redis)\n", ctx.job->name);
        bf_jobctx_close(&ctx);
        return planned < 0 ? BF_EXIT_CONNECT : BF_EXIT_OK;
    }
    bool mismatch = false;
    if ((rc = bf_jobctx_check_plan(&ctx, false, false, &mismatch)) != BF_EXIT_OK) {
        bf_jobctx_close(&ctx);
        return rc;
    }
    if (watch) {
        rc = s_watch(&ctx, (int)(interval * 1000));
        bf_jobctx_close(&ctx);
        return rc;
    }
    int n = ctx.job->ntables;
    bf_table_progress_t *p = bf_xcalloc((size_t)n, sizeof *p);
    int64_t retries = 0, batches = 0, created = 0, rate_rows = 0, rate_ms = 0;
    bf_rstate_hget_int(ctx.redis, "meta", "created_ms", &created);
    if (bf_progress_read(ctx.redis, n, p, &retries, &batches) != 0) {
        log_error("%s", ctx.redis->errmsg);
        free(p);
        bf_jobctx_close(&ctx);
        return BF_EXIT_CONNECT;
    }
    /* Rate: sample the row counters over one second. */
    int64_t rows0 = 0, rows1 = 0;
    for (int t = 0; t < n; t++)
        rows0 += p[t].rows;
    int64_t done_ranges = 0, all_ranges = 0;
    for (int t = 0; t < n; t++) {
        done_ranges += p[t].done;
        all_ranges += p[t].ranges;
    }
    if (done_ranges < all_ranges) {
        long long t0 = bf_now_ms();
        usleep(1000000);
        bf_table_progress_t *q = bf_xcalloc((size_t)n, sizeof *q);
        if (bf_progress_read(ctx.redis, n, q, NULL, NULL) == 0) {
            for (int t = 0; t < n; t++)
                rows1 += q[t].rows;
            memcpy(p, q, (size_t)n * sizeof *p);
        }
        free(q);
        rate_rows = rows1 - rows0;
        rate_ms = bf_now_ms() - t0;
    }
    double rate = rate_ms > 0 ? 1000.0 * (double)rate_rows / (double)rate_ms : 0;
    /* Live control: pause, cancel, throttle, backoff. */
    bf_progress_info_t ctl = {0};
    bf_progress_control(ctx.redis, &ctl);
    if (json)
        printf("{\"job\":\"%s\",\"planned\":true,\"coordinator\":%s%s%s,"
               "\"rows_per_second\":%.0f,\"batches\":%lld,"
               "\"retries\":%lld,\"paused\":%s,\"cancelled\":%s,\"backoff\":%s,"
               "\"rows_per_second_limit\":%lld,"
               "\"tables\":[",
               ctx.job->name, held == 1 ? "\"" : "", held == 1 ? holder : "null",
               held == 1 ? "\"" : "", rate, (long long)batches, (long long)retries,
               ctl.paused ? "true" : "false", ctl.cancelled ? "true" : "false",
               ctl.backoff ? "true" : "false", ctl.throttle);
    else
        printf("%-32s %7s %7s %7s %7s %12s %12s %6s %8s %8s %8s\n", "table", "done", "leased",
               "pending", "failed", "rows", "est_rows", "pct", "eta_s", "rejects", "parked");
    for (int t = 0; t < n; t++) {
        int64_t pending = p[t].ranges - p[t].done - p[t].leased - p[t].failed;
        double pct = p[t].est > 0 ? 100.0 * (double)p[t].rows / (double)p[t].est
                                  : (p[t].done == p[t].ranges ? 100.0 : 0.0);
        if (pct > 100 || p[t].done == p[t].ranges)
            pct = 100;
        double eta = rate > 0 && p[t].est > p[t].rows ? (double)(p[t].est - p[t].rows) / rate : 0;
        if (json) {
            printf("%s{\"table\":\"%s\",\"ranges\":%lld,\"done\":%lld,\"leased\":%lld,"
                   "\"pending\":%lld,\"failed\":%lld,\"rows\":%lld,\"bytes\":%lld,"
                   "\"est_rows\":%lld,\"eta_seconds\":%.0f,\"rejects\":%lld,\"parked\":%lld,"
                   "\"waits_for\":[",
                   t ? "," : "", p[t].name, (long long)p[t].ranges, (long long)p[t].done,
                   (long long)p[t].leased, (long long)pending, (long long)p[t].failed,
                   (long long)p[t].rows, (long long)p[t].bytes, (long long)p[t].est, eta,
                   (long long)p[t].rejects, (long long)p[t].parked);
            int on[32];
            int k = bf_progress_waiting_on(p, n, t, on, 32);
            for (int i = 0; i < k; i++)
                printf("%s\"%s\"", i ? "," : "", p[on[i]].name);
            printf("]}");
        } else
            printf("%-32s %7lld %7lld %7lld %7lld %12lld %12lld %5.1f%% %8.0f %8lld %8lld\n",
                   p[t].name, (long long)p[t].done, (long long)p[t].leased, (long long)pending,
                   (long long)p[t].failed, (long long)p[t].rows, (long long)p[t].est, pct, eta,
                   (long long)p[t].rejects, (long long)p[t].parked);
    }
    for (int t = 0; t < n && !json; t++) {
        char waits[160];
        if (bf_progress_waits(p, n, t, waits, sizeof waits))
            printf("%s waits for %s (foreign keys on the target)\n", p[t].name, waits);
    }
    if (json)
        printf("]}\n");
    else
        printf("rate: %.0f rows/s, %lld batches, %lld retries%s\n", rate, (long long)batches,
               (long long)retries, done_ranges == all_ranges ? ", job complete" : "");
    if (!json)
        printf("coordinator: %s\n", held == 1 ? holder : held == 0 ? "none running" : "unknown");
    if (!json && (ctl.paused || ctl.cancelled || ctl.throttle > 0 || ctl.backoff)) {
        printf("control:");
        if (ctl.cancelled)
            printf(" cancelled (the coordinator is stopping; run the job again to resume)");
        if (ctl.paused)
            printf(" paused (backfill resume continues)");
        if (ctl.backoff)
            printf(" backing off (throttle_query above throttle_max)");
        if (ctl.throttle > 0)
            printf(" throttled to %lld rows/s", ctl.throttle);
        printf("\n");
    }
    free(p);
    bf_jobctx_close(&ctx);
    return BF_EXIT_OK;
}

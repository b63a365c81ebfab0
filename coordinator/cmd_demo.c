/* `backfill demo`: the embedded default. Starts a throwaway PostgreSQL and Redis,
 * creates a Django-style monolith and two service databases, runs the backfill
 * with several workers, verifies it and prints a summary. */
#include "commands.h"
#include "exitcodes.h"
#include "log.h"
#include "pg.h"
#include "sandbox.h"
#include "strbuf.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t s_interrupted = 0;

static void s_on_signal(int sig)
{
    (void)sig;
    s_interrupted = 1;
}

static const char *SQL_MONOLITH =
    "CREATE TABLE auth_user (id integer PRIMARY KEY, username varchar(150) NOT NULL,"
    " email varchar(254) NOT NULL, is_active boolean NOT NULL, date_joined timestamptz NOT NULL);"
    "INSERT INTO auth_user SELECT g, 'user' || g, 'user' || g || '@example.com', g % 10 <> 0,"
    " '2020-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 50000) g;"
    "CREATE TABLE trading_order (id bigint PRIMARY KEY, user_id integer NOT NULL,"
    " symbol text NOT NULL, side smallint NOT NULL, quantity numeric(18,8) NOT NULL,"
    " price numeric(18,8) NOT NULL, status smallint NOT NULL, metadata jsonb,"
    " created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);"
    /* Most ids dense from 1, the last sixth after a jump to 9e11 (a sequence
     * restart): the planner must still give ranges of even size. */
    "INSERT INTO trading_order SELECT CASE WHEN g <= %lld THEN g ELSE 900000000000 + g END,"
    " 1 + g %% 50000, (ARRAY['BTC-USD','ETH-USD','SOL-USD','EUR-USD'])[1 + g %% 4], g %% 2,"
    " (g %% 1000) / 7.0, 100 + (g %% 977) * 1.5, g %% 5,"
    " jsonb_build_object('channel', 'web', 'n', g, 'tags', jsonb_build_array('a', g %% 3)),"
    " '2021-01-01'::timestamptz + g * interval '1 second',"
    " '2021-01-01'::timestamptz + g * interval '2 second' FROM generate_series(1, %lld) g;"
    "CREATE TABLE billing_invoice (id bigint PRIMARY KEY, user_id integer NOT NULL,"
    " amount numeric(12,2) NOT NULL, currency char(3) NOT NULL, status smallint NOT NULL,"
    " issued_at timestamptz NOT NULL, note text);"
    "INSERT INTO billing_invoice SELECT g, 1 + g % 50000, (g % 10000) / 100.0, 'EUR', g % 4,"
    " '2022-01-01'::timestamptz + g * interval '5 minutes',"
    " CASE WHEN g % 7 = 0 THEN NULL ELSE E'invoice ' || g || E'\\twith tab, \\\\ and \\u00e9' END"
    " FROM generate_series(1, 200000) g;"
    "ANALYZE;";

static const char *SQL_TRADING =
    "CREATE TABLE users (id integer PRIMARY KEY, username varchar(150) NOT NULL,"
    " email varchar(254) NOT NULL, is_active boolean NOT NULL, date_joined timestamptz NOT NULL);"
    "CREATE TABLE orders (id bigint PRIMARY KEY, user_id integer NOT NULL, symbol text NOT NULL,"
    " side smallint NOT NULL, quantity numeric(18,8) NOT NULL, price numeric(18,8) NOT NULL,"
    " status smallint NOT NULL, metadata jsonb, created_at timestamptz NOT NULL,"
    " updated_at timestamptz NOT NULL);";

static const char *SQL_BILLING =
    "CREATE TABLE invoice (id bigint PRIMARY KEY, user_id integer NOT NULL,"
    " amount numeric(12,2) NOT NULL, currency char(3) NOT NULL, status smallint NOT NULL,"
    " issued_at timestamptz NOT NULL, note text);";

static const char *JOB_TEMPLATE = "# written by `backfill demo`\n"
                                  "name: demo-split\n"
                                  "source: %s\n"
                                  "redis: %s\n"
                                  "targets:\n"
                                  "  trading: %s\n"
                                  "  billing: %s\n"
                                  "batch_rows: 10000\n"
                                  "batch_ms: 250\n"
                                  "range_rows: 100000\n"
                                  "tables:\n"
                                  "  - from: public.auth_user\n"
                                  "    to: trading.public.users\n"
                                  "  - from: public.trading_order\n"
                                  "    to: trading.public.orders\n"
                                  "  - from: public.billing_invoice\n"
                                  "    to: billing.public.invoice\n";

static int s_exec_db(const bf_sandbox_t *sb, const char *db, const char *sql)
{
    char uri[512];
    bf_sandbox_pg_uri(sb, db, uri, sizeof uri);
    bf_pg_t *pg = bf_pg_connect(uri, db);
    if (!pg)
        return -1;
    int rc = bf_pg_exec(pg, sql);
    bf_pg_destroy(&pg);
    return rc;
}

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: backfill demo [--rows N] [--workers N] [--keep]\n\n"
            "Starts a throwaway PostgreSQL and Redis (as an unprivileged user, free ports, temp\n"
            "dir), creates a Django-style monolith (auth_user, trading_order, billing_invoice)\n"
            "and two service databases (trading, billing), runs the backfill with N workers,\n"
            "verifies it, prints a summary and cleans up.\n"
            "  --rows N     rows in trading_order (default 3000000)\n"
            "  --workers N  workers (default 3)\n"
            "  --keep       leave the servers running and print how to connect\n");
}

int bf_cmd_demo(int argc, char **argv)
{
    static const struct option opts[] = {{"rows", required_argument, NULL, 'r'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {"keep", no_argument, NULL, 'k'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    long long rows = 3000000;
    int workers = 3;
    bool keep = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (bf_parse_ll(optarg, 1, 1000000000, &rows) != 0)
                rows = 0; /* refused below */
            break;
        case 'w': {
            long long v = 0;
            workers = bf_parse_ll(optarg, 1, 64, &v) == 0 ? (int)v : 0;
            break;
        }
        case 'k':
            keep = true;
            break;
        case 'h':
            s_usage(stdout);
            return BF_EXIT_OK;
        default:
            s_usage(stderr);
            return BF_EXIT_USAGE;
        }
    }
    if (optind != argc || rows < 1 || workers < 1 || workers > 64) {
        s_usage(stderr);
        return BF_EXIT_USAGE;
    }
    bf_log_set_role("demo");
    /* Ctrl-C while the servers run must still stop them: the default action would
     * leave a PostgreSQL and a Redis behind in /tmp. The step in progress finishes. */
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    bf_sandbox_t sb;
    char src[512] = "", job_path[600] = "";
    log_info("starting a throwaway PostgreSQL and Redis");
    if (bf_sandbox_start(&sb, NULL) != 0)
        return BF_EXIT_CONNECT;
    int rc = BF_EXIT_CONNECT;
    long long t0 = bf_now_ms();
    char *sql = bf_xasprintf(SQL_MONOLITH, rows - rows / 6, rows);
    log_info("creating the monolith: %lld orders, 200000 invoices, 50000 users", rows);
    if (s_exec_db(&sb, "postgres", "CREATE DATABASE monolith") != 0 ||
        s_exec_db(&sb, "postgres", "CREATE DATABASE trading") != 0 ||
        s_exec_db(&sb, "postgres", "CREATE DATABASE billing") != 0 ||
        s_exec_db(&sb, "monolith", sql) != 0 || s_exec_db(&sb, "trading", SQL_TRADING) != 0 ||
        s_exec_db(&sb, "billing", SQL_BILLING) != 0) {
        free(sql);
        goto done;
    }
    free(sql);
    /* Write the new data out now (a checkpoint: PostgreSQL's buffers and the
     * kernel's dirty pages), not half-way through the copy: the kernel would
     * start flushing it about 30 s after it was written, in the copy's second
     * half, and slow it by a third (the live display's ETA with it). */
    if (s_exec_db(&sb, "postgres", "CHECKPOINT") != 0)
        log_warn("CHECKPOINT failed; the copy may slow down when the data is flushed");
    if (s_interrupted) {
        log_info("interrupted; stopping the servers");
        rc = BF_EXIT_INTERRUPTED;
        goto done;
    }
    log_info("data ready in %.1f s", (double)(bf_now_ms() - t0) / 1000.0);

    char trading[512], billing[512];
    bf_sandbox_pg_uri(&sb, "monolith", src, sizeof src);
    bf_sandbox_pg_uri(&sb, "trading", trading, sizeof trading);
    bf_sandbox_pg_uri(&sb, "billing", billing, sizeof billing);
    char redis_url[128];
    snprintf(redis_url, sizeof redis_url, "redis://127.0.0.1:%d/0", sb.redis_port);
    snprintf(job_path, sizeof job_path, "/tmp/backfill-demo-XXXXXX.yaml");
    int fd = mkstemps(job_path, 5);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        log_error("cannot write %s", job_path);
        goto done;
    }
    fprintf(f, JOB_TEMPLATE, src, redis_url, trading, billing);
    fclose(f);

    long long t1 = bf_now_ms();
    fflush(stdout);
    rc = bf_run_job(job_path, workers, NULL);
    double secs = (double)(bf_now_ms() - t1) / 1000.0;
    if (rc != BF_EXIT_OK)
        goto done;
    char verify_cmd[] = "verify";
    char *vargv[] = {verify_cmd, job_path, NULL};
    fflush(stdout);
    rc = bf_cmd_verify(2, vargv);
    bf_log_set_role("demo");
    long long total = rows + 200000 + 50000;
    printf("\nsummary: %lld rows in 3 tables copied by %d workers in %.1f s (%.0f rows/s), "
           "verify: %s\n",
           total, workers, secs, (double)total / secs, rc == BF_EXIT_OK ? "OK" : "FAILED");
done:
    if (keep) {
        printf("\nservers left running (stop them with: backfill sandbox stop --dir %s)\n"
               "  psql %s\n  redis-cli -p %d\n  job file: %s\n",
               sb.dir, src, sb.redis_port, job_path);
    } else {
        bf_sandbox_stop(&sb, false);
        if (job_path[0])
            unlink(job_path);
    }
    return rc;
}

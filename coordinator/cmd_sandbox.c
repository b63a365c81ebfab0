/* `backfill sandbox`: throwaway PostgreSQL + Redis for demos and the test suite. */
#include "commands.h"
#include "exitcodes.h"
#include "log.h"
#include "sandbox.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void s_usage(FILE *f)
{
    fputs("usage: backfill sandbox start [--dir DIR] [--keep-going]\n"
          "       backfill sandbox stop --dir DIR [--keep-dir]\n"
          "       backfill sandbox restart-redis --dir DIR\n"
          "       backfill sandbox restart-pg --dir DIR [--down SECONDS]\n"
          "       backfill sandbox env --dir DIR\n"
          "\n"
          "Throwaway PostgreSQL and Redis servers on free ports of 127.0.0.1, with their data,\n"
          "sockets and logs in DIR (when run as root they run as the `postgres` user).\n"
          "\n"
          "  start          initdb and start both servers and write DIR/env (KEY=value lines:\n"
          "                 BF_PGHOST, BF_PGPORT, BF_PGUSER, BF_PGSOCKDIR, BF_REDIS_PORT,\n"
          "                 BF_REDIS_URL, BF_PG_BINDIR, BF_SANDBOX_DIR). Servers left in DIR\n"
          "                 by an earlier run are stopped first. Without --dir a directory\n"
          "                 under /tmp is made and its path printed.\n"
          "  stop           stop both servers and remove DIR (safe when nothing runs)\n"
          "  restart-redis  stop Redis and start it again on the same port and data (AOF)\n"
          "  restart-pg     stop PostgreSQL (fast shutdown), wait --down seconds (default\n"
          "                 0), start it again on the same port and data\n"
          "  env            print DIR/env\n"
          "\n"
          "options:\n"
          "  --dir DIR      the sandbox directory\n"
          "  --keep-going   start: stay in the foreground until SIGINT/SIGTERM, then stop\n"
          "                 the servers and remove DIR\n"
          "  --keep-dir     stop: keep DIR (data and logs) after stopping the servers\n"
          "  --down S       restart-pg: seconds to stay down between stop and start\n"
          "  -h, --help     show this help\n",
          f);
}

static volatile sig_atomic_t s_stop_signal;

static void s_on_signal(int sig)
{
    s_stop_signal = sig;
}

/* --keep-going: wait for SIGINT/SIGTERM/SIGHUP, then stop the sandbox. */
static int s_foreground(bf_sandbox_t *sb)
{
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigprocmask(SIG_BLOCK, &block, &old);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    log_info("sandbox: running; press Ctrl-C (or send SIGTERM) to stop and remove %s", sb->dir);
    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGINT);
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGHUP);
    while (!s_stop_signal)
        sigsuspend(&wait_mask);
    log_info("sandbox: got signal %d; stopping", (int)s_stop_signal);
    int rc = bf_sandbox_stop(sb, false) == 0 ? BF_EXIT_OK : BF_EXIT_FAILED;
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}

static int s_print_env(const char *dir)
{
    bf_sandbox_t sb;
    if (bf_sandbox_load(&sb, dir) != 0)
        return BF_EXIT_FAILED;
    char path[sizeof sb.dir + 8];
    snprintf(path, sizeof path, "%s/env", sb.dir);
    FILE *f = fopen(path, "re");
    if (!f) {
        log_error("sandbox: cannot read %s: %s", path, strerror(errno));
        return BF_EXIT_FAILED;
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stdout);
    fclose(f);
    return fflush(stdout) == 0 ? BF_EXIT_OK : BF_EXIT_FAILED;
}

int bf_cmd_sandbox(int argc, char **argv)
{
    const char *action = NULL, *dir = NULL;
    bool keep_going = false, keep_dir = false;
    double down_s = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0) {
            s_usage(stdout);
            return BF_EXIT_OK;
        } else if (strcmp(a, "--dir") == 0 || strcmp(a, "-d") == 0) {
            if (i + 1 >= argc || !argv[i + 1][0]) {
                fprintf(stderr, "backfill sandbox: %s needs a directory\n", a);
                return BF_EXIT_USAGE;
            }
            dir = argv[++i];
        } else if (strncmp(a, "--dir=", 6) == 0) {
            dir = a + 6;
            if (!*dir) {
                fprintf(stderr, "backfill sandbox: --dir needs a directory\n");
                return BF_EXIT_USAGE;
            }
        } else if (strcmp(a, "--down") == 0) {
            char *end = NULL;
            down_s = i + 1 < argc ? strtod(argv[i + 1], &end) : -1;
            if (i + 1 >= argc || !end || *end || down_s < 0 || down_s > 3600) {
                fprintf(stderr, "backfill sandbox: --down needs seconds (0 to 3600)\n");
                return BF_EXIT_USAGE;
            }
            i++;
        } else if (strcmp(a, "--keep-going") == 0) {
            keep_going = true;
        } else if (strcmp(a, "--keep-dir") == 0) {
            keep_dir = true;
        } else if (a[0] == '-') {
            fprintf(stderr, "backfill sandbox: unknown option %s\n", a);
            s_usage(stderr);
            return BF_EXIT_USAGE;
        } else if (!action) {
            action = a;
        } else {
            fprintf(stderr, "backfill sandbox: unexpected argument %s\n", a);
            return BF_EXIT_USAGE;
        }
    }
    if (!action) {
        s_usage(stderr);
        return BF_EXIT_USAGE;
    }
    bool is_start = strcmp(action, "start") == 0;
    bool is_stop = strcmp(action, "stop") == 0;
    bool is_restart_pg = strcmp(action, "restart-pg") == 0;
    if (!is_start && !is_stop && !is_restart_pg && strcmp(action, "restart-redis") != 0 &&
        strcmp(action, "env") != 0) {
        fprintf(stderr, "backfill sandbox: unknown action %s\n", action);
        s_usage(stderr);
        return BF_EXIT_USAGE;
    }
    if (keep_going && !is_start) {
        fprintf(stderr, "backfill sandbox: --keep-going only applies to start\n");
        return BF_EXIT_USAGE;
    }
    if (keep_dir && !is_stop) {
        fprintf(stderr, "backfill sandbox: --keep-dir only applies to stop\n");
        return BF_EXIT_USAGE;
    }
    if (!dir && !is_start) {
        fprintf(stderr, "backfill sandbox %s: --dir DIR is required\n", action);
        return BF_EXIT_USAGE;
    }

    bf_sandbox_t sb;
    if (is_start) {
        if (bf_sandbox_start(&sb, dir) != 0)
            return BF_EXIT_FAILED;
        if (!dir) {
            printf("%s\n", sb.dir);
            fflush(stdout);
        }
        return keep_going ? s_foreground(&sb) : BF_EXIT_OK;
    }
    if (is_stop) {
        /* Works without dir/env too (a start that crashed early): stop what the
         * default layout shows and clean up. */
        char envpath[4096];
        snprintf(envpath, sizeof envpath, "%s/env", dir);
        if (access(envpath, F_OK) != 0 || bf_sandbox_load(&sb, dir) != 0) {
            memset(&sb, 0, sizeof sb);
            if (strlen(dir) >= sizeof sb.dir) {
                log_error("sandbox: directory path too long: %s", dir);
                return BF_EXIT_USAGE;
            }
            memcpy(sb.dir, dir, strlen(dir) + 1);
        }
        return bf_sandbox_stop(&sb, keep_dir) == 0 ? BF_EXIT_OK : BF_EXIT_FAILED;
    }
    if (strcmp(action, "env") == 0)
        return s_print_env(dir);
    if (bf_sandbox_load(&sb, dir) != 0)
        return BF_EXIT_FAILED;
    if (is_restart_pg)
        return bf_sandbox_pg_restart(&sb, (int)(down_s * 1000)) == 0 ? BF_EXIT_OK : BF_EXIT_FAILED;
    return bf_sandbox_redis_restart(&sb) == 0 ? BF_EXIT_OK : BF_EXIT_FAILED;
}

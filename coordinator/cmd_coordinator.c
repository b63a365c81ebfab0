/* `backfill coordinator JOB.yaml --bind ENDPOINT` and `backfill run JOB.yaml
 * --workers N` (the coordinator plus N local worker processes). */
#include "commands.h"
#include "coordinator.h"
#include "exitcodes.h"
#include "joblock.h"
#include "log.h"
#include "metrics.h"
#include "strbuf.h"

#include <czmq.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t s_stop = 0;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static void s_signals(void)
{
    zsys_init();
    zsys_handler_set(NULL);
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

typedef struct {
    const char *job_path;
    const char *bind;
    int workers;
    const char *log_level;
    const char *log_format;
    bf_coord_opts_t opts;
} coord_args_t;

static int s_parse(int argc, char **argv, coord_args_t *a, bool run, void (*usage)(FILE *))
{
    static const struct option opts[] = {{"bind", required_argument, NULL, 'b'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {"lease-ttl", required_argument, NULL, 't'},
                                         {"replan", no_argument, NULL, 'r'},
                                         {"max-rejects", required_argument, NULL, 'm'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"log-format", required_argument, NULL, 'f'},
                                         {"metrics", required_argument, NULL, 'M'},
                                         {"curve-cert", required_argument, NULL, 'C'},
                                         {"curve-allow", required_argument, NULL, 'A'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "b:w:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            if (run) {
                fprintf(stderr, "backfill run: --bind is for `backfill coordinator` (run's "
                                "workers talk to it over a private local socket; for workers on "
                                "other machines run a coordinator)\n");
                return BF_EXIT_USAGE;
            }
            a->bind = optarg;
            break;
        case 'w': {
            long long v = 0;
            if (!run || bf_parse_ll(optarg, 1, 256, &v) != 0) {
                fprintf(stderr, "backfill: --workers takes a number from 1 to 256 (run only)\n");
                return BF_EXIT_USAGE;
            }
            a->workers = (int)v;
            break;
        }
        case 't': {
            long long v = 0;
            if (bf_parse_ll(optarg, 5, 86400, &v) != 0) {
                fprintf(stderr, "backfill: --lease-ttl takes seconds, from 5 to 86400\n");
                return BF_EXIT_USAGE;
            }
            a->opts.lease_ttl_ms = (int)(v * 1000);
            break;
        }
        case 'l':
            if (bf_log_level_parse(optarg) < 0) {
                fprintf(stderr, "backfill: unknown log level '%s' (debug, info, warn, error)\n",
                        optarg);
                return BF_EXIT_USAGE;
            }
            a->log_level = optarg;
            bf_log_set_level((bf_log_level_t)bf_log_level_parse(optarg));
            break;
        case 'f':
            if (strcmp(optarg, "json") != 0 && strcmp(optarg, "text") != 0) {
                fprintf(stderr, "backfill: --log-format is text or json\n");
                return BF_EXIT_USAGE;
            }
            a->log_format = optarg;
            bf_log_set_json(strcmp(optarg, "json") == 0);
            break;
        case 'r':
            a->opts.replan = true;
            break;
        case 'C':
            a->opts.curve_cert = optarg;
            break;
        case 'A':
            a->opts.curve_allow = optarg;
            break;
        case 'M': {
            char host[256], err[300];
            int port;
            if (bf_metrics_parse_addr(optarg, host, sizeof host, &port, err, sizeof err) != 0) {
                fprintf(stderr, "backfill: --metrics: %s\n", err);
                return BF_EXIT_USAGE;
            }
            a->opts.metrics = optarg;
            break;
        }
        case 'm': {
            long long v = 0;
            if (bf_parse_ll(optarg, 0, INT64_MAX, &v) != 0) {
                fprintf(stderr, "backfill: --max-rejects takes a number of rows (0 or more)\n");
                return BF_EXIT_USAGE;
            }
            a->opts.max_rejects = v;
            break;
        }
        case 'h':
            usage(stdout);
            return -1;
        default:
            usage(stderr);
            return BF_EXIT_USAGE;
        }
    }
    if (optind + 1 != argc) {
        usage(stderr);
        return BF_EXIT_USAGE;
    }
    if ((a->opts.curve_cert != NULL) != (a->opts.curve_allow != NULL) ||
        (run && a->opts.curve_cert)) {
        fprintf(stderr, "backfill: CURVE needs both --curve-cert and --curve-allow (coordinator "
                        "only: `run` talks to its own workers over a local socket)\n");
        return BF_EXIT_USAGE;
    }
    a->job_path = argv[optind];
    return BF_EXIT_OK;
}

/* Prepares the coordinator for a job; returns NULL with *rc set when it cannot
 * start, or when the job is complete already (*rc from bf_coord_finish: OK, or
 * rows still parked; message printed). */
static bf_coord_t *s_prepare(const coord_args_t *a, int *rc)
{
    bf_jobctx_t ctx;
    *rc = bf_jobctx_open(&ctx, a->job_path, BF_NEED_REDIS | BF_NEED_TABLES);
    if (*rc != BF_EXIT_OK) {
        bf_jobctx_close(&ctx);
        return NULL;
    }
    bf_coord_t *coord = bf_coord_new(&ctx, &a->opts, rc);
    bf_jobctx_close(&ctx);
    if (coord && bf_coord_complete(coord)) {
        *rc = bf_coord_finish(coord);
        if (*rc == BF_EXIT_OK)
            printf("job is already complete: every range is done (backfill verify %s checks "
                   "it)\n",
                   a->job_path);
        else
            printf("every range is done, but not every row is on the targets (see the errors "
                   "above)\n");
        bf_coord_destroy(&coord);
    }
    return coord;
}

static void s_coordinator_usage(FILE *f)
{
    fprintf(
        f,
        "usage: backfill coordinator JOB.yaml [--bind ENDPOINT] [--lease-ttl SECONDS] [--replan]\n"
        "                            [--max-rejects N] [--metrics ADDR] [--log-level LEVEL]\n"
        "                            [--log-format text|json] [--curve-cert FILE --curve-allow "
        "DIR]\n\n"
        "Plans the job (or resumes it from Redis) and hands out ranges to workers that\n"
        "connect with `backfill worker --connect ENDPOINT` (tables whose target tables refer\n"
        "to others by foreign key after those). When every range is done it writes the\n"
        "parked rows again (rows that referred to rows the target did not have yet) and\n"
        "advances the sequences behind the target tables' columns past the copied ids.\n"
        "Exits 0 when every range is done, %d when a range fails for good or rows are still\n"
        "parked, %d on SIGINT/SIGTERM (resumable), %d when another coordinator runs the\n"
        "job (one per job at a time: a lock in Redis, which a killed coordinator's\n"
        "successor waits for up to %d s, or not at all in the same PID namespace of the\n"
        "same machine).\n"
        "  --bind ENDPOINT    ZeroMQ endpoint to listen on (default tcp://0.0.0.0:5570)\n"
        "  --lease-ttl S      a range returns to pending S seconds after its worker's last\n"
        "                     sign of life (default 30)\n"
        "  --replan           plan afresh although the targets hold progress of this job\n"
        "                     while redis has none, or redis has a plan of other tables\n"
        "                     than the job file's (after emptying the target tables)\n"
        "  --max-rejects N    rows the targets may refuse (constraint, value too long) before\n"
        "                     the job stops; they are kept in public.backfill_rejects on the\n"
        "                     target. Default 0: the first refused row stops the job. A row\n"
        "                     that refers to a row its target does not have is parked there\n"
        "                     and written again when every range is done: it counts then,\n"
        "                     if still refused\n"
        "  --metrics ADDR     serve Prometheus metrics at http://ADDR/metrics, e.g.\n"
        "                     tcp://0.0.0.0:9570 (rows, bytes, ranges, batch latency...)\n"
        "  --curve-cert FILE  encrypt and authenticate with CURVE: the coordinator's\n"
        "                     certificate (FILE and FILE_secret, from `backfill keygen`)\n"
        "  --curve-allow DIR  with --curve-cert: accept only workers whose public\n"
        "                     certificate is in DIR (others are refused and logged)\n",
        BF_EXIT_DATA, BF_EXIT_INTERRUPTED, BF_EXIT_USAGE, BF_JOBLOCK_TTL_MS / 1000);
}

int bf_cmd_coordinator(int argc, char **argv)
{
    coord_args_t a = {.bind = "tcp://0.0.0.0:5570", .opts = {.progress_ms = 5000}};
    int rc = s_parse(argc, argv, &a, false, s_coordinator_usage);
    if (rc != BF_EXIT_OK)
        return rc < 0 ? BF_EXIT_OK : rc;
    bf_log_set_role("coordinator");
    s_signals();
    char where[400];
    snprintf(where, sizeof where, "listening on %s", a.bind);
    a.opts.where = where;
    a.opts.stop = &s_stop;
    bf_coord_t *coord = s_prepare(&a, &rc);
    if (!coord)
        return rc;
    if (bf_coord_bind(coord, a.bind) != 0) {
        bf_coord_destroy(&coord);
        return BF_EXIT_USAGE;
    }
    rc = bf_coord_serve(coord, &s_stop, NULL, NULL);
    if (rc == BF_EXIT_OK) {
        /* The workers were told (DRAIN) when the last range was done: they need not
         * wait for this, and one arriving meanwhile asks again and is told below. */
        rc = bf_coord_finish(coord);
        printf(rc == BF_EXIT_OK ? "job complete\n"
                                : "every range is done, but not every row is on the targets "
                                  "(see the errors above)\n");
        bf_coord_summary(coord, stdout);
        fflush(stdout);
        bf_coord_linger_done(coord, 3000, &s_stop);
    } else if (rc == BF_EXIT_INTERRUPTED) {
        log_info("interrupted; start the coordinator again to resume");
    }
    bf_coord_destroy(&coord);
    return rc;
}

/* ---- run: coordinator + local workers ---- */

typedef struct {
    const coord_args_t *args;
    char endpoint[300];
    pid_t *pids; /* worker processes, 0 = slot empty */
    int n;
    int respawns;  /* workers restarted after dying */
    bool all_dead; /* every worker died for good */
    char self_exe[4096];
    /* With a live display: the workers' stderr comes through this pipe and is
     * written line by line after the display is erased (else -1). */
    int err_r, err_w;
    char err_buf[8192];
    size_t err_len;
    /* The workers' resources, from wait4 (not RUSAGE_CHILDREN: `demo` also waited
     * for initdb and the servers' start-up): CPU in all, the largest peak RSS. */
    double worker_cpu_s;
    long worker_maxrss_kb;
} supervisor_t;

/* Reaps worker pid (or any child: -1) like waitpid, counting a worker's resources. */
static pid_t s_wait(supervisor_t *s, pid_t pid, int *status, int options)
{
    struct rusage ru;
    pid_t got = wait4(pid, status, options, &ru);
    for (int i = 0; got > 0 && i < s->n; i++)
        if (s->pids[i] == got) {
            s->worker_cpu_s += (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
            if (ru.ru_maxrss > s->worker_maxrss_kb)
                s->worker_maxrss_kb = ru.ru_maxrss;
        }
    return got;
}

/* Relays the complete lines the workers wrote (all of it when `all`); at most
 * 8 reads of 8 KB a call otherwise, so that chatty workers cannot keep the coordinator's
 * loop from its messages (they wait on a full pipe meanwhile). */
static void s_relay_worker_lines(supervisor_t *s, bool all)
{
    if (s->err_r < 0)
        return;
    for (int rounds = 0;; rounds++) {
        ssize_t n = read(s->err_r, s->err_buf + s->err_len, sizeof s->err_buf - s->err_len);
        if (n > 0)
            s->err_len += (size_t)n;
        size_t start = 0;
        for (size_t i = 0; i < s->err_len; i++)
            if (s->err_buf[i] == '\n') {
                bf_log_relay(s->err_buf + start, i + 1 - start);
                start = i + 1;
            }
        if (start == 0 && (s->err_len == sizeof s->err_buf || (all && n <= 0 && s->err_len))) {
            bf_log_relay(s->err_buf, s->err_len); /* a line longer than the buffer, or the end */
            fputc('\n', stderr);
            start = s->err_len;
        }
        memmove(s->err_buf, s->err_buf + start, s->err_len - start);
        s->err_len -= start;
        if (n <= 0 || (!all && rounds >= 7))
            return; /* EAGAIN: nothing more for now (or the pipe is closed) */
    }
}

static pid_t s_spawn(supervisor_t *s)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* A worker of `run` goes when `run` goes, even killed (-9) or crashed: it
         * would otherwise retry its coordinator's socket for ever. SIGTERM: the
         * worker's clean stop. (Where prctl is refused the worker still runs.) */
        (void)prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) /* `run` died before that */
            _exit(1);
        if (s->err_w >= 0) {
            dup2(s->err_w, STDERR_FILENO);
            close(s->err_w);
            close(s->err_r);
        }
        const char *argv[12];
        int i = 0;
        argv[i++] = "backfill";
        argv[i++] = "worker";
        argv[i++] = "--connect";
        argv[i++] = s->endpoint;
        if (s->args->log_level) {
            argv[i++] = "--log-level";
            argv[i++] = s->args->log_level;
        }
        if (s->args->log_format) {
            argv[i++] = "--log-format";
            argv[i++] = s->args->log_format;
        }
        argv[i] = NULL;
        execv(s->self_exe, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static void s_supervise(void *arg)
{
    supervisor_t *s = arg;
    s_relay_worker_lines(s, false);
    bool any = false;
    for (int i = 0; i < s->n; i++)
        any = any || s->pids[i] != 0;
    if (!any && !s_stop) {
        /* Every worker is gone and none may be restarted: nobody will finish. */
        s->all_dead = true;
        s_stop = 1;
        return;
    }
    int status;
    pid_t pid;
    while ((pid = s_wait(s, -1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < s->n; i++) {
            if (s->pids[i] != pid)
                continue;
            s->pids[i] = 0;
            if (s_stop)
                break;
            bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            if (!ok && s->respawns >= 3 * s->n)
                log_error("worker %d (pid %d) died; not restarting it (%d restarts already)", i,
                          (int)pid, s->respawns);
            if (!ok && s->respawns < 3 * s->n) {
                log_warn("worker %d (pid %d) died (%s %d); starting a new one", i, (int)pid,
                         WIFSIGNALED(status) ? "signal" : "exit code",
                         WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
                s->respawns++;
                s->pids[i] = s_spawn(s);
            }
        }
    }
}

/* Waits up to ms for every worker to exit, then kills the rest. */
static void s_reap_all(supervisor_t *s, int ms)
{
    long long until = bf_now_ms() + ms;
    for (;;) {
        int alive = 0;
        for (int i = 0; i < s->n; i++) {
            if (!s->pids[i])
                continue;
            if (s_wait(s, s->pids[i], NULL, WNOHANG) == s->pids[i])
                s->pids[i] = 0;
            else
                alive++;
        }
        s_relay_worker_lines(s, false); /* a worker must never block on its stderr */
        if (!alive)
            return;
        if (bf_now_ms() > until) {
            for (int i = 0; i < s->n; i++)
                if (s->pids[i]) {
                    log_warn("worker pid %d did not stop in time; killing it", (int)s->pids[i]);
                    kill(s->pids[i], SIGKILL);
                    s_wait(s, s->pids[i], NULL, 0);
                    s->pids[i] = 0;
                }
            return;
        }
        usleep(50000);
    }
}

static void s_run_usage(FILE *f)
{
    fprintf(
        f,
        "usage: backfill run JOB.yaml [--workers N] [--lease-ttl SECONDS] [--replan]\n"
        "                    [--max-rejects N] [--metrics ADDR] [--log-level LEVEL]\n"
        "                    [--log-format text|json]\n\n"
        "Runs the coordinator and N local workers (default 4) in one command, with progress\n"
        "on stderr: a live display per table on a terminal (workers then log warnings\n"
        "only), a line every 2 s otherwise. Interrupted (Ctrl-C), it hands every range back\n"
        "at its last checkpoint; run it again to resume. Tables whose target tables refer to\n"
        "others by foreign key are copied after those. When every range is done, the parked\n"
        "rows (rows that referred to rows the target did not have yet) are written again\n"
        "and the sequences behind the target tables' columns are advanced past the copied\n"
        "ids. On a finished job it says so, does both again and exits 0 (4 when rows are\n"
        "still parked); while another coordinator runs the job it exits 2 naming it.\n"
        "  --workers N     local worker processes (default 4)\n"
        "  --lease-ttl S   seconds before a silent worker's range is handed out again (30)\n"
        "  --replan        plan afresh although the targets hold progress of this job while\n"
        "                  redis has none, or redis has a plan of other tables than the job\n"
        "                  file's (after emptying the target tables)\n"
        "  --max-rejects N rows the targets may refuse (constraint, value too long) before the\n"
        "                  job stops; they are kept in public.backfill_rejects on the target.\n"
        "                  Default 0: the first refused row stops the job. A row that refers\n"
        "                  to a row its target does not have is parked there and written\n"
        "                  again when every range is done: it counts then, if still refused\n"
        "  --metrics ADDR  serve Prometheus metrics at http://ADDR/metrics (tcp://0.0.0.0:9570)\n");
}

static int s_run(coord_args_t *ap)
{
    coord_args_t a = *ap;
    int rc;
    const char *term = getenv("TERM");
    a.opts.progress_tty = isatty(STDERR_FILENO) &&
                          !(a.log_format && strcmp(a.log_format, "json") == 0) &&
                          !(term && strcmp(term, "dumb") == 0);
    bf_log_set_role("run");
    s_signals();
    a.opts.where = "`backfill run` with its own local workers";
    a.opts.own_workers = true;
    a.opts.stop = &s_stop;
    bf_coord_t *coord = s_prepare(&a, &rc);
    if (!coord)
        return rc;
    /* On a terminal: a live progress display, and the workers' info lines off so
     * they do not scroll it away (--log-level sets them back). */
    if (!a.log_level && a.opts.progress_tty)
        a.log_level = "warn";
    supervisor_t s = {.args = &a, .n = a.workers, .err_r = -1, .err_w = -1};
    snprintf(s.endpoint, sizeof s.endpoint, "ipc:///tmp/backfill-run-%d.sock", (int)getpid());
    ssize_t len = readlink("/proc/self/exe", s.self_exe, sizeof s.self_exe - 1);
    if (len <= 0 || bf_coord_bind(coord, s.endpoint) != 0) {
        log_error("cannot start the local coordinator");
        bf_coord_destroy(&coord);
        unlink(s.endpoint + strlen("ipc://")); /* bound before --metrics failed */
        return BF_EXIT_INTERNAL;
    }
    s.self_exe[len] = 0;
    int errp[2]; /* close-on-exec: a worker gets the write end as its fd 2 only */
    if (a.opts.progress_tty && pipe2(errp, O_CLOEXEC) == 0) {
        s.err_r = errp[0];
        s.err_w = errp[1];
        fcntl(s.err_r, F_SETFL, fcntl(s.err_r, F_GETFL) | O_NONBLOCK);
    }
    s.pids = bf_xcalloc((size_t)s.n, sizeof *s.pids);
    for (int i = 0; i < s.n; i++)
        s.pids[i] = s_spawn(&s);
    log_info("started %d workers", s.n);
    rc = bf_coord_serve(coord, &s_stop, s_supervise, &s);
    if (s.all_dead) {
        log_error("every worker died (see the errors above); progress is checkpointed");
        rc = BF_EXIT_FAILED;
    }
    if (rc == BF_EXIT_INTERRUPTED)
        log_info("interrupted: workers are handing their ranges back");
    s_reap_all(&s, 15000);
    if (s.err_r >= 0) {
        close(s.err_w);
        s_relay_worker_lines(&s, true);
        close(s.err_r);
    }
    bool finished = rc == BF_EXIT_OK;
    if (finished)
        rc = bf_coord_finish(coord);
    if (finished) {
        printf(rc == BF_EXIT_OK ? "job complete\n"
                                : "every range is done, but not every row is on the targets "
                                  "(see the errors above)\n");
        bf_coord_summary(coord, stdout);
        /* Resources of this run, for the benchmark: the workers' CPU in all and the
         * largest worker's peak RSS; the coordinator's own peak RSS. */
        struct rusage me;
        getrusage(RUSAGE_SELF, &me);
        printf("resources: workers cpu %.2f s, worker peak rss %.1f MB, coordinator cpu %.2f s, "
               "coordinator peak rss %.1f MB\n",
               s.worker_cpu_s, (double)s.worker_maxrss_kb / 1024.0,
               (double)(me.ru_utime.tv_sec + me.ru_stime.tv_sec) +
                   (double)(me.ru_utime.tv_usec + me.ru_stime.tv_usec) / 1e6,
               (double)me.ru_maxrss / 1024.0);
    } else if (rc == BF_EXIT_INTERRUPTED) {
        printf("interrupted; progress is checkpointed: run the same command again to resume\n");
    }
    fflush(stdout);
    free(s.pids);
    bf_coord_destroy(&coord);
    unlink(s.endpoint + strlen("ipc://"));
    return rc;
}

int bf_run_job(const char *job_path, int workers, const char *log_level)
{
    coord_args_t a = {.job_path = job_path,
                      .workers = workers,
                      .log_level = log_level,
                      .opts = {.progress_ms = 2000}};
    return s_run(&a);
}

int bf_cmd_run(int argc, char **argv)
{
    coord_args_t a = {.workers = 4, .opts = {.progress_ms = 2000}};
    int rc = s_parse(argc, argv, &a, true, s_run_usage);
    if (rc != BF_EXIT_OK)
        return rc < 0 ? BF_EXIT_OK : rc;
    return s_run(&a);
}

/* `backfill worker --connect ENDPOINT`: a stateless worker. It says HELLO, gets the
 * job with WELCOME, asks for leases with CREDIT, copies each leased range batch by
 * batch and reports DONE/FAIL. Heartbeats both ways; when the coordinator goes
 * silent it reconnects with jittered backoff and keeps its lease (checkpoints go
 * to Redis directly). SIGINT/SIGTERM: finish the current batch, hand the lease
 * back, exit 0. */
#include "commands.h"
#include "copier.h"
#include "curve.h"
#include "exitcodes.h"
#include "fault.h"
#include "job.h"
#include "log.h"
#include "net.h"
#include "rstate.h"
#include "strbuf.h"

#include <czmq.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* After a transient failure (a server down), no new lease for 1 s, doubling per
 * further failure up to this. */
#define RETRY_BACKOFF_MAX_MS 10000
/* On SIGINT/SIGTERM or DRAIN the batch in flight may finish for this long; then it
 * is abandoned (rolled back) and the range handed back at its last checkpoint. */
#define STOP_GRACE_MS 5000
/* A worker that has not joined yet says so after this long (it keeps trying). */
#define WAIT_WARN_MS 10000

static volatile sig_atomic_t s_stop = 0;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

typedef struct {
    const char *endpoint;     /* coordinator endpoint */
    const char *curve_cert;   /* CURVE: this worker's certificate (with its _secret), or NULL */
    const char *curve_server; /* CURVE: the coordinator's public certificate */
    char worker_id[128];      /* host:pid:random */
    char host[64];
    zsock_t *sock;          /* DEALER, recreated on reconnect */
    uint64_t sid, ep;       /* session from WELCOME; 0 = not welcomed */
    int64_t heartbeat_ms;   /* from WELCOME */
    int64_t liveness;       /* from WELCOME */
    int64_t lease_ttl_ms;   /* from WELCOME */
    long long last_heard;   /* ms of the last message from the coordinator */
    long long next_hb;      /* ms when the next heartbeat is due */
    long long next_hello;   /* ms when HELLO may be sent again */
    int hello_retry_ms;     /* s_hello's wait while the connection is not up */
    long long backoff_ms;   /* reconnect backoff */
    bf_job_t *job;          /* from the first WELCOME */
    bf_copier_t *copier;    /* copy engine */
    bf_lease_work_t *lease; /* the lease in hand, or NULL */
    bool credit_sent;       /* asked for work and not answered yet */
    bool draining;          /* coordinator asked us to stop */
    bool revoked;           /* the lease in hand was revoked: drop it */
    bool split_asked;       /* SHRINK for the lease in hand: split it between batches */
    int split_idle;         /* for this many idle workers (the largest asked) */
    bool split_declined;    /* the lease in hand was too small to split: no more early cuts */
    bool paused;            /* `backfill pause` or cancel seen (logged once) */
    int exit_code;          /* set when the loop should end */
    long long stop_asked;   /* ms when a stop was first seen during a batch */
    bool finished;          /* loop ends */
    int64_t ranges_done, rows_done;
    long long first_lease_ms, busy_ms; /* when it got its first lease; time spent copying */
    long long retry_until;             /* no new lease before this (after a transient failure) */
    long long retry_backoff_ms;        /* doubles on each transient failure, up to 10 s */
} worker_t;

static bool s_tick(void *arg);

static void s_socket_new(worker_t *w)
{
    zsock_destroy(&w->sock);
    w->sock = zsock_new(ZMQ_DEALER);
    zsock_set_linger(w->sock, 2000);
    zsock_set_immediate(w->sock, 1);
    zsock_set_maxmsgsize(w->sock, BF_PROTO_MAX_FRAME);
    zsock_set_sndhwm(w->sock, 1000);
    if (w->curve_cert) {
        char err[1200];
        if (bf_curve_client_apply(w->sock, w->curve_cert, w->curve_server, err, sizeof err) != 0) {
            log_error("%s", err);
            w->exit_code = BF_EXIT_USAGE;
            w->finished = true;
            return;
        }
    }
    if (zsock_connect(w->sock, "%s", w->endpoint) != 0) {
        /* Not a server that is down (that is waited for): an address ZeroMQ cannot use. */
        log_error("cannot connect to %s: %s (an endpoint is tcp://HOST:PORT or ipc:///PATH)",
                  w->endpoint, zmq_strerror(zmq_errno()));
        w->exit_code = BF_EXIT_USAGE;
        w->finished = true;
        return;
    }
    w->sid = w->ep = 0;
    w->credit_sent = false;
}

static void s_send(worker_t *w, bf_msg_t *m)
{
    m->sid = w->sid;
    m->ep = w->ep;
    if (bf_net_send(w->sock, NULL, m) != 0)
        log_debug("could not send %s (coordinator unreachable)", bf_msg_type_name(m->type));
}

/* Says HELLO; returns the ms to wait before saying it again: soon when the
 * connection is not up yet (ZMQ_IMMEDIATE refuses the send: 2 ms, doubling up to
 * 50 ms, so that a worker started with its coordinator joins at once), else 1 s. */
static long long s_hello(worker_t *w)
{
    bf_msg_t m = {.type = BF_MSG_HELLO,
                  .worker_id = w->worker_id,
                  .host = w->host,
                  .version = (char *)BF_VERSION,
                  .fv = bf_rstate_functions_version(),
                  .pid = getpid(),
                  .credit = 0};
    m.sid = m.ep = 0;
    if (bf_net_send(w->sock, NULL, &m) == 0) {
        w->hello_retry_ms = 0;
        return 1000;
    }
    w->hello_retry_ms = w->hello_retry_ms ? w->hello_retry_ms * 2 : 2;
    if (w->hello_retry_ms > 50)
        w->hello_retry_ms = 50;
    return w->hello_retry_ms;
}

static const char *s_env_from_msg(const char *name, void *arg)
{
    const bf_msg_t *m = arg;
    for (int i = 0; i < m->nenv; i++)
        if (strcmp(m->env_names[i], name) == 0)
            return m->env_values[i];
    return getenv(name);
}

/* Whether the job of a WELCOME is the one this worker runs: its text, and the
 * values of the variables it references. */
static bool s_same_job(const bf_job_t *job, const bf_msg_t *m)
{
    if (!m->job || strcmp(m->job, job->text) != 0 || m->nenv != job->nenv)
        return false;
    for (int i = 0; i < job->nenv; i++) {
        const char *v = s_env_from_msg(job->env_names[i], (void *)m);
        if (!v || strcmp(v, job->env_values[i]) != 0)
            return false;
    }
    return true;
}

static void s_on_welcome(worker_t *w, bf_msg_t *m)
{
    char peer[300], why[1024];
    snprintf(peer, sizeof peer, "the coordinator at %s", w->endpoint);
    if (!bf_rstate_same_release(peer, "this worker", m->version, m->fv, why, sizeof why)) {
        log_error("%s", why);
        w->exit_code = BF_EXIT_USAGE;
        w->finished = true;
        return;
    }
    if (w->job && !s_same_job(w->job, m)) {
        /* A coordinator restarted with a changed job file (or --replan of other
         * tables): this worker's tables, mapping and secrets are those of the old
         * one, and the new plan's ranges would be read against them. */
        log_error("the coordinator at %s now runs another version of job %s (its job file or "
                  "the variables it references changed); this worker stops: start it again to "
                  "take the new one",
                  w->endpoint, w->job->name);
        w->exit_code = BF_EXIT_USAGE;
        w->finished = true;
        return;
    }
    if (!w->job) {
        char err[1024];
        w->job = bf_job_load_string(m->job, "job (from coordinator)", s_env_from_msg, m, err,
                                    sizeof err);
        if (!w->job) {
            log_error("the coordinator sent a job this worker cannot read: %s", err);
            w->exit_code = BF_EXIT_USAGE;
            w->finished = true;
            return;
        }
        bf_log_set_job(w->job->name);
        w->lease_ttl_ms = m->lease_ttl_ms;
        w->copier = bf_copier_new(w->job, w->lease_ttl_ms);
        bf_copier_set_tick(w->copier, s_tick, w);
        bf_copier_set_name(w->copier, w->worker_id);
    }
    w->sid = m->sid;
    w->ep = m->ep;
    w->heartbeat_ms = m->heartbeat_ms > 0 ? m->heartbeat_ms : 2500;
    w->liveness = m->liveness > 0 ? m->liveness : 3;
    w->backoff_ms = 1000;
    w->credit_sent = false;
    log_info("joined coordinator at %s (session %llx, epoch %llu)", w->endpoint,
             (unsigned long long)w->sid, (unsigned long long)w->ep);
}

static void s_drop_lease(worker_t *w)
{
    w->revoked = w->split_asked = w->split_declined = false;
    w->split_idle = 0;
    if (!w->lease)
        return;
    bf_range_clear(&w->lease->range);
    free(w->lease);
    w->lease = NULL;
}

/* The last line of a worker whose job is finished; bench/ reads the busy time. */
static void s_log_finished(worker_t *w, const char *why)
{
    log_info("%s; %lld ranges and %lld rows copied by this worker, busy %.1f s of %.1f s since "
             "its first lease",
             why, (long long)w->ranges_done, (long long)w->rows_done, (double)w->busy_ms / 1000.0,
             w->first_lease_ms ? (double)(bf_now_ms() - w->first_lease_ms) / 1000.0 : 0.0);
}

/* Handles one message; returns false when it was from another session or epoch
 * (it then does not count as a sign of life). */
static bool s_on_message(worker_t *w, bf_msg_t *m)
{
    if (m->type == BF_MSG_WELCOME) {
        s_on_welcome(w, m);
        return true;
    }
    if (m->type == BF_MSG_ERR && m->code && strcmp(m->code, "VERSION") == 0) {
        log_error("the coordinator at %s refuses this worker: %s", w->endpoint,
                  m->message ? m->message : "another release");
        w->exit_code = BF_EXIT_USAGE;
        w->finished = true;
        return true;
    }
    if (m->type == BF_MSG_ERR && (w->sid == 0 || m->sid == w->sid)) {
        /* A restarted coordinator (new epoch) or one that forgot us. */
        log_warn("coordinator says %s: %s; saying HELLO again", m->code,
                 m->message ? m->message : "");
        w->sid = w->ep = 0;
        w->next_hello = 0;
        return true;
    }
    if (m->type == BF_MSG_DRAIN && m->done && m->sid == 0) {
        /* Answer to a HELLO that reached a coordinator whose job is finished. */
        s_log_finished(w, "job finished (the coordinator says so)");
        w->draining = w->finished = true;
        w->exit_code = BF_EXIT_OK;
        return true;
    }
    if (w->sid == 0 || m->sid != w->sid || m->ep != w->ep) {
        log_debug("dropped %s from an old session", bf_msg_type_name(m->type));
        if (m->type == BF_MSG_LEASE && w->copier) {
            /* Leased to us in a session we left: hand it straight back. */
            bf_lease_work_t tmp = {.range = {.id = m->range_id, .token = m->token}};
            bf_copier_release(w->copier, &tmp, "", false);
        }
        return false;
    }
    switch (m->type) {
    case BF_MSG_LEASE:
        w->credit_sent = false;
        if (w->lease || w->draining) {
            /* Not asked for: hand it straight back. */
            bf_lease_work_t tmp = {.range = {.id = m->range_id, .token = m->token}};
            if (w->copier)
                bf_copier_release(w->copier, &tmp, "", false);
            break;
        }
        w->lease = bf_xcalloc(1, sizeof *w->lease);
        if (!w->first_lease_ms)
            w->first_lease_ms = bf_now_ms();
        w->lease->range.id = m->range_id;
        w->lease->range.token = m->token;
        w->lease->range.table = (int)m->table;
        w->lease->range.seq = m->seq;
        w->lease->range.lo = m->lo ? bf_xstrdup(m->lo) : NULL;
        w->lease->range.hi = m->hi ? bf_xstrdup(m->hi) : NULL;
        w->lease->range.cursor = m->cursor ? bf_xstrdup(m->cursor) : NULL;
        log_debug("leased range %lld (token %lld)", (long long)m->range_id, (long long)m->token);
        break;
    case BF_MSG_NOWORK:
        w->credit_sent = true; /* the coordinator keeps our credit and leases later */
        break;
    case BF_MSG_REVOKE:
        /* Acted on between batches (this may arrive while the lease is copied). */
        if (w->lease && w->lease->range.id == m->range_id)
            w->revoked = true;
        break;
    case BF_MSG_SHRINK:
        /* Also acted on between batches: the split key must lie past the cursor. */
        if (w->lease && w->lease->range.id == m->range_id && w->lease->range.token == m->token) {
            w->split_asked = true;
            /* A batch in flight ends early: the split waits for it (unless the
             * last try found too little left to split). */
            if (w->copier && !w->split_declined)
                bf_copier_cut(w->copier);
            if (m->credit > w->split_idle)
                w->split_idle = (int)(m->credit > 64 ? 64 : m->credit);
        }
        break;
    case BF_MSG_DRAIN:
        w->draining = true;
        if (m->done) {
            s_log_finished(w, "job finished");
            w->finished = true;
            w->exit_code = BF_EXIT_OK;
        }
        break;
    default:
        break;
    }
    return true;
}

/* Reads what arrived (waiting up to timeout_ms when nothing has) and sends a
 * heartbeat when one is due. Also the copier's tick during long batches. */
static void s_service(worker_t *w, int timeout_ms)
{
    while (zsock_events(w->sock) & ZMQ_POLLIN ||
           (timeout_ms > 0 && bf_net_wait(w->sock, timeout_ms))) {
        timeout_ms = 0;
        bf_msg_t m;
        int rc = bf_net_recv(w->sock, NULL, &m);
        if (rc == -2)
            break;
        if (rc == 0 && s_on_message(w, &m))
            w->last_heard = bf_now_ms();
        bf_msg_clear(&m);
        if (w->finished)
            break;
    }
    long long now = bf_now_ms();
    if (w->sid && now >= w->next_hb) {
        bf_msg_t m = {.type = BF_MSG_HEARTBEAT,
                      .leases = w->lease ? 1 : 0,
                      .rows = w->rows_done + (w->lease ? w->lease->rows : 0)};
        s_send(w, &m);
        w->next_hb = now + w->heartbeat_ms;
    }
}

/* During a batch: service the socket; once a stop was asked for (signal or
 * DRAIN), let the batch finish for STOP_GRACE_MS, then abandon it. */
static bool s_tick(void *arg)
{
    worker_t *w = arg;
    s_service(w, 0);
    if (!s_stop && !w->draining)
        return false;
    long long now = bf_now_ms();
    if (!w->stop_asked)
        w->stop_asked = now;
    return now - w->stop_asked >= STOP_GRACE_MS;
}

/* Tells the coordinator the lease in hand belongs to a newer lease now, and drops it. */
static void s_send_fenced(worker_t *w, bf_msg_t *m)
{
    m->type = BF_MSG_FAIL;
    m->code = (char *)"FENCED";
    m->message = w->lease->error;
    m->retryable = true;
    s_send(w, m);
    s_drop_lease(w);
}

/* Runs one batch of the lease in hand and reports the outcome. */
static void s_work(worker_t *w)
{
    bf_lease_work_t *l = w->lease;
    bf_batch_result_t r = bf_copier_batch(w->copier, l);
    bf_msg_t m = {
        .range_id = l->range.id, .token = l->range.token, .rows = l->rows, .bytes = l->bytes};
    if (r == BF_BATCH_PAUSED) {
        if (!w->paused)
            log_info(l->control == BF_ADMIT_CANCEL
                         ? "job cancelled (backfill cancel): range %lld waits at its checkpoint "
                           "for the coordinator to end the job"
                     : l->control == BF_ADMIT_BACKOFF
                         ? "backing off (the job's throttle_query is above throttle_max): range "
                           "%lld waits at its checkpoint"
                         : "paused (backfill pause): range %lld waits at its checkpoint; `backfill "
                           "resume` continues",
                     (long long)l->range.id);
        w->paused = true;
        s_service(w, 500);
        return;
    }
    if (w->paused) {
        log_info("resumed");
        w->paused = false;
    }
    switch (r) {
    case BF_BATCH_PAUSED:
        return; /* handled above */
    case BF_BATCH_MORE:
        w->retry_backoff_ms = 1000;
        return;
    case BF_BATCH_FINAL:
        w->retry_backoff_ms = 1000;
        m.type = BF_MSG_DONE;
        w->ranges_done++;
        w->rows_done += l->rows;
        if (!s_stop && !w->draining) { /* ask for the next lease in the same message */
            m.credit = 1;
            w->credit_sent = true;
        }
        s_send(w, &m);
        s_drop_lease(w);
        return;
    case BF_BATCH_FENCED:
        log_warn("fenced: %s; dropping the range", l->error);
        bf_copier_fenced(w->copier, l);
        s_send_fenced(w, &m);
        return;
    case BF_BATCH_DEFERRED:
        /* The range is back in Redis (not an attempt); take other work now. */
        log_info("%s", l->error);
        m.type = BF_MSG_FAIL;
        m.code = (char *)"DEFERRED";
        m.message = l->error;
        m.retryable = true;
        s_send(w, &m);
        s_drop_lease(w); /* and asks for the next lease at once (no retry wait) */
        return;
    case BF_BATCH_RETRY:
    case BF_BATCH_ROW_ERROR: /* never returned by bf_copier_batch */
    case BF_BATCH_RESPLIT:
    case BF_BATCH_FATAL: {
        bool fatal = r != BF_BATCH_RETRY;
        /* Only data errors count against the range's attempts; a server that is
         * down is waited for with backoff. */
        int rel = bf_copier_release(w->copier, l, l->error, fatal);
        if (rel == 2) {
            /* A newer lease owns the range: this worker was paused or cut off past
             * its lease, and the new owner ended its open batch. */
            log_warn("fenced: range %lld is no longer this worker's lease (taken over while "
                     "it was away); its uncommitted batch was rolled back (%s)",
                     (long long)l->range.id, l->error);
            s_send_fenced(w, &m);
            return;
        }
        if (!fatal && (s_stop || w->draining))
            log_info("%s; range %lld handed back at its last checkpoint", l->error,
                     (long long)l->range.id);
        else
            log_error("%s%s", l->error, fatal ? "" : " (will retry)");
        m.type = BF_MSG_FAIL;
        m.code = (char *)(fatal ? "DATA" : (rel == 1 ? "ATTEMPTS" : "RETRY"));
        m.message = l->error;
        m.retryable = !fatal && rel != 1;
        s_send(w, &m);
        s_drop_lease(w);
        if (!fatal) {
            /* Let the server or network recover before the next lease. */
            w->retry_until = bf_now_ms() + w->retry_backoff_ms;
            w->retry_backoff_ms = w->retry_backoff_ms * 2 > RETRY_BACKOFF_MAX_MS
                                      ? RETRY_BACKOFF_MAX_MS
                                      : w->retry_backoff_ms * 2;
        }
        return;
    }
    }
}

/* The coordinator saw idle workers and asked us (SHRINK) to split the range in hand. */
static void s_split(worker_t *w)
{
    int idle = w->split_idle > 0 ? w->split_idle : 1;
    w->split_asked = false;
    w->split_idle = 0;
    if (w->draining || w->paused) /* the coordinator asks again while workers idle */
        return;
    bf_lease_work_t *l = w->lease;
    int made = 0;
    long long t0 = bf_now_ms();
    int rc = bf_copier_split(w->copier, l, idle + 1, &made);
    w->busy_ms += bf_now_ms() - t0;
    if (rc == 1 && l->batches > 0)
        w->split_declined = true;
    if (rc == 0 || rc == 1)
        return;
    bf_msg_t m = {.range_id = l->range.id, .token = l->range.token, .rows = l->rows};
    if (rc == 2) {
        snprintf(l->error, sizeof l->error, "range %lld was leased to another worker",
                 (long long)l->range.id);
        log_warn("fenced: %s; dropping the range", l->error);
        s_send_fenced(w, &m);
        return;
    }
    /* Unknown whether Redis split the range: copying on could overlap the new
     * range or stop short of it. Leave the lease; it expires back to pending
     * with whatever bounds Redis holds. */
    log_warn("range %lld: cannot split it (%s); leaving it to expire and be leased again",
             (long long)l->range.id, l->error);
    m.type = BF_MSG_FAIL;
    m.code = (char *)"RETRY";
    m.message = (char *)"split failed";
    m.retryable = true;
    s_send(w, &m);
    s_drop_lease(w);
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: backfill worker --connect ENDPOINT [--log-level LEVEL] [--log-format "
               "text|json]\n"
               "                      [--curve-cert FILE --curve-server FILE]\n\n"
               "Joins a coordinator (e.g. tcp://coord-host:5570), receives the job from it and\n"
               "copies the ranges it leases. Run one per core, on as many machines as the\n"
               "source and targets can bear. Exits 0 when the job is finished or on\n"
               "SIGINT/SIGTERM after handing its range back; 2 on a bad endpoint, when the\n"
               "coordinator runs another release of backfill, or comes back with another job.\n"
               "  --curve-cert FILE    encrypt with CURVE: this worker's certificate (FILE and\n"
               "                       FILE_secret, from `backfill keygen`); its public part\n"
               "                       must be in the coordinator's --curve-allow folder\n"
               "  --curve-server FILE  the coordinator's public certificate\n");
}

int bf_cmd_worker(int argc, char **argv)
{
    static const struct option opts[] = {{"connect", required_argument, NULL, 'c'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"log-format", required_argument, NULL, 'f'},
                                         {"curve-cert", required_argument, NULL, 'C'},
                                         {"curve-server", required_argument, NULL, 'S'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    worker_t w = {.exit_code = BF_EXIT_OK};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            w.endpoint = optarg;
            break;
        case 'l':
            if (bf_log_level_parse(optarg) < 0) {
                fprintf(stderr, "backfill worker: unknown log level '%s'\n", optarg);
                return BF_EXIT_USAGE;
            }
            bf_log_set_level((bf_log_level_t)bf_log_level_parse(optarg));
            break;
        case 'f':
            bf_log_set_json(strcmp(optarg, "json") == 0);
            break;
        case 'C':
            w.curve_cert = optarg;
            break;
        case 'S':
            w.curve_server = optarg;
            break;
        case 'h':
            s_usage(stdout);
            return BF_EXIT_OK;
        default:
            s_usage(stderr);
            return BF_EXIT_USAGE;
        }
    }
    if (!w.endpoint || optind != argc) {
        s_usage(stderr);
        return BF_EXIT_USAGE;
    }
    if ((w.curve_cert != NULL) != (w.curve_server != NULL)) {
        fprintf(stderr, "backfill worker: CURVE needs both --curve-cert and --curve-server\n");
        return BF_EXIT_USAGE;
    }
    bf_log_set_role("worker");
    bf_fault_init();
    zsys_init();
    zsys_handler_set(NULL);
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    gethostname(w.host, sizeof w.host - 1);
    srandom((unsigned)(getpid() ^ bf_now_ms()));
    snprintf(w.worker_id, sizeof w.worker_id, "%s:%d:%04lx", w.host, (int)getpid(),
             random() & 0xffff);
    w.heartbeat_ms = 2500;
    w.liveness = 3;
    w.backoff_ms = 1000;
    w.retry_backoff_ms = 1000;
    s_socket_new(&w);
    if (w.finished) { /* a bad certificate or endpoint: said so */
        zsock_destroy(&w.sock);
        return w.exit_code;
    }
    w.last_heard = bf_now_ms();
    long long started = w.last_heard;
    bool said_waiting = false;
    log_info("waiting for the coordinator at %s", w.endpoint);

    while (!w.finished) {
        /* Read what arrived first (a long batch may have kept us from it), waiting
         * a little only when there is no work in hand. */
        /* (Not joined: not past the next HELLO.) */
        s_service(&w, w.lease ? 0 : !w.sid ? bf_ms_until(w.next_hello, 100) : 100);
        if (w.finished)
            break;
        long long now = bf_now_ms();
        if (s_stop && !w.draining) {
            log_info("stopping: no new leases; a range in hand goes back at its last checkpoint");
            w.draining = true;
        }
        if (w.lease && w.draining) {
            if (bf_copier_release(w.copier, w.lease, "", false) >= 0)
                log_info("handed range %lld back at its last checkpoint",
                         (long long)w.lease->range.id);
            s_drop_lease(&w);
        }
        if (w.draining) {
            w.exit_code = BF_EXIT_OK;
            break;
        }
        /* Coordinator silent too long: reconnect with jittered backoff. */
        if (now - w.last_heard > w.heartbeat_ms * w.liveness && now >= w.next_hello) {
            if (w.sid)
                log_warn("coordinator silent for %lld ms; reconnecting", now - w.last_heard);
            if (!w.lease && w.copier && bf_copier_job_complete(w.copier) == 1) {
                s_log_finished(&w, "job finished (every range is done in redis; the "
                                   "coordinator is gone)");
                break;
            }
            s_socket_new(&w);
            s_hello(&w);
            w.last_heard = now;
            w.next_hello = now + w.backoff_ms / 2 + random() % (w.backoff_ms / 2 + 1);
            w.backoff_ms = w.backoff_ms * 2 > 32000 ? 32000 : w.backoff_ms * 2;
        } else if (!w.sid && now >= w.next_hello) {
            w.next_hello = now + s_hello(&w);
        }
        if (!w.job && !said_waiting && now - started >= WAIT_WARN_MS) {
            log_warn("no coordinator has answered at %s for %d s; still trying (is it running "
                     "and is the address right%s?)",
                     w.endpoint, WAIT_WARN_MS / 1000,
                     w.curve_cert ? ", and does it allow this worker's key" : "");
            said_waiting = true;
        }
        if (w.sid && !w.lease && !w.credit_sent && w.copier && now >= w.retry_until) {
            bf_msg_t m = {.type = BF_MSG_CREDIT, .credit = 1};
            s_send(&w, &m);
            w.credit_sent = true;
        }
        if (w.revoked) {
            log_warn("range %lld revoked by the coordinator", (long long)w.lease->range.id);
            s_drop_lease(&w);
        }
        if (w.lease && w.split_asked)
            s_split(&w);
        if (w.lease) {
            long long t0 = bf_now_ms();
            s_work(&w);
            if (!w.paused) /* waiting while paused is not work */
                w.busy_ms += bf_now_ms() - t0;
        }
    }
    s_drop_lease(&w);
    bf_copier_destroy(&w.copier);
    bf_job_destroy(&w.job);
    zsock_destroy(&w.sock);
    return w.exit_code;
}

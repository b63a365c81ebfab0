/* bf_simworkers: many simulated workers against a real coordinator, for the
 * coordinator scale benchmark (bench/coordinator.sh). No databases: each
 * simulated worker joins over ZeroMQ like `backfill worker`, asks for one lease at
 * a time, records it as finished in Redis (the bf_checkpoint function, as a real
 * worker does after its last batch; pipelined across workers) and reports DONE.
 *
 *   bf_simworkers --connect EP --workers N --redis URL --job NAME [--pid COORD_PID]
 *
 * Prints one line of key=value results: leases handed out, their rate between the
 * first CREDIT and the last LEASE, the latency from CREDIT to LEASE (p50, p99,
 * max) and, with --pid, the coordinator's peak RSS (VmHWM) read before it exits.
 * Exits 0 when every range of the job was leased and finished, 1 otherwise. */
#include "net.h"
#include "proto.h"

#include <czmq.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define DEADLINE_MS 600000

typedef struct {
    zsock_t *sock;
    uint64_t sid, ep;
    long long credit_at; /* when its CREDIT went out (us), 0 = none outstanding */
    int64_t range_id, token, seq;
} sim_t;

static long long s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static int s_cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static void s_send(sim_t *w, bf_msg_t *m)
{
    m->sid = w->sid;
    m->ep = w->ep;
    bf_net_send(w->sock, NULL, m);
}

static void s_credit(sim_t *w)
{
    bf_msg_t m = {.type = BF_MSG_CREDIT, .credit = 1};
    s_send(w, &m);
    w->credit_at = s_now_us();
}

static long s_vmhwm_kb(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

static redisContext *s_redis(const char *url)
{
    /* redis://host:port[/db]; no password (the bench's own Redis). */
    char host[256] = "127.0.0.1";
    int port = 6379;
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    if (sscanf(p, "%255[^:/]:%d", host, &port) < 1)
        return NULL;
    redisContext *c = redisConnect(host, port);
    if (!c || c->err) {
        fprintf(stderr, "bf_simworkers: cannot connect to redis %s:%d\n", host, port);
        return NULL;
    }
    return c;
}

int main(int argc, char **argv)
{
    const char *endpoint = NULL, *redis_url = NULL, *job = NULL;
    int nworkers = 1000, coord_pid = 0;
    static const struct option opts[] = {
        {"connect", required_argument, NULL, 'c'}, {"workers", required_argument, NULL, 'w'},
        {"redis", required_argument, NULL, 'r'},   {"job", required_argument, NULL, 'j'},
        {"pid", required_argument, NULL, 'p'},     {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            endpoint = optarg;
            break;
        case 'w':
            nworkers = atoi(optarg);
            break;
        case 'r':
            redis_url = optarg;
            break;
        case 'j':
            job = optarg;
            break;
        case 'p':
            coord_pid = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: bf_simworkers --connect EP --workers N --redis URL --job "
                            "NAME [--pid COORD_PID]\n");
            return 2;
        }
    }
    if (!endpoint || !redis_url || !job || nworkers < 1) {
        fprintf(stderr, "bf_simworkers: --connect, --redis and --job are required\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    zsys_init();
    zsys_set_max_sockets((size_t)nworkers + 64);
    zsys_handler_set(NULL);
    redisContext *redis = s_redis(redis_url);
    if (!redis)
        return 2;
    char meta[300];
    snprintf(meta, sizeof meta, "bf:{%s}:meta", job);
    redisReply *rr = redisCommand(redis, "HGET %s nranges", meta);
    long long nranges = rr && rr->type == REDIS_REPLY_STRING ? atoll(rr->str) : 0;
    freeReplyObject(rr);
    if (nranges <= 0) {
        fprintf(stderr, "bf_simworkers: job %s has no plan in redis\n", job);
        return 2;
    }

    sim_t *w = calloc((size_t)nworkers, sizeof *w);
    zmq_pollitem_t *items = calloc((size_t)nworkers, sizeof *items);
    long long *lat = calloc((size_t)nranges + 1, sizeof *lat);
    int *ready = calloc((size_t)nworkers, sizeof *ready);
    if (!w || !items || !lat || !ready)
        return 2;
    for (int i = 0; i < nworkers; i++) {
        w[i].sock = zsock_new(ZMQ_DEALER);
        zsock_set_sndhwm(w[i].sock, 100);
        if (!w[i].sock || zsock_connect(w[i].sock, "%s", endpoint) != 0) {
            fprintf(stderr, "bf_simworkers: cannot open worker %d (%s)\n", i,
                    zmq_strerror(zmq_errno()));
            return 2;
        }
        items[i].socket = zsock_resolve(w[i].sock);
        items[i].events = ZMQ_POLLIN;
        char id[32];
        snprintf(id, sizeof id, "sim-%d", i);
        bf_msg_t hello = {.type = BF_MSG_HELLO,
                          .worker_id = id,
                          .host = (char *)"sim",
                          .version = (char *)"sim",
                          .pid = getpid()};
        s_send(&w[i], &hello);
    }

    long long leased = 0, finished = 0, first_credit = 0, last_lease = 0;
    long long start = s_now_us();
    bool drained = false;
    while (finished < nranges && !drained && s_now_us() - start < DEADLINE_MS * 1000LL) {
        if (zmq_poll(items, nworkers, 100) < 0)
            break;
        int nready = 0;
        for (int i = 0; i < nworkers; i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            for (;;) {
                if (!(zsock_events(w[i].sock) & ZMQ_POLLIN))
                    break;
                bf_msg_t m;
                if (bf_net_recv(w[i].sock, NULL, &m) != 0)
                    break;
                if (m.type == BF_MSG_WELCOME) {
                    w[i].sid = m.sid;
                    w[i].ep = m.ep;
                    if (!first_credit)
                        first_credit = s_now_us();
                    s_credit(&w[i]);
                } else if (m.type == BF_MSG_LEASE && m.sid == w[i].sid) {
                    long long now = s_now_us();
                    if (w[i].credit_at && leased < nranges)
                        lat[leased] = now - w[i].credit_at;
                    leased++;
                    last_lease = now;
                    w[i].credit_at = 0;
                    w[i].range_id = m.range_id;
                    w[i].token = m.token;
                    w[i].seq = m.seq;
                    ready[nready++] = i;
                } else if (m.type == BF_MSG_DRAIN) {
                    drained = true;
                }
                bf_msg_clear(&m);
            }
        }
        /* Finish every lease received this round: one pipelined Redis round trip. */
        for (int k = 0; k < nready; k++) {
            sim_t *s = &w[ready[k]];
            redisAppendCommand(redis,
                               "FCALL bf_checkpoint 1 %s %lld %lld %lld %s %s %s %s %s %s %s", meta,
                               (long long)s->range_id, (long long)s->token, (long long)s->seq + 1,
                               "", "0", "1", "1", "1", "60000", "0");
        }
        for (int k = 0; k < nready; k++) {
            sim_t *s = &w[ready[k]];
            redisReply *r = NULL;
            if (redisGetReply(redis, (void **)&r) != REDIS_OK) {
                fprintf(stderr, "bf_simworkers: redis: %s\n", redis->errstr);
                return 1;
            }
            bool ok = r && (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_STRING) &&
                      strcmp(r->str, "OK") == 0;
            if (!ok)
                fprintf(stderr, "bf_simworkers: checkpoint of range %lld refused: %s\n",
                        (long long)s->range_id,
                        r && r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            freeReplyObject(r);
            /* DONE asks for the next lease too, as a worker's does. */
            bf_msg_t done = {.type = BF_MSG_DONE,
                             .range_id = s->range_id,
                             .token = s->token,
                             .rows = 1,
                             .bytes = 1,
                             .credit = 1};
            s_send(s, &done);
            s->credit_at = s_now_us();
            finished += ok;
        }
    }
    long hwm = coord_pid > 0 ? s_vmhwm_kb(coord_pid) : -1;
    long long n = leased < nranges ? leased : nranges;
    qsort(lat, (size_t)n, sizeof *lat, s_cmp_ll);
    double secs = (double)(last_lease - first_credit) / 1e6;
    printf("workers=%d ranges=%lld leased=%lld finished=%lld seconds=%.2f leases_per_s=%.0f "
           "p50_ms=%.2f p99_ms=%.2f max_ms=%.2f coordinator_rss_mb=%.1f\n",
           nworkers, nranges, leased, finished, secs, secs > 0 ? (double)leased / secs : 0.0,
           n ? (double)lat[n / 2] / 1000.0 : 0.0, n ? (double)lat[(n * 99) / 100] / 1000.0 : 0.0,
           n ? (double)lat[n - 1] / 1000.0 : 0.0, hwm > 0 ? (double)hwm / 1024.0 : -1.0);
    for (int i = 0; i < nworkers; i++)
        zsock_destroy(&w[i].sock);
    free(w);
    free(items);
    free(lat);
    free(ready);
    redisFree(redis);
    return finished >= nranges ? 0 : 1;
}

/* bf_simworkers: many simulated workers against a real coordinator, for the
 * coordinator scale benchmark (bench/coordinator.sh). No databases: each
 * simulated worker joins over ZeroMQ like `backfill worker`, asks for one lease at
 * a time, records it as finished in Redis (the bf_checkpoint function, as a real
 * worker does after its last batch) and reports DONE. Checkpoints go out on one
 * pipelined connection and their replies are taken as they come, so a slow
 * checkpoint holds up its own worker only, as it would in a real fleet.
 *
 *   bf_simworkers --connect EP --workers N --redis URL --job NAME [--pid COORD_PID]
 *                 [--rate R]
 *
 * Without --rate (or 0) every worker asks again as soon as it has finished a
 * lease: the fleet asks as fast as the coordinator answers (saturation; each
 * request then waits behind the other workers' N-1, so the latency is N / rate).
 * With --rate R the fleet asks for R leases per second in all: worker i asks on a
 * fixed timetable, every N/R seconds, staggered by i/R: it checkpoints each lease
 * when it arrives, holds it until its next request is due, then says DONE and
 * asks in the same message, as a real worker does. The latency of a request is
 * counted from the time the timetable says it is asked, not from when it was
 * sent, so a coordinator that falls behind is charged for the requests it
 * delayed (no "coordinated omission"). In both modes the worker's own checkpoint
 * is not part of the latency (it comes before the request): a worker whose
 * checkpoint returns after its next request was due asks when it returns, and
 * the latency counts from then.
 *
 * Prints one line of key=value results: leases handed out, their rate between the
 * first CREDIT and the last LEASE, the latency from CREDIT to LEASE (p50, p99,
 * max) and, with --pid, the coordinator's peak RSS (VmHWM) read before it exits,
 * and the CPU the coordinator and the simulator used while the requests ran (% of
 * one core).
 * Exits 0 when every range of the job was leased and finished, 1 otherwise. */
#include "net.h"
#include "proto.h"

#include <czmq.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>

#define DEADLINE_MS 600000
#define DEADLINE_TEXT "600 s"

typedef struct {
    zsock_t *sock;
    bool to_check; /* on the list of sockets whose ZMQ_EVENTS are read next */
    uint64_t sid, ep;
    long long credit_at; /* when its request was asked (us), 0 = none outstanding */
    long long due;       /* paced: when its next request is due (us), 0 = none */
    bool holding;        /* paced: its lease is checkpointed; DONE and ask at `due` */
    long long next_ask;  /* the asked time of the request its DONE carries (us) */
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

/* Sockets to read next: those whose ZMQ_FD fired and those sent on since (a send
 * can take in the socket's commands, so its FD may not fire for input waiting). */
static int *s_check, s_ncheck;

static void s_touch(sim_t *all, int i)
{
    if (!all[i].to_check) {
        all[i].to_check = true;
        s_check[s_ncheck++] = i;
    }
}

static void s_send(sim_t *w, bf_msg_t *m)
{
    m->sid = w->sid;
    m->ep = w->ep;
    bf_net_send(w->sock, NULL, m);
}

/* Ask for a lease that the timetable says was asked at `asked` (us). */
static void s_credit(sim_t *w, long long asked)
{
    bf_msg_t m = {.type = BF_MSG_CREDIT, .credit = 1};
    s_send(w, &m);
    w->credit_at = asked;
    w->due = 0;
}

/* Reports its (checkpointed) lease done and asks for the next one in the same
 * message, as a worker does; that request counts as asked at `asked` (us). */
static void s_done(sim_t *w, long long asked)
{
    bf_msg_t done = {.type = BF_MSG_DONE,
                     .range_id = w->range_id,
                     .token = w->token,
                     .rows = 1,
                     .bytes = 1,
                     .credit = 1};
    s_send(w, &done);
    w->credit_at = asked;
}

/* CPU seconds used so far by process pid (all its threads; -1 if unknown), or by
 * this process when pid is 0. */
static double s_cpu_s(int pid)
{
    if (pid == 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    }
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* after the command name: state, then fields 4.. */
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
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
    double rate = 0;
    static const struct option opts[] = {{"connect", required_argument, NULL, 'c'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {"redis", required_argument, NULL, 'r'},
                                         {"job", required_argument, NULL, 'j'},
                                         {"pid", required_argument, NULL, 'p'},
                                         {"rate", required_argument, NULL, 'R'},
                                         {NULL, 0, NULL, 0}};
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
        case 'R':
            rate = atof(optarg);
            break;
        default:
            fprintf(stderr, "usage: bf_simworkers --connect EP --workers N --redis URL --job "
                            "NAME [--pid COORD_PID] [--rate R]\n");
            return 2;
        }
    }
    if (!endpoint || !redis_url || !job || nworkers < 1 || rate < 0) {
        fprintf(stderr, "bf_simworkers: --connect, --redis and --job are required\n");
        return 2;
    }
    /* Paced: each worker asks every `period` us; worker i first at i/rate s. */
    long long period = rate > 0 ? (long long)(1e6 * nworkers / rate) : 0;
    long long pace0 = 0; /* when the timetable starts: the last WELCOME + 100 ms */
    int welcomed = 0;
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
    /* epoll over the sockets' ZMQ_FDs: zmq_poll would look at all 1,000 sockets
     * on every round, and the simulator shares the cores with what it measures. */
    int ep = epoll_create1(0);
    struct epoll_event *evs = calloc((size_t)nworkers, sizeof *evs);
    s_check = calloc((size_t)nworkers, sizeof *s_check);
    int *todo = calloc((size_t)nworkers, sizeof *todo);
    long long *lat = calloc((size_t)nranges + 1, sizeof *lat);
    /* Checkpoints in flight, in the order sent (one per worker at most): their
     * replies are read as they come, so that a Redis stall holds up the workers
     * waiting for one, not every worker of the simulator. */
    int *inflight = calloc((size_t)nworkers, sizeof *inflight);
    int inhead = 0, nin = 0;
    if (ep < 0 || !w || !evs || !s_check || !todo || !lat || !inflight)
        return 2;
    struct epoll_event rev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, redis->fd, &rev) != 0) {
        perror("bf_simworkers: epoll_ctl");
        return 2;
    }
    for (int i = 0; i < nworkers; i++) {
        w[i].sock = zsock_new(ZMQ_DEALER);
        zsock_set_sndhwm(w[i].sock, 100);
        if (!w[i].sock || zsock_connect(w[i].sock, "%s", endpoint) != 0) {
            fprintf(stderr, "bf_simworkers: cannot open worker %d (%s)\n", i,
                    zmq_strerror(zmq_errno()));
            return 2;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, zsock_fd(w[i].sock), &ev) != 0) {
            perror("bf_simworkers: epoll_ctl");
            return 2;
        }
        char id[32];
        snprintf(id, sizeof id, "sim-%d", i);
        bf_msg_t hello = {.type = BF_MSG_HELLO,
                          .worker_id = id,
                          .host = (char *)"sim",
                          .version = (char *)"sim",
                          .pid = getpid()};
        s_send(&w[i], &hello);
        s_touch(w, i);
    }

    long long leased = 0, finished = 0, first_credit = 0, last_lease = 0, nlat = 0;
    double cpu0_coord = 0, cpu0_self = 0; /* CPU seconds when the requests began */
    long long start = s_now_us();
    bool drained = false;
    /* A DRAIN can come before the replies of the last checkpoints are read (the
     * coordinator may see every range done in Redis first): those are still taken. */
    while (finished < nranges && !(drained && nin == 0) &&
           s_now_us() - start < DEADLINE_MS * 1000LL) {
        long long timeout_us = 100000, now0 = s_now_us();
        bool redis_in = false;
        for (int i = 0; i < nworkers && period && !drained; i++) {
            if (!w[i].due)
                continue;
            if (w[i].due <= now0 && w[i].holding) {
                s_done(&w[i], w[i].due); /* its next request is due: DONE asks for it */
                w[i].due = 0;
                w[i].holding = false;
                s_touch(w, i);
            } else if (w[i].due <= now0) {
                s_credit(&w[i], w[i].due); /* the first request */
                s_touch(w, i);
            } else if (w[i].due - now0 < timeout_us)
                timeout_us = w[i].due - now0;
        }
        int nev = epoll_wait(ep, evs, nworkers, s_ncheck ? 0 : (int)((timeout_us + 999) / 1000));
        for (int k = 0; k < nev; k++) {
            if (evs[k].data.u32 == UINT32_MAX)
                redis_in = true;
            else
                s_touch(w, (int)evs[k].data.u32);
        }
        int ncheck = s_ncheck; /* handling may add to the list: work on a copy */
        memcpy(todo, s_check, (size_t)ncheck * sizeof *todo);
        s_ncheck = 0;
        for (int k = 0; k < ncheck; k++) {
            int i = todo[k];
            w[i].to_check = false;
            for (;;) {
                if (!(zsock_events(w[i].sock) & ZMQ_POLLIN))
                    break;
                bf_msg_t m;
                if (bf_net_recv(w[i].sock, NULL, &m) != 0) {
                    bf_msg_clear(&m);
                    continue; /* a bad frame, taken off: others may wait behind it */
                }
                if (m.type == BF_MSG_WELCOME) {
                    w[i].sid = m.sid;
                    w[i].ep = m.ep;
                    if (period && ++welcomed == nworkers) {
                        /* The timetable starts once all are connected. */
                        pace0 = s_now_us() + 100000;
                        first_credit = pace0;
                        cpu0_coord = coord_pid > 0 ? s_cpu_s(coord_pid) : -1;
                        cpu0_self = s_cpu_s(0);
                        for (int j = 0; j < nworkers; j++)
                            w[j].due = pace0 + (long long)((double)j * 1e6 / rate);
                    } else if (!period) {
                        if (!first_credit) {
                            first_credit = s_now_us();
                            cpu0_coord = coord_pid > 0 ? s_cpu_s(coord_pid) : -1;
                            cpu0_self = s_cpu_s(0);
                        }
                        s_credit(&w[i], s_now_us());
                    }
                } else if (m.type == BF_MSG_LEASE && m.sid == w[i].sid) {
                    long long now = s_now_us();
                    if (w[i].credit_at && nlat < nranges)
                        lat[nlat++] = now - w[i].credit_at;
                    long long next = period && w[i].credit_at ? w[i].credit_at + period : now;
                    leased++;
                    last_lease = now;
                    w[i].credit_at = 0;
                    w[i].range_id = m.range_id;
                    w[i].token = m.token;
                    w[i].seq = m.seq;
                    w[i].next_ask = next;
                    /* Finish it: checkpoint it final, as a worker's last batch does. */
                    redisAppendCommand(redis,
                                       "FCALL bf_checkpoint 1 %s %lld %lld %lld %s %s %s %s %s %s "
                                       "%s %s %s sim-%d",
                                       meta, (long long)m.range_id, (long long)m.token,
                                       (long long)m.seq + 1, "", "0", "1", "1", "1", "60000", "0",
                                       "-1", "", i);
                    inflight[(inhead + nin++) % nworkers] = i;
                } else if (m.type == BF_MSG_DRAIN) {
                    drained = true;
                }
                bf_msg_clear(&m);
            }
        }
        /* Send the checkpoints of this round (one write), and take the replies that
         * have come. */
        for (int done = 0; !done;)
            if (redisBufferWrite(redis, &done) != REDIS_OK) {
                fprintf(stderr, "bf_simworkers: redis: %s\n", redis->errstr);
                return 1;
            }
        if (redis_in && redisBufferRead(redis) != REDIS_OK) {
            fprintf(stderr, "bf_simworkers: redis: %s\n", redis->errstr);
            return 1;
        }
        for (;;) {
            redisReply *r = NULL;
            if (nin == 0 || redisGetReplyFromReader(redis, (void **)&r) != REDIS_OK || !r)
                break;
            int i = inflight[inhead];
            inhead = (inhead + 1) % nworkers;
            nin--;
            sim_t *s = &w[i];
            bool ok = (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_STRING) &&
                      strcmp(r->str, "OK") == 0;
            if (!ok)
                fprintf(stderr, "bf_simworkers: checkpoint of range %lld refused: %s\n",
                        (long long)s->range_id,
                        r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            freeReplyObject(r);
            finished += ok;
            if (drained)
                continue; /* nobody to ask: the coordinator is gone */
            long long now = s_now_us();
            if (period && s->next_ask > now) { /* paced: DONE when the next is due */
                s->due = s->next_ask;
                s->holding = true;
                continue;
            }
            /* Saturated, or its checkpoint came back after the next was due: it asks
             * now (a slow checkpoint is the worker's and Redis's time, not the
             * coordinator's). */
            s_done(s, now);
            s_touch(w, i);
        }
    }
    if (finished < nranges)
        fprintf(stderr,
                "bf_simworkers: %lld of %lld ranges finished (%lld leased, %d checkpoints "
                "unanswered) when %s\n",
                finished, nranges, leased, nin,
                drained ? "the coordinator said DRAIN" : "the deadline passed (" DEADLINE_TEXT ")");
    long hwm = coord_pid > 0 ? s_vmhwm_kb(coord_pid) : -1;
    double wall = (double)(s_now_us() - first_credit) / 1e6;
    double cpu_coord = coord_pid > 0 && cpu0_coord >= 0 ? s_cpu_s(coord_pid) - cpu0_coord : -1;
    double cpu_self = s_cpu_s(0) - cpu0_self;
    long long n = nlat; /* latencies of the leases that answered a request */
    qsort(lat, (size_t)n, sizeof *lat, s_cmp_ll);
    double secs = (double)(last_lease - first_credit) / 1e6;
    printf("workers=%d ranges=%lld asked_per_s=%.0f leased=%lld finished=%lld seconds=%.2f "
           "leases_per_s=%.0f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f coordinator_rss_mb=%.1f "
           "coordinator_cpu_pct=%.0f sim_cpu_pct=%.0f cpu_wall_s=%.2f\n",
           nworkers, nranges, rate, leased, finished, secs, secs > 0 ? (double)leased / secs : 0.0,
           n ? (double)lat[n / 2] / 1000.0 : 0.0, n ? (double)lat[(n * 99) / 100] / 1000.0 : 0.0,
           n ? (double)lat[n - 1] / 1000.0 : 0.0, hwm > 0 ? (double)hwm / 1024.0 : -1.0,
           cpu_coord >= 0 && wall > 0 ? 100.0 * cpu_coord / wall : -1.0,
           wall > 0 ? 100.0 * cpu_self / wall : -1.0, wall);
    for (int i = 0; i < nworkers; i++)
        zsock_destroy(&w[i].sock);
    free(w);
    free(evs);
    free(s_check);
    free(todo);
    close(ep);
    free(lat);
    free(inflight);
    redisFree(redis);
    return finished >= nranges ? 0 : 1;
}

/* bf_simworkers: many simulated workers against a real coordinator, for the
 * coordinator scale benchmark (bench/coordinator.sh). No databases: each
 * simulated worker joins over TCP like `backfill worker` (ZMTP, the protocol of
 * ZeroMQ, spoken by the simulator itself: see below), asks for one lease at a
 * time, records it as finished in Redis (the bf_checkpoint function, as a real
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
#include "proto.h"
#include "rstate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 600000
#define DEADLINE_TEXT "600 s"

/* ---- A DEALER peer speaking ZMTP 3.0 (NULL mechanism) on a plain TCP socket ----
 * The coordinator is a ROUTER; each simulated worker is one TCP connection to it,
 * as a real worker's DEALER socket is. The simulator speaks ZMTP itself, over
 * non-blocking sockets in one epoll loop, instead of opening 1,000 libzmq
 * sockets: those cost an I/O thread and a mailbox wake-up per message, and the
 * simulator shares the two cores with the coordinator and Redis it measures.
 * Only what a ROUTER sends a DEALER is handled: a greeting, READY, and
 * single-frame messages (commands after READY are ignored). */

#define ZMTP_GREETING 64

typedef struct {
    int fd;
    int stage;         /* 0: the peer's greeting, 1: its READY, 2: messages */
    unsigned char *in; /* bytes read, not yet parsed */
    size_t nin, capin;
    unsigned char *out; /* bytes a full socket buffer did not take */
    size_t nout, capout;
    bool want_out; /* EPOLLOUT asked for */
} zmtp_t;

static bool s_grow(unsigned char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    unsigned char *p = realloc(*buf, c);
    if (!p)
        return false;
    *buf = p;
    *cap = c;
    return true;
}

/* Sends data from *off on until the socket takes no more; MSG_NOSIGNAL: a
 * coordinator gone is an error to report, not a SIGPIPE. 0, or -1 when the
 * connection failed. */
static int s_send_some(int fd, const unsigned char *data, size_t len, size_t *off)
{
    while (*off < len) {
        ssize_t n = send(fd, data + *off, len - *off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1;
        *off += (size_t)n;
    }
    return 0;
}

/* Writes what it can of data, keeping the rest (after what is kept already).
 * Returns 0, or -1 when the connection failed. */
static int s_zmtp_write(zmtp_t *z, const void *data, size_t len)
{
    size_t off = 0;
    if (z->nout == 0 && s_send_some(z->fd, data, len, &off) != 0)
        return -1;
    if (off == len)
        return 0;
    if (!s_grow(&z->out, &z->capout, z->nout + len - off))
        return -1;
    memcpy(z->out + z->nout, (const char *)data + off, len - off);
    z->nout += len - off;
    return 0;
}

/* Writes what was kept (on EPOLLOUT). */
static int s_zmtp_flush(zmtp_t *z)
{
    size_t off = 0;
    int rc = s_send_some(z->fd, z->out, z->nout, &off);
    memmove(z->out, z->out + off, z->nout - off);
    z->nout -= off;
    return rc;
}

/* Sends one single-frame message. */
static int s_zmtp_send(zmtp_t *z, const void *body, size_t len)
{
    unsigned char hdr[9];
    size_t h;
    if (len < 256) {
        hdr[0] = 0x00; /* final, short */
        hdr[1] = (unsigned char)len;
        h = 2;
    } else {
        hdr[0] = 0x02; /* final, long: 8-byte size, network order */
        for (int k = 0; k < 8; k++)
            hdr[1 + k] = (unsigned char)((uint64_t)len >> (56 - 8 * k));
        h = 9;
    }
    unsigned char small[2 + 255];
    if (h == 2) { /* one write for a small message */
        memcpy(small, hdr, h);
        memcpy(small + h, body, len);
        return s_zmtp_write(z, small, h + len);
    }
    return s_zmtp_write(z, hdr, h) == 0 ? s_zmtp_write(z, body, len) : -1;
}

/* Connects to tcp://HOST:PORT and sends the greeting and READY (Socket-Type
 * DEALER). Returns 0 or -1 (errno set). */
static int s_zmtp_connect(zmtp_t *z, const char *endpoint)
{
    char host[256];
    int port;
    if (sscanf(endpoint, "tcp://%255[^:]:%d", host, &port) != 2) {
        errno = EINVAL;
        return -1;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        errno = EINVAL;
        return -1;
    }
    memset(z, 0, sizeof *z);
    z->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (z->fd < 0)
        return -1;
    int one = 1;
    setsockopt(z->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Blocking connect (the listener is local), then non-blocking I/O. */
    if (connect(z->fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        return -1;
    int fl = fcntl(z->fd, F_GETFL);
    if (fl < 0 || fcntl(z->fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return -1;
    unsigned char g[ZMTP_GREETING + 64] = {0};
    g[0] = 0xff; /* signature: 0xff, 8 bytes of padding, 0x7f */
    g[9] = 0x7f;
    g[10] = 3; /* version 3.0 */
    g[11] = 0;
    memcpy(g + 12, "NULL", 4); /* mechanism, 20 bytes; as-server 0; filler */
    /* READY: a short command frame: name, then Socket-Type = DEALER */
    static const char ready[] = "\x05READY\x0bSocket-Type\x00\x00\x00\x06"
                                "DEALER";
    size_t rlen = sizeof ready - 1;
    g[ZMTP_GREETING] = 0x04;
    g[ZMTP_GREETING + 1] = (unsigned char)rlen;
    memcpy(g + ZMTP_GREETING + 2, ready, rlen);
    return s_zmtp_write(z, g, ZMTP_GREETING + 2 + rlen);
}

/* Reads what the socket has. Returns 0, or -1 when the peer closed or failed. */
static int s_zmtp_read(zmtp_t *z)
{
    for (;;) {
        if (!s_grow(&z->in, &z->capin, z->nin + 4096))
            return -1;
        size_t room = z->capin - z->nin;
        ssize_t n = read(z->fd, z->in + z->nin, room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1;
        z->nin += (size_t)n;
        if ((size_t)n < room)
            return 0;
    }
}

/* The next message read: 1 and *body, *len (valid until the next call) when one
 * is whole, 2 when the peer's READY came (the handshake is done: ZMTP has the
 * client send no message before), 0 when nothing whole is left, -1 when the peer
 * broke the protocol (said why). */
static int s_zmtp_next(zmtp_t *z, size_t *pos, const unsigned char **body, size_t *len)
{
    for (;;) {
        const unsigned char *p = z->in + *pos;
        size_t avail = z->nin - *pos;
        if (z->stage == 0) {
            if (avail < ZMTP_GREETING)
                return 0;
            if (p[0] != 0xff || p[9] != 0x7f || p[10] < 3 || memcmp(p + 12, "NULL", 4) != 0) {
                fprintf(stderr, "bf_simworkers: the coordinator's greeting is not ZMTP 3 NULL\n");
                return -1;
            }
            *pos += ZMTP_GREETING;
            z->stage = 1;
            continue;
        }
        if (avail < 2)
            return 0;
        size_t h = (p[0] & 0x02) ? 9 : 2, n = 0;
        if (avail < h)
            return 0;
        if (h == 2)
            n = p[1];
        else
            for (int k = 0; k < 8; k++)
                n = (n << 8) | p[1 + k];
        if (n > BF_PROTO_MAX_FRAME) {
            fprintf(stderr, "bf_simworkers: a frame of %zu bytes from the coordinator\n", n);
            return -1;
        }
        if (avail - h < n)
            return 0;
        *pos += h + n;
        bool command = p[0] & 0x04;
        if (z->stage == 1) {
            if (!command || n < 6 || memcmp(p + h, "\x05READY", 6) != 0) {
                fprintf(stderr, "bf_simworkers: the coordinator did not say READY\n");
                return -1;
            }
            z->stage = 2;
            return 2;
        }
        if (command)
            continue; /* (PING and the like: not sent to a 3.0 peer) */
        if (p[0] & 0x01) {
            fprintf(stderr, "bf_simworkers: a message of more than one frame\n");
            return -1;
        }
        *body = p + h;
        *len = n;
        return 1;
    }
}

/* Drops the bytes parsed up to pos. */
static void s_zmtp_consumed(zmtp_t *z, size_t pos)
{
    memmove(z->in, z->in + pos, z->nin - pos);
    z->nin -= pos;
}

typedef struct {
    zmtp_t z;
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

static int s_ep; /* the epoll set: connections are watched for output when full */

static void s_send(sim_t *all, int i, bf_msg_t *m)
{
    sim_t *w = &all[i];
    m->sid = w->sid;
    m->ep = w->ep;
    char *buf = NULL;
    size_t len = 0;
    if (bf_msg_encode(m, &buf, &len) != 0) {
        fprintf(stderr, "bf_simworkers: cannot encode a message\n");
        exit(1);
    }
    if (s_zmtp_send(&w->z, buf, len) != 0 && errno != EPIPE && errno != ECONNRESET) {
        fprintf(stderr, "bf_simworkers: worker %d cannot send: %s\n", i, strerror(errno));
        exit(1);
    } /* (a coordinator gone: its connection's close is read next, and judged there) */
    free(buf);
    if (w->z.nout > 0 && !w->z.want_out) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
        epoll_ctl(s_ep, EPOLL_CTL_MOD, w->z.fd, &ev);
        w->z.want_out = true;
    }
}

/* Paced: the workers with a due time, a min-heap by it (each at most once). */
static int *s_heap, s_nheap;
static sim_t *s_all;

static bool s_before(int a, int b)
{
    return s_all[s_heap[a]].due < s_all[s_heap[b]].due;
}

static void s_swap(int a, int b)
{
    int t = s_heap[a];
    s_heap[a] = s_heap[b];
    s_heap[b] = t;
}

static void s_due(int i, long long due)
{
    s_all[i].due = due;
    int k = s_nheap++;
    s_heap[k] = i;
    while (k > 0 && s_before(k, (k - 1) / 2)) {
        s_swap(k, (k - 1) / 2);
        k = (k - 1) / 2;
    }
}

static int s_due_pop(void)
{
    int top = s_heap[0];
    s_heap[0] = s_heap[--s_nheap];
    for (int k = 0;;) {
        int l = 2 * k + 1, r = l + 1, m = k;
        if (l < s_nheap && s_before(l, m))
            m = l;
        if (r < s_nheap && s_before(r, m))
            m = r;
        if (m == k)
            break;
        s_swap(k, m);
        k = m;
    }
    return top;
}

/* Ask for a lease that the timetable says was asked at `asked` (us). */
static void s_credit(sim_t *all, int i, long long asked)
{
    bf_msg_t m = {.type = BF_MSG_CREDIT, .credit = 1};
    s_send(all, i, &m);
    all[i].credit_at = asked;
    all[i].due = 0;
}

/* Reports its (checkpointed) lease done and asks for the next one in the same
 * message, as a worker does; that request counts as asked at `asked` (us). */
static void s_done(sim_t *all, int i, long long asked)
{
    sim_t *w = &all[i];
    bf_msg_t done = {.type = BF_MSG_DONE,
                     .range_id = w->range_id,
                     .token = w->token,
                     .rows = 1,
                     .bytes = 1,
                     .credit = 1};
    s_send(all, i, &done);
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
    s_all = w;
    s_heap = calloc((size_t)nworkers, sizeof *s_heap);
    s_ep = epoll_create1(0);
    struct epoll_event *evs = calloc((size_t)nworkers + 1, sizeof *evs);
    long long *lat = calloc((size_t)nranges + 1, sizeof *lat);
    /* Checkpoints in flight, in the order sent (one per worker at most): their
     * replies are read as they come, so that a Redis stall holds up the workers
     * waiting for one, not every worker of the simulator. */
    int *inflight = calloc((size_t)nworkers, sizeof *inflight);
    int inhead = 0, nin = 0;
    if (s_ep < 0 || !w || !s_heap || !evs || !lat || !inflight)
        return 2;
    struct epoll_event rev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (epoll_ctl(s_ep, EPOLL_CTL_ADD, redis->fd, &rev) != 0) {
        perror("bf_simworkers: epoll_ctl");
        return 2;
    }
    for (int i = 0; i < nworkers; i++) {
        if (s_zmtp_connect(&w[i].z, endpoint) != 0) {
            fprintf(stderr, "bf_simworkers: worker %d cannot connect to %s: %s\n", i, endpoint,
                    strerror(errno));
            return 2;
        }
        /* (a greeting the socket did not take whole goes out on EPOLLOUT) */
        w[i].z.want_out = w[i].z.nout > 0;
        struct epoll_event ev = {.events = EPOLLIN | (w[i].z.want_out ? EPOLLOUT : 0),
                                 .data.u32 = (uint32_t)i};
        if (epoll_ctl(s_ep, EPOLL_CTL_ADD, w[i].z.fd, &ev) != 0) {
            perror("bf_simworkers: epoll_ctl");
            return 2;
        }
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
        while (s_nheap > 0 && !drained && w[s_heap[0]].due <= now0) {
            int i = s_due_pop();
            if (w[i].holding) {
                w[i].holding = false;
                s_done(w, i, w[i].due); /* its next request is due: DONE asks for it */
                w[i].due = 0;
            } else
                s_credit(w, i, w[i].due); /* the first request */
        }
        if (s_nheap > 0 && !drained && w[s_heap[0]].due - now0 < timeout_us)
            timeout_us = w[s_heap[0]].due - now0;
        if (timeout_us < 0)
            timeout_us = 0;
        int nev = epoll_wait(s_ep, evs, nworkers + 1, (int)((timeout_us + 999) / 1000));
        if (nev < 0 && errno != EINTR) {
            perror("bf_simworkers: epoll_wait");
            return 1;
        }
        for (int k = 0; k < nev; k++) {
            if (evs[k].data.u32 == UINT32_MAX) {
                redis_in = true;
                continue;
            }
            int i = (int)evs[k].data.u32;
            zmtp_t *z = &w[i].z;
            if ((evs[k].events & EPOLLOUT) && s_zmtp_flush(z) == 0 && z->nout == 0) {
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                epoll_ctl(s_ep, EPOLL_CTL_MOD, z->fd, &ev);
                z->want_out = false;
            }
            if (!(evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            int closed = s_zmtp_read(z); /* (what came before a close is read first) */
            size_t pos = 0;
            const unsigned char *body;
            size_t blen;
            int got;
            while ((got = s_zmtp_next(z, &pos, &body, &blen)) != 0) {
                if (got < 0)
                    return 1;
                if (got == 2) { /* the handshake is done: a message may go */
                    char id[32];
                    snprintf(id, sizeof id, "sim-%d", i);
                    bf_msg_t hello = {.type = BF_MSG_HELLO,
                                      .worker_id = id,
                                      .host = (char *)"sim",
                                      .version = (char *)"sim",
                                      .fv = bf_rstate_functions_version(),
                                      .pid = getpid()};
                    s_send(w, i, &hello);
                    continue;
                }
                bf_msg_t m;
                char err[256];
                if (bf_msg_decode(body, blen, &m, err, sizeof err) != 0) {
                    fprintf(stderr, "bf_simworkers: a malformed message: %s\n", err);
                    bf_msg_clear(&m);
                    continue;
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
                            s_due(j, pace0 + (long long)((double)j * 1e6 / rate));
                    } else if (!period) {
                        if (!first_credit) {
                            first_credit = s_now_us();
                            cpu0_coord = coord_pid > 0 ? s_cpu_s(coord_pid) : -1;
                            cpu0_self = s_cpu_s(0);
                        }
                        s_credit(w, i, s_now_us());
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
            s_zmtp_consumed(z, pos);
            if (closed) {
                epoll_ctl(s_ep, EPOLL_CTL_DEL, z->fd, NULL);
                if (!drained) {
                    fprintf(stderr, "bf_simworkers: worker %d lost its connection\n", i);
                    return 1;
                }
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
                s->holding = true;
                s_due(i, s->next_ask);
                continue;
            }
            /* Saturated, or its checkpoint came back after the next was due: it asks
             * now (a slow checkpoint is the worker's and Redis's time, not the
             * coordinator's). */
            s_done(w, i, now);
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
    for (int i = 0; i < nworkers; i++) {
        close(w[i].z.fd);
        free(w[i].z.in);
        free(w[i].z.out);
    }
    free(w);
    free(s_heap);
    free(evs);
    close(s_ep);
    free(lat);
    free(inflight);
    redisFree(redis);
    return finished >= nranges ? 0 : 1;
}

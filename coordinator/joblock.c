#include "joblock.h"

#include "exitcodes.h"
#include "log.h"
#include "strbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* While Redis cannot be reached, the renewal is tried this often. */
#define RETRY_MS 500
/* The lock's connection gives up on Redis after this long (connect or command):
 * a renewal must not wait past the lock's TTL. */
#define REDIS_TIMEOUT_MS 2000
/* A waiting coordinator looks at the lock this often. */
#define POLL_MS 250

struct bf_joblock {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bf_rstate_t *redis; /* the thread's own connection */
    char me[700];       /* the lock's value while this process holds it */
    char job[200];
    bool stop;
    bool lost;
    char holder[700]; /* who took it, when lost */
};

/* The value: "<readable>|boot=<id> ns=<pid namespace> pid=<pid> start=<ticks>
 * nonce=<hex>". The part after '|' lets a coordinator in the same PID namespace
 * tell whether the holder still runs. */
typedef struct {
    char boot[64], ns[64];
    long pid;
    unsigned long long start;
} ident_t;

static void s_read_line(const char *path, char *buf, size_t len)
{
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    if (!fgets(buf, (int)len, f))
        buf[0] = 0;
    fclose(f);
    buf[strcspn(buf, "\n")] = 0;
}

/* Process `pid` ("self" or a number) as /proc shows it: its state letter and
 * start time (clock ticks after boot). 0, or an errno (ENOENT: no such process). */
static int s_proc_stat(const char *pid, char *state, unsigned long long *start)
{
    char path[64], stat[1024];
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return errno ? errno : EIO;
    size_t n = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[n] = 0;
    /* Field 2, the command name, may hold spaces and ')': fields 3.. follow the
     * last ')'. Field 3 is the state, 22 the start time. */
    char *p = strrchr(stat, ')');
    if (!p || p[1] != ' ' || !p[2])
        return EIO;
    *state = p[2];
    p += 2;
    for (int field = 3; field < 22 && p; field++)
        p = strchr(p + 1, ' ');
    if (!p)
        return EIO;
    *start = strtoull(p + 1, NULL, 10);
    return 0;
}

static void s_ident_self(ident_t *id)
{
    memset(id, 0, sizeof *id);
    id->pid = (long)getpid();
    s_read_line("/proc/sys/kernel/random/boot_id", id->boot, sizeof id->boot);
    /* Only when the /proc mounted here is this process's PID namespace's (not so
     * after `unshare --pid` without a new /proc): else no holder is judged by it
     * (ns stays empty). */
    char self[32] = "", want[32];
    ssize_t n = readlink("/proc/self", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    snprintf(want, sizeof want, "%ld", id->pid);
    char state;
    if (strcmp(self, want) != 0 || s_proc_stat("self", &state, &id->start) != 0)
        return;
    n = readlink("/proc/self/ns/pid", id->ns, sizeof id->ns - 1);
    id->ns[n > 0 ? n : 0] = 0;
}

static bool s_ident_parse(const char *value, ident_t *id)
{
    memset(id, 0, sizeof *id);
    const char *p = strrchr(value, '|');
    return p && sscanf(p + 1, "boot=%63s ns=%63s pid=%ld start=%llu", id->boot, id->ns, &id->pid,
                       &id->start) == 4;
}

/* The readable part of a lock value, as printable ASCII: it goes into messages
 * and JSON, and a lock set by hand may hold anything. */
static void s_readable(const char *value, char *buf, size_t len)
{
    const char *bar = strrchr(value, '|');
    size_t n = bar ? (size_t)(bar - value) : strlen(value);
    snprintf(buf, len, "%.*s", (int)n, value);
    for (char *c = buf; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e || *c == '"' || *c == '\\')
            *c = '?';
}

/* 1: the holder is a process of this boot and PID namespace that no longer runs
 * (gone, a zombie, or its pid is another process's now); 0: it runs; -1: not known
 * (another machine or namespace, or /proc does not show it): the TTL decides. */
static int s_local_holder_gone(const char *value)
{
    ident_t mine, theirs;
    s_ident_self(&mine);
    if (!s_ident_parse(value, &theirs) || !mine.boot[0] || !mine.ns[0] ||
        strcmp(mine.boot, theirs.boot) != 0 || strcmp(mine.ns, theirs.ns) != 0)
        return -1;
    if (theirs.pid == mine.pid) /* an earlier process with this pid (its nonce differed) */
        return 1;
    char pid[32], state = 0;
    unsigned long long start = 0;
    snprintf(pid, sizeof pid, "%ld", theirs.pid);
    int err = s_proc_stat(pid, &state, &start);
    if (err == ENOENT)
        return kill((pid_t)theirs.pid, 0) != 0 && errno == ESRCH ? 1 : -1;
    if (err != 0)
        return -1; /* hidden (hidepid) or unreadable */
    return state == 'Z' || state == 'X' || start != theirs.start ? 1 : 0;
}

static void s_make_value(bf_joblock_t *self, const char *what)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    char since[32];
    strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S UTC", &tm);
    char text[500], readable[500];
    snprintf(text, sizeof text, "pid %d on %s, %s, since %s", (int)getpid(), host,
             what ? what : "endpoint unknown", since);
    s_readable(text, readable, sizeof readable);
    ident_t id;
    s_ident_self(&id);
    unsigned long long nonce = ((unsigned long long)bf_now_ms() << 20) ^ (unsigned long long)rand();
    snprintf(self->me, sizeof self->me, "%s|boot=%s ns=%s pid=%ld start=%llu nonce=%llx", readable,
             id.boot[0] ? id.boot : "-", id.ns[0] ? id.ns : "-", id.pid, id.start, nonce);
}

/* The renewal thread. It logs with mu released: a stalled stderr must not stall
 * the coordinator's loop, which looks at `lost` under mu. */
static void *s_run(void *arg)
{
    bf_joblock_t *self = arg;
    bool down = false;
    long long wait_ms = BF_JOBLOCK_RENEW_MS;
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%d", BF_JOBLOCK_TTL_MS);
    pthread_mutex_lock(&self->mu);
    while (!self->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long long ns = (long long)ts.tv_nsec + wait_ms * 1000000LL;
        ts.tv_sec += (time_t)(ns / 1000000000LL);
        ts.tv_nsec = (long)(ns % 1000000000LL);
        pthread_cond_timedwait(&self->cv, &self->mu, &ts);
        if (self->stop)
            break;
        pthread_mutex_unlock(&self->mu);
        const char *argv[] = {
            "FCALL", "bf_lock_renew", "1", bf_rstate_key(self->redis, "lock"), self->me, ttl};
        redisReply *r = bf_rstate_argv(self->redis, 6, argv);
        long long got = -1;
        char holder[700] = "";
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
            r->element[0]->type == REDIS_REPLY_INTEGER) {
            got = r->element[0]->integer;
            if (got == 0 && r->elements > 1 && r->element[1]->type == REDIS_REPLY_STRING)
                s_readable(r->element[1]->str, holder, sizeof holder);
        }
        if (got < 0) {
            if (!down)
                log_warn("cannot renew the coordinator lock of job %s (%s); trying again every "
                         "%d ms",
                         self->job, r ? "unexpected reply" : self->redis->errmsg, RETRY_MS);
            down = true;
            wait_ms = RETRY_MS;
        } else if (got == 2) {
            log_warn("the coordinator lock of job %s had vanished (it expired while Redis was out "
                     "of reach, or Redis lost it); this coordinator holds it again",
                     self->job);
        } else if (got == 1 && down) {
            log_info("coordinator lock of job %s renewed again", self->job);
        }
        if (got >= 1) {
            down = false;
            wait_ms = BF_JOBLOCK_RENEW_MS;
        }
        freeReplyObject(r);
        pthread_mutex_lock(&self->mu);
        if (got == 0) {
            self->lost = true;
            snprintf(self->holder, sizeof self->holder, "%s", holder[0] ? holder : "unknown");
            break;
        }
    }
    pthread_mutex_unlock(&self->mu);
    return NULL;
}

bf_joblock_t *bf_joblock_take(const char *redis_url, const char *job, const char *what,
                              volatile sig_atomic_t *stop, int *exit_code)
{
    bf_joblock_t *self = bf_xcalloc(1, sizeof *self);
    snprintf(self->job, sizeof self->job, "%s", job);
    self->redis = bf_rstate_connect(redis_url, job);
    if (!self->redis) {
        *exit_code = BF_EXIT_CONNECT;
        free(self);
        return NULL;
    }
    bf_rstate_set_timeout(self->redis, REDIS_TIMEOUT_MS);
    s_make_value(self, what);
    char ttl[32], stale[700] = "", desc[700], last[700] = "";
    snprintf(ttl, sizeof ttl, "%d", BF_JOBLOCK_TTL_MS);
    long long min_pttl = -1; /* the least time left seen on this holder's lock */
    for (;;) {
        if (stop && *stop) {
            log_info("interrupted while waiting for the coordinator lock of job %s", job);
            *exit_code = BF_EXIT_INTERRUPTED;
            goto fail;
        }
        const char *argv[] = {
            "FCALL", "bf_lock_take", "1", bf_rstate_key(self->redis, "lock"), self->me, ttl, stale};
        redisReply *r = bf_rstate_argv(self->redis, 7, argv);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
            r->element[0]->type != REDIS_REPLY_INTEGER) {
            log_error("cannot take the coordinator lock of job %s: %s", job,
                      r ? "unexpected reply from redis" : self->redis->errmsg);
            freeReplyObject(r);
            *exit_code = BF_EXIT_CONNECT;
            goto fail;
        }
        if (r->element[0]->integer == 1) {
            freeReplyObject(r);
            break;
        }
        if (r->elements < 3 || r->element[1]->type != REDIS_REPLY_STRING ||
            r->element[2]->type != REDIS_REPLY_INTEGER) {
            freeReplyObject(r);
            log_error("cannot take the coordinator lock of job %s: unexpected reply from redis",
                      job);
            *exit_code = BF_EXIT_CONNECT;
            goto fail;
        }
        char holder[700];
        snprintf(holder, sizeof holder, "%s", r->element[1]->str);
        long long pttl = r->element[2]->integer;
        freeReplyObject(r);
        s_readable(holder, desc, sizeof desc);
        int gone = s_local_holder_gone(holder);
        if (gone == 1 && strcmp(holder, stale) != 0) {
            log_info("job %s: its last coordinator (%s) is no longer running; taking over", job,
                     desc);
            snprintf(stale, sizeof stale, "%s", holder);
            continue;
        }
        /* Renewed: the time left grew past the least seen (Redis's own count, so
         * no delay on this side can fake it). Another holder: watch that one. */
        bool same = strcmp(holder, last) == 0;
        bool renewed = same && min_pttl >= 0 && pttl > min_pttl + 100;
        if (gone == 0 || renewed || pttl < 0) {
            if (pttl < 0)
                log_error("job %s is locked by %s, a lock with no expiry (not set by a "
                          "coordinator): if no coordinator runs the job, delete the key %s in "
                          "redis",
                          job, desc, bf_rstate_key(self->redis, "lock"));
            else
                log_error("job %s is being run by another coordinator: %s. Stop that one first",
                          job, desc);
            *exit_code = BF_EXIT_USAGE;
            goto fail;
        }
        if (!same)
            log_warn("job %s is held by another coordinator (%s); waiting up to %.1f s for its "
                     "lock to expire (a coordinator that was killed) or to be renewed (one that "
                     "runs: then this one stops)",
                     job, desc, (double)pttl / 1000.0);
        if (!same || pttl < min_pttl)
            min_pttl = pttl;
        snprintf(last, sizeof last, "%s", holder);
        usleep(POLL_MS * 1000);
    }
    pthread_mutex_init(&self->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&self->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&self->thread, NULL, s_run, self) != 0) {
        log_error("cannot start the thread that renews the coordinator lock");
        pthread_cond_destroy(&self->cv);
        pthread_mutex_destroy(&self->mu);
        const char *argv[] = {"FCALL", "bf_lock_release", "1", bf_rstate_key(self->redis, "lock"),
                              self->me};
        freeReplyObject(bf_rstate_argv(self->redis, 5, argv));
        *exit_code = BF_EXIT_INTERNAL;
        goto fail;
    }
    return self;
fail:
    bf_rstate_destroy(&self->redis);
    free(self);
    return NULL;
}

bool bf_joblock_lost(bf_joblock_t *self, char *buf, size_t len)
{
    pthread_mutex_lock(&self->mu);
    bool lost = self->lost;
    if (lost && buf)
        snprintf(buf, len, "%s", self->holder);
    pthread_mutex_unlock(&self->mu);
    return lost;
}

void bf_joblock_release(bf_joblock_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bf_joblock_t *self = *self_p;
    pthread_mutex_lock(&self->mu);
    self->stop = true;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    pthread_join(self->thread, NULL);
    if (!self->lost) {
        const char *argv[] = {"FCALL", "bf_lock_release", "1", bf_rstate_key(self->redis, "lock"),
                              self->me};
        redisReply *r = bf_rstate_argv(self->redis, 5, argv);
        if (!r)
            log_warn("cannot release the coordinator lock of job %s (%s): it expires in %d s",
                     self->job, self->redis->errmsg, BF_JOBLOCK_TTL_MS / 1000);
        freeReplyObject(r);
    }
    bf_rstate_destroy(&self->redis);
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

int bf_joblock_holder(bf_rstate_t *redis, char *buf, size_t len)
{
    redisReply *r = bf_rstate_cmd(redis, "GET %s", bf_rstate_key(redis, "lock"));
    if (!r)
        return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_STRING) {
        s_readable(r->str, buf, len);
        rc = 1;
    }
    freeReplyObject(r);
    return rc;
}

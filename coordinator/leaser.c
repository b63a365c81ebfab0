#include "leaser.h"

#include "strbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The pool holds about POOL_SECONDS of hand-outs at the rate of the last second,
 * at most POOL_MAX, and none below POOL_MIN_RATE hand-outs per second (a small job
 * leases exactly what is asked for, as it comes). */
#define POOL_SECONDS 0.2
#define POOL_MAX 4096
#define POOL_MIN_RATE 20
/* Leases per bf_lease call (a call holds Redis for its whole loop). */
#define FILL_CHUNK 512
/* With nothing pending, look again this often while requests wait. */
#define EMPTY_RETRY_MS 20
/* The done count is read this often (and at once when asked). */
#define COUNT_MS 250

typedef struct {
    bf_range_t r;
    long long since; /* ms when leased or last renewed */
} pooled_t;

typedef struct {
    int64_t id;
    char owner[128];
} assign_t;

typedef struct {
    uint64_t sid;
    int64_t id, token;
} ref_t;

/* Work the loop queues for the thread; the thread swaps it out whole. */
typedef struct {
    void *v;
    int n, cap;
} queue_t;

struct bf_leaser {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* wakes the thread */
    int pipefd[2];     /* thread -> loop: something to pick up */
    bf_rstate_t *redis;
    atomic_uint floored; /* redis->reconnects when the coordinator last raised Redis's
                          * counters past the targets' (bf_leaser_floored) */
    char owner[128];
    int64_t ttl_ms, reap_ms;
    bool stop;
    /* The pool: a ring of POOL_MAX + FILL_CHUNK entries. */
    pooled_t *pool;
    int head, npool;
    int unmet;          /* requests the loop could not answer at its last take */
    bool exhausted;     /* the last fill found fewer pending than it asked for */
    long long next_try; /* fill again not before this (nothing pending, or an error) */
    long long window;   /* start of the current one-second rate window */
    int64_t taken_now;  /* hand-outs in the current window */
    int64_t taken_last; /* hand-outs in the last full window */
    queue_t assigns;    /* of assign_t: owner names to write */
    queue_t renews;     /* of ref_t: worker leases to renew */
    ref_t *lost;
    int nlost, caplost;
    bf_leaser_counts_t counts;
    uint64_t want_gen; /* the loop waits for counts of this generation */
    int reaped;
    char err[512];
    bool err_new;
};

#define RING (POOL_MAX + FILL_CHUNK)

static void *s_grow(void *p, int *cap, int need, size_t size)
{
    if (need <= *cap)
        return p;
    int c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    *cap = c;
    return bf_xrealloc(p, (size_t)c * size);
}

static void s_swap(queue_t *a, queue_t *b)
{
    queue_t t = *a;
    *a = *b;
    *b = t;
}

static void s_wake_loop(bf_leaser_t *self)
{
    char b = 1;
    ssize_t n = write(self->pipefd[1], &b, 1);
    (void)n; /* full: the loop has a wake-up pending already */
}

static void s_error(bf_leaser_t *self)
{
    snprintf(self->err, sizeof self->err, "%s", self->redis->errmsg);
    self->err_new = true;
}

/* Pooled leases the pool should hold besides the unmet requests: mu held. */
static int s_target(bf_leaser_t *self, long long now)
{
    if (now - self->window >= 1000) {
        self->taken_last = now - self->window < 2000 ? self->taken_now : 0;
        self->taken_now = 0;
        self->window = now;
    }
    if (self->taken_last < POOL_MIN_RATE)
        return 0;
    double t = (double)self->taken_last * POOL_SECONDS;
    return t > POOL_MAX ? POOL_MAX : (int)t;
}

/* Leases up to `want` ranges into the pool. mu held on entry and exit, released
 * for the Redis call. */
static void s_fill(bf_leaser_t *self, int want, long long now)
{
    if (want > FILL_CHUNK)
        want = FILL_CHUNK;
    if (want > RING - self->npool)
        want = RING - self->npool;
    if (want <= 0)
        return;
    /* Connected again since the last raise: Redis may have lost writes, and a lease
     * now may carry a token the targets hold already (a range leased before would be
     * fenced out). None until the coordinator has raised the counters. */
    unsigned conn = atomic_load(&self->redis->reconnects);
    if (conn != atomic_load(&self->floored)) {
        self->next_try = now + EMPTY_RETRY_MS;
        return;
    }
    const char **owners = bf_xcalloc((size_t)want, sizeof *owners);
    bf_range_t *got = bf_xcalloc((size_t)want, sizeof *got);
    for (int i = 0; i < want; i++)
        owners[i] = self->owner;
    pthread_mutex_unlock(&self->mu);
    int n = bf_rstate_lease(self->redis, self->ttl_ms, want, owners, got);
    if (n > 0 && atomic_load(&self->redis->reconnects) != conn) {
        /* The call itself connected again (and retried): back they go, unused. (A
         * call that timed out may have leased too: those leases expire and are
         * reaped.) */
        bool lost = false; /* (those not given back are reaped when their lease expires) */
        for (int i = 0; i < n; i++) {
            lost |= bf_rstate_release(self->redis, got[i].id, got[i].token, "", false, 0) < 0;
            bf_range_clear(&got[i]);
        }
        pthread_mutex_lock(&self->mu);
        if (lost)
            s_error(self);
        free(owners);
        free(got);
        self->next_try = now + EMPTY_RETRY_MS;
        return;
    }
    pthread_mutex_lock(&self->mu);
    free(owners);
    if (n < 0) {
        s_error(self);
        self->next_try = now + 100; /* Redis down: try again soon, quietly */
        free(got);
        return;
    }
    for (int i = 0; i < n; i++) {
        pooled_t *p = &self->pool[(self->head + self->npool++) % RING];
        p->r = got[i];
        p->since = now;
    }
    free(got);
    bool was = self->exhausted;
    self->exhausted = n < want;
    self->next_try = self->exhausted ? now + EMPTY_RETRY_MS : 0;
    if (self->unmet > 0 && (n > 0 || self->exhausted != was))
        s_wake_loop(self);
}

/* Renews leases (ids, tokens) with mu held, released for the call: how many
 * were found no longer held (their ids in lost), or -1 on a Redis error. */
static int s_renew_call(bf_leaser_t *self, int n, const int64_t *ids, const int64_t *tokens,
                        int64_t *lost)
{
    int nlost = n;
    pthread_mutex_unlock(&self->mu);
    int rc = bf_rstate_renew(self->redis, self->ttl_ms, n, ids, tokens, lost, &nlost);
    pthread_mutex_lock(&self->mu);
    if (rc != 0) {
        s_error(self);
        return -1;
    }
    return nlost;
}

/* Renews pooled leases older than a third of the TTL; the lost ones leave the
 * pool. mu held (released for the call). */
static void s_renew_pool(bf_leaser_t *self, long long now)
{
    int n = 0;
    int64_t *ids = bf_xcalloc((size_t)self->npool + 1, sizeof *ids);
    int64_t *tokens = bf_xcalloc((size_t)self->npool + 1, sizeof *tokens);
    int64_t *lost = bf_xcalloc((size_t)self->npool + 1, sizeof *lost);
    long long cutoff = now - self->ttl_ms / 3;
    for (int i = 0; i < self->npool; i++) {
        pooled_t *p = &self->pool[(self->head + i) % RING];
        if (p->since <= cutoff) {
            ids[n] = p->r.id;
            tokens[n++] = p->r.token;
        }
    }
    int nlost = n > 0 ? s_renew_call(self, n, ids, tokens, lost) : -1;
    /* Those asked for and still pooled (the loop may have taken some meanwhile). */
    for (int i = 0; nlost >= 0 && i < self->npool;) {
        pooled_t *p = &self->pool[(self->head + i) % RING];
        bool gone = false;
        for (int k = 0; k < nlost && !gone; k++)
            gone = lost[k] == p->r.id;
        if (!gone) {
            if (p->since <= cutoff)
                p->since = now;
            i++;
            continue;
        }
        bf_range_clear(&p->r);
        pooled_t *last = &self->pool[(self->head + self->npool - 1) % RING];
        *p = *last;
        memset(&last->r, 0, sizeof last->r);
        self->npool--;
    }
    free(ids);
    free(tokens);
    free(lost);
}

/* Renews the leases of workers that sent a heartbeat; the lost ones go back to
 * the loop. mu held (released for the call). */
static void s_renew(bf_leaser_t *self, ref_t *refs, int n)
{
    int64_t *ids = bf_xcalloc((size_t)n, sizeof *ids);
    int64_t *tokens = bf_xcalloc((size_t)n, sizeof *tokens);
    int64_t *lost = bf_xcalloc((size_t)n, sizeof *lost);
    for (int i = 0; i < n; i++) {
        ids[i] = refs[i].id;
        tokens[i] = refs[i].token;
    }
    int nlost = s_renew_call(self, n, ids, tokens, lost);
    for (int k = 0; k < nlost; k++)
        for (int i = 0; i < n; i++)
            if (refs[i].id == lost[k]) {
                self->lost =
                    s_grow(self->lost, &self->caplost, self->nlost + 1, sizeof *self->lost);
                self->lost[self->nlost++] = refs[i];
                break;
            }
    if (nlost > 0)
        s_wake_loop(self);
    free(ids);
    free(tokens);
    free(lost);
}

static void s_assign(bf_leaser_t *self, assign_t *as, int n)
{
    int64_t *ids = bf_xcalloc((size_t)n, sizeof *ids);
    const char **owners = bf_xcalloc((size_t)n, sizeof *owners);
    for (int i = 0; i < n; i++) {
        ids[i] = as[i].id;
        owners[i] = as[i].owner;
    }
    for (int at = 0; at < n; at += FILL_CHUNK) {
        int k = n - at < FILL_CHUNK ? n - at : FILL_CHUNK;
        if (bf_rstate_assign(self->redis, k, ids + at, owners + at) < 0) {
            /* Only the name is lost (the lease works without it). */
            pthread_mutex_lock(&self->mu);
            s_error(self);
            pthread_mutex_unlock(&self->mu);
            break;
        }
    }
    free(ids);
    free(owners);
}

/* Reads the done count, then (after it: a split adds its range before its part
 * can end) the range count and the cancel flag. */
static void s_count(bf_leaser_t *self, uint64_t gen)
{
    bf_leaser_counts_t c = {.gen = gen};
    bf_rstate_t *r = self->redis;
    redisReply *st =
        bf_rstate_cmd(r, "HMGET %s done_total failed_total", bf_rstate_key(r, "stats"));
    redisReply *mt =
        st ? bf_rstate_cmd(r, "HMGET %s nranges cancel", bf_rstate_key(r, "meta")) : NULL;
    if (st && mt && st->type == REDIS_REPLY_ARRAY && st->elements == 2 &&
        mt->type == REDIS_REPLY_ARRAY && mt->elements == 2 &&
        mt->element[0]->type == REDIS_REPLY_STRING) {
        c.ok = true;
        if (st->element[0]->type == REDIS_REPLY_STRING)
            c.done = strtoll(st->element[0]->str, NULL, 10);
        if (st->element[1]->type == REDIS_REPLY_STRING)
            c.failed = strtoll(st->element[1]->str, NULL, 10);
        c.nranges = strtoll(mt->element[0]->str, NULL, 10);
        c.cancel =
            mt->element[1]->type == REDIS_REPLY_STRING && strcmp(mt->element[1]->str, "1") == 0;
    }
    bool planless = st && mt && !c.ok;
    freeReplyObject(st);
    freeReplyObject(mt);
    pthread_mutex_lock(&self->mu);
    if (planless) { /* the replies came, without the plan's range count */
        snprintf(self->err, sizeof self->err,
                 "the job's plan is gone from redis (were its keys deleted, or redis flushed?)");
        self->err_new = true;
    } else if (!c.ok)
        s_error(self);
    self->counts = c;
    if (self->want_gen && gen >= self->want_gen)
        s_wake_loop(self);
    pthread_mutex_unlock(&self->mu);
}

static void *s_run(void *arg)
{
    bf_leaser_t *self = arg;
    long long now = bf_now_ms();
    long long next_count = now, next_reap = now + self->reap_ms;
    long long next_pool_renew = now + self->ttl_ms / 3;
    uint64_t gen = 0;
    queue_t as = {0}, refs = {0};
    pthread_mutex_lock(&self->mu);
    while (!self->stop) {
        now = bf_now_ms();
        bool busy = false;
        int need = self->unmet + s_target(self, now) - self->npool;
        if (need > 0 && now >= self->next_try) {
            s_fill(self, need, now);
            busy = true;
        }
        /* (Each step may wait for Redis: look at stop in between.) Queues are
         * swapped out, so that the loop can queue more meanwhile. */
        if (self->renews.n > 0 && !self->stop) {
            s_swap(&refs, &self->renews);
            s_renew(self, refs.v, refs.n);
            refs.n = 0;
            busy = true;
        }
        if (self->assigns.n > 0 && !self->stop) {
            s_swap(&as, &self->assigns);
            pthread_mutex_unlock(&self->mu);
            s_assign(self, as.v, as.n);
            pthread_mutex_lock(&self->mu);
            as.n = 0;
            busy = true;
        }
        if (!self->stop && (now >= next_count || self->want_gen > self->counts.gen)) {
            next_count = now + COUNT_MS;
            pthread_mutex_unlock(&self->mu);
            s_count(self, ++gen);
            pthread_mutex_lock(&self->mu);
            busy = true;
        }
        if (now >= next_reap && !self->stop) {
            next_reap = now + self->reap_ms;
            pthread_mutex_unlock(&self->mu);
            int n = bf_rstate_reap(self->redis);
            pthread_mutex_lock(&self->mu);
            if (n < 0)
                s_error(self);
            else
                self->reaped += n;
        }
        if (now >= next_pool_renew && !self->stop) {
            next_pool_renew = now + 1000;
            s_renew_pool(self, now);
        }
        if (busy || self->stop)
            continue;
        /* Sleep until asked, or the next thing due. */
        long long until = next_count < next_reap ? next_count : next_reap;
        if (next_pool_renew < until)
            until = next_pool_renew;
        if (need > 0 && self->next_try < until)
            until = self->next_try;
        now = bf_now_ms();
        if (until <= now)
            continue;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long long ns = (long long)ts.tv_nsec + (until - now) * 1000000LL;
        ts.tv_sec += (time_t)(ns / 1000000000LL);
        ts.tv_nsec = (long)(ns % 1000000000LL);
        pthread_cond_timedwait(&self->cv, &self->mu, &ts);
    }
    pthread_mutex_unlock(&self->mu);
    free(as.v);
    free(refs.v);
    return NULL;
}

bf_leaser_t *bf_leaser_start(bf_rstate_t *redis, const char *owner, int64_t ttl_ms, int64_t reap_ms)
{
    bf_leaser_t *self = bf_xcalloc(1, sizeof *self);
    self->redis = redis;
    atomic_init(&self->floored, atomic_load(&redis->reconnects));
    snprintf(self->owner, sizeof self->owner, "%s", owner);
    self->ttl_ms = ttl_ms;
    self->reap_ms = reap_ms;
    self->pool = bf_xcalloc(RING, sizeof *self->pool);
    self->window = bf_now_ms();
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&self->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&self->mu, NULL);
    if (pipe2(self->pipefd, O_CLOEXEC | O_NONBLOCK) != 0) {
        self->pipefd[0] = self->pipefd[1] = -1;
        goto fail;
    }
    if (pthread_create(&self->thread, NULL, s_run, self) != 0)
        goto fail;
    return self;
fail:
    if (self->pipefd[0] >= 0) {
        close(self->pipefd[0]);
        close(self->pipefd[1]);
    }
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    free(self->pool);
    free(self);
    return NULL;
}

void bf_leaser_stop(bf_leaser_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bf_leaser_t *self = *self_p;
    pthread_mutex_lock(&self->mu);
    self->stop = true;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    pthread_join(self->thread, NULL);
    /* The thread is gone: its connection is ours. Names first (a lease handed out
     * keeps the pool's name until then), then the pool back to pending. */
    if (self->assigns.n > 0)
        s_assign(self, self->assigns.v, self->assigns.n);
    if (self->npool > 0) {
        int64_t *ids = bf_xcalloc((size_t)self->npool, sizeof *ids);
        int64_t *tokens = bf_xcalloc((size_t)self->npool, sizeof *tokens);
        for (int i = 0; i < self->npool; i++) {
            pooled_t *p = &self->pool[(self->head + i) % RING];
            ids[i] = p->r.id;
            tokens[i] = p->r.token;
            bf_range_clear(&p->r);
        }
        for (int at = 0; at < self->npool; at += FILL_CHUNK) {
            int k = self->npool - at < FILL_CHUNK ? self->npool - at : FILL_CHUNK;
            bf_rstate_unpool(self->redis, self->owner, k, ids + at, tokens + at);
        }
        free(ids);
        free(tokens);
    }
    bf_rstate_destroy(&self->redis);
    close(self->pipefd[0]);
    close(self->pipefd[1]);
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    free(self->pool);
    free(self->assigns.v);
    free(self->renews.v);
    free(self->lost);
    free(self);
    *self_p = NULL;
}

int bf_leaser_fd(bf_leaser_t *self)
{
    return self->pipefd[0];
}

void bf_leaser_drain_fd(bf_leaser_t *self)
{
    char buf[64];
    while (read(self->pipefd[0], buf, sizeof buf) > 0)
        ;
}

int bf_leaser_take(bf_leaser_t *self, int n, int cap, bf_range_t *out, bool *exhausted)
{
    pthread_mutex_lock(&self->mu);
    int k = n < cap ? n : cap;
    if (k > self->npool)
        k = self->npool;
    for (int i = 0; i < k; i++) {
        out[i] = self->pool[self->head].r;
        memset(&self->pool[self->head].r, 0, sizeof out[i]);
        self->head = (self->head + 1) % RING;
    }
    self->npool -= k;
    int target = s_target(self, bf_now_ms()); /* (also rolls the rate window) */
    self->taken_now += k;
    int was = self->unmet;
    self->unmet = n - k;
    *exhausted = self->npool == 0 && self->exhausted;
    /* Wake the thread for a shortage, or when the pool runs low. */
    if ((self->unmet > 0 && self->unmet > was) || (k > 0 && self->npool < target / 2))
        pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    return k;
}

void bf_leaser_assign(bf_leaser_t *self, int64_t id, const char *owner)
{
    pthread_mutex_lock(&self->mu);
    self->assigns.v =
        s_grow(self->assigns.v, &self->assigns.cap, self->assigns.n + 1, sizeof(assign_t));
    assign_t *a = (assign_t *)self->assigns.v + self->assigns.n++;
    a->id = id;
    snprintf(a->owner, sizeof a->owner, "%s", owner);
    if (self->assigns.n == 1)
        pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

void bf_leaser_renew(bf_leaser_t *self, uint64_t sid, int n, const int64_t *ids,
                     const int64_t *tokens)
{
    if (n <= 0)
        return;
    pthread_mutex_lock(&self->mu);
    self->renews.v = s_grow(self->renews.v, &self->renews.cap, self->renews.n + n, sizeof(ref_t));
    ref_t *r = self->renews.v;
    for (int i = 0; i < n; i++)
        r[self->renews.n++] = (ref_t){.sid = sid, .id = ids[i], .token = tokens[i]};
    if (self->renews.n == n)
        pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

int bf_leaser_lost(bf_leaser_t *self, int max, uint64_t *sids, int64_t *ids, int64_t *tokens)
{
    pthread_mutex_lock(&self->mu);
    int k = self->nlost < max ? self->nlost : max;
    if (k == 0) {
        pthread_mutex_unlock(&self->mu);
        return 0;
    }
    for (int i = 0; i < k; i++) {
        sids[i] = self->lost[i].sid;
        ids[i] = self->lost[i].id;
        tokens[i] = self->lost[i].token;
    }
    memmove(self->lost, self->lost + k, (size_t)(self->nlost - k) * sizeof *self->lost);
    self->nlost -= k;
    pthread_mutex_unlock(&self->mu);
    return k;
}

void bf_leaser_recount(bf_leaser_t *self)
{
    pthread_mutex_lock(&self->mu);
    /* A read that starts after this call: one past any read under way. */
    uint64_t want = self->counts.gen + 2;
    if (want > self->want_gen)
        self->want_gen = want;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

void bf_leaser_counts(bf_leaser_t *self, bf_leaser_counts_t *out)
{
    pthread_mutex_lock(&self->mu);
    *out = self->counts;
    pthread_mutex_unlock(&self->mu);
}

int bf_leaser_reaped(bf_leaser_t *self)
{
    pthread_mutex_lock(&self->mu);
    int n = self->reaped;
    self->reaped = 0;
    pthread_mutex_unlock(&self->mu);
    return n;
}

unsigned bf_leaser_reconnects(bf_leaser_t *self)
{
    return atomic_load(&self->redis->reconnects);
}

void bf_leaser_floored(bf_leaser_t *self, unsigned reconnects)
{
    atomic_store(&self->floored, reconnects);
}

bool bf_leaser_waits(bf_leaser_t *self)
{
    return atomic_load(&self->redis->reconnects) != atomic_load(&self->floored);
}

bool bf_leaser_error(bf_leaser_t *self, char *buf, size_t len)
{
    pthread_mutex_lock(&self->mu);
    bool e = self->err_new;
    if (e)
        snprintf(buf, len, "%s", self->err);
    self->err_new = false;
    pthread_mutex_unlock(&self->mu);
    return e;
}

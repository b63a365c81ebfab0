#include "coordinator.h"

#include "curve.h"
#include "exitcodes.h"
#include "fault.h"
#include "fence.h"
#include "joblock.h"
#include "leaser.h"
#include "log.h"
#include "metrics.h"
#include "progress.h"
#include "parked.h"
#include "sequences.h"
#include "net.h"
#include "strbuf.h"

#include <czmq.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORKER_LEASES 8
#define MAX_ATTEMPTS 5

typedef struct {
    zframe_t *identity;  /* ROUTER identity of the worker's DEALER */
    char id[128];        /* worker_id it announced */
    uint64_t sid;        /* session id given in WELCOME */
    int64_t credit;      /* leases it will still take */
    long long last_seen; /* ms of its last message */
    long long last_sent; /* ms of the last message to it (any counts as a heartbeat) */
    bool nowork_sent;    /* told it there is nothing to do */
    int nleases;         /* leases it holds */
    int64_t lease_ids[MAX_WORKER_LEASES];
    int64_t lease_tokens[MAX_WORKER_LEASES];
    long long lease_since[MAX_WORKER_LEASES]; /* ms when leased */
    long long split_asked[MAX_WORKER_LEASES]; /* ms of the last SHRINK for it, 0 = none */
    bool lease_whole[MAX_WORKER_LEASES];      /* its table is copied in key order: no SHRINK */
} worker_t;

/* Straggler splitting: a lease is asked to split (SHRINK) once it is this old, and
 * again at most this often, while workers are idle with nothing pending. */
#define SPLIT_MIN_AGE_MS 50
#define SPLIT_EVERY_MS 500
/* At most this many SHRINKs per dispatch round. */
#define SPLIT_MAX_ASKS 16

struct bf_coord {
    bf_jobctx_t ctx;          /* job, connections, resolved tables */
    bf_coord_opts_t opts;     /* timing */
    zsock_t *router;          /* bound ROUTER */
    bf_joblock_t *lock;       /* the job's coordinator lock, held from start to destroy */
    bf_leaser_t *leaser;      /* leases, renewals, counts: Redis off the message loop */
    bf_metrics_t *metrics;    /* Prometheus endpoint, or NULL */
    bf_curve_server_t *curve; /* CURVE authentication, or NULL */
    bf_progress_view_t view;  /* the live progress display (opts.progress_tty) */
    bf_rate_window_t rate;    /* its rate: over the last few seconds */
    bf_rate_window_t brate;   /* bytes, for the ETA */
    uint64_t epoch;           /* this coordinator's epoch (from Redis) */
    worker_t *workers;        /* connected workers */
    int nworkers, capworkers;
    zhashx_t *by_identity;     /* hex of a worker's ROUTER identity -> its index + 1 */
    int rr;                    /* where the next lease hand-out round starts (fairness) */
    bool recount;              /* the done count may have changed much: read it from Redis */
    int64_t done_seen;         /* done count at the last read */
    int64_t dones_since;       /* DONE messages since then */
    bool drained;              /* the pool was empty with nothing pending at the last dispatch */
    int64_t nranges;           /* ranges in the plan (grows when ranges are split) */
    unsigned floored;          /* s_redis_reconnects() when Redis's counters were last raised
                                * past the targets' fence rows */
    long long next_floor;      /* after a reconnect: no new try to raise them before this (ms) */
    long long next_floor_warn; /* no warning that raising them failed before this (ms) */
    long long next_rel_warn;   /* no warning of a worker of another release before this */
    bool *in_order;            /* per job table: its ranges are copied one after another */
    long long next_split;      /* no SHRINK round before this (ms) */
    bool splitting;            /* workers idle, nothing pending: SHRINK rounds due */
    bool cancelled;            /* `backfill cancel`: drain the workers and stop, resumable */
    long long next_throttle_check; /* throttle_query: when it runs next (ms) */
    int backoff;                   /* throttle_query above throttle_max: 1, below: 0, -1 unknown */
    long long next_throttle_warn;
    bool failed;           /* a range failed for good or a worker hit a data error */
    char fail_msg[1024];   /* why */
    long long started_ms;  /* when serving started (monotonic) */
    int64_t rows_at_start; /* rows copied before this run (for the rate) */
    int64_t rows_now;      /* rows copied, last read */
    long long next_tick, next_progress;
    long long next_redis_warn; /* rate limit for "redis is down" warnings */
};

static const char *s_stats_field(redisReply *r, const char *field)
{
    for (size_t i = 0; r && i + 1 < r->elements; i += 2)
        if (strcmp(r->element[i]->str, field) == 0)
            return r->element[i + 1]->str;
    return NULL;
}

int bf_progress_read(bf_rstate_t *redis, int ntables, bf_table_progress_t *out, int64_t *retries,
                     int64_t *batches)
{
    /* Counts before range totals: a split adds its range before the part it left
     * can be done, so done == ranges read in this order means all are done. */
    redisReply *st = bf_rstate_cmd(redis, "HGETALL %s", bf_rstate_key(redis, "stats"));
    if (!st)
        return -1;
    redisReply *meta = bf_rstate_cmd(redis, "HGETALL %s", bf_rstate_key(redis, "meta"));
    if (!meta) {
        freeReplyObject(st);
        return -1;
    }
    char f[64];
    for (int t = 0; t < ntables; t++) {
        bf_table_progress_t *p = &out[t];
        memset(p, 0, sizeof *p);
        const char *v;
        snprintf(f, sizeof f, "tbl:%d:name", t);
        snprintf(p->name, sizeof p->name, "%s", (v = s_stats_field(meta, f)) ? v : "?");
        snprintf(f, sizeof f, "tbl:%d:ranges", t);
        p->ranges = (v = s_stats_field(meta, f)) ? atoll(v) : 0;
        snprintf(f, sizeof f, "tbl:%d:est", t);
        p->est = (v = s_stats_field(meta, f)) ? atoll(v) : 0;
        snprintf(f, sizeof f, "tbl:%d:width", t);
        p->width = (v = s_stats_field(meta, f)) ? atoll(v) : 0;
        snprintf(f, sizeof f, "tbl:%d:after", t);
        snprintf(p->after, sizeof p->after, "%s", (v = s_stats_field(meta, f)) ? v : "");
        snprintf(f, sizeof f, "rows:%d", t);
        p->rows = (v = s_stats_field(st, f)) ? atoll(v) : 0;
        snprintf(f, sizeof f, "bytes:%d", t);
        p->bytes = (v = s_stats_field(st, f)) ? atoll(v) : 0;
        snprintf(f, sizeof f, "done:%d", t);
        p->done = (v = s_stats_field(st, f)) ? atoll(v) : 0;
        snprintf(f, sizeof f, "failed:%d", t);
        p->failed = (v = s_stats_field(st, f)) ? atoll(v) : 0;
        snprintf(f, sizeof f, "rejects:%d", t);
        p->rejects = (v = s_stats_field(st, f)) ? atoll(v) : 0;
        snprintf(f, sizeof f, "parked:%d", t);
        p->parked = (v = s_stats_field(st, f)) ? atoll(v) : 0;
    }
    const char *v;
    if (retries)
        *retries = (v = s_stats_field(st, "retries")) ? atoll(v) : 0;
    if (batches)
        *batches = (v = s_stats_field(st, "batches")) ? atoll(v) : 0;
    freeReplyObject(meta);
    freeReplyObject(st);

    /* Leased ranges per table: the lease set is small (one per worker, and the
     * coordinator's pool). A lease past its expiry (the reaper has not run yet) is
     * stuck: its worker is silent. Pooled leases are not counted: no worker copies
     * them yet (they show as pending). */
    redisReply *now = bf_rstate_cmd(redis, "TIME");
    if (!now)
        return -1;
    long long now_ms = now->type == REDIS_REPLY_ARRAY && now->elements == 2
                           ? atoll(now->element[0]->str) * 1000 + atoll(now->element[1]->str) / 1000
                           : 0;
    freeReplyObject(now);
    redisReply *ls =
        bf_rstate_cmd(redis, "ZRANGE %s 0 -1 WITHSCORES", bf_rstate_key(redis, "leases"));
    if (!ls)
        return -1;
    /* Their tables: one pipelined round trip (a lease per worker: 1,000 workers
     * would be 1,000 round trips one by one). */
    int n = (int)(ls->elements / 2);
    int64_t *ids = bf_xcalloc((size_t)n + 1, sizeof *ids);
    int64_t *tbl = bf_xcalloc((size_t)n + 1, sizeof *tbl);
    bool *pooled = bf_xcalloc((size_t)n + 1, sizeof *pooled);
    for (int i = 0; i < n; i++)
        ids[i] = atoll(ls->element[2 * i]->str);
    int rc = bf_rstate_lease_info(redis, n, ids, tbl, pooled);
    for (int i = 0; i < n && rc == 0; i++) {
        if (tbl[i] < 0 || tbl[i] >= ntables || pooled[i])
            continue;
        out[tbl[i]].leased++;
        if (atoll(ls->element[2 * i + 1]->str) < now_ms)
            out[tbl[i]].stuck++;
    }
    free(ids);
    free(tbl);
    free(pooled);
    freeReplyObject(ls);
    return rc;
}

/* True (and logged) when a target holds fence rows of this job although Redis
 * has no plan: Redis was reset or flushed. Planning afresh would copy rows again. */
static bool s_has_fence_rows(bf_coord_t *self)
{
    const bf_job_t *job = self->ctx.job;
    for (int i = 0; i < job->ntargets; i++) {
        const char *params[] = {job->name};
        PGresult *res = bf_pg_query(self->ctx.tgt[i],
                                    "SELECT to_regclass('public.backfill_fence') IS NULL", 0, NULL);
        if (!res)
            return true;
        bool no_table = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        if (no_table)
            continue;
        res = bf_pg_query(self->ctx.tgt[i],
                          "SELECT count(*) FROM public.backfill_fence WHERE job = $1", 1, params);
        if (!res)
            return true;
        long long n = atoll(PQgetvalue(res, 0, 0));
        PQclear(res);
        if (n > 0) {
            log_error("job %s: redis has no plan for it, but target %s holds %lld fence rows "
                      "of an earlier run (was redis flushed?). Starting over would copy those "
                      "rows again; empty the target tables and run again with --replan",
                      job->name, job->targets[i].alias, n);
            return true;
        }
    }
    return false;
}

static unsigned s_redis_reconnects(bf_coord_t *self);

/* Redis's fencing counter raised past every token the targets hold, and its next
 * range id past every id of their fence rows: Redis may have lost writes (a
 * failover, a crash with appendfsync everysec), and must not issue either again.
 * At start on a resumed job, and after Redis's connection was made again (Redis
 * may have restarted). Returns BF_EXIT_OK or BF_EXIT_CONNECT (logged). With err
 * (mid-job: this runs in the loop that answers the workers) the targets' reads
 * take 2 s at most in all, a lock held on a fence table (a migration) must not
 * stall the loop, and a failure is not logged but said in err: the caller tries
 * again later. */
static int s_raise_floor(bf_coord_t *self, char *err, size_t errlen)
{
    const bf_job_t *job = self->ctx.job;
    bf_rstate_t *r = self->ctx.redis;
    unsigned reconnects = s_redis_reconnects(self);
    unsigned leaser_conn = self->leaser ? bf_leaser_reconnects(self->leaser) : 0;
    int64_t max_token = 0, next_id = 0;
    long long deadline = bf_now_ms() + 2000;
    for (int i = 0; i < job->ntargets; i++) {
        const char *alias = job->targets[i].alias;
        /* Mid-job the connection may have died idle: open it again. */
        if (!bf_pg_is_alive(self->ctx.tgt[i])) {
            bf_pg_destroy(&self->ctx.tgt[i]);
            self->ctx.tgt[i] = bf_pg_connect(job->targets[i].dsn, alias);
            if (!self->ctx.tgt[i]) {
                if (err)
                    snprintf(err, errlen, "target %s: cannot connect", alias);
                return BF_EXIT_CONNECT;
            }
        }
        bf_pg_t *t = self->ctx.tgt[i];
        const char *params[] = {job->name};
        PGresult *res = NULL;
        if (!err) {
            res = bf_pg_query(t, BF_FENCE_MAX, 1, params);
        } else {
            char set[64];
            long long left = deadline - bf_now_ms();
            snprintf(set, sizeof set, "SET statement_timeout = %lld", left > 1 ? left : 1);
            if (bf_pg_exec_quiet(t, set) == 0)
                res = bf_pg_query_quiet(t, BF_FENCE_MAX, 1, params);
            if (!res)
                snprintf(err, errlen, "target %s: %s", alias, t->errmsg);
            bf_pg_exec_quiet(t, "RESET statement_timeout");
        }
        if (!res)
            return BF_EXIT_CONNECT;
        int64_t id = atoll(PQgetvalue(res, 0, 0)), tok = atoll(PQgetvalue(res, 0, 1));
        PQclear(res);
        if (tok > max_token)
            max_token = tok;
        if (id > next_id)
            next_id = id;
    }
    redisReply *f = bf_rstate_cmd(r, "FCALL bf_floor 1 %s %lld %lld", bf_rstate_key(r, "meta"),
                                  (long long)max_token, (long long)next_id);
    if (!f || f->type != REDIS_REPLY_ARRAY || f->elements != 2 ||
        f->element[0]->type != REDIS_REPLY_INTEGER || f->element[1]->type != REDIS_REPLY_INTEGER) {
        if (err)
            snprintf(err, errlen, "%s", f ? "bf_floor: unexpected reply" : r->errmsg);
        else
            log_error("%s", f ? "bf_floor: unexpected reply" : r->errmsg);
        freeReplyObject(f);
        return BF_EXIT_CONNECT;
    }
    if (f->element[0]->integer > 0)
        log_warn("job %s: the targets hold fencing tokens up to %lld, more than redis has issued: "
                 "redis lost writes (a failover, or a crash with appendfsync everysec); tokens "
                 "continue past them",
                 job->name, (long long)max_token);
    if (f->element[1]->integer > 0)
        log_warn("job %s: the targets hold fence rows of ranges up to id %lld, which redis has not "
                 "issued: redis lost splits (a failover, or a crash with appendfsync everysec); "
                 "new splits get ids past them, and each lost one is made again when its range "
                 "is next leased",
                 job->name, (long long)next_id - 1);
    freeReplyObject(f);
    /* (the counters were raised on this connection: a reconnect since then, even
     * in the middle of this, means doing it again) */
    self->floored = reconnects;
    if (self->leaser)
        bf_leaser_floored(self->leaser, leaser_conn);
    return BF_EXIT_OK;
}

/* Times a connection to Redis was made again, the loop's and the leaser's (Redis
 * may have restarted without its last writes). */
static unsigned s_redis_reconnects(bf_coord_t *self)
{
    return self->ctx.redis->reconnects + (self->leaser ? bf_leaser_reconnects(self->leaser) : 0);
}

/* Every target's fence table as this version writes it; on a resumed job, Redis's
 * counters raised past the targets' (s_raise_floor). Returns BF_EXIT_OK or
 * BF_EXIT_CONNECT (logged). */
static int s_fence_prepare(bf_coord_t *self, bool resumed)
{
    const bf_job_t *job = self->ctx.job;
    for (int i = 0; i < job->ntargets; i++) {
        bf_pg_t *t = self->ctx.tgt[i];
        if (bf_pg_exec(t, BF_FENCE_DDL) != 0 || bf_pg_exec(t, BF_FENCE_MIGRATE) != 0 ||
            bf_pg_exec(t, BF_REJECTS_DDL) != 0 || bf_pg_exec(t, BF_REJECTS_MIGRATE) != 0)
            return BF_EXIT_CONNECT;
    }
    self->floored = s_redis_reconnects(self);
    return resumed ? s_raise_floor(self, NULL, 0) : BF_EXIT_OK;
}

/* A connection to Redis was made again since the counters were raised: Redis may
 * have restarted without its last writes. Raise them again (every 5 s while that
 * fails, saying so once a minute). */
static void s_floor_check(bf_coord_t *self)
{
    long long now = bf_now_ms();
    if (s_redis_reconnects(self) == self->floored || now < self->next_floor)
        return;
    log_debug("connected to redis again: raising its counters past the targets' fence rows");
    char err[1200] = "";
    int rc = s_raise_floor(self, err, sizeof err);
    /* (after a failure only, from its end: a timed-out try took a while; after a
     * success at once, as the lease thread waits for it once its own connection
     * was made again, which comes a little after the loop's) */
    self->next_floor = rc != BF_EXIT_OK ? bf_now_ms() + 5000 : 0;
    if (rc != BF_EXIT_OK && now >= self->next_floor_warn) {
        self->next_floor_warn = now + 60000;
        log_warn("job %s: cannot compare redis's counters with the targets' fence rows after "
                 "reconnecting to redis (%s); trying again every 5 s%s",
                 self->ctx.job->name, err,
                 self->leaser && bf_leaser_waits(self->leaser) ? " (no range is leased until then)"
                                                               : "");
    } else if (rc != BF_EXIT_OK) {
        log_debug("raising redis's counters: %s", err);
    }
}

static int s_throttle_value(bf_coord_t *self, double *value, char *err, size_t errlen);

/* True (logged) when another coordinator took the job's lock: this one must stop. */
static bool s_lock_lost(bf_coord_t *self)
{
    char holder[700];
    if (!bf_joblock_lost(self->lock, holder, sizeof holder))
        return false;
    log_error("another coordinator took job %s while this one could not renew its lock: %s. "
              "This one stops",
              self->ctx.job->name, holder);
    return true;
}

bf_coord_t *bf_coord_new(bf_jobctx_t *ctx, const bf_coord_opts_t *opts, int *exit_code)
{
    bf_fault_init();
    bf_coord_t *self = bf_xcalloc(1, sizeof *self);
    self->by_identity = zhashx_new();
    self->ctx = *ctx;
    memset(ctx, 0, sizeof *ctx);
    self->opts = *opts;
    if (!self->opts.heartbeat_ms)
        self->opts.heartbeat_ms = 2500;
    if (!self->opts.liveness)
        self->opts.liveness = 3;
    if (!self->opts.lease_ttl_ms)
        self->opts.lease_ttl_ms = 30000;
    bf_rstate_t *r = self->ctx.redis;

    /* Before planning (which may take long): a throttle_query that cannot run. */
    if (self->ctx.job->throttle_query) {
        double v = 0;
        char err[1100];
        if (s_throttle_value(self, &v, err, sizeof err) != 0) {
            log_error("%s:%d: throttle_query cannot be used: %s", self->ctx.job->path,
                      self->ctx.job->throttle_line, err);
            *exit_code = BF_EXIT_USAGE;
            goto fail;
        }
        log_info("throttle_query returns %g now; workers back off above %g", v,
                 self->ctx.job->throttle_max);
        self->backoff = -1;
    }
    /* Before anything that changes the job's state in Redis. */
    self->lock = bf_joblock_take(self->ctx.job->redis, self->ctx.job->name, self->opts.where,
                                 self->opts.stop, exit_code);
    if (!self->lock)
        goto fail;
    int planned = bf_rstate_is_planned(r);
    if (planned < 0) {
        log_error("%s", r->errmsg);
        *exit_code = BF_EXIT_CONNECT;
        goto fail;
    }
    if (planned) {
        /* The plan's ranges belong to its tables by position: a job file whose
         * tables changed would resume the wrong table's checkpoints. */
        bool mismatch = false;
        *exit_code = bf_jobctx_check_plan(&self->ctx, opts->replan, true, &mismatch);
        if (*exit_code != BF_EXIT_OK)
            goto fail;
        if (mismatch)
            planned = 0; /* --replan: planned afresh below */
    }
    *exit_code = s_fence_prepare(self, planned);
    if (*exit_code != BF_EXIT_OK)
        goto fail;
    if (!planned) {
        if (!opts->replan && s_has_fence_rows(self)) {
            *exit_code = BF_EXIT_USAGE;
            goto fail;
        }
        if (s_lock_lost(self)) { /* storing the plan replaces the job's state */
            *exit_code = BF_EXIT_USAGE;
            goto fail;
        }
        *exit_code = bf_jobctx_plan_and_store(&self->ctx);
        if (*exit_code != BF_EXIT_OK)
            goto fail;
    } else {
        log_info("resuming job %s from its checkpoints in redis", self->ctx.job->name);
        redisReply *rf = bf_rstate_cmd(r, "FCALL bf_retry_failed 1 %s", bf_rstate_key(r, "meta"));
        if (rf && rf->type == REDIS_REPLY_INTEGER && rf->integer > 0)
            log_info("%lld failed ranges are pending again", (long long)rf->integer);
        freeReplyObject(rf);
        /* Tables waiting for others (foreign keys) that are done by now, and the
         * next range of a table copied in key order when none is in work. */
        int64_t moved = bf_rstate_unblock(r);
        if (moved > 0)
            log_info("%lld waiting ranges are pending", (long long)moved);
        else if (moved < 0)
            log_warn("%s", r->errmsg);
    }
    if (bf_rstate_hget_int(r, "meta", "nranges", &self->nranges) != 0) {
        *exit_code = BF_EXIT_CONNECT;
        goto fail;
    }
    self->in_order = bf_xcalloc((size_t)self->ctx.job->ntables + 1, sizeof *self->in_order);
    for (int t = 0; t < self->ctx.job->ntables; t++) {
        char f[64];
        int64_t v = 0;
        snprintf(f, sizeof f, "tbl:%d:ordered", t);
        if (bf_rstate_hget_int(r, "meta", f, &v) != 0) {
            *exit_code = BF_EXIT_CONNECT;
            goto fail;
        }
        self->in_order[t] = v == 1;
    }
    /* A cancel ended the last run; this one resumes. Pause and throttle stay. */
    redisReply *ctl = bf_rstate_cmd(r, "HMGET %s paused rate", bf_rstate_key(r, "meta"));
    if (ctl && ctl->type == REDIS_REPLY_ARRAY && ctl->elements == 2) {
        if (ctl->element[0]->type == REDIS_REPLY_STRING && strcmp(ctl->element[0]->str, "1") == 0)
            log_warn("job %s is paused: no rows move until `backfill resume`", self->ctx.job->name);
        if (ctl->element[1]->type == REDIS_REPLY_STRING)
            log_info("job %s is throttled to %s rows/s (`backfill throttle` changes it)",
                     self->ctx.job->name, ctl->element[1]->str);
    }
    freeReplyObject(ctl);
    /* backoff is this coordinator's to set (throttle_query), within 2 s. */
    freeReplyObject(bf_rstate_cmd(r, "HDEL %s cancel backoff", bf_rstate_key(r, "meta")));
    /* The workers read the reject allowance from here (it may change on a restart). */
    redisReply *mr = bf_rstate_cmd(r, "HSET %s max_rejects %lld", bf_rstate_key(r, "meta"),
                                   (long long)self->opts.max_rejects);
    if (!mr) {
        log_error("%s", r->errmsg);
        *exit_code = BF_EXIT_CONNECT;
        goto fail;
    }
    freeReplyObject(mr);
    /* Planning may have taken long. */
    if (s_lock_lost(self)) {
        *exit_code = BF_EXIT_USAGE;
        goto fail;
    }
    /* A new epoch: messages queued for an earlier coordinator are dropped. Tokens
     * jump so that none is ever reissued, even if Redis lost its last writes. */
    redisReply *e = bf_rstate_cmd(r, "HINCRBY %s epoch 1", bf_rstate_key(r, "meta"));
    redisReply *f = e ? bf_rstate_cmd(r, "INCRBY %s 1000000", bf_rstate_key(r, "fence")) : NULL;
    if (!e || !f) {
        log_error("%s", r->errmsg);
        freeReplyObject(e);
        *exit_code = BF_EXIT_CONNECT;
        goto fail;
    }
    self->epoch = (uint64_t)e->integer;
    freeReplyObject(e);
    freeReplyObject(f);
    return self;
fail:
    bf_coord_destroy(&self);
    return NULL;
}

void bf_coord_destroy(bf_coord_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bf_coord_t *self = *self_p;
    bf_leaser_stop(&self->leaser);
    for (int i = 0; i < self->nworkers; i++)
        zframe_destroy(&self->workers[i].identity);
    free(self->workers);
    free(self->in_order);
    zhashx_destroy(&self->by_identity);
    bf_metrics_stop(&self->metrics);
    zsock_destroy(&self->router);
    bf_curve_server_destroy(&self->curve);
    bf_jobctx_close(&self->ctx);
    bf_joblock_release(&self->lock); /* last: the pool is back, the workers told */
    free(self);
    *self_p = NULL;
}

bool bf_coord_complete(bf_coord_t *self)
{
    return bf_rstate_is_complete(self->ctx.redis) == 1;
}

/* The job's counts after writing parked rows again: written[t] rows of table t
 * went in (copied rows now, whatever happened next: their entries are gone); with
 * known, left[t] are still parked (NULL: none, set aside). 0 or -1 (logged). */
static int s_parked_counts(bf_coord_t *self, const int64_t *written, bool known,
                           const int64_t *left)
{
    bf_rstate_t *r = self->ctx.redis;
    int n = self->ctx.job->ntables;
    char stats[512];
    snprintf(stats, sizeof stats, "%s", bf_rstate_key(r, "stats"));
    int64_t total = 0;
    bool ok = true;
    for (int t = 0; t < n && ok; t++) {
        redisReply *x = NULL;
        if (written[t] > 0) {
            x = bf_rstate_cmd(r, "HINCRBY %s rows:%d %lld", stats, t, (long long)written[t]);
            ok = x != NULL;
            freeReplyObject(x);
        }
        if (ok && known) {
            total += left ? left[t] : 0;
            x = bf_rstate_cmd(r, "HSET %s parked:%d %lld", stats, t,
                              (long long)(left ? left[t] : 0));
            ok = x != NULL;
            freeReplyObject(x);
        }
    }
    if (ok && known) {
        redisReply *x = bf_rstate_cmd(r, "HSET %s parked_total %lld", stats, (long long)total);
        ok = x != NULL;
        freeReplyObject(x);
    }
    if (!ok)
        log_error("counting the parked rows written again: %s", r->errmsg);
    return ok ? 0 : -1;
}

/* The parked rows once every range is done: BF_EXIT_OK, BF_EXIT_DATA (too many
 * still refused; logged) or BF_EXIT_CONNECT (logged). */
static int s_parked(bf_coord_t *self)
{
    const bf_job_t *job = self->ctx.job;
    int64_t *left = bf_xcalloc((size_t)job->ntables + 1, sizeof *left);
    int64_t *written = bf_xcalloc((size_t)job->ntables + 1, sizeof *written);
    char first[2600];
    int64_t n =
        bf_parked_retry(job, self->ctx.tables, self->ctx.tgt, left, written, first, sizeof first);
    int rc = n < 0 ? BF_EXIT_CONNECT : BF_EXIT_OK;
    /* What is still parked, once known: left, or none (all in, or set aside). */
    bool known = false;
    const int64_t *still = NULL;
    int64_t max = 0, total = 0;
    bf_rstate_t *r = self->ctx.redis;
    if (n > 0 && (bf_rstate_hget_int(r, "meta", "max_rejects", &max) != 0 ||
                  bf_rstate_hget_int(r, "stats", "rejects_total", &total) != 0)) {
        log_error("%s", r->errmsg);
        rc = BF_EXIT_CONNECT;
    } else if (n > 0 && total + n > max) {
        log_error("%lld parked rows (rows that referred to rows their targets did not have) are "
                  "still refused (first: %s); they stay parked in public.backfill_rejects on "
                  "the targets, and running the job again writes them again: bring the rows "
                  "they refer to onto the targets (copy their tables in this job too), or let "
                  "the job set such rows aside with --max-rejects N (%lld rows were set aside "
                  "already)",
                  (long long)n, first, (long long)total);
        snprintf(self->fail_msg, sizeof self->fail_msg,
                 "%lld parked rows are still refused (first: %s)", (long long)n, first);
        rc = BF_EXIT_DATA;
        known = true;
        still = left;
    } else if (n == 0) {
        known = true;
    } else if (n > 0) {
        /* Allowed: set aside for good, and counted as refused rows. */
        rc = bf_parked_accept(job, self->ctx.tgt) == 0 ? BF_EXIT_OK : BF_EXIT_CONNECT;
        /* (Each table's count, then the total, as bf_checkpoint counts rejects.) */
        for (int t = 0; t <= job->ntables && rc == BF_EXIT_OK; t++) {
            if (t < job->ntables && !left[t])
                continue;
            redisReply *x = t < job->ntables
                                ? bf_rstate_cmd(r, "HINCRBY %s rejects:%d %lld",
                                                bf_rstate_key(r, "stats"), t, (long long)left[t])
                                : bf_rstate_cmd(r, "HINCRBY %s rejects_total %lld",
                                                bf_rstate_key(r, "stats"), (long long)n);
            rc = x ? BF_EXIT_OK : BF_EXIT_CONNECT;
            freeReplyObject(x);
        }
        if (rc == BF_EXIT_OK)
            log_warn("%lld parked rows are still refused (first: %s): set aside in "
                     "public.backfill_rejects, as --max-rejects allows",
                     (long long)n, first);
        else
            log_error("setting the parked rows aside: %s", r->errmsg);
        known = rc == BF_EXIT_OK;
    }
    if (s_parked_counts(self, written, known, still) != 0)
        rc = BF_EXIT_CONNECT;
    free(written);
    free(left);
    return rc;
}

int bf_coord_finish(bf_coord_t *self)
{
    bf_fault_point("before-finish");
    const bf_job_t *job = self->ctx.job;
    int parked = BF_EXIT_CONNECT;
    bool seqs = false;
    for (int attempt = 0; attempt < 2 && (parked == BF_EXIT_CONNECT || !seqs); attempt++) {
        if (attempt > 0) /* idle for the whole job, a connection may be gone */
            for (int i = 0; i < job->ntargets; i++) {
                char what[96];
                snprintf(what, sizeof what, "target %s", job->targets[i].alias);
                bf_pg_destroy(&self->ctx.tgt[i]);
                self->ctx.tgt[i] = bf_pg_connect(job->targets[i].dsn, what);
            }
        if (parked == BF_EXIT_CONNECT)
            parked = s_parked(self);
        if (!seqs)
            seqs = bf_sequences_advance(job, self->ctx.tables, self->ctx.tgt) >= 0;
    }
    if (parked == BF_EXIT_CONNECT)
        log_error("every range is done, but the parked rows (rows that referred to rows their "
                  "targets did not have yet) could not be written again (see the error above); "
                  "run the job again to do it: a finished job only does that");
    if (!seqs)
        log_warn("every row is copied, but the targets' sequences could not be advanced past the "
                 "copied ids (see the error above); run the job again to do it: a finished job "
                 "only does that");
    return parked;
}

int bf_coord_bind(bf_coord_t *self, const char *endpoint)
{
    self->router = zsock_new(ZMQ_ROUTER);
    zsock_set_router_mandatory(self->router, 1);
    zsock_set_maxmsgsize(self->router, BF_PROTO_MAX_FRAME);
    zsock_set_linger(self->router, 1000);
    zsock_set_sndhwm(self->router, 10000);
    zsock_set_rcvhwm(self->router, 10000);
    if (self->opts.curve_cert) {
        char err[1200];
        self->curve = bf_curve_server_new(self->router, self->opts.curve_cert,
                                          self->opts.curve_allow, err, sizeof err);
        if (!self->curve) {
            log_error("%s", err);
            return -1;
        }
    }
    if (zsock_bind(self->router, "%s", endpoint) < 0) {
        log_error("cannot bind %s: %s", endpoint, zmq_strerror(zmq_errno()));
        return -1;
    }
    /* Leases a coordinator that died had taken ahead and not handed out. Only
     * once bound: one that cannot bind (the port is taken, perhaps by a running
     * coordinator of this job) must not take that one's pool away. */
    int64_t unpooled = bf_rstate_unpool(self->ctx.redis, BF_POOL_OWNER_PREFIX, 0, NULL, NULL);
    if (unpooled > 0)
        log_info("%lld ranges an earlier coordinator had leased ahead are pending again",
                 (long long)unpooled);
    log_info("coordinator listening on %s (epoch %" PRIu64 ", %lld ranges)", endpoint, self->epoch,
             (long long)self->nranges);
    if (self->opts.metrics) {
        char err[400];
        self->metrics = bf_metrics_start(self->opts.metrics, self->ctx.job, err, sizeof err);
        if (!self->metrics) {
            log_error("%s", err);
            return -1;
        }
    }
    return 0;
}

/* The identity as a hash key (hex; ROUTER identities are at most 255 bytes). */
static const char *s_idkey(zframe_t *identity, char key[512])
{
    static const char hex[] = "0123456789abcdef";
    const byte *d = zframe_data(identity);
    size_t n = zframe_size(identity);
    if (n > 255)
        n = 255;
    for (size_t i = 0; i < n; i++) {
        key[2 * i] = hex[d[i] >> 4];
        key[2 * i + 1] = hex[d[i] & 15];
    }
    key[2 * n] = '\0';
    return key;
}

static worker_t *s_find(bf_coord_t *self, zframe_t *identity)
{
    char key[512];
    intptr_t at = (intptr_t)zhashx_lookup(self->by_identity, s_idkey(identity, key));
    return at > 0 && at <= self->nworkers ? &self->workers[at - 1] : NULL;
}

static void s_send(bf_coord_t *self, worker_t *w, bf_msg_t *m)
{
    m->sid = w->sid;
    m->ep = self->epoch;
    w->last_sent = bf_now_ms();
    if (bf_net_send(self->router, w->identity, m) != 0)
        log_debug("cannot send %s to %s", bf_msg_type_name(m->type), w->id);
}

/* The connection throttle_query runs on: the source or one target (reopened when
 * lost). */
static bf_pg_t *s_throttle_conn(bf_coord_t *self)
{
    const bf_job_t *job = self->ctx.job;
    bf_pg_t **conn = &self->ctx.src;
    const char *dsn = job->source, *what = "source";
    if (job->throttle_on && strcmp(job->throttle_on, "source") != 0) {
        const bf_target_t *t = bf_job_target(job, job->throttle_on);
        int i = (int)(t - job->targets);
        conn = &self->ctx.tgt[i];
        dsn = t->dsn;
        what = t->alias;
    }
    if (!bf_pg_is_alive(*conn)) {
        bf_pg_destroy(conn);
        *conn = bf_pg_connect(dsn, what);
    }
    return *conn;
}

/* Runs throttle_query: 0 with *value (NULL counts as 0), or -1 with err set. */
static int s_throttle_value(bf_coord_t *self, double *value, char *err, size_t errlen)
{
    bf_pg_t *conn = s_throttle_conn(self);
    if (!conn) {
        snprintf(err, errlen, "cannot connect to run throttle_query");
        return -1;
    }
    /* Bounded: the coordinator's loop waits for it (heartbeats, leases). The setting
     * is undone at once: the connection also plans and checks fences. */
    if (bf_pg_exec_quiet(conn, "SET statement_timeout = 2000") != 0) {
        snprintf(err, errlen, "%s", conn->errmsg);
        return -1;
    }
    PGresult *res = bf_pg_query_quiet(conn, self->ctx.job->throttle_query, 0, NULL);
    if (!res)
        snprintf(err, errlen, "%s", conn->errmsg);
    bf_pg_exec_quiet(conn, "RESET statement_timeout");
    if (!res)
        return -1;
    int rc = 0;
    if (PQntuples(res) != 1 || PQnfields(res) != 1) {
        snprintf(err, errlen,
                 "throttle_query returned %d rows of %d columns; it must return one "
                 "number",
                 PQntuples(res), PQnfields(res));
        rc = -1;
    } else if (PQgetisnull(res, 0, 0)) {
        *value = 0;
    } else {
        char *end = NULL;
        *value = strtod(PQgetvalue(res, 0, 0), &end);
        if (end == PQgetvalue(res, 0, 0) || *end) {
            snprintf(err, errlen, "throttle_query returned '%.40s', not a number",
                     PQgetvalue(res, 0, 0));
            rc = -1;
        }
    }
    PQclear(res);
    return rc;
}

/* Every 2 s: throttle_query above throttle_max makes the workers back off (meta
 * field `backoff`, read by bf_admit before each batch) until it is not. */
static void s_throttle_check(bf_coord_t *self)
{
    const bf_job_t *job = self->ctx.job;
    long long now = bf_now_ms();
    if (!job->throttle_query || now < self->next_throttle_check)
        return;
    self->next_throttle_check = now + 2000;
    double v = 0;
    char err[1100];
    if (s_throttle_value(self, &v, err, sizeof err) != 0) {
        if (now >= self->next_throttle_warn) {
            log_warn("throttle_query (%s:%d): %s; the workers keep their current pace", job->path,
                     job->throttle_line, err);
            self->next_throttle_warn = now + 30000;
        }
        return;
    }
    int backoff = v > job->throttle_max;
    bf_rstate_t *r = self->ctx.redis;
    redisReply *rep = backoff ? bf_rstate_cmd(r, "HSET %s backoff %g", bf_rstate_key(r, "meta"), v)
                              : bf_rstate_cmd(r, "HDEL %s backoff", bf_rstate_key(r, "meta"));
    if (!rep)
        return; /* Redis down: retried in 2 s */
    freeReplyObject(rep);
    if (backoff != self->backoff) {
        if (backoff)
            log_warn("throttle_query returned %g, above throttle_max %g: workers back off", v,
                     job->throttle_max);
        else if (self->backoff == 1)
            log_info("throttle_query returned %g, not above throttle_max %g: workers go on", v,
                     job->throttle_max);
        self->backoff = backoff;
    }
}

/* Hands a worker's leases back (it is gone) and forgets it. */
static void s_remove_worker(bf_coord_t *self, worker_t *w, const char *why)
{
    for (int i = 0; i < w->nleases; i++) {
        /* Not counted as an attempt: a slow batch can look like a dead worker. */
        int rc = bf_rstate_release(self->ctx.redis, w->lease_ids[i], w->lease_tokens[i], why, false,
                                   MAX_ATTEMPTS);
        log_info("range %lld of worker %s back to pending (%s)", (long long)w->lease_ids[i], w->id,
                 rc == 1 ? "attempts exhausted: failed" : why);
    }
    char key[512];
    zhashx_delete(self->by_identity, s_idkey(w->identity, key));
    zframe_destroy(&w->identity);
    *w = self->workers[--self->nworkers];
    bf_metrics_set_workers(self->metrics, self->nworkers);
    if (w != &self->workers[self->nworkers]) /* the last one moved here */
        zhashx_update(self->by_identity, s_idkey(w->identity, key),
                      (void *)(intptr_t)(w - self->workers + 1));
}

static void s_forget_lease(worker_t *w, int64_t id)
{
    for (int i = 0; i < w->nleases; i++)
        if (w->lease_ids[i] == id) {
            w->lease_ids[i] = w->lease_ids[w->nleases - 1];
            w->lease_tokens[i] = w->lease_tokens[w->nleases - 1];
            w->lease_since[i] = w->lease_since[w->nleases - 1];
            w->split_asked[i] = w->split_asked[w->nleases - 1];
            w->lease_whole[i] = w->lease_whole[w->nleases - 1];
            w->nleases--;
            return;
        }
}

/* Workers are idle and nothing is pending: ask the owners of the leases (oldest
 * first, up to SPLIT_MAX_ASKS) to split their ranges, sharing the idle workers
 * among them (SHRINK's credit: an owner with 3 idle workers to feed splits its
 * rest into 4 parts at once; with more owners than idle workers each makes 2).
 * An owner ends its batch in flight early, splits past its cursor (or declines:
 * too little left), and the new ranges are leased out like any other. */
static void s_ask_splits(bf_coord_t *self, int idle)
{
    long long now = bf_now_ms();
    if (now < self->next_split)
        return;
    if (s_redis_reconnects(self) != self->floored) {
        /* Redis may have lost writes (a split among them) since a connection to it
         * was made again: a split now could give its part the id of a lost split's
         * part that has fence rows, before the counters are raised past them. */
        self->next_split = now + 100;
        return;
    }
    worker_t *ask_w[SPLIT_MAX_ASKS];
    int ask_k[SPLIT_MAX_ASKS], nask = 0;
    long long soonest = 0; /* when the next lease may be asked, if none can now */
    /* Every lease old enough, not only one per idle worker: which has the most
     * left is the owner's to know, one that has too little declines, and the
     * parts beyond the idle workers' wait pending for the next to finish. */
    while (nask < SPLIT_MAX_ASKS) {
        worker_t *best = NULL;
        int best_i = 0;
        for (int i = 0; i < self->nworkers; i++) {
            worker_t *w = &self->workers[i];
            for (int k = 0; k < w->nleases; k++) {
                if (w->lease_whole[k])
                    continue; /* a split part would refer to the rows before it */
                long long from = w->lease_since[k] + SPLIT_MIN_AGE_MS;
                if (w->split_asked[k] && w->split_asked[k] + SPLIT_EVERY_MS > from)
                    from = w->split_asked[k] + SPLIT_EVERY_MS;
                if (from > now) {
                    if (!soonest || from < soonest)
                        soonest = from;
                    continue;
                }
                if (!best || w->lease_since[k] < best->lease_since[best_i]) {
                    best = w;
                    best_i = k;
                }
            }
        }
        if (!best)
            break;
        best->split_asked[best_i] = now; /* also keeps it out of the next turns */
        ask_w[nask] = best;
        ask_k[nask++] = best_i;
    }
    /* The loop wakes for the next round (bf_coord_serve's wait). */
    self->next_split = nask > 0 || !soonest ? now + 100 : soonest;
    for (int a = 0; a < nask; a++) {
        bf_msg_t m = {.type = BF_MSG_SHRINK,
                      .range_id = ask_w[a]->lease_ids[ask_k[a]],
                      .token = ask_w[a]->lease_tokens[ask_k[a]],
                      .credit = nask >= idle ? 1 : idle / nask + (a < idle % nask)};
        s_send(self, ask_w[a], &m);
        log_debug("asked %s to split range %lld for %lld of %d idle workers", ask_w[a]->id,
                  (long long)m.range_id, (long long)m.credit, idle);
    }
}

/* Leases taken from the pool per round at most. */
#define LEASE_BATCH 256

static int s_wants(const worker_t *w)
{
    int want = (int)(w->credit < MAX_WORKER_LEASES ? w->credit : MAX_WORKER_LEASES);
    if (want > MAX_WORKER_LEASES - w->nleases)
        want = MAX_WORKER_LEASES - w->nleases;
    return want > 0 ? want : 0;
}

/* Hands leases from the leaser's pool to workers with credit (no Redis round
 * trip here: the leaser fills the pool and names the owners). */
static void s_dispatch(bf_coord_t *self)
{
    int nw = self->nworkers;
    int total = 0;
    for (int i = 0; i < nw && !self->failed; i++)
        total += s_wants(&self->workers[i]);
    bf_range_t got[LEASE_BATCH];
    bool exhausted = false;
    /* Rounds start where the last one stopped, so that every worker waits about
     * as long as the others. */
    for (;;) {
        int n = bf_leaser_take(self->leaser, total, LEASE_BATCH, got, &exhausted);
        if (n == 0)
            break;
        total -= n;
        if (self->rr >= nw)
            self->rr = 0;
        int k = 0, last = self->rr;
        for (int j = 0; j < nw && k < n; j++) {
            int i = (self->rr + j) % nw;
            worker_t *w = &self->workers[i];
            for (int want = s_wants(w); want > 0 && k < n; want--) {
                bf_range_t *r = &got[k++];
                bf_msg_t m = {.type = BF_MSG_LEASE,
                              .range_id = r->id,
                              .token = r->token,
                              .table = r->table,
                              .seq = r->seq,
                              .lo = r->lo,
                              .hi = r->hi,
                              .cursor = r->cursor,
                              .has_lo = true,
                              .has_hi = true,
                              .has_cursor = true};
                s_send(self, w, &m);
                bf_leaser_assign(self->leaser, r->id, w->id);
                w->lease_ids[w->nleases] = r->id;
                w->lease_tokens[w->nleases] = r->token;
                w->lease_since[w->nleases] = bf_now_ms();
                w->lease_whole[w->nleases] =
                    r->table >= 0 && r->table < self->ctx.job->ntables && self->in_order[r->table];
                w->split_asked[w->nleases++] = 0;
                w->credit--;
                w->nowork_sent = false;
                log_debug("leased range %lld to %s (token %lld)", (long long)r->id, w->id,
                          (long long)r->token);
                bf_range_clear(r);
            }
            last = i;
        }
        self->rr = (last + 1) % nw;
        if (n < LEASE_BATCH)
            break;
    }
    self->drained = exhausted;
    self->splitting = false;
    if (total == 0 || !exhausted)
        return;
    /* Nothing pending for anyone: say so once to those left waiting, and find
     * them work by splitting the ranges of others. */
    int idle = 0;
    for (int i = 0; i < nw; i++) {
        worker_t *w = &self->workers[i];
        if (s_wants(w) == 0)
            continue;
        idle += w->nleases == 0;
        if (!w->nowork_sent) {
            bf_msg_t m = {.type = BF_MSG_NOWORK, .retry_after_ms = 1000};
            s_send(self, w, &m);
            w->nowork_sent = true;
        }
    }
    self->splitting = idle > 0;
    if (idle > 0)
        s_ask_splits(self, idle);
}

/* What the leaser found: leases a renewal showed lost (REVOKE them), expired
 * leases it reaped, and Redis errors (said every 5 s at most). */
static void s_leaser_news(bf_coord_t *self)
{
    uint64_t sids[64];
    int64_t ids[64], tokens[64];
    int n;
    while ((n = bf_leaser_lost(self->leaser, 64, sids, ids, tokens)) > 0)
        for (int k = 0; k < n; k++)
            for (int i = 0; i < self->nworkers; i++) {
                worker_t *w = &self->workers[i];
                if (w->sid != sids[k])
                    continue;
                for (int l = 0; l < w->nleases; l++)
                    if (w->lease_ids[l] == ids[k] && w->lease_tokens[l] == tokens[k]) {
                        bf_msg_t rv = {.type = BF_MSG_REVOKE, .range_id = ids[k]};
                        s_send(self, w, &rv);
                        s_forget_lease(w, ids[k]);
                        break;
                    }
                break;
            }
    int reaped = bf_leaser_reaped(self->leaser);
    if (reaped > 0)
        log_warn("%d expired leases back to pending", reaped);
    char err[512];
    if (bf_leaser_error(self->leaser, err, sizeof err)) {
        long long now = bf_now_ms();
        if (now >= self->next_redis_warn) {
            log_warn("redis: %s (retrying)", err);
            self->next_redis_warn = now + 5000;
        }
    }
}

/* Refuses the HELLO of a worker of another release (one with other Redis functions
 * would run them against this job's state): an ERR VERSION it reports and exits on
 * (a release from before the check says HELLO again every second; the warning
 * here is said at most every 10 s, the others at debug). */
static bool s_same_release(bf_coord_t *self, zframe_t *identity, const bf_msg_t *m)
{
    char peer[400], why[1024];
    snprintf(peer, sizeof peer, "worker %s on %s", m->worker_id, m->host ? m->host : "?");
    if (bf_rstate_same_release(peer, "this coordinator", m->version, m->fv, why, sizeof why))
        return true;
    bf_msg_t err = {.type = BF_MSG_ERR, .code = (char *)"VERSION", .message = why};
    err.ep = self->epoch;
    bf_net_send(self->router, identity, &err);
    long long now = bf_now_ms();
    if (now >= self->next_rel_warn) {
        log_warn("refused %s", why);
        self->next_rel_warn = now + 10000;
    } else {
        log_debug("refused %s", why);
    }
    return false;
}

static void s_on_message(bf_coord_t *self, zframe_t *identity, bf_msg_t *m)
{
    worker_t *w = s_find(self, identity);
    if (m->type == BF_MSG_HELLO) {
        if (w)
            s_remove_worker(self, w, "worker said HELLO again");
        if (!s_same_release(self, identity, m))
            return;
        if (self->nworkers == self->capworkers) {
            self->capworkers = self->capworkers ? 2 * self->capworkers : 16;
            self->workers = bf_xrealloc(self->workers, (size_t)self->capworkers * sizeof *w);
        }
        w = &self->workers[self->nworkers++];
        memset(w, 0, sizeof *w);
        w->identity = zframe_dup(identity);
        char key[512];
        zhashx_update(self->by_identity, s_idkey(identity, key), (void *)(intptr_t)self->nworkers);
        snprintf(w->id, sizeof w->id, "%s", m->worker_id);
        w->sid = ((uint64_t)random() << 32) ^ (uint64_t)random() ^ 1;
        w->credit = m->credit;
        w->last_seen = bf_now_ms();
        bf_msg_t welcome = {.type = BF_MSG_WELCOME,
                            .heartbeat_ms = self->opts.heartbeat_ms,
                            .liveness = self->opts.liveness,
                            .lease_ttl_ms = self->opts.lease_ttl_ms,
                            .job = self->ctx.job->text,
                            .env_names = self->ctx.job->env_names,
                            .env_values = self->ctx.job->env_values,
                            .nenv = self->ctx.job->nenv,
                            .version = (char *)BF_VERSION,
                            .fv = bf_rstate_functions_version()};
        s_send(self, w, &welcome);
        log_info("worker %s joined (%d connected)", w->id, self->nworkers);
        bf_metrics_set_workers(self->metrics, self->nworkers);
        return;
    }
    if (!w || m->sid != w->sid || m->ep != self->epoch) {
        /* From before a restart or an unknown peer: make it say HELLO again. */
        bf_msg_t err = {
            .type = BF_MSG_ERR,
            .code = (char *)((m->ep && m->ep != self->epoch) ? "STALE_EPOCH" : "UNKNOWN_SESSION"),
            .message = (char *)"say HELLO"};
        err.sid = m->sid;
        err.ep = self->epoch;
        bf_net_send(self->router, identity, &err);
        return;
    }
    w->last_seen = bf_now_ms();
    switch (m->type) {
    case BF_MSG_CREDIT:
        w->credit = m->credit;
        break;
    case BF_MSG_HEARTBEAT:
        /* Renewed by the leaser; leases it finds lost are revoked when it says. */
        bf_leaser_renew(self->leaser, w->sid, w->nleases, w->lease_ids, w->lease_tokens);
        break;
    case BF_MSG_DONE:
        /* Read the count when these DONEs may have finished the job (a read per
         * DONE would be one more Redis round trip per lease hand-out): by the
         * count, or once nothing is pending (the tail: any DONE may be the last,
         * and a DONE that crossed a count read is not in either). */
        if (self->done_seen + ++self->dones_since >= self->nranges || self->drained)
            self->recount = true;
        s_forget_lease(w, m->range_id);
        if (m->credit > 0) /* a CREDIT along with it */
            w->credit = m->credit;
        log_debug("range %lld done by %s (%lld rows)", (long long)m->range_id, w->id,
                  (long long)m->rows);
        break;
    case BF_MSG_FAIL:
        self->recount = true;
        s_forget_lease(w, m->range_id);
        if (!m->retryable && strcmp(m->code, "FENCED") != 0) {
            self->failed = true;
            snprintf(self->fail_msg, sizeof self->fail_msg, "%s",
                     m->message ? m->message : m->code);
        }
        break;
    case BF_MSG_PROGRESS:
        break;
    default:
        log_debug("ignored %s from %s", bf_msg_type_name(m->type), w->id);
    }
}

static void s_erase_progress(void *arg)
{
    bf_progress_erase(arg);
}

/* final: at the start (reads the rows copied before this run) or the end of serving
 * (the last frame of a live display stays on screen). */
static void s_progress(bf_coord_t *self, bool final)
{
    int n = self->ctx.job->ntables;
    bf_table_progress_t *p = bf_xcalloc((size_t)n, sizeof *p);
    if (bf_progress_read(self->ctx.redis, n, p, NULL, NULL) != 0) {
        free(p);
        return;
    }
    if (self->opts.progress_tty && self->started_ms) {
        double secs = (double)(bf_now_ms() - self->started_ms) / 1000.0;
        bf_progress_info_t info = {.elapsed_s = secs};
        bf_progress_estimate(&info, &self->rate, &self->brate, p, n, bf_now_ms(), 5000,
                             (double)self->ctx.job->batch_ms / 2000.0);
        bf_progress_control(self->ctx.redis, &info);
        bf_progress_draw(&self->view, self->ctx.job->name, p, n, &info);
    } else {
        int64_t rows = 0, est = 0, done = 0, ranges = 0;
        for (int t = 0; t < n; t++) {
            rows += p[t].rows;
            est += p[t].est;
            done += p[t].done;
            ranges += p[t].ranges;
        }
        self->rows_now = rows;
        /* Rate and ETA as the live display and `status --watch` have them (the
         * last seconds, bytes left at the byte rate), not averaged over the run. */
        double secs = self->started_ms ? (double)(bf_now_ms() - self->started_ms) / 1000.0 : 0;
        bf_progress_info_t info = {.elapsed_s = secs};
        bf_progress_estimate(&info, &self->rate, &self->brate, p, n, bf_now_ms(), 5000,
                             (double)self->ctx.job->batch_ms / 2000.0);
        if (info.rate <= 0 && secs > 0 && rows > self->rows_at_start) {
            /* One sample since rows moved (lines are seconds apart): the run so far. */
            info.rate = (double)(rows - self->rows_at_start) / secs;
            info.eta_s = est > rows ? (double)(est - rows) / info.rate : 0;
        }
        char eta[32] = "?";
        if (info.eta_s >= 0)
            snprintf(eta, sizeof eta, "%.0fs", info.eta_s);
        if (!final)
            log_info("progress: %lld/%lld rows (%.0f%%), %lld/%lld ranges, %d workers, %.0f "
                     "rows/s, ETA %s",
                     (long long)rows, (long long)est,
                     est ? 100.0 * (double)rows / (double)est : 100.0, (long long)done,
                     (long long)ranges, self->nworkers, info.rate, eta);
    }
    free(p);
}

static void s_tick(bf_coord_t *self)
{
    long long now = bf_now_ms();
    long long dead_after = (long long)self->opts.heartbeat_ms * self->opts.liveness;
    for (int i = 0; i < self->nworkers;) {
        worker_t *w = &self->workers[i];
        if (now - w->last_seen > dead_after) {
            log_warn("worker %s silent for %lld ms: considered dead", w->id, now - w->last_seen);
            s_remove_worker(self, w, "worker died");
            continue;
        }
        if (now - w->last_sent >= self->opts.heartbeat_ms / 2) {
            bf_msg_t hb = {.type = BF_MSG_HEARTBEAT};
            s_send(self, w, &hb);
        }
        i++;
    }
    for (int i = 0; i < self->nworkers; i++)
        self->workers[i].nowork_sent = false;
}

/* After a stop: the first rows the targets refused and that were set aside, so
 * that the person fixing the job sees them with the error. */
static void s_show_rejects(bf_coord_t *self)
{
    const bf_job_t *job = self->ctx.job;
    for (int i = 0; i < job->ntargets; i++) {
        bf_pg_t *tgt = self->ctx.tgt ? self->ctx.tgt[i] : NULL;
        if (!bf_pg_is_alive(tgt))
            continue;
        const char *params[] = {job->name};
        PGresult *res = bf_pg_query_quiet(
            tgt,
            "SELECT tbl, key, error, count(*) OVER () FROM public.backfill_rejects WHERE job = $1 "
            "ORDER BY at, tbl, key LIMIT 5",
            1, params);
        for (int r = 0; res && r < PQntuples(res); r++)
            log_error("refused earlier (%s of %s in public.backfill_rejects on %s): %s key %s: %s",
                      r == 0 ? "first" : "next", PQgetvalue(res, 0, 3), job->targets[i].alias,
                      PQgetvalue(res, r, 0), PQgetvalue(res, r, 1), PQgetvalue(res, r, 2));
        PQclear(res);
    }
}

void bf_coord_linger_done(bf_coord_t *self, int ms, volatile sig_atomic_t *stop)
{
    long long until = bf_now_ms() + ms;
    while (bf_now_ms() < until && !(stop && *stop)) {
        if (!bf_net_wait(self->router, 100))
            continue;
        zframe_t *identity = NULL;
        bf_msg_t m;
        int r = bf_net_recv(self->router, &identity, &m);
        if (r == 0 && m.type != BF_MSG_DONE && m.type != BF_MSG_FAIL) {
            bf_msg_t d = {.type = BF_MSG_DRAIN, .done = true, .deadline_ms = 10000};
            d.sid = m.sid;
            d.ep = self->epoch;
            bf_net_send(self->router, identity, &d);
        }
        bf_msg_clear(&m);
        zframe_destroy(&identity);
    }
}

int bf_coord_serve(bf_coord_t *self, volatile sig_atomic_t *stop, void (*tick)(void *),
                   void *tick_arg)
{
    /* The leaser's own connection: its calls never wait behind the loop's. */
    bf_rstate_t *lr = bf_rstate_connect(self->ctx.job->redis, self->ctx.job->name);
    if (!lr)
        return BF_EXIT_CONNECT;
    char owner[64];
    snprintf(owner, sizeof owner, BF_POOL_OWNER_PREFIX "%" PRIu64, self->epoch);
    self->leaser = bf_leaser_start(lr, owner, self->opts.lease_ttl_ms, self->opts.heartbeat_ms);
    if (!self->leaser) {
        log_error("cannot start the leaser thread");
        bf_rstate_destroy(&lr);
        return BF_EXIT_CONNECT;
    }
    s_progress(self, true);
    self->started_ms = bf_now_ms();
    self->rows_at_start = self->rows_now;
    int progress_ms = self->opts.progress_tty ? 250 : self->opts.progress_ms;
    self->next_progress = self->started_ms + progress_ms;
    if (self->opts.progress_tty) {
        self->view = (bf_progress_view_t){.out = stderr, .tty = true};
        bf_log_set_hook(s_erase_progress, &self->view);
    }
    int rc = BF_EXIT_OK;
    bool lock_lost = false;
    uint64_t seen_gen = 0;
    for (;;) {
        if (stop && *stop) {
            rc = BF_EXIT_INTERRUPTED;
            break;
        }
        /* At most 100 ms, less when a SHRINK round is due sooner. */
        int wait_ms = self->splitting ? bf_ms_until(self->next_split, 100) : 100;
        int ready = bf_net_wait_fd(self->router, bf_leaser_fd(self->leaser), wait_ms);
        if (ready & 1) {
            for (int n = 0; n < 1000 && (zsock_events(self->router) & ZMQ_POLLIN); n++) {
                zframe_t *identity = NULL;
                bf_msg_t m;
                int r = bf_net_recv(self->router, &identity, &m);
                if (r == 0)
                    s_on_message(self, identity, &m);
                bf_msg_clear(&m);
                zframe_destroy(&identity);
                if (r == -2)
                    break;
            }
        }
        if (ready & 2)
            bf_leaser_drain_fd(self->leaser);
        s_leaser_news(self);
        bf_curve_server_poll(self->curve);
        long long now = bf_now_ms();
        if (now >= self->next_tick) {
            s_tick(self);
            self->next_tick = now + self->opts.heartbeat_ms;
        }
        if (tick)
            tick(tick_arg);
        s_throttle_check(self);
        s_floor_check(self);
        s_dispatch(self);
        if (progress_ms && now >= self->next_progress) {
            s_progress(self, false);
            self->next_progress = now + progress_ms;
        }
        if (self->failed) {
            rc = BF_EXIT_DATA; /* a worker hit a data error: stop now (all committed is
                                * checkpointed) */
            break;
        }
        if (s_lock_lost(self)) {
            rc = BF_EXIT_USAGE;
            lock_lost = true;
            break;
        }
        /* Ranges end with a DONE, or (worker gone) by a reap or another
         * coordinator's worker: the leaser reads the count a few times a second,
         * and at once after a FAIL or when the DONEs seen since its last read may
         * have finished the job. Done only grows and the range count is read after
         * it, so any read decides. */
        if (self->recount) {
            bf_leaser_recount(self->leaser);
            self->recount = false;
        }
        bf_leaser_counts_t c;
        bf_leaser_counts(self->leaser, &c);
        if (!c.ok || c.gen == seen_gen)
            continue;
        seen_gen = c.gen;
        self->done_seen = c.done;
        self->dones_since = 0;
        if (c.nranges > self->nranges)
            self->nranges = c.nranges;
        self->cancelled = c.cancel;
        if (c.failed > 0) {
            snprintf(self->fail_msg, sizeof self->fail_msg,
                     "%lld ranges failed %d times; see `backfill status`", (long long)c.failed,
                     MAX_ATTEMPTS);
            self->failed = true;
            rc = BF_EXIT_DATA;
            break;
        }
        if (c.done >= self->nranges) {
            log_debug("all %lld ranges done", (long long)c.done);
            rc = BF_EXIT_OK;
            break;
        }
        if (self->cancelled) {
            log_warn("job cancelled (backfill cancel): workers hand their ranges back at their "
                     "last checkpoints; run the job again to resume it");
            rc = BF_EXIT_INTERRUPTED;
            break;
        }
    }
    /* Names still to write, and the leases taken ahead back to pending. */
    bf_leaser_stop(&self->leaser);
    log_debug("leaser stopped");
    if (self->opts.progress_tty) {
        s_progress(self, true); /* the last frame stays on screen */
        bf_log_set_hook(NULL, NULL);
        self->view.lines = 0;
    }
    /* Tell every worker: done (exit) or drain (hand back and exit). Not when the
     * job went to another coordinator: its workers (unless they are this
     * process's own) reconnect when they find this one silent, keep their
     * leases meanwhile, and join whichever coordinator answers on the endpoint. */
    bool tell = !lock_lost || self->opts.own_workers;
    if (!tell)
        log_warn("the workers of this coordinator reconnect to it when they find it silent; "
                 "their leases expire unless a coordinator answers there");
    for (int i = 0; i < self->nworkers && tell; i++) {
        bf_msg_t m = {.type = BF_MSG_DRAIN, .done = rc == BF_EXIT_OK, .deadline_ms = 10000};
        s_send(self, &self->workers[i], &m);
    }
    if (rc == BF_EXIT_DATA) {
        log_error("job stopped: %s", self->fail_msg);
        s_show_rejects(self);
    }
    return rc;
}

void bf_coord_summary(bf_coord_t *self, FILE *out)
{
    int n = self->ctx.job->ntables;
    bf_table_progress_t *p = bf_xcalloc((size_t)n, sizeof *p);
    int64_t retries = 0, batches = 0;
    if (bf_progress_read(self->ctx.redis, n, p, &retries, &batches) == 0) {
        double secs = (double)(bf_now_ms() - self->started_ms) / 1000.0;
        int64_t rows = 0, bytes = 0, rejects = 0, parked = 0;
        for (int t = 0; t < n; t++) {
            fprintf(out, "  %-40s %12lld rows  %4lld/%lld ranges", p[t].name, (long long)p[t].rows,
                    (long long)p[t].done, (long long)p[t].ranges);
            if (p[t].rejects)
                fprintf(out, "  %lld rejected", (long long)p[t].rejects);
            if (p[t].parked)
                fprintf(out, "  %lld parked", (long long)p[t].parked);
            fputc('\n', out);
            rows += p[t].rows;
            bytes += p[t].bytes;
            rejects += p[t].rejects;
            parked += p[t].parked;
        }
        if (parked)
            fprintf(out,
                    "parked: %lld rows still refer to rows their targets do not have; they stay "
                    "in public.backfill_rejects (parked), and a run of the job writes them "
                    "again\n",
                    (long long)parked);
        if (rejects)
            fprintf(out,
                    "rejected: %lld rows the targets refused are in public.backfill_rejects "
                    "(job %s)\n",
                    (long long)rejects, self->ctx.job->name);
        int64_t run_rows = rows - self->rows_at_start;
        fprintf(out,
                "copied: %lld rows this run (%lld in all), %.1f MB, %.1f s, %.0f rows/s, %lld "
                "batches, %lld retries\n",
                (long long)run_rows, (long long)rows, (double)bytes / 1e6, secs,
                secs > 0 ? (double)run_rows / secs : 0.0, (long long)batches, (long long)retries);
    }
    free(p);
}

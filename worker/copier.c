#include "copier.h"

#include "fault.h"
#include "fence.h"
#include "log.h"
#include "pg.h"
#include "strbuf.h"
#include "tableplan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ATTEMPTS 5

struct bf_copier {
    const bf_job_t *job;   /* the job (owned by the caller) */
    int64_t lease_ttl_ms;  /* lease extension per checkpoint */
    bf_pg_t *src;          /* source connection, NULL until needed */
    bf_pg_t **tgt;         /* one connection per job target, NULL until needed */
    bf_rstate_t *redis;    /* checkpoints */
    bf_tableplan_t *plans; /* per job table, resolved on first use */
    bool *resolved;        /* plans[i] is valid */
    bool (*tick)(void *);  /* called during long batches; true = abandon the batch */
    void *tick_arg;
    bool abandoning; /* the tick asked to abandon the batch in flight */
};

bf_copier_t *bf_copier_new(const bf_job_t *job, int64_t lease_ttl_ms)
{
    bf_copier_t *self = bf_xcalloc(1, sizeof *self);
    self->job = job;
    self->lease_ttl_ms = lease_ttl_ms;
    self->tgt = bf_xcalloc((size_t)job->ntargets, sizeof *self->tgt);
    self->plans = bf_xcalloc((size_t)job->ntables, sizeof *self->plans);
    self->resolved = bf_xcalloc((size_t)job->ntables, sizeof *self->resolved);
    return self;
}

void bf_copier_set_tick(bf_copier_t *self, bool (*tick)(void *arg), void *arg)
{
    self->tick = tick;
    self->tick_arg = arg;
}

/* The tick of the copier's connections: the caller's, remembering a stop. */
static bool s_tick(void *arg)
{
    bf_copier_t *self = arg;
    if (self->tick(self->tick_arg))
        self->abandoning = true;
    return self->abandoning;
}

void bf_copier_destroy(bf_copier_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bf_copier_t *self = *self_p;
    bf_pg_destroy(&self->src);
    for (int i = 0; i < self->job->ntargets; i++)
        bf_pg_destroy(&self->tgt[i]);
    for (int i = 0; i < self->job->ntables; i++)
        if (self->resolved[i])
            bf_tableplan_clear(&self->plans[i]);
    bf_rstate_destroy(&self->redis);
    free(self->tgt);
    free(self->plans);
    free(self->resolved);
    free(self);
    *self_p = NULL;
}

static int s_target_index(const bf_job_t *job, const char *alias)
{
    for (int i = 0; i < job->ntargets; i++)
        if (strcmp(job->targets[i].alias, alias) == 0)
            return i;
    return -1;
}

/* Opens (or reopens after a failure) what a batch of table `t` needs. */
static int s_connect(bf_copier_t *self, int t, bf_pg_t **src, bf_pg_t **tgt, char *err,
                     size_t errlen)
{
    const bf_job_t *job = self->job;
    int ti = s_target_index(job, job->tables[t].to_alias);
    if (!bf_pg_is_alive(self->src)) {
        bf_pg_destroy(&self->src);
        self->src = bf_pg_connect(job->source, "source");
        if (!self->src) {
            snprintf(err, errlen, "cannot connect to the source");
            return -1;
        }
        if (self->tick)
            bf_pg_set_tick(self->src, s_tick, self);
    }
    if (!bf_pg_is_alive(self->tgt[ti])) {
        bf_pg_destroy(&self->tgt[ti]);
        char what[64];
        snprintf(what, sizeof what, "target %s", job->targets[ti].alias);
        self->tgt[ti] = bf_pg_connect(job->targets[ti].dsn, what);
        if (!self->tgt[ti] || bf_pg_exec(self->tgt[ti], "SET synchronous_commit = off") != 0) {
            bf_pg_destroy(&self->tgt[ti]);
            snprintf(err, errlen, "cannot connect to target %s", job->targets[ti].alias);
            return -1;
        }
        if (self->tick)
            bf_pg_set_tick(self->tgt[ti], s_tick, self);
    }
    if (!self->redis) {
        self->redis = bf_rstate_connect(job->redis, job->name);
        if (!self->redis) {
            snprintf(err, errlen, "cannot connect to redis");
            return -1;
        }
    }
    *src = self->src;
    *tgt = self->tgt[ti];
    return 0;
}

/* Finds where this batch ends: the batch_rows-th key after the cursor. Sets *end
 * (malloc'd, NULL = to the end of the range) and *final. */
static int s_batch_end(bf_copier_t *self, bf_pg_t *src, const bf_tableplan_t *tp,
                       const bf_range_t *r, char **end, bool *final)
{
    char *cond = bf_tableplan_range_cond(tp, src, tp->key_col, r->lo, r->cursor, r->hi);
    char *sql = bf_xasprintf(
        "SELECT %s::text AS bf_key FROM %s WHERE %s ORDER BY %s LIMIT 2 OFFSET %lld", tp->key_col,
        tp->src_qname, cond, tp->key_col, (long long)(self->job->batch_rows - 1));
    free(cond);
    PGresult *res = bf_pg_query(src, sql, 0, NULL);
    free(sql);
    if (!res)
        return -1;
    int n = PQntuples(res);
    /* The last batch is bounded by the range's hi, not by the last key seen, so
     * rows inserted in between meanwhile are not skipped. */
    *final = n < 2;
    *end = n == 2 ? bf_xstrdup(PQgetvalue(res, 0, 0)) : NULL;
    PQclear(res);
    return 0;
}

/* Streams the source COPY into the target COPY without parsing rows. */
static int s_relay(bf_copier_t *self, bf_pg_t *src, bf_pg_t *tgt, const char *copy_out,
                   const char *copy_in, int64_t *rows, int64_t *bytes)
{
    PGresult *res;
    if (bf_pg_copy_start(tgt, copy_in, true) != 0)
        return -2;
    if (bf_pg_copy_start(src, copy_out, false) != 0) {
        PQputCopyEnd(tgt->conn, "source query failed");
        while ((res = PQgetResult(tgt->conn)))
            PQclear(res);
        return -1;
    }
    int64_t nbytes = 0;
    bool put_failed = false, abandoned = false;
    long long next_tick = bf_now_ms() + 500;
    for (unsigned chunks = 1;; chunks++) {
        char *buf = NULL;
        int n = PQgetCopyData(src->conn, &buf, 0);
        if (n < 0)
            break;
        if (self->tick && !abandoned && (chunks & 1023) == 0 && bf_now_ms() >= next_tick) {
            if (s_tick(self)) {
                /* Stop now: cancel the source COPY (the loop drains what is in
                 * flight) and abort the target's. */
                abandoned = put_failed = true;
                PGcancel *cancel = PQgetCancel(src->conn);
                char errbuf[256];
                if (cancel) {
                    PQcancel(cancel, errbuf, sizeof errbuf);
                    PQfreeCancel(cancel);
                }
            }
            next_tick = bf_now_ms() + 500;
        }
        if (!put_failed && PQputCopyData(tgt->conn, buf, n) != 1)
            put_failed = true; /* keep draining the source so its connection stays usable */
        if (chunks == 1)
            bf_fault_point("in-copy");
        nbytes += n;
        PQfreemem(buf);
    }
    int rc = 0;
    while ((res = PQgetResult(src->conn))) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            bf_pg_set_error(src, res);
            rc = -1;
        }
        PQclear(res);
    }
    if (abandoned) {
        PQputCopyEnd(tgt->conn, "batch abandoned: the worker is stopping");
        while ((res = PQgetResult(tgt->conn)))
            PQclear(res);
        *bytes = nbytes;
        return -3;
    }
    PQputCopyEnd(tgt->conn, rc == 0 ? NULL : "source COPY failed");
    while ((res = PQgetResult(tgt->conn))) {
        if (PQresultStatus(res) == PGRES_COMMAND_OK) {
            *rows = atoll(PQcmdTuples(res));
        } else if (rc == 0) {
            bf_pg_set_error(tgt, res);
            rc = -2;
        }
        PQclear(res);
    }
    if (rc == 0 && put_failed) {
        bf_pg_set_error(tgt, NULL);
        rc = -2;
    }
    *bytes = nbytes;
    return rc;
}

static bool s_is_data_error(const char *sqlstate)
{
    /* 22: data exception, 23: integrity violation, 42: syntax/undefined object. */
    return strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0 ||
           strncmp(sqlstate, "42", 2) == 0;
}

/* Classifies a failed statement on conn into RETRY or FATAL and fills w->error. */
static bf_batch_result_t s_fail(bf_copier_t *self, bf_lease_work_t *w, const bf_tableplan_t *tp,
                                bf_pg_t *conn, const char *what)
{
    if (self->abandoning) {
        snprintf(w->error, sizeof w->error, "range %lld: batch abandoned, the worker is stopping",
                 (long long)w->range.id);
        return BF_BATCH_RETRY;
    }
    bool fatal = conn && !bf_pg_error_is_retryable(conn) && s_is_data_error(conn->sqlstate);
    const bf_range_t *r = &w->range;
    snprintf(w->error, sizeof w->error, "table %s -> %s: %s keys after %s up to %s: %s%s%s%s",
             tp ? tp->src_label : "?", tp ? tp->tgt_label : "?", what,
             r->cursor ? r->cursor : (r->lo ? r->lo : "-inf"), r->hi ? r->hi : "+inf",
             conn ? conn->errmsg : "", conn && conn->detail[0] ? " (" : "",
             conn ? conn->detail : "", conn && conn->detail[0] ? ")" : "");
    return fatal ? BF_BATCH_FATAL : BF_BATCH_RETRY;
}

/* Takes the range's advisory lock in the target transaction, before anything
 * else of the batch. A holder is a transaction of an older lease of this range
 * (Redis hands a range to one lease at a time, and this one is the newest): a
 * worker that was paused, cut off or declared dead while its batch was open. It
 * could hold its transaction open indefinitely (a stopped process's kernel keeps
 * the socket alive, and a COPY waiting for data ignores statement_timeout), so
 * terminate it: its batch rolls back and the fence row tells us where to go on. */
static int s_take_range(bf_copier_t *self, bf_pg_t *tgt, const bf_range_t *r,
                        const char *const *fparams)
{
    PGresult *res = bf_pg_query(tgt, BF_RANGE_TRYLOCK, 2, fparams);
    if (!res)
        return -1;
    bool got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (got)
        return 0;
    res = bf_pg_query(tgt, BF_RANGE_HOLDERS, 2, fparams);
    if (!res)
        return -1;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *pid = PQgetvalue(res, i, 0);
        bool ours = strcmp(PQgetvalue(res, i, 2), "t") == 0;
        if (!ours) {
            log_warn("range %lld: target backend %s (application '%s') holds the range's lock "
                     "but is not a backfill session of this role; waiting for it",
                     (long long)r->id, pid, PQgetvalue(res, i, 1));
            continue;
        }
        log_warn("range %lld: terminating target backend %s, the open transaction of an "
                 "older lease of this range (its worker is paused or gone); its batch rolls back",
                 (long long)r->id, pid);
        const char *kp[] = {pid};
        PGresult *k = bf_pg_query(tgt, "SELECT pg_terminate_backend($1::int)", 1, kp);
        PQclear(k);
    }
    PQclear(res);
    /* Wait for the lock, at most a lease's time; a timeout is retried later. */
    char sql[96];
    snprintf(sql, sizeof sql, "SET LOCAL lock_timeout = %lld", (long long)self->lease_ttl_ms);
    if (bf_pg_exec(tgt, sql) != 0 || !(res = bf_pg_query(tgt, BF_RANGE_LOCK, 2, fparams)))
        return -1;
    PQclear(res);
    return bf_pg_exec(tgt, "SET LOCAL lock_timeout = 0");
}

bf_batch_result_t bf_copier_batch(bf_copier_t *self, bf_lease_work_t *w)
{
    self->abandoning = false;
    bf_range_t *r = &w->range;
    const bf_job_t *job = self->job;
    if (r->table < 0 || r->table >= job->ntables) {
        snprintf(w->error, sizeof w->error, "lease names table %d, the job has %d", r->table,
                 job->ntables);
        return BF_BATCH_FATAL;
    }
    bf_pg_t *src = NULL, *tgt = NULL;
    if (s_connect(self, r->table, &src, &tgt, w->error, sizeof w->error) != 0)
        return BF_BATCH_RETRY;
    bf_tableplan_t *tp = &self->plans[r->table];
    if (!self->resolved[r->table]) {
        if (bf_tableplan_resolve(tp, job, r->table, src, tgt, w->error, sizeof w->error) != 0)
            return bf_pg_is_alive(src) && bf_pg_is_alive(tgt) ? BF_BATCH_FATAL : BF_BATCH_RETRY;
        self->resolved[r->table] = true;
    }

    char *end = NULL;
    bool final = false;
    if (s_batch_end(self, src, tp, r, &end, &final) != 0)
        return s_fail(self, w, tp, src, "reading the source");

    bf_batch_result_t result = BF_BATCH_RETRY;
    char ids[24], toks[24], seqs[24];
    snprintf(ids, sizeof ids, "%lld", (long long)r->id);
    snprintf(toks, sizeof toks, "%lld", (long long)r->token);
    snprintf(seqs, sizeof seqs, "%lld", (long long)(r->seq + 1));
    const char *fparams[] = {job->name, ids, toks, seqs, NULL, NULL};
    PGresult *res = NULL;
    char *copy_out = NULL, *copy_in = NULL;

    if (bf_pg_exec(tgt, "BEGIN") != 0) {
        result = s_fail(self, w, tp, tgt, "opening a transaction on the target for");
        goto rollback;
    }
    if (s_take_range(self, tgt, r, fparams) != 0) {
        result = s_fail(self, w, tp, tgt, "taking over");
        goto rollback;
    }
    if (!(res = bf_pg_query(tgt, BF_FENCE_ENSURE, 2, fparams))) {
        result = s_fail(self, w, tp, tgt, "creating the fence row for");
        goto rollback;
    }
    PQclear(res);
    if (!(res = bf_pg_query(tgt, BF_FENCE_LOCK, 2, fparams))) {
        result = s_fail(self, w, tp, tgt, "locking the fence row for");
        goto rollback;
    }
    if (PQntuples(res) != 1) {
        PQclear(res);
        snprintf(w->error, sizeof w->error, "range %lld: fence row vanished (job re-planned?)",
                 (long long)r->id);
        result = BF_BATCH_RETRY;
        goto rollback;
    }
    int64_t ftoken = atoll(PQgetvalue(res, 0, 0)), fseq = atoll(PQgetvalue(res, 0, 1));
    bool ffinal = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
    const char *fcursor = PQgetisnull(res, 0, 2) ? NULL : PQgetvalue(res, 0, 2);
    if (ftoken > r->token) {
        snprintf(w->error, sizeof w->error,
                 "range %lld is fenced: target holds token %lld, this lease has %lld",
                 (long long)r->id, (long long)ftoken, (long long)r->token);
        PQclear(res);
        result = BF_BATCH_FENCED;
        goto rollback;
    }
    bool same_cursor =
        (!fcursor && !r->cursor) || (fcursor && r->cursor && strcmp(fcursor, r->cursor) == 0);
    if (!w->fence_known && fseq == r->seq && same_cursor) {
        w->fence_known = true;
        w->fence_seq = fseq;
    }
    if (!w->fence_known || fseq != w->fence_seq) {
        /* The fence row commits with the rows, so it is the truth about the target.
         * Ahead of Redis: an earlier lease was killed between its commit and its
         * checkpoint. Behind: the target lost commits made with synchronous_commit
         * off (crash). Either way continue from the fence's cursor; checkpoint seqs
         * keep growing past both. */
        log_info("range %lld: target fence (seq %lld, after %s) differs from redis (seq %lld, "
                 "after %s); continuing from the fence",
                 (long long)r->id, (long long)fseq, fcursor ? fcursor : "the start",
                 (long long)r->seq, r->cursor ? r->cursor : "the start");
        free(r->cursor);
        r->cursor = fcursor ? bf_xstrdup(fcursor) : NULL;
        w->fence_known = true;
        w->fence_seq = fseq;
        if (fseq > r->seq)
            r->seq = fseq;
        PQclear(res);
        bf_pg_exec(tgt, "ROLLBACK");
        free(end);
        if (ffinal) {
            bf_cp_result_t cp = bf_rstate_checkpoint(self->redis, r->id, r->token, r->seq + 1,
                                                     r->cursor, 0, 0, true, self->lease_ttl_ms);
            if (cp == BF_CP_ERROR) {
                snprintf(w->error, sizeof w->error, "%s", self->redis->errmsg);
                return BF_BATCH_RETRY;
            }
            r->seq++;
            return cp == BF_CP_STALE ? BF_BATCH_FENCED : BF_BATCH_FINAL;
        }
        return BF_BATCH_MORE; /* redo from the fence's cursor */
    }
    PQclear(res);

    char *cond =
        bf_tableplan_range_cond(tp, src, tp->key_col, r->lo, r->cursor, end ? NULL : r->hi);
    if (end) {
        char *lit = bf_pg_literal(src, end);
        char *c2 = bf_xasprintf("%s AND %s <= %s::%s", cond, tp->key_col, lit, tp->key_type);
        free(lit);
        free(cond);
        cond = c2;
    }
    copy_out = bf_xasprintf("COPY (SELECT %s FROM %s WHERE %s) TO STDOUT (FORMAT binary)",
                            tp->select_list, tp->src_qname, cond);
    free(cond);
    copy_in =
        bf_xasprintf("COPY %s (%s) FROM STDIN (FORMAT binary)", tp->tgt_qname, tp->target_cols);
    int64_t rows = 0, bytes = 0;
    int rc = s_relay(self, src, tgt, copy_out, copy_in, &rows, &bytes);
    if (rc != 0) {
        result = s_fail(self, w, tp, rc == -1 ? src : tgt,
                        rc == -1                        ? "reading the source"
                        : bf_pg_error_is_retryable(tgt) ? "writing to the target"
                                                        : "the target rejected rows in");
        goto rollback;
    }

    const char *new_cursor = end ? end : r->cursor;
    fparams[4] = new_cursor;
    fparams[5] = final ? "true" : "false";
    if (final && bf_pg_exec(tgt, "SET LOCAL synchronous_commit = on") != 0) {
        result = s_fail(self, w, tp, tgt, "finishing");
        goto rollback;
    }
    if (!(res = bf_pg_query(tgt, BF_FENCE_UPDATE, 6, fparams)) || bf_pg_exec(tgt, "COMMIT") != 0) {
        PQclear(res);
        result = s_fail(self, w, tp, tgt, "committing");
        goto rollback;
    }
    PQclear(res);
    free(copy_out);
    free(copy_in);
    bf_fault_point("after-commit");

    /* The rows are committed with the fence; now record the checkpoint. A Redis
     * failure is not a loss: the next lease adopts the fence's cursor. */
    bf_cp_result_t cp = BF_CP_ERROR;
    for (int attempt = 0; attempt < 3 && cp == BF_CP_ERROR; attempt++) {
        cp = bf_rstate_checkpoint(self->redis, r->id, r->token, r->seq + 1, new_cursor, rows, bytes,
                                  final, self->lease_ttl_ms);
        if (cp == BF_CP_ERROR)
            usleep(200000 * (attempt + 1));
    }
    if (end) {
        free(r->cursor);
        r->cursor = end;
    }
    r->seq++;
    w->fence_seq = r->seq;
    w->rows += rows;
    w->bytes += bytes;
    if (cp == BF_CP_ERROR) {
        snprintf(w->error, sizeof w->error, "checkpoint failed: %s", self->redis->errmsg);
        return BF_BATCH_RETRY;
    }
    if (cp == BF_CP_STALE) {
        snprintf(w->error, sizeof w->error, "range %lld was leased to another worker",
                 (long long)r->id);
        return BF_BATCH_FENCED;
    }
    return final ? BF_BATCH_FINAL : BF_BATCH_MORE;

rollback:
    if (bf_pg_is_alive(tgt))
        bf_pg_exec_quiet(tgt, "ROLLBACK");
    free(end);
    free(copy_out);
    free(copy_in);
    return result;
}

int bf_copier_job_complete(bf_copier_t *self)
{
    if (!self->redis && !(self->redis = bf_rstate_connect(self->job->redis, self->job->name)))
        return -1;
    return bf_rstate_is_complete(self->redis);
}

int bf_copier_release(bf_copier_t *self, bf_lease_work_t *w, const char *reason, bool failure)
{
    if (!self->redis && !(self->redis = bf_rstate_connect(self->job->redis, self->job->name)))
        return -1;
    return bf_rstate_release(self->redis, w->range.id, w->range.token, reason, failure,
                             MAX_ATTEMPTS);
}

#include "copier.h"

#include "fault.h"
#include "fence.h"
#include "log.h"
#include "pg.h"
#include "strbuf.h"
#include "tableplan.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
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
    unsigned *tgt_gen;     /* per target: bumped at every (re)connect */
    bf_rstate_t *redis;    /* checkpoints */
    char name[128];        /* the worker's id, recorded with the ranges it finishes */
    bf_tableplan_t *plans; /* per job table, resolved on first use */
    bool *resolved;        /* plans[i] is valid */
    unsigned **stage_gen;  /* per table and route: tgt_gen when its staging table was made */
    bool (*tick)(void *);  /* called during long batches; true = abandon the batch */
    void *tick_arg;
    int64_t *batch_size; /* per table: rows of the next batch (adapted to batch_ms) */
    char *last_key;      /* the key of the last row relayed (keyed relay) */
    size_t last_key_cap;
    int relay_key_bin;        /* keyed relay: the key comes binary, this wide (else as text) */
    bool relay_key_first;     /* and is the row's own first column (not an extra one) */
    unsigned char raw_key[8]; /* and the last one as it came */
    bool have_raw_key;
    char *out; /* rows for the target, sent as one CopyData message when full */
    size_t nout;
    bool abandoning;        /* the tick asked to abandon the batch in flight */
    bool cut_asked;         /* end the keyed batch in flight early (bf_copier_cut) */
    bool cut;               /* the last keyed relay ended early, at its last key */
    int64_t src_rows;       /* rows the source sent in the last relay (its COPY count), -1
                             * when not known (cut short, failed) */
    char row_error[1024];   /* why the target refused a row (BF_BATCH_ROW_ERROR) */
    char row_sqlstate[6];   /* and its SQLSTATE */
    char row_detail[1024];  /* and its detail (a foreign key's names the missing row) */
    char *row_lower;        /* and the key its batch started after (NULL: the range's lo) */
    signed char *in_order;  /* per table: copied in key order (1), not (-1), unknown (0) */
    struct parked_keys *pk; /* per table: keys of rows this worker parked (see there) */
    char *resplit;          /* BF_BATCH_RESPLIT: the key the fence rows say the range ends at */
};

/* The keys of a key-order table's rows on the target's backfill_rejects (parked by
 * any worker, or set aside) and of those this worker parks, with the column that
 * refers to them (col, from a refusal: this worker's, or one stored with a row), so
 * that the rows referring to them (a subtree under a parked row) are found in the
 * source before their batch is tried, not each by a refused batch. At most
 * PARKED_KEYS_MAX: past that, refusals find the rest. misses: looks in a row that
 * found no such row (see s_skip_parked). */
struct parked_keys {
    char *col;
    char **keys;
    int n, cap;
    int misses;
};
#define PARKED_KEYS_MAX 10000

/* Whether route i is the first of table tp's routes to its target (a target's
 * routes share one transaction per batch). */
static bool s_first_of_target(const bf_tableplan_t *tp, int i)
{
    for (int j = 0; j < i; j++)
        if (tp->routes[j].target == tp->routes[i].target)
            return false;
    return true;
}

/* A range set back because a row refers to one the target does not have yet is
 * leased again after this long (doubling with each deferral, at most 8 times). */
#define DEFER_MS 500

/* SQLSTATE foreign_key_violation. */
#define SQLSTATE_FK "23503"

bf_copier_t *bf_copier_new(const bf_job_t *job, int64_t lease_ttl_ms)
{
    bf_copier_t *self = bf_xcalloc(1, sizeof *self);
    self->job = job;
    self->lease_ttl_ms = lease_ttl_ms;
    self->tgt = bf_xcalloc((size_t)job->ntargets, sizeof *self->tgt);
    self->tgt_gen = bf_xcalloc((size_t)job->ntargets, sizeof *self->tgt_gen);
    self->plans = bf_xcalloc((size_t)job->ntables, sizeof *self->plans);
    self->resolved = bf_xcalloc((size_t)job->ntables, sizeof *self->resolved);
    self->in_order = bf_xcalloc((size_t)job->ntables, sizeof *self->in_order);
    self->pk = bf_xcalloc((size_t)job->ntables, sizeof *self->pk);
    self->stage_gen = bf_xcalloc((size_t)job->ntables, sizeof *self->stage_gen);
    self->batch_size = bf_xcalloc((size_t)job->ntables, sizeof *self->batch_size);
    for (int t = 0; t < job->ntables; t++)
        self->batch_size[t] = job->batch_rows;
    for (int t = 0; t < job->ntables; t++)
        self->stage_gen[t] = bf_xcalloc((size_t)job->tables[t].nroutes, sizeof *self->stage_gen[t]);
    return self;
}

void bf_copier_set_tick(bf_copier_t *self, bool (*tick)(void *arg), void *arg)
{
    self->tick = tick;
    self->tick_arg = arg;
}

void bf_copier_cut(bf_copier_t *self)
{
    self->cut_asked = true;
}

void bf_copier_set_name(bf_copier_t *self, const char *worker_id)
{
    snprintf(self->name, sizeof self->name, "%s", worker_id);
}

static bf_rstate_t *s_redis(bf_copier_t *self);

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
    for (int t = 0; t < self->job->ntables; t++)
        free(self->stage_gen[t]);
    free(self->stage_gen);
    free(self->batch_size);
    free(self->last_key);
    free(self->resplit);
    free(self->out);
    free(self->tgt);
    free(self->tgt_gen);
    free(self->plans);
    free(self->resolved);
    free(self->in_order);
    for (int t = 0; t < self->job->ntables; t++) {
        for (int i = 0; i < self->pk[t].n; i++)
            free(self->pk[t].keys[i]);
        free(self->pk[t].keys);
        free(self->pk[t].col);
    }
    free(self->pk);
    free(self->row_lower);
    free(self);
    *self_p = NULL;
}

/* Opens (or reopens after a failure) what a batch of table `t` needs: the source,
 * every target its routes write to, Redis. */
static int s_connect(bf_copier_t *self, int t, char *err, size_t errlen)
{
    const bf_job_t *job = self->job;
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
    for (int r = 0; r < job->tables[t].nroutes; r++) {
        const bf_target_t *target = bf_job_target(job, job->tables[t].routes[r].alias);
        int ti = target ? (int)(target - job->targets) : -1;
        if (ti < 0 || bf_pg_is_alive(self->tgt[ti]))
            continue;
        bf_pg_destroy(&self->tgt[ti]);
        char what[96];
        snprintf(what, sizeof what, "target %s", job->targets[ti].alias);
        self->tgt[ti] = bf_pg_connect(job->targets[ti].dsn, what);
        /* The application name tells this job's sessions apart (s_take_range ends
         * only those); job names are [A-Za-z0-9_.-], safe in a literal. */
        char *set = bf_xasprintf("SET synchronous_commit = off; SET application_name = "
                                 "'backfill worker %s'",
                                 job->name);
        int set_rc = self->tgt[ti] ? bf_pg_exec(self->tgt[ti], set) : -1;
        free(set);
        if (set_rc != 0) {
            bf_pg_destroy(&self->tgt[ti]);
            snprintf(err, errlen, "cannot connect to target %s", job->targets[ti].alias);
            return -1;
        }
        self->tgt_gen[ti]++;
        if (self->tick)
            bf_pg_set_tick(self->tgt[ti], s_tick, self);
    }
    if (!s_redis(self)) {
        snprintf(err, errlen, "cannot connect to redis");
        return -1;
    }
    return 0;
}

/* Finds where this batch ends: the batch_rows-th key after the cursor. Sets *end
 * (malloc'd, NULL = to the end of the range) and *final. */
static int s_batch_end(bf_pg_t *src, const bf_tableplan_t *tp, const bf_range_t *r,
                       int64_t batch_rows, char **end, bool *final)
{
    char *cond = bf_tableplan_range_cond(tp, src, r->lo, r->cursor, r->hi);
    char *sql =
        bf_xasprintf("SELECT %s AS bf_key FROM %s WHERE %s ORDER BY %s LIMIT 2 OFFSET %lld",
                     tp->key_text, tp->src_qname, cond, tp->key_list, (long long)(batch_rows - 1));
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

/* Binary COPY framing: 11-byte signature, int32 flags, int32 extension length. */
#define COPY_BIN_HEADER 19

static uint32_t s_be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* The relay's output: rows gathered into CopyData messages of up to OUT_CAP
 * bytes instead of one (keyed: two) per row. COPY FROM reads its input as a
 * stream, and a message per row costs both libpq and the target backend a
 * message's handling each (3M rows: 6M messages as two puts per row). */
#define OUT_CAP 65536

/* During a relay the target connection does not block (PQsetnonblocking): a
 * target that stops reading (its COPY waits for a lock, a slow disk) would hold
 * the worker inside libpq, silent, until the coordinator takes it for dead.
 * Writes go through bf_pg_flush, the end through bf_pg_await: both tick. */

/* Queues one CopyData message and sends it. */
static void s_target_put(bf_pg_t *tgt, const char *p, int n, bool *put_failed)
{
    int r = PQputCopyData(tgt->conn, p, n);
    if (r == 0 && bf_pg_flush(tgt) == 0) /* libpq's buffer full: send, then again */
        r = PQputCopyData(tgt->conn, p, n);
    if (r != 1 || bf_pg_flush(tgt) != 0)
        *put_failed = true;
}

/* Ends the target's COPY (errmsg: aborts it) and waits for its result: the end is
 * where a COPY that waits for a lock, or checks its foreign keys, takes its time.
 * PQgetResult then returns at once. */
static void s_target_end(bf_pg_t *tgt, const char *errmsg)
{
    if (PQputCopyEnd(tgt->conn, errmsg) == 0 && bf_pg_flush(tgt) == 0)
        PQputCopyEnd(tgt->conn, errmsg);
    bf_pg_flush(tgt);
    bf_pg_await(tgt);
}

static void s_out_flush(bf_copier_t *self, bf_pg_t *tgt, bool *put_failed)
{
    if (self->nout > 0 && !*put_failed)
        s_target_put(tgt, self->out, (int)self->nout, put_failed);
    self->nout = 0;
}

static void s_out(bf_copier_t *self, bf_pg_t *tgt, const char *p, size_t n, bool *put_failed)
{
    if (*put_failed)
        return;
    if (self->nout + n > OUT_CAP)
        s_out_flush(self, tgt, put_failed);
    if (n >= OUT_CAP) { /* a wide row goes as it is, uncopied */
        if (!*put_failed)
            s_target_put(tgt, p, (int)n, put_failed);
        return;
    }
    if (!self->out)
        self->out = bf_xmalloc(OUT_CAP);
    memcpy(self->out + self->nout, p, n);
    self->nout += n;
}

/* Keyed relay: the source's first column is the row's key (as text, or binary
 * for an integer key), which the target must not get. Each CopyData message of a
 * binary COPY TO is one tuple (the first also carries the file header, the last
 * may be the -1 trailer): the tuple goes on with its field count less one and
 * without that first field, and the key is kept (the batch's new cursor). When
 * the key is the row's own first column (relay_key_first) the tuple goes on
 * whole. Returns 0, or -1 when the message is not framed as expected. */
static int s_relay_keyed(bf_copier_t *self, bf_pg_t *tgt, const char *buf, int n, bool first,
                         bool *put_failed)
{
    const char *p = buf, *e = buf + n;
    if (first) {
        if (n < COPY_BIN_HEADER || memcmp(buf, "PGCOPY\n\377\r\n\0", 11) != 0)
            return -1;
        uint32_t ext = s_be32(buf + 15);
        if (ext > (uint32_t)(n - COPY_BIN_HEADER))
            return -1;
        p += COPY_BIN_HEADER + ext;
        s_out(self, tgt, buf, (size_t)(p - buf), put_failed);
    }
    if (e - p < 2)
        return -1;
    int16_t nf = (int16_t)((unsigned char)p[0] << 8 | (unsigned char)p[1]);
    if (nf == -1) { /* trailer */
        s_out(self, tgt, p, (size_t)(e - p), put_failed);
        return e - p == 2 ? 0 : -1;
    }
    if (nf < (self->relay_key_first ? 1 : 2) || e - p < 6)
        return -1;
    uint32_t klen = s_be32(p + 2);
    if (klen == UINT32_MAX || klen > (uint32_t)(e - p - 6))
        return -1;
    if (self->relay_key_bin) {
        /* Binary integer: kept as it came, formatted once, after the batch. */
        if (klen != (uint32_t)self->relay_key_bin)
            return -1;
        memcpy(self->raw_key, p + 6, klen);
        self->have_raw_key = true;
    } else {
        if (klen + 1 > self->last_key_cap) {
            self->last_key_cap = (klen + 1) * 2;
            self->last_key = bf_xrealloc(self->last_key, self->last_key_cap);
        }
        memcpy(self->last_key, p + 6, klen);
        self->last_key[klen] = '\0';
    }
    if (self->relay_key_first) { /* the key is the row's: the row goes as it came */
        s_out(self, tgt, p, (size_t)(e - p), put_failed);
        return 0;
    }
    char count[2] = {(char)((nf - 1) >> 8), (char)((nf - 1) & 0xff)};
    const char *rest = p + 6 + klen;
    s_out(self, tgt, count, 2, put_failed);
    s_out(self, tgt, rest, (size_t)(e - rest), put_failed);
    return 0;
}

/* During a batch the worker's socket is looked at every RELAY_TICK_MS (SHRINK,
 * REVOKE, DRAIN, heartbeats): a clock read every 1024 rows and whenever the source
 * has nothing buffered, a look at the socket (a getsockopt) when due (a target
 * that keeps the relay waiting: every 500 ms, bf_pg_flush / bf_pg_await). */
#define RELAY_TICK_MS 20

/* The relay's look at the worker's socket: stop (abandon the batch), or end it
 * here to split the range (cut: keyed relay only). */
static void s_relay_tick(bf_copier_t *self, bf_pg_t *src, bool keyed, bool *abandoned,
                         bool *put_failed, bool *cut)
{
    if (s_tick(self)) {
        /* Stop now: cancel the source COPY (the loop drains what is in flight)
         * and abort the target's. */
        *abandoned = *put_failed = true;
        bf_pg_cancel(src);
    } else if (keyed && self->cut_asked && !*cut) {
        /* Asked to split the range: end the batch at the last row relayed (rows
         * come in key order, so everything up to its key is in), stop the source
         * and drop what it still sends. */
        *cut = true;
        bf_pg_cancel(src);
    }
}

/* Streams the source COPY into the target COPY without parsing rows (keyed: see
 * s_relay_keyed; only the framing and the first field are looked at). The target
 * connection is non-blocking while the COPY lasts (s_target_put, s_target_end). */
static int s_relay_copy(bf_copier_t *self, bf_pg_t *src, bf_pg_t *tgt, const char *copy_out,
                        bool keyed, int64_t *rows, int64_t *bytes)
{
    PGresult *res;
    if (bf_pg_copy_start(src, copy_out, false) != 0) {
        s_target_end(tgt, "source query failed");
        while ((res = PQgetResult(tgt->conn)))
            PQclear(res);
        return -1;
    }
    int64_t nbytes = 0;
    bool put_failed = false, abandoned = false, bad_frame = false, cut = false;
    if (keyed && self->last_key)
        self->last_key[0] = '\0';
    self->have_raw_key = false;
    self->cut = false;
    long long next_tick = bf_now_ms() + RELAY_TICK_MS;
    for (unsigned chunks = 0;;) {
        char *buf = NULL;
        int n = PQgetCopyData(src->conn, &buf, 1);
        if (n == 0) {
            /* Nothing buffered (a slow or selective source, or just between two
             * reads): tick when due, then wait for the source at most a tick, so
             * that heartbeats and SHRINK are never held up by a quiet source. */
            if (self->tick && !abandoned && bf_now_ms() >= next_tick) {
                s_relay_tick(self, src, keyed, &abandoned, &put_failed, &cut);
                next_tick = bf_now_ms() + RELAY_TICK_MS;
            }
            struct pollfd pfd = {.fd = PQsocket(src->conn), .events = POLLIN};
            int pr = poll(&pfd, 1, RELAY_TICK_MS);
            /* Connection lost: PQgetResult below reports it and ends the COPY
             * (libpq does so for a COPY OUT on a broken connection). */
            if ((pr > 0 && !PQconsumeInput(src->conn)) || PQstatus(src->conn) != CONNECTION_OK)
                break;
            if (pr < 0 && errno != EINTR)
                usleep(1000); /* not expected; no busy loop if it happens */
            continue;
        }
        if (n < 0)
            break;
        chunks++;
        if (self->tick && !abandoned && (chunks & 1023) == 0 && bf_now_ms() >= next_tick) {
            s_relay_tick(self, src, keyed, &abandoned, &put_failed, &cut);
            next_tick = bf_now_ms() + RELAY_TICK_MS;
        }
        if (cut) {
            PQfreemem(buf);
            continue;
        }
        /* On a failed put keep draining the source so its connection stays usable. */
        if (keyed && !bad_frame) {
            if (s_relay_keyed(self, tgt, buf, n, chunks == 1, &put_failed) != 0) {
                bad_frame = put_failed = true;
                bf_pg_cancel(src);
            }
        } else if (!keyed) {
            s_out(self, tgt, buf, (size_t)n, &put_failed);
        }
        if (chunks == 1)
            bf_fault_point("in-copy");
        nbytes += n;
        PQfreemem(buf);
    }
    if (self->have_raw_key) { /* the batch's cursor: the last binary key as text */
        const unsigned char *k = self->raw_key;
        uint64_t u = 0;
        for (int i = 0; i < self->relay_key_bin; i++)
            u = u << 8 | k[i];
        int64_t v = self->relay_key_bin == 2   ? (int16_t)(uint16_t)u
                    : self->relay_key_bin == 4 ? (int32_t)(uint32_t)u
                                               : (int64_t)u;
        if (self->last_key_cap < 24) {
            self->last_key_cap = 24;
            self->last_key = bf_xrealloc(self->last_key, self->last_key_cap);
        }
        snprintf(self->last_key, self->last_key_cap, "%" PRId64, v);
    }
    int rc = 0;
    self->src_rows = -1;
    while ((res = PQgetResult(src->conn))) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (PQresultStatus(res) == PGRES_COMMAND_OK) {
            self->src_rows = atoll(PQcmdTuples(res));
        } else if (!(cut && st && strcmp(st, "57014") == 0)) { /* the cancel of a cut */
            bf_pg_set_error(src, res);
            rc = -1;
        }
        PQclear(res);
    }
    if (cut && rc == 0 && !put_failed && !bad_frame && !abandoned) {
        static const char trailer[2] = {(char)0xff, (char)0xff};
        s_out(self, tgt, trailer, 2, &put_failed);
        self->cut = true;
    }
    /* The rows gathered go out before the end; a failed batch drops them with
     * its target COPY. */
    if (rc == 0 && !bad_frame && !abandoned)
        s_out_flush(self, tgt, &put_failed);
    self->nout = 0;
    if (bad_frame) {
        s_target_end(tgt, "unexpected COPY framing from the source");
        while ((res = PQgetResult(tgt->conn)))
            PQclear(res);
        snprintf(src->errmsg, sizeof src->errmsg,
                 "the source's binary COPY stream is not framed one row per message as "
                 "expected (PostgreSQL version?)");
        src->sqlstate[0] = src->detail[0] = '\0';
        return -1;
    }
    if (abandoned) {
        s_target_end(tgt, "batch abandoned: the worker is stopping");
        while ((res = PQgetResult(tgt->conn)))
            PQclear(res);
        *bytes = nbytes;
        return -3;
    }
    s_target_end(tgt, rc == 0 ? NULL : "source COPY failed");
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

static int s_relay(bf_copier_t *self, bf_pg_t *src, bf_pg_t *tgt, const char *copy_out,
                   const char *copy_in, bool keyed, int64_t *rows, int64_t *bytes)
{
    if (bf_pg_copy_start(tgt, copy_in, true) != 0)
        return -2;
    if (PQsetnonblocking(tgt->conn, 1) != 0) {
        bf_pg_set_error(tgt, NULL);
        PQputCopyEnd(tgt->conn, "cannot relay");
        PGresult *res;
        while ((res = PQgetResult(tgt->conn)))
            PQclear(res);
        return -2;
    }
    int rc = s_relay_copy(self, src, tgt, copy_out, keyed, rows, bytes);
    PQsetnonblocking(tgt->conn, 0);
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
                                const char *tgt_label, bf_pg_t *conn, const char *what)
{
    if (self->abandoning) {
        snprintf(w->error, sizeof w->error, "range %lld: batch abandoned, the worker is stopping",
                 (long long)w->range.id);
        return BF_BATCH_RETRY;
    }
    bool fatal = conn && !bf_pg_error_is_retryable(conn) && s_is_data_error(conn->sqlstate);
    const bf_range_t *r = &w->range;
    snprintf(w->error, sizeof w->error, "table %s -> %s: %s keys after %s up to %s: %s%s%s%s",
             tp ? tp->src_label : "?", tgt_label ? tgt_label : "?", what,
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

/* The label of target ti's first route of table tp, for messages. */
static const char *s_target_label(const bf_tableplan_t *tp, int ti)
{
    for (int r = 0; r < tp->nroutes; r++)
        if (tp->routes[r].target == ti)
            return tp->routes[r].label;
    return "?";
}

/* Appends the source condition of route rp's rows in the batch: key in (lower,
 * end] (lower NULL = from the range's lo; end NULL = up to its hi), route filter. */
static void s_batch_cond(bf_strbuf_t *sql, bf_pg_t *src, const bf_tableplan_t *tp,
                         const bf_route_plan_t *rp, const bf_range_t *r, const char *lower,
                         const char *end)
{
    char *cond = bf_tableplan_range_cond(tp, src, r->lo, lower, end ? NULL : r->hi);
    bf_strbuf_append(sql, cond);
    free(cond);
    if (end) {
        char *c = bf_tableplan_key_cmp(tp, src, "<=", end);
        bf_strbuf_appendf(sql, " AND %s", c);
        free(c);
    }
    if (rp->filter)
        bf_strbuf_appendf(sql, " AND %s", rp->filter);
}

/* Copies route rp's rows of the batch: source rows with key in (lower, end] (lower
 * NULL = from the range's lo; end NULL = up to its hi) that pass the route's
 * filter, straight into the target table (insert) or through its staging table.
 * With limit > 0 (end is then NULL): the first `limit` such rows in key order,
 * the last one's key left in self->last_key. */
static int s_copy_route(bf_copier_t *self, bf_pg_t *src, bf_pg_t *tgt, const bf_tableplan_t *tp,
                        const bf_route_plan_t *rp, const bf_range_t *r, const char *lower,
                        const char *end, int64_t limit, int64_t *rows, int64_t *bytes,
                        bool *src_failed)
{
    bf_strbuf_t sql;
    bf_strbuf_init(&sql);
    /* Keyed: the key first, as an extra column (binary for integers, else as text)
     * unless the row's first column is the integer key itself. */
    bool key_first = limit > 0 && rp->key_first;
    if (limit > 0 && !key_first)
        bf_strbuf_appendf(&sql, "COPY (SELECT %s AS bf_key, %s FROM %s WHERE ",
                          tp->key_bin ? tp->key_cols[0] : tp->key_text, rp->select_list,
                          tp->src_qname);
    else
        bf_strbuf_appendf(&sql, "COPY (SELECT %s FROM %s WHERE ", rp->select_list, tp->src_qname);
    s_batch_cond(&sql, src, tp, rp, r, lower, end);
    if (limit > 0)
        bf_strbuf_appendf(&sql, " ORDER BY %s LIMIT %lld", tp->key_list, (long long)limit);
    bf_strbuf_append(&sql, ") TO STDOUT (FORMAT binary)");
    char *copy_in = bf_xasprintf("COPY %s (%s) FROM STDIN (FORMAT binary)",
                                 rp->stage ? rp->stage : rp->qname, rp->target_cols);
    self->relay_key_bin = limit > 0 ? tp->key_bin : 0;
    self->relay_key_first = key_first;
    int rc = s_relay(self, src, tgt, sql.buf, copy_in, limit > 0, rows, bytes);
    bf_strbuf_free(&sql);
    free(copy_in);
    *src_failed = rc == -1;
    if (rc == 0 && rp->merge && bf_pg_exec_quiet(tgt, rp->merge) != 0)
        rc = -2;
    return rc;
}

/* Writes the one row of route rp in (lower, end] to backfill_rejects with the
 * error it got, in the batch's transaction (the fence then moves past it); parked:
 * to be tried again when every range is done. Its key in *key_out (free it; NULL
 * when there is no row). */
static int s_write_reject(bf_copier_t *self, bf_pg_t *src, bf_pg_t *tgt, const bf_tableplan_t *tp,
                          const bf_route_plan_t *rp, const bf_range_t *r, const char *lower,
                          const char *end, const char *error, bool parked, char **key_out)
{
    bf_strbuf_t sql;
    bf_strbuf_init(&sql);
    bf_strbuf_appendf(&sql,
                      "SELECT bf_key, (to_jsonb(x) - 'bf_key')::text FROM (SELECT %s AS bf_key, "
                      "%s FROM %s WHERE ",
                      tp->key_text, rp->select_named, tp->src_qname);
    s_batch_cond(&sql, src, tp, rp, r, lower, end);
    bf_strbuf_appendf(&sql, " ORDER BY %s LIMIT 1) x", tp->key_list);
    PGresult *res = bf_pg_query(src, sql.buf, 0, NULL);
    bf_strbuf_free(&sql);
    if (!res)
        return -1;
    int rc = 0;
    if (PQntuples(res) == 1) {
        char ids[24];
        snprintf(ids, sizeof ids, "%lld", (long long)r->id);
        *key_out = bf_xstrdup(PQgetvalue(res, 0, 0)); /* whole: it becomes the cursor */
        const char *params[] = {self->job->name,           ids,          rp->label,
                                PQgetvalue(res, 0, 0),     error,        PQgetvalue(res, 0, 1),
                                parked ? "true" : "false", tp->src_label};
        PGresult *ins = NULL;
        if (bf_pg_exec(tgt, BF_REJECTS_DDL) != 0 ||
            !(ins = bf_pg_query(tgt, BF_REJECTS_INSERT, 8, params)))
            rc = -2;
        PQclear(ins);
    }
    PQclear(res);
    return rc;
}

static bool s_is_row_error(const char *sqlstate)
{
    /* 22: data exception (value too long, out of range...), 23: integrity violation
     * (unique, check, not null, foreign key): the row's fault, not the job's. */
    return strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0;
}

/* What a foreign key's refusal names: "Key (col)=(value) is not present in table
 * "table"." (row_detail fits each part). A key of several columns names them
 * joined by ", ", and their values (as text) the same way. */
typedef struct {
    char col[1024], value[1024], table[1024];
    int ncols;
} fk_ref_t;

/* Parses a foreign key's refusal into *ref. False when the detail is not of that
 * form (no detail without the privilege to read the row). */
static bool s_fk_detail(const char *detail, fk_ref_t *ref)
{
    static const char tail_text[] = ") is not present in table \"";
    const char *k = strncmp(detail, "Key (", 5) == 0 ? detail + 5 : NULL;
    const char *eq = k ? strstr(k, ")=(") : NULL;
    const char *tail = eq ? strstr(eq, tail_text) : NULL;
    if (!tail)
        return false;
    const char *tn = tail + strlen(tail_text), *te = strrchr(tn, '"');
    if (!te)
        return false;
    snprintf(ref->col, sizeof ref->col, "%.*s", (int)(eq - k), k);
    snprintf(ref->value, sizeof ref->value, "%.*s", (int)(tail - eq - 3), eq + 3);
    snprintf(ref->table, sizeof ref->table, "%.*s", (int)(te - tn), tn);
    ref->ncols = 1;
    for (const char *c = ref->col; (c = strstr(c, ", ")) != NULL; c += 2)
        ref->ncols++;
    return true;
}

/* The text a refusal prints for columns cols ("a" or "a, b", as s_fk_detail keeps
 * them) of the rows of alias: a.a::text, or a.a::text || ', ' || a.b::text. NULL
 * when a name cannot be quoted. */
static char *s_fk_text(bf_pg_t *src, const char *alias, const char *cols)
{
    bf_strbuf_t e;
    bf_strbuf_init(&e);
    for (const char *c = cols;;) {
        const char *sep = strstr(c, ", ");
        char *name = bf_xasprintf("%.*s", sep ? (int)(sep - c) : (int)strlen(c), c);
        char *q = bf_pg_ident(src, name);
        free(name);
        if (!q) {
            bf_strbuf_free(&e);
            return NULL;
        }
        bf_strbuf_appendf(&e, "%s%s.%s::text", c == cols ? "" : " || ', ' || ", alias, q);
        free(q);
        if (!sep)
            break;
        c = sep + 2;
    }
    return e.buf;
}

/* Whether job table t is copied in key order (its target table refers to itself:
 * meta tbl:<t>:ordered); read from Redis once. */
static bool s_in_order(bf_copier_t *self, int t)
{
    if (!self->in_order[t]) {
        char f[64];
        int64_t v = 0;
        snprintf(f, sizeof f, "tbl:%d:ordered", t);
        if (bf_rstate_hget_int(self->redis, "meta", f, &v) != 0)
            return false; /* not known now: asked again next time */
        self->in_order[t] = v == 1 ? 1 : -1;
    }
    return self->in_order[t] == 1;
}

/* Where in the batch of route rp (its first batch_rows rows after lower, in key
 * order) the first row is whose target column col (or columns: "a, b", their
 * values joined the same way) holds one of the n values: the
 * row a foreign key refused (the checks run in the order the rows came), or the
 * first that refers to a parked row. 1-based; 0 when no row matches (a value
 * printed another way), -1 on a source error (kept in the connection). A guess
 * (!sure) reads the rows only up to the first match instead of all of them: it is
 * the first as PostgreSQL runs the query (rows numbered and filtered as they come),
 * which SQL does not promise. */
static int64_t s_fk_locate(bf_copier_t *self, const bf_tableplan_t *tp, const bf_route_plan_t *rp,
                           const bf_range_t *r, const char *lower, int64_t batch_rows,
                           const char *col, const char *const *values, int n, bool sure)
{
    bf_pg_t *src = self->src;
    char *qcol = s_fk_text(src, "a", col);
    if (!qcol)
        return 0;
    bf_strbuf_t sql;
    bf_strbuf_init(&sql);
    bf_strbuf_appendf(&sql,
                      "SELECT n FROM (SELECT row_number() OVER () AS n, %s AS v FROM "
                      "(SELECT %s FROM %s WHERE ",
                      qcol, rp->select_named, tp->src_qname);
    free(qcol);
    s_batch_cond(&sql, src, tp, rp, r, lower, NULL);
    bf_strbuf_appendf(&sql, " ORDER BY %s LIMIT %lld) a) b WHERE v = ANY ($1::text[])%s LIMIT 1",
                      tp->key_list, (long long)batch_rows, sure ? " ORDER BY n" : "");
    char *arr = bf_pg_text_array(values, n);
    const char *params[] = {arr};
    PGresult *res = bf_pg_query(src, sql.buf, 1, params);
    bf_strbuf_free(&sql);
    free(arr);
    if (!res)
        return -1;
    int64_t at = PQntuples(res) == 1 ? atoll(PQgetvalue(res, 0, 0)) : 0;
    PQclear(res);
    return at;
}

/* The same for a table with several routes, whose batch is the rows in (the Redis
 * cursor, end] of every route: where in it (1-based, counting every route's rows,
 * as s_batch_end does) the first row of route rp in (lower, end] is whose target
 * column(s) col hold value. 0 when none matches, -1 on a source error. */
static int64_t s_fk_locate_routed(bf_copier_t *self, const bf_tableplan_t *tp,
                                  const bf_route_plan_t *rp, const bf_range_t *r, const char *lower,
                                  const char *end, const char *col, const char *value)
{
    bf_pg_t *src = self->src;
    char *qcol = s_fk_text(src, "a", col);
    if (!qcol)
        return 0;
    bf_strbuf_t sql;
    bf_strbuf_init(&sql);
    bf_strbuf_appendf(&sql,
                      "SELECT bf_key FROM (SELECT row_number() OVER () AS n, a.bf_key, %s "
                      "AS v FROM (SELECT %s AS bf_key, %s FROM %s WHERE ",
                      qcol, tp->key_text, rp->select_named, tp->src_qname);
    free(qcol);
    s_batch_cond(&sql, src, tp, rp, r, lower, end);
    bf_strbuf_appendf(&sql, " ORDER BY %s) a) b WHERE v = $1 ORDER BY n LIMIT 1", tp->key_list);
    const char *params[] = {value};
    PGresult *res = bf_pg_query(src, sql.buf, 1, params);
    bf_strbuf_free(&sql);
    if (!res)
        return -1;
    char *key = PQntuples(res) == 1 ? bf_xstrdup(PQgetvalue(res, 0, 0)) : NULL;
    PQclear(res);
    if (!key)
        return 0;
    char *cond = bf_tableplan_range_cond(tp, src, r->lo, r->cursor, r->hi);
    char *upto = bf_tableplan_key_cmp(tp, src, "<=", key);
    char *count = bf_xasprintf("SELECT count(*) FROM %s WHERE %s AND %s", tp->src_qname, cond,
                               upto ? upto : "FALSE");
    free(cond);
    free(upto);
    free(key);
    res = bf_pg_query(src, count, 0, NULL);
    free(count);
    if (!res)
        return -1;
    int64_t at = PQntuples(res) == 1 ? atoll(PQgetvalue(res, 0, 0)) : 0;
    PQclear(res);
    return at;
}

/* One batch on one target (every route of the table that writes there), in one
 * target transaction with the range's fence row. With reject_route >= 0 the batch
 * is one row that route's target refused: it goes to backfill_rejects instead
 * (park: it referred to a row the target does not have, and is parked there to be
 * tried again when every range is done, if that is still why it is refused).
 * The fence row is the truth about this target: it copies from its own fence
 * cursor, which differs from the Redis cursor only after a crash between a commit
 * and its checkpoint (ahead) or a lost unsynchronised commit (behind). Sets *done
 * when this target holds the whole range (now or already). */
static bf_batch_result_t s_batch_target(bf_copier_t *self, bf_lease_work_t *w,
                                        const bf_tableplan_t *tp, int ti, char **end_p,
                                        bool *final_p, int64_t limit, int reject_route,
                                        const char *reject_error, bool park, int64_t *rows_out,
                                        int64_t *bytes_out, bool *done, int *failed_route)
{
    const char *end = *end_p;
    bool final = *final_p;
    const bf_job_t *job = self->job;
    bf_range_t *r = &w->range;
    bf_pg_t *src = self->src, *tgt = self->tgt[ti];
    const char *label = s_target_label(tp, ti);
    *done = false;

    /* Staging tables live in the session: make them outside the batch transaction. */
    for (int i = 0; i < tp->nroutes; i++) {
        const bf_route_plan_t *rp = &tp->routes[i];
        if (rp->target != ti || !rp->stage || self->stage_gen[tp->index][i] == self->tgt_gen[ti])
            continue;
        if (bf_pg_exec_quiet(tgt, rp->stage_ddl) != 0)
            return s_fail(self, w, tp, rp->label, tgt, "creating the staging table for");
        self->stage_gen[tp->index][i] = self->tgt_gen[ti];
    }

    char ids[24], toks[24], seqs[24];
    snprintf(ids, sizeof ids, "%lld", (long long)r->id);
    snprintf(toks, sizeof toks, "%lld", (long long)r->token);
    snprintf(seqs, sizeof seqs, "%lld", (long long)(r->seq + 1));
    char *mylo = bf_rstate_bound(r->lo), *myhi = bf_rstate_bound(r->hi);
    const char *fparams[] = {job->name, ids, toks, seqs, NULL, NULL, mylo, myhi};
    bf_batch_result_t result = BF_BATCH_RETRY;
    PGresult *res = NULL;
    char *lower = NULL;

    /* Deferred constraints (Django's foreign keys are DEFERRABLE INITIALLY
     * DEFERRED) are checked at the end of each statement: a refused row fails its
     * COPY, where it can be isolated, not the COMMIT. */
    if (bf_pg_exec(tgt, "BEGIN; SET CONSTRAINTS ALL IMMEDIATE") != 0) {
        result = s_fail(self, w, tp, label, tgt, "opening a transaction on the target for");
        goto rollback;
    }
    if (s_take_range(self, tgt, r, fparams) != 0) {
        result = s_fail(self, w, tp, label, tgt, "taking over");
        goto rollback;
    }
    if (!(res = bf_pg_query(tgt, BF_FENCE_ENSURE, 2, fparams))) {
        result = s_fail(self, w, tp, label, tgt, "creating the fence row for");
        goto rollback;
    }
    PQclear(res);
    if (!(res = bf_pg_query(tgt, BF_FENCE_LOCK, 2, fparams))) {
        result = s_fail(self, w, tp, label, tgt, "locking the fence row for");
        goto rollback;
    }
    if (PQntuples(res) != 1) {
        PQclear(res);
        snprintf(w->error, sizeof w->error, "range %lld: fence row vanished (job re-planned?)",
                 (long long)r->id);
        goto rollback;
    }
    int64_t ftoken = atoll(PQgetvalue(res, 0, 0)), fseq = atoll(PQgetvalue(res, 0, 1));
    bool ffinal = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
    lower = PQgetisnull(res, 0, 2) ? NULL : bf_xstrdup(PQgetvalue(res, 0, 2));
    char *flo = PQgetisnull(res, 0, 4) ? NULL : bf_xstrdup(PQgetvalue(res, 0, 4));
    char *fhi = PQgetisnull(res, 0, 5) ? NULL : bf_xstrdup(PQgetvalue(res, 0, 5));
    PQclear(res);
    if (ftoken > r->token) {
        w->fence_token = ftoken;
        snprintf(w->error, sizeof w->error,
                 "range %lld is fenced: target %s holds token %lld, this lease has %lld",
                 (long long)r->id, job->targets[ti].alias, (long long)ftoken, (long long)r->token);
        result = BF_BATCH_FENCED;
    } else if (flo && strcmp(flo, mylo) != 0) {
        /* Another range had this id: Redis lost its split and gave the id again. */
        snprintf(w->error, sizeof w->error,
                 "range %lld: its fence row on target %s belongs to another range (from %s to %s; "
                 "this lease: from %s to %s): redis lost a split and gave the same id to a new "
                 "range (a failover, or a crash with appendfsync everysec). Continuing could copy "
                 "rows twice or skip some: empty the job's target tables and run it again with "
                 "--replan (and keep redis on appendfsync always)",
                 (long long)r->id, job->targets[ti].alias, flo, fhi ? fhi : "?", mylo, myhi);
        result = BF_BATCH_FATAL;
    } else if (fhi && strcmp(fhi, myhi) != 0) {
        /* Splits are written here before Redis hears of them, and hi only shrinks:
         * Redis lost a split of this range. */
        if (fhi[0] == '=') {
            self->resplit = bf_xstrdup(fhi + 1);
            result = BF_BATCH_RESPLIT;
        } else {
            snprintf(w->error, sizeof w->error,
                     "range %lld: target %s's fence row says the range is open-ended, redis says "
                     "it ends at %s",
                     (long long)r->id, job->targets[ti].alias, myhi);
            result = BF_BATCH_FATAL;
        }
    }
    free(flo);
    free(fhi);
    if (result != BF_BATCH_RETRY)
        goto rollback;
    if (ffinal) {
        /* An earlier lease finished this range here; its checkpoint was lost. */
        *done = true;
        bf_pg_exec_quiet(tgt, "ROLLBACK");
        free(lower);
        free(mylo);
        free(myhi);
        return BF_BATCH_MORE;
    }
    bool same = (!lower && !r->cursor) || (lower && r->cursor && strcmp(lower, r->cursor) == 0);
    if (!same) {
        log_info("range %lld: target fence (seq %lld, after %s) differs from redis (seq %lld, "
                 "after %s); continuing from the fence on target %s",
                 (long long)r->id, (long long)fseq, lower ? lower : "the start", (long long)r->seq,
                 r->cursor ? r->cursor : "the start", job->targets[ti].alias);
        if (lower && end) {
            /* Ahead of this whole batch: nothing to write here this time. */
            char *a = bf_tableplan_key_literal(tp, src, lower);
            char *b = bf_tableplan_key_literal(tp, src, end);
            char *sql = bf_xasprintf("SELECT %s >= %s", a ? a : "NULL", b ? b : "NULL");
            free(a);
            free(b);
            res = bf_pg_query(src, sql, 0, NULL);
            free(sql);
            if (!res) {
                result = s_fail(self, w, tp, label, src, "comparing keys of");
                goto rollback;
            }
            bool ahead = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
            PQclear(res);
            if (ahead) {
                bf_pg_exec_quiet(tgt, "ROLLBACK");
                free(lower);
                free(mylo);
                free(myhi);
                return BF_BATCH_MORE;
            }
        }
    }

    if (reject_route >= 0 && !same && limit == 0) {
        /* Several routes: the batch here is not the one row isolated from the
         * Redis cursor (this target is behind it or ahead): setting a row aside
         * could skip others. (One route: every batch, the isolating ones too,
         * starts at this fence, so the row is the one refused.) */
        snprintf(w->error, sizeof w->error,
                 "table %s -> %s: the target refused a row while it was behind its checkpoint "
                 "(fence after %s, redis after %s): %s",
                 tp->src_label, tp->routes[reject_route].label, lower ? lower : "the start",
                 r->cursor ? r->cursor : "the start", reject_error);
        result = BF_BATCH_FATAL;
        goto rollback;
    }
    /* Setting a refused row aside: it is tried once more first (the row it refers
     * to may have come, or the row changed), and set aside only if still refused. */
    if (reject_route >= 0 && bf_pg_exec(tgt, "SAVEPOINT bf_row") != 0) {
        result = s_fail(self, w, tp, label, tgt, "trying again a refused row of");
        goto rollback;
    }
    int64_t rows = 0, bytes = 0;
    int set_aside_parked = 0, set_aside_rejected = 0; /* counted once committed */
    bool set_aside = false;
    for (int i = 0; i < tp->nroutes && !set_aside; i++) {
        const bf_route_plan_t *rp = &tp->routes[i];
        if (rp->target != ti)
            continue;
        int64_t n = 0, b = 0;
        bool src_failed = false;
        if (s_copy_route(self, src, tgt, tp, rp, r, lower, end, limit, &n, &b, &src_failed) != 0) {
            bool row_error = !src_failed && !self->abandoning && !bf_pg_error_is_retryable(tgt) &&
                             s_is_row_error(tgt->sqlstate);
            result = s_fail(self, w, tp, rp->label, src_failed ? src : tgt,
                            src_failed                      ? "reading the source"
                            : bf_pg_error_is_retryable(tgt) ? "writing to the target"
                                                            : "the target rejected rows in");
            if (row_error) {
                *failed_route = i;
                result = BF_BATCH_ROW_ERROR;
                snprintf(self->row_error, sizeof self->row_error, "%s%s%s%s", tgt->errmsg,
                         tgt->detail[0] ? " (" : "", tgt->detail, tgt->detail[0] ? ")" : "");
                snprintf(self->row_sqlstate, sizeof self->row_sqlstate, "%s", tgt->sqlstate);
                snprintf(self->row_detail, sizeof self->row_detail, "%s", tgt->detail);
                free(self->row_lower);
                self->row_lower = lower ? bf_xstrdup(lower) : NULL;
            }
            if (row_error && reject_route >= 0 &&
                bf_pg_exec(tgt, "ROLLBACK TO SAVEPOINT bf_row") == 0) {
                /* Refused again: set aside below, with this error. */
                reject_route = i;
                reject_error = self->row_error;
                set_aside = true;
                rows = bytes = 0;
                result = BF_BATCH_RETRY;
                continue;
            }
            goto rollback;
        }
        rows += n;
        bytes += b;
        if (limit > 0) {
            /* Keyed batch: it ends at the last row copied, or at the range's end:
             * the source sent fewer rows than asked for (not the target's count:
             * a trigger may drop rows), unless it was cut short. */
            int64_t sent = self->src_rows >= 0 ? self->src_rows : n;
            final = sent < limit && !self->cut;
            if (self->cut)
                log_debug("range %lld: batch ended early after %lld rows, at key %s, to split",
                          (long long)r->id, (long long)n, self->last_key);
            *end_p = final ? NULL : bf_xstrdup(self->last_key);
            end = *end_p;
        }
    }
    if (reject_route >= 0 && !set_aside && w->predicted)
        log_debug("range %lld: the row predicted to refer to a parked row went in",
                  (long long)r->id);
    else if (reject_route >= 0 && !set_aside)
        log_info("range %lld: the row target %s refused went in when tried again (%s before)",
                 (long long)r->id, job->targets[ti].alias, reject_error);
    bool parked = set_aside && park && strcmp(self->row_sqlstate, SQLSTATE_FK) == 0;
    if (set_aside && park && !parked && w->predicted) {
        /* A predicted row refused for another reason: refused like any row (the
         * caller sets it aside as --max-rejects allows, or stops). */
        result = BF_BATCH_ROW_ERROR;
        goto rollback;
    }
    if (set_aside && park && !parked) {
        /* Refused again, for another reason now: that is not for parking; the
         * retried lease isolates it again (and sets it aside as --max-rejects
         * allows). */
        snprintf(w->error, sizeof w->error,
                 "range %lld: a row refused for a missing referenced row was refused again for "
                 "another reason (%s)",
                 (long long)r->id, self->row_error);
        result = BF_BATCH_RETRY;
        goto rollback;
    }
    if (set_aside) {
        char *key = NULL;
        int rc = s_write_reject(self, src, tgt, tp, &tp->routes[reject_route], r, lower, end,
                                reject_error, parked, &key);
        if (rc != 0) {
            result = s_fail(self, w, tp, tp->routes[reject_route].label, rc == -1 ? src : tgt,
                            "recording a rejected row of");
            goto rollback;
        }
        if (limit > 0) {
            /* Keyed batch: it is that one row (none: the range is done here). */
            final = !key;
            *end_p = key ? bf_xstrdup(key) : NULL;
            end = *end_p;
        }
        if (key && parked) {
            set_aside_parked = 1;
            log_warn("table %s -> %s: row with key %s refers to a row target %s does not have "
                     "yet: parked in public.backfill_rejects there, tried again when every range "
                     "is done (%s)",
                     tp->src_label, tp->routes[reject_route].label, key, job->targets[ti].alias,
                     reject_error);
        } else if (key) {
            set_aside_rejected = 1;
            log_warn("table %s -> %s: row with key %s rejected, kept in public.backfill_rejects "
                     "on target %s: %s",
                     tp->src_label, tp->routes[reject_route].label, key, job->targets[ti].alias,
                     reject_error);
        }
        free(key);
    }
    fparams[4] = end ? end : lower;
    fparams[5] = final ? "true" : "false";
    if (final && bf_pg_exec(tgt, "SET LOCAL synchronous_commit = on") != 0) {
        result = s_fail(self, w, tp, label, tgt, "finishing");
        goto rollback;
    }
    if (!(res = bf_pg_query(tgt, BF_FENCE_UPDATE, 8, fparams)) || bf_pg_exec(tgt, "COMMIT") != 0) {
        PQclear(res);
        result = s_fail(self, w, tp, label, tgt, "committing");
        goto rollback;
    }
    PQclear(res);
    w->parked += set_aside_parked;
    w->rejects += set_aside_rejected;
    free(lower);
    free(mylo);
    free(myhi);
    bf_fault_point("after-commit");
    *final_p = final;
    *rows_out += rows;
    *bytes_out += bytes;
    *done = final;
    return BF_BATCH_MORE;

rollback:
    if (bf_pg_is_alive(tgt))
        bf_pg_exec_quiet(tgt, "ROLLBACK");
    free(lower);
    free(mylo);
    free(myhi);
    return result;
}

static char *s_key_after(bf_pg_t *src, const bf_tableplan_t *tp, const bf_range_t *r,
                         const char *after, int64_t skip);

/* The first key of the range after the cursor (for messages), or NULL. */
static char *s_first_key(bf_pg_t *src, const bf_tableplan_t *tp, const bf_range_t *r)
{
    return s_key_after(src, tp, r, r->cursor, 0);
}

/* Sizes the table's next batch from the one just done (n rows asked, rows and
 * bytes copied in ms): about batch_ms long and at most batch_max_mb, changing by
 * at most a factor of 2 at a time so one odd batch does not swing it. */
static void s_adapt(bf_copier_t *self, const bf_job_t *job, int t, int64_t n, int64_t rows,
                    int64_t bytes, long long ms)
{
    if (rows <= 0 || job->batch_ms == 0)
        return;
    double want = (double)rows * (double)job->batch_ms / (double)(ms > 0 ? ms : 1);
    double cap = (double)job->batch_max_mb * 1048576.0 / ((double)bytes / (double)rows + 1.0);
    if (want > cap)
        want = cap;
    if (want > 2.0 * (double)n)
        want = 2.0 * (double)n;
    if (want < (double)n / 2.0)
        want = (double)n / 2.0;
    int64_t next = want < 1.0 ? 1 : want > 1e7 ? 10000000 : (int64_t)want;
    if (next != self->batch_size[t])
        log_debug("table %s: next batch %lld rows (last: %lld rows, %.1f MB in %lld ms)",
                  self->plans[t].src_label, (long long)next, (long long)rows, (double)bytes / 1e6,
                  ms);
    self->batch_size[t] = next;
}

/* One more than the largest range id in the job's fence rows on the table's
 * targets (*floor), for a split's new part: Redis may have lost a split whose part
 * holds an id there, and must not give it to another range. 0, or -1 (w->error). */
static int s_id_floor(bf_copier_t *self, bf_lease_work_t *w, const bf_tableplan_t *tp,
                      int64_t *floor)
{
    *floor = 0;
    const char *params[] = {self->job->name};
    for (int i = 0; i < tp->nroutes; i++) {
        int ti = tp->routes[i].target;
        if (!s_first_of_target(tp, i))
            continue;
        PGresult *res = self->tgt[ti] ? bf_pg_query(self->tgt[ti], BF_FENCE_MAX, 1, params) : NULL;
        if (!res) {
            snprintf(w->error, sizeof w->error, "target %s: reading the fence rows' ids: %s",
                     self->job->targets[ti].alias,
                     self->tgt[ti] ? self->tgt[ti]->errmsg : "not connected");
            return -1;
        }
        int64_t next = atoll(PQgetvalue(res, 0, 0));
        PQclear(res);
        if (next > *floor)
            *floor = next;
    }
    return 0;
}

/* A target's fence rows say the range ends at self->resplit, Redis that it goes
 * on: Redis lost the split (a failover, a crash with appendfsync everysec). Make
 * it again; the part after the key gets the id it had when its fence rows show
 * one (they tell where it got to) and no range has it since. BF_BATCH_MORE: the
 * batch is to run again (nothing was committed). */
static bf_batch_result_t s_resplit(bf_copier_t *self, bf_lease_work_t *w, const bf_tableplan_t *tp)
{
    bf_range_t *r = &w->range;
    char *key = self->resplit, *lo = bf_rstate_bound(key), ids[24];
    self->resplit = NULL;
    snprintf(ids, sizeof ids, "%lld", (long long)r->id);
    int64_t want = -1;
    for (int i = 0; i < tp->nroutes && want < 0; i++) {
        if (!s_first_of_target(tp, i))
            continue;
        const char *params[] = {self->job->name, lo, ids};
        PGresult *res = bf_pg_query(self->tgt[tp->routes[i].target], BF_FENCE_FIND_LO, 3, params);
        if (!res) {
            free(key);
            free(lo);
            return s_fail(self, w, tp, tp->routes[i].label, self->tgt[tp->routes[i].target],
                          "looking for the other part of a lost split of");
        }
        if (PQntuples(res) == 1)
            want = atoll(PQgetvalue(res, 0, 0));
        PQclear(res);
    }
    free(lo);
    int64_t nid = -1, floor = 0;
    if (want < 0 && s_id_floor(self, w, tp, &floor) != 0) {
        free(key);
        return BF_BATCH_RETRY;
    }
    int s = bf_rstate_split(self->redis, r->id, r->token, key, 0, 0, want, floor, &nid);
    if (s != 0) {
        if (s == 1)
            snprintf(w->error, sizeof w->error, "range %lld was leased to another worker",
                     (long long)r->id);
        else if (s == 2)
            snprintf(w->error, sizeof w->error,
                     "range %lld: redis lost its split at key %s (a failover, or a crash with "
                     "appendfsync everysec) and gave the id of the part after it, %lld, to "
                     "another range since. Continuing could copy rows twice: empty the job's "
                     "target tables and run it again with --replan (and keep redis on "
                     "appendfsync always)",
                     (long long)r->id, key, (long long)want);
        else
            snprintf(w->error, sizeof w->error, "%s", self->redis->errmsg);
        free(key);
        return s == 1 ? BF_BATCH_FENCED : s == 2 ? BF_BATCH_FATAL : BF_BATCH_RETRY;
    }
    log_warn("range %lld: its fence rows say it was split at key %s, which redis does not know "
             "(redis lost writes: a failover, or a crash with appendfsync everysec); split "
             "again: range %lld takes the part after it%s",
             (long long)r->id, key, (long long)nid,
             want >= 0 ? " (the id it had: it goes on from its fence rows)" : "");
    free(r->hi);
    r->hi = key;
    return BF_BATCH_MORE;
}

/* Before a split reaches Redis: the range's new hi (key) in its fence row on every
 * target of the table, committed durably, so that a Redis that loses the split
 * cannot make the part after key copied twice or not at all (s_resplit). 0, 1
 * when the lease is fenced, -1 on error (w->error). */
static int s_record_hi(bf_copier_t *self, bf_lease_work_t *w, const bf_tableplan_t *tp,
                       const char *key)
{
    bf_range_t *r = &w->range;
    char ids[24], toks[24];
    snprintf(ids, sizeof ids, "%lld", (long long)r->id);
    snprintf(toks, sizeof toks, "%lld", (long long)r->token);
    char *hi = bf_rstate_bound(key);
    const char *params[] = {self->job->name, ids, hi};
    int rc = 0;
    for (int i = 0; i < tp->nroutes && rc == 0; i++) {
        int ti = tp->routes[i].target;
        bf_pg_t *tgt = self->tgt[ti];
        if (!s_first_of_target(tp, i) || !tgt)
            continue;
        PGresult *res = NULL;
        rc = -1;
        if (bf_pg_exec(tgt, "BEGIN") == 0 && s_take_range(self, tgt, r, params) == 0 &&
            (res = bf_pg_query(tgt, BF_FENCE_LOCK, 2, params))) {
            if (PQntuples(res) == 1 && atoll(PQgetvalue(res, 0, 0)) > r->token) {
                rc = 1;
            } else if (PQntuples(res) == 1) {
                PQclear(res);
                res = NULL;
                if (bf_pg_exec(tgt, "SET LOCAL synchronous_commit = on") == 0 &&
                    (res = bf_pg_query(tgt, BF_FENCE_SET_HI, 3, params)) &&
                    bf_pg_exec(tgt, "COMMIT") == 0)
                    rc = 0;
            }
        }
        PQclear(res);
        if (rc != 0) {
            if (rc < 0)
                snprintf(w->error, sizeof w->error,
                         "target %s: recording a split of range %lld: %s",
                         self->job->targets[ti].alias, (long long)r->id, tgt->errmsg);
            if (bf_pg_is_alive(tgt))
                bf_pg_exec_quiet(tgt, "ROLLBACK");
        }
    }
    free(hi);
    return rc;
}

static void s_parked_add(struct parked_keys *pk, const char *key)
{
    if (pk->n == PARKED_KEYS_MAX)
        return;
    if (pk->n == pk->cap) {
        pk->cap = pk->cap ? pk->cap * 2 : 16;
        pk->keys = bf_xrealloc(pk->keys, (size_t)pk->cap * sizeof *pk->keys);
    }
    pk->keys[pk->n++] = bf_xstrdup(key);
}

/* Keeps the key of a row just parked (its table refers to itself through col), for
 * s_skip_parked, which looks again: rows may refer to this one. */
static void s_remember_parked(struct parked_keys *pk, const char *col, const char *key)
{
    if (pk->col && strcmp(pk->col, col) != 0)
        return; /* a second self-reference: its refusals find its rows */
    if (!pk->col)
        pk->col = bf_xstrdup(col);
    s_parked_add(pk, key);
    pk->misses = 0;
}

/* At the start of a lease of a table copied in key order: the keys of its rows on
 * the target's backfill_rejects (parked by any worker, or set aside), which the
 * rows referring to them cannot go in without. 0 or -1 (a target error). */
static int s_load_parked(bf_copier_t *self, const bf_tableplan_t *tp)
{
    struct parked_keys *pk = &self->pk[tp->index];
    const bf_route_plan_t *rp = &tp->routes[0];
    bf_pg_t *tgt = self->tgt[rp->target];
    int exists = bf_pg_exists(tgt, "public.backfill_rejects");
    if (exists < 0)
        return -1;
    for (int i = 0; i < pk->n; i++)
        free(pk->keys[i]);
    pk->n = 0;
    if (!exists)
        return 0;
    char lim[24];
    snprintf(lim, sizeof lim, "%d", PARKED_KEYS_MAX);
    const char *params[] = {self->job->name, rp->label, lim, tp->src_label};
    PGresult *res =
        bf_pg_query(tgt,
                    "SELECT key, error FROM public.backfill_rejects WHERE job = $1 AND tbl = $2 "
                    "AND src IN ($4, '') LIMIT $3::int",
                    4, params);
    if (!res)
        return -1;
    const char *own = strrchr(rp->label, '.');
    for (int i = 0; i < PQntuples(res); i++) {
        s_parked_add(pk, PQgetvalue(res, i, 0));
        /* A row parked by another worker names the referring column in its error:
         * "... (Key (col)=(value) is not present in table "t".)". */
        const char *detail = pk->col ? NULL : strstr(PQgetvalue(res, i, 1), "(Key (");
        fk_ref_t ref;
        if (detail && own && s_fk_detail(detail + 1, &ref) && ref.ncols == 1 &&
            strcmp(ref.table, own + 1) == 0)
            pk->col = bf_xstrdup(ref.col);
    }
    PQclear(res);
    return 0;
}

/* Looks in a row that found no row referring to a parked one (or found one that
 * then went in), after which s_skip_parked stops looking in the table (reading a
 * batch's rows twice costs the source about a tenth more) until this worker parks
 * a row again. */
#define PREDICT_MISSES_MAX 4

/* Before a batch of a table where this worker parked rows: a row of the batch that
 * refers to one of them would be refused, and a refused COPY costs the whole
 * batch. Find the first such row in the source; the batch then ends before it,
 * and it comes alone next (refused, parked), after which batches are full again.
 * *batch_rows shrinks; -1 on a source error. (A guess: a row it misses is found
 * when its batch is refused, as without it.) */
static int s_skip_parked(bf_copier_t *self, bf_lease_work_t *w, const bf_tableplan_t *tp,
                         int64_t *batch_rows)
{
    struct parked_keys *pk = &self->pk[tp->index];
    bf_range_t *r = &w->range;
    if (!pk->col || pk->n == 0 || tp->nroutes != 1 || w->located ||
        pk->misses >= PREDICT_MISSES_MAX)
        return 0;
    int64_t at = s_fk_locate(self, tp, &tp->routes[0], r, r->cursor, *batch_rows, pk->col,
                             (const char *const *)pk->keys, pk->n, false);
    if (at < 0) {
        if (!bf_pg_is_alive(self->src) || bf_pg_error_is_retryable(self->src))
            return -1;
        /* Only a guess: copy on without it (refusals find such rows). */
        log_warn("table %s: looking for rows that refer to parked rows failed (%s); not "
                 "looking any more",
                 tp->src_label, self->src->errmsg);
        pk->misses = PREDICT_MISSES_MAX;
        return 0;
    }
    pk->misses = at == 0 ? pk->misses + 1 : 0;
    if (at == 0)
        return 0;
    log_debug("range %lld: row %lld of the next %lld refers to a row parked here; %s",
              (long long)r->id, (long long)at, (long long)*batch_rows,
              at > 1 ? "copying the rows before it" : "taking it alone");
    w->located = true;
    w->predicted = true;
    w->alone_next = at > 1;
    w->resume_limit = self->batch_size[tp->index];
    w->limit = at > 1 ? at - 1 : 1;
    *batch_rows = w->limit;
    return 0;
}

/* A batch's reads and writes: its end (several routes), then each target of the
 * table in turn, one transaction each (none spans two databases). Returns
 * BF_BATCH_MORE when every target committed (*end_p, *final_p, *rows, *bytes and
 * *all_done set), with *redo when nothing was committed and the batch is to run
 * again with fewer rows (isolating a refused row); else the batch's result. */
static bf_batch_result_t s_batch_write(bf_copier_t *self, bf_lease_work_t *w, bf_tableplan_t *tp,
                                       int64_t batch_rows, int64_t limit, char **end_p,
                                       bool *final_p, int64_t *rows, int64_t *bytes, bool *all_done,
                                       bool *redo)
{
    const bf_job_t *job = self->job;
    bf_range_t *r = &w->range;
    char *end = NULL;
    bool final = false;
    if (limit == 0 && s_batch_end(self->src, tp, r, batch_rows, &end, &final) != 0) {
        free(end);
        return s_fail(self, w, tp, tp->routes[0].label, self->src, "reading the source");
    }

    /* Each target of the table in turn (one transaction each; no transaction spans
     * two databases). */
    for (int i = 0; i < tp->nroutes; i++) {
        int ti = tp->routes[i].target;
        if (!s_first_of_target(tp, i))
            continue;
        if (i > 0)
            bf_fault_point("between-targets");
        bool done = false;
        int failed_route = -1;
        /* A row predicted to refer to a row parked here, alone: tried once, in the
         * savepoint that parks it when refused (not first in a batch of its own,
         * which the target would refuse: one transaction per parked row saved). */
        bool direct = w->predicted && w->located && !w->alone_next && limit == 1 &&
                      tp->nroutes == 1 && self->pk[tp->index].col;
        int64_t parked_first = w->parked;
        bf_batch_result_t br = s_batch_target(self, w, tp, ti, &end, &final, limit, direct ? 0 : -1,
                                              direct ? "it refers to a row parked here" : NULL,
                                              direct, rows, bytes, &done, &failed_route);
        if (direct && br == BF_BATCH_MORE && end && w->parked > parked_first)
            s_remember_parked(&self->pk[tp->index], self->pk[tp->index].col, end);
        bool fk = br == BF_BATCH_ROW_ERROR && strcmp(self->row_sqlstate, SQLSTATE_FK) == 0;
        fk_ref_t ref;
        bool fk_parsed = fk && s_fk_detail(self->row_detail, &ref);
        /* A table copied in key order that refers to a row of its own that is not
         * there: the row has a greater key (or is parked, or missing), and waiting
         * cannot bring it (the next range waits for this one). */
        const char *tlabel = fk_parsed ? strrchr(tp->routes[failed_route].label, '.') : NULL;
        bool own = fk_parsed && tlabel && strcmp(tlabel + 1, ref.table) == 0 &&
                   s_in_order(self, tp->index);
        if (fk && w->limit == 0 && !own) {
            /* A row refers to one the target does not have: it may come with a range
             * copied meanwhile (a self-reference, a cycle, a table outside the order).
             * Set the range back for a while, as long as the job still commits
             * batches; else isolate the row below. */
            char why[1100];
            snprintf(why, sizeof why, "target %s: %s", job->targets[ti].alias, self->row_error);
            int64_t after = 0;
            int d = bf_rstate_defer(self->redis, r->id, r->token, why, DEFER_MS, &after);
            if (d == 0 || d == 2) {
                free(end);
                if (d == 2) {
                    snprintf(w->error, sizeof w->error,
                             "range %lld: %s; the lease is no longer held", (long long)r->id, why);
                    return BF_BATCH_FENCED;
                }
                snprintf(w->error, sizeof w->error,
                         "range %lld: a row refers to one target %s does not have yet (%s); the "
                         "range is retried in %.1f s",
                         (long long)r->id, job->targets[ti].alias, self->row_error,
                         (double)after / 1000.0);
                return BF_BATCH_DEFERRED;
            }
            if (d < 0) {
                free(end);
                snprintf(w->error, sizeof w->error, "%s", self->redis->errmsg);
                return BF_BATCH_RETRY;
            }
            log_info("range %lld: a row refers to one target %s does not have, and no batch was "
                     "committed since the range was last set back: isolating the row",
                     (long long)r->id, job->targets[ti].alias);
        }
        if (br == BF_BATCH_ROW_ERROR) {
            /* The target refused a row. Isolate it by halving the batch; then keep it
             * aside in backfill_rejects as far as --max-rejects allows, else stop the
             * job naming the row's key. A row that refers to one the target does not
             * have is parked there instead (waiting did not bring that row: it may be
             * in a later range of its own table, or refer to a parked row). */
            if (batch_rows > 1) {
                /* A foreign key names the value: the refused row is the first of the
                 * batch that holds it; the rows before it go in, then it alone. */
                const char *value = ref.value;
                const bf_route_plan_t *frp = &tp->routes[failed_route];
                int64_t at = !fk_parsed  ? 0
                             : limit > 0 ? s_fk_locate(self, tp, frp, r, self->row_lower,
                                                       batch_rows, ref.col, &value, 1, true)
                                         : s_fk_locate_routed(self, tp, frp, r, self->row_lower,
                                                              end, ref.col, ref.value);
                if (at < 0 && (!bf_pg_is_alive(self->src) || bf_pg_error_is_retryable(self->src))) {
                    free(end);
                    return s_fail(self, w, tp, tp->routes[failed_route].label, self->src,
                                  "finding the refused row in the source for");
                }
                if (at < 0) {
                    /* (A column the refusal names that the source cannot read so.) */
                    log_warn("range %lld: finding the refused row by its value failed (%s); "
                             "halving the batch instead",
                             (long long)r->id, self->src->errmsg);
                    at = 0;
                }
                w->located = at > 0 && at <= batch_rows;
                w->predicted = false;
                if (w->located) {
                    w->alone_next = at > 1;
                    w->limit = at > 1 ? at - 1 : 1;
                    w->resume_limit = w->limit;
                    log_info("range %lld: target %s refused row %lld of a %lld-row batch (%s); "
                             "%s",
                             (long long)r->id, job->targets[ti].alias, (long long)at,
                             (long long)batch_rows, self->row_error,
                             at > 1 ? "copying the rows before it" : "taking it alone");
                } else {
                    w->limit = batch_rows / 2;
                    log_info("range %lld: target %s rejected a row of a %lld-row batch; retrying "
                             "with %lld rows to isolate it",
                             (long long)r->id, job->targets[ti].alias, (long long)batch_rows,
                             (long long)w->limit);
                }
                free(end);
                *redo = true; /* nothing committed: the batch is redone */
                return BF_BATCH_MORE;
            }
            char *key = end ? bf_xstrdup(end) : s_first_key(self->src, tp, r);
            const bf_route_plan_t *rp = &tp->routes[failed_route];
            snprintf(w->error, sizeof w->error,
                     "table %s -> %s: the target refused the row with key %s: %s", tp->src_label,
                     rp->label, key ? key : "?", self->row_error);
            free(key);
            int64_t max = 0, total = 0;
            if (!fk && (bf_rstate_hget_int(self->redis, "meta", "max_rejects", &max) != 0 ||
                        bf_rstate_hget_int(self->redis, "stats", "rejects_total", &total) != 0)) {
                free(end);
                snprintf(w->error, sizeof w->error, "%s", self->redis->errmsg);
                return BF_BATCH_RETRY;
            }
            if (!fk && total + 1 > max) {
                free(end);
                size_t n = strlen(w->error);
                if (max > 0)
                    snprintf(w->error + n, sizeof w->error - n,
                             "; %lld rows were refused already, the most --max-rejects allows "
                             "(%lld): see public.backfill_rejects on the targets",
                             (long long)total, (long long)max);
                else
                    snprintf(w->error + n, sizeof w->error - n,
                             "; fix the row or the target, or let the job set such rows aside "
                             "with --max-rejects N");
                return BF_BATCH_FATAL;
            }
            int64_t parked_before = w->parked;
            br = s_batch_target(self, w, tp, ti, &end, &final, limit, failed_route, self->row_error,
                                fk, rows, bytes, &done, &failed_route);
            /* (A key of several columns: its refusals find its rows.) */
            if (br == BF_BATCH_MORE && own && ref.ncols == 1 && limit > 0 && end &&
                w->parked > parked_before)
                s_remember_parked(&self->pk[tp->index], ref.col, end);
        }
        if (br != BF_BATCH_MORE) {
            free(end);
            return br;
        }
        *all_done = *all_done && done;
    }
    *end_p = end;
    *final_p = final;
    return BF_BATCH_MORE;
}

bf_batch_result_t bf_copier_batch(bf_copier_t *self, bf_lease_work_t *w)
{
    self->abandoning = false;
    self->cut_asked = false;
    bf_range_t *r = &w->range;
    const bf_job_t *job = self->job;
    if (r->table < 0 || r->table >= job->ntables) {
        snprintf(w->error, sizeof w->error, "lease names table %d, the job has %d", r->table,
                 job->ntables);
        return BF_BATCH_FATAL;
    }
    if (s_connect(self, r->table, w->error, sizeof w->error) != 0)
        return BF_BATCH_RETRY;
    bf_tableplan_t *tp = &self->plans[r->table];
    if (!self->resolved[r->table]) {
        if (bf_tableplan_resolve(tp, job, r->table, self->src, self->tgt, w->error,
                                 sizeof w->error) != 0) {
            bool alive = bf_pg_is_alive(self->src);
            for (int i = 0; i < job->ntargets; i++)
                alive = alive && (!self->tgt[i] || bf_pg_is_alive(self->tgt[i]));
            return alive ? BF_BATCH_FATAL : BF_BATCH_RETRY;
        }
        self->resolved[r->table] = true;
    }

    /* Once workers wait for work (the coordinator asked for a split), a batch is a
     * quarter of the usual: the range can be split again sooner and its last
     * batch, which nobody can share, ends sooner. */
    int64_t batch_rows = w->limit > 0       ? w->limit
                         : w->short_batches ? (self->batch_size[r->table] + 3) / 4
                                            : self->batch_size[r->table];
    char *end = NULL;
    bool final = false;
    /* One route: the batch is its first batch_rows rows after the cursor, and ends
     * at the last one copied (keyed relay). Several routes must agree on where the
     * batch ends before any of them copies: find that key first. */
    /* Live control: paused, cancelled, or throttled (fewer rows, and a wait). */
    int64_t granted = 0, wait_ms = 0;
    if (bf_rstate_admit(self->redis, batch_rows, &w->control, &granted, &wait_ms) != 0) {
        snprintf(w->error, sizeof w->error, "%s", self->redis->errmsg);
        return BF_BATCH_RETRY;
    }
    if (w->control != BF_ADMIT_RUN)
        return BF_BATCH_PAUSED;
    for (long long until = bf_now_ms() + wait_ms; bf_now_ms() < until;) {
        long long left = until - bf_now_ms();
        usleep((useconds_t)(left > 100 ? 100 : left) * 1000);
        if (self->tick && s_tick(self)) {
            snprintf(w->error, sizeof w->error, "stopped while throttled");
            return BF_BATCH_RETRY;
        }
    }
    bool throttled = granted < batch_rows;
    batch_rows = granted;
    if (!w->parked_loaded && tp->nroutes == 1 && s_in_order(self, r->table)) {
        if (s_load_parked(self, tp) != 0)
            return s_fail(self, w, tp, tp->routes[0].label, self->tgt[tp->routes[0].target],
                          "reading the rows parked on the target for");
        w->parked_loaded = true;
    }
    if (s_skip_parked(self, w, tp, &batch_rows) != 0)
        return s_fail(self, w, tp, tp->routes[0].label, self->src,
                      "finding rows that refer to parked rows in");
    int64_t limit = tp->nroutes == 1 ? batch_rows : 0;
    long long t0 = bf_now_ms();
    /* A table with several routes reads the source once per route: one snapshot
     * for all of them, so that a row whose routing columns change meanwhile goes
     * to exactly one target (READ ONLY: nothing to commit). */
    bool snap = tp->nroutes > 1;
    if (snap && bf_pg_exec(self->src, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY") != 0)
        return s_fail(self, w, tp, tp->routes[0].label, self->src, "reading the source");
    int64_t rows = 0, bytes = 0, rejects_before = w->rejects, parked_before = w->parked;
    bool all_done = true, redo = false;
    bf_batch_result_t br = s_batch_write(self, w, tp, batch_rows, limit, &end, &final, &rows,
                                         &bytes, &all_done, &redo);
    if (snap && bf_pg_is_alive(self->src))
        bf_pg_exec_quiet(self->src, "ROLLBACK");
    if (br == BF_BATCH_RESPLIT)
        return s_resplit(self, w, tp);
    if (br != BF_BATCH_MORE || redo)
        return br;
    if (w->limit > 0 && w->located && w->alone_next) { /* the rows before the refused one */
        w->limit = 1;
        w->alone_next = false;
    } else if (w->limit > 0 && w->located) { /* the refused one */
        /* A row predicted to refer to a parked one that went in: a miss. */
        if (w->predicted && w->parked == parked_before)
            self->pk[r->table].misses++;
        w->limit = w->resume_limit * 2 >= self->batch_size[r->table] ? 0 : w->resume_limit * 2;
        w->located = false;
        w->predicted = false;
    } else if (w->limit > 0) /* back to full batches once past the rejected rows */
        w->limit = w->limit * 2 >= self->batch_size[r->table] ? 0 : w->limit * 2;
    else if (!final && !w->short_batches && !throttled)
        s_adapt(self, job, r->table, batch_rows, rows, bytes, bf_now_ms() - t0);
    if (all_done)
        final = true; /* every target holds the range already */

    /* The rows are committed with the fences; now record the checkpoint. A Redis
     * failure is not a loss: the next lease continues from the fences. */
    const char *new_cursor = end ? end : r->cursor;
    bf_cp_result_t cp = BF_CP_ERROR;
    for (int attempt = 0; attempt < 3 && cp == BF_CP_ERROR; attempt++) {
        cp = bf_rstate_checkpoint(self->redis, r->id, r->token, r->seq + 1, new_cursor, rows, bytes,
                                  w->rejects - rejects_before, w->parked - parked_before, final,
                                  self->lease_ttl_ms, bf_now_ms() - t0, r->hi,
                                  self->name[0] ? self->name : NULL);
        if (cp == BF_CP_ERROR)
            usleep(200000 * (attempt + 1));
    }
    if (end) {
        free(r->cursor);
        r->cursor = end;
    }
    r->seq++;
    w->batches++;
    w->rows += rows;
    w->bytes += bytes;
    if (cp == BF_CP_ERROR) {
        snprintf(w->error, sizeof w->error, "checkpoint failed: %s", self->redis->errmsg);
        return BF_BATCH_RETRY;
    }
    if (cp == BF_CP_STALE) {
        snprintf(w->error, sizeof w->error,
                 "range %lld was leased to another worker (or Redis lost a split of it)",
                 (long long)r->id);
        return BF_BATCH_FENCED;
    }
    return final ? BF_BATCH_FINAL : BF_BATCH_MORE;
}

/* The planner's estimate of the rows matching cond (EXPLAIN, no rows read), or -1. */
static int64_t s_estimate_rows(bf_pg_t *src, const bf_tableplan_t *tp, const char *cond)
{
    char *sql =
        bf_xasprintf("EXPLAIN (FORMAT JSON) SELECT 1 FROM %s WHERE %s", tp->src_qname, cond);
    PGresult *res = bf_pg_query(src, sql, 0, NULL);
    free(sql);
    if (!res)
        return -1;
    const char *plan = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "";
    const char *at = strstr(plan, "\"Plan Rows\":"); /* the top node's */
    int64_t est = at ? strtoll(at + strlen("\"Plan Rows\":"), NULL, 10) : -1;
    PQclear(res);
    return est;
}

/* Fewest rows left in a range for a split to be worth its queries. */
#define SPLIT_MIN_ROWS 1000
/* The split keys are found by reading this many keys at most (index-only scans). */
#define SPLIT_MAX_OFFSET 5000000
/* At most this many parts from one split. */
#define SPLIT_MAX_PARTS 16

/* The key `skip` rows after `after` (NULL: from the range's lo) in range r, or NULL. */
static char *s_key_after(bf_pg_t *src, const bf_tableplan_t *tp, const bf_range_t *r,
                         const char *after, int64_t skip)
{
    char *cond = bf_tableplan_range_cond(tp, src, r->lo, after, r->hi);
    char *sql = bf_xasprintf("SELECT %s FROM %s WHERE %s ORDER BY %s OFFSET %lld LIMIT 1",
                             tp->key_text, tp->src_qname, cond, tp->key_list, (long long)skip);
    free(cond);
    PGresult *res = bf_pg_query(src, sql, 0, NULL);
    free(sql);
    char *key = res && PQntuples(res) == 1 ? bf_xstrdup(PQgetvalue(res, 0, 0)) : NULL;
    PQclear(res);
    return key;
}

/* The key column's name as the catalog has it: "id" -> id, "a""b" -> a"b. */
static char *s_unquote(const char *q)
{
    size_t n = strlen(q);
    if (n < 2 || q[0] != '"' || q[n - 1] != '"')
        return bf_xstrdup(q);
    char *out = bf_xcalloc(n, 1), *o = out;
    for (size_t i = 1; i + 1 < n; i++) {
        *o++ = q[i];
        if (q[i] == '"' && q[i + 1] == '"')
            i++;
    }
    return out;
}

/* Split keys from the column's histogram (pg_stats: bounds of equal-row buckets,
 * from the last ANALYZE): the bounds inside what is left of range r, every
 * (bounds / parts)-th of them, each moved to the first real key at or after it
 * (and past the previous key: in order, in the column's own ordering). A few
 * index probes instead of reading the keys in between. One-column keys only.
 * Fills keys[0..parts-2] and returns how many, or -1 when the histogram cannot
 * place them (no statistics, too few bounds in the range): read keys instead. */
static int s_histogram_keys(bf_pg_t *src, const bf_tableplan_t *tp, const bf_range_t *r, int parts,
                            char **keys)
{
    if (tp->nkeys != 1)
        return -1;
    char *col = s_unquote(tp->key_cols[0]);
    char *cond = bf_tableplan_range_cond(tp, src, r->lo, r->cursor, r->hi);
    char *sql = bf_xasprintf(
        /* One pg_stats row: a parent of inheritance children has two, and the
         * one with its children (inherited) describes what the copy reads. */
        "SELECT %s FROM (SELECT unnest(histogram_bounds::text::%s[]) AS %s FROM (SELECT "
        "s.histogram_bounds FROM " BF_SQL_PG_STATS_OF " WHERE c.oid = to_regclass($1) AND "
        "s.attname = $2 ORDER BY s.inherited DESC LIMIT 1) s) h WHERE %s ORDER BY h.%s%s",
        /* h.: not the text output column; in the key column's collation */
        tp->key_text, tp->key_types[0], tp->key_cols[0], cond, tp->key_cols[0], tp->key_colls[0]);
    free(cond);
    const char *params[] = {tp->src_qname, col};
    PGresult *res = bf_pg_query_quiet(src, sql, 2, params);
    free(sql);
    free(col);
    int m = res ? PQntuples(res) : 0;
    if (m < 2 * parts) { /* coarser than a bucket per half part: not good enough */
        PQclear(res);
        return -1;
    }
    int nk = 0;
    for (int j = 1; j < parts; j++) {
        const char *bound = PQgetvalue(res, (int)((int64_t)m * j / parts), 0);
        char *from = bf_tableplan_key_cmp(tp, src, ">=", bound);
        char *rest = bf_tableplan_range_cond(tp, src, r->lo, nk ? keys[nk - 1] : r->cursor, r->hi);
        char *q = from ? bf_xasprintf("SELECT %s FROM %s WHERE %s AND %s ORDER BY %s LIMIT 1",
                                      tp->key_text, tp->src_qname, rest, from, tp->key_list)
                       : NULL;
        free(from);
        free(rest);
        PGresult *k = q ? bf_pg_query(src, q, 0, NULL) : NULL;
        free(q);
        if (k && PQntuples(k) == 1)
            keys[nk++] = bf_xstrdup(PQgetvalue(k, 0, 0));
        PQclear(k);
        if (nk < j)
            break; /* no key past this bound (rows deleted since ANALYZE): fewer parts */
    }
    PQclear(res);
    return nk;
}

int bf_copier_split(bf_copier_t *self, bf_lease_work_t *w, int parts, int *made)
{
    *made = 0;
    bf_range_t *r = &w->range;
    if (w->batches == 0 || r->table < 0 || r->table >= self->job->ntables ||
        !self->resolved[r->table] || !bf_pg_is_alive(self->src) || !s_redis(self))
        return 1; /* no batch yet: the fences may be ahead of the cursor */
    const bf_tableplan_t *tp = &self->plans[r->table];
    char *cond = bf_tableplan_range_cond(tp, self->src, r->lo, r->cursor, r->hi);
    int64_t left = s_estimate_rows(self->src, tp, cond);
    free(cond);
    w->short_batches = true;
    /* Every part at least an eighth of a batch (about 1/8 s of copying at the
     * default batch_ms): less is not worth its queries and a lease. */
    int64_t piece = (self->batch_size[r->table] + 7) / 8;
    if (piece < SPLIT_MIN_ROWS)
        piece = SPLIT_MIN_ROWS;
    if (parts > SPLIT_MAX_PARTS)
        parts = SPLIT_MAX_PARTS;
    while (parts > 1 && left / parts < piece)
        parts--;
    if (parts < 2) {
        log_debug("range %lld: not split (about %lld rows left)", (long long)r->id,
                  (long long)left);
        return 1;
    }
    int64_t step = left / parts;
    if (step * (parts - 1) > SPLIT_MAX_OFFSET)
        step = SPLIT_MAX_OFFSET / (parts - 1);
    /* The keys about every `step` rows past the cursor: real keys, in order; from
     * the histogram when it can place them, else by reading that many keys. */
    char *keys[SPLIT_MAX_PARTS];
    int nk = s_histogram_keys(self->src, tp, r, parts, keys);
    const char *how = "the column's histogram";
    if (nk < 1) {
        how = "index reads";
        nk = 0;
        for (const char *after = r->cursor; nk < parts - 1; after = keys[nk - 1]) {
            char *k = s_key_after(self->src, tp, r, after, step);
            if (!k)
                break; /* fewer rows than estimated */
            keys[nk++] = k;
        }
    }
    log_debug("range %lld: %d split keys from %s", (long long)r->id, nk, how);
    /* The new parts' ids past the targets' fence rows (before anything is
     * recorded: a failed read only declines the split). */
    int64_t floor = 0;
    if (nk > 0 && s_id_floor(self, w, tp, &floor) != 0) {
        log_warn("range %lld: not split: %s", (long long)r->id, w->error);
        for (int j = 0; j < nk; j++)
            free(keys[j]);
        return 1;
    }
    /* The range's new end on the targets first (durably), then Redis. */
    int rc = nk > 0 ? 0 : 1;
    if (nk > 0) {
        int rec = s_record_hi(self, w, tp, keys[0]);
        if (rec != 0) {
            if (rec < 0)
                log_warn("range %lld: not split: %s", (long long)r->id, w->error);
            for (int j = 0; j < nk; j++)
                free(keys[j]);
            return rec == 1 ? 2 : 1;
        }
    }
    /* From the far end: each split gives away [key, hi) and makes key the new hi. */
    for (int j = nk - 1; j >= 0 && rc == 0; j--) {
        int64_t new_id = -1;
        int64_t est_new = j == nk - 1 && left > step * nk ? left - step * nk : step;
        int s = bf_rstate_split(self->redis, r->id, r->token, keys[j], est_new, step * (j + 1), -1,
                                floor, &new_id);
        if (s == 0) {
            log_info("range %lld split at key %s for idle workers: range %lld takes the part "
                     "after it (about %lld rows)",
                     (long long)r->id, keys[j], (long long)new_id, (long long)est_new);
            free(r->hi);
            r->hi = keys[j];
            keys[j] = NULL;
            (*made)++;
        } else {
            if (s < 0)
                snprintf(w->error, sizeof w->error, "%s", self->redis->errmsg);
            rc = s == 1 ? 2 : -1;
        }
    }
    for (int j = 0; j < nk; j++)
        free(keys[j]);
    return rc == 0 && *made == 0 ? 1 : rc;
}

/* The Redis connection, opened when first needed; NULL when Redis is unreachable. */
static bf_rstate_t *s_redis(bf_copier_t *self)
{
    if (!self->redis)
        self->redis = bf_rstate_connect(self->job->redis, self->job->name);
    return self->redis;
}

int bf_copier_fenced(bf_copier_t *self, bf_lease_work_t *w)
{
    if (w->fence_token <= w->range.token || !s_redis(self))
        return 0;
    bf_rstate_t *r = self->redis;
    int64_t id = w->range.id, token = w->range.token;
    /* The counter first (the range must not be leased again below the target's
     * token): a no-op when Redis issued that token, as it did unless it lost
     * writes; the release then says which it was (refused: another holds it). */
    redisReply *f = bf_rstate_cmd(r, "FCALL bf_floor 1 %s %lld 0", bf_rstate_key(r, "meta"),
                                  (long long)w->fence_token);
    bool ok = f && f->type == REDIS_REPLY_ARRAY;
    freeReplyObject(f);
    if (!ok)
        return -1;
    int rel =
        bf_rstate_release(r, id, token, "fenced by a newer token on a target", false, MAX_ATTEMPTS);
    if (rel != 0)
        return rel < 0 ? -1 : 0; /* superseded in Redis too: the usual fencing */
    log_warn("range %lld: a target holds token %lld, newer than this lease's %lld, which redis "
             "still held: redis lost writes (a failover, or a crash with appendfsync "
             "everysec); its token counter is raised past it and the range leased again",
             (long long)id, (long long)w->fence_token, (long long)token);
    return 1;
}

int bf_copier_job_complete(bf_copier_t *self)
{
    return s_redis(self) ? bf_rstate_is_complete(self->redis) : -1;
}

int bf_copier_release(bf_copier_t *self, bf_lease_work_t *w, const char *reason, bool failure)
{
    if (!s_redis(self))
        return -1;
    return bf_rstate_release(self->redis, w->range.id, w->range.token, reason, failure,
                             MAX_ATTEMPTS);
}

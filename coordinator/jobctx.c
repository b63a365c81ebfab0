#include "jobctx.h"

#include "exitcodes.h"
#include "fence.h"
#include "fkorder.h"
#include "log.h"
#include "planner.h"
#include "strbuf.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int bf_jobctx_open(bf_jobctx_t *ctx, const char *path, unsigned need)
{
    memset(ctx, 0, sizeof *ctx);
    char err[1024];
    ctx->job = (need & BF_REDIS_ONLY) ? bf_job_load_file_redis_only(path, err, sizeof err)
                                      : bf_job_load_file(path, err, sizeof err);
    if (!ctx->job) {
        log_error("%s", err);
        return BF_EXIT_USAGE;
    }
    bf_log_set_job(ctx->job->name);
    if (need & BF_NEED_TABLES)
        need |= BF_NEED_SOURCE | BF_NEED_TARGETS;
    if (need & BF_NEED_REDIS) {
        ctx->redis = bf_rstate_connect(ctx->job->redis, ctx->job->name);
        if (!ctx->redis)
            return BF_EXIT_CONNECT;
        int lf = bf_rstate_load_functions(ctx->redis);
        if (lf != 0)
            return lf == -2 ? BF_EXIT_USAGE : BF_EXIT_CONNECT;
    }
    if (need & BF_NEED_SOURCE) {
        ctx->src = bf_pg_connect(ctx->job->source, "source");
        if (!ctx->src)
            return bf_pg_connect_refused() ? BF_EXIT_USAGE : BF_EXIT_CONNECT;
    }
    if (need & BF_NEED_TARGETS) {
        ctx->tgt = bf_xcalloc((size_t)ctx->job->ntargets, sizeof *ctx->tgt);
        for (int i = 0; i < ctx->job->ntargets; i++) {
            char what[96];
            snprintf(what, sizeof what, "target %s", ctx->job->targets[i].alias);
            ctx->tgt[i] = bf_pg_connect(ctx->job->targets[i].dsn, what);
            if (!ctx->tgt[i])
                return bf_pg_connect_refused() ? BF_EXIT_USAGE : BF_EXIT_CONNECT;
        }
    }
    if (need & BF_NEED_TABLES) {
        ctx->tables = bf_xcalloc((size_t)ctx->job->ntables, sizeof *ctx->tables);
        for (int t = 0; t < ctx->job->ntables; t++) {
            if (bf_tableplan_resolve(&ctx->tables[t], ctx->job, t, ctx->src, ctx->tgt, err,
                                     sizeof err) != 0) {
                for (int k = 0; k < t; k++)
                    bf_tableplan_clear(&ctx->tables[k]);
                log_error("%s", err);
                return BF_EXIT_DATA;
            }
        }
        ctx->resolved = true;
        /* A source column not copied next to a target column left to its default
         * looks like a column renamed in the service (its values would be lost
         * without a word: verify compares only what is written). */
        for (int t = 0; t < ctx->job->ntables; t++)
            for (int r = 0; r < ctx->tables[t].nroutes; r++) {
                const bf_route_plan_t *rp = &ctx->tables[t].routes[r];
                if (rp->unread && rp->defaulted)
                    log_warn("%s:%d: table %s -> %s: source column(s) %s are not copied and "
                             "target column(s) %s get their default: if a column was renamed, "
                             "map it under 'columns:' (new_name: old_name); set a target column "
                             "to ~ there to say it is meant",
                             ctx->job->path, ctx->job->tables[t].routes[r].line,
                             ctx->tables[t].src_label, rp->label, rp->unread, rp->defaulted);
            }
    }
    return BF_EXIT_OK;
}

void bf_jobctx_close(bf_jobctx_t *ctx)
{
    if (ctx->resolved)
        for (int t = 0; t < ctx->job->ntables; t++)
            bf_tableplan_clear(&ctx->tables[t]);
    free(ctx->tables);
    if (ctx->tgt)
        for (int i = 0; i < ctx->job->ntargets; i++)
            bf_pg_destroy(&ctx->tgt[i]);
    free(ctx->tgt);
    bf_pg_destroy(&ctx->src);
    bf_rstate_destroy(&ctx->redis);
    bf_job_destroy(&ctx->job);
    memset(ctx, 0, sizeof *ctx);
}

char *bf_jobctx_table_sig(const bf_table_t *t)
{
    bf_strbuf_t b;
    bf_strbuf_init(&b);
    bf_strbuf_appendf(&b, "%s.%s ->", t->from_schema, t->from_table);
    for (int i = 0; i < t->nroutes; i++)
        bf_strbuf_appendf(&b, "%s %s.%s.%s", i ? "," : "", t->routes[i].alias, t->routes[i].schema,
                          t->routes[i].table);
    for (int k = 0; k < t->nkey; k++)
        bf_strbuf_appendf(&b, "%s%s%s", k ? ", " : " key (", t->key[k],
                          k == t->nkey - 1 ? ")" : "");
    return b.buf;
}

/* FNV-1a, 64 bits, of s into *h. */
static void s_fnv(uint64_t *h, const char *s)
{
    for (; s && *s; s++) {
        *h ^= (unsigned char)*s;
        *h *= 1099511628211ULL;
    }
    *h ^= 0xff; /* a separator: ("ab", "c") is not ("a", "bc") */
    *h *= 1099511628211ULL;
}

char *bf_jobctx_table_map(const bf_table_t *t)
{
    uint64_t h = 14695981039346656037ULL;
    s_fnv(&h, bf_mode_name(t->mode));
    s_fnv(&h, t->version ? t->version : "");
    s_fnv(&h, t->where ? t->where : "");
    for (int c = 0; c < t->ncolumns; c++) {
        s_fnv(&h, t->columns[c].name);
        s_fnv(&h, t->columns[c].expr ? t->columns[c].expr : "~");
    }
    for (int i = 0; i < t->nroutes; i++)
        s_fnv(&h, t->routes[i].when ? t->routes[i].when : "");
    return bf_xasprintf("%016llx", (unsigned long long)h);
}

/* The field f of an HGETALL reply, or NULL. */
static const char *s_field(const redisReply *all, const char *f)
{
    for (size_t i = 0; i + 1 < all->elements; i += 2)
        if (strcmp(all->element[i]->str, f) == 0)
            return all->element[i + 1]->str;
    return NULL;
}

/* Whether table t of a job loaded for Redis only still holds an unset "${VAR}"
 * (left as written): its signature and mapping cannot be compared. */
static bool s_unexpanded(const bf_table_t *t)
{
    bool u = strstr(t->from_schema, "${") || strstr(t->from_table, "${") ||
             (t->where && strstr(t->where, "${")) || (t->version && strstr(t->version, "${"));
    for (int i = 0; i < t->nroutes && !u; i++)
        u = strstr(t->routes[i].schema, "${") || strstr(t->routes[i].table, "${") ||
            strstr(t->routes[i].alias, "${") ||
            (t->routes[i].when && strstr(t->routes[i].when, "${"));
    for (int c = 0; c < t->ncolumns && !u; c++)
        u = t->columns[c].expr && strstr(t->columns[c].expr, "${");
    for (int k = 0; k < t->nkey && !u; k++)
        u = strstr(t->key[k], "${");
    return u;
}

/* Whether two table names are the same but for case and double quotes. */
static bool s_same_name(const char *a, const char *b)
{
    for (;;) {
        while (*a == '"')
            a++;
        while (*b == '"')
            b++;
        if (!*a || !*b)
            return !*a && !*b;
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b))
            return false;
        a++;
        b++;
    }
}

int bf_jobctx_check_plan(bf_jobctx_t *ctx, bool replan, bool adopt, bool *mismatch)
{
    const bf_job_t *job = ctx->job;
    bf_rstate_t *r = ctx->redis;
    *mismatch = false;
    redisReply *meta = bf_rstate_cmd(r, "HGETALL %s", bf_rstate_key(r, "meta"));
    if (!meta) {
        log_error("%s", r->errmsg);
        return BF_EXIT_CONNECT;
    }
    const char *v = s_field(meta, "ntables");
    int stored = v ? atoi(v) : 0;
    bool old = false; /* a table without a signature (a plan of an older version) */
    char f[64], what[2600] = "";
    if (stored != job->ntables) {
        snprintf(what, sizeof what, "the plan has %d table%s, the job file lists %d", stored,
                 stored == 1 ? "" : "s", job->ntables);
    }
    for (int t = 0; t < job->ntables && t < stored && !what[0]; t++) {
        snprintf(f, sizeof f, "tbl:%d:sig", t);
        const char *was = s_field(meta, f);
        char *now = bf_jobctx_table_sig(&job->tables[t]);
        if (was && strcmp(was, now) != 0 && !s_unexpanded(&job->tables[t]))
            snprintf(what, sizeof what,
                     "table %d of the job file (line %d) is %s, but the plan's table %d is %s",
                     t + 1, job->tables[t].line, now, t + 1, was);
        free(now);
        if (was)
            continue;
        /* A plan of an older version has no signatures, only each table's source
         * (as the catalog names it: compared without case or quotes). */
        snprintf(f, sizeof f, "tbl:%d:name", t);
        const char *name = s_field(meta, f);
        char *from = bf_xasprintf("%s.%s", job->tables[t].from_schema, job->tables[t].from_table);
        if (name && !s_unexpanded(&job->tables[t]) && !s_same_name(name, from))
            snprintf(what, sizeof what,
                     "table %d of the job file (line %d) is read from %s, but the plan's table "
                     "%d from %s",
                     t + 1, job->tables[t].line, from, t + 1, name);
        free(from);
        old = true;
    }
    if (what[0]) {
        *mismatch = true;
        freeReplyObject(meta);
        if (replan) {
            log_warn("job %s: the job file's tables are not those of the plan in redis (%s): "
                     "planning afresh (--replan)",
                     job->name, what);
            return BF_EXIT_OK;
        }
        log_error("job %s: the job file's tables are not those of the plan in redis (%s). The "
                  "plan's ranges and checkpoints belong to its tables, in its order: put the "
                  "tables back as they were, copy other tables in a job of another name, or "
                  "start this job over (empty its target tables, then run it with --replan)",
                  job->name, what);
        return BF_EXIT_USAGE;
    }
    for (int t = 0; t < job->ntables; t++) {
        snprintf(f, sizeof f, "tbl:%d:map", t);
        const char *was = s_field(meta, f);
        char *now = bf_jobctx_table_map(&job->tables[t]);
        if (was && strcmp(was, now) != 0 && !s_unexpanded(&job->tables[t]))
            log_warn("job %s: the mode, columns, where or route conditions of table %s.%s "
                     "(line %d) changed since the job was planned: rows copied before keep what "
                     "the earlier job file said",
                     job->name, job->tables[t].from_schema, job->tables[t].from_table,
                     job->tables[t].line);
        free(now);
    }
    freeReplyObject(meta);
    if (old && adopt) {
        /* From now on the plan is compared in full. */
        for (int t = 0; t < job->ntables; t++) {
            char *sig = bf_jobctx_table_sig(&job->tables[t]);
            char *map = bf_jobctx_table_map(&job->tables[t]);
            freeReplyObject(bf_rstate_cmd(r, "HSET %s tbl:%d:sig %s tbl:%d:map %s",
                                          bf_rstate_key(r, "meta"), t, sig, t, map));
            free(sig);
            free(map);
        }
    }
    return BF_EXIT_OK;
}

/* bf_rstate_store_plan with each table's signature and mapping hash. */
static int s_store(bf_jobctx_t *ctx, const char **labels, bf_plan_range_t **ranges,
                   const size_t *counts, char **after, const bool *ordered)
{
    int n = ctx->job->ntables;
    char **sigs = bf_xcalloc((size_t)n, sizeof *sigs), **maps = bf_xcalloc((size_t)n, sizeof *maps);
    for (int t = 0; t < n; t++) {
        sigs[t] = bf_jobctx_table_sig(&ctx->job->tables[t]);
        maps[t] = bf_jobctx_table_map(&ctx->job->tables[t]);
    }
    int rc = bf_rstate_store_plan(ctx->redis, n, labels, (const bf_plan_range_t *const *)ranges,
                                  counts, (const char *const *)after, ordered,
                                  (const char *const *)sigs, (const char *const *)maps);
    for (int t = 0; t < n; t++) {
        free(sigs[t]);
        free(maps[t]);
    }
    free(sigs);
    free(maps);
    return rc;
}

int bf_jobctx_plan_and_store(bf_jobctx_t *ctx)
{
    const bf_job_t *job = ctx->job;
    int n = job->ntables;
    bf_plan_range_t **ranges = bf_xcalloc((size_t)n, sizeof *ranges);
    size_t *counts = bf_xcalloc((size_t)n, sizeof *counts);
    const char **labels = bf_xcalloc((size_t)n, sizeof *labels);
    int rc = BF_EXIT_OK;
    for (int t = 0; t < n && rc == BF_EXIT_OK; t++) {
        labels[t] = ctx->tables[t].src_label;
        long long t0 = bf_now_ms();
        if (bf_plan_table(ctx->src, &ctx->tables[t], job->range_rows, &ranges[t], &counts[t]) != 0)
            rc = BF_EXIT_CONNECT;
        else
            log_info("planned %s: %zu ranges in %lld ms", labels[t], counts[t], bf_now_ms() - t0);
    }
    /* A fresh plan starts over: fence rows of an earlier plan would fence it out.
     * Tokens were issued before (an earlier plan): a floor above them fences out
     * its workers (BF_FENCE_FLOOR); the new plan's tokens start a million higher. */
    long long issued = 0;
    if (rc == BF_EXIT_OK) {
        redisReply *f = bf_rstate_cmd(ctx->redis, "GET %s", bf_rstate_key(ctx->redis, "fence"));
        if (!f) {
            log_error("%s", ctx->redis->errmsg);
            rc = BF_EXIT_CONNECT;
        } else if (f->type == REDIS_REPLY_STRING) {
            issued = atoll(f->str);
        }
        freeReplyObject(f);
    }
    for (int i = 0; i < job->ntargets && rc == BF_EXIT_OK; i++) {
        char floor[24];
        snprintf(floor, sizeof floor, "%lld", issued + 1);
        const char *params[] = {job->name, floor};
        PGresult *res = NULL;
        if (bf_pg_exec(ctx->tgt[i], BF_REJECTS_DDL) != 0 ||
            !(res = bf_pg_query(ctx->tgt[i], BF_FENCE_RESET, 1, params)))
            rc = BF_EXIT_CONNECT;
        PQclear(res);
        res = NULL;
        if (rc == BF_EXIT_OK && issued > 0 &&
            !(res = bf_pg_query(ctx->tgt[i], BF_FENCE_FLOOR, 2, params)))
            rc = BF_EXIT_CONNECT;
        PQclear(res);
        res = NULL;
        if (rc == BF_EXIT_OK && !(res = bf_pg_query(ctx->tgt[i], BF_REJECTS_RESET, 1, params)))
            rc = BF_EXIT_CONNECT;
        PQclear(res);
    }
    /* Tables whose target tables refer to others of the job wait for them. */
    bf_fk_graph_t fks = {0};
    char **after = NULL;
    bool *ordered = NULL;
    if (rc == BF_EXIT_OK) {
        char err[1024];
        if (bf_fk_read(&fks, job, ctx->tables, ctx->tgt, err, sizeof err) != 0) {
            log_error("%s", err);
            rc = BF_EXIT_CONNECT;
        } else {
            bf_fk_report(&fks, labels, job, NULL);
            after = bf_fk_after(&fks, n);
            ordered = bf_fk_ordered(&fks, n);
        }
    }
    if (rc == BF_EXIT_OK && s_store(ctx, labels, ranges, counts, after, ordered) != 0)
        rc = BF_EXIT_CONNECT;
    bf_fk_after_free(after, n);
    free(ordered);
    bf_fk_clear(&fks);
    /* Each table's average row width from its statistics, for the ETA (rows of
     * different tables cost differently). Best effort: no statistics, no width. */
    for (int t = 0; t < n && rc == BF_EXIT_OK; t++) {
        const char *params[] = {ctx->tables[t].src_qname};
        PGresult *res = bf_pg_query_quiet(
            ctx->src,
            /* one row per column (with the children, when it has them) */
            "SELECT coalesce(sum(w), 0) FROM (SELECT DISTINCT ON (s.attname) s.avg_width AS w "
            "FROM " BF_SQL_PG_STATS_OF " WHERE c.oid = $1::regclass ORDER BY s.attname, "
            "s.inherited DESC) x",
            1, params);
        long long width = res && PQntuples(res) == 1 ? atoll(PQgetvalue(res, 0, 0)) : 0;
        PQclear(res);
        if (width > 0)
            freeReplyObject(bf_rstate_cmd(ctx->redis, "HSET %s tbl:%d:width %lld",
                                          bf_rstate_key(ctx->redis, "meta"), t, width));
    }
    for (int t = 0; t < n; t++)
        bf_plan_ranges_free(ranges[t], counts[t]);
    free(ranges);
    free(counts);
    free(labels);
    return rc;
}

#include "jobctx.h"

#include "exitcodes.h"
#include "fence.h"
#include "fkorder.h"
#include "log.h"
#include "planner.h"
#include "strbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int bf_jobctx_open(bf_jobctx_t *ctx, const char *path, unsigned need)
{
    memset(ctx, 0, sizeof *ctx);
    char err[1024];
    ctx->job = bf_job_load_file(path, err, sizeof err);
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
        if (bf_rstate_load_functions(ctx->redis) != 0)
            return BF_EXIT_CONNECT;
    }
    if (need & BF_NEED_SOURCE) {
        ctx->src = bf_pg_connect(ctx->job->source, "source");
        if (!ctx->src)
            return BF_EXIT_CONNECT;
    }
    if (need & BF_NEED_TARGETS) {
        ctx->tgt = bf_xcalloc((size_t)ctx->job->ntargets, sizeof *ctx->tgt);
        for (int i = 0; i < ctx->job->ntargets; i++) {
            char what[96];
            snprintf(what, sizeof what, "target %s", ctx->job->targets[i].alias);
            ctx->tgt[i] = bf_pg_connect(ctx->job->targets[i].dsn, what);
            if (!ctx->tgt[i])
                return BF_EXIT_CONNECT;
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
    /* A fresh plan starts over: fence rows of an earlier plan would fence it out. */
    for (int i = 0; i < job->ntargets && rc == BF_EXIT_OK; i++) {
        const char *params[] = {job->name};
        PGresult *res = NULL;
        if (bf_pg_exec(ctx->tgt[i], BF_REJECTS_DDL) != 0 ||
            !(res = bf_pg_query(ctx->tgt[i], BF_FENCE_RESET, 1, params)))
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
    if (rc == BF_EXIT_OK &&
        bf_rstate_store_plan(ctx->redis, n, labels, (const bf_plan_range_t *const *)ranges, counts,
                             (const char *const *)after, ordered) != 0)
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

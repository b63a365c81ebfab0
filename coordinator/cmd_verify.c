/* `backfill verify JOB.yaml`: counts and hashes every range on the source and on
 * its target and lists the ranges that differ. The hash is order-independent (a
 * sum of 60-bit prefixes of each row's md5), so no sort is needed. */
#include "commands.h"
#include "exitcodes.h"
#include "jobctx.h"
#include "log.h"
#include "planner.h"
#include "strbuf.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char count[32];
    char hash[64];
} range_sum_t;

/* Count and hash of `row` over qname's rows matching cond (NULL = all). */
static int s_sum(bf_pg_t *pg, const char *qname, const char *row, const char *cond,
                 range_sum_t *out)
{
    char *sql = bf_xasprintf("SELECT count(*), coalesce(sum(('x' || substr(md5(%s), 1, 15))"
                             "::bit(60)::bigint), 0) FROM %s WHERE %s",
                             row, qname, cond ? cond : "TRUE");
    PGresult *res = bf_pg_query(pg, sql, 0, NULL);
    free(sql);
    if (!res)
        return -1;
    snprintf(out->count, sizeof out->count, "%s", PQgetvalue(res, 0, 0));
    snprintf(out->hash, sizeof out->hash, "%s", PQgetvalue(res, 0, 1));
    PQclear(res);
    return 0;
}

/* The condition for the source side of a route: its rows in the range (lo/hi NULL = open, both NULL
 * and whole = the whole table), without the rows the target refused (excl). */
static char *s_source_cond(bf_pg_t *src, const bf_tableplan_t *tp, const bf_route_plan_t *rp,
                           const char *lo, const char *hi, bool whole, const char *excl)
{
    char *range = whole ? bf_xstrdup("TRUE") : bf_tableplan_range_cond(tp, src, lo, NULL, hi);
    char *cond = bf_xasprintf("%s%s%s%s%s", range, rp->filter ? " AND " : "",
                              rp->filter ? rp->filter : "", excl ? " AND " : "", excl ? excl : "");
    free(range);
    return cond;
}

/* "NOT (key IN (...))" for the rows of this route the target refused (kept in its
 * backfill_rejects), or NULL when none; *n gets their number, *parked how many of
 * them are parked (still to be written). -1 on error. */
static int s_rejected(bf_pg_t *src, bf_pg_t *tgt, const bf_job_t *job, const bf_tableplan_t *tp,
                      const bf_route_plan_t *rp, char **excl, int64_t *n, int64_t *parked)
{
    *excl = NULL;
    *n = 0;
    *parked = 0;
    int exists = bf_pg_exists(tgt, "public.backfill_rejects");
    if (exists <= 0)
        return exists;
    const char *params[] = {job->name, rp->label, tp->src_label};
    PGresult *res =
        bf_pg_query(tgt,
                    "SELECT key, parked FROM public.backfill_rejects WHERE job = $1 AND tbl = $2 "
                    "AND src IN ($3, '')",
                    3, params);
    if (!res)
        return -1;
    *n = PQntuples(res);
    for (int i = 0; i < PQntuples(res); i++)
        *parked += strcmp(PQgetvalue(res, i, 1), "t") == 0;
    if (*n > 0) {
        bf_strbuf_t sb;
        bf_strbuf_init(&sb);
        bf_strbuf_appendf(&sb, "NOT (%s IN (", tp->key_row);
        for (int i = 0; i < PQntuples(res); i++) {
            char *lit = bf_tableplan_key_literal(tp, src, PQgetvalue(res, i, 0));
            bf_strbuf_appendf(&sb, "%s%s", i ? ", " : "", lit ? lit : "NULL");
            free(lit);
        }
        bf_strbuf_append(&sb, "))");
        *excl = bf_strbuf_take(&sb);
    }
    PQclear(res);
    return 0;
}

/* Rows of one side of a range, in key order (as text, byte order on both sides),
 * read through a cursor FETCH_ROWS at a time. */
#define FETCH_ROWS 5000
typedef struct {
    bf_pg_t *pg;
    const char *name; /* cursor */
    PGresult *res;
    int at, n;
    bool done;
} side_t;

static int s_side_open(side_t *s, bf_pg_t *pg, const char *name, const char *key, const char *row,
                       const char *qname, const char *cond)
{
    memset(s, 0, sizeof *s);
    s->pg = pg;
    s->name = name;
    char *sql = bf_xasprintf("DECLARE %s NO SCROLL CURSOR FOR SELECT (%s) COLLATE \"C\" AS k, "
                             "md5(%s) FROM %s WHERE %s ORDER BY 1",
                             name, key, row, qname, cond ? cond : "TRUE");
    int rc = bf_pg_exec(pg, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") != 0 ||
                     bf_pg_exec(pg, sql) != 0
                 ? -1
                 : 0;
    free(sql);
    return rc;
}

/* The side's current row (key, hash), fetching more when needed; NULL at the end
 * or on an error (*err set). */
static const char *s_side_key(side_t *s, const char **hash, bool *err)
{
    if (s->done)
        return NULL;
    if (!s->res || s->at >= s->n) {
        PQclear(s->res);
        char *sql = bf_xasprintf("FETCH %d FROM %s", FETCH_ROWS, s->name);
        s->res = bf_pg_query(s->pg, sql, 0, NULL);
        free(sql);
        s->at = 0;
        s->n = s->res ? PQntuples(s->res) : 0;
        if (!s->res)
            *err = true;
        if (s->n == 0) {
            s->done = true;
            return NULL;
        }
    }
    *hash = PQgetvalue(s->res, s->at, 1);
    return PQgetvalue(s->res, s->at, 0);
}

static void s_side_close(side_t *s)
{
    PQclear(s->res);
    s->res = NULL;
    if (bf_pg_is_alive(s->pg))
        bf_pg_exec_quiet(s->pg, "ROLLBACK");
}

/* Prints the first `max` keys of a mismatching range that differ: on the source
 * and not the target, on the target and not the source, or on both with other
 * values. 0 or -1 (a server error, logged). */
static int s_diff_keys(bf_pg_t *src, bf_pg_t *tgt, const bf_tableplan_t *tp,
                       const bf_route_plan_t *rp, const char *scond, const char *tcond, int max)
{
    side_t a, b;
    int rc = s_side_open(&a, src, "bf_verify_src", tp->key_text, rp->src_row, tp->src_qname, scond);
    if (rc == 0)
        rc = s_side_open(&b, tgt, "bf_verify_tgt", rp->tkey_text, rp->tgt_row, rp->qname, tcond);
    else
        b.pg = NULL;
    int shown = 0;
    bool erra = false, errb = false;
    while (rc == 0 && shown < max) {
        const char *ha = NULL, *hb = NULL;
        const char *ka = s_side_key(&a, &ha, &erra), *kb = s_side_key(&b, &hb, &errb);
        if (erra || errb) {
            rc = -1;
            break;
        }
        if (!ka && !kb)
            break;
        int c = !ka ? 1 : !kb ? -1 : strcmp(ka, kb);
        if (c < 0)
            printf("  key %s: on the source, not on the target\n", ka);
        else if (c > 0)
            printf("  key %s: on the target, not on the source (deleted there, or written by "
                   "another hand)\n",
                   kb);
        else if (strcmp(ha, hb) != 0)
            printf("  key %s: different values\n", ka);
        shown += c != 0 || strcmp(ha, hb) != 0;
        if (c <= 0)
            a.at++;
        if (c >= 0)
            b.at++;
    }
    if (rc == 0 && shown == max)
        printf("  (stopped after %d keys; --keys N lists more)\n", max);
    if (rc != 0)
        log_error("listing the differing keys failed on the %s: %s",
                  erra || !b.pg ? "source" : "target", erra || !b.pg ? src->errmsg : tgt->errmsg);
    s_side_close(&a);
    if (b.pg)
        s_side_close(&b);
    return rc;
}

int bf_cmd_verify(int argc, char **argv)
{
    static const struct option opts[] = {{"keys", required_argument, NULL, 'k'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *usage =
        "usage: backfill verify JOB.yaml [--keys N]\n\n"
        "Compares every range of every table on the source and its target: row count and\n"
        "an order-independent hash of the copied columns. Uses the ranges stored in Redis\n"
        "when the job has a plan there, else plans afresh. Exit 0 when all match, 1 with\n"
        "the mismatching ranges listed, each with the first keys that differ (on the\n"
        "source only, on the target only, or with other values).\n"
        "  --keys N   keys listed per mismatching range (default 10, 0 = none)\n";
    int c;
    long long max_keys = 10;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            fputs(usage, stdout);
            return BF_EXIT_OK;
        }
        if (c == 'k' && bf_parse_ll(optarg, 0, 1000000, &max_keys) == 0)
            continue;
        if (c == 'k')
            fprintf(stderr, "backfill verify: --keys takes a number from 0 to 1000000\n");
        fputs(usage, stderr);
        return BF_EXIT_USAGE;
    }
    if (optind + 1 != argc) {
        fputs(usage, stderr);
        return BF_EXIT_USAGE;
    }
    bf_log_set_role("verify");
    bf_jobctx_t ctx;
    int rc = bf_jobctx_open(&ctx, argv[optind], BF_NEED_TABLES | BF_NEED_REDIS);
    if (rc != BF_EXIT_OK) {
        bf_jobctx_close(&ctx);
        return rc;
    }
    /* Row text depends on these settings: make them the same on both sides. */
    const char *settings = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; "
                           "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "
                           "SET bytea_output = 'hex'";
    bool set_ok = bf_pg_exec(ctx.src, settings) == 0;
    for (int i = 0; i < ctx.job->ntargets; i++)
        set_ok = set_ok && bf_pg_exec(ctx.tgt[i], settings) == 0;
    if (!set_ok) {
        bf_jobctx_close(&ctx);
        return BF_EXIT_CONNECT;
    }
    int planned = bf_rstate_is_planned(ctx.redis);
    int64_t nranges = 0;
    bool mismatch = false;
    if (planned > 0 && (rc = bf_jobctx_check_plan(&ctx, false, false, &mismatch)) != BF_EXIT_OK) {
        bf_jobctx_close(&ctx);
        return rc;
    }
    int64_t counted = 0; /* ranges in Redis (ids of lost splits are not counted) */
    if (planned > 0 && bf_rstate_id_end(ctx.redis, &nranges, &counted) != 0) {
        log_error("%s", ctx.redis->errmsg);
        bf_jobctx_close(&ctx);
        return BF_EXIT_CONNECT;
    }

    /* Gather the ranges: from Redis when planned, else a fresh plan. */
    int n = ctx.job->ntables;
    bf_plan_range_t **ranges = bf_xcalloc((size_t)n, sizeof *ranges);
    size_t *counts = bf_xcalloc((size_t)n, sizeof *counts);
    if (planned > 0) {
        int64_t found = 0;
        for (int64_t id = 0; id < nranges && rc == BF_EXIT_OK; id++) {
            bf_range_t r;
            int got = bf_rstate_get_range(ctx.redis, id, &r);
            if (got == 1)
                continue; /* an id of a lost split, not made again yet */
            if (got != 0 || r.table < 0 || r.table >= n) {
                log_error("cannot read range %lld from redis: %s", (long long)id,
                          ctx.redis->errmsg);
                rc = BF_EXIT_CONNECT;
                break;
            }
            found++;
            ranges[r.table] = bf_xrealloc(ranges[r.table], (counts[r.table] + 1) * sizeof **ranges);
            bf_plan_range_t *pr = &ranges[r.table][counts[r.table]++];
            pr->lo = r.lo;
            pr->hi = r.hi;
            pr->est = r.est;
            r.lo = r.hi = NULL;
            bf_range_clear(&r);
        }
        if (rc == BF_EXIT_OK && found != counted) {
            log_error("redis counts %lld ranges of job %s but holds %lld (were keys of the job "
                      "deleted?): verify cannot tell which rows to compare",
                      (long long)counted, ctx.job->name, (long long)found);
            rc = BF_EXIT_DATA;
        }
    } else {
        for (int t = 0; t < n && rc == BF_EXIT_OK; t++)
            if (bf_plan_table(ctx.src, &ctx.tables[t], ctx.job->range_rows, &ranges[t],
                              &counts[t]) != 0)
                rc = BF_EXIT_CONNECT;
    }

    int64_t mismatches = 0, total_src = 0, total_tgt = 0, total_parked = 0;
    for (int t = 0; t < n && rc == BF_EXIT_OK; t++) {
        const bf_tableplan_t *tp = &ctx.tables[t];
        for (int ri = 0; ri < tp->nroutes && rc == BF_EXIT_OK; ri++) {
            const bf_route_plan_t *rp = &tp->routes[ri];
            bf_pg_t *tgt = ctx.tgt[rp->target];
            int64_t tsrc = 0, ttgt = 0, tbad = 0, nrejected = 0, nparked = 0;
            range_sum_t a, b;
            char *excl = NULL;
            if (s_rejected(ctx.src, tgt, ctx.job, tp, rp, &excl, &nrejected, &nparked) != 0) {
                rc = BF_EXIT_CONNECT;
                break;
            }
            if (!rp->tkey_row) {
                /* The key is not in the target as is: compare the whole table. */
                char *scond = s_source_cond(ctx.src, tp, rp, NULL, NULL, true, excl);
                int e = s_sum(ctx.src, tp->src_qname, rp->src_row, scond, &a);
                free(scond);
                if (e != 0 || s_sum(tgt, rp->qname, rp->tgt_row, NULL, &b) != 0) {
                    rc = BF_EXIT_CONNECT;
                    break;
                }
                tsrc = atoll(a.count);
                ttgt = atoll(b.count);
                if (strcmp(a.count, b.count) != 0 || strcmp(a.hash, b.hash) != 0) {
                    tbad++;
                    printf("MISMATCH %s -> %s (whole table; the key is not copied as is): "
                           "source %s rows, target %s rows%s\n",
                           tp->src_label, rp->label, a.count, b.count,
                           strcmp(a.count, b.count) == 0 ? " (same count, different content)" : "");
                }
            }
            for (size_t i = 0; rp->tkey_row && i < counts[t] && rc == BF_EXIT_OK; i++) {
                const bf_plan_range_t *r = &ranges[t][i];
                char *scond = s_source_cond(ctx.src, tp, rp, r->lo, r->hi, false, excl);
                char *tcond = bf_tableplan_target_range_cond(tp, rp, tgt, r->lo, r->hi);
                int e1 = s_sum(ctx.src, tp->src_qname, rp->src_row, scond, &a);
                int e2 = e1 == 0 ? s_sum(tgt, rp->qname, rp->tgt_row, tcond, &b) : -1;
                if (e1 != 0 || e2 != 0) {
                    free(scond);
                    free(tcond);
                    rc = BF_EXIT_CONNECT;
                    break;
                }
                tsrc += atoll(a.count);
                ttgt += atoll(b.count);
                if (strcmp(a.count, b.count) != 0 || strcmp(a.hash, b.hash) != 0) {
                    tbad++;
                    printf("MISMATCH %s -> %s range [%s, %s): source %s rows, target %s rows%s\n",
                           tp->src_label, rp->label, r->lo ? r->lo : "-inf", r->hi ? r->hi : "+inf",
                           a.count, b.count,
                           strcmp(a.count, b.count) == 0 ? " (same count, different content)" : "");
                    if (max_keys > 0 &&
                        s_diff_keys(ctx.src, tgt, tp, rp, scond, tcond, (int)max_keys) != 0)
                        rc = BF_EXIT_CONNECT;
                }
                free(scond);
                free(tcond);
            }
            free(excl);
            printf("%-40s -> %-32s source %10lld rows, target %10lld rows, %zu ranges, %lld "
                   "mismatching",
                   tp->src_label, rp->label, (long long)tsrc, (long long)ttgt,
                   rp->tkey_row ? counts[t] : (size_t)1, (long long)tbad);
            if (nrejected > nparked)
                printf(", %lld refused rows (backfill_rejects) not compared",
                       (long long)(nrejected - nparked));
            if (nparked)
                printf(", %lld parked rows (backfill_rejects: they refer to rows the target does "
                       "not have) not compared",
                       (long long)nparked);
            putchar('\n');
            total_parked += nparked;
            mismatches += tbad;
            total_src += tsrc;
            total_tgt += ttgt;
        }
    }
    for (int t = 0; t < n; t++)
        bf_plan_ranges_free(ranges[t], counts[t]);
    free(ranges);
    free(counts);
    bf_jobctx_close(&ctx);
    if (rc != BF_EXIT_OK)
        return rc;
    if (total_parked)
        printf("%lld parked rows are not on the targets yet: a run of the job writes them once "
               "the rows they refer to are there\n",
               (long long)total_parked);
    if (mismatches) {
        printf("verify: FAILED, %lld ranges differ\n", (long long)mismatches);
        return BF_EXIT_FAILED;
    }
    printf("verify: OK, %lld rows match in every range\n", (long long)total_src);
    (void)total_tgt;
    return BF_EXIT_OK;
}

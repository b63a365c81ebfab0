#include "parked.h"

#include "fence.h"
#include "log.h"
#include "strbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The route of job table src (any when "": a row parked by an older version) that
 * writes target table label on target ti; its table's index in *table. NULL when
 * none does (the job file changed). */
static const bf_route_plan_t *s_route(const bf_job_t *job, const bf_tableplan_t *tables, int ti,
                                      const char *src, const char *label, int *table)
{
    for (int t = 0; t < job->ntables; t++)
        for (int i = 0; i < tables[t].nroutes; i++)
            if (tables[t].routes[i].target == ti && strcmp(tables[t].routes[i].label, label) == 0 &&
                (!src[0] || strcmp(tables[t].src_label, src) == 0)) {
                *table = t;
                return &tables[t].routes[i];
            }
    return NULL;
}

/* One parked row written again, with its parked entry removed, in one
 * transaction: 1 written, 0 refused (the error in err, the entry's error updated),
 * -1 the target is gone (logged). */
static int s_write_row(bf_pg_t *tgt, const bf_route_plan_t *rp, const char *job, const char *tbl,
                       const char *src, const char *key, const char *row, char *err, size_t errlen)
{
    /* The row as the worker saw it: the route's target columns, as JSON. Columns
     * the route does not write keep their defaults; identity columns take the
     * copied value, as COPY does. */
    char *sql = rp->stage ? bf_xasprintf("INSERT INTO %s (%s) SELECT %s FROM "
                                         "jsonb_populate_record(NULL::%s, $1::jsonb)",
                                         rp->stage, rp->target_cols, rp->target_cols, rp->qname)
                          : bf_xasprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s "
                                         "FROM jsonb_populate_record(NULL::%s, $1::jsonb)",
                                         rp->qname, rp->target_cols, rp->target_cols, rp->qname);
    const char *rparams[] = {row};
    const char *kparams[] = {job, tbl, key, src};
    PGresult *res = NULL;
    bool ok = (!rp->stage || bf_pg_exec_quiet(tgt, rp->stage_ddl) == 0) &&
              bf_pg_exec_quiet(tgt, "BEGIN") == 0 &&
              bf_pg_exec_quiet(tgt, "SET CONSTRAINTS ALL IMMEDIATE") == 0 &&
              (res = bf_pg_query_quiet(tgt, sql, 1, rparams)) != NULL;
    PQclear(res);
    res = NULL;
    ok = ok && (!rp->merge || bf_pg_exec_quiet(tgt, rp->merge) == 0) &&
         (res = bf_pg_query_quiet(tgt,
                                  "DELETE FROM public.backfill_rejects WHERE job = $1 AND tbl = $2 "
                                  "AND key = $3 AND src = $4",
                                  4, kparams)) != NULL &&
         bf_pg_exec_quiet(tgt, "COMMIT") == 0;
    PQclear(res);
    free(sql);
    if (ok)
        return 1;
    if (!bf_pg_is_alive(tgt) || bf_pg_error_is_retryable(tgt)) {
        log_error("writing parked rows again: %s", tgt->errmsg);
        return -1;
    }
    snprintf(err, errlen, "%s%s%s%s", tgt->errmsg, tgt->detail[0] ? " (" : "", tgt->detail,
             tgt->detail[0] ? ")" : "");
    bf_pg_exec_quiet(tgt, "ROLLBACK");
    const char *uparams[] = {job, tbl, key, err, src};
    res = bf_pg_query(tgt,
                      "UPDATE public.backfill_rejects SET error = $4, at = now() WHERE job = $1 "
                      "AND tbl = $2 AND key = $3 AND src = $5",
                      5, uparams);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

int64_t bf_parked_retry(const bf_job_t *job, const bf_tableplan_t *tables, bf_pg_t *const *tgts,
                        int64_t *left, int64_t *written_out, char *first, size_t firstlen)
{
    int64_t total = 0;
    memset(left, 0, (size_t)job->ntables * sizeof *left);
    memset(written_out, 0, (size_t)job->ntables * sizeof *written_out);
    if (first && firstlen)
        first[0] = '\0';
    const char *params[] = {job->name};
    /* The last pass's count of rows left (per table) and its first row left. */
    int64_t *pass_left = bf_xcalloc((size_t)job->ntables + 1, sizeof *pass_left);
    char pass_first[2600];
    for (int ti = 0; ti < job->ntargets; ti++) {
        bf_pg_t *tgt = tgts[ti];
        if (!tgt)
            continue;
        int64_t written = 0, still = 0;
        /* Passes while rows go in: a parked row may refer to another. */
        for (int pass = 0;; pass++) {
            PGresult *res = bf_pg_query(tgt,
                                        "SELECT tbl, key, row::text, src FROM "
                                        "public.backfill_rejects WHERE job = $1 AND parked "
                                        "ORDER BY at, tbl, src, key",
                                        1, params);
            if (!res) {
                free(pass_left);
                return -1;
            }
            int n = PQntuples(res), in = 0;
            memset(pass_left, 0, (size_t)job->ntables * sizeof *pass_left);
            pass_first[0] = '\0';
            if (pass == 0 && n > 0)
                log_info("target %s: writing %d parked rows again (rows that referred to rows "
                         "the target did not have yet)",
                         job->targets[ti].alias, n);
            still = 0;
            for (int i = 0; i < n; i++) {
                const char *tbl = PQgetvalue(res, i, 0), *key = PQgetvalue(res, i, 1);
                const char *src = PQgetvalue(res, i, 3);
                int t = -1;
                const bf_route_plan_t *rp = s_route(job, tables, ti, src, tbl, &t);
                char err[2200];
                int w = 0;
                if (!rp)
                    snprintf(err, sizeof err, "no table of the job writes %s any more", tbl);
                else if (PQgetisnull(res, i, 2))
                    snprintf(err, sizeof err, "the parked row was not kept");
                else if ((w = s_write_row(tgt, rp, job->name, tbl, src, key, PQgetvalue(res, i, 2),
                                          err, sizeof err)) < 0) {
                    PQclear(res);
                    free(pass_left);
                    return -1;
                }
                if (w == 1) {
                    in++;
                    if (t >= 0)
                        written_out[t]++;
                    continue;
                }
                still++;
                if (t >= 0)
                    pass_left[t]++;
                if (!pass_first[0])
                    snprintf(pass_first, sizeof pass_first, "%s key %s: %s", tbl, key, err);
            }
            PQclear(res);
            written += in;
            if (in == 0 || still == 0)
                break;
        }
        for (int t = 0; t < job->ntables; t++)
            left[t] += pass_left[t];
        if (first && firstlen && !first[0] && pass_first[0])
            snprintf(first, firstlen, "%s", pass_first);
        if (written > 0)
            log_info("target %s: %lld parked rows written", job->targets[ti].alias,
                     (long long)written);
        total += still;
    }
    free(pass_left);
    return total;
}

int bf_parked_accept(const bf_job_t *job, bf_pg_t *const *tgts)
{
    const char *params[] = {job->name};
    for (int ti = 0; ti < job->ntargets; ti++) {
        PGresult *res = tgts[ti] ? bf_pg_query(tgts[ti],
                                               "UPDATE public.backfill_rejects SET parked = false "
                                               "WHERE job = $1 AND parked",
                                               1, params)
                                 : NULL;
        if (tgts[ti] && !res)
            return -1;
        PQclear(res);
    }
    return 0;
}

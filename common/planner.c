#include "planner.h"

#include "log.h"
#include "strbuf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXACT_COUNT_MAX_ROWS 20000000.0 /* count each range when the table is smaller */
#define READ_ALL_KEYS_MAX 2000000.0     /* below this, read every key instead of sampling */
#define SAMPLE_PER_RANGE 200            /* sample keys per planned range */
#define SAMPLE_MAX 2000000
#define COUNT_MAX_RANGES 10000 /* count each range when there are no more */

size_t bf_plan_max_ranges(double total_rows, int64_t range_rows)
{
    if (total_rows <= 0 || range_rows <= 0)
        return 1;
    double n = ceil(total_rows / (double)range_rows);
    return n < 1 ? 1 : (size_t)n;
}

size_t bf_plan_pick(const char *const *sorted, size_t n, double total_rows, int64_t range_rows,
                    bf_plan_range_t *out)
{
    size_t want = bf_plan_max_ranges(total_rows, range_rows);
    if (want > n)
        want = n > 0 ? n : 1;
    size_t count = 0;
    size_t start = 0; /* sample index where the current range starts */
    const char *lo = NULL;
    for (size_t j = 1; j < want; j++) {
        size_t at = (size_t)((double)j * (double)n / (double)want);
        if (at <= start || at >= n)
            continue;
        /* Keys equal to the previous boundary cannot start a new range. */
        if (lo && strcmp(sorted[at], lo) == 0)
            continue;
        if (strcmp(sorted[at], sorted[start]) == 0)
            continue;
        out[count].lo = (char *)lo;
        out[count].hi = (char *)sorted[at];
        out[count].est = (int64_t)llround(total_rows * (double)(at - start) / (double)n);
        count++;
        lo = sorted[at];
        start = at;
    }
    out[count].lo = (char *)lo;
    out[count].hi = NULL;
    out[count].est =
        n ? (int64_t)llround(total_rows * (double)(n - start) / (double)n) : (int64_t)total_rows;
    return count + 1;
}

void bf_plan_ranges_free(bf_plan_range_t *r, size_t n)
{
    if (!r)
        return;
    for (size_t i = 0; i < n; i++) {
        free(r[i].lo);
        free(r[i].hi);
    }
    free(r);
}

/* Rows in the table: exact for small tables, else the planner's estimate. */
static int s_estimate_rows(bf_pg_t *src, const bf_tableplan_t *tp, double *rows)
{
    const char *params[] = {tp->src_qname};
    PGresult *res = bf_pg_query(
        src, "SELECT reltuples::float8 FROM pg_class WHERE oid = $1::regclass", 1, params);
    char *sql;
    if (!res)
        return -1;
    double est = atof(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (est >= 0 && est > EXACT_COUNT_MAX_ROWS) {
        *rows = est;
        return 0;
    }
    sql = bf_xasprintf("SELECT count(*) FROM %s", tp->src_qname);
    res = bf_pg_query(src, sql, 0, NULL);
    free(sql);
    if (!res)
        return -1;
    *rows = atof(PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

int bf_plan_table(bf_pg_t *src, const bf_tableplan_t *tp, int64_t range_rows, bf_plan_range_t **out,
                  size_t *nout)
{
    *out = NULL;
    *nout = 0;
    double total = 0;
    if (s_estimate_rows(src, tp, &total) != 0)
        return -1;
    size_t want = bf_plan_max_ranges(total, range_rows);
    if (want <= 1) {
        *out = bf_xcalloc(1, sizeof **out);
        (*out)[0].est = (int64_t)total;
        *nout = 1;
        return 0;
    }

    /* Sorted key sample: every key for small tables, else a block sample. The output
     * column is renamed so that ORDER BY sorts by the key, not by its text. */
    char *sql;
    if (total <= READ_ALL_KEYS_MAX) {
        sql = bf_xasprintf("SELECT %s AS bf_key FROM %s ORDER BY %s", tp->key_text, tp->src_qname,
                           tp->key_list);
    } else {
        double want_sample = fmin(SAMPLE_MAX, fmax(20000.0, (double)want * SAMPLE_PER_RANGE));
        double pct = fmin(100.0, 100.0 * want_sample / total);
        sql = bf_xasprintf("SELECT %s AS bf_key FROM %s TABLESAMPLE SYSTEM (%.6f) ORDER BY %s",
                           tp->key_text, tp->src_qname, pct, tp->key_list);
    }
    PGresult *res = bf_pg_query(src, sql, 0, NULL);
    free(sql);
    if (!res)
        return -1;
    size_t n = (size_t)PQntuples(res);
    /* Every key read: the positions give each range's exact row count. */
    bool exact = total <= READ_ALL_KEYS_MAX;
    if (exact)
        total = (double)n;
    const char **keys = bf_xcalloc(n ? n : 1, sizeof *keys);
    for (size_t i = 0; i < n; i++)
        keys[i] = PQgetvalue(res, (int)i, 0);
    bf_plan_range_t *picked = bf_xcalloc(want + 1, sizeof *picked);
    size_t count = bf_plan_pick(keys, n, total, range_rows, picked);
    for (size_t i = 0; i < count; i++) {
        picked[i].lo = picked[i].lo ? bf_xstrdup(picked[i].lo) : NULL;
        picked[i].hi = picked[i].hi ? bf_xstrdup(picked[i].hi) : NULL;
    }
    free(keys);
    PQclear(res);

    /* Refine sampled estimates by counting, where that is cheap (index range scans,
     * not too many of them). */
    if (!exact && total <= EXACT_COUNT_MAX_ROWS && count <= COUNT_MAX_RANGES) {
        for (size_t i = 0; i < count; i++) {
            char *cond = bf_tableplan_range_cond(tp, src, picked[i].lo, NULL, picked[i].hi);
            sql = bf_xasprintf("SELECT count(*) FROM %s WHERE %s", tp->src_qname, cond);
            free(cond);
            res = bf_pg_query(src, sql, 0, NULL);
            free(sql);
            if (!res) {
                bf_plan_ranges_free(picked, count);
                return -1;
            }
            picked[i].est = atoll(PQgetvalue(res, 0, 0));
            PQclear(res);
        }
    }
    *out = picked;
    *nout = count;
    return 0;
}

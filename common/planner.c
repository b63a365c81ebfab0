#include "planner.h"

#include "log.h"
#include "strbuf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Up to this many rows (by the statistics), every key is read: exact ranges for
 * about 50 ms. Above it, a block sample: reading every key (or counting each range)
 * costs about a tenth of copying the table, paid before the first row moves
 * (3M rows: 1.1 s to read the keys, 0.6 s to count 8 ranges; the copy ~6 s). */
#define READ_ALL_KEYS_MAX 100000.0
#define SAMPLE_PER_RANGE 200 /* sample keys per planned range */
#define SAMPLE_MIN 20000
#define SAMPLE_MAX 2000000

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

/* Rows in the table: PostgreSQL's own estimate (reltuples scaled to the table's
 * current size, as its planner does: the statistics may be older than the last
 * rows), counted when the table is small or was never analyzed or vacuumed. */
static int s_estimate_rows(bf_pg_t *src, const bf_tableplan_t *tp, double *rows)
{
    const char *params[] = {tp->src_qname};
    PGresult *res = bf_pg_query(
        src,
        "SELECT CASE WHEN c.reltuples < 0 THEN -1 WHEN c.relpages > 0 THEN c.reltuples / "
        "c.relpages * (pg_relation_size(c.oid) / current_setting('block_size')::float8) ELSE "
        "c.reltuples END::float8 FROM pg_class c WHERE c.oid = $1::regclass",
        1, params);
    if (!res)
        return -1;
    double est = atof(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (est > READ_ALL_KEYS_MAX) {
        *rows = est;
        return 0;
    }
    char *sql = bf_xasprintf("SELECT count(*) FROM %s", tp->src_qname);
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

    /* Sorted key sample: every key for small tables (or when the sample would be
     * the whole table), else a block sample. The output column is renamed so that
     * ORDER BY sorts by the key, not by its text. */
    char *sql;
    double pct =
        100.0 * fmin(SAMPLE_MAX, fmax(SAMPLE_MIN, (double)want * SAMPLE_PER_RANGE)) / total;
    bool exact = total <= READ_ALL_KEYS_MAX || pct >= 100.0;
    if (exact)
        sql = bf_xasprintf("SELECT %s AS bf_key FROM %s ORDER BY %s", tp->key_text, tp->src_qname,
                           tp->key_list);
    else
        sql = bf_xasprintf("SELECT %s AS bf_key FROM %s TABLESAMPLE SYSTEM (%.6f) ORDER BY %s",
                           tp->key_text, tp->src_qname, pct, tp->key_list);
    PGresult *res = bf_pg_query(src, sql, 0, NULL);
    free(sql);
    if (!res)
        return -1;
    size_t n = (size_t)PQntuples(res);
    /* Every key read: the positions give each range's exact row count. (Sampled:
     * the sample's shares of the estimate; straggler splitting evens out what the
     * sample got wrong.) */
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

    *out = picked;
    *nout = count;
    return 0;
}

/* Splitting a table into key ranges of similar row counts. Boundaries are real key
 * values: quantiles of a sorted sample of keys (all keys for small tables), so a
 * key space with huge gaps still gives even ranges. Ranges are half-open on the
 * key, [lo, hi), open at the first and last end. */
#ifndef BF_PLANNER_H
#define BF_PLANNER_H

#include "pg.h"
#include "tableplan.h"

#include <stddef.h>
#include <stdint.h>

typedef struct bf_plan_range {
    char *lo;    /* first key in the range (inclusive), NULL = open */
    char *hi;    /* first key past the range (exclusive), NULL = open */
    int64_t est; /* estimated rows */
} bf_plan_range_t;

/* Pure part: given `n` sample keys sorted ascending by the database and an
 * estimate of the table's rows, picks boundaries for ceil(total/range_rows)
 * ranges. Each boundary is a sample key; duplicates are dropped. Writes the
 * ranges (lo/hi point into `sorted`, not copied) with est = total * share of the
 * sample. Returns the number of ranges (>= 1); out must hold
 * bf_plan_max_ranges() entries. */
size_t bf_plan_max_ranges(double total_rows, int64_t range_rows);
size_t bf_plan_pick(const char *const *sorted, size_t n, double total_rows, int64_t range_rows,
                    bf_plan_range_t *out);

/* Plans one table on the source: estimates its rows, samples keys, picks
 * boundaries (exact row counts when every key was read). Returns
 * the ranges (malloc'd, lo/hi owned) in *out and their number, or -1 (logged). */
int bf_plan_table(bf_pg_t *src, const bf_tableplan_t *tp, int64_t range_rows, bf_plan_range_t **out,
                  size_t *nout);
void bf_plan_ranges_free(bf_plan_range_t *r, size_t n);

#endif

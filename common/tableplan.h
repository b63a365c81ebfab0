/* How one job table is copied: names, key, and the column lists, resolved from the
 * real source and target catalogs. Used by the coordinator (to check a job before
 * any row moves, and by verify) and by every worker (to build its COPY). */
#ifndef BF_TABLEPLAN_H
#define BF_TABLEPLAN_H

#include "job.h"
#include "pg.h"

#include <stddef.h>

typedef struct {
    int index;         /* index in job->tables */
    char *src_label;   /* schema.table on the source, for messages */
    char *tgt_label;   /* alias.schema.table, for messages */
    char *src_qname;   /* quoted "schema"."table" on the source */
    char *tgt_qname;   /* quoted "schema"."table" on the target */
    char *key_col;     /* quoted key column on the source */
    char *key_type;    /* its type, e.g. bigint */
    char *tgt_key_col; /* quoted key column on the target */
    char *select_list; /* source expressions cast to the target column types */
    char *target_cols; /* quoted target columns, same order */
    char *src_row;     /* ROW(...)::text of the copied values on the source (verify) */
    char *tgt_row;     /* ROW(...)::text of the same columns on the target (verify) */
    int ncols;         /* number of copied columns */
} bf_tableplan_t;

/* Resolves job->tables[index] against the source and its target. Returns 0, or
 * -1 with one line in err naming the table and what to fix. */
int bf_tableplan_resolve(bf_tableplan_t *tp, const bf_job_t *job, int index, bf_pg_t *src,
                         bf_pg_t *tgt, char *err, size_t errlen);
void bf_tableplan_clear(bf_tableplan_t *tp);

/* SQL condition "key > cursor / >= lo AND key < hi" for a range, with literals
 * quoted. cursor overrides lo. Any of them may be NULL (open). Returns malloc'd
 * text ("TRUE" when fully open). */
char *bf_tableplan_range_cond(const bf_tableplan_t *tp, bf_pg_t *conn, const char *key_col,
                              const char *lo, const char *cursor, const char *hi);

#endif

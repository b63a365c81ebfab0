/* How one job table is copied: its key, and for each route the target table, the
 * row filter and the column expressions, resolved against the real source and
 * target catalogs. Used by the coordinator (to check a job before any row moves,
 * and by verify) and by every worker (to build its statements).
 *
 * Keys are any unique, NOT NULL column list with a btree order (integers, text in
 * its collation, uuid, composite...). A key value travels as text: the column's
 * text form for a one-column key, a JSON array of the columns' text forms for a
 * composite key (`["42", "EUR"]`). Cursors and range bounds are such texts, opaque
 * to Redis and to the coordinator; only the databases compare them. */
#ifndef BF_TABLEPLAN_H
#define BF_TABLEPLAN_H

#include "job.h"
#include "pg.h"

#include <stddef.h>

typedef struct {
    int target;         /* index in job->targets */
    char *label;        /* alias.schema.table, for messages */
    char *qname;        /* quoted "schema"."table" on the target */
    char *filter;       /* SQL on the source: the table's rows that go here; NULL = all */
    char *select_list;  /* source expressions cast to the target column types */
    char *target_cols;  /* quoted target columns, same order */
    char *select_named; /* select_list with each expression named after its column */
    int ncols;          /* number of written columns */
    bool key_first;     /* the first written column is the table's integer key (key_bin) as
                         * is: a keyed COPY reads the key off it (no extra column) */
    char *src_row;      /* verify: ROW(...)::text of the values as the target stores them */
    char *tgt_row;      /* verify: ROW(...)::text of the written columns on the target */
    char *tkey_row;     /* verify: target columns holding the source key as is ("c" or
                         * "(c1, c2)"), NULL when the key is not copied unchanged */
    char **tkey_types;  /* their types on the target (nkeys entries) */
    char *tkey_text;    /* verify: those columns as the source's key_text reads its key */
    char *stage;        /* temp staging table (modes other than insert), else NULL */
    char *stage_ddl;    /* creates it */
    char *merge;        /* INSERT ... SELECT FROM stage ON CONFLICT ... (modes but insert) */
    char *unread;       /* source columns (not the key) that no column, filter or condition
                         * of the route names: "a, b", or NULL */
    char *defaulted;    /* target columns nothing is written to, not set to ~ under
                         * `columns:` (left to their default): "c, d", or NULL */
} bf_route_plan_t;

typedef struct {
    int index;               /* index in job->tables */
    char *src_label;         /* schema.table on the source, for messages */
    char *src_qname;         /* quoted "schema"."table" on the source */
    int nkeys;               /* key columns */
    char **key_cols;         /* quoted key columns on the source */
    char **key_types;        /* their types (format_type) */
    char **key_colls;        /* their collations: " COLLATE schema.name", "" for the default */
    char *key_list;          /* "s"."t"."k1", ...: ORDER BY (qualified: never an output column) */
    char *key_row;           /* "k1" or "(k1, k2)": comparisons */
    char *key_text;          /* SQL giving the key as its text (see above) */
    int key_bin;             /* one smallint/integer/bigint key: its width in bytes (the
                              * keyed COPY sends it binary, the worker formats the last
                              * one: no ::text per row on the source), else 0 */
    bf_route_plan_t *routes; /* one per job route */
    int nroutes;
} bf_tableplan_t;

/* FROM clause of the statistics rows (pg_stats s) of a table given as c.oid; an
 * inheritance parent has two rows per column (s.inherited: with its children, or
 * not). */
#define BF_SQL_PG_STATS_OF                                                                         \
    "pg_stats s JOIN pg_class c ON c.relname = s.tablename JOIN pg_namespace n ON n.oid = "        \
    "c.relnamespace AND n.nspname = s.schemaname"

/* Resolves job->tables[index] against the source and the targets (tgts[i] is the
 * connection to job->targets[i]; those the table does not use may be NULL).
 * Checks key, columns, expressions, filters and mode; returns 0, or -1 with one
 * line in err naming the file and line, the table and what to fix. */
int bf_tableplan_resolve(bf_tableplan_t *tp, const bf_job_t *job, int index, bf_pg_t *src,
                         bf_pg_t *const *tgts, char *err, size_t errlen);
void bf_tableplan_clear(bf_tableplan_t *tp);

/* SQL condition on the source key for a range: "key > cursor" (or ">= lo" when
 * cursor is NULL) "AND key < hi"; NULL bounds are open. Returns malloc'd text
 * ("TRUE" when fully open). */
char *bf_tableplan_range_cond(const bf_tableplan_t *tp, bf_pg_t *conn, const char *lo,
                              const char *cursor, const char *hi);

/* The key text as a SQL value of the key's type(s): "'5'::bigint" or
 * "('5'::integer, 'EUR'::text)"; NULL when the text is not a key. malloc'd. */
char *bf_tableplan_key_literal(const bf_tableplan_t *tp, bf_pg_t *conn, const char *key);

/* "key OP literal" on the source (OP: "<=", ">"...). malloc'd. */
char *bf_tableplan_key_cmp(const bf_tableplan_t *tp, bf_pg_t *conn, const char *op,
                           const char *key);

/* The range condition on a route's target table (verify); NULL when the route's
 * target does not hold the key as is. malloc'd. */
char *bf_tableplan_target_range_cond(const bf_tableplan_t *tp, const bf_route_plan_t *rp,
                                     bf_pg_t *conn, const char *lo, const char *hi);

/* Splits a key text into nkeys column texts (malloc'd, caller frees each). A
 * one-column key is its own text; a composite key is a JSON array of strings.
 * Returns 0, or -1 when the text is not a key of nkeys columns. Pure. */
int bf_key_split(const char *text, int nkeys, char **parts);

#endif

#include "tableplan.h"

#include "strbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Columns of a table, excluding dropped and generated ones, in order. */
/* Columns with their type as a cast target without modifier (schema.typname:
 * pg_catalog.bpchar, not "character", which would mean char(1)). A cast to
 * varchar(10) or numeric(10,2) would silently truncate or round; without the
 * modifier the target's COPY rejects what does not fit. */
static const char *SQL_COLUMNS =
    "SELECT a.attname, quote_ident(n.nspname) || '.' || quote_ident(t.typname), a.attnotnull, "
    "a.atthasdef FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE a.attrelid = $1::regclass "
    "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum";

/* Primary key columns, in key order. */
static const char *SQL_PKEY =
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) "
    "FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
    "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::regclass AND i.indisprimary "
    "ORDER BY array_position(i.indkey, a.attnum)";

static const char *SQL_EXISTS = "SELECT to_regclass($1) IS NOT NULL";

void bf_tableplan_clear(bf_tableplan_t *tp)
{
    char **f[] = {&tp->src_label,   &tp->tgt_label, &tp->src_qname,   &tp->tgt_qname,
                  &tp->key_col,     &tp->key_type,  &tp->tgt_key_col, &tp->select_list,
                  &tp->target_cols, &tp->src_row,   &tp->tgt_row};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        free(*f[i]);
        *f[i] = NULL;
    }
    tp->ncols = 0;
}

static char *s_qname(bf_pg_t *pg, const char *schema, const char *table)
{
    char *s = bf_pg_ident(pg, schema), *t = bf_pg_ident(pg, table);
    char *out = bf_xasprintf("%s.%s", s, t);
    free(s);
    free(t);
    return out;
}

/* 1 when the relation exists, 0 when not, -1 on error. */
static int s_exists(bf_pg_t *pg, const char *qname)
{
    const char *params[] = {qname};
    PGresult *res = bf_pg_query(pg, SQL_EXISTS, 1, params);
    if (!res)
        return -1;
    int found = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return found;
}

static int s_is_integer_type(const char *t)
{
    return strcmp(t, "bigint") == 0 || strcmp(t, "integer") == 0 || strcmp(t, "smallint") == 0;
}

int bf_tableplan_resolve(bf_tableplan_t *tp, const bf_job_t *job, int index, bf_pg_t *src,
                         bf_pg_t *tgt, char *err, size_t errlen)
{
    const bf_table_t *t = &job->tables[index];
    memset(tp, 0, sizeof *tp);
    tp->index = index;
    tp->src_label = bf_xasprintf("%s.%s", t->from_schema, t->from_table);
    tp->tgt_label = bf_xasprintf("%s.%s.%s", t->to_alias, t->to_schema, t->to_table);
    tp->src_qname = s_qname(src, t->from_schema, t->from_table);
    tp->tgt_qname = s_qname(tgt, t->to_schema, t->to_table);
    PGresult *scols = NULL, *tcols = NULL, *pk = NULL;
    bf_strbuf_t sel, cols, srow, trow;
    bf_strbuf_init(&sel);
    bf_strbuf_init(&cols);
    bf_strbuf_init(&srow);
    bf_strbuf_init(&trow);
    int rc = -1;

    int e = s_exists(src, tp->src_qname);
    if (e <= 0) {
        if (e == 0)
            snprintf(err, errlen,
                     "%s:%d: source table %s does not exist on the source database (%s)", job->path,
                     t->line, tp->src_label, src->redacted);
        else
            snprintf(err, errlen, "%s:%d: cannot look up source table %s: %s", job->path, t->line,
                     tp->src_label, src->errmsg);
        goto done;
    }
    e = s_exists(tgt, tp->tgt_qname);
    if (e <= 0) {
        if (e == 0)
            snprintf(err, errlen,
                     "%s:%d: target table %s does not exist (create it in the service's schema "
                     "first: backfill does not create target tables)",
                     job->path, t->line, tp->tgt_label);
        else
            snprintf(err, errlen, "%s:%d: cannot look up target table %s: %s", job->path, t->line,
                     tp->tgt_label, tgt->errmsg);
        goto done;
    }

    const char *sp[] = {tp->src_qname};
    const char *tpp[] = {tp->tgt_qname};
    pk = bf_pg_query(src, SQL_PKEY, 1, sp);
    scols = bf_pg_query(src, SQL_COLUMNS, 1, sp);
    tcols = bf_pg_query(tgt, SQL_COLUMNS, 1, tpp);
    if (!pk || !scols || !tcols) {
        snprintf(err, errlen, "%s:%d: cannot read the columns of %s / %s", job->path, t->line,
                 tp->src_label, tp->tgt_label);
        goto done;
    }
    if (PQntuples(pk) == 0) {
        snprintf(err, errlen,
                 "%s:%d: source table %s has no primary key; backfill splits tables by their "
                 "primary key (add one)",
                 job->path, t->line, tp->src_label);
        goto done;
    }
    if (PQntuples(pk) > 1) {
        snprintf(err, errlen,
                 "%s:%d: source table %s has a composite primary key; this version supports "
                 "single-column smallint/integer/bigint keys",
                 job->path, t->line, tp->src_label);
        goto done;
    }
    const char *kname = PQgetvalue(pk, 0, 0), *ktype = PQgetvalue(pk, 0, 1);
    if (!s_is_integer_type(ktype)) {
        snprintf(err, errlen,
                 "%s:%d: source table %s: primary key column %s has type %s; this version "
                 "supports smallint/integer/bigint keys",
                 job->path, t->line, tp->src_label, kname, ktype);
        goto done;
    }
    tp->key_col = bf_pg_ident(src, kname);
    tp->key_type = bf_xstrdup(ktype);

    /* Target columns are matched by name to source columns. */
    bool key_copied = false;
    for (int i = 0; i < PQntuples(tcols); i++) {
        const char *name = PQgetvalue(tcols, i, 0), *type = PQgetvalue(tcols, i, 1);
        int found = -1;
        for (int j = 0; j < PQntuples(scols) && found < 0; j++)
            if (strcmp(PQgetvalue(scols, j, 0), name) == 0)
                found = j;
        if (found < 0) {
            if (strcmp(PQgetvalue(tcols, i, 2), "t") == 0 &&
                strcmp(PQgetvalue(tcols, i, 3), "f") == 0) {
                snprintf(err, errlen,
                         "%s:%d: target column %s.%s is NOT NULL without a default and has no "
                         "column of that name in source table %s",
                         job->path, t->line, tp->tgt_label, name, tp->src_label);
                goto done;
            }
            continue; /* left to the target's default */
        }
        char *q = bf_pg_ident(tgt, name);
        if (tp->ncols > 0) {
            bf_strbuf_append(&sel, ", ");
            bf_strbuf_append(&cols, ", ");
            bf_strbuf_append(&srow, ", ");
            bf_strbuf_append(&trow, ", ");
        }
        /* Same type on both sides: no cast (binary COPY carries it as is);
         * else cast to the target's type so that binary format is safe. */
        if (strcmp(PQgetvalue(scols, found, 1), type) == 0) {
            bf_strbuf_append(&sel, q);
            bf_strbuf_append(&srow, q);
        } else {
            bf_strbuf_appendf(&sel, "%s::%s", q, type);
            bf_strbuf_appendf(&srow, "%s::%s", q, type);
        }
        bf_strbuf_append(&cols, q);
        bf_strbuf_append(&trow, q);
        if (strcmp(name, kname) == 0) {
            key_copied = true;
            tp->tgt_key_col = bf_xstrdup(q);
        }
        free(q);
        tp->ncols++;
    }
    if (tp->ncols == 0) {
        snprintf(err, errlen, "%s:%d: tables %s and %s have no column name in common", job->path,
                 t->line, tp->src_label, tp->tgt_label);
        goto done;
    }
    if (!key_copied) {
        snprintf(err, errlen,
                 "%s:%d: target table %s has no column %s (the source key): backfill needs it "
                 "to resume and verify",
                 job->path, t->line, tp->tgt_label, kname);
        goto done;
    }
    tp->select_list = bf_strbuf_take(&sel);
    tp->target_cols = bf_strbuf_take(&cols);
    tp->src_row = bf_xasprintf("ROW(%s)::text", srow.buf);
    tp->tgt_row = bf_xasprintf("ROW(%s)::text", trow.buf);
    rc = 0;
done:
    PQclear(pk);
    PQclear(scols);
    PQclear(tcols);
    bf_strbuf_free(&sel);
    bf_strbuf_free(&cols);
    bf_strbuf_free(&srow);
    bf_strbuf_free(&trow);
    if (rc != 0)
        bf_tableplan_clear(tp);
    return rc;
}

char *bf_tableplan_range_cond(const bf_tableplan_t *tp, bf_pg_t *conn, const char *key_col,
                              const char *lo, const char *cursor, const char *hi)
{
    bf_strbuf_t sb;
    bf_strbuf_init(&sb);
    const char *low = cursor ? cursor : lo;
    if (low) {
        char *l = bf_pg_literal(conn, low);
        bf_strbuf_appendf(&sb, "%s %s %s::%s", key_col, cursor ? ">" : ">=", l, tp->key_type);
        free(l);
    }
    if (hi) {
        char *h = bf_pg_literal(conn, hi);
        bf_strbuf_appendf(&sb, "%s%s < %s::%s", low ? " AND " : "", key_col, h, tp->key_type);
        free(h);
    }
    if (!low && !hi)
        bf_strbuf_append(&sb, "TRUE");
    return bf_strbuf_take(&sb);
}

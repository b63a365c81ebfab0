#include "tableplan.h"

#include "strbuf.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Columns of a table, excluding dropped and generated ones, in order: name, type
 * as a cast target without modifier (schema.typname: pg_catalog.bpchar, not
 * "character", which would mean char(1)), NOT NULL, has a default, type oid, the
 * full type with modifier. A cast to varchar(10) or numeric(10,2) would silently
 * truncate or round; without the modifier the target rejects what does not fit. */
static const char *SQL_COLUMNS =
    "SELECT a.attname, quote_ident(n.nspname) || '.' || quote_ident(t.typname), a.attnotnull, "
    "a.atthasdef, a.atttypid::int8, format_type(a.atttypid, a.atttypmod), "
    "CASE WHEN a.attcollation IN (0, 100) THEN '' ELSE ' COLLATE ' || quote_ident(cn.nspname) "
    "|| '.' || quote_ident(co.collname) END "
    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "JOIN pg_namespace n ON n.oid = t.typnamespace "
    "LEFT JOIN pg_collation co ON co.oid = a.attcollation "
    "LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE a.attrelid = $1::regclass "
    "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum";
/* C_COLL: " COLLATE schema.name" for a column whose collation is not the
 * database's default, else "". */
enum { C_NAME, C_CAST, C_NOTNULL, C_HASDEF, C_OID, C_TYPE, C_COLL };

/* Primary key columns, in key order. */
static const char *SQL_PKEY =
    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
    "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::regclass AND i.indisprimary "
    "ORDER BY array_position(i.indkey, a.attnum)";

/* A unique index (no predicate, no expression) over exactly the columns $2 (a text
 * array), in any order. */
static const char *SQL_UNIQUE =
    "SELECT count(*) > 0 FROM pg_index i WHERE i.indrelid = $1::regclass AND i.indisunique "
    "AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = cardinality($2::text[]) "
    "AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a "
    "WHERE a.attrelid = i.indrelid AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1])) = "
    "(SELECT array_agg(x ORDER BY x) FROM unnest($2::text[]) x)";

static void s_free_list(char **list, int n)
{
    if (!list)
        return;
    for (int i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

static void s_route_clear(bf_route_plan_t *rp, int nkeys)
{
    char **f[] = {&rp->label,       &rp->qname,     &rp->filter,   &rp->select_list,
                  &rp->target_cols, &rp->src_row,   &rp->tgt_row,  &rp->tkey_row,
                  &rp->stage,       &rp->stage_ddl, &rp->merge,    &rp->select_named,
                  &rp->unread,      &rp->defaulted, &rp->tkey_text};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        free(*f[i]);
        *f[i] = NULL;
    }
    s_free_list(rp->tkey_types, nkeys);
    rp->tkey_types = NULL;
}

void bf_tableplan_clear(bf_tableplan_t *tp)
{
    for (int r = 0; r < tp->nroutes; r++)
        s_route_clear(&tp->routes[r], tp->nkeys);
    free(tp->routes);
    free(tp->src_label);
    free(tp->src_qname);
    s_free_list(tp->key_cols, tp->nkeys);
    s_free_list(tp->key_types, tp->nkeys);
    s_free_list(tp->key_colls, tp->nkeys);
    free(tp->key_list);
    free(tp->key_row);
    free(tp->key_text);
    memset(tp, 0, sizeof *tp);
}

static char *s_qname(bf_pg_t *pg, const char *schema, const char *table)
{
    char *s = bf_pg_ident(pg, schema), *t = bf_pg_ident(pg, table);
    char *out = bf_xasprintf("%s.%s", s, t);
    free(s);
    free(t);
    return out;
}

/* Row of column `name` in a SQL_COLUMNS result, or -1. */
static int s_find_col(const PGresult *cols, const char *name)
{
    for (int i = 0; i < PQntuples(cols); i++)
        if (strcmp(PQgetvalue(cols, i, C_NAME), name) == 0)
            return i;
    return -1;
}

/* "a, b, c" of a SQL_COLUMNS result, for messages. */
static void s_col_names(const PGresult *cols, char *out, size_t outlen)
{
    out[0] = 0;
    for (int i = 0; i < PQntuples(cols); i++) {
        if (i)
            strncat(out, ", ", outlen - strlen(out) - 1);
        strncat(out, PQgetvalue(cols, i, C_NAME), outlen - strlen(out) - 1);
    }
}

/* Runs "SELECT <list> FROM <qname> WHERE <where> LIMIT 0" on the source to check
 * expressions; returns the result (for the column types) or NULL with the
 * server's error in src->errmsg. */
static PGresult *s_probe(bf_pg_t *src, const char *list, const char *qname, const char *where)
{
    char *sql =
        bf_xasprintf("SELECT %s FROM %s WHERE %s LIMIT 0", list, qname, where ? where : "TRUE");
    PGresult *res = bf_pg_query_quiet(src, sql, 0, NULL);
    free(sql);
    return res;
}

/* Resolves the key: the job's `key:` (which must be unique and NOT NULL) or the
 * source's primary key. */
static int s_resolve_key(bf_tableplan_t *tp, const bf_job_t *job, const bf_table_t *t, bf_pg_t *src,
                         const PGresult *scols, char *err, size_t errlen)
{
    const char *sp[] = {tp->src_qname};
    char **names = NULL;
    int n = 0, cap = 0, rc = -1;
    PGresult *res = NULL;
    if (t->nkey > 0) {
        cap = t->nkey;
        names = bf_xcalloc((size_t)cap, sizeof *names);
        for (int i = 0; i < t->nkey; i++) {
            int c = s_find_col(scols, t->key[i]);
            if (c < 0) {
                char list[512];
                s_col_names(scols, list, sizeof list);
                snprintf(err, errlen,
                         "%s:%d: table %s: key column '%s' does not exist in the source table "
                         "(columns: %s)",
                         job->path, t->key_line, tp->src_label, t->key[i], list);
                goto done;
            }
            if (strcmp(PQgetvalue(scols, c, C_NOTNULL), "t") != 0) {
                snprintf(err, errlen,
                         "%s:%d: table %s: key column '%s' may be NULL; a key must be NOT NULL",
                         job->path, t->key_line, tp->src_label, t->key[i]);
                goto done;
            }
            names[n++] = bf_xstrdup(t->key[i]);
        }
        char *arr = bf_pg_text_array((const char *const *)names, n);
        const char *up[] = {tp->src_qname, arr};
        res = bf_pg_query_quiet(src, SQL_UNIQUE, 2, up);
        free(arr);
        if (!res) {
            snprintf(err, errlen, "%s:%d: table %s: cannot read its indexes: %s", job->path,
                     t->key_line, tp->src_label, src->errmsg);
            goto done;
        }
        if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
            snprintf(err, errlen,
                     "%s:%d: table %s: the key is not unique: backfill pages through the key and "
                     "needs a primary key or a unique index on exactly these columns",
                     job->path, t->key_line, tp->src_label);
            goto done;
        }
    } else {
        res = bf_pg_query_quiet(src, SQL_PKEY, 1, sp);
        if (!res) {
            snprintf(err, errlen, "%s:%d: table %s: cannot read its primary key: %s", job->path,
                     t->line, tp->src_label, src->errmsg);
            goto done;
        }
        n = PQntuples(res);
        if (n == 0) {
            snprintf(err, errlen,
                     "%s:%d: source table %s has no primary key; add one, or name a unique NOT "
                     "NULL key with 'key: [col, ...]'",
                     job->path, t->line, tp->src_label);
            goto done;
        }
        cap = n;
        names = bf_xcalloc((size_t)cap, sizeof *names);
        for (int i = 0; i < n; i++)
            names[i] = bf_xstrdup(PQgetvalue(res, i, 0));
    }

    tp->nkeys = n;
    tp->key_cols = bf_xcalloc((size_t)n, sizeof *tp->key_cols);
    tp->key_types = bf_xcalloc((size_t)n, sizeof *tp->key_types);
    tp->key_colls = bf_xcalloc((size_t)n, sizeof *tp->key_colls);
    bf_strbuf_t list, order, text;
    bf_strbuf_init(&list);
    bf_strbuf_init(&order);
    bf_strbuf_init(&text);
    for (int i = 0; i < n; i++) {
        int c = s_find_col(scols, names[i]);
        tp->key_cols[i] = bf_pg_ident(src, names[i]);
        tp->key_types[i] = bf_xstrdup(c >= 0 ? PQgetvalue(scols, c, C_TYPE) : "text");
        tp->key_colls[i] = bf_xstrdup(c >= 0 ? PQgetvalue(scols, c, C_COLL) : "");
        bf_strbuf_appendf(&list, "%s%s", i ? ", " : "", tp->key_cols[i]);
        /* Qualified: a bare name in ORDER BY means an output column of that name
         * first (e.g. "id" of `SELECT id::text`), which would sort as text. */
        bf_strbuf_appendf(&order, "%s%s.%s", i ? ", " : "", tp->src_qname, tp->key_cols[i]);
        bf_strbuf_appendf(&text, "%s%s::text", i ? ", " : "", tp->key_cols[i]);
    }
    tp->key_row = n == 1 ? bf_xstrdup(list.buf) : bf_xasprintf("(%s)", list.buf);
    tp->key_text =
        n == 1 ? bf_xstrdup(text.buf) : bf_xasprintf("json_build_array(%s)::text", text.buf);
    if (n == 1)
        tp->key_bin = strcmp(tp->key_types[0], "bigint") == 0     ? 8
                      : strcmp(tp->key_types[0], "integer") == 0  ? 4
                      : strcmp(tp->key_types[0], "smallint") == 0 ? 2
                                                                  : 0;
    tp->key_list = bf_strbuf_take(&order);
    bf_strbuf_free(&list);
    bf_strbuf_free(&text);
    rc = 0;
done:
    PQclear(res);
    s_free_list(names, cap);
    return rc;
}

/* The job's `columns:` entry for a target column, or NULL. */
static const bf_column_t *s_job_column(const bf_table_t *t, const char *name)
{
    for (int i = 0; i < t->ncolumns; i++)
        if (strcmp(t->columns[i].name, name) == 0)
            return &t->columns[i];
    return NULL;
}

/* True when expr is just the column whose quoted name is `quoted` (written bare or
 * quoted). */
static bool s_names_col(bf_pg_t *conn, const char *expr, const char *quoted)
{
    if (strcmp(expr, quoted) == 0)
        return true;
    char *q = bf_pg_ident(conn, expr);
    bool same = strcmp(q, quoted) == 0;
    free(q);
    return same;
}

/* Whether SQL text names column name (as a word; any case unless quoted there). */
static bool s_mentions(const char *sql, const char *name)
{
    size_t n = strlen(name);
    bool in_string = false;
    for (const char *p = sql; p && *p; p++) {
        if (*p == '\'') /* ('' inside a string toggles twice) */
            in_string = !in_string;
        if (in_string || strncasecmp(p, name, n) != 0)
            continue;
        bool before = p > sql && (isalnum((unsigned char)p[-1]) || p[-1] == '_' || p[-1] == '$');
        bool after = isalnum((unsigned char)p[n]) || p[n] == '_' || p[n] == '$';
        if (before || after)
            continue;
        /* Not a type in a cast (x::text) nor a function called so (date(x)). */
        const char *b = p;
        while (b > sql && isspace((unsigned char)b[-1]))
            b--;
        const char *a = p + n;
        while (isspace((unsigned char)*a))
            a++;
        if ((b - sql >= 2 && b[-1] == ':' && b[-2] == ':') || *a == '(')
            continue;
        return true;
    }
    return false;
}

/* Sets rp->unread and rp->defaulted (see tableplan.h) from the written expressions
 * (exprs[i] for target column i, NULL when none). */
static void s_column_use(bf_route_plan_t *rp, const bf_tableplan_t *tp, const bf_table_t *t, int r,
                         const PGresult *scols, const PGresult *tcols, char *const *exprs)
{
    bf_strbuf_t unread, dflt;
    bf_strbuf_init(&unread);
    bf_strbuf_init(&dflt);
    for (int i = 0; i < PQntuples(tcols); i++)
        if (!exprs[i] && !s_job_column(t, PQgetvalue(tcols, i, C_NAME)))
            bf_strbuf_appendf(&dflt, "%s%s", dflt.len ? ", " : "", PQgetvalue(tcols, i, C_NAME));
    for (int c = 0; c < PQntuples(scols); c++) {
        const char *name = PQgetvalue(scols, c, C_NAME);
        bool read = s_mentions(t->where, name) || s_mentions(t->routes[r].when, name);
        for (int k = 0; k < tp->nkeys && !read; k++)
            read = s_mentions(tp->key_cols[k], name);
        for (int i = 0; i < PQntuples(tcols) && !read; i++)
            read = exprs[i] && s_mentions(exprs[i], name);
        if (!read)
            bf_strbuf_appendf(&unread, "%s%s", unread.len ? ", " : "", name);
    }
    rp->unread = unread.len ? bf_strbuf_take(&unread) : NULL;
    rp->defaulted = dflt.len ? bf_strbuf_take(&dflt) : NULL;
    bf_strbuf_free(&unread);
    bf_strbuf_free(&dflt);
}

/* The source rows of route r: the table's filter, this route's condition, and not
 * any earlier route's (first match wins; a NULL condition does not match). */
static char *s_route_filter(const bf_table_t *t, int r)
{
    bf_strbuf_t f;
    bf_strbuf_init(&f);
    if (t->where)
        bf_strbuf_appendf(&f, "(%s)", t->where);
    if (t->routes[r].when)
        bf_strbuf_appendf(&f, "%s(%s) IS TRUE", f.len ? " AND " : "", t->routes[r].when);
    for (int i = 0; i < r; i++)
        bf_strbuf_appendf(&f, "%s(%s) IS NOT TRUE", f.len ? " AND " : "", t->routes[i].when);
    if (!f.len) {
        bf_strbuf_free(&f);
        return NULL;
    }
    return bf_strbuf_take(&f);
}

/* After a probe of all expressions failed: the first target column whose
 * expression (cast to the column's type when cast) fails alone, with the error in
 * src->errmsg; -1 when none does alone. */
static int s_culprit(bf_pg_t *src, const char *qname, const PGresult *tcols, char *const *exprs,
                     int ntc, bool cast)
{
    for (int i = 0; i < ntc; i++) {
        if (!exprs[i])
            continue;
        char *one = cast ? bf_xasprintf("(%s)::%s", exprs[i], PQgetvalue(tcols, i, C_TYPE))
                         : bf_xasprintf("(%s)", exprs[i]);
        PGresult *p1 = s_probe(src, one, qname, NULL);
        free(one);
        if (!p1)
            return i;
        PQclear(p1);
    }
    return -1;
}

/* Resolves route r of table t: columns, expressions, mode. */
static int s_resolve_route(bf_tableplan_t *tp, const bf_job_t *job, const bf_table_t *t, int r,
                           bf_pg_t *src, bf_pg_t *tgt, const PGresult *scols, char *err,
                           size_t errlen)
{
    const bf_route_t *route = &t->routes[r];
    bf_route_plan_t *rp = &tp->routes[r];
    rp->label = bf_xasprintf("%s.%s.%s", route->alias, route->schema, route->table);
    rp->qname = s_qname(tgt, route->schema, route->table);
    PGresult *tcols = NULL, *probe = NULL, *tpk = NULL;
    int ntc = 0, rc = -1;
    /* Per target column: the expression written, or NULL. */
    char **exprs = NULL;
    bf_strbuf_t sel, cols, srow, trow, named;
    bf_strbuf_init(&sel);
    bf_strbuf_init(&cols);
    bf_strbuf_init(&srow);
    bf_strbuf_init(&trow);
    bf_strbuf_init(&named);

    int e = bf_pg_exists(tgt, rp->qname);
    if (e <= 0) {
        if (e == 0)
            snprintf(err, errlen,
                     "%s:%d: target table %s does not exist (create it in the service's schema "
                     "first: backfill does not create target tables)",
                     job->path, route->line, rp->label);
        else
            snprintf(err, errlen, "%s:%d: cannot look up target table %s: %s", job->path,
                     route->line, rp->label, tgt->errmsg);
        goto done;
    }
    const char *tpp[] = {rp->qname};
    tcols = bf_pg_query_quiet(tgt, SQL_COLUMNS, 1, tpp);
    if (!tcols) {
        snprintf(err, errlen, "%s:%d: cannot read the columns of %s: %s", job->path, route->line,
                 rp->label, tgt->errmsg);
        goto done;
    }
    ntc = PQntuples(tcols);
    for (int i = 0; i < t->ncolumns; i++)
        if (s_find_col(tcols, t->columns[i].name) < 0) {
            char list[512];
            s_col_names(tcols, list, sizeof list);
            snprintf(err, errlen,
                     "%s:%d: columns: target table %s has no column '%s' (columns: %s)", job->path,
                     t->columns[i].line, rp->label, t->columns[i].name, list);
            goto done;
        }

    exprs = bf_xcalloc((size_t)ntc, sizeof *exprs);
    int nwritten = 0;
    for (int i = 0; i < ntc; i++) {
        const char *name = PQgetvalue(tcols, i, C_NAME);
        const bf_column_t *jc = s_job_column(t, name);
        if (jc)
            exprs[i] = jc->expr ? bf_xstrdup(jc->expr) : NULL;
        else if (s_find_col(scols, name) >= 0)
            exprs[i] = bf_pg_ident(src, name);
        if (!exprs[i] && strcmp(PQgetvalue(tcols, i, C_NOTNULL), "t") == 0 &&
            strcmp(PQgetvalue(tcols, i, C_HASDEF), "f") == 0) {
            snprintf(err, errlen,
                     "%s:%d: target column %s.%s is NOT NULL without a default and nothing "
                     "is written to it: map it under 'columns:' (e.g. %s: some_source_column)",
                     job->path, jc ? jc->line : route->line, rp->label, name, name);
            goto done;
        }
        nwritten += exprs[i] != NULL;
    }
    if (nwritten == 0) {
        snprintf(err, errlen,
                 "%s:%d: nothing to write into %s: no column name in common with %s and no "
                 "'columns:' mapping",
                 job->path, route->line, rp->label, tp->src_label);
        goto done;
    }
    s_column_use(rp, tp, t, r, scols, tcols, exprs);

    /* Check every expression on the source and learn its type. */
    for (int i = 0; i < ntc; i++) {
        if (!exprs[i])
            continue;
        bf_strbuf_appendf(&sel, "%s(%s)", sel.len ? ", " : "", exprs[i]);
    }
    probe = s_probe(src, sel.buf, tp->src_qname, NULL);
    if (!probe) {
        int i = s_culprit(src, tp->src_qname, tcols, exprs, ntc, false);
        if (i >= 0) {
            const bf_column_t *jc = s_job_column(t, PQgetvalue(tcols, i, C_NAME));
            snprintf(err, errlen,
                     "%s:%d: table %s -> %s: column %s: expression '%s' is not valid on the "
                     "source: %s",
                     job->path, jc ? jc->line : route->line, tp->src_label, rp->label,
                     PQgetvalue(tcols, i, C_NAME), exprs[i], src->errmsg);
            goto done;
        }
        snprintf(err, errlen, "%s:%d: table %s -> %s: the column expressions fail: %s", job->path,
                 route->line, tp->src_label, rp->label, src->errmsg);
        goto done;
    }
    bf_strbuf_free(&sel);
    bf_strbuf_init(&sel);

    /* Cast where the type differs (binary COPY needs the exact type); check the casts. */
    int k = 0;
    for (int i = 0; i < ntc; i++) {
        if (!exprs[i])
            continue;
        const char *name = PQgetvalue(tcols, i, C_NAME);
        char *q = bf_pg_ident(tgt, name);
        bool same_type = (long long)PQftype(probe, k) == atoll(PQgetvalue(tcols, i, C_OID));
        char *sq = bf_pg_ident(src, name);
        bool plain = s_find_col(scols, name) >= 0 && s_names_col(src, exprs[i], sq);
        if (k == 0)
            rp->key_first = plain && same_type && tp->nkeys == 1 && tp->key_bin &&
                            strcmp(sq, tp->key_cols[0]) == 0;
        free(sq);
        const char *paren_l = plain ? "" : "(", *paren_r = plain ? "" : ")";
        size_t from = sel.len + (k ? 2 : 0);
        if (same_type)
            bf_strbuf_appendf(&sel, "%s%s%s%s", k ? ", " : "", paren_l, exprs[i], paren_r);
        else
            bf_strbuf_appendf(&sel, "%s(%s)::%s", k ? ", " : "", exprs[i],
                              PQgetvalue(tcols, i, C_CAST));
        bf_strbuf_appendf(&named, "%s%s AS %s", k ? ", " : "", sel.buf + from, q);
        bf_strbuf_appendf(&srow, "%s(%s)::%s", k ? ", " : "", exprs[i],
                          PQgetvalue(tcols, i, C_TYPE));
        bf_strbuf_appendf(&cols, "%s%s", k ? ", " : "", q);
        bf_strbuf_appendf(&trow, "%s%s", k ? ", " : "", q);
        free(q);
        k++;
    }
    rp->ncols = k;
    PGresult *cast = s_probe(src, srow.buf, tp->src_qname, NULL);
    if (!cast) {
        int i = s_culprit(src, tp->src_qname, tcols, exprs, ntc, true);
        if (i >= 0) {
            const bf_column_t *jc = s_job_column(t, PQgetvalue(tcols, i, C_NAME));
            snprintf(err, errlen,
                     "%s:%d: table %s -> %s: column %s: '%s' cannot be written to a column of "
                     "type %s: %s",
                     job->path, jc ? jc->line : route->line, tp->src_label, rp->label,
                     PQgetvalue(tcols, i, C_NAME), exprs[i], PQgetvalue(tcols, i, C_TYPE),
                     src->errmsg);
            goto done;
        }
        snprintf(err, errlen, "%s:%d: table %s -> %s: %s", job->path, route->line, tp->src_label,
                 rp->label, src->errmsg);
        goto done;
    }
    PQclear(cast);
    rp->select_list = bf_strbuf_take(&sel);
    rp->select_named = bf_strbuf_take(&named);
    rp->target_cols = bf_strbuf_take(&cols);
    rp->src_row = bf_xasprintf("ROW(%s)::text", srow.buf);
    rp->tgt_row = bf_xasprintf("ROW(%s)::text", trow.buf);

    /* Filters. */
    rp->filter = s_route_filter(t, r);
    if (t->where) {
        PGresult *p1 = s_probe(src, "1", tp->src_qname, t->where);
        if (!p1) {
            snprintf(err, errlen, "%s:%d: table %s: 'where: %s' is not valid on the source: %s",
                     job->path, t->where_line, tp->src_label, t->where, src->errmsg);
            goto done;
        }
        PQclear(p1);
    }
    if (route->when) {
        PGresult *p1 = s_probe(src, "1", tp->src_qname, route->when);
        if (!p1) {
            snprintf(err, errlen,
                     "%s:%d: table %s: route condition 'when: %s' is not valid on the source: %s",
                     job->path, route->when_line, tp->src_label, route->when, src->errmsg);
            goto done;
        }
        PQclear(p1);
    }

    /* Where the target holds the source key as is (verify compares ranges). */
    rp->tkey_types = bf_xcalloc((size_t)tp->nkeys, sizeof *rp->tkey_types);
    bf_strbuf_t tkey, ttext;
    bf_strbuf_init(&tkey);
    bf_strbuf_init(&ttext);
    int found = 0;
    for (int kk = 0; kk < tp->nkeys; kk++) {
        for (int i = 0; i < ntc; i++) {
            if (!exprs[i] || !s_names_col(src, exprs[i], tp->key_cols[kk]))
                continue;
            char *q = bf_pg_ident(tgt, PQgetvalue(tcols, i, C_NAME));
            bf_strbuf_appendf(&tkey, "%s%s", kk ? ", " : "", q);
            bf_strbuf_appendf(&ttext, "%s%s::text", kk ? ", " : "", q);
            free(q);
            rp->tkey_types[kk] = bf_xstrdup(PQgetvalue(tcols, i, C_TYPE));
            found++;
            break;
        }
    }
    if (found == tp->nkeys) {
        rp->tkey_row = tp->nkeys == 1 ? bf_strbuf_take(&tkey) : bf_xasprintf("(%s)", tkey.buf);
        /* The same text as the source's key_text. */
        rp->tkey_text = tp->nkeys == 1 ? bf_strbuf_take(&ttext)
                                       : bf_xasprintf("json_build_array(%s)::text", ttext.buf);
    }
    bf_strbuf_free(&tkey);
    bf_strbuf_free(&ttext);

    /* Modes other than insert: staging table and merge on the target's primary key. */
    if (t->mode != BF_MODE_INSERT) {
        tpk = bf_pg_query_quiet(tgt, SQL_PKEY, 1, tpp);
        if (!tpk || PQntuples(tpk) == 0) {
            snprintf(err, errlen,
                     "%s:%d: table %s: mode %s needs a primary key on target table %s (the "
                     "rows are matched on it)",
                     job->path, t->mode_line, tp->src_label, bf_mode_name(t->mode), rp->label);
            goto done;
        }
        bf_strbuf_t pk, set;
        bf_strbuf_init(&pk);
        bf_strbuf_init(&set);
        for (int i = 0; i < PQntuples(tpk); i++) {
            const char *name = PQgetvalue(tpk, i, 0);
            int c = s_find_col(tcols, name);
            if (c < 0 || !exprs[c]) {
                snprintf(err, errlen,
                         "%s:%d: table %s: target primary key column %s.%s is not written; map "
                         "it under 'columns:'",
                         job->path, t->mode_line, tp->src_label, rp->label, name);
                bf_strbuf_free(&pk);
                bf_strbuf_free(&set);
                goto done;
            }
            char *q = bf_pg_ident(tgt, name);
            bf_strbuf_appendf(&pk, "%s%s", i ? ", " : "", q);
            free(q);
        }
        char *version = NULL;
        for (int i = 0; i < ntc; i++) {
            const char *name = PQgetvalue(tcols, i, C_NAME);
            if (!exprs[i])
                continue;
            bool in_pk = false;
            for (int j = 0; j < PQntuples(tpk); j++)
                in_pk = in_pk || strcmp(PQgetvalue(tpk, j, 0), name) == 0;
            char *q = bf_pg_ident(tgt, name);
            if (!in_pk)
                bf_strbuf_appendf(&set, "%s%s = EXCLUDED.%s", set.len ? ", " : "", q, q);
            if (t->version && strcmp(t->version, name) == 0)
                version = bf_xstrdup(q);
            free(q);
        }
        if (t->mode == BF_MODE_NEWER && !version) {
            snprintf(err, errlen,
                     "%s:%d: table %s: 'version: %s' is not a column written to target table "
                     "%s",
                     job->path, t->version_line, tp->src_label, t->version, rp->label);
            bf_strbuf_free(&pk);
            bf_strbuf_free(&set);
            goto done;
        }
        rp->stage = bf_xasprintf("bf_stage_%d_%d", tp->index, r);
        rp->stage_ddl = bf_xasprintf("CREATE TEMP TABLE IF NOT EXISTS %s (LIKE %s INCLUDING "
                                     "DEFAULTS) ON COMMIT DELETE ROWS",
                                     rp->stage, rp->qname);
        const char *action;
        char *update = NULL;
        if (t->mode == BF_MODE_SKIP || set.len == 0) {
            action = "DO NOTHING";
        } else if (t->mode == BF_MODE_UPSERT) {
            update = bf_xasprintf("DO UPDATE SET %s", set.buf);
            action = update;
        } else {
            update = bf_xasprintf("DO UPDATE SET %s WHERE EXCLUDED.%s > bf_t.%s OR (bf_t.%s IS "
                                  "NULL AND EXCLUDED.%s IS NOT NULL)",
                                  set.buf, version, version, version, version);
            action = update;
        }
        /* Source rows the columns map to one target key (the latest event per
         * account, say) meet in a batch: ON CONFLICT cannot take a key twice in one
         * statement, so one row per key goes in. newer: the one with the greatest
         * version, as if they came one by one (else any one). */
        char *order = t->mode == BF_MODE_NEWER
                          ? bf_xasprintf("%s, %s DESC NULLS LAST", pk.buf, version)
                          : bf_xstrdup(pk.buf);
        rp->merge = bf_xasprintf("INSERT INTO %s AS bf_t (%s) SELECT DISTINCT ON (%s) %s FROM %s "
                                 "ORDER BY %s ON CONFLICT (%s) %s",
                                 rp->qname, rp->target_cols, pk.buf, rp->target_cols, rp->stage,
                                 order, pk.buf, action);
        free(order);
        free(update);
        free(version);
        bf_strbuf_free(&pk);
        bf_strbuf_free(&set);
    }
    rc = 0;
done:
    PQclear(tcols);
    PQclear(probe);
    PQclear(tpk);
    s_free_list(exprs, ntc);
    bf_strbuf_free(&sel);
    bf_strbuf_free(&cols);
    bf_strbuf_free(&srow);
    bf_strbuf_free(&trow);
    bf_strbuf_free(&named);
    return rc;
}

int bf_tableplan_resolve(bf_tableplan_t *tp, const bf_job_t *job, int index, bf_pg_t *src,
                         bf_pg_t *const *tgts, char *err, size_t errlen)
{
    const bf_table_t *t = &job->tables[index];
    memset(tp, 0, sizeof *tp);
    tp->index = index;
    tp->src_label = bf_xasprintf("%s.%s", t->from_schema, t->from_table);
    tp->src_qname = s_qname(src, t->from_schema, t->from_table);
    PGresult *scols = NULL;
    int rc = -1;

    int e = bf_pg_exists(src, tp->src_qname);
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
    const char *sp[] = {tp->src_qname};
    scols = bf_pg_query_quiet(src, SQL_COLUMNS, 1, sp);
    if (!scols) {
        snprintf(err, errlen, "%s:%d: cannot read the columns of %s: %s", job->path, t->line,
                 tp->src_label, src->errmsg);
        goto done;
    }
    if (s_resolve_key(tp, job, t, src, scols, err, errlen) != 0)
        goto done;
    tp->routes = bf_xcalloc((size_t)t->nroutes, sizeof *tp->routes);
    tp->nroutes = t->nroutes;
    for (int r = 0; r < t->nroutes; r++) {
        const bf_target_t *target = bf_job_target(job, t->routes[r].alias);
        int ti = target ? (int)(target - job->targets) : -1;
        if (ti < 0 || !tgts[ti]) {
            snprintf(err, errlen, "%s:%d: no connection to target %s", job->path, t->routes[r].line,
                     t->routes[r].alias);
            goto done;
        }
        tp->routes[r].target = ti;
        if (s_resolve_route(tp, job, t, r, src, tgts[ti], scols, err, errlen) != 0)
            goto done;
    }
    rc = 0;
done:
    PQclear(scols);
    if (rc != 0)
        bf_tableplan_clear(tp);
    return rc;
}

/* ---- key texts ---- */

/* Appends the UTF-8 encoding of cp. */
static void s_utf8(bf_strbuf_t *sb, unsigned cp)
{
    char b[4];
    int n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    bf_strbuf_appendn(sb, b, (size_t)n);
}

static int s_hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Parses one JSON string at *pp (after whitespace); advances *pp. */
static char *s_json_string(const char **pp)
{
    const char *p = *pp;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p != '"')
        return NULL;
    p++;
    bf_strbuf_t sb;
    bf_strbuf_init(&sb);
    bf_strbuf_append(&sb, "");
    for (;;) {
        unsigned char c = (unsigned char)*p;
        if (c == 0 || c < 0x20)
            goto bad;
        if (c == '"')
            break;
        if (c != '\\') {
            bf_strbuf_appendn(&sb, p, 1);
            p++;
            continue;
        }
        p++;
        switch (*p) {
        case '"':
        case '\\':
        case '/':
            bf_strbuf_appendn(&sb, p, 1);
            break;
        case 'b':
            bf_strbuf_append(&sb, "\b");
            break;
        case 'f':
            bf_strbuf_append(&sb, "\f");
            break;
        case 'n':
            bf_strbuf_append(&sb, "\n");
            break;
        case 'r':
            bf_strbuf_append(&sb, "\r");
            break;
        case 't':
            bf_strbuf_append(&sb, "\t");
            break;
        case 'u': {
            unsigned cp;
            if (s_hex4(p + 1, &cp) != 0)
                goto bad;
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p[1] != '\\' || p[2] != 'u' || s_hex4(p + 3, &lo) != 0 || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto bad;
            }
            if (cp == 0)
                goto bad; /* no NUL in a key text */
            s_utf8(&sb, cp);
            break;
        }
        default:
            goto bad;
        }
        p++;
    }
    *pp = p + 1;
    return bf_strbuf_take(&sb);
bad:
    bf_strbuf_free(&sb);
    return NULL;
}

int bf_key_split(const char *text, int nkeys, char **parts)
{
    if (!text || nkeys < 1)
        return -1;
    if (nkeys == 1) {
        parts[0] = bf_xstrdup(text);
        return 0;
    }
    const char *p = text;
    while (*p == ' ')
        p++;
    if (*p++ != '[')
        return -1;
    int n = 0;
    for (;;) {
        char *s = s_json_string(&p);
        if (!s)
            goto bad;
        if (n == nkeys) {
            free(s);
            goto bad;
        }
        parts[n++] = s;
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == ']')
            break;
        goto bad;
    }
    p++;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p || n != nkeys)
        goto bad;
    return 0;
bad:
    for (int i = 0; i < n; i++) {
        free(parts[i]);
        parts[i] = NULL;
    }
    return -1;
}

/* "(lit1::t1, lit2::t2)" or "lit::t" for a key text; NULL when it does not split. */
/* Key literals carry the key columns' collations: two literals compare (the
 * "fence ahead" check) as the columns sort, not in the database's default. */
static char *s_key_literal(int nkeys, char *const *types, char *const *colls, bf_pg_t *conn,
                           const char *key)
{
    char **parts = bf_xcalloc((size_t)nkeys, sizeof *parts);
    if (bf_key_split(key, nkeys, parts) != 0) {
        free(parts);
        return NULL;
    }
    bf_strbuf_t sb;
    bf_strbuf_init(&sb);
    if (nkeys > 1)
        bf_strbuf_append(&sb, "(");
    for (int i = 0; i < nkeys; i++) {
        char *lit = bf_pg_literal(conn, parts[i]);
        bf_strbuf_appendf(&sb, "%s%s::%s%s", i ? ", " : "", lit, types[i], colls ? colls[i] : "");
        free(lit);
        free(parts[i]);
    }
    if (nkeys > 1)
        bf_strbuf_append(&sb, ")");
    free(parts);
    return bf_strbuf_take(&sb);
}

static char *s_cmp(const char *row, int nkeys, char *const *types, char *const *colls,
                   bf_pg_t *conn, const char *op, const char *key)
{
    char *lit = s_key_literal(nkeys, types, colls, conn, key);
    /* A key text that does not parse can only come from a corrupted store: make the
     * statement fail loudly rather than match nothing. */
    char *out = lit ? bf_xasprintf("%s %s %s", row, op, lit)
                    : bf_xstrdup("(SELECT 'invalid key text in range bounds'::int) > 0");
    free(lit);
    return out;
}

char *bf_tableplan_key_literal(const bf_tableplan_t *tp, bf_pg_t *conn, const char *key)
{
    return s_key_literal(tp->nkeys, tp->key_types, tp->key_colls, conn, key);
}

char *bf_tableplan_key_cmp(const bf_tableplan_t *tp, bf_pg_t *conn, const char *op, const char *key)
{
    return s_cmp(tp->key_row, tp->nkeys, tp->key_types, tp->key_colls, conn, op, key);
}

static char *s_range(const char *row, int nkeys, char *const *types, char *const *colls,
                     bf_pg_t *conn, const char *lo, const char *cursor, const char *hi)
{
    bf_strbuf_t sb;
    bf_strbuf_init(&sb);
    const char *low = cursor ? cursor : lo;
    if (low) {
        char *c = s_cmp(row, nkeys, types, colls, conn, cursor ? ">" : ">=", low);
        bf_strbuf_append(&sb, c);
        free(c);
    }
    if (hi) {
        char *c = s_cmp(row, nkeys, types, colls, conn, "<", hi);
        bf_strbuf_appendf(&sb, "%s%s", low ? " AND " : "", c);
        free(c);
    }
    if (!low && !hi)
        bf_strbuf_append(&sb, "TRUE");
    return bf_strbuf_take(&sb);
}

char *bf_tableplan_range_cond(const bf_tableplan_t *tp, bf_pg_t *conn, const char *lo,
                              const char *cursor, const char *hi)
{
    return s_range(tp->key_row, tp->nkeys, tp->key_types, tp->key_colls, conn, lo, cursor, hi);
}

char *bf_tableplan_target_range_cond(const bf_tableplan_t *tp, const bf_route_plan_t *rp,
                                     bf_pg_t *conn, const char *lo, const char *hi)
{
    if (!rp->tkey_row)
        return NULL;
    return s_range(rp->tkey_row, tp->nkeys, rp->tkey_types, NULL, conn, lo, NULL, hi);
}

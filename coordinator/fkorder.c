#include "fkorder.h"

#include "log.h"
#include "strbuf.h"

#include <stdlib.h>
#include <string.h>

/* The foreign keys of a table, with the oid of the table each refers to. */
static const char *SQL_FKS =
    "SELECT c.conname, c.confrelid::oid::text, c.confrelid::regclass::text "
    "FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid = $1::regclass "
    "ORDER BY c.conname";

void bf_fk_add(bf_fk_graph_t *g, int child, int parent, int target, const char *constraint,
               const char *child_tbl, const char *parent_tbl)
{
    g->edges = bf_xrealloc(g->edges, (size_t)(g->nedges + 1) * sizeof *g->edges);
    g->edges[g->nedges++] = (bf_fk_edge_t){.child = child,
                                           .parent = parent,
                                           .target = target,
                                           .constraint = bf_xstrdup(constraint),
                                           .child_tbl = bf_xstrdup(child_tbl),
                                           .parent_tbl = bf_xstrdup(parent_tbl)};
}

int bf_fk_read(bf_fk_graph_t *g, const bf_job_t *job, const bf_tableplan_t *tables,
               bf_pg_t *const *tgts, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    for (int ti = 0; ti < job->ntargets; ti++) {
        if (!tgts[ti])
            continue;
        /* The routes writing to this target, and the oid of each one's table. */
        int n = 0;
        for (int t = 0; t < job->ntables; t++)
            n += tables[t].nroutes;
        int *rt = bf_xcalloc((size_t)n + 1, sizeof *rt);
        const bf_route_plan_t **rp = bf_xcalloc((size_t)n + 1, sizeof *rp);
        char **oid = bf_xcalloc((size_t)n + 1, sizeof *oid);
        int m = 0, rc = 0;
        for (int t = 0; t < job->ntables && rc == 0; t++)
            for (int i = 0; i < tables[t].nroutes && rc == 0; i++) {
                if (tables[t].routes[i].target != ti)
                    continue;
                const char *params[] = {tables[t].routes[i].qname};
                PGresult *res = bf_pg_query(tgts[ti], "SELECT $1::regclass::oid::text", 1, params);
                if (!res) {
                    snprintf(err, errlen, "target %s: reading the oid of %s: %s",
                             job->targets[ti].alias, tables[t].routes[i].label, tgts[ti]->errmsg);
                    rc = -1;
                    break;
                }
                rt[m] = t;
                rp[m] = &tables[t].routes[i];
                oid[m++] = bf_xstrdup(PQgetvalue(res, 0, 0));
                PQclear(res);
            }
        for (int k = 0; k < m && rc == 0; k++) {
            const char *params[] = {rp[k]->qname};
            PGresult *res = bf_pg_query(tgts[ti], SQL_FKS, 1, params);
            if (!res) {
                snprintf(err, errlen, "target %s: reading the foreign keys of %s: %s",
                         job->targets[ti].alias, rp[k]->label, tgts[ti]->errmsg);
                rc = -1;
                break;
            }
            for (int row = 0; row < PQntuples(res); row++)
                for (int j = 0; j < m; j++)
                    if (strcmp(oid[j], PQgetvalue(res, row, 1)) == 0)
                        bf_fk_add(g, rt[k], rt[j], ti, PQgetvalue(res, row, 0), rp[k]->label,
                                  rp[j]->label);
            PQclear(res);
        }
        for (int k = 0; k < m; k++)
            free(oid[k]);
        free(oid);
        free(rp);
        free(rt);
        if (rc != 0) {
            bf_fk_clear(g);
            return -1;
        }
    }
    bf_fk_order(g, job->ntables);
    return 0;
}

/* Whether table to is reached from table from by following "waits for" edges
 * (child -> parent; self-references left out). seen: ntables entries. */
static bool s_reaches(const bf_fk_graph_t *g, int from, int to, bool *seen)
{
    if (from == to)
        return true;
    if (seen[from])
        return false;
    seen[from] = true;
    for (int e = 0; e < g->nedges; e++)
        if (g->edges[e].child == from && g->edges[e].parent != from &&
            s_reaches(g, g->edges[e].parent, to, seen))
            return true;
    return false;
}

void bf_fk_order(bf_fk_graph_t *g, int ntables)
{
    bool *seen = bf_xcalloc((size_t)ntables + 1, sizeof *seen);
    for (int e = 0; e < g->nedges; e++) {
        bf_fk_edge_t *x = &g->edges[e];
        if (x->child == x->parent) {
            x->cycle = true;
            continue;
        }
        /* child waits for parent; if parent (transitively) waits for child, neither
         * could start. */
        memset(seen, 0, (size_t)ntables * sizeof *seen);
        x->cycle = s_reaches(g, x->parent, x->child, seen);
    }
    free(seen);
}

char **bf_fk_after(const bf_fk_graph_t *g, int ntables)
{
    char **after = bf_xcalloc((size_t)ntables + 1, sizeof *after);
    for (int t = 0; t < ntables; t++) {
        bf_strbuf_t b;
        bf_strbuf_init(&b);
        for (int u = 0; u < ntables; u++) {
            bool waits = false;
            for (int e = 0; e < g->nedges && !waits; e++)
                waits = g->edges[e].child == t && g->edges[e].parent == u && !g->edges[e].cycle;
            if (waits)
                bf_strbuf_appendf(&b, "%s%d", b.len ? "," : "", u);
        }
        after[t] = bf_strbuf_take(&b);
    }
    return after;
}

bool *bf_fk_ordered(const bf_fk_graph_t *g, int ntables)
{
    bool *ordered = bf_xcalloc((size_t)ntables + 1, sizeof *ordered);
    for (int e = 0; e < g->nedges; e++)
        if (g->edges[e].child == g->edges[e].parent && g->edges[e].child < ntables)
            ordered[g->edges[e].child] = true;
    return ordered;
}

void bf_fk_after_free(char **after, int ntables)
{
    if (!after)
        return;
    for (int t = 0; t < ntables; t++)
        free(after[t]);
    free(after);
}

void bf_fk_report(const bf_fk_graph_t *g, const char *const *labels, const bf_job_t *job, FILE *out)
{
    for (int e = 0; e < g->nedges; e++) {
        const bf_fk_edge_t *x = &g->edges[e];
        const char *alias = job->targets[x->target].alias;
        if (!x->cycle) {
            if (out)
                fprintf(out, "table %s is copied after %s: foreign key %s of %s refers to %s\n",
                        labels[x->child], labels[x->parent], x->constraint, x->child_tbl,
                        x->parent_tbl);
            else
                log_info("table %s is copied after %s (foreign key %s of %s refers to %s)",
                         labels[x->child], labels[x->parent], x->constraint, x->child_tbl,
                         x->parent_tbl);
            continue;
        }
        char what[512];
        if (x->child == x->parent) {
            const char *then =
                "one range after another; a row that refers to a row with a greater key "
                "(not on the target yet) is retried while other tables' rows land, then "
                "stops the job (or, with --max-rejects, is set aside)";
            if (out)
                fprintf(out,
                        "table %s is copied in key order on %s: foreign key %s of %s refers "
                        "to its own table; %s\n",
                        labels[x->child], alias, x->constraint, x->child_tbl, then);
            else
                log_info("table %s is copied in key order on %s: foreign key %s of %s refers "
                         "to its own table; %s",
                         labels[x->child], alias, x->constraint, x->child_tbl, then);
            continue;
        }
        snprintf(what, sizeof what,
                 "foreign key %s of %s refers to %s, which refers back to it (a cycle)",
                 x->constraint, x->child_tbl, x->parent_tbl);
        const char *then =
            "the tables are copied side by side; a batch with a row whose referenced row is "
            "not on the target yet is retried later, and a row that still fails when nothing "
            "else is left to copy stops the job (or, with --max-rejects, is set aside)";
        if (out)
            fprintf(out, "not ordered on %s: %s; %s\n", alias, what, then);
        else
            log_warn("target %s: %s; %s", alias, what, then);
    }
}

void bf_fk_clear(bf_fk_graph_t *g)
{
    for (int e = 0; e < g->nedges; e++) {
        free(g->edges[e].constraint);
        free(g->edges[e].child_tbl);
        free(g->edges[e].parent_tbl);
    }
    free(g->edges);
    memset(g, 0, sizeof *g);
}

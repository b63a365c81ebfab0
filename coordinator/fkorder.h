/* The order tables are copied in when the targets' tables refer to each other by
 * foreign keys: a row can only land after the row it refers to, so a job table
 * whose target table refers to another job table's target table (on the same
 * target) waits until every range of that table is done. Self-references and
 * cycles cannot be ordered: their rows are retried (bf_defer) instead. */
#ifndef BF_FKORDER_H
#define BF_FKORDER_H

#include "job.h"
#include "pg.h"
#include "tableplan.h"

#include <stdbool.h>
#include <stdio.h>

typedef struct {
    int child;        /* job table whose target table has the foreign key */
    int parent;       /* job table whose target table it refers to (== child: itself) */
    int target;       /* job target index */
    char *constraint; /* the constraint's name on the target */
    char *child_tbl;  /* the tables on the target, as written (for messages) */
    char *parent_tbl;
    bool cycle; /* part of a cycle (or a self-reference): not ordered */
} bf_fk_edge_t;

typedef struct {
    bf_fk_edge_t *edges;
    int nedges;
} bf_fk_graph_t;

/* Reads the foreign keys between the job's target tables (tgts[i]: connection to
 * job->targets[i]) and orders them (bf_fk_order). Returns 0, or -1 with the
 * error in err. */
int bf_fk_read(bf_fk_graph_t *g, const bf_job_t *job, const bf_tableplan_t *tables,
               bf_pg_t *const *tgts, char *err, size_t errlen);

/* Adds an edge (copies the strings). Pure. */
void bf_fk_add(bf_fk_graph_t *g, int child, int parent, int target, const char *constraint,
               const char *child_tbl, const char *parent_tbl);

/* Marks the edges that cannot be ordered: self-references, and edges between
 * tables that refer to each other through a cycle. Pure. */
void bf_fk_order(bf_fk_graph_t *g, int ntables);

/* Per table, the tables it waits for as "2,5" (ascending, each once), "" when
 * none: ntables malloc'd strings in a malloc'd array (bf_fk_after_free). Pure. */
char **bf_fk_after(const bf_fk_graph_t *g, int ntables);

/* Per table, whether its target table refers to itself: its ranges are then
 * copied one after another in key order (a parent row usually has a smaller key
 * than its children, so they seldom wait). ntables entries, malloc'd. Pure. */
bool *bf_fk_ordered(const bf_fk_graph_t *g, int ntables);
void bf_fk_after_free(char **after, int ntables);

/* Logs the order (info) and what cannot be ordered (warnings); with out, prints
 * it there instead (`backfill plan`). labels[t] names job table t. */
void bf_fk_report(const bf_fk_graph_t *g, const char *const *labels, const bf_job_t *job,
                  FILE *out);

void bf_fk_clear(bf_fk_graph_t *g);

#endif

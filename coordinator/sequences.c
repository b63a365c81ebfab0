#include "sequences.h"

#include "log.h"
#include "strbuf.h"

#include <stdlib.h>
#include <string.h>

/* The table's columns fed by a sequence (serial, identity), with the sequence's
 * name as pg_get_serial_sequence quotes it. Ascending sequences only. */
static const char *SQL_SEQ_COLUMNS =
    "SELECT a.attname, s.seq FROM pg_attribute a,"
    " LATERAL (SELECT pg_get_serial_sequence($1, a.attname) AS seq) s"
    " JOIN pg_sequence q ON q.seqrelid = s.seq::regclass"
    " WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped"
    " AND s.seq IS NOT NULL AND q.seqincrement > 0 ORDER BY a.attnum";

/* Advances seq to max(col) of qname when the sequence would hand out a value at
 * or below it; returns 1 (moved: *to set), 0 (left alone) or -1. */
static int s_advance(bf_pg_t *tgt, const char *qname, const char *col, const char *seq,
                     long long *to)
{
    char *qcol = PQescapeIdentifier(tgt->conn, col, strlen(col));
    if (!qcol)
        return -1;
    /* seq comes from pg_get_serial_sequence: a quoted, qualified name. The row
     * lock on the sequence (FOR UPDATE is not allowed on sequences: setval takes
     * it) is not needed: setval is atomic, and GREATEST keeps a nextval that ran
     * meanwhile. */
    char *sql = bf_xasprintf(
        "SELECT setval($1::regclass, greatest(m, CASE WHEN s.is_called THEN s.last_value ELSE "
        "s.last_value - 1 END))::text FROM (SELECT max(%s)::bigint AS m FROM %s) x, %s s "
        "WHERE m IS NOT NULL AND (m > s.last_value OR (NOT s.is_called AND m >= s.last_value))",
        qcol, qname, seq);
    PQfreemem(qcol);
    const char *params[] = {seq};
    PGresult *res = bf_pg_query(tgt, sql, 1, params);
    free(sql);
    if (!res)
        return -1;
    int rc = PQntuples(res) == 1 ? 1 : 0;
    if (rc)
        *to = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

int bf_sequences_advance(const bf_job_t *job, const bf_tableplan_t *tables, bf_pg_t *const *tgts)
{
    int moved = 0;
    for (int t = 0; t < job->ntables; t++)
        for (int i = 0; i < tables[t].nroutes; i++) {
            const bf_route_plan_t *rp = &tables[t].routes[i];
            /* Each target table once (several routes or tables may write to it). */
            bool seen = false;
            for (int u = 0; u <= t && !seen; u++)
                for (int j = 0; j < (u == t ? i : tables[u].nroutes) && !seen; j++)
                    seen = tables[u].routes[j].target == rp->target &&
                           strcmp(tables[u].routes[j].qname, rp->qname) == 0;
            bf_pg_t *tgt = tgts[rp->target];
            if (seen)
                continue;
            if (!tgt)
                return -1; /* not connected (logged) */
            const char *params[] = {rp->qname};
            PGresult *cols = bf_pg_query(tgt, SQL_SEQ_COLUMNS, 1, params);
            if (!cols) {
                log_error("target %s: reading the sequences of %s: %s",
                          job->targets[rp->target].alias, rp->label, tgt->errmsg);
                return -1;
            }
            for (int r = 0; r < PQntuples(cols); r++) {
                const char *col = PQgetvalue(cols, r, 0), *seq = PQgetvalue(cols, r, 1);
                long long to = 0;
                int rc = s_advance(tgt, rp->qname, col, seq, &to);
                if (rc < 0) {
                    log_error("target %s: advancing sequence %s of %s.%s: %s",
                              job->targets[rp->target].alias, seq, rp->label, col, tgt->errmsg);
                    PQclear(cols);
                    return -1;
                }
                if (rc > 0) {
                    moved++;
                    log_info("target %s: sequence %s advanced to %lld, the largest %s of %s "
                             "(the service's next id will not collide with the copied rows)",
                             job->targets[rp->target].alias, seq, to, col, rp->label);
                }
            }
            PQclear(cols);
        }
    return moved;
}

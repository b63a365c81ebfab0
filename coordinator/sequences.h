/* After the copy: the sequences behind the target tables' serial and identity
 * columns. The copied rows carry the monolith's ids, so a service sequence left
 * where it was would hand out ids the table already holds (duplicate keys on the
 * service's first inserts after the cutover). */
#ifndef BF_SEQUENCES_H
#define BF_SEQUENCES_H

#include "job.h"
#include "pg.h"
#include "tableplan.h"

/* Advances every sequence that feeds a column of a route's target table to that
 * column's largest value (never back; a sequence already past it is left alone).
 * tgts[i]: connection to job->targets[i]. Logs what it moved. Returns how many
 * sequences moved, or -1 (logged). */
int bf_sequences_advance(const bf_job_t *job, const bf_tableplan_t *tables, bf_pg_t *const *tgts);

#endif

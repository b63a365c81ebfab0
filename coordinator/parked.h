/* Parked rows. A row that refers to a row its target does not have (a foreign
 * key), when waiting did not bring that row while the job's other batches went
 * on, is parked: kept in public.backfill_rejects on the target with parked = true,
 * and its range goes on past it. The row it refers to may be in a later range of
 * its own table, or be parked itself. Once every range is done the coordinator
 * writes the parked rows again, in passes for as long as any goes in; a row still
 * refused then stays parked and counts as rejected. */
#ifndef BF_PARKED_H
#define BF_PARKED_H

#include "job.h"
#include "pg.h"
#include "tableplan.h"

#include <stddef.h>
#include <stdint.h>

/* Writes the job's parked rows on every target again, each with the route's mode
 * (insert, or through the staging table and its ON CONFLICT), in its own
 * transaction with the removal of its parked entry. left[t] and written[t]
 * (job->ntables entries each) get the rows of job table t still parked and
 * written now; first the first row still parked with its error. Returns the rows
 * still parked in all, or -1 (a target unreachable; logged). */
int64_t bf_parked_retry(const bf_job_t *job, const bf_tableplan_t *tables, bf_pg_t *const *tgts,
                        int64_t *left, int64_t *written, char *first, size_t firstlen);

/* The rows still parked are set aside for good (parked = false): the job allows
 * them (--max-rejects). 0 or -1 (logged). */
int bf_parked_accept(const bf_job_t *job, bf_pg_t *const *tgts);

#endif

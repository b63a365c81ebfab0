/* What the control-plane commands (coordinator, run, plan, status, verify) share:
 * the loaded job and its connections, opened on demand with one clear error. */
#ifndef BF_JOBCTX_H
#define BF_JOBCTX_H

#include "job.h"
#include "pg.h"
#include "rstate.h"
#include "tableplan.h"

enum {
    BF_NEED_SOURCE = 1,  /* connect to the source */
    BF_NEED_TARGETS = 2, /* connect to every target */
    BF_NEED_REDIS = 4,   /* connect to Redis and load the functions */
    BF_NEED_TABLES = 8,  /* resolve every table (implies source and targets) */
};

typedef struct {
    bf_job_t *job;          /* the job file */
    bf_pg_t *src;           /* source, when needed */
    bf_pg_t **tgt;          /* per job target, when needed */
    bf_rstate_t *redis;     /* when needed */
    bf_tableplan_t *tables; /* per job table, when resolved */
    bool resolved;          /* tables[] are valid */
} bf_jobctx_t;

/* Loads the job file and opens what `need` asks for. Returns BF_EXIT_OK or the
 * exit code to return; the error was printed (one line). */
int bf_jobctx_open(bf_jobctx_t *ctx, const char *path, unsigned need);
void bf_jobctx_close(bf_jobctx_t *ctx);

/* Plans every table and stores the plan in Redis, resetting the fence rows of
 * the job on the targets (whose fence tables the caller created: the
 * coordinator's start). Returns BF_EXIT_*. */
int bf_jobctx_plan_and_store(bf_jobctx_t *ctx);

#endif

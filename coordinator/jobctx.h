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
    BF_REDIS_ONLY = 16,  /* only Redis is used: other secrets may be unset */
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

/* What the plan in Redis keeps of table t of the job file, to tell a job file
 * changed since (its ranges and checkpoints belong to its tables, by position):
 * its signature, where it is read and written by which key ("public.customer ->
 * svc.public.customer"), and a hash of how (mode, version, where, columns, route
 * conditions). Freed by the caller. */
char *bf_jobctx_table_sig(const bf_table_t *t);
char *bf_jobctx_table_map(const bf_table_t *t);

/* Compares the job file's tables with those of the job's plan in Redis (planned):
 * the number of tables and each one's signature. A different one is an error
 * saying what differs and what to do (BF_EXIT_USAGE), or with replan a warning
 * (BF_EXIT_OK; *mismatch tells). A changed mapping hash is a warning. Plans of
 * an older version have no signatures: each table's source name is compared,
 * and with adopt (the coordinator) the signatures are stored once it matches. */
int bf_jobctx_check_plan(bf_jobctx_t *ctx, bool replan, bool adopt, bool *mismatch);

/* Plans every table and stores the plan in Redis, resetting the fence rows of
 * the job on the targets (whose fence tables the caller created: the
 * coordinator's start). Returns BF_EXIT_*. */
int bf_jobctx_plan_and_store(bf_jobctx_t *ctx);

#endif

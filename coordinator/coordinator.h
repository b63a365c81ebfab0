/* The coordinator: hands out leases over a ZeroMQ ROUTER, watches workers, reaps
 * expired leases and reports progress. All job state lives in Redis, so a
 * restarted coordinator continues the same job. */
#ifndef BF_COORDINATOR_H
#define BF_COORDINATOR_H

#include "jobctx.h"

#include <signal.h>
#include <stdbool.h>

typedef struct bf_coord bf_coord_t;

typedef struct {
    int heartbeat_ms;        /* default 2500 */
    int liveness;            /* missed heartbeats before a peer is dead, default 3 */
    int lease_ttl_ms;        /* default 30000 */
    int progress_ms;         /* progress line interval on stderr, 0 = none */
    bool progress_tty;       /* stderr is a terminal: a live progress display instead of lines */
    bool replan;             /* plan afresh even if targets hold fence rows of this job */
    int64_t max_rejects;     /* rows the targets may refuse (kept in backfill_rejects), default 0 */
    const char *metrics;     /* serve Prometheus metrics on this address (HOST:PORT), or NULL */
    const char *curve_cert;  /* CURVE: the coordinator's certificate (with its _secret) */
    const char *curve_allow; /* CURVE: folder of the public certificates of allowed workers */
    const char *where;       /* how workers reach it, shown to a second coordinator of the job */
    bool own_workers;        /* `run`: its workers are its children, reachable only through it */
    volatile sig_atomic_t *stop; /* set by a signal: stop waiting for the job's lock */
} bf_coord_opts_t;

/* Prepares the job: takes the job's coordinator lock (bf_joblock_take: exits
 * with BF_EXIT_USAGE while another coordinator runs the job), resolves every
 * table (errors before any row moves), plans and stores the plan when Redis has
 * none. *exit_code is set on failure (NULL
 * returned). Takes over ctx (closed by destroy). */
bf_coord_t *bf_coord_new(bf_jobctx_t *ctx, const bf_coord_opts_t *opts, int *exit_code);
void bf_coord_destroy(bf_coord_t **self_p);

/* True when every range is done already. */
bool bf_coord_complete(bf_coord_t *self);

/* Once every range is done: writes the parked rows again (bf_parked_retry), and
 * advances the targets' sequences past the copied ids (bf_sequences_advance), on
 * fresh connections when those of the job are gone. Returns BF_EXIT_OK, or
 * BF_EXIT_DATA (logged) when more rows are still parked than --max-rejects allows
 * (they stay parked: running the finished job again tries them again), or
 * BF_EXIT_CONNECT when a target could not be reached for them (logged). Sequences
 * that could not be advanced are logged, not fatal: the rows are all there. */
int bf_coord_finish(bf_coord_t *self);

/* Binds the ROUTER to endpoint, and starts the metrics server when asked. 0 or
 * -1 (logged). */
int bf_coord_bind(bf_coord_t *self, const char *endpoint);

/* Serves workers until the job is done (BF_EXIT_OK), fails, or *stop is set
 * (BF_EXIT_INTERRUPTED, workers told to drain). tick, when set, runs every loop
 * turn (the `run` supervisor watches its children there). */
int bf_coord_serve(bf_coord_t *self, volatile sig_atomic_t *stop, void (*tick)(void *),
                   void *tick_arg);

/* After the job is done: for ms, any peer that speaks (a worker still joining or
 * reconnecting) is told so, and exits instead of waiting for a coordinator that
 * is gone. */
void bf_coord_linger_done(bf_coord_t *self, int ms, volatile sig_atomic_t *stop);

/* Prints the end-of-job summary (rows, seconds, rows/s) to stdout. */
void bf_coord_summary(bf_coord_t *self, FILE *out);

/* Per-table progress from Redis; used by status and the progress line. */
typedef struct {
    char name[256];
    int64_t ranges, done, failed, est, rows, bytes, rejects;
    int64_t parked;  /* rows parked on the targets (refused for a missing referenced row),
                      * written again when every range is done; after that, still parked */
    int64_t leased;  /* held by workers (not the coordinator's pool: those are pending) */
    int64_t stuck;   /* leased ranges past their lease's expiry (worker silent) */
    int64_t width;   /* average row width from the source's statistics, 0 = unknown */
    char after[128]; /* the tables ("2,5") it is copied after (foreign keys), "" = none */
} bf_table_progress_t;

/* Fills n entries (n = job->ntables) and the retries and batches totals.
 * Returns 0 or -1. */
int bf_progress_read(bf_rstate_t *redis, int ntables, bf_table_progress_t *out, int64_t *retries,
                     int64_t *batches);

#endif

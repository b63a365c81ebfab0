/* The worker's copy engine: copies one leased range batch by batch, each batch a
 * bounded COPY from the source streamed into COPY on the target in one target
 * transaction with the range's fence row, then a checkpoint in Redis. */
#ifndef BF_COPIER_H
#define BF_COPIER_H

#include "job.h"
#include "rstate.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct bf_copier bf_copier_t;

typedef enum {
    BF_BATCH_MORE = 0,  /* batch committed, range has more rows */
    BF_BATCH_FINAL,     /* range finished */
    BF_BATCH_FENCED,    /* a newer lease owns the range: drop it */
    BF_BATCH_RETRY,     /* transient failure (connection, Redis): retry later */
    BF_BATCH_FATAL,     /* data or schema problem: needs a person */
    BF_BATCH_ROW_ERROR, /* internal to the copier: the target refused a row */
    BF_BATCH_PAUSED,    /* `backfill pause` (or cancel): nothing copied, ask again later */
    BF_BATCH_DEFERRED,  /* a row refers to one the target does not have yet: the range
                         * went back to Redis for a while (w->error says why) */
    BF_BATCH_RESPLIT,   /* internal to the copier: a target's fence rows say the range
                         * was split where Redis does not know it */
} bf_batch_result_t;

/* A lease being worked on. */
typedef struct {
    bf_range_t range; /* id, table, lo, hi, cursor (advances), token, seq (advances) */
    int64_t rows;     /* rows copied under this lease */
    int64_t bytes;    /* bytes copied under this lease */
    int64_t limit;    /* rows per batch while isolating a rejected row; 0 = the job's */
    bool located;     /* limit ends right before (or at) a refused row found by its
                       * foreign key, or a row predicted to refer to a parked one; after
                       * it batches go on from resume_limit rows, doubling (rows that
                       * refer to it may follow it closely: a refused batch costs every
                       * row of it) */
    bool alone_next;  /* located: this batch is the rows before the row, which comes
                       * alone next (else this batch is the row itself) */
    bool predicted;   /* located by s_skip_parked, not by a refusal */
    int64_t resume_limit;
    int64_t rejects;     /* rows set aside in backfill_rejects under this lease */
    int64_t parked;      /* rows parked there under this lease (written again at the end) */
    bool parked_loaded;  /* the keys of the table's rows parked on the target were read */
    bool short_batches;  /* workers are idle (SHRINK seen): quarter batches, finer splits */
    int64_t batches;     /* batches committed under this lease (the first one also brings the
                          * cursor up to the targets' fences) */
    bf_admit_t control;  /* the job's live control state at the last batch */
    char error[1024];    /* for BF_BATCH_FATAL / RETRY: what went wrong */
    int64_t fence_token; /* BF_BATCH_FENCED by a target's fence row: the token it holds */
} bf_lease_work_t;

bf_copier_t *bf_copier_new(const bf_job_t *job, int64_t lease_ttl_ms);
void bf_copier_destroy(bf_copier_t **self_p);

/* Called about every 500 ms while a batch streams rows, so that the worker can
 * heartbeat and read its messages during long batches. It must not touch the
 * lease being copied. Returning true abandons the batch (rolled back; the batch
 * result is BF_BATCH_RETRY). */
void bf_copier_set_tick(bf_copier_t *self, bool (*tick)(void *arg), void *arg);

/* Asks the keyed batch in flight (called from the tick) to end early, at the
 * last row relayed, and commit that much: the range is to be split, and the split
 * waits for the batch. Forgotten when the next batch starts. */
void bf_copier_cut(bf_copier_t *self);

/* The worker's id, recorded as done_by of the ranges it finishes. */
void bf_copier_set_name(bf_copier_t *self, const char *worker_id);

/* Copies the next batch of the lease. */
bf_batch_result_t bf_copier_batch(bf_copier_t *self, bf_lease_work_t *w);

/* Between batches, gives up all but the first of `parts` equal parts of what is
 * left of the lease's range (coordinator's SHRINK: parts - 1 workers are idle).
 * Only after a batch of this lease: until then a target's fence row may be ahead
 * of the cursor from Redis (a batch committed, its checkpoint lost), and a key
 * picked past that cursor could give a new range rows a target holds already.
 * Finds real keys about every left/parts rows past the cursor on the source (an
 * EXPLAIN estimate, then index OFFSET reads) and splits the range at them: first
 * its new end in the range's fence rows on the targets (committed durably: a
 * Redis that loses the split is found out and the split made again), then in
 * Redis from the far end; the lease's hi becomes the first key, and its batches
 * from now on are a quarter of the usual size (short_batches). Parts are at least
 * a quarter batch. Returns 0 split (*made new ranges), 1 not split (too little
 * left, no batch yet, or a target could not record it), 2 the lease is no longer
 * held, -1 Redis failed (w->error
 * says how) and a split may or may not have happened: the caller must stop copying
 * this lease (its expiry returns it to pending). */
int bf_copier_split(bf_copier_t *self, bf_lease_work_t *w, int parts, int *made);

/* Hands a lease back to pending in Redis (clean stop or failure). Returns the
 * bf_rstate_release() result. */
int bf_copier_release(bf_copier_t *self, bf_lease_work_t *w, const char *reason, bool failure);

/* After BF_BATCH_FENCED by a target's fence row (w->fence_token above the lease's):
 * when Redis still holds this lease, Redis lost writes (the lease of that newer
 * token, and maybe the counter's steps past it). Raises Redis's fencing counter
 * past the target's token and puts the range back to pending, so that its next
 * lease, at once and with a newer token, goes on from the fence row (else every
 * lease of it would wait out its expiry and carry a token still too old). A lease
 * Redis gave to another since is left alone. Returns 1 when the range went back,
 * 0 when not, -1 on a Redis error. */
int bf_copier_fenced(bf_copier_t *self, bf_lease_work_t *w);

/* Asks Redis whether every range of the job is done: 1 yes, 0 no, -1 error. For a
 * worker whose coordinator is gone (a coordinator started on a finished job exits
 * at once, and no DRAIN reaches the workers). */
int bf_copier_job_complete(bf_copier_t *self);

#endif

/* The job's durable state in Redis: plan, leases, checkpoints, counters. State
 * changes go through the Redis Functions in functions.lua (FCALL). */
#ifndef BF_RSTATE_H
#define BF_RSTATE_H

#include <hiredis.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    redisContext *ctx;      /* open connection, NULL while disconnected */
    char *url;              /* redis URL with password (never logged) */
    char redacted[512];     /* URL for messages */
    char prefix[200];       /* "bf:{job}:" */
    char key[320];          /* scratch for bf_rstate_key() */
    char errmsg[512];       /* last error, one line */
    int timeout_ms;         /* connect and command timeout, 0 = the defaults (5 s, 30 s) */
    bool connected;         /* a connection was made once */
    atomic_uint reconnects; /* connections made after the first (Redis may have restarted
                             * meanwhile); atomic: another thread may read it */
} bf_rstate_t;

/* A range as stored: [lo, hi) on the key, open where NULL. */
typedef struct {
    int64_t id;     /* range id, 0.. */
    int table;      /* index into job->tables */
    char *lo, *hi;  /* bounds as key text, NULL = open */
    char *cursor;   /* last key copied, NULL = nothing copied yet */
    int64_t token;  /* fencing token of the current lease */
    int64_t seq;    /* last checkpointed batch */
    int64_t est;    /* estimated rows at plan time */
    int64_t rows;   /* rows copied so far */
    int64_t bytes;  /* bytes copied so far */
    char state[16]; /* pending, leased, done, failed */
} bf_range_t;

void bf_range_clear(bf_range_t *r);

/* Connects (5 s timeout), authenticates and selects the db from the URL. Logs
 * one line naming the redacted URL on failure and returns NULL. */
bf_rstate_t *bf_rstate_connect(const char *url, const char *job_name);
void bf_rstate_destroy(bf_rstate_t **self_p);

/* Connect and command timeout from now on (this connection and later ones): for a
 * caller that must not wait long, e.g. one renewing a lock with a TTL. */
void bf_rstate_set_timeout(bf_rstate_t *self, int ms);

/* "bf:{job}:<suffix>" in a scratch buffer valid until the next call. */
const char *bf_rstate_key(bf_rstate_t *self, const char *suffix);

/* Runs a command (hiredis format). Reconnects once when the connection broke.
 * Returns the reply (freeReplyObject) or NULL with self->errmsg set; a Redis
 * error reply is returned as NULL too. Not logged: callers decide. */
redisReply *bf_rstate_cmd(bf_rstate_t *self, const char *fmt, ...);
redisReply *bf_rstate_argv(bf_rstate_t *self, int argc, const char **argv);

/* Loads functions.lua (FUNCTION LOAD REPLACE) over an older version of it (see
 * its first lines). 0, -1 (an error) or -2 (Redis holds a newer version: an older
 * binary must not replace it); logged. */
int bf_rstate_load_functions(bf_rstate_t *self);

/* The version of the functions this binary loads (from functions.lua's name). */
int bf_rstate_functions_version(void);

/* A worker and its coordinator must share the version of these functions (HELLO
 * and WELCOME carry it as fv). Whether a peer's release (version: its release
 * name; fv: its functions version, 0 for a release from before it was sent) can
 * work with this one; if not, what to do, naming both releases, in buf. peer
 * names the other side ("worker w1 on host a", "the coordinator at tcp://..."), me this one
 * ("this coordinator"). */
bool bf_rstate_same_release(const char *peer, const char *me, const char *version, int64_t fv,
                            char *buf, size_t n);

/* 1 when the job has a plan stored, 0 when not, -1 on error. */
int bf_rstate_is_planned(bf_rstate_t *self);

/* 1 when the job is planned and every range is done, 0 when not, -1 on error. */
int bf_rstate_is_complete(bf_rstate_t *self);

/* One more than the largest range id of the job (ids below it may be missing:
 * Redis lost a split whose id the targets' fence rows hold; it is made again with
 * that id when its range is next leased), and how many ranges Redis counts. 0 or
 * -1. */
int bf_rstate_id_end(bf_rstate_t *self, int64_t *end, int64_t *count);

/* Leases the next pending ranges in one round trip, out[i] to owners[i], until
 * none is pending. Returns how many were leased (out[0..] filled; fewer than n
 * when the pending ranges ran out), or -1 on error. */
int bf_rstate_lease(bf_rstate_t *self, int64_t ttl_ms, int n, const char *const *owners,
                    bf_range_t *out);

typedef enum { BF_CP_OK = 0, BF_CP_DUP = 1, BF_CP_STALE = 2, BF_CP_ERROR = -1 } bf_cp_result_t;

/* Records batch `seq` of lease (id, token): cursor, rows, bytes, rejects (set
 * aside), parked (kept until every range is done: refused for a missing
 * referenced row), and its
 * duration batch_ms (-1: not measured) for the latency histogram; final ends the
 * range, else the lease is extended by ttl_ms. hi is the range's end as the worker
 * has it (NULL = open): a final checkpoint is refused (STALE) when Redis holds
 * another (a split Redis lost). who: the worker's id, recorded as done_by (NULL:
 * the lease's owner is). */
bf_cp_result_t bf_rstate_checkpoint(bf_rstate_t *self, int64_t id, int64_t token, int64_t seq,
                                    const char *cursor, int64_t rows, int64_t bytes,
                                    int64_t rejects, int64_t parked, bool final, int64_t ttl_ms,
                                    int64_t batch_ms, const char *hi, const char *who);

/* Puts a leased range back. counts_as_attempt: a failure (else a clean hand-back).
 * Returns 0 pending again, 1 failed for good (attempts exhausted), 2 stale, -1 error. */
int bf_rstate_release(bf_rstate_t *self, int64_t id, int64_t token, const char *reason,
                      bool counts_as_attempt, int max_attempts);

/* A range bound as checkpoints and fence rows carry it: "=" key, or "-" when
 * open (NULL). malloc'd. */
char *bf_rstate_bound(const char *key);

/* The owner of lease (id, token) gives up [key, hi) of its range (key is past its
 * cursor, below hi): its hi becomes key, and [key, old hi) a new pending range,
 * *new_id. est_new / est_kept: estimated rows of the new part and left in the
 * owner's. want_id >= 0: the id the new part is to have (a split Redis lost, made
 * again: the part's fence rows carry that id). Else it gets the job's next id, or
 * floor if larger (one more than the largest range id in the fence rows of the
 * owner's targets: an id Redis lost with a split is not given again). Returns 0,
 * 1 when the lease is no longer held, 2 when want_id is another range's, -1 on
 * error (the split may or may not have happened: the caller must not copy past
 * key before it knows). */
int bf_rstate_split(bf_rstate_t *self, int64_t id, int64_t token, const char *key, int64_t est_new,
                    int64_t est_kept, int64_t want_id, int64_t floor, int64_t *new_id);

/* Live control (`backfill pause|resume|cancel|throttle`), asked before each batch. */
typedef enum { BF_ADMIT_RUN = 0, BF_ADMIT_PAUSED, BF_ADMIT_CANCEL, BF_ADMIT_BACKOFF } bf_admit_t;

/* Asks to copy a batch of up to `rows` rows. Returns 0 with *state; when it is
 * BF_ADMIT_RUN, *granted rows (fewer under a throttle) may be copied after
 * waiting *wait_ms. -1 on error. */
int bf_rstate_admit(bf_rstate_t *self, int64_t rows, bf_admit_t *state, int64_t *granted,
                    int64_t *wait_ms);

/* Extends the given leases; writes up to *nlost ids no longer held into lost.
 * Returns 0 or -1. */
int bf_rstate_renew(bf_rstate_t *self, int64_t ttl_ms, int n, const int64_t *ids,
                    const int64_t *tokens, int64_t *lost, int *nlost);

/* Names owners[i] the holder of range ids[i] (leases the coordinator took ahead
 * and handed out), in one pipelined round trip. Unconditional: the name only
 * informs (done_by, and which pooled leases a new coordinator puts back), and the
 * names are written in hand-out order, so the last holder's name wins. Returns n,
 * or -1. */
int64_t bf_rstate_assign(bf_rstate_t *self, int n, const int64_t *ids, const char *const *owners);
/* Returns leases taken ahead to pending, not counted as attempts: the n given
 * (ids, tokens), or with n == 0 every lease whose owner starts with owner_prefix.
 * Only leases still leased and owned so are touched. Returns how many, or -1. */
int64_t bf_rstate_unpool(bf_rstate_t *self, const char *owner_prefix, int n, const int64_t *ids,
                         const int64_t *tokens);
/* A batch of lease (id, token) referred to rows the target does not have yet (a
 * foreign key): sets the range back for delay_ms or more (doubling with each
 * deferral of it), not counted as an attempt. Returns 0 (deferred: *after_ms set),
 * 1 (no batch of the job committed since its last deferral: waiting would not
 * help; the lease is still held), 2 (the lease is not held), -1 (error). */
int bf_rstate_defer(bf_rstate_t *self, int64_t id, int64_t token, const char *reason,
                    int64_t delay_ms, int64_t *after_ms);
/* Moves the ranges of waiting tables whose tables to wait for are done to
 * pending; returns how many, or -1. */
int64_t bf_rstate_unblock(bf_rstate_t *self);

/* Returns expired leases to pending; returns how many, or -1. */
int bf_rstate_reap(bf_rstate_t *self);

/* Reads one range. 0, 1 when there is no range of that id (see bf_rstate_id_end),
 * -1 on error. */
int bf_rstate_get_range(bf_rstate_t *self, int64_t id, bf_range_t *out);

/* Reads an integer field of a hash (0 when missing); -1 on error. */
int bf_rstate_hget_int(bf_rstate_t *self, const char *suffix, const char *field, int64_t *out);

/* Owner names of the leases a coordinator takes ahead start with this (then its
 * epoch); a worker's lease is named for the worker ("host:pid:tag"), and no host
 * name has an '@': a worker on a host called "coordinator" is not taken for a pool
 * (whose leases a starting coordinator puts back). */
#define BF_POOL_OWNER_PREFIX "@coordinator:"

/* The table of leased ranges ids[0..n-1] and whether each is in a coordinator's
 * pool (taken ahead, not handed out), in one pipelined round trip: tbl[i] (-1 when
 * Redis answered an error for it), pooled[i]. 0, or -1 when the connection failed. */
int bf_rstate_lease_info(bf_rstate_t *self, int n, const int64_t *ids, int64_t *tbl, bool *pooled);

/* Replaces any stored state of the job with a new plan: for table t,
 * ranges[t][0..nranges[t]) (lo/hi as key text, NULL = open) with their estimates.
 * labels[t] names the table. after (may be NULL): after[t] lists the tables
 * ("2,5") whose ranges must all be done before table t's are leased (NULL or ""
 * = none). ordered (may be NULL): ordered[t] has table t's ranges leased one
 * after another in key order (its target table refers to itself). sigs[t] and
 * maps[t] (may be NULL) are what the job file said of table t (meta tbl:<t>:sig,
 * tbl:<t>:map; see jobctx.h). Atomic (MULTI/EXEC). 0 or -1 (logged). */
struct bf_plan_range;
int bf_rstate_store_plan(bf_rstate_t *self, int ntables, const char *const *labels,
                         const struct bf_plan_range *const *ranges, const size_t *nranges,
                         const char *const *after, const bool *ordered, const char *const *sigs,
                         const char *const *maps);

/* Deletes every key of the job but the fencing counter and the coordinator
 * lock. 0 or -1. */
int bf_rstate_forget(bf_rstate_t *self);

#endif

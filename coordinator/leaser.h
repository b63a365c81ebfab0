/* The coordinator's Redis work off its message loop. A thread with its own Redis
 * connection
 *   - keeps a pool of leases taken ahead (owner "@coordinator:<epoch>"), so that a
 *     worker's request is answered from memory whatever Redis is doing at that
 *     moment (an AOF write the kernel holds for 100 ms stalls every client); the
 *     pool holds about 0.2 s of hand-outs, none when the rate is low;
 *   - names the worker each pooled lease went to (range field owner), renews the leases of
 *     workers that sent a heartbeat, renews its own pooled leases, reaps expired
 *     leases, and reads the done count, and hands the results back.
 * The message loop never waits for Redis on these paths. Leases still pooled when
 * the leaser stops go back to pending (not counted as attempts); a coordinator
 * that died leaves its pool leased until the next one starts (bf_rstate_unpool)
 * or the leases expire. */
#ifndef BF_LEASER_H
#define BF_LEASER_H

#include "rstate.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct bf_leaser bf_leaser_t;

/* Takes over redis (its own connection). owner names the pool's leases;
 * reap_ms: how often expired leases are reaped. NULL when the thread cannot start. */
bf_leaser_t *bf_leaser_start(bf_rstate_t *redis, const char *owner, int64_t ttl_ms,
                             int64_t reap_ms);
/* Stops the thread: names the owners still to be named, returns the pooled leases
 * to pending, and closes its connection. */
void bf_leaser_stop(bf_leaser_t **self_p);

/* A file descriptor that is readable when the leaser has something for the loop
 * (leases after a shortage, lost leases, a count asked for): poll it, then call
 * bf_leaser_drain_fd. */
int bf_leaser_fd(bf_leaser_t *self);
void bf_leaser_drain_fd(bf_leaser_t *self);

/* Takes up to min(n, cap) leases from the pool into out (never waits): n is every
 * request the loop has now (0 when none); those it does not get are filled for.
 * Returns how many were taken; *exhausted is set when the pool is empty and the
 * last try found nothing pending. */
int bf_leaser_take(bf_leaser_t *self, int n, int cap, bf_range_t *out, bool *exhausted);
/* The lease of range id just taken went to worker `owner` (queued; written in
 * bulk). */
void bf_leaser_assign(bf_leaser_t *self, int64_t id, const char *owner);

/* Renews the leases a worker (session sid) holds (queued). */
void bf_leaser_renew(bf_leaser_t *self, uint64_t sid, int n, const int64_t *ids,
                     const int64_t *tokens);
/* Leases found no longer held at a renewal: up to max (sid, id, token), returns
 * how many. */
int bf_leaser_lost(bf_leaser_t *self, int max, uint64_t *sids, int64_t *ids, int64_t *tokens);

typedef struct {
    uint64_t gen;    /* increases with each read; 0 = none yet */
    bool ok;         /* this read succeeded (else Redis is unreachable) */
    int64_t done;    /* stats done_total */
    int64_t failed;  /* stats failed_total */
    int64_t nranges; /* meta nranges, read after done */
    bool cancel;     /* meta cancel */
} bf_leaser_counts_t;
/* Asks for a fresh read of the counts (one that starts after this call). */
void bf_leaser_recount(bf_leaser_t *self);
/* The latest counts. */
void bf_leaser_counts(bf_leaser_t *self, bf_leaser_counts_t *out);

/* Expired leases reaped since the last call. */
int bf_leaser_reaped(bf_leaser_t *self);
/* The last Redis error, when one happened since the last call (copied to buf):
 * true. */
bool bf_leaser_error(bf_leaser_t *self, char *buf, size_t len);

/* Times the leaser's Redis connection was made again (bf_rstate_t.reconnects). */
unsigned bf_leaser_reconnects(bf_leaser_t *self);
/* Redis's counters were raised past the targets' (the coordinator's floor) at a
 * moment when the leaser's connection had been made again `reconnects` times.
 * The leaser takes no lease while its connection was made again since: Redis may
 * have lost writes, and the lease could carry a token the targets hold already. */
void bf_leaser_floored(bf_leaser_t *self, unsigned reconnects);
/* Whether the leaser waits for that raise. */
bool bf_leaser_waits(bf_leaser_t *self);

#endif

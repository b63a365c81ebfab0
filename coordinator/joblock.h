/* One coordinator per job: a lock in Redis (key bf:{job}:lock) that names its
 * holder, taken before the coordinator plans or touches the job, renewed every
 * 2 s by a thread with its own connection, expiring 10 s after the last renewal
 * (a coordinator that was killed), and deleted when the coordinator stops.
 *
 * A second coordinator of a running job waits while the lock may be a dead
 * one's and stops with an error naming the holder as soon as it sees the lock
 * renewed (Redis's time left on it grew). The holder is judged gone at once when
 * it is a process of this boot and PID namespace that no longer runs (or is a
 * zombie), so a coordinator restarted where it was killed does not wait out the
 * lock; a container restarted in a new PID namespace does wait. A lock that
 * vanished (Redis lost it, or it expired while Redis was out of reach) is taken
 * again at the next renewal; one another coordinator took makes this one stop. */
#ifndef BF_JOBLOCK_H
#define BF_JOBLOCK_H

#include "rstate.h"

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#define BF_JOBLOCK_TTL_MS 10000
#define BF_JOBLOCK_RENEW_MS 2000

typedef struct bf_joblock bf_joblock_t;

/* Takes the lock of job `job` for this process. `what` says where this
 * coordinator is reached, for those who find the lock taken ("listening on
 * tcp://0.0.0.0:5570"). Returns NULL with *exit_code set when another
 * coordinator runs the job (BF_EXIT_USAGE, logged with its pid, host and
 * endpoint), Redis cannot be reached (BF_EXIT_CONNECT), or *stop was set while
 * it waited (BF_EXIT_INTERRUPTED; stop may be NULL). */
bf_joblock_t *bf_joblock_take(const char *redis_url, const char *job, const char *what,
                              volatile sig_atomic_t *stop, int *exit_code);

/* True once another coordinator holds the lock (taken while this one could not
 * renew it): this one must stop. Its holder's description in buf. */
bool bf_joblock_lost(bf_joblock_t *self, char *buf, size_t len);

/* Stops renewing and deletes the lock if it is still this process's. */
void bf_joblock_release(bf_joblock_t **self_p);

/* The readable part of the job's lock (who runs the job): 1 with buf filled, 0
 * when no coordinator holds it, -1 on error. */
int bf_joblock_holder(bf_rstate_t *redis, char *buf, size_t len);

#endif

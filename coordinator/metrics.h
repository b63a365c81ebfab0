/* Prometheus metrics of a job over HTTP (libmicrohttpd): `GET /metrics` returns
 * the text exposition format. Counters come from the job's state in Redis at
 * scrape time (the same numbers `backfill status` shows); the number of
 * connected workers from the coordinator. */
#ifndef BF_METRICS_H
#define BF_METRICS_H

#include "job.h"

#include <stddef.h>

typedef struct bf_metrics bf_metrics_t;

/* Parses "tcp://HOST:PORT", "HOST:PORT" or ":PORT" (all interfaces). Returns 0, or
 * -1 with a message in err. Pure. */
int bf_metrics_parse_addr(const char *addr, char *host, size_t hostlen, int *port, char *err,
                          size_t errlen);

/* Starts serving on addr (a thread of its own). job must outlive the server.
 * Returns NULL with a message in err when the address is bad or taken. */
bf_metrics_t *bf_metrics_start(const char *addr, const bf_job_t *job, char *err, size_t errlen);

/* Workers connected now (the coordinator's view), shown as a gauge. */
void bf_metrics_set_workers(bf_metrics_t *self, int workers);

void bf_metrics_stop(bf_metrics_t **self_p);

#endif

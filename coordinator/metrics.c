#include "metrics.h"

#include "coordinator.h"
#include "log.h"
#include "progress.h"
#include "rstate.h"
#include "strbuf.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bf_metrics {
    struct MHD_Daemon *daemon;
    const bf_job_t *job;
    bf_rstate_t *redis; /* used only by the server's thread, opened on first scrape */
    atomic_int workers;
};

int bf_metrics_parse_addr(const char *addr, char *host, size_t hostlen, int *port, char *err,
                          size_t errlen)
{
    if (strncmp(addr, "tcp://", 6) == 0)
        addr += 6;
    const char *colon = strrchr(addr, ':');
    if (!colon) {
        snprintf(err, errlen, "metrics address '%s': expected HOST:PORT, e.g. 0.0.0.0:9570", addr);
        return -1;
    }
    size_t n = (size_t)(colon - addr);
    if (n >= hostlen) {
        snprintf(err, errlen, "metrics address '%s': host name too long", addr);
        return -1;
    }
    memcpy(host, addr, n);
    host[n] = '\0';
    if (strcmp(host, "*") == 0)
        host[0] = '\0';
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || p < 1 || p > 65535) {
        snprintf(err, errlen, "metrics address '%s': port must be 1-65535", addr);
        return -1;
    }
    *port = (int)p;
    return 0;
}

/* A label value with \, " and newlines escaped as the exposition format asks. */
static void s_label(bf_strbuf_t *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            bf_strbuf_appendf(b, "\\%c", *v);
        else if (*v == '\n')
            bf_strbuf_append(b, "\\n");
        else
            bf_strbuf_appendn(b, v, 1);
    }
}

static void s_head(bf_strbuf_t *b, const char *name, const char *type, const char *help)
{
    bf_strbuf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{job="..",table=".."[,extra]} value */
static void s_sample(bf_strbuf_t *b, const char *name, const char *job, const char *table,
                     const char *extra, long long value)
{
    bf_strbuf_appendf(b, "%s{job=\"", name);
    s_label(b, job);
    if (table) {
        bf_strbuf_append(b, "\",table=\"");
        s_label(b, table);
    }
    bf_strbuf_appendf(b, "\"%s%s} %lld\n", extra ? "," : "", extra ? extra : "", value);
}

static long long s_field(redisReply *h, const char *field)
{
    for (size_t i = 0; h && h->type == REDIS_REPLY_ARRAY && i + 1 < h->elements; i += 2)
        if (strcmp(h->element[i]->str, field) == 0)
            return atoll(h->element[i + 1]->str);
    return 0;
}

static bool s_has(redisReply *h, const char *field)
{
    for (size_t i = 0; h && h->type == REDIS_REPLY_ARRAY && i + 1 < h->elements; i += 2)
        if (strcmp(h->element[i]->str, field) == 0)
            return true;
    return false;
}

/* Bucket bounds in ms, as bf_checkpoint in functions.lua counts them. */
static const int s_lat_bounds[] = {50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000};
#define NBOUNDS (int)(sizeof s_lat_bounds / sizeof s_lat_bounds[0])

/* The exposition text, or NULL when Redis cannot be read. */
static char *s_render(bf_metrics_t *self)
{
    const bf_job_t *job = self->job;
    if (!self->redis)
        self->redis = bf_rstate_connect(job->redis, job->name);
    if (!self->redis)
        return NULL;
    int n = job->ntables;
    bf_table_progress_t *p = bf_xcalloc((size_t)n, sizeof *p);
    int64_t retries = 0, batches = 0;
    redisReply *st = NULL, *meta = NULL;
    if (bf_progress_read(self->redis, n, p, &retries, &batches) != 0 ||
        !(st = bf_rstate_cmd(self->redis, "HGETALL %s", bf_rstate_key(self->redis, "stats"))) ||
        !(meta = bf_rstate_cmd(self->redis, "HGETALL %s", bf_rstate_key(self->redis, "meta")))) {
        free(p);
        if (st)
            freeReplyObject(st);
        return NULL;
    }
    const char *j = job->name;
    bf_strbuf_t b;
    bf_strbuf_init(&b);
    s_head(&b, "backfill_rows_copied_total", "counter", "Rows written to the targets.");
    for (int t = 0; t < n; t++)
        s_sample(&b, "backfill_rows_copied_total", j, p[t].name, NULL, p[t].rows);
    s_head(&b, "backfill_bytes_copied_total", "counter", "Bytes of row data copied.");
    for (int t = 0; t < n; t++)
        s_sample(&b, "backfill_bytes_copied_total", j, p[t].name, NULL, p[t].bytes);
    s_head(&b, "backfill_rows_estimated", "gauge", "Rows the plan expects per table.");
    for (int t = 0; t < n; t++)
        s_sample(&b, "backfill_rows_estimated", j, p[t].name, NULL, p[t].est);
    s_head(&b, "backfill_rows_rejected_total", "counter",
           "Rows the targets refused, kept in backfill_rejects.");
    for (int t = 0; t < n; t++)
        s_sample(&b, "backfill_rows_rejected_total", j, p[t].name, NULL, p[t].rejects);
    s_head(&b, "backfill_rows_parked", "gauge",
           "Rows parked in backfill_rejects (they referred to rows the target did not have), "
           "written again when every range is done; after that, the rows still refused.");
    for (int t = 0; t < n; t++)
        s_sample(&b, "backfill_rows_parked", j, p[t].name, NULL, p[t].parked);
    s_head(&b, "backfill_ranges", "gauge", "Ranges by state.");
    for (int t = 0; t < n; t++) {
        int64_t pending = p[t].ranges - p[t].done - p[t].leased - p[t].failed;
        s_sample(&b, "backfill_ranges", j, p[t].name, "state=\"done\"", p[t].done);
        s_sample(&b, "backfill_ranges", j, p[t].name, "state=\"leased\"", p[t].leased);
        s_sample(&b, "backfill_ranges", j, p[t].name, "state=\"pending\"",
                 pending > 0 ? pending : 0);
        s_sample(&b, "backfill_ranges", j, p[t].name, "state=\"failed\"", p[t].failed);
    }
    s_head(&b, "backfill_batches_total", "counter", "Batches committed and checkpointed.");
    s_sample(&b, "backfill_batches_total", j, NULL, NULL, batches);
    s_head(&b, "backfill_retries_total", "counter",
           "Ranges handed back after a failure or an expired lease.");
    s_sample(&b, "backfill_retries_total", j, NULL, NULL, retries);
    s_head(&b, "backfill_splits_total", "counter", "Ranges split for idle workers.");
    s_sample(&b, "backfill_splits_total", j, NULL, NULL, s_field(st, "splits"));
    s_head(&b, "backfill_deferred_total", "counter",
           "Batches set back because a row referred to one the target did not have yet.");
    s_sample(&b, "backfill_deferred_total", j, NULL, NULL, s_field(st, "deferred"));
    s_head(&b, "backfill_table_waiting", "gauge",
           "1 while a table waits for the tables its foreign keys refer to.");
    for (int t = 0; t < n; t++) {
        char names[8];
        s_sample(&b, "backfill_table_waiting", j, p[t].name, NULL,
                 bf_progress_waits(p, n, t, names, sizeof names));
    }
    s_head(&b, "backfill_batch_duration_seconds", "histogram",
           "Time from a batch's start to its checkpoint.");
    long long cum = 0;
    char f[32], le[48];
    for (int i = 0; i <= NBOUNDS; i++) {
        snprintf(f, sizeof f, "lat:%d", i + 1);
        cum += s_field(st, f);
        if (i < NBOUNDS)
            snprintf(le, sizeof le, "le=\"%g\"", s_lat_bounds[i] / 1000.0);
        else
            snprintf(le, sizeof le, "le=\"+Inf\"");
        s_sample(&b, "backfill_batch_duration_seconds_bucket", j, NULL, le, cum);
    }
    bf_strbuf_append(&b, "backfill_batch_duration_seconds_sum{job=\"");
    s_label(&b, j);
    bf_strbuf_appendf(&b, "\"} %.3f\n", (double)s_field(st, "lat_sum_ms") / 1000.0);
    s_sample(&b, "backfill_batch_duration_seconds_count", j, NULL, NULL, cum);
    s_head(&b, "backfill_workers_connected", "gauge", "Workers connected to the coordinator.");
    s_sample(&b, "backfill_workers_connected", j, NULL, NULL, atomic_load(&self->workers));
    s_head(&b, "backfill_paused", "gauge", "1 while the job is paused (backfill pause).");
    s_sample(&b, "backfill_paused", j, NULL, NULL, s_field(meta, "paused"));
    s_head(&b, "backfill_backoff", "gauge",
           "1 while the workers back off (throttle_query above throttle_max).");
    s_sample(&b, "backfill_backoff", j, NULL, NULL, s_has(meta, "backoff"));
    s_head(&b, "backfill_throttle_rows_per_second", "gauge",
           "Rate limit over all workers (backfill throttle), 0 = none.");
    s_sample(&b, "backfill_throttle_rows_per_second", j, NULL, NULL, s_field(meta, "rate"));
    freeReplyObject(st);
    freeReplyObject(meta);
    free(p);
    return bf_strbuf_take(&b);
}

static enum MHD_Result s_reply(struct MHD_Connection *conn, unsigned status, char *body,
                               const char *type)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(resp, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result s_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **req)
{
    (void)version;
    (void)upload;
    (void)upload_size;
    (void)req;
    bf_metrics_t *self = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return s_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, bf_xstrdup("GET /metrics\n"),
                       "text/plain");
    if (strcmp(url, "/metrics") != 0)
        return s_reply(conn, MHD_HTTP_NOT_FOUND,
                       bf_xstrdup("backfill coordinator: metrics are at /metrics\n"), "text/plain");
    char *text = s_render(self);
    if (!text)
        return s_reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                       bf_xasprintf("cannot read the job's state from redis: %s\n",
                                    self->redis ? self->redis->errmsg : "not connected"),
                       "text/plain");
    return s_reply(conn, MHD_HTTP_OK, text, "text/plain; version=0.0.4; charset=utf-8");
}

bf_metrics_t *bf_metrics_start(const char *addr, const bf_job_t *job, char *err, size_t errlen)
{
    char host[256];
    int port = 0;
    if (bf_metrics_parse_addr(addr, host, sizeof host, &port, err, errlen) != 0)
        return NULL;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (host[0] == '\0') {
        sa.sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
        if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai) {
            snprintf(err, errlen, "metrics address '%s': cannot resolve host '%s'", addr, host);
            return NULL;
        }
        sa.sin_addr = ((struct sockaddr_in *)ai->ai_addr)->sin_addr;
        freeaddrinfo(ai);
    }
    bf_metrics_t *self = bf_xcalloc(1, sizeof *self);
    self->job = job;
    atomic_init(&self->workers, 0);
    self->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port, NULL, NULL,
                                    s_handle, self, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                    MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (!self->daemon) {
        snprintf(err, errlen, "cannot serve metrics on %s (port taken or not allowed?)", addr);
        free(self);
        return NULL;
    }
    log_info("metrics on http://%s:%d/metrics", host[0] ? host : "0.0.0.0", port);
    return self;
}

void bf_metrics_set_workers(bf_metrics_t *self, int workers)
{
    if (self)
        atomic_store(&self->workers, workers);
}

void bf_metrics_stop(bf_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bf_metrics_t *self = *self_p;
    MHD_stop_daemon(self->daemon);
    bf_rstate_destroy(&self->redis);
    free(self);
    *self_p = NULL;
}

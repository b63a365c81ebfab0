/* The progress display of `backfill run` (on a terminal) and `backfill status
 * --watch`: one bar per table and a total line with rows, bytes, rate, ETA,
 * workers, rejects and stuck ranges. On a terminal it redraws in place; elsewhere
 * it prints plain lines. */
#ifndef BF_PROGRESS_H
#define BF_PROGRESS_H

#include "coordinator.h"

#include <stdbool.h>
#include <stdio.h>

typedef struct {
    double elapsed_s; /* since this run (or watch) started */
    double rate;      /* rows/s */
    double eta_s;     /* seconds left, -1 = unknown */
    bool paused, cancelled;
    long long throttle;  /* rows/s limit, 0 = none */
    bool backoff;        /* throttle_query above throttle_max: workers wait */
    bool no_coordinator; /* (status --watch) no coordinator holds the job's lock */
} bf_progress_info_t;

typedef struct {
    FILE *out;
    bool tty;  /* redraw in place with ANSI sequences */
    int lines; /* lines of the frame on screen (tty) */
} bf_progress_view_t;

/* Rows/s over a sliding window of samples. */
#define BF_RATE_SAMPLES 64
typedef struct {
    long long t[BF_RATE_SAMPLES]; /* ms */
    int64_t rows[BF_RATE_SAMPLES];
    int n;
    int64_t eta_rows; /* rows when the ETA was last computed */
    int64_t rows0;    /* the count before the first move */
    bool rows0_set, moved;
    long long eta_t; /* ms then */
    double eta_s;    /* the ETA then */
} bf_rate_window_t;

/* Adds a sample and returns the rate over the last window_ms, counted from the
 * first sample after which rows moved (0 until they have). Pure. */
double bf_rate_window_add(bf_rate_window_t *w, long long now_ms, int64_t rows, long long window_ms);

/* The seconds left: (est - rows) / rate - lag_s when rows moved since the last
 * call (lag_s: rows are counted when a batch ends, so the copy is about half a
 * batch further along than the count; 0 when unknown); between two checkpoints
 * the last ETA counts down instead of jumping back up. -1 when unknown. Pure. */
double bf_rate_window_eta(bf_rate_window_t *w, long long now_ms, int64_t est, int64_t rows,
                          double rate, double lag_s);

/* Bytes left to copy: per table, rows left times its bytes per row - measured
 * once the table has rows copied, else its statistics' row width scaled by how
 * copied bytes compare with the widths of the tables copied so far (or the
 * average bytes per row so far when a table has no width). -1 before any byte is
 * copied. Rows of different tables cost differently; the ETA follows bytes. */
int64_t bf_progress_bytes_left(const bf_table_progress_t *p, int n);

/* Fills info->rate (rows/s over window_ms, from rows_w) and info->eta_s (bytes
 * left over the byte rate, from bytes_w; rows when no byte is counted yet). */
void bf_progress_estimate(bf_progress_info_t *info, bf_rate_window_t *rows_w,
                          bf_rate_window_t *bytes_w, const bf_table_progress_t *p, int n,
                          long long now_ms, long long window_ms, double lag_s);

/* The tables table t waits for (foreign keys on the targets: it is copied after
 * them) that are not done yet: up to max indexes into on; returns how many. Pure. */
int bf_progress_waiting_on(const bf_table_progress_t *p, int n, int t, int *on, int max);

/* Whether table t waits for others not done yet; their names, comma-separated,
 * into names. Pure. */
bool bf_progress_waits(const bf_table_progress_t *p, int n, int t, char *names, size_t len);

/* The seconds left at this rate, or -1 when unknown. Pure. */
double bf_progress_eta(int64_t est, int64_t rows, double rate);

/* Formats n (>= 0) with thousands separators into buf. Pure. */
const char *bf_progress_count(long long n, char *buf, size_t len);

/* Reads the job's live control state (pause, cancel, throttle, backoff) from
 * Redis into info; leaves it unchanged when Redis cannot be read. */
void bf_progress_control(bf_rstate_t *redis, bf_progress_info_t *info);

/* Draws one frame: replaces the previous one on a terminal. */
void bf_progress_draw(bf_progress_view_t *v, const char *job, const bf_table_progress_t *p, int n,
                      const bf_progress_info_t *info);

/* Removes the frame from a terminal (before other output). */
void bf_progress_erase(bf_progress_view_t *v);

#endif

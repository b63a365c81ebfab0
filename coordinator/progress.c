#include "progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BAR_WIDTH 24

double bf_rate_window_add(bf_rate_window_t *w, long long now_ms, int64_t rows, long long window_ms)
{
    if (w->n == BF_RATE_SAMPLES) {
        memmove(w->t, w->t + 1, (BF_RATE_SAMPLES - 1) * sizeof *w->t);
        memmove(w->rows, w->rows + 1, (BF_RATE_SAMPLES - 1) * sizeof *w->rows);
        w->n--;
    }
    /* Until the count first moves (start-up: connecting, planning, the first
     * batches in flight), keep no sample: the rate is counted from the first
     * sample that shows rows copied, not diluted by the time before it. */
    if (w->n == 1 && rows == w->rows[0])
        w->n = 0;
    if (w->n == 0 && !w->moved) {
        if (w->rows0_set && rows != w->rows0)
            w->moved = true;
        else {
            w->rows0 = rows;
            w->rows0_set = true;
            return 0;
        }
    }
    w->t[w->n] = now_ms;
    w->rows[w->n++] = rows;
    int first = 0;
    while (first < w->n - 2 && now_ms - w->t[first + 1] >= window_ms)
        first++;
    if (now_ms <= w->t[first])
        return 0;
    return 1000.0 * (double)(rows - w->rows[first]) / (double)(now_ms - w->t[first]);
}

double bf_rate_window_eta(bf_rate_window_t *w, long long now_ms, int64_t est, int64_t rows,
                          double rate, double lag_s)
{
    if (rows != w->eta_rows || w->eta_t == 0) {
        w->eta_rows = rows;
        w->eta_t = now_ms;
        w->eta_s = bf_progress_eta(est, rows, rate);
        if (w->eta_s > 0) /* the batches in flight are further than the count says */
            w->eta_s = w->eta_s > lag_s ? w->eta_s - lag_s : 0;
        return w->eta_s;
    }
    if (w->eta_s < 0)
        return -1;
    double left = w->eta_s - (double)(now_ms - w->eta_t) / 1000.0;
    return left > 0 ? left : 0;
}

int64_t bf_progress_bytes_left(const bf_table_progress_t *p, int n)
{
    double bytes = 0, rows = 0, wbytes = 0, wexpect = 0;
    for (int t = 0; t < n; t++) {
        if (p[t].rows <= 0)
            continue;
        bytes += (double)p[t].bytes;
        rows += (double)p[t].rows;
        if (p[t].width > 0) {
            wbytes += (double)p[t].bytes;
            wexpect += (double)p[t].rows * (double)p[t].width;
        }
    }
    if (bytes <= 0 || rows <= 0)
        return -1;
    double avg = bytes / rows, scale = wexpect > 0 ? wbytes / wexpect : 1.0;
    double left = 0;
    for (int t = 0; t < n; t++) {
        if (p[t].done == p[t].ranges || p[t].est <= p[t].rows)
            continue;
        double per = p[t].rows > 0    ? (double)p[t].bytes / (double)p[t].rows
                     : p[t].width > 0 ? (double)p[t].width * scale
                                      : avg;
        left += (double)(p[t].est - p[t].rows) * per;
    }
    return (int64_t)left;
}

void bf_progress_estimate(bf_progress_info_t *info, bf_rate_window_t *rows_w,
                          bf_rate_window_t *bytes_w, const bf_table_progress_t *p, int n,
                          long long now_ms, long long window_ms, double lag_s)
{
    int64_t rows = 0, est = 0, bytes = 0;
    for (int t = 0; t < n; t++) {
        rows += p[t].rows;
        est += p[t].est;
        bytes += p[t].bytes;
    }
    info->rate = bf_rate_window_add(rows_w, now_ms, rows, window_ms);
    double brate = bf_rate_window_add(bytes_w, now_ms, bytes, window_ms);
    int64_t left = bf_progress_bytes_left(p, n);
    if (left >= 0 && brate > 0)
        info->eta_s = bf_rate_window_eta(bytes_w, now_ms, bytes + left, bytes, brate, lag_s);
    else
        info->eta_s = bf_rate_window_eta(rows_w, now_ms, est, rows, info->rate, lag_s);
}

double bf_progress_eta(int64_t est, int64_t rows, double rate)
{
    if (rate <= 0)
        return -1;
    return est > rows ? (double)(est - rows) / rate : 0;
}

const char *bf_progress_count(long long n, char *buf, size_t len)
{
    char digits[32];
    int nd = snprintf(digits, sizeof digits, "%lld", n < 0 ? 0 : n);
    size_t o = 0;
    for (int i = 0; i < nd && o + 2 < len; i++) {
        if (i > 0 && (nd - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

static bool s_is(const redisReply *r, const char *v)
{
    return r->type == REDIS_REPLY_STRING && strcmp(r->str, v) == 0;
}

void bf_progress_control(bf_rstate_t *redis, bf_progress_info_t *info)
{
    redisReply *c =
        bf_rstate_cmd(redis, "HMGET %s paused cancel rate backoff", bf_rstate_key(redis, "meta"));
    if (c && c->type == REDIS_REPLY_ARRAY && c->elements == 4) {
        info->paused = s_is(c->element[0], "1");
        info->cancelled = s_is(c->element[1], "1");
        info->throttle = c->element[2]->type == REDIS_REPLY_STRING ? atoll(c->element[2]->str) : 0;
        info->backoff = c->element[3]->type == REDIS_REPLY_STRING;
    }
    if (c)
        freeReplyObject(c);
}

static void s_duration(double s, char *buf, size_t len)
{
    if (s < 0)
        snprintf(buf, len, "?");
    else if (s < 60)
        snprintf(buf, len, "%.1fs", s);
    else if (s < 3600)
        snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, len, "%dh%02dm", (int)s / 3600, (int)s / 60 % 60);
}

static void s_bar(FILE *f, double frac)
{
    int fill = (int)(frac * BAR_WIDTH + 0.5);
    fputc('[', f);
    for (int i = 0; i < BAR_WIDTH; i++)
        fputc(i < fill ? '#' : '-', f);
    fputc(']', f);
}

void bf_progress_erase(bf_progress_view_t *v)
{
    if (!v->tty || v->lines == 0)
        return;
    fprintf(v->out, "\033[%dA\r\033[J", v->lines); /* up, to column 0, clear to the end */
    fflush(v->out);
    v->lines = 0;
}

int bf_progress_waiting_on(const bf_table_progress_t *p, int n, int t, int *on, int max)
{
    int k = 0;
    for (const char *s = p[t].after; *s;) {
        char *end;
        long u = strtol(s, &end, 10);
        if (end == s)
            break;
        s = *end == ',' ? end + 1 : end;
        if (u >= 0 && u < n && p[u].done < p[u].ranges && k < max)
            on[k++] = (int)u;
    }
    return k;
}

bool bf_progress_waits(const bf_table_progress_t *p, int n, int t, char *names, size_t len)
{
    int on[32];
    int k = bf_progress_waiting_on(p, n, t, on, 32);
    size_t used = 0;
    names[0] = '\0';
    for (int i = 0; i < k; i++) {
        int w = snprintf(names + used, len - used, "%s%s", i ? ", " : "", p[on[i]].name);
        if (w > 0 && (size_t)w < len - used)
            used += (size_t)w;
    }
    return k > 0;
}

void bf_progress_draw(bf_progress_view_t *v, const char *job, const bf_table_progress_t *p, int n,
                      const bf_progress_info_t *info)
{
    FILE *f = v->out;
    char a[32], b[32], eta[32], el[32];
    int64_t rows = 0, est = 0, bytes = 0, rejects = 0, parked = 0, leased = 0, stuck = 0, done = 0,
            ranges = 0;
    for (int t = 0; t < n; t++) {
        rows += p[t].rows;
        est += p[t].est;
        bytes += p[t].bytes;
        rejects += p[t].rejects;
        parked += p[t].parked;
        leased += p[t].leased;
        stuck += p[t].stuck;
        done += p[t].done;
        ranges += p[t].ranges;
    }
    bool complete = done == ranges;
    s_duration(complete ? 0 : info->eta_s, eta, sizeof eta);
    s_duration(info->elapsed_s, el, sizeof el);
    bf_progress_erase(v);
    if (v->tty)
        fputs("\033[?7l", f); /* no line wrap: a long line is cut, the redraw stays right */
    int lines = 0;
    for (int t = 0; t < n; t++) {
        double frac = p[t].done == p[t].ranges ? 1.0
                      : p[t].est > 0           ? (double)p[t].rows / (double)p[t].est
                                               : 0.0;
        if (frac > 1)
            frac = 1;
        char count[80];
        snprintf(count, sizeof count, "%s/%s rows", bf_progress_count(p[t].rows, a, sizeof a),
                 bf_progress_count(p[t].est, b, sizeof b));
        fprintf(f, "%-28.28s ", p[t].name);
        s_bar(f, frac);
        char waits[160];
        bool waiting = bf_progress_waits(p, n, t, waits, sizeof waits);
        char c[32];
        fprintf(f, " %5.1f%%  %-30s %8.1f MB  ranges %lld/%lld  %lld workers%s%s%s%s%s%s\n",
                100 * frac, count, (double)p[t].bytes / 1e6, (long long)p[t].done,
                (long long)p[t].ranges, (long long)p[t].leased, p[t].rejects ? "  rejects " : "",
                p[t].rejects ? bf_progress_count(p[t].rejects, a, sizeof a) : "",
                p[t].parked ? "  parked " : "",
                p[t].parked ? bf_progress_count(p[t].parked, c, sizeof c) : "",
                waiting ? "  waits for " : "", waiting ? waits : "");
        lines++;
    }
    double frac = complete ? 1.0 : est > 0 ? (double)rows / (double)est : 0.0;
    if (frac > 1)
        frac = 1;
    fprintf(f, "%-28.28s ", job);
    s_bar(f, frac);
    fprintf(f,
            " %5.1f%% %s rows %.1f MB  %s rows/s  elapsed %s  ETA %s  %lld workers  %lld "
            "rejects  %lld stuck",
            100 * frac, bf_progress_count(rows, b, sizeof b), (double)bytes / 1e6,
            bf_progress_count((long long)info->rate, a, sizeof a), el, eta, (long long)leased,
            (long long)rejects, (long long)stuck);
    if (parked)
        fprintf(f, "  %lld parked", (long long)parked);
    if (info->paused)
        fputs("  PAUSED", f);
    if (info->cancelled)
        fputs("  CANCELLED", f);
    if (info->backoff)
        fputs("  BACKING OFF (throttle_query)", f);
    if (info->throttle > 0)
        fprintf(f, "  throttled to %s rows/s", bf_progress_count(info->throttle, b, sizeof b));
    if (info->no_coordinator && !complete)
        fputs("  NO COORDINATOR RUNNING", f);
    fputc('\n', f);
    lines++;
    if (v->tty)
        fputs("\033[?7h", f); /* line wrap back on */
    fflush(f);
    if (v->tty)
        v->lines = lines;
}

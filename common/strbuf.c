#include "strbuf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void s_oom(void)
{
    fputs("backfill: out of memory\n", stderr);
    abort();
}

void *bf_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        s_oom();
    return p;
}

void *bf_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        s_oom();
    return p;
}

void *bf_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        s_oom();
    return q;
}

char *bf_xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (!p)
        s_oom();
    return p;
}

char *bf_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (n < 0)
        s_oom();
    return out;
}

void bf_strbuf_init(bf_strbuf_t *sb)
{
    sb->cap = 256;
    sb->len = 0;
    sb->buf = bf_xmalloc(sb->cap);
    sb->buf[0] = 0;
}

void bf_strbuf_free(bf_strbuf_t *sb)
{
    free(sb->buf);
    sb->buf = NULL;
    sb->len = sb->cap = 0;
}

void bf_strbuf_reset(bf_strbuf_t *sb)
{
    sb->len = 0;
    sb->buf[0] = 0;
}

static void s_reserve(bf_strbuf_t *sb, size_t extra)
{
    if (sb->len + extra + 1 <= sb->cap)
        return;
    while (sb->len + extra + 1 > sb->cap)
        sb->cap *= 2;
    sb->buf = bf_xrealloc(sb->buf, sb->cap);
}

void bf_strbuf_append(bf_strbuf_t *sb, const char *s)
{
    size_t n = strlen(s);
    s_reserve(sb, n);
    memcpy(sb->buf + sb->len, s, n + 1);
    sb->len += n;
}

void bf_strbuf_appendn(bf_strbuf_t *sb, const char *s, size_t n)
{
    s_reserve(sb, n);
    memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
    sb->buf[sb->len] = 0;
}

void bf_strbuf_appendf(bf_strbuf_t *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        s_reserve(sb, (size_t)n);
        vsnprintf(sb->buf + sb->len, (size_t)n + 1, fmt, ap2);
        sb->len += (size_t)n;
    }
    va_end(ap2);
}

char *bf_strbuf_take(bf_strbuf_t *sb)
{
    char *out = sb->buf;
    sb->buf = NULL;
    sb->len = sb->cap = 0;
    return out;
}

long long bf_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bf_ms_until(long long deadline_ms, int max_ms)
{
    long long left = deadline_ms - bf_now_ms();
    return left < 1 ? 1 : left < max_ms ? (int)left : max_ms;
}

long long bf_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bf_parse_ll(const char *s, long long min, long long max, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || *end || errno == ERANGE || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

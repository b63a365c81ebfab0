/* A growable string for building SQL and messages. Allocation failure aborts
 * (like redis' zmalloc): a backfill that cannot allocate a few KB cannot go on. */
#ifndef BF_STRBUF_H
#define BF_STRBUF_H

#include <stddef.h>

typedef struct {
    char *buf;  /* NUL-terminated contents, never NULL after init */
    size_t len; /* bytes used, without the NUL */
    size_t cap; /* bytes allocated */
} bf_strbuf_t;

void bf_strbuf_init(bf_strbuf_t *sb);
void bf_strbuf_free(bf_strbuf_t *sb);
void bf_strbuf_reset(bf_strbuf_t *sb);
void bf_strbuf_append(bf_strbuf_t *sb, const char *s);
void bf_strbuf_appendn(bf_strbuf_t *sb, const char *s, size_t n);
void bf_strbuf_appendf(bf_strbuf_t *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the buffer to the caller (free it); sb must be initialised again before
 * further use (bf_strbuf_free on it is a no-op). */
char *bf_strbuf_take(bf_strbuf_t *sb);

/* Allocation helpers that abort with a message on out-of-memory. */
void *bf_xmalloc(size_t n);
void *bf_xcalloc(size_t n, size_t size);
void *bf_xrealloc(void *p, size_t n);
char *bf_xstrdup(const char *s);
char *bf_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A command-line number: the whole of s is a decimal integer in [min, max]. */
int bf_parse_ll(const char *s, long long min, long long max, long long *out);

/* Milliseconds from CLOCK_MONOTONIC / CLOCK_REALTIME. */
long long bf_now_ms(void);
long long bf_wall_ms(void);
/* A poll timeout: the ms from now until deadline_ms, at least 1, at most max_ms. */
int bf_ms_until(long long deadline_ms, int max_ms);

#endif

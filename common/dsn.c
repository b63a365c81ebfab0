/* Connection strings: password redaction for logs and redis:// URL parsing. When the
 * shape of a string is unclear, redaction hides more rather than less. */
#include "dsn.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define S_MASK "***"

/* Bounded output: appends while room is left, always NUL-terminated. */
typedef struct {
    char *out;     /* destination */
    size_t outlen; /* its size, > 0 */
    size_t pos;    /* bytes written, < outlen */
} s_writer_t;

static void s_put(s_writer_t *w, const char *s, size_t n)
{
    size_t room = w->outlen - 1 - w->pos;
    if (n > room)
        n = room;
    memcpy(w->out + w->pos, s, n);
    w->pos += n;
    w->out[w->pos] = '\0';
}

static void s_puts(s_writer_t *w, const char *s)
{
    s_put(w, s, strlen(s));
}

/* True for a key that names a secret: anything containing "password" (password,
 * sslpassword, ...), any case. */
static bool s_secret_key(const char *key, size_t len)
{
    static const char word[] = "password";
    size_t wlen = sizeof word - 1;
    for (size_t i = 0; i + wlen <= len; i++)
        if (strncasecmp(key + i, word, wlen) == 0)
            return true;
    return false;
}

/* Length of "scheme://" at the start of s, or 0 when s is not a URI. */
static size_t s_scheme_len(const char *s)
{
    size_t i = 0;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
        return 0;
    while ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
           (s[i] >= '0' && s[i] <= '9') || s[i] == '+' || s[i] == '.' || s[i] == '-')
        i++;
    if (strncmp(s + i, "://", 3) != 0)
        return 0;
    return i + 3;
}

/* Last occurrence of c in [from, to), or NULL. */
static const char *s_last(const char *from, const char *to, char c)
{
    for (const char *p = to; p > from; p--)
        if (p[-1] == c)
            return p - 1;
    return NULL;
}

/* Query string of a URI (the part after '?'): password-like parameters get masked. */
static void s_redact_query(s_writer_t *w, const char *q)
{
    while (*q) {
        size_t len = strcspn(q, "&#");
        const char *eq = memchr(q, '=', len);
        if (eq && s_secret_key(q, (size_t)(eq - q))) {
            s_put(w, q, (size_t)(eq - q) + 1);
            s_puts(w, S_MASK);
        } else {
            s_put(w, q, len);
        }
        q += len;
        if (*q == '#') {
            s_puts(w, q);
            return;
        }
        if (*q == '&') {
            s_put(w, q, 1);
            q++;
        }
    }
}

static void s_redact_uri(s_writer_t *w, const char *dsn, size_t scheme_len)
{
    const char *auth = dsn + scheme_len;
    const char *end = auth + strlen(auth);
    bool redis = strncasecmp(dsn, "redis", 5) == 0;
    /* The user info ends at the last '@' before the path. A raw '/' or '?' in the
     * password can hide that '@', so also take the last '@' before the first '?'
     * that follows the first '@', whichever is later. */
    const char *slash = strchr(auth, '/');
    const char *at = s_last(auth, slash ? slash : end, '@');
    const char *first_at = strchr(auth, '@');
    if (first_at) {
        const char *query = strchr(first_at, '?');
        const char *at2 = s_last(first_at, query ? query : end, '@');
        if (!at || (at2 && at2 > at))
            at = at2;
    }
    const char *rest = auth;
    s_put(w, dsn, scheme_len);
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        if (colon) {
            s_put(w, auth, (size_t)(colon - auth) + 1);
            s_puts(w, S_MASK);
        } else if (redis) {
            /* redis://secret@host: some clients read a lone word as the password. */
            s_puts(w, S_MASK);
        } else {
            s_put(w, auth, (size_t)(at - auth));
        }
        rest = at;
    }
    const char *query = strchr(rest, '?');
    if (!query) {
        s_puts(w, rest);
        return;
    }
    s_put(w, rest, (size_t)(query - rest) + 1);
    s_redact_query(w, query + 1);
}

static bool s_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* libpq key=value conninfo: values are bare words or single-quoted, with backslash
 * escapes in both. Text that does not parse is masked. */
static void s_redact_conninfo(s_writer_t *w, const char *s)
{
    while (*s) {
        const char *start = s;
        while (s_space(*s))
            s++;
        s_put(w, start, (size_t)(s - start));
        if (!*s)
            return;
        const char *key = s;
        while (*s && *s != '=' && !s_space(*s))
            s++;
        size_t key_len = (size_t)(s - key);
        while (s_space(*s))
            s++;
        if (*s != '=' || key_len == 0) {
            /* Not key=value: cannot tell what this is, so hide the rest. */
            s_puts(w, S_MASK);
            return;
        }
        s++;
        while (s_space(*s))
            s++;
        bool secret = s_secret_key(key, key_len);
        s_put(w, key, (size_t)(s - key));
        const char *value = s;
        if (*s == '\'') {
            s++;
            while (*s && *s != '\'') {
                if (*s == '\\' && s[1])
                    s++;
                s++;
            }
            if (*s == '\'')
                s++;
            else if (!secret) {
                /* Unterminated quote: the rest may be anything. */
                s_put(w, value, 1);
                s_puts(w, S_MASK);
                return;
            }
        } else {
            while (*s && !s_space(*s)) {
                if (*s == '\\' && s[1])
                    s++;
                s++;
            }
        }
        if (secret)
            s_puts(w, S_MASK);
        else
            s_put(w, value, (size_t)(s - value));
    }
}

char *bf_redact(const char *dsn, char *out, size_t outlen)
{
    if (!out || outlen == 0)
        return out;
    out[0] = '\0';
    if (!dsn)
        return out;
    s_writer_t w = {out, outlen, 0};
    size_t scheme_len = s_scheme_len(dsn);
    if (scheme_len > 0)
        s_redact_uri(&w, dsn, scheme_len);
    else if (strchr(dsn, '='))
        s_redact_conninfo(&w, dsn);
    else if (strchr(dsn, '@')) {
        /* user:secret@host without a scheme: hide everything before the host. */
        s_puts(&w, S_MASK);
        s_puts(&w, strrchr(dsn, '@'));
    } else
        s_puts(&w, dsn);
    return out;
}

static int s_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes [s, s+n) into out. Returns 0, -1 on a bad escape or %00, -2 when
 * out is too small. */
static int s_decode(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            int h = i + 2 < n ? s_hex(s[i + 1]) : -1;
            int l = i + 2 < n ? s_hex(s[i + 2]) : -1;
            if (h < 0 || l < 0)
                return -1;
            c = (char)(h * 16 + l);
            if (c == '\0')
                return -1;
            i += 2;
        }
        if (o + 1 >= outlen)
            return -2;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

static void s_url_error(char *err, size_t errlen, const char *url, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes "invalid redis URL 'REDACTED': message" to err. */
static void s_url_error(char *err, size_t errlen, const char *url, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    char shown[256];
    bf_redact(url, shown, sizeof shown);
    int n = snprintf(err, errlen, "invalid redis URL '%.80s%s': ", shown,
                     strlen(shown) > 80 ? "..." : "");
    if (n >= 0 && (size_t)n < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    for (char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
}

/* Parses decimal digits [s, s+n) into *out (0..max). Returns 0 or -1. */
static int s_number(const char *s, size_t n, long max, long *out)
{
    if (n == 0)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
        if (v > max)
            return -1;
    }
    *out = v;
    return 0;
}

int bf_redis_url_parse(const char *url, bf_redis_url_t *out, char *err, size_t errlen)
{
    static const char usage[] = "expected redis://[[user]:password@]host[:port][/db]";
    if (err && errlen)
        err[0] = '\0';
    if (!out) {
        if (err && errlen)
            snprintf(err, errlen, "redis URL: no output given");
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->port = 6379;
    out->db = 0;
    if (!url || !*url) {
        if (err && errlen)
            snprintf(err, errlen, "redis URL is empty; %s", usage);
        return -1;
    }
    size_t scheme_len = s_scheme_len(url);
    if (scheme_len == 0) {
        s_url_error(err, errlen, url, "%s", usage);
        goto fail;
    }
    if (scheme_len != 8 || strncasecmp(url, "redis://", 8) != 0) {
        if (scheme_len == 9 && strncasecmp(url, "rediss://", 9) == 0)
            s_url_error(err, errlen, url, "TLS (rediss://) is not supported; %s", usage);
        else
            s_url_error(err, errlen, url, "scheme '%.*s' is not supported; %s",
                        (int)(scheme_len - 3), url, usage);
        goto fail;
    }
    const char *auth = url + scheme_len;
    /* Host, port and db never hold '@', so the last one ends the credentials. */
    const char *at = strrchr(auth, '@');
    const char *hp = auth;
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        if (!colon) {
            s_url_error(err, errlen, url, "write credentials as ':password@' or 'user:password@'");
            goto fail;
        }
        int rc = s_decode(auth, (size_t)(colon - auth), out->user, sizeof out->user);
        if (rc < 0) {
            s_url_error(err, errlen, url, "%s in the user name",
                        rc == -1 ? "bad percent-encoding" : "too long");
            goto fail;
        }
        rc = s_decode(colon + 1, (size_t)(at - colon - 1), out->password, sizeof out->password);
        if (rc < 0) {
            s_url_error(err, errlen, url, "%s in the password",
                        rc == -1 ? "bad percent-encoding" : "too long");
            goto fail;
        }
        hp = at + 1;
    }
    if (strpbrk(hp, "?#")) {
        s_url_error(err, errlen, url, "query parameters are not supported; %s", usage);
        goto fail;
    }
    const char *host = hp, *host_end;
    const char *p;
    if (*hp == '[') {
        host = hp + 1;
        host_end = strchr(host, ']');
        if (!host_end) {
            s_url_error(err, errlen, url, "missing ']' after an IPv6 address");
            goto fail;
        }
        p = host_end + 1;
        if (*p && *p != ':' && *p != '/') {
            s_url_error(err, errlen, url, "unexpected text after ']'");
            goto fail;
        }
    } else {
        host_end = host + strcspn(host, ":/");
        p = host_end;
    }
    size_t host_len = (size_t)(host_end - host);
    if (host_len == 0) {
        s_url_error(err, errlen, url, "no host; %s", usage);
        goto fail;
    }
    if (host_len >= sizeof out->host) {
        s_url_error(err, errlen, url, "host name too long");
        goto fail;
    }
    memcpy(out->host, host, host_len);
    out->host[host_len] = '\0';
    if (*p == ':') {
        p++;
        size_t n = strcspn(p, "/");
        long port;
        if (s_number(p, n, 65535, &port) < 0 || port == 0) {
            s_url_error(err, errlen, url, "port must be a number from 1 to 65535");
            goto fail;
        }
        out->port = (int)port;
        p += n;
    }
    if (*p == '/') {
        p++;
        long db = 0;
        if (*p && s_number(p, strlen(p), INT_MAX, &db) < 0) {
            s_url_error(err, errlen, url, "database must be a number (e.g. /0)");
            goto fail;
        }
        out->db = (int)db;
    }
    return 0;
fail:
    memset(out, 0, sizeof *out);
    return -1;
}

/* Connection strings: redaction for logs and parsing of redis:// URLs. */
#ifndef BF_DSN_H
#define BF_DSN_H

#include <stddef.h>

/* Copies a libpq URI (postgresql://user:secret@host/db?password=x) or key=value
 * string (password=secret host=...) or redis URL (redis://:secret@host) into out with
 * every password replaced by "***". Always NUL-terminates; returns out. */
char *bf_redact(const char *dsn, char *out, size_t outlen);

typedef struct {
    char host[256];
    int port;           /* default 6379 */
    int db;             /* default 0 */
    char user[128];     /* empty when none (Redis 6 ACL user) */
    char password[256]; /* empty when none */
} bf_redis_url_t;

/* Parses redis://[[user]:password@]host[:port][/db]. Returns 0, or -1 with a
 * message in err (without the password). */
int bf_redis_url_parse(const char *url, bf_redis_url_t *out, char *err, size_t errlen);

#endif

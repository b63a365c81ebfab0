/* Throwaway PostgreSQL and Redis servers for `backfill demo` and the test suite:
 * initdb + postgres and redis-server in a temp directory, on free ports, as an
 * unprivileged user (PostgreSQL refuses root: when run as root the servers run as
 * the `postgres` user, else as the caller). */
#ifndef BF_SANDBOX_H
#define BF_SANDBOX_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct {
    char dir[512];    /* sandbox directory (created when missing) */
    int pg_port;      /* PostgreSQL port on 127.0.0.1 */
    int redis_port;   /* Redis port on 127.0.0.1 */
    char pg_user[64]; /* database superuser name (the OS user running it) */
} bf_sandbox_t;

/* Starts both servers under dir (mkdtemp'd when dir is NULL). Writes dir/env, a
 * shell-sourceable file with BF_PGHOST, BF_PGPORT, BF_PGUSER, BF_PGSOCKDIR,
 * BF_REDIS_PORT, BF_REDIS_URL, BF_PG_BINDIR, BF_SANDBOX_DIR (and BF_SANDBOX_RUNDIR),
 * and prints nothing but log lines. A sandbox left in dir by an earlier (crashed) run
 * is stopped and replaced; a dir holding other files is refused. Returns 0 or -1
 * (error logged, anything started is stopped again). */
int bf_sandbox_start(bf_sandbox_t *sb, const char *dir);

/* Reads dir/env back into sb. Returns 0 or -1. */
int bf_sandbox_load(bf_sandbox_t *sb, const char *dir);

/* Stops both servers and removes the directory unless keep. Safe to call when
 * nothing runs. Returns 0 or -1. */
int bf_sandbox_stop(bf_sandbox_t *sb, bool keep_dir);

/* Redis: stop (SHUTDOWN NOSAVE is not used; AOF is on) and start again on the same
 * port with the same data, for fault tests. */
int bf_sandbox_redis_restart(bf_sandbox_t *sb);

/* PostgreSQL: fast shutdown (sessions are terminated), down_ms of downtime, start
 * again on the same port and data, for fault tests. */
int bf_sandbox_pg_restart(bf_sandbox_t *sb, int down_ms);

/* The libpq URI for database db on the sandbox's PostgreSQL. */
void bf_sandbox_pg_uri(const bf_sandbox_t *sb, const char *db, char *out, size_t outlen);

#endif

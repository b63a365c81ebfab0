/* A thin libpq wrapper that carries its error (message and SQLSTATE) and a
 * redacted connection string for messages. Errors are logged once, here. */
#ifndef BF_PG_H
#define BF_PG_H

#include <libpq-fe.h>
#include <stdbool.h>

typedef struct {
    PGconn *conn;         /* open connection */
    char what[64];        /* role in messages: "source", "target billing" */
    char redacted[512];   /* connection string without its password */
    char sqlstate[6];     /* SQLSTATE of the last error, "" when none */
    char errmsg[1024];    /* last error, one line, no password */
    char detail[1024];    /* PG_DIAG_MESSAGE_DETAIL of the last error (names the key) */
    bool (*tick)(void *); /* see bf_pg_set_tick(); NULL = plain blocking calls */
    void *tick_arg;
} bf_pg_t;

/* Makes every statement on this connection wait for its result in a poll loop
 * that calls tick(arg) at least every 500 ms (heartbeats during a long lock wait);
 * when tick returns true the statement is cancelled and fails (SQLSTATE 57014). */
void bf_pg_set_tick(bf_pg_t *self, bool (*tick)(void *arg), void *arg);

/* Waits until the result of the statement in flight is in (PQgetResult then does
 * not block), calling the tick after every 500 ms of silence; when the tick says
 * stop, cancels the statement (it then ends in an error). */
void bf_pg_await(bf_pg_t *self);

/* On a non-blocking connection (PQsetnonblocking): sends what libpq holds, reading
 * what the server says meanwhile and calling the tick every 500 ms, so that a
 * server that stops reading does not silence the caller. 0, or -1 when the
 * connection is lost or the tick says stop. */
int bf_pg_flush(bf_pg_t *self);

/* Asks the server to cancel the statement in progress (best effort). */
void bf_pg_cancel(bf_pg_t *self);

/* Connects with a 5 s connect_timeout (unless the DSN sets one). On failure logs
 * one line naming `what` and the redacted DSN and
 * returns NULL. */
bf_pg_t *bf_pg_connect(const char *dsn, const char *what);
void bf_pg_destroy(bf_pg_t **self_p);

/* Whether this thread's last bf_pg_connect that failed was refused for a reason
 * trying again cannot fix: a wrong password, no such role or database, no
 * pg_hba.conf entry, a connection string libpq cannot use. */
bool bf_pg_connect_refused(void);

/* Runs a statement that returns no rows. 0 or -1 (error kept in self, logged
 * unless quiet). */
int bf_pg_exec(bf_pg_t *self, const char *sql);
int bf_pg_exec_quiet(bf_pg_t *self, const char *sql);

/* Runs a parameterised query (text params). Returns the result (caller PQclear)
 * or NULL on error (kept in self, logged unless quiet). */
PGresult *bf_pg_query(bf_pg_t *self, const char *sql, int nparams, const char *const *params);
PGresult *bf_pg_query_quiet(bf_pg_t *self, const char *sql, int nparams, const char *const *params);

/* Starts COPY ... FROM STDIN (in) or TO STDOUT; 0, or -1 with the error kept in
 * self (not logged). */
int bf_pg_copy_start(bf_pg_t *self, const char *sql, bool in);

/* Records the error of res (or of the connection when res is NULL) in self. */
void bf_pg_set_error(bf_pg_t *self, const PGresult *res);

/* True when the last error is a lost connection or a server shutdown: retry. */
bool bf_pg_error_is_retryable(const bf_pg_t *self);
bool bf_pg_is_alive(bf_pg_t *self);

/* Quoted identifier / literal (malloc'd), or NULL on out-of-memory. */
char *bf_pg_ident(bf_pg_t *self, const char *name);
char *bf_pg_literal(bf_pg_t *self, const char *value);

/* The n values as a text[] literal for a query parameter: {"v1","v2"}, with " and
 * \ escaped (malloc'd). */
char *bf_pg_text_array(const char *const *values, int n);

/* 1 when relation qname (as to_regclass reads it) exists, 0 when not, -1 on an
 * error (kept in self, not logged). */
int bf_pg_exists(bf_pg_t *self, const char *qname);

#endif

#include "pg.h"
#include "strbuf.h"

#include "dsn.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Copies msg into out as a single line (newlines folded into "; "). */
static void s_one_line(char *out, size_t outlen, const char *msg)
{
    size_t j = 0;
    for (size_t i = 0; msg && msg[i] && j + 3 < outlen; i++) {
        if (msg[i] == '\n') {
            if (msg[i + 1] == 0)
                break;
            out[j++] = ';';
            out[j++] = ' ';
        } else {
            out[j++] = msg[i];
        }
    }
    out[j] = 0;
}

/* Server notices ("relation ... already exists, skipping") go to the debug log,
 * not straight to stderr. */
static void s_notice(void *arg, const char *message)
{
    const bf_pg_t *self = arg;
    char line[1024];
    s_one_line(line, sizeof line, message);
    log_debug("%s: %s", self->what, line);
}

/* The password as written in a connection string, for s_scrub: in a URI what
 * lies between the user name's ":" and the last "@"; in the key=value form the
 * value of password= up to the next word that is a key=value (a password with
 * spaces written unquoted reaches that far), quotes and all. NULL when none. */
static char *s_password_text(const char *dsn)
{
    const char *scheme = strstr(dsn, "://");
    if (scheme) {
        /* The last "@" before the query (which may hold one), else the last. */
        const char *user = scheme + 3, *q = strchr(user, '?'), *at = NULL;
        for (const char *c = user; *c && (!q || c < q); c++)
            if (*c == '@')
                at = c;
        if (!at)
            at = strrchr(user, '@');
        const char *colon = at ? memchr(user, ':', (size_t)(at - user)) : NULL;
        return colon && at > colon + 1 ? bf_xasprintf("%.*s", (int)(at - colon - 1), colon + 1)
                                       : NULL;
    }
    for (const char *p = dsn; (p = strstr(p, "password")) != NULL; p += 8) {
        if (p > dsn && !isspace((unsigned char)p[-1]))
            continue;
        const char *v = p + 8;
        while (isspace((unsigned char)*v))
            v++;
        if (*v != '=')
            continue;
        v++;
        while (isspace((unsigned char)*v))
            v++;
        /* To the next " key=" (or the end). */
        const char *end = v + strlen(v);
        for (const char *w = v; *w; w++) {
            if (!isspace((unsigned char)*w))
                continue;
            const char *k = w;
            while (isspace((unsigned char)*k))
                k++;
            const char *e = k;
            while (isalnum((unsigned char)*e) || *e == '_')
                e++;
            while (isspace((unsigned char)*e))
                e++;
            if (e > k && *e == '=') {
                end = w;
                break;
            }
        }
        return end > v ? bf_xasprintf("%.*s", (int)(end - v), v) : NULL;
    }
    return NULL;
}

/* A password libpq would misread, found before it quotes pieces of it in its
 * complaint ('missing "=" after "horse"' for a spaced one, 'invalid integer value
 * "pa" for connection option "port"' for a URI's "pa/ss"): what is wrong, in
 * words that hold none of it; NULL when it reads as written. */
static const char *s_password_problem(const char *dsn)
{
    char *pw = s_password_text(dsn);
    if (!pw)
        return NULL;
    const char *why = NULL;
    if (strstr(dsn, "://")) {
        for (const char *c = pw; *c && !why; c++)
            if (strchr("@/?", *c))
                why = "the password in the URI holds a character that means something there "
                      "(@ / or ?)";
            else if (*c == '%' && !(isxdigit((unsigned char)c[1]) && isxdigit((unsigned char)c[2])))
                why = "the password in the URI holds a % that does not start a %XX escape";
    } else if (pw[0] != '\'' && strpbrk(pw, " \t'")) {
        why = "the password in the key=value form holds a space or a quote without being in "
              "single quotes";
    }
    free(pw);
    return why;
}

/* Defence in depth for messages libpq writes after it read the string: a quoted
 * piece holding 3 characters of the password in a row (or all of a shorter one)
 * becomes "***"; hosts, users and databases stay. */
static void s_scrub(char *msg, size_t len, const char *dsn)
{
    char *pw = s_password_text(dsn);
    if (!pw)
        return;
    size_t pwlen = strlen(pw), min = pwlen < 3 ? pwlen : 3;
    bf_strbuf_t out;
    bf_strbuf_init(&out);
    for (const char *p = msg; *p;) {
        const char *e = *p == '"' ? strchr(p + 1, '"') : NULL;
        bool hit = false;
        for (const char *c = p + 1; e && c < e && !hit; c++) {
            size_t n = 0;
            for (const char *w = pw; *w && n < min; w++)
                for (n = 0; n < min && c + n < e && c[n] == w[n];)
                    n++;
            hit = n >= min;
        }
        if (hit) {
            bf_strbuf_append(&out, "\"***\"");
            p = e + 1;
        } else {
            bf_strbuf_appendn(&out, p, 1);
            p++;
        }
    }
    snprintf(msg, len, "%s", out.buf);
    bf_strbuf_free(&out);
    free(pw);
}

#define BF_DSN_HINT                                                                                \
    "In a postgresql:// URI, percent-encode the characters of the user name and password "         \
    "that mean something there (% as %25, / as %2F, @ as %40, : as %3A, # as %23, ? as "           \
    "%3F, space as %20); in the key=value form, put a value with spaces or quotes in single "      \
    "quotes ('...', with \\' and \\\\ inside)"

static _Thread_local bool s_refused;

bool bf_pg_connect_refused(void)
{
    return s_refused;
}

/* Whether libpq's message for a failed connection says the server or libpq
 * refused it for good (its English text: a server with other lc_messages is
 * taken as unreachable, to be retried). */
static bool s_is_refusal(const char *msg)
{
    /* libpq's own: an option it cannot use, no password to send, no SSL. */
    static const char *const client[] = {"no password supplied", "server does not support SSL",
                                         "SSL is not enabled on the server"};
    /* The server's FATAL answer to the login. */
    static const char *const server[] = {
        "password authentication failed", "authentication failed for user",
        "no pg_hba.conf entry",           "does not exist",
        "permission denied for database", "is not permitted to log in"};
    if (strncmp(msg, "invalid ", 8) == 0)
        return true;
    for (size_t i = 0; i < sizeof client / sizeof *client; i++)
        if (strstr(msg, client[i]))
            return true;
    const char *fatal = strstr(msg, "FATAL:");
    for (size_t i = 0; fatal && i < sizeof server / sizeof *server; i++)
        if (strstr(fatal, server[i]))
            return true;
    return false;
}

bf_pg_t *bf_pg_connect(const char *dsn, const char *what)
{
    bf_pg_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    snprintf(self->what, sizeof self->what, "%s", what);
    bf_redact(dsn, self->redacted, sizeof self->redacted);

    /* connect_timeout comes before dbname so that the DSN can override it. Text
     * travels as UTF-8 (also in binary COPY: each side converts from and to its
     * database's encoding; without it a UTF8 source's bytes would reach a LATIN1
     * target unconverted). */
    const char *keys[] = {"connect_timeout", "fallback_application_name", "client_encoding",
                          "dbname", NULL};
    const char *vals[] = {"5", "backfill", "UTF8", dsn, NULL};
    /* (A plain word is a database name: libpq takes it as one, the parser not.) */
    bool conninfo = strchr(dsn, '=') || strncmp(dsn, "postgresql://", 13) == 0 ||
                    strncmp(dsn, "postgres://", 11) == 0;
    const char *problem = conninfo ? s_password_problem(dsn) : NULL;
    if (problem) {
        snprintf(self->errmsg, sizeof self->errmsg, "%s", problem);
        s_refused = true;
        log_error("cannot connect to %s at %s: %s. %s", self->what, self->redacted, problem,
                  BF_DSN_HINT);
        bf_pg_destroy(&self);
        return NULL;
    }
    char *perr = NULL;
    PQconninfoOption *parsed = conninfo ? PQconninfoParse(dsn, &perr) : NULL;
    if (conninfo && !parsed) {
        s_one_line(self->errmsg, sizeof self->errmsg, perr ? perr : "out of memory");
        PQfreemem(perr);
        s_scrub(self->errmsg, sizeof self->errmsg, dsn);
        s_refused = true;
        log_error("cannot connect to %s at %s: the connection string cannot be parsed (%s). %s",
                  self->what, self->redacted, self->errmsg, BF_DSN_HINT);
        bf_pg_destroy(&self);
        return NULL;
    }
    PQconninfoFree(parsed);
    s_refused = false;
    self->conn = PQconnectdbParams(keys, vals, 1);
    if (!self->conn || PQstatus(self->conn) != CONNECTION_OK) {
        s_one_line(self->errmsg, sizeof self->errmsg,
                   self->conn ? PQerrorMessage(self->conn) : "out of memory");
        s_scrub(self->errmsg, sizeof self->errmsg, dsn);
        /* A value libpq itself found wrong (a port, a host): perhaps a password
         * character the URI gives a meaning. */
        bool hint = strncmp(self->errmsg, "invalid ", 8) == 0 && strstr(dsn, "://");
        s_refused = self->conn && s_is_refusal(self->errmsg);
        log_error("cannot connect to %s at %s: %s%s%s", self->what, self->redacted, self->errmsg,
                  hint ? ". " : "", hint ? BF_DSN_HINT : "");
        bf_pg_destroy(&self);
        return NULL;
    }
    PQsetNoticeProcessor(self->conn, s_notice, self);
    /* Keys travel as text between sessions (the coordinator's range bounds, the
     * workers' cursors in Redis and in fence rows): the same text on every
     * session whatever the server's or the role's defaults. */
    if (bf_pg_exec(self, "SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; "
                         "SET extra_float_digits = 3") != 0) {
        log_error("cannot set up the session on %s at %s: %s", self->what, self->redacted,
                  self->errmsg);
        bf_pg_destroy(&self);
        return NULL;
    }
    return self;
}

void bf_pg_destroy(bf_pg_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bf_pg_t *self = *self_p;
    if (self->conn)
        PQfinish(self->conn);
    free(self);
    *self_p = NULL;
}

void bf_pg_set_error(bf_pg_t *self, const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    snprintf(self->sqlstate, sizeof self->sqlstate, "%s", state ? state : "");
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!msg || !*msg)
        msg = PQerrorMessage(self->conn);
    s_one_line(self->errmsg, sizeof self->errmsg, msg);
    const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
    s_one_line(self->detail, sizeof self->detail, detail ? detail : "");
}

void bf_pg_cancel(bf_pg_t *self)
{
    PGcancel *cancel = PQgetCancel(self->conn);
    char errbuf[256];
    if (cancel) {
        PQcancel(cancel, errbuf, sizeof errbuf);
        PQfreeCancel(cancel);
    }
}

void bf_pg_set_tick(bf_pg_t *self, bool (*tick)(void *arg), void *arg)
{
    self->tick = tick;
    self->tick_arg = arg;
}

#define TICK_MS 500

void bf_pg_await(bf_pg_t *self)
{
    PGconn *c = self->conn;
    bool cancel_sent = false;
    while (PQisBusy(c)) {
        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
        int n = poll(&pfd, 1, TICK_MS);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0 && !PQconsumeInput(c))
            break; /* connection lost: PQgetResult reports it */
        if (n == 0 && !cancel_sent && self->tick && self->tick(self->tick_arg)) {
            bf_pg_cancel(self);
            cancel_sent = true;
        }
    }
}

int bf_pg_flush(bf_pg_t *self)
{
    PGconn *c = self->conn;
    long long next_tick = bf_now_ms() + TICK_MS;
    int f;
    while ((f = PQflush(c)) == 1) {
        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLOUT | POLLIN};
        int n = poll(&pfd, 1, TICK_MS);
        if (n > 0 && (pfd.revents & POLLIN) && !PQconsumeInput(c))
            return -1;
        if (n < 0 && errno != EINTR)
            usleep(1000); /* not expected; no busy loop if it happens */
        /* When due, not only on silence: a target that reads slowly never is. */
        if (self->tick && bf_now_ms() >= next_tick) {
            if (self->tick(self->tick_arg))
                return -1;
            next_tick = bf_now_ms() + TICK_MS;
        }
    }
    return f == 0 ? 0 : -1;
}

/* Sends the query, then waits for its result (bf_pg_await). Returns what PQexec
 * would: the last result, or the first COPY one. */
static PGresult *s_exec_ticking(bf_pg_t *self, const char *sql, int nparams,
                                const char *const *params)
{
    PGconn *c = self->conn;
    int sent = nparams == 0 ? PQsendQuery(c, sql)
                            : PQsendQueryParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    if (!sent)
        return NULL;
    bf_pg_await(self);
    PGresult *last = NULL, *res;
    while ((res = PQgetResult(c))) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT) {
            PQclear(last);
            return res;
        }
        /* Keep the first error (PQexec's rule), else the last result. */
        if (last && PQresultStatus(last) == PGRES_FATAL_ERROR) {
            PQclear(res);
            continue;
        }
        PQclear(last);
        last = res;
    }
    return last;
}

static PGresult *s_run(bf_pg_t *self, const char *sql, int nparams, const char *const *params,
                       bool quiet, ExecStatusType want)
{
    /* Without parameters use the simple protocol: it allows several statements. */
    PGresult *res = self->tick ? s_exec_ticking(self, sql, nparams, params)
                    : nparams == 0
                        ? PQexec(self->conn, sql)
                        : PQexecParams(self->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == want || (want == PGRES_TUPLES_OK && st == PGRES_COMMAND_OK)) {
        self->sqlstate[0] = 0;
        return res;
    }
    bf_pg_set_error(self, res);
    PQclear(res);
    if (!quiet)
        log_error("%s: %s%s%s", self->what, self->errmsg, self->detail[0] ? " " : "", self->detail);
    return NULL;
}

int bf_pg_exec(bf_pg_t *self, const char *sql)
{
    PGresult *res = s_run(self, sql, 0, NULL, false, PGRES_COMMAND_OK);
    PQclear(res);
    return res ? 0 : -1;
}

int bf_pg_exec_quiet(bf_pg_t *self, const char *sql)
{
    PGresult *res = s_run(self, sql, 0, NULL, true, PGRES_COMMAND_OK);
    PQclear(res);
    return res ? 0 : -1;
}

PGresult *bf_pg_query(bf_pg_t *self, const char *sql, int nparams, const char *const *params)
{
    return s_run(self, sql, nparams, params, false, PGRES_TUPLES_OK);
}

PGresult *bf_pg_query_quiet(bf_pg_t *self, const char *sql, int nparams, const char *const *params)
{
    return s_run(self, sql, nparams, params, true, PGRES_TUPLES_OK);
}

int bf_pg_copy_start(bf_pg_t *self, const char *sql, bool in)
{
    PGresult *res = s_run(self, sql, 0, NULL, true, in ? PGRES_COPY_IN : PGRES_COPY_OUT);
    PQclear(res);
    return res ? 0 : -1;
}

bool bf_pg_error_is_retryable(const bf_pg_t *self)
{
    /* 08: connection exception, 57P01-03: admin/crash shutdown, cannot connect now,
     * 40001/40P01: serialization failure / deadlock, 53: insufficient resources. */
    const char *s = self->sqlstate;
    if (!s[0])
        return PQstatus(self->conn) != CONNECTION_OK;
    return strncmp(s, "08", 2) == 0 || strncmp(s, "57P", 3) == 0 || strcmp(s, "40001") == 0 ||
           strcmp(s, "40P01") == 0 || strncmp(s, "53", 2) == 0;
}

bool bf_pg_is_alive(bf_pg_t *self)
{
    return self && self->conn && PQstatus(self->conn) == CONNECTION_OK;
}

char *bf_pg_ident(bf_pg_t *self, const char *name)
{
    char *q = PQescapeIdentifier(self->conn, name, strlen(name));
    if (!q)
        return NULL;
    char *out = strdup(q);
    PQfreemem(q);
    return out;
}

char *bf_pg_literal(bf_pg_t *self, const char *value)
{
    char *q = PQescapeLiteral(self->conn, value, strlen(value));
    if (!q)
        return NULL;
    char *out = strdup(q);
    PQfreemem(q);
    return out;
}

char *bf_pg_text_array(const char *const *values, int n)
{
    bf_strbuf_t arr;
    bf_strbuf_init(&arr);
    bf_strbuf_append(&arr, "{");
    for (int i = 0; i < n; i++) {
        bf_strbuf_append(&arr, i ? ",\"" : "\"");
        for (const char *c = values[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                bf_strbuf_appendn(&arr, "\\", 1);
            bf_strbuf_appendn(&arr, c, 1);
        }
        bf_strbuf_append(&arr, "\"");
    }
    bf_strbuf_append(&arr, "}");
    return bf_strbuf_take(&arr);
}

int bf_pg_exists(bf_pg_t *self, const char *qname)
{
    const char *params[] = {qname};
    PGresult *res = bf_pg_query_quiet(self, "SELECT to_regclass($1) IS NOT NULL", 1, params);
    if (!res)
        return -1;
    int found = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return found;
}

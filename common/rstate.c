#include "rstate.h"

#include "dsn.h"
#include "functions_lua.h"
#include "log.h"
#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void bf_range_clear(bf_range_t *r)
{
    free(r->lo);
    free(r->hi);
    free(r->cursor);
    memset(r, 0, sizeof *r);
}

static int s_connect(bf_rstate_t *self, bool log)
{
    bf_redis_url_t u;
    char err[256];
    if (bf_redis_url_parse(self->url, &u, err, sizeof err) != 0) {
        snprintf(self->errmsg, sizeof self->errmsg, "%s", err);
        if (log)
            log_error("redis %s: %s", self->redacted, err);
        return -1;
    }
    struct timeval tv = {5, 0}, cmd_tv = {30, 0};
    if (self->timeout_ms > 0)
        tv = cmd_tv = (struct timeval){self->timeout_ms / 1000, (self->timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(u.host, u.port, tv);
    if (!c || c->err) {
        snprintf(self->errmsg, sizeof self->errmsg, "cannot connect to redis at %s: %s",
                 self->redacted, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        if (log)
            log_error("%s", self->errmsg);
        return -1;
    }
    redisSetTimeout(c, cmd_tv);
    redisReply *r = NULL;
    if (u.password[0]) {
        r = u.user[0] ? redisCommand(c, "AUTH %s %s", u.user, u.password)
                      : redisCommand(c, "AUTH %s", u.password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(self->errmsg, sizeof self->errmsg, "redis at %s refused AUTH: %s",
                     self->redacted, r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (u.db != 0) {
        r = redisCommand(c, "SELECT %d", u.db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(self->errmsg, sizeof self->errmsg, "redis at %s: SELECT %d failed: %s",
                     self->redacted, u.db, r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    memset(u.password, 0, sizeof u.password);
    self->ctx = c;
    if (self->connected)
        self->reconnects++;
    self->connected = true;
    return 0;
fail:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    memset(u.password, 0, sizeof u.password);
    if (log)
        log_error("%s", self->errmsg);
    return -1;
}

bf_rstate_t *bf_rstate_connect(const char *url, const char *job_name)
{
    bf_rstate_t *self = bf_xcalloc(1, sizeof *self);
    self->url = bf_xstrdup(url);
    bf_redact(url, self->redacted, sizeof self->redacted);
    snprintf(self->prefix, sizeof self->prefix, "bf:{%s}:", job_name);
    if (s_connect(self, true) != 0) {
        bf_rstate_destroy(&self);
        return NULL;
    }
    return self;
}

void bf_rstate_destroy(bf_rstate_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bf_rstate_t *self = *self_p;
    if (self->ctx)
        redisFree(self->ctx);
    if (self->url) {
        memset(self->url, 0, strlen(self->url));
        free(self->url);
    }
    free(self);
    *self_p = NULL;
}

void bf_rstate_set_timeout(bf_rstate_t *self, int ms)
{
    self->timeout_ms = ms;
    if (self->ctx && ms > 0)
        redisSetTimeout(self->ctx, (struct timeval){ms / 1000, (ms % 1000) * 1000});
}

const char *bf_rstate_key(bf_rstate_t *self, const char *suffix)
{
    snprintf(self->key, sizeof self->key, "%s%s", self->prefix, suffix);
    return self->key;
}

/* Checks a reply; converts an error reply into NULL with errmsg set. */
static redisReply *s_check(bf_rstate_t *self, redisReply *r)
{
    if (!r) {
        snprintf(self->errmsg, sizeof self->errmsg, "redis at %s: %s", self->redacted,
                 self->ctx ? self->ctx->errstr : "not connected");
        if (self->ctx) {
            redisFree(self->ctx);
            self->ctx = NULL;
        }
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(self->errmsg, sizeof self->errmsg, "redis at %s: %s", self->redacted, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

static int s_load(bf_rstate_t *self);

/* A Redis that came back without its data (no AOF, or a new instance) has no
 * functions: load them again and retry. Frees r and returns true in that case. */
static bool s_functions_lost(bf_rstate_t *self, redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ERROR || !strstr(r->str, "Function not found"))
        return false;
    freeReplyObject(r);
    log_warn("redis at %s lost the backfill functions; loading them again", self->redacted);
    if (s_load(self) != 0)
        log_error("%s", self->errmsg);
    return true;
}

redisReply *bf_rstate_cmd(bf_rstate_t *self, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!self->ctx && s_connect(self, false) != 0)
            return NULL;
        va_list ap;
        va_start(ap, fmt);
        redisReply *r = redisvCommand(self->ctx, fmt, ap);
        va_end(ap);
        if (attempt == 0 && s_functions_lost(self, r))
            continue;
        if (r || !self->ctx || self->ctx->err == 0 || attempt == 1)
            return s_check(self, r);
        s_check(self, r); /* drops the broken connection; retry once */
    }
    return NULL;
}

redisReply *bf_rstate_argv(bf_rstate_t *self, int argc, const char **argv)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!self->ctx && s_connect(self, false) != 0)
            return NULL;
        redisReply *r = redisCommandArgv(self->ctx, argc, argv, NULL);
        if (attempt == 0 && s_functions_lost(self, r))
            continue;
        if (r || attempt == 1)
            return s_check(self, r);
        s_check(self, r);
    }
    return NULL;
}

/* The version in a library's name: "backfill_vN" is N, "backfill" (releases before
 * versions) 1; 0 for a library that is not backfill's. */
static int s_lib_version(const char *name)
{
    if (strcmp(name, "backfill") == 0)
        return 1;
    if (strncmp(name, "backfill_v", 10) != 0)
        return 0;
    char *end;
    long v = strtol(name + 10, &end, 10);
    return *end == '\0' && v > 0 && v < 1000000 ? (int)v : 0;
}

int bf_rstate_functions_version(void)
{
    const char *n = strstr(bf_functions_lua, "name=");
    char name[64] = "";
    if (n)
        sscanf(n + 5, "%63[^ \n]", name);
    return s_lib_version(name);
}

bool bf_rstate_same_release(const char *peer, const char *me, const char *version, int64_t fv,
                            char *buf, size_t n)
{
    int mine = bf_rstate_functions_version();
    if (fv == mine)
        return true;
    char theirs[160];
    if (fv > 0)
        snprintf(theirs, sizeof theirs, "backfill %s (Redis functions version %lld)",
                 version ? version : "?", (long long)fv);
    else
        snprintf(theirs, sizeof theirs,
                 "an older release of backfill (%s%sfrom before releases said their Redis "
                 "functions version)",
                 version ? version : "", version ? ", " : "");
    snprintf(buf, n,
             "%s runs %s, %s backfill %s (Redis functions version %d): the workers "
             "and the coordinator of a job must run the same release of backfill (these two "
             "run different Redis functions); install one release on every machine, then "
             "start the process that was refused again",
             peer, theirs, me, BF_VERSION, mine);
    return false;
}

/* The name of one library in a FUNCTION LIST reply (a flat key/value array), or
 * NULL. */
static const char *s_lib_name(const redisReply *lib)
{
    if (lib->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t k = 0; k + 1 < lib->elements; k += 2) {
        const redisReply *key = lib->element[k], *val = lib->element[k + 1];
        if (key->type == REDIS_REPLY_STRING && strcmp(key->str, "library_name") == 0 &&
            val->type == REDIS_REPLY_STRING)
            return val->str;
    }
    return NULL;
}

/* Loads this binary's functions: over older versions of them (deleted in the same
 * MULTI, so no caller finds none meanwhile) or the same version; refuses (-2) when
 * Redis holds a newer version. -1 on other errors; errmsg says why either way. */
static int s_load(bf_rstate_t *self)
{
    int mine = bf_rstate_functions_version();
    redisReply *l = bf_rstate_cmd(self, "FUNCTION LIST LIBRARYNAME backfill*");
    if (!l)
        return -1;
    size_t nlibs = l->type == REDIS_REPLY_ARRAY ? l->elements : 0;
    char **old = bf_xcalloc(nlibs + 1, sizeof *old);
    int nold = 0, newer = 0;
    char newer_name[64] = "";
    for (size_t i = 0; i < nlibs; i++) {
        const char *name = s_lib_name(l->element[i]);
        int v = name ? s_lib_version(name) : 0;
        if (v > mine && v > newer) {
            newer = v;
            snprintf(newer_name, sizeof newer_name, "%s", name);
        } else if (v > 0 && v < mine) {
            old[nold++] = bf_xstrdup(name);
        }
    }
    freeReplyObject(l);
    int rc = 0;
    if (newer) {
        snprintf(self->errmsg, sizeof self->errmsg,
                 "redis at %s holds backfill's functions of a newer release (library %s, "
                 "version %d; this binary has version %d): run this job with the newer "
                 "backfill on every machine (an older one would bring back older functions "
                 "under the processes of the newer one)",
                 self->redacted, newer_name, newer, mine);
        rc = -2;
    } else if (nold == 0) {
        redisReply *r = bf_rstate_cmd(self, "FUNCTION LOAD REPLACE %s", bf_functions_lua);
        rc = r ? 0 : -1;
        freeReplyObject(r);
    } else {
        /* One transaction, so that no process finds no functions in between, nor an
         * older binary's process reloads its version there (ours would then fail on
         * its function names). Redis does not roll a transaction back: a DELETE that
         * fails (another process upgrading at the same time deleted that library
         * first) leaves the LOAD to run, and the LOAD's own reply decides. */
        redisAppendCommand(self->ctx, "MULTI");
        for (int i = 0; i < nold; i++)
            redisAppendCommand(self->ctx, "FUNCTION DELETE %s", old[i]);
        redisAppendCommand(self->ctx, "FUNCTION LOAD REPLACE %s", bf_functions_lua);
        redisAppendCommand(self->ctx, "EXEC");
        redisReply *exec = NULL;
        for (int i = 0; i < nold + 3; i++) { /* MULTI, each QUEUED, then EXEC's */
            redisReply *r = NULL;
            if (redisGetReply(self->ctx, (void **)&r) != REDIS_OK) {
                s_check(self, NULL); /* the connection broke: errmsg, dropped */
                rc = -1;
                break;
            }
            if (i == nold + 2)
                exec = r;
            else
                freeReplyObject(r);
        }
        const redisReply *load =
            exec && exec->type == REDIS_REPLY_ARRAY && exec->elements == (size_t)nold + 1
                ? exec->element[nold]
                : exec;
        if (rc == 0 && (!load || load->type == REDIS_REPLY_ERROR || load == exec)) {
            snprintf(self->errmsg, sizeof self->errmsg, "redis at %s: %s", self->redacted,
                     load && load->type == REDIS_REPLY_ERROR ? load->str
                                                             : "unexpected reply to EXEC");
            rc = -1;
        }
        freeReplyObject(exec);
        if (rc == 0)
            log_info("redis at %s: backfill's functions upgraded to version %d", self->redacted,
                     mine);
    }
    for (int i = 0; i < nold; i++)
        free(old[i]);
    free(old);
    return rc;
}

int bf_rstate_load_functions(bf_rstate_t *self)
{
    int rc = s_load(self);
    if (rc == -1)
        log_error("cannot load backfill functions into %s (Redis 7 or later is needed): %s",
                  self->redacted, self->errmsg);
    else if (rc == -2)
        log_error("%s", self->errmsg);
    return rc;
}

int bf_rstate_hget_int(bf_rstate_t *self, const char *suffix, const char *field, int64_t *out)
{
    redisReply *r = bf_rstate_cmd(self, "HGET %s %s", bf_rstate_key(self, suffix), field);
    if (!r)
        return -1;
    *out = (r->type == REDIS_REPLY_STRING) ? strtoll(r->str, NULL, 10) : 0;
    freeReplyObject(r);
    return 0;
}

int bf_rstate_lease_info(bf_rstate_t *self, int n, const int64_t *ids, int64_t *tbl, bool *pooled)
{
    if (!self->ctx && s_connect(self, false) != 0)
        return -1;
    for (int i = 0; i < n; i++) {
        char suffix[48];
        snprintf(suffix, sizeof suffix, "range:%lld", (long long)ids[i]);
        if (redisAppendCommand(self->ctx, "HMGET %s tbl owner", bf_rstate_key(self, suffix)) !=
            REDIS_OK) {
            s_check(self, NULL);
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(self->ctx, (void **)&r) != REDIS_OK) {
            s_check(self, NULL); /* the rest of the replies are lost with the connection */
            return -1;
        }
        tbl[i] = -1; /* an error reply for this one: the others are still good */
        pooled[i] = false;
        if ((r = s_check(self, r)) && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            redisReply *t = r->element[0], *o = r->element[1];
            tbl[i] = t->type == REDIS_REPLY_STRING ? strtoll(t->str, NULL, 10) : 0;
            pooled[i] = o->type == REDIS_REPLY_STRING &&
                        strncmp(o->str, BF_POOL_OWNER_PREFIX, strlen(BF_POOL_OWNER_PREFIX)) == 0;
        }
        freeReplyObject(r);
    }
    return 0;
}

int bf_rstate_is_planned(bf_rstate_t *self)
{
    int64_t planned = 0;
    if (bf_rstate_hget_int(self, "meta", "planned", &planned) != 0)
        return -1;
    return planned == 1;
}

int bf_rstate_id_end(bf_rstate_t *self, int64_t *end, int64_t *count)
{
    redisReply *r = bf_rstate_cmd(self, "HMGET %s nranges next_id", bf_rstate_key(self, "meta"));
    if (!r)
        return -1;
    int64_t v[2] = {0, 0};
    for (size_t i = 0; i < 2 && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING)
            v[i] = strtoll(r->element[i]->str, NULL, 10);
    freeReplyObject(r);
    *count = v[0];
    *end = v[1] > v[0] ? v[1] : v[0];
    return 0;
}

int bf_rstate_is_complete(bf_rstate_t *self)
{
    /* done before nranges: a split adds a range (nranges first, then the owner's
     * part may end), so a count read before it never covers the new range. */
    int64_t planned = 0, nranges = 0, done = 0;
    if (bf_rstate_hget_int(self, "meta", "planned", &planned) != 0 ||
        bf_rstate_hget_int(self, "stats", "done_total", &done) != 0 ||
        bf_rstate_hget_int(self, "meta", "nranges", &nranges) != 0)
        return -1;
    return planned == 1 && done >= nranges;
}

static char *s_str_or_null(const redisReply *r)
{
    return (r && r->type == REDIS_REPLY_STRING) ? bf_xstrdup(r->str) : NULL;
}

int bf_rstate_lease(bf_rstate_t *self, int64_t ttl_ms, int n, const char *const *owners,
                    bf_range_t *out)
{
    if (n <= 0)
        return 0;
    memset(out, 0, (size_t)n * sizeof *out);
    const char **argv = bf_xcalloc((size_t)n + 5, sizeof *argv);
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    argv[0] = "FCALL";
    argv[1] = "bf_lease";
    argv[2] = "1";
    argv[3] = bf_rstate_key(self, "meta");
    argv[4] = ttl;
    for (int i = 0; i < n; i++)
        argv[5 + i] = owners[i];
    redisReply *r = bf_rstate_argv(self, n + 5, argv);
    free(argv);
    if (!r)
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements > (size_t)n) {
        snprintf(self->errmsg, sizeof self->errmsg, "bf_lease: unexpected reply");
        freeReplyObject(r);
        return -1;
    }
    int got = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 7 ||
            e->element[0]->type != REDIS_REPLY_STRING ||
            e->element[1]->type != REDIS_REPLY_STRING) {
            snprintf(self->errmsg, sizeof self->errmsg, "bf_lease: unexpected reply");
            break;
        }
        bf_range_t *o = &out[got++];
        o->id = strtoll(e->element[0]->str, NULL, 10);
        o->token = strtoll(e->element[1]->str, NULL, 10);
        o->table = e->element[2]->type == REDIS_REPLY_STRING ? atoi(e->element[2]->str) : 0;
        o->lo = s_str_or_null(e->element[3]);
        o->hi = s_str_or_null(e->element[4]);
        o->cursor = s_str_or_null(e->element[5]);
        o->seq =
            e->element[6]->type == REDIS_REPLY_STRING ? strtoll(e->element[6]->str, NULL, 10) : 0;
        snprintf(o->state, sizeof o->state, "leased");
    }
    freeReplyObject(r);
    return got;
}

bf_cp_result_t bf_rstate_checkpoint(bf_rstate_t *self, int64_t id, int64_t token, int64_t seq,
                                    const char *cursor, int64_t rows, int64_t bytes,
                                    int64_t rejects, int64_t parked, bool final, int64_t ttl_ms,
                                    int64_t batch_ms, const char *hi, const char *who)
{
    char *his = bf_rstate_bound(hi);
    char ids[24], toks[24], seqs[24], rowss[24], bytess[24], ttls[24], rejs[24], mss[24], parks[24];
    snprintf(parks, sizeof parks, "%lld", (long long)parked);
    snprintf(mss, sizeof mss, "%lld", (long long)batch_ms);
    snprintf(rejs, sizeof rejs, "%lld", (long long)rejects);
    snprintf(ids, sizeof ids, "%lld", (long long)id);
    snprintf(toks, sizeof toks, "%lld", (long long)token);
    snprintf(seqs, sizeof seqs, "%lld", (long long)seq);
    snprintf(rowss, sizeof rowss, "%lld", (long long)rows);
    snprintf(bytess, sizeof bytess, "%lld", (long long)bytes);
    snprintf(ttls, sizeof ttls, "%lld", (long long)ttl_ms);
    const char *argv[] = {"FCALL",
                          "bf_checkpoint",
                          "1",
                          bf_rstate_key(self, "meta"),
                          ids,
                          toks,
                          seqs,
                          cursor ? cursor : "",
                          cursor ? "1" : "0",
                          rowss,
                          bytess,
                          final ? "1" : "0",
                          ttls,
                          rejs,
                          mss,
                          his,
                          who ? who : "",
                          parks};
    redisReply *r = bf_rstate_argv(self, 18, argv);
    free(his);
    if (!r)
        return BF_CP_ERROR;
    bf_cp_result_t res = BF_CP_ERROR;
    if (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_STRING) {
        if (strcmp(r->str, "OK") == 0)
            res = BF_CP_OK;
        else if (strcmp(r->str, "DUP") == 0)
            res = BF_CP_DUP;
        else if (strcmp(r->str, "STALE") == 0)
            res = BF_CP_STALE;
    }
    freeReplyObject(r);
    return res;
}

char *bf_rstate_bound(const char *key)
{
    return key ? bf_xasprintf("=%s", key) : bf_xstrdup("-");
}

int bf_rstate_split(bf_rstate_t *self, int64_t id, int64_t token, const char *key, int64_t est_new,
                    int64_t est_kept, int64_t want_id, int64_t floor, int64_t *new_id)
{
    char ids[24], toks[24], en[24], ek[24], want[24], fl[24];
    snprintf(ids, sizeof ids, "%lld", (long long)id);
    snprintf(toks, sizeof toks, "%lld", (long long)token);
    snprintf(en, sizeof en, "%lld", (long long)est_new);
    snprintf(ek, sizeof ek, "%lld", (long long)est_kept);
    snprintf(want, sizeof want, "%lld", (long long)want_id);
    snprintf(fl, sizeof fl, "%lld", (long long)floor);
    const char *argv[] = {"FCALL", "bf_split", "1", bf_rstate_key(self, "meta"), ids, toks, key, en,
                          ek,      want,       fl};
    redisReply *r = bf_rstate_argv(self, 11, argv);
    if (!r)
        return -1;
    int res = -1;
    if (r->type == REDIS_REPLY_INTEGER) {
        *new_id = r->integer;
        res = 0;
    } else if ((r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_STRING) &&
               strcmp(r->str, "STALE") == 0) {
        res = 1;
    } else if ((r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_STRING) &&
               strcmp(r->str, "TAKEN") == 0) {
        res = 2;
    } else {
        snprintf(self->errmsg, sizeof self->errmsg, "bf_split: unexpected reply");
    }
    freeReplyObject(r);
    return res;
}

int bf_rstate_admit(bf_rstate_t *self, int64_t rows, bf_admit_t *state, int64_t *granted,
                    int64_t *wait_ms)
{
    redisReply *r = bf_rstate_cmd(self, "FCALL bf_admit 1 %s %lld", bf_rstate_key(self, "meta"),
                                  (long long)rows);
    if (!r)
        return -1;
    int rc = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_INTEGER &&
        r->element[2]->type == REDIS_REPLY_INTEGER) {
        const char *st = r->element[0]->str;
        *state = strcmp(st, "paused") == 0    ? BF_ADMIT_PAUSED
                 : strcmp(st, "cancel") == 0  ? BF_ADMIT_CANCEL
                 : strcmp(st, "backoff") == 0 ? BF_ADMIT_BACKOFF
                                              : BF_ADMIT_RUN;
        *granted = r->element[1]->integer;
        *wait_ms = r->element[2]->integer;
        rc = 0;
    } else {
        snprintf(self->errmsg, sizeof self->errmsg, "bf_admit: unexpected reply");
    }
    freeReplyObject(r);
    return rc;
}

int bf_rstate_release(bf_rstate_t *self, int64_t id, int64_t token, const char *reason,
                      bool counts_as_attempt, int max_attempts)
{
    char ids[24], toks[24], maxs[24];
    snprintf(ids, sizeof ids, "%lld", (long long)id);
    snprintf(toks, sizeof toks, "%lld", (long long)token);
    snprintf(maxs, sizeof maxs, "%d", max_attempts);
    const char *argv[] = {"FCALL",
                          "bf_release",
                          "1",
                          bf_rstate_key(self, "meta"),
                          ids,
                          toks,
                          reason ? reason : "",
                          counts_as_attempt ? "1" : "0",
                          maxs};
    redisReply *r = bf_rstate_argv(self, 9, argv);
    if (!r)
        return -1;
    int res = 2;
    if (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_STRING) {
        if (strcmp(r->str, "PENDING") == 0)
            res = 0;
        else if (strcmp(r->str, "FAILED") == 0)
            res = 1;
    }
    freeReplyObject(r);
    return res;
}

int bf_rstate_defer(bf_rstate_t *self, int64_t id, int64_t token, const char *reason,
                    int64_t delay_ms, int64_t *after_ms)
{
    char ids[24], toks[24], delay[24];
    snprintf(ids, sizeof ids, "%lld", (long long)id);
    snprintf(toks, sizeof toks, "%lld", (long long)token);
    snprintf(delay, sizeof delay, "%lld", (long long)delay_ms);
    const char *argv[] = {"FCALL", "bf_defer",           "1",  bf_rstate_key(self, "meta"), ids,
                          toks,    reason ? reason : "", delay};
    redisReply *r = bf_rstate_argv(self, 8, argv);
    if (!r)
        return -1;
    int res = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        const char *st = r->element[0]->str;
        res = strcmp(st, "DEFERRED") == 0 ? 0 : strcmp(st, "NO") == 0 ? 1 : 2;
        if (after_ms)
            *after_ms = r->element[1]->type == REDIS_REPLY_INTEGER ? r->element[1]->integer : 0;
    } else {
        snprintf(self->errmsg, sizeof self->errmsg, "redis at %s: bf_defer: %s", self->redacted,
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    }
    freeReplyObject(r);
    return res;
}

int64_t bf_rstate_unblock(bf_rstate_t *self)
{
    redisReply *r = bf_rstate_cmd(self, "FCALL bf_unblock 1 %s", bf_rstate_key(self, "meta"));
    if (!r)
        return -1;
    int64_t n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (n < 0)
        snprintf(self->errmsg, sizeof self->errmsg, "redis at %s: bf_unblock: %s", self->redacted,
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    freeReplyObject(r);
    return n;
}

/* FCALL fn 1 meta head id1 token1 id2 token2 ...: the reply, or NULL (errmsg set). */
static redisReply *s_fcall_pairs(bf_rstate_t *self, const char *fn, const char *head, int n,
                                 const int64_t *ids, const int64_t *tokens)
{
    int argc = 5 + 2 * n;
    const char **argv = bf_xcalloc((size_t)argc, sizeof *argv);
    char(*num)[24] = bf_xcalloc((size_t)(2 * n + 1), sizeof *num);
    argv[0] = "FCALL";
    argv[1] = fn;
    argv[2] = "1";
    argv[3] = bf_rstate_key(self, "meta");
    argv[4] = head;
    for (int i = 0; i < n; i++) {
        snprintf(num[2 * i], 24, "%lld", (long long)ids[i]);
        snprintf(num[2 * i + 1], 24, "%lld", (long long)tokens[i]);
        argv[5 + 2 * i] = num[2 * i];
        argv[6 + 2 * i] = num[2 * i + 1];
    }
    redisReply *r = bf_rstate_argv(self, argc, argv);
    free(argv);
    free(num);
    return r;
}

int bf_rstate_renew(bf_rstate_t *self, int64_t ttl_ms, int n, const int64_t *ids,
                    const int64_t *tokens, int64_t *lost, int *nlost)
{
    int cap = *nlost;
    *nlost = 0;
    if (n == 0)
        return 0;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    redisReply *r = s_fcall_pairs(self, "bf_renew", ttl, n, ids, tokens);
    if (!r)
        return -1;
    if (r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements && *nlost < cap; i++)
            if (r->element[i]->type == REDIS_REPLY_STRING)
                lost[(*nlost)++] = strtoll(r->element[i]->str, NULL, 10);
    freeReplyObject(r);
    return 0;
}

int64_t bf_rstate_assign(bf_rstate_t *self, int n, const int64_t *ids, const char *const *owners)
{
    /* Plain pipelined HSETs: no Lua (the cheapest writes Redis has), as this runs
     * once per lease handed out. */
    if (n <= 0)
        return 0;
    if (!self->ctx && s_connect(self, false) != 0)
        return -1;
    for (int i = 0; i < n; i++) {
        char suffix[48];
        snprintf(suffix, sizeof suffix, "range:%lld", (long long)ids[i]);
        if (redisAppendCommand(self->ctx, "HSET %s owner %s", bf_rstate_key(self, suffix),
                               owners[i]) != REDIS_OK) {
            s_check(self, NULL);
            return -1;
        }
    }
    int64_t rc = n;
    for (int i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(self->ctx, (void **)&r) != REDIS_OK) {
            s_check(self, NULL);
            return -1;
        }
        if (!(r = s_check(self, r)))
            rc = -1;
        else
            freeReplyObject(r);
    }
    return rc;
}

int64_t bf_rstate_unpool(bf_rstate_t *self, const char *owner_prefix, int n, const int64_t *ids,
                         const int64_t *tokens)
{
    redisReply *r = s_fcall_pairs(self, "bf_unpool", owner_prefix, n, ids, tokens);
    if (!r)
        return -1;
    int64_t res = -1;
    if (r->type == REDIS_REPLY_INTEGER)
        res = r->integer;
    else
        snprintf(self->errmsg, sizeof self->errmsg, "bf_unpool: unexpected reply");
    freeReplyObject(r);
    return res;
}

int bf_rstate_reap(bf_rstate_t *self)
{
    redisReply *r = bf_rstate_cmd(self, "FCALL bf_reap 1 %s", bf_rstate_key(self, "meta"));
    if (!r)
        return -1;
    int n = r->type == REDIS_REPLY_ARRAY ? (int)r->elements : 0;
    freeReplyObject(r);
    return n;
}

int bf_rstate_get_range(bf_rstate_t *self, int64_t id, bf_range_t *out)
{
    memset(out, 0, sizeof *out);
    char suffix[40];
    snprintf(suffix, sizeof suffix, "range:%lld", (long long)id);
    redisReply *r = bf_rstate_cmd(self, "HMGET %s tbl lo hi cursor token seq est rows bytes state",
                                  bf_rstate_key(self, suffix));
    if (!r)
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 10) {
        snprintf(self->errmsg, sizeof self->errmsg, "range %lld: unexpected reply", (long long)id);
        freeReplyObject(r);
        return -1;
    }
    if (r->element[9]->type != REDIS_REPLY_STRING) {
        snprintf(self->errmsg, sizeof self->errmsg, "range %lld does not exist", (long long)id);
        freeReplyObject(r);
        return 1;
    }
    out->id = id;
    out->table = r->element[0]->type == REDIS_REPLY_STRING ? atoi(r->element[0]->str) : 0;
    out->lo = s_str_or_null(r->element[1]);
    out->hi = s_str_or_null(r->element[2]);
    out->cursor = s_str_or_null(r->element[3]);
    int64_t *nums[] = {&out->token, &out->seq, &out->est, &out->rows, &out->bytes};
    for (int i = 0; i < 5; i++)
        *nums[i] = r->element[4 + i]->type == REDIS_REPLY_STRING
                       ? strtoll(r->element[4 + i]->str, NULL, 10)
                       : 0;
    snprintf(out->state, sizeof out->state, "%s", r->element[9]->str);
    freeReplyObject(r);
    return 0;
}

#include "planner.h"

int bf_rstate_forget(bf_rstate_t *self)
{
    char pattern[260];
    snprintf(pattern, sizeof pattern, "%s*", self->prefix);
    char cursor[32] = "0";
    do {
        redisReply *r = bf_rstate_cmd(self, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (!r)
            return -1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            return -1;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            /* The fencing counter survives: a token is never issued twice. */
            const char *k = keys->element[i]->str;
            if (strcmp(k, bf_rstate_key(self, "fence")) == 0)
                continue;
            /* Nor the coordinator lock: the coordinator that replans holds it. */
            if (strcmp(k, bf_rstate_key(self, "lock")) == 0)
                continue;
            redisReply *d = bf_rstate_cmd(self, "UNLINK %s", keys->element[i]->str);
            if (!d) {
                freeReplyObject(r);
                return -1;
            }
            freeReplyObject(d);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

int bf_rstate_store_plan(bf_rstate_t *self, int ntables, const char *const *labels,
                         const struct bf_plan_range *const *ranges, const size_t *nranges,
                         const char *const *after, const bool *ordered, const char *const *sigs,
                         const char *const *maps)
{
    if (bf_rstate_forget(self) != 0 || (!self->ctx && s_connect(self, true) != 0)) {
        log_error("cannot store the plan: %s", self->errmsg);
        return -1;
    }
    redisContext *c = self->ctx;
    char key[400], pend[400], meta[400], stats[400];
    snprintf(meta, sizeof meta, "%smeta", self->prefix);
    snprintf(stats, sizeof stats, "%sstats", self->prefix);
    size_t queued = 1;
    redisAppendCommand(c, "MULTI");
    long long id = 0;
    bool waits = false;
    for (int t = 0; t < ntables; t++) {
        long long est = 0;
        bool wait = after && after[t] && after[t][0];
        bool in_order = ordered && ordered[t];
        waits = waits || wait || in_order;
        char waitk[400];
        snprintf(waitk, sizeof waitk, "%swaiting:%d", self->prefix, t);
        snprintf(pend, sizeof pend, "%spending", self->prefix);
        for (size_t i = 0; i < nranges[t]; i++, id++) {
            const bf_plan_range_t *r = &ranges[t][i];
            snprintf(key, sizeof key, "%srange:%lld", self->prefix, id);
            redisAppendCommand(
                c, "HSET %s tbl %d state pending seq 0 rows 0 bytes 0 attempts 0 est %lld", key, t,
                (long long)r->est);
            queued++;
            if (r->lo) {
                redisAppendCommand(c, "HSET %s lo %s", key, r->lo);
                queued++;
            }
            if (r->hi) {
                redisAppendCommand(c, "HSET %s hi %s", key, r->hi);
                queued++;
            }
            /* A table that waits starts when its tables are done; one copied in key
             * order has its first range pending and the others waiting. */
            redisAppendCommand(c, "ZADD %s %lld %lld", wait || (in_order && i > 0) ? waitk : pend,
                               id, id);
            queued++;
            est += r->est;
        }
        redisAppendCommand(c, "HSET %s tbl:%d:name %s tbl:%d:ranges %lld tbl:%d:est %lld", meta, t,
                           labels[t], t, (long long)nranges[t], t, est);
        redisAppendCommand(c, "HSET %s rows:%d 0 done:%d 0 failed:%d 0", stats, t, t, t);
        queued += 2;
        if (wait) {
            redisAppendCommand(c, "HSET %s tbl:%d:after %s", meta, t, after[t]);
            queued++;
        }
        if (in_order) {
            redisAppendCommand(c, "HSET %s tbl:%d:ordered 1", meta, t);
            queued++;
        }
        if (sigs && maps) {
            redisAppendCommand(c, "HSET %s tbl:%d:sig %s tbl:%d:map %s", meta, t, sigs[t], t,
                               maps[t]);
            queued++;
        }
    }
    if (waits) {
        redisAppendCommand(c, "HSET %s waits 1", meta);
        queued++;
    }
    redisAppendCommand(c, "HSET %s done_total 0 failed_total 0 batches 0 retries 0", stats);
    redisAppendCommand(c, "HSET %s planned 1 nranges %lld next_id %lld ntables %d created_ms %lld",
                       meta, id, id, ntables, bf_wall_ms());
    redisAppendCommand(c, "EXEC");
    queued += 3;
    int rc = 0;
    for (size_t i = 0; i < queued; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) {
            snprintf(self->errmsg, sizeof self->errmsg, "redis at %s: %s", self->redacted,
                     c->errstr);
            rc = -1;
            break;
        }
        if (r->type == REDIS_REPLY_ERROR || (i == queued - 1 && r->type != REDIS_REPLY_ARRAY)) {
            snprintf(self->errmsg, sizeof self->errmsg, "redis at %s: %s", self->redacted,
                     r->type == REDIS_REPLY_ERROR ? r->str : "transaction aborted");
            rc = -1;
        }
        freeReplyObject(r);
    }
    if (rc != 0) {
        log_error("cannot store the plan: %s", self->errmsg);
        redisFree(self->ctx);
        self->ctx = NULL;
    }
    return rc;
}

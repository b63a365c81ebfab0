/* Job file loading: libyaml document API, ${VAR} expansion, validation with one-line
 * "FILE:LINE: message" errors. Nothing here logs; errors go back in err. */
#include "job.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

/* State of one load. */
typedef struct {
    const char *label;    /* file name used in messages */
    char *err;            /* caller's error buffer, may be NULL */
    size_t errlen;        /* its size */
    bool failed;          /* an error was written */
    bf_env_fn env;        /* variable lookup; NULL means getenv */
    void *env_arg;        /* passed to env */
    bool redis_env_only;  /* unset variables outside `redis:` stay "${VAR}" */
    char unset[300];      /* the last such "${VAR}" */
    yaml_document_t *doc; /* the parsed document */
    bf_job_t *job;        /* the job being built */
} s_loader_t;

/* A growable string. */
typedef struct {
    char *data; /* NUL-terminated when not NULL */
    size_t len; /* bytes used, without the NUL */
    size_t cap; /* bytes allocated */
} s_buf_t;

static const char *s_top_keys[] = {
    "name",         "source",       "redis",      "targets",        "batch_rows",
    "batch_ms",     "batch_max_mb", "range_rows", "throttle_query", "throttle_on",
    "throttle_max", "tables",       NULL};
enum {
    S_NAME,
    S_SOURCE,
    S_REDIS,
    S_TARGETS,
    S_BATCH_ROWS,
    S_BATCH_MS,
    S_BATCH_MAX_MB,
    S_RANGE_ROWS,
    S_THROTTLE_QUERY,
    S_THROTTLE_ON,
    S_THROTTLE_MAX,
    S_TABLES,
    S_NTOP
};

static const char *s_table_keys[] = {"from", "to",      "key",   "where", "columns",
                                     "mode", "version", "route", NULL};
enum { S_FROM, S_TO, S_KEY, S_WHERE, S_COLUMNS, S_MODE, S_VERSION, S_ROUTE, S_NTABLE };

static const char *s_route_keys[] = {"when", "to", NULL};
enum { S_WHEN, S_RTO, S_NROUTE };

static const char *s_modes[] = {"insert", "skip", "upsert", "newer", NULL};

const char *bf_mode_name(bf_mode_t mode)
{
    return mode >= BF_MODE_INSERT && mode <= BF_MODE_NEWER ? s_modes[mode] : "?";
}

#define S_MAX_NAME 64

static void s_fail(s_loader_t *self, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes "LABEL:LINE: message" (or "LABEL: message" when line <= 0) to err, once.
 * Control characters become spaces so the message stays on one line. */
static void s_fail(s_loader_t *self, int line, const char *fmt, ...)
{
    if (self->failed)
        return;
    self->failed = true;
    if (!self->err || self->errlen == 0)
        return;
    int n;
    if (line > 0)
        n = snprintf(self->err, self->errlen, "%s:%d: ", self->label, line);
    else
        n = snprintf(self->err, self->errlen, "%s: ", self->label);
    if (n >= 0 && (size_t)n < self->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(self->err + n, self->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    for (char *p = self->err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
}

static int s_line(const yaml_node_t *node)
{
    return node ? (int)node->start_mark.line + 1 : 0;
}

static const char *s_kind(const yaml_node_t *node)
{
    switch (node->type) {
    case YAML_SCALAR_NODE:
        return "a string";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "empty";
    }
}

static const char *s_scalar(const yaml_node_t *node)
{
    return (const char *)node->data.scalar.value;
}

/* True for a plain scalar that YAML reads as null: `key:`, `key: ~`, `key: null`. */
static bool s_is_null(const yaml_node_t *node)
{
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = s_scalar(node);
    return strcmp(v, "") == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static int s_buf_add(s_buf_t *buf, const char *s, size_t n)
{
    if (buf->len + n + 1 > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 64;
        while (cap < buf->len + n + 1)
            cap *= 2;
        char *data = realloc(buf->data, cap);
        if (!data)
            return -1;
        buf->data = data;
        buf->cap = cap;
    }
    memcpy(buf->data + buf->len, s, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
    return 0;
}

/* Optimal string alignment distance (edits, with adjacent swaps counting one), for
 * "did you mean"; strings longer than 15 bytes get a large distance. */
static int s_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 15 || lb > 15)
        return 100;
    int d[16][16];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best)
                best = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

/* Reports an unknown key with the closest known key, or the list of known keys. */
static void s_unknown_key(s_loader_t *self, const yaml_node_t *key, const char *where,
                          const char **known)
{
    const char *best = NULL;
    int best_dist = 3;
    for (int i = 0; known[i]; i++) {
        int dist = s_distance(s_scalar(key), known[i]);
        if (dist < best_dist && dist < (int)strlen(known[i])) {
            best = known[i];
            best_dist = dist;
        }
    }
    if (best) {
        s_fail(self, s_line(key), "unknown key '%.64s'%s (did you mean '%s'?)", s_scalar(key),
               where, best);
        return;
    }
    char list[256] = "";
    for (int i = 0; known[i]; i++) {
        if (i > 0)
            strncat(list, ", ", sizeof list - strlen(list) - 1);
        strncat(list, known[i], sizeof list - strlen(list) - 1);
    }
    s_fail(self, s_line(key), "unknown key '%.64s'%s (allowed keys: %s)", s_scalar(key), where,
           list);
}

/* Checks that a mapping key is a scalar and not repeated earlier in the mapping. */
static int s_check_key(s_loader_t *self, yaml_node_t *map, yaml_node_pair_t *pair,
                       const char *where)
{
    yaml_node_t *key = yaml_document_get_node(self->doc, pair->key);
    if (!key || key->type != YAML_SCALAR_NODE) {
        s_fail(self, s_line(key ? key : map), "keys%s must be plain strings, not %s", where,
               key ? s_kind(key) : "empty");
        return -1;
    }
    for (yaml_node_pair_t *prev = map->data.mapping.pairs.start; prev < pair; prev++) {
        yaml_node_t *other = yaml_document_get_node(self->doc, prev->key);
        if (other && other->type == YAML_SCALAR_NODE &&
            other->data.scalar.length == key->data.scalar.length &&
            memcmp(other->data.scalar.value, key->data.scalar.value, key->data.scalar.length) ==
                0) {
            s_fail(self, s_line(key), "duplicate key '%.64s'%s (first at line %d)", s_scalar(key),
                   where, s_line(other));
            return -1;
        }
    }
    return 0;
}

/* Value of an environment variable, recorded in job->env_* on first use. */
static const char *s_lookup(s_loader_t *self, const char *name, int line, const char *what)
{
    bf_job_t *job = self->job;
    for (int i = 0; i < job->nenv; i++)
        if (strcmp(job->env_names[i], name) == 0)
            return job->env_values[i];
    const char *value = self->env ? self->env(name, self->env_arg) : getenv(name);
    if (!value && self->redis_env_only && strcmp(what, "redis") != 0 && strcmp(what, "name") != 0) {
        /* Left as written: not used by the command (nor shown). Not recorded: the
         * same variable in `redis:` is still an error. (Used at once by s_expand.) */
        snprintf(self->unset, sizeof self->unset, "${%s}", name);
        return self->unset;
    }
    if (!value) {
        s_fail(self, line, "environment variable %s is not set (referenced by '%s')", name, what);
        return NULL;
    }
    char **names = realloc(job->env_names, sizeof(char *) * (size_t)(job->nenv + 1));
    if (!names)
        goto oom;
    job->env_names = names;
    char **values = realloc(job->env_values, sizeof(char *) * (size_t)(job->nenv + 1));
    if (!values)
        goto oom;
    job->env_values = values;
    char *name_copy = strdup(name);
    char *value_copy = strdup(value);
    if (!name_copy || !value_copy) {
        free(name_copy);
        free(value_copy);
        goto oom;
    }
    job->env_names[job->nenv] = name_copy;
    job->env_values[job->nenv] = value_copy;
    job->nenv++;
    return value_copy;
oom:
    s_fail(self, line, "out of memory");
    return NULL;
}

static bool s_is_name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool s_is_name_char(char c)
{
    return s_is_name_start(c) || (c >= '0' && c <= '9');
}

/* Returns the scalar's value with ${VAR} expanded (malloc'd), or NULL with the error
 * set. what names the setting in messages. *expanded tells whether a variable was
 * used, in which case the value must not appear in messages. */
static char *s_expand(s_loader_t *self, yaml_node_t *node, const char *what, bool *expanded)
{
    const char *src = s_scalar(node);
    size_t len = node->data.scalar.length;
    int line = s_line(node);
    *expanded = false;
    if (memchr(src, '\0', len)) {
        s_fail(self, line, "'%s' contains a NUL character", what);
        return NULL;
    }
    if (s_is_null(node))
        len = 0;
    s_buf_t buf = {NULL, 0, 0};
    if (s_buf_add(&buf, "", 0) < 0)
        goto oom;
    size_t i = 0;
    while (i < len) {
        const char *ref = strstr(src + i, "${");
        if (!ref || (size_t)(ref - src) >= len) {
            if (s_buf_add(&buf, src + i, len - i) < 0)
                goto oom;
            break;
        }
        if (s_buf_add(&buf, src + i, (size_t)(ref - src) - i) < 0)
            goto oom;
        const char *name = ref + 2;
        const char *close = strchr(name, '}');
        if (!close) {
            s_fail(self, line, "unterminated '${' in '%s'; write ${NAME}", what);
            goto fail;
        }
        size_t name_len = (size_t)(close - name);
        bool valid = name_len > 0 && s_is_name_start(name[0]);
        for (size_t k = 1; valid && k < name_len; k++)
            valid = s_is_name_char(name[k]);
        if (!valid) {
            s_fail(self, line,
                   "invalid variable reference in '%s': write ${NAME} with NAME made of "
                   "letters, digits and '_', not starting with a digit",
                   what);
            goto fail;
        }
        char var[128];
        if (name_len >= sizeof var) {
            s_fail(self, line, "variable name too long in '%s'", what);
            goto fail;
        }
        memcpy(var, name, name_len);
        var[name_len] = '\0';
        const char *value = s_lookup(self, var, line, what);
        if (!value)
            goto fail;
        if (s_buf_add(&buf, value, strlen(value)) < 0)
            goto oom;
        *expanded = true;
        i = (size_t)(close - src) + 1;
    }
    return buf.data;
oom:
    s_fail(self, line, "out of memory");
fail:
    free(buf.data);
    return NULL;
}

/* A scalar setting, expanded; NULL with the error set when it is not a scalar. */
static char *s_string(s_loader_t *self, yaml_node_t *node, const char *what, bool *expanded)
{
    if (node->type != YAML_SCALAR_NODE) {
        s_fail(self, s_line(node), "'%s' must be a string, not %s", what, s_kind(node));
        return NULL;
    }
    return s_expand(self, node, what, expanded);
}

/* A required, non-empty string setting. */
static char *s_required(s_loader_t *self, yaml_node_t *node, const char *what)
{
    bool expanded;
    char *value = s_string(self, node, what, &expanded);
    if (value && !*value) {
        s_fail(self, s_line(node), "'%s' is empty%s", what,
               expanded ? " (after expanding variables)" : "");
        free(value);
        return NULL;
    }
    return value;
}

/* What to quote in a message: the value, or the raw text when variables were expanded
 * (their values may be secret). */
static const char *s_show(const char *value, const yaml_node_t *node, bool expanded)
{
    return expanded ? s_scalar(node) : value;
}

static int s_integer(s_loader_t *self, yaml_node_t *node, const char *what, bool zero_ok,
                     int64_t *out);

/* A positive integer setting. */
static int s_positive(s_loader_t *self, yaml_node_t *node, const char *what, int64_t *out)
{
    return s_integer(self, node, what, false, out);
}

/* An integer setting >= 0 (zero_ok) or > 0. */
static int s_integer(s_loader_t *self, yaml_node_t *node, const char *what, bool zero_ok,
                     int64_t *out)
{
    const char *kind = zero_ok ? "0 or a positive integer" : "a positive integer";
    if (node->type != YAML_SCALAR_NODE) {
        s_fail(self, s_line(node), "'%s' must be %s, not %s", what, kind, s_kind(node));
        return -1;
    }
    bool expanded;
    char *value = s_expand(self, node, what, &expanded);
    if (!value)
        return -1;
    const char *shown = s_show(value, node, expanded);
    int rc = -1;
    int64_t n = 0;
    const char *p = value;
    if (*p == '\0' || *p == '-') {
        s_fail(self, s_line(node), "'%s' must be %s, got '%.64s'", what, kind, shown);
        goto done;
    }
    for (; *p; p++) {
        if (*p < '0' || *p > '9') {
            s_fail(self, s_line(node), "'%s' must be %s, got '%.64s'", what, kind, shown);
            goto done;
        }
        int digit = *p - '0';
        if (n > (INT64_MAX - digit) / 10) {
            s_fail(self, s_line(node), "'%s' is too large (at most %lld)", what,
                   (long long)INT64_MAX);
            goto done;
        }
        n = n * 10 + digit;
    }
    if (n == 0 && !zero_ok) {
        s_fail(self, s_line(node), "'%s' must be a positive integer, got 0", what);
        goto done;
    }
    *out = n;
    rc = 0;
done:
    free(value);
    return rc;
}

static bool s_valid_job_name(const char *name)
{
    size_t len = strlen(name);
    if (len < 1 || len > S_MAX_NAME)
        return false;
    for (const char *p = name; *p; p++)
        if (!s_is_name_char(*p) && *p != '.' && *p != '-')
            return false;
    return true;
}

static bool s_valid_alias(const char *alias)
{
    if (!*alias || strlen(alias) > S_MAX_NAME)
        return false;
    for (const char *p = alias; *p; p++)
        if (!s_is_name_char(*p) && *p != '-')
            return false;
    return true;
}

static int s_load_targets(s_loader_t *self, yaml_node_t *node)
{
    bf_job_t *job = self->job;
    if (s_is_null(node)) {
        s_fail(self, s_line(node), "'targets' is empty; add at least one 'alias: DSN' entry");
        return -1;
    }
    if (node->type != YAML_MAPPING_NODE) {
        s_fail(self, s_line(node), "'targets' must be a mapping of 'alias: DSN', not %s",
               s_kind(node));
        return -1;
    }
    yaml_node_pair_t *start = node->data.mapping.pairs.start;
    size_t count = (size_t)(node->data.mapping.pairs.top - start);
    if (count == 0) {
        s_fail(self, s_line(node), "'targets' is empty; add at least one 'alias: DSN' entry");
        return -1;
    }
    job->targets = calloc(count, sizeof *job->targets);
    if (!job->targets) {
        s_fail(self, s_line(node), "out of memory");
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        yaml_node_pair_t *pair = start + i;
        if (s_check_key(self, node, pair, " under targets") < 0)
            return -1;
        yaml_node_t *key = yaml_document_get_node(self->doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(self->doc, pair->value);
        const char *alias = s_scalar(key);
        if (memchr(alias, '\0', key->data.scalar.length) || !s_valid_alias(alias)) {
            s_fail(self, s_line(key),
                   "target alias '%.64s' must be 1-%d letters, digits, '_' or '-' (it is "
                   "used as 'to: ALIAS.schema.table')",
                   alias, S_MAX_NAME);
            return -1;
        }
        bf_target_t *target = &job->targets[job->ntargets++];
        target->line = s_line(key);
        target->alias = strdup(alias);
        if (!target->alias) {
            s_fail(self, s_line(key), "out of memory");
            return -1;
        }
        char what[S_MAX_NAME + 16];
        snprintf(what, sizeof what, "targets.%s", alias);
        target->dsn = s_required(self, value, what);
        if (!target->dsn)
            return -1;
    }
    return 0;
}

/* Splits a dotted name into between min and max non-empty parts (malloc'd). Returns
 * the number of parts, or -1 with the error set. */
static int s_split(s_loader_t *self, const char *value, const char *shown, int line,
                   const char *what, const char *syntax, int min, int max, char **parts)
{
    if (strchr(value, '"')) {
        s_fail(self, line,
               "%s: quoted identifiers (\"...\") are not supported, so names containing "
               "dots cannot be used; write %s",
               what, syntax);
        return -1;
    }
    int n = 1;
    for (const char *p = value; *p; p++) {
        if (*p == '.')
            n++;
        else if (*p == ' ' || *p == '\t' || (unsigned char)*p < 0x20) {
            s_fail(self, line, "%s: '%.128s' contains white space; write %s", what, shown, syntax);
            return -1;
        }
    }
    if (n < min || n > max) {
        s_fail(self, line, "%s: '%.128s' must be written as %s", what, shown, syntax);
        return -1;
    }
    const char *p = value;
    for (int i = 0; i < n; i++) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len == 0) {
            s_fail(self, line, "%s: '%.128s' has an empty name; write %s", what, shown, syntax);
            goto fail;
        }
        parts[i] = strndup(p, len);
        if (!parts[i]) {
            s_fail(self, line, "out of memory");
            goto fail;
        }
        p += len + 1;
    }
    return n;
fail:
    for (int i = 0; i < max; i++) {
        free(parts[i]);
        parts[i] = NULL;
    }
    return -1;
}

/* Lists target aliases for messages: "a, b, c". */
static void s_alias_list(const bf_job_t *job, char *out, size_t outlen)
{
    out[0] = '\0';
    for (int i = 0; i < job->ntargets; i++) {
        if (i > 0)
            strncat(out, ", ", outlen - strlen(out) - 1);
        strncat(out, job->targets[i].alias, outlen - strlen(out) - 1);
    }
}

/* Reads the pairs of a mapping into values[] by the known keys (NULL-terminated);
 * reports unknown and repeated keys. keys_out may be NULL. */
static int s_mapping(s_loader_t *self, yaml_node_t *map, const char *where, const char **known,
                     yaml_node_t **keys_out, yaml_node_t **values)
{
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
         pair++) {
        if (s_check_key(self, map, pair, where) < 0)
            return -1;
        yaml_node_t *key = yaml_document_get_node(self->doc, pair->key);
        int k = 0;
        while (known[k] && strcmp(known[k], s_scalar(key)) != 0)
            k++;
        if (!known[k]) {
            s_unknown_key(self, key, where, known);
            return -1;
        }
        if (keys_out)
            keys_out[k] = key;
        values[k] = yaml_document_get_node(self->doc, pair->value);
    }
    return 0;
}

/* A destination "ALIAS.[schema.]table" into route (alias must be a job target). */
static int s_load_dest(s_loader_t *self, yaml_node_t *node, const char *what, const char *label,
                       bf_route_t *route)
{
    bf_job_t *job = self->job;
    bool expanded;
    char *to = s_string(self, node, what, &expanded);
    if (!to)
        return -1;
    const char *shown = s_show(to, node, expanded);
    char *parts[3] = {NULL, NULL, NULL};
    int n = s_split(self, to, shown, s_line(node), label,
                    "ALIAS.[schema.]table (ALIAS: a key under targets)", 2, 3, parts);
    free(to);
    if (n < 0)
        return -1;
    route->line = s_line(node);
    route->alias = parts[0];
    if (n == 2) {
        route->schema = strdup("public");
        route->table = parts[1];
    } else {
        route->schema = parts[1];
        route->table = parts[2];
    }
    if (!route->schema) {
        s_fail(self, route->line, "out of memory");
        return -1;
    }
    if (!bf_job_target(job, route->alias)) {
        char defined[512];
        s_alias_list(job, defined, sizeof defined);
        s_fail(self, route->line, "%s: target '%.64s' is not defined under targets (defined: %s)",
               label, expanded ? shown : route->alias, defined);
        return -1;
    }
    return 0;
}

/* A non-empty SQL text (where, when, an expression). */
static char *s_sql(s_loader_t *self, yaml_node_t *node, const char *what)
{
    char *v = s_required(self, node, what);
    if (v && strchr(v, ';')) {
        s_fail(self, s_line(node), "'%s' must be one SQL expression, without ';'", what);
        free(v);
        return NULL;
    }
    return v;
}

/* A column name: non-empty, one line. */
static char *s_column_name(s_loader_t *self, yaml_node_t *node, const char *what)
{
    char *v = s_required(self, node, what);
    if (v && (strlen(v) > 63 || strpbrk(v, "\n\r\t\""))) {
        s_fail(self, s_line(node), "'%s': '%.64s' is not a column name", what, v);
        free(v);
        return NULL;
    }
    return v;
}

static int s_load_key(s_loader_t *self, yaml_node_t *node, const char *label, bf_table_t *table)
{
    table->key_line = s_line(node);
    yaml_node_t *one = node;
    size_t count = 1;
    if (node->type == YAML_SEQUENCE_NODE) {
        count = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
        if (count == 0) {
            s_fail(self, s_line(node), "%s: 'key' is an empty list; name the key columns", label);
            return -1;
        }
    } else if (node->type != YAML_SCALAR_NODE) {
        s_fail(self, s_line(node), "%s: 'key' must be a column or a list of columns, not %s", label,
               s_kind(node));
        return -1;
    }
    table->key = calloc(count, sizeof *table->key);
    if (!table->key) {
        s_fail(self, s_line(node), "out of memory");
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        if (node->type == YAML_SEQUENCE_NODE)
            one = yaml_document_get_node(self->doc, node->data.sequence.items.start[i]);
        if (!one || one->type != YAML_SCALAR_NODE) {
            s_fail(self, s_line(node), "%s: 'key' entries must be column names", label);
            return -1;
        }
        char *name = s_column_name(self, one, "key");
        if (!name)
            return -1;
        for (int j = 0; j < table->nkey; j++)
            if (strcmp(table->key[j], name) == 0) {
                s_fail(self, s_line(one), "%s: key column '%s' is listed twice", label, name);
                free(name);
                return -1;
            }
        table->key[table->nkey++] = name;
    }
    return 0;
}

static int s_load_columns(s_loader_t *self, yaml_node_t *node, const char *label, bf_table_t *table)
{
    if (node->type != YAML_MAPPING_NODE) {
        s_fail(self, s_line(node),
               "%s: 'columns' must be a mapping 'target_column: SQL expression over source "
               "columns', not %s",
               label, s_kind(node));
        return -1;
    }
    size_t count = (size_t)(node->data.mapping.pairs.top - node->data.mapping.pairs.start);
    table->columns = calloc(count ? count : 1, sizeof *table->columns);
    if (!table->columns) {
        s_fail(self, s_line(node), "out of memory");
        return -1;
    }
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
         pair < node->data.mapping.pairs.top; pair++) {
        if (s_check_key(self, node, pair, " in columns") < 0)
            return -1;
        yaml_node_t *key = yaml_document_get_node(self->doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(self->doc, pair->value);
        bf_column_t *col = &table->columns[table->ncolumns++];
        col->line = s_line(key);
        col->name = s_column_name(self, key, "columns");
        if (!col->name)
            return -1;
        if (!value || s_is_null(value))
            continue; /* `name: ~`: not written, left to the target's default */
        char what[96];
        snprintf(what, sizeof what, "columns.%s", col->name);
        col->expr = s_sql(self, value, what);
        if (!col->expr)
            return -1;
    }
    return 0;
}

static int s_load_routes(s_loader_t *self, yaml_node_t *node, const char *label, bf_table_t *table)
{
    if (node->type != YAML_SEQUENCE_NODE) {
        s_fail(self, s_line(node),
               "%s: 'route' must be a list of '- when: CONDITION' / 'to: ALIAS.schema.table' "
               "entries, not %s",
               label, s_kind(node));
        return -1;
    }
    size_t count = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    if (count == 0) {
        s_fail(self, s_line(node), "%s: 'route' is empty; list at least one 'to:'", label);
        return -1;
    }
    table->routes = calloc(count, sizeof *table->routes);
    if (!table->routes) {
        s_fail(self, s_line(node), "out of memory");
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        yaml_node_t *entry = yaml_document_get_node(self->doc, node->data.sequence.items.start[i]);
        char where[64];
        snprintf(where, sizeof where, " in route[%zu]", i);
        if (!entry || entry->type != YAML_MAPPING_NODE) {
            s_fail(self, s_line(entry ? entry : node),
                   "%s: route[%zu] must be a mapping with 'to' and optionally 'when'", label, i);
            return -1;
        }
        yaml_node_t *keys[S_NROUTE] = {NULL}, *values[S_NROUTE] = {NULL};
        if (s_mapping(self, entry, where, s_route_keys, keys, values) < 0)
            return -1;
        if (!values[S_RTO]) {
            s_fail(self, s_line(entry), "%s: route[%zu] has no 'to: ALIAS.[schema.]table'", label,
                   i);
            return -1;
        }
        if (i > 0 && !table->routes[i - 1].when) {
            s_fail(self, s_line(entry),
                   "%s: route[%zu] can never match: route[%zu] has no 'when' and takes every "
                   "row left (put it last)",
                   label, i, i - 1);
            return -1;
        }
        bf_route_t *route = &table->routes[table->nroutes++];
        char what[64];
        snprintf(what, sizeof what, "route[%zu].to", i);
        if (s_load_dest(self, values[S_RTO], what, label, route) < 0)
            return -1;
        if (values[S_WHEN]) {
            route->when_line = s_line(values[S_WHEN]);
            snprintf(what, sizeof what, "route[%zu].when", i);
            route->when = s_sql(self, values[S_WHEN], what);
            if (!route->when)
                return -1;
        }
    }
    return 0;
}

static int s_load_table(s_loader_t *self, yaml_node_t *entry, int index)
{
    bf_job_t *job = self->job;
    char where[48];
    snprintf(where, sizeof where, " in tables[%d]", index);
    if (entry->type != YAML_MAPPING_NODE) {
        s_fail(self, s_line(entry), "tables[%d] must be a mapping with 'from' and 'to', not %s",
               index, s_kind(entry));
        return -1;
    }
    yaml_node_t *keys[S_NTABLE] = {NULL}, *values[S_NTABLE] = {NULL};
    if (s_mapping(self, entry, where, s_table_keys, keys, values) < 0)
        return -1;
    if (!keys[S_FROM]) {
        s_fail(self, s_line(entry), "tables[%d]: missing required key 'from'", index);
        return -1;
    }
    if (!keys[S_TO] && !keys[S_ROUTE]) {
        s_fail(self, s_line(entry),
               "tables[%d]: missing required key 'to' (or 'route' to send rows to several "
               "targets)",
               index);
        return -1;
    }
    if (keys[S_TO] && keys[S_ROUTE]) {
        s_fail(self, s_line(keys[S_ROUTE]),
               "tables[%d]: give either 'to' or 'route', not both (a route without 'when' "
               "takes every row left)",
               index);
        return -1;
    }

    bf_table_t *table = &job->tables[job->ntables++];
    table->line = s_line(keys[S_FROM]);
    char what_from[48];
    snprintf(what_from, sizeof what_from, "tables[%d].from", index);
    bool from_expanded;
    char *from = s_string(self, values[S_FROM], what_from, &from_expanded);
    if (!from)
        return -1;
    const char *from_shown = s_show(from, values[S_FROM], from_expanded);
    char *parts[3] = {NULL, NULL, NULL};
    int n = s_split(self, from, from_shown, s_line(values[S_FROM]), what_from, "[schema.]table", 1,
                    2, parts);
    char label[160] = "table ?";
    if (n > 0) {
        if (n == 1) {
            table->from_table = parts[0];
            table->from_schema = strdup("public");
        } else {
            table->from_schema = parts[0];
            table->from_table = parts[1];
        }
        if (from_expanded)
            snprintf(label, sizeof label, "table %.128s", from_shown);
        else if (table->from_schema)
            snprintf(label, sizeof label, "table %.64s.%.64s", table->from_schema,
                     table->from_table);
    }
    free(from);
    if (n < 0)
        return -1;
    if (!table->from_schema) {
        s_fail(self, table->line, "out of memory");
        return -1;
    }

    if (keys[S_TO]) {
        table->routes = calloc(1, sizeof *table->routes);
        if (!table->routes) {
            s_fail(self, table->line, "out of memory");
            return -1;
        }
        table->nroutes = 1;
        char what_to[48];
        snprintf(what_to, sizeof what_to, "tables[%d].to", index);
        if (s_load_dest(self, values[S_TO], what_to, label, &table->routes[0]) < 0)
            return -1;
    } else if (s_load_routes(self, values[S_ROUTE], label, table) < 0) {
        return -1;
    }
    if (values[S_KEY] && s_load_key(self, values[S_KEY], label, table) < 0)
        return -1;
    if (values[S_WHERE]) {
        table->where_line = s_line(values[S_WHERE]);
        if (!(table->where = s_sql(self, values[S_WHERE], "where")))
            return -1;
    }
    if (values[S_COLUMNS] && s_load_columns(self, values[S_COLUMNS], label, table) < 0)
        return -1;
    if (values[S_MODE]) {
        table->mode_line = s_line(values[S_MODE]);
        bool expanded;
        char *mode = s_string(self, values[S_MODE], "mode", &expanded);
        if (!mode)
            return -1;
        int m = 0;
        while (s_modes[m] && strcmp(s_modes[m], mode) != 0)
            m++;
        if (!s_modes[m])
            s_fail(self, table->mode_line,
                   "%s: unknown mode '%.32s' (insert: plain COPY; skip: keep rows the target "
                   "has; upsert: overwrite them; newer: overwrite where 'version' is greater)",
                   label, mode);
        free(mode);
        if (!s_modes[m])
            return -1;
        table->mode = (bf_mode_t)m;
    }
    if (values[S_VERSION]) {
        table->version_line = s_line(values[S_VERSION]);
        if (!(table->version = s_column_name(self, values[S_VERSION], "version")))
            return -1;
        if (table->mode != BF_MODE_NEWER) {
            s_fail(self, table->version_line,
                   "%s: 'version' only applies to 'mode: newer' (this table's mode is %s)", label,
                   bf_mode_name(table->mode));
            return -1;
        }
    } else if (table->mode == BF_MODE_NEWER) {
        s_fail(self, table->mode_line,
               "%s: 'mode: newer' needs 'version: COLUMN', the target column whose greater value "
               "wins (e.g. version: updated_at)",
               label);
        return -1;
    }

    /* The same source table may feed several targets, but not one twice. */
    for (int i = 0; i < job->ntables - 1; i++) {
        const bf_table_t *other = &job->tables[i];
        if (strcmp(other->from_schema, table->from_schema) != 0 ||
            strcmp(other->from_table, table->from_table) != 0)
            continue;
        for (int a = 0; a < other->nroutes; a++)
            for (int b = 0; b < table->nroutes; b++) {
                const bf_route_t *x = &other->routes[a], *y = &table->routes[b];
                if (strcmp(x->alias, y->alias) == 0 && strcmp(x->schema, y->schema) == 0 &&
                    strcmp(x->table, y->table) == 0) {
                    s_fail(self, table->line,
                           "%s: listed twice with the same target %.64s.%.64s.%.64s (first at "
                           "line %d)",
                           label, y->alias, y->schema, y->table, other->line);
                    return -1;
                }
            }
    }
    return 0;
}

static int s_load_tables(s_loader_t *self, yaml_node_t *node)
{
    if (s_is_null(node)) {
        s_fail(self, s_line(node), "'tables' is empty; add at least one '- from: ... to: ...'");
        return -1;
    }
    if (node->type != YAML_SEQUENCE_NODE) {
        s_fail(self, s_line(node),
               "'tables' must be a list of mappings with 'from' and 'to', not %s", s_kind(node));
        return -1;
    }
    yaml_node_item_t *start = node->data.sequence.items.start;
    size_t count = (size_t)(node->data.sequence.items.top - start);
    if (count == 0) {
        s_fail(self, s_line(node), "'tables' is empty; add at least one '- from: ... to: ...'");
        return -1;
    }
    self->job->tables = calloc(count, sizeof *self->job->tables);
    if (!self->job->tables) {
        s_fail(self, s_line(node), "out of memory");
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        yaml_node_t *entry = yaml_document_get_node(self->doc, start[i]);
        if (!entry) {
            s_fail(self, s_line(node), "tables[%zu] is empty", i);
            return -1;
        }
        if (s_load_table(self, entry, (int)i) < 0)
            return -1;
    }
    return 0;
}

static int s_load_setting(s_loader_t *self, int k, yaml_node_t *node);

static int s_load_root(s_loader_t *self, yaml_node_t *root)
{
    if (root->type != YAML_MAPPING_NODE) {
        s_fail(self, s_line(root),
               "the job file must be a mapping with keys name, source, redis, targets, "
               "tables; found %s",
               s_kind(root));
        return -1;
    }
    yaml_node_t *values[S_NTOP] = {NULL};
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
         pair < root->data.mapping.pairs.top; pair++) {
        if (s_check_key(self, root, pair, "") < 0)
            return -1;
        yaml_node_t *key = yaml_document_get_node(self->doc, pair->key);
        int k = 0;
        while (s_top_keys[k] && strcmp(s_top_keys[k], s_scalar(key)) != 0)
            k++;
        if (!s_top_keys[k]) {
            s_unknown_key(self, key, "", s_top_keys);
            return -1;
        }
        values[k] = yaml_document_get_node(self->doc, pair->value);
    }
    /* Settings are checked in this order; a missing one is reported when its turn
     * comes, so a malformed earlier setting is reported first. */
    for (int k = 0; k < S_NTOP; k++) {
        bool optional = k == S_BATCH_ROWS || k == S_BATCH_MS || k == S_BATCH_MAX_MB ||
                        k == S_RANGE_ROWS || k == S_THROTTLE_QUERY || k == S_THROTTLE_ON ||
                        k == S_THROTTLE_MAX;
        if (!values[k] && !optional) {
            s_fail(self, s_line(root), "missing required key '%s'", s_top_keys[k]);
            return -1;
        }
        if (s_load_setting(self, k, values[k]) < 0)
            return -1;
    }
    return 0;
}

/* Loads top-level setting k from node (NULL for an absent optional one). */
static int s_load_setting(s_loader_t *self, int k, yaml_node_t *node)
{
    bf_job_t *job = self->job;
    switch (k) {
    case S_NAME:
        job->name = s_required(self, node, "name");
        if (!job->name)
            return -1;
        if (!s_valid_job_name(job->name)) {
            s_fail(self, s_line(node),
                   "'name' must be 1-%d characters from A-Z a-z 0-9 _ . - (it is used in "
                   "Redis keys)",
                   S_MAX_NAME);
            return -1;
        }
        return 0;
    case S_SOURCE:
        job->source = s_required(self, node, "source");
        return job->source ? 0 : -1;
    case S_REDIS:
        job->redis = s_required(self, node, "redis");
        if (!job->redis)
            return -1;
        if (strncasecmp(job->redis, "rediss://", 9) == 0) {
            s_fail(self, s_line(node),
                   "'redis': TLS (rediss://) is not supported (Debian's hiredis is built "
                   "without it); reach Redis through a TLS tunnel (stunnel, spiped) with a "
                   "redis:// URL to its local end");
            return -1;
        }
        if (strncasecmp(job->redis, "redis://", 8) != 0) {
            s_fail(self, s_line(node),
                   "'redis' must be a URL like redis://[:password@]host[:port][/db]");
            return -1;
        }
        return 0;
    case S_TARGETS:
        return s_load_targets(self, node);
    case S_BATCH_ROWS:
        job->batch_rows = BF_DEFAULT_BATCH_ROWS;
        return node ? s_positive(self, node, "batch_rows", &job->batch_rows) : 0;
    case S_BATCH_MS:
        job->batch_ms = BF_DEFAULT_BATCH_MS;
        return node ? s_integer(self, node, "batch_ms", true, &job->batch_ms) : 0;
    case S_BATCH_MAX_MB:
        job->batch_max_mb = BF_DEFAULT_BATCH_MAX_MB;
        return node ? s_positive(self, node, "batch_max_mb", &job->batch_max_mb) : 0;
    case S_RANGE_ROWS:
        job->range_rows = BF_DEFAULT_RANGE_ROWS;
        return node ? s_positive(self, node, "range_rows", &job->range_rows) : 0;
    case S_THROTTLE_QUERY:
        if (!node)
            return 0;
        job->throttle_query = s_required(self, node, "throttle_query");
        job->throttle_line = s_line(node);
        return job->throttle_query ? 0 : -1;
    case S_THROTTLE_ON:
        if (!node)
            return 0;
        job->throttle_on = s_required(self, node, "throttle_on");
        if (!job->throttle_on)
            return -1;
        if (strcmp(job->throttle_on, "source") != 0 && !bf_job_target(job, job->throttle_on)) {
            s_fail(self, s_line(node), "'throttle_on' must be 'source' or a target alias, not '%s'",
                   job->throttle_on);
            return -1;
        }
        if (!job->throttle_query) {
            s_fail(self, s_line(node), "'throttle_on' without 'throttle_query'");
            return -1;
        }
        return 0;
    case S_THROTTLE_MAX: {
        if (!node) {
            if (job->throttle_query) {
                s_fail(self, job->throttle_line,
                       "'throttle_query' needs 'throttle_max': above it, workers back off");
                return -1;
            }
            return 0;
        }
        char *v = s_required(self, node, "throttle_max");
        if (!v)
            return -1;
        char *end = NULL;
        job->throttle_max = strtod(v, &end);
        bool ok = end != v && *end == '\0';
        free(v);
        if (!ok) {
            s_fail(self, s_line(node), "'throttle_max' must be a number");
            return -1;
        }
        if (!job->throttle_query) {
            s_fail(self, s_line(node), "'throttle_max' without 'throttle_query'");
            return -1;
        }
        return 0;
    }
    case S_TABLES:
        return s_load_tables(self, node);
    default:
        return -1;
    }
}
/* Line (1-based) of byte offset in text, for reader errors that carry no mark. */
static int s_offset_line(const char *text, size_t offset)
{
    int line = 1;
    for (size_t i = 0; i < offset && text[i]; i++)
        if (text[i] == '\n')
            line++;
    return line;
}

static void s_syntax_error(s_loader_t *self, const yaml_parser_t *parser, const char *text)
{
    if (parser->error == YAML_MEMORY_ERROR) {
        s_fail(self, 0, "out of memory while parsing YAML");
        return;
    }
    const char *problem = parser->problem ? parser->problem : "unknown error";
    if (parser->error == YAML_READER_ERROR) {
        s_fail(self, s_offset_line(text, parser->problem_offset), "YAML syntax error: %s", problem);
        return;
    }
    int line = (int)parser->problem_mark.line + 1;
    if (parser->context)
        s_fail(self, line, "YAML syntax error: %s (%s at line %d)", problem, parser->context,
               (int)parser->context_mark.line + 1);
    else
        s_fail(self, line, "YAML syntax error: %s", problem);
}

static bf_job_t *s_load_string(const char *text, const char *label, bf_env_fn env, void *env_arg,
                               bool redis_env_only, char *err, size_t errlen)
{
    s_loader_t loader = {0};
    loader.redis_env_only = redis_env_only;
    loader.label = label ? label : "<job>";
    loader.err = err;
    loader.errlen = errlen;
    loader.env = env;
    loader.env_arg = env_arg;
    if (err && errlen)
        err[0] = '\0';
    if (!text) {
        s_fail(&loader, 0, "no job text");
        return NULL;
    }

    bf_job_t *job = calloc(1, sizeof *job);
    if (!job) {
        s_fail(&loader, 0, "out of memory");
        return NULL;
    }
    loader.job = job;
    job->path = strdup(loader.label);
    job->text = strdup(text);
    if (!job->path || !job->text) {
        s_fail(&loader, 0, "out of memory");
        bf_job_destroy(&job);
        return NULL;
    }

    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        s_fail(&loader, 0, "out of memory");
        bf_job_destroy(&job);
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    if (!yaml_parser_load(&parser, &doc)) {
        s_syntax_error(&loader, &parser, text);
        yaml_parser_delete(&parser);
        bf_job_destroy(&job);
        return NULL;
    }
    loader.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    int rc = -1;
    if (!root || s_is_null(root)) {
        s_fail(&loader, 1,
               "the job file is empty; it needs name, source, redis, targets and tables");
    } else if (s_load_root(&loader, root) == 0) {
        /* A second document would be silently ignored: refuse it. */
        yaml_document_t next;
        if (!yaml_parser_load(&parser, &next)) {
            s_syntax_error(&loader, &parser, text);
        } else {
            yaml_node_t *extra = yaml_document_get_root_node(&next);
            if (extra)
                s_fail(&loader, s_line(extra),
                       "a second YAML document ('---') is not allowed; a job file holds one");
            else
                rc = 0;
            yaml_document_delete(&next);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc < 0)
        bf_job_destroy(&job);
    return job;
}

bf_job_t *bf_job_load_string(const char *text, const char *label, bf_env_fn env, void *env_arg,
                             char *err, size_t errlen)
{
    return s_load_string(text, label, env, env_arg, false, err, errlen);
}

static bf_job_t *s_load_file(const char *path, bool redis_env_only, char *err, size_t errlen);

bf_job_t *bf_job_load_file(const char *path, char *err, size_t errlen)
{
    return s_load_file(path, false, err, errlen);
}

bf_job_t *bf_job_load_file_redis_only(const char *path, char *err, size_t errlen)
{
    return s_load_file(path, true, err, errlen);
}

static bf_job_t *s_load_file(const char *path, bool redis_env_only, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!path) {
        if (err && errlen)
            snprintf(err, errlen, "job file: no path given");
        return NULL;
    }
    FILE *file = fopen(path, "rb");
    if (!file) {
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    s_buf_t buf = {NULL, 0, 0};
    char chunk[8192];
    int read_errno = 0;
    bool oom = false;
    for (;;) {
        size_t n = fread(chunk, 1, sizeof chunk, file);
        if (n > 0 && s_buf_add(&buf, chunk, n) < 0) {
            oom = true;
            break;
        }
        if (n < sizeof chunk) {
            if (ferror(file))
                read_errno = errno ? errno : EIO;
            break;
        }
    }
    fclose(file);
    if (!oom && !buf.data)
        oom = s_buf_add(&buf, "", 0) < 0;
    if (oom || read_errno) {
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot read: %s", path,
                     oom ? "out of memory" : strerror(read_errno));
        free(buf.data);
        return NULL;
    }
    if (memchr(buf.data, '\0', buf.len)) {
        if (err && errlen)
            snprintf(err, errlen, "%s:%d: the file contains a NUL byte; is it a YAML file?", path,
                     s_offset_line(buf.data,
                                   (size_t)((char *)memchr(buf.data, '\0', buf.len) - buf.data)));
        free(buf.data);
        return NULL;
    }
    bf_job_t *job = s_load_string(buf.data, path, NULL, NULL, redis_env_only, err, errlen);
    free(buf.data);
    return job;
}

static void s_free_strings(char **strings, int n)
{
    if (!strings)
        return;
    for (int i = 0; i < n; i++)
        free(strings[i]);
    free(strings);
}

void bf_job_destroy(bf_job_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bf_job_t *self = *self_p;
    free(self->path);
    free(self->name);
    free(self->source);
    free(self->redis);
    free(self->throttle_query);
    free(self->throttle_on);
    if (self->targets) {
        for (int i = 0; i < self->ntargets; i++) {
            free(self->targets[i].alias);
            free(self->targets[i].dsn);
        }
        free(self->targets);
    }
    if (self->tables) {
        for (int i = 0; i < self->ntables; i++) {
            bf_table_t *t = &self->tables[i];
            free(t->from_schema);
            free(t->from_table);
            s_free_strings(t->key, t->nkey);
            free(t->where);
            for (int c = 0; c < t->ncolumns; c++) {
                free(t->columns[c].name);
                free(t->columns[c].expr);
            }
            free(t->columns);
            free(t->version);
            for (int r = 0; r < t->nroutes; r++) {
                free(t->routes[r].when);
                free(t->routes[r].alias);
                free(t->routes[r].schema);
                free(t->routes[r].table);
            }
            free(t->routes);
        }
        free(self->tables);
    }
    /* Values may be passwords: wipe before freeing. */
    for (int i = 0; self->env_values && i < self->nenv; i++)
        if (self->env_values[i])
            explicit_bzero(self->env_values[i], strlen(self->env_values[i]));
    s_free_strings(self->env_names, self->nenv);
    s_free_strings(self->env_values, self->nenv);
    free(self->text);
    free(self);
    *self_p = NULL;
}

const bf_target_t *bf_job_target(const bf_job_t *job, const char *alias)
{
    if (!job || !alias)
        return NULL;
    for (int i = 0; i < job->ntargets; i++)
        if (job->targets[i].alias && strcmp(job->targets[i].alias, alias) == 0)
            return &job->targets[i];
    return NULL;
}

/* Unit tests for common/job.c: job file parsing, validation messages and ${VAR}
 * expansion. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "job.h"

/* Lines 1-6 of most test files; tables start at line 7. */
#define HEAD                                                                                       \
    "name: split-trading\n"                                                                        \
    "source: postgresql://app@127.0.0.1:5432/monolith\n"                                           \
    "redis: redis://127.0.0.1:6379/0\n"                                                            \
    "targets:\n"                                                                                   \
    "  trading: postgresql://svc@127.0.0.1:5432/trading\n"                                         \
    "  billing: postgresql://svc@127.0.0.1:5432/billing\n"

#define TABLES                                                                                     \
    "tables:\n"                                                                                    \
    "  - from: public.trading_order\n"                                                             \
    "    to: trading.public.orders\n"

/* A fixed environment for the env callback. */
typedef struct {
    const char *names[4];  /* variable names, NULL-terminated */
    const char *values[4]; /* their values */
    int calls;             /* lookups made */
} s_env_t;

static const char *s_env_lookup(const char *name, void *arg)
{
    s_env_t *env = arg;
    env->calls++;
    for (int i = 0; i < 4 && env->names[i]; i++)
        if (strcmp(env->names[i], name) == 0)
            return env->values[i];
    return NULL;
}

/* An environment with nothing set, so tests do not depend on the real one. */
static const char *s_env_empty(const char *name, void *arg)
{
    (void)name;
    (void)arg;
    return NULL;
}

static bf_job_t *s_load(const char *text, char *err, size_t errlen)
{
    return bf_job_load_string(text, "job.yaml", s_env_empty, NULL, err, errlen);
}

/* Loads text with env, expects failure at line with each of the words (NULL-ended)
 * in the message, which must be one line. */
static void s_expect_error_env(const char *text, s_env_t *env, int line, ...)
{
    char err[512];
    memset(err, 'Q', sizeof err);
    bf_job_t *job = env ? bf_job_load_string(text, "job.yaml", s_env_lookup, env, err, sizeof err)
                        : s_load(text, err, sizeof err);
    if (job) {
        bf_job_destroy(&job);
        fail_msg("expected an error at line %d for:\n%s", line, text);
    }
    char prefix[32];
    snprintf(prefix, sizeof prefix, "job.yaml:%d: ", line);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("expected prefix '%s' in '%s'", prefix, err);
    if (strchr(err, '\n'))
        fail_msg("message spans lines: '%s'", err);
    va_list ap;
    va_start(ap, line);
    for (const char *word = va_arg(ap, const char *); word; word = va_arg(ap, const char *)) {
        if (!strstr(err, word)) {
            va_end(ap);
            fail_msg("expected '%s' in '%s'", word, err);
        }
    }
    va_end(ap);
}

#define s_expect_error(text, line, ...) s_expect_error_env((text), NULL, (line), __VA_ARGS__, NULL)

static void test_valid_full(void **state)
{
    (void)state;
    const char *text = HEAD "batch_rows: 500\n"
                            "batch_ms: 250\n"
                            "batch_max_mb: 8\n"
                            "range_rows: 20000\n"
                            "tables:\n"
                            "  - from: public.trading_order\n"
                            "    to: trading.public.orders\n"
                            "  - from: invoices\n"
                            "    to: billing.invoices\n"
                            "  - to: billing.ledger.entries # keys in any order\n"
                            "    from: acct.entries\n";
    char err[256] = "";
    bf_job_t *job = s_load(text, err, sizeof err);
    if (!job)
        fail_msg("%s", err);
    assert_string_equal(job->path, "job.yaml");
    assert_string_equal(job->name, "split-trading");
    assert_string_equal(job->source, "postgresql://app@127.0.0.1:5432/monolith");
    assert_string_equal(job->redis, "redis://127.0.0.1:6379/0");
    assert_string_equal(job->text, text);
    assert_int_equal(job->batch_rows, 500);
    assert_int_equal(job->batch_ms, 250);
    assert_int_equal(job->batch_max_mb, 8);
    assert_int_equal(job->range_rows, 20000);
    assert_int_equal(job->nenv, 0);

    assert_int_equal(job->ntargets, 2);
    assert_string_equal(job->targets[0].alias, "trading");
    assert_string_equal(job->targets[0].dsn, "postgresql://svc@127.0.0.1:5432/trading");
    assert_int_equal(job->targets[0].line, 5);
    assert_string_equal(job->targets[1].alias, "billing");
    assert_int_equal(job->targets[1].line, 6);
    assert_ptr_equal(bf_job_target(job, "billing"), &job->targets[1]);
    assert_null(bf_job_target(job, "nope"));
    assert_null(bf_job_target(NULL, "billing"));

    assert_int_equal(job->ntables, 3);
    bf_table_t *t = &job->tables[0];
    assert_string_equal(t->from_schema, "public");
    assert_string_equal(t->from_table, "trading_order");
    assert_string_equal(t->routes[0].alias, "trading");
    assert_string_equal(t->routes[0].schema, "public");
    assert_string_equal(t->routes[0].table, "orders");
    assert_int_equal(t->line, 12);
    t = &job->tables[1];
    assert_string_equal(t->from_schema, "public");
    assert_string_equal(t->from_table, "invoices");
    assert_string_equal(t->routes[0].alias, "billing");
    assert_string_equal(t->routes[0].schema, "public");
    assert_string_equal(t->routes[0].table, "invoices");
    assert_int_equal(t->line, 14);
    t = &job->tables[2];
    assert_string_equal(t->from_schema, "acct");
    assert_string_equal(t->from_table, "entries");
    assert_string_equal(t->routes[0].alias, "billing");
    assert_string_equal(t->routes[0].schema, "ledger");
    assert_string_equal(t->routes[0].table, "entries");
    assert_int_equal(t->line, 17);

    bf_job_destroy(&job);
    assert_null(job);
}

static void test_defaults(void **state)
{
    (void)state;
    char err[256] = "";
    bf_job_t *job = s_load(HEAD TABLES, err, sizeof err);
    if (!job)
        fail_msg("%s", err);
    assert_int_equal(job->batch_rows, BF_DEFAULT_BATCH_ROWS);
    assert_int_equal(job->batch_ms, BF_DEFAULT_BATCH_MS);
    assert_int_equal(job->batch_max_mb, BF_DEFAULT_BATCH_MAX_MB);
    assert_int_equal(job->range_rows, BF_DEFAULT_RANGE_ROWS);
    assert_int_equal(job->ntables, 1);
    bf_job_destroy(&job);
}

static void test_flow_style_and_quotes(void **state)
{
    (void)state;
    const char *text = "name: 'a.b-c_9'\n"
                       "source: \"host=x dbname=y\"\n"
                       "redis: redis://h\n"
                       "targets: {t: \"postgresql://h/t\"}\n"
                       "tables: [{from: s.a, to: t.b}]\n"
                       "batch_rows: 9223372036854775807\n";
    char err[256] = "";
    bf_job_t *job = s_load(text, err, sizeof err);
    if (!job)
        fail_msg("%s", err);
    assert_string_equal(job->name, "a.b-c_9");
    assert_string_equal(job->source, "host=x dbname=y");
    assert_int_equal(job->batch_rows, INT64_MAX);
    assert_string_equal(job->tables[0].routes[0].table, "b");
    bf_job_destroy(&job);
}

static void test_name_rules(void **state)
{
    (void)state;
    char text[512];
    char name[70];
    memset(name, 'n', 64);
    name[64] = '\0';
    snprintf(text, sizeof text,
             "name: %s\nsource: s\nredis: redis://h\ntargets: {t: d}\n"
             "tables: [{from: a, to: t.a}]\n",
             name);
    char err[256] = "";
    bf_job_t *job = s_load(text, err, sizeof err);
    if (!job)
        fail_msg("%s", err);
    bf_job_destroy(&job);

    name[64] = 'n';
    name[65] = '\0';
    snprintf(text, sizeof text,
             "name: %s\nsource: s\nredis: redis://h\ntargets: {t: d}\n"
             "tables: [{from: a, to: t.a}]\n",
             name);
    s_expect_error(text, 1, "'name' must be 1-64 characters");
    s_expect_error("name: has space\nsource: s\nredis: redis://h\ntargets: {t: d}\n"
                   "tables: [{from: a, to: t.a}]\n",
                   1, "'name' must be");
    s_expect_error("name: a/b\nsource: s\nredis: redis://h\ntargets: {t: d}\n"
                   "tables: [{from: a, to: t.a}]\n",
                   1, "'name' must be");
    s_expect_error("name:\nsource: s\nredis: redis://h\ntargets: {t: d}\n"
                   "tables: [{from: a, to: t.a}]\n",
                   1, "'name' is empty");
    s_expect_error("name: ~\nsource: s\nredis: redis://h\ntargets: {t: d}\n"
                   "tables: [{from: a, to: t.a}]\n",
                   1, "'name' is empty");
}

static void test_rows_options(void **state)
{
    (void)state;
    s_expect_error(HEAD "batch_rows: 0\n" TABLES, 7, "'batch_rows' must be a positive integer");
    s_expect_error(HEAD "batch_rows: -5\n" TABLES, 7, "'batch_rows' must be a positive integer",
                   "-5");
    s_expect_error(HEAD "batch_ms: -1\n" TABLES, 7, "'batch_ms' must be 0 or a positive integer");
    s_expect_error(HEAD "batch_max_mb: 1GB\n" TABLES, 7, "'batch_max_mb' must be a positive");
    s_expect_error(HEAD "range_rows: lots\n" TABLES, 7, "'range_rows' must be a positive integer",
                   "lots");
    s_expect_error(HEAD "range_rows: 1.5\n" TABLES, 7, "'range_rows' must be a positive integer");
    s_expect_error(HEAD "range_rows: 10_000\n" TABLES, 7, "'range_rows' must be a positive");
    s_expect_error(HEAD "range_rows: ''\n" TABLES, 7, "'range_rows' must be a positive");
    s_expect_error(HEAD "batch_rows: 9223372036854775808\n" TABLES, 7, "'batch_rows' is too large");
    s_expect_error(HEAD "batch_rows: 99999999999999999999999\n" TABLES, 7,
                   "'batch_rows' is too large");
    s_expect_error(HEAD "batch_rows: [1]\n" TABLES, 7,
                   "'batch_rows' must be a positive integer, not a list");

    char err[256] = "";
    bf_job_t *job = s_load(HEAD "batch_rows: 1\nrange_rows: '42'\n" TABLES, err, sizeof err);
    if (!job)
        fail_msg("%s", err);
    assert_int_equal(job->batch_rows, 1);
    assert_int_equal(job->range_rows, 42);
    bf_job_destroy(&job);
}

static void test_throttle_options(void **state)
{
    (void)state;
    char err[512];
    bf_job_t *job = bf_job_load_string(HEAD "throttle_query: SELECT 1.5\nthrottle_on: billing\n"
                                            "throttle_max: 2.5\n" TABLES,
                                       "job.yaml", NULL, NULL, err, sizeof err);
    assert_non_null(job);
    assert_string_equal(job->throttle_query, "SELECT 1.5");
    assert_string_equal(job->throttle_on, "billing");
    assert_true(job->throttle_max == 2.5);
    assert_int_equal(job->throttle_line, 7);
    bf_job_destroy(&job);
    job = bf_job_load_string(HEAD TABLES, "job.yaml", NULL, NULL, err, sizeof err);
    assert_non_null(job);
    assert_null(job->throttle_query);
    bf_job_destroy(&job);
    s_expect_error(HEAD "throttle_query: SELECT 1\n" TABLES, 7,
                   "'throttle_query' needs "
                   "'throttle_max'");
    s_expect_error(HEAD "throttle_max: 5\n" TABLES, 7, "'throttle_max' without 'throttle_query'");
    s_expect_error(HEAD "throttle_query: SELECT 1\nthrottle_max: lots\n" TABLES, 8,
                   "'throttle_max' must be a number");
    s_expect_error(HEAD "throttle_query: SELECT 1\nthrottle_on: replica\nthrottle_max: 1\n" TABLES,
                   8, "'throttle_on' must be 'source' or a target alias, not 'replica'");
}

static void test_unknown_key_suggestion(void **state)
{
    (void)state;
    const char *text = "name: x\n"
                       "source: s\n"
                       "redis: redis://h\n"
                       "targets:\n"
                       "  trading: postgresql://svc@h/trading\n"
                       "batch_rows: 10\n"
                       "tabels:\n"
                       "  - from: a\n"
                       "    to: trading.a\n";
    char err[256];
    bf_job_t *job = s_load(text, err, sizeof err);
    assert_null(job);
    assert_string_equal(err, "job.yaml:7: unknown key 'tabels' (did you mean 'tables'?)");

    s_expect_error(HEAD "batchrows: 5\n" TABLES, 7, "unknown key 'batchrows'",
                   "did you mean 'batch_rows'");
    s_expect_error("nmae: x\n" HEAD, 1, "unknown key 'nmae'", "did you mean 'name'");
    s_expect_error(HEAD "Source: s\n" TABLES, 7, "did you mean 'source'");
}

static void test_unknown_key_list(void **state)
{
    (void)state;
    s_expect_error(HEAD "colour: blue\n" TABLES, 7, "unknown key 'colour'",
                   "name, source, redis, targets, batch_rows, batch_ms, batch_max_mb, range_rows, "
                   "throttle_query, throttle_on, throttle_max, tables");
}

static void test_unknown_table_key(void **state)
{
    (void)state;
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "  - form: b\n"
                        "    to: trading.b\n",
                   10, "unknown key 'form'", "tables[1]", "did you mean 'from'");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    filter: id > 5\n",
                   10, "unknown key 'filter'", "allowed keys: from, to, key, where");
}

/* Issue 3: key, where, columns, mode, version, route. */
static void test_table_options(void **state)
{
    (void)state;
    char err[512] = "";
    const char *text = HEAD "tables:\n"
                            "  - from: public.billing_invoice\n" /* 8 */
                            "    key: [id, kind]\n"              /* 9 */
                            "    where: \"status <> 4\"\n"       /* 10 */
                            "    columns:\n"                     /* 11 */
                            "      id: id\n"                     /* 12 */
                            "      customer_id: publisher_id\n"  /* 13 */
                            "      amount_cents: (amount * 100)::bigint\n"
                            "      legacy: ~\n"         /* 15 */
                            "    mode: newer\n"         /* 16 */
                            "    version: updated_at\n" /* 17 */
                            "    route:\n"              /* 18 */
                            "      - when: \"publisher_id % 2 = 0\"\n"
                            "        to: billing.public.invoice\n" /* 20 */
                            "      - to: trading.ops.invoice\n"    /* 21 */
                            "  - from: users\n"                    /* 22 */
                            "    key: id\n"
                            "    to: trading.users\n";
    bf_job_t *job = s_load(text, err, sizeof err);
    assert_non_null(job);
    assert_int_equal(job->ntables, 2);
    const bf_table_t *t = &job->tables[0];
    assert_int_equal(t->nkey, 2);
    assert_string_equal(t->key[0], "id");
    assert_string_equal(t->key[1], "kind");
    assert_int_equal(t->key_line, 9);
    assert_string_equal(t->where, "status <> 4");
    assert_int_equal(t->where_line, 10);
    assert_int_equal(t->ncolumns, 4);
    assert_string_equal(t->columns[1].name, "customer_id");
    assert_string_equal(t->columns[1].expr, "publisher_id");
    assert_int_equal(t->columns[1].line, 13);
    assert_string_equal(t->columns[2].expr, "(amount * 100)::bigint");
    assert_null(t->columns[3].expr);
    assert_int_equal(t->mode, BF_MODE_NEWER);
    assert_string_equal(bf_mode_name(t->mode), "newer");
    assert_string_equal(t->version, "updated_at");
    assert_int_equal(t->nroutes, 2);
    assert_string_equal(t->routes[0].when, "publisher_id % 2 = 0");
    assert_string_equal(t->routes[0].alias, "billing");
    assert_string_equal(t->routes[0].table, "invoice");
    assert_int_equal(t->routes[0].line, 20);
    assert_null(t->routes[1].when);
    assert_string_equal(t->routes[1].alias, "trading");
    assert_string_equal(t->routes[1].schema, "ops");
    const bf_table_t *u = &job->tables[1];
    assert_int_equal(u->nkey, 1);
    assert_string_equal(u->key[0], "id");
    assert_int_equal(u->mode, BF_MODE_INSERT);
    assert_int_equal(u->nroutes, 1);
    assert_null(u->routes[0].when);
    bf_job_destroy(&job);
}

static void test_table_option_errors(void **state)
{
    (void)state;
    /* mode newer without version */
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    mode: newer\n",
                   10, "table public.a", "'mode: newer' needs 'version: COLUMN'");
    /* version without mode newer */
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    version: updated_at\n",
                   10, "'version' only applies to 'mode: newer'", "insert");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    mode: upsrt\n",
                   10, "unknown mode 'upsrt'");
    /* a route naming an unknown target */
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    route:\n"
                        "      - when: x > 1\n"
                        "        to: billing.a\n"
                        "      - to: operations.a\n",
                   12, "table public.a", "target 'operations' is not defined", "trading, billing");
    /* a route after the catch-all */
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    route:\n"
                        "      - to: billing.a\n"
                        "      - to: trading.a\n",
                   11, "route[1] can never match", "put it last");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    route:\n"
                        "      - to: billing.a\n",
                   10, "either 'to' or 'route'");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    route: []\n",
                   9, "'route' is empty");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    key: []\n",
                   10, "'key' is an empty list");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    key: [id, id]\n",
                   10, "key column 'id' is listed twice");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    columns: [a, b]\n",
                   10, "'columns' must be a mapping");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    where: \"x > 1; DROP TABLE a\"\n",
                   10, "'where' must be one SQL expression, without ';'");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "    columns:\n"
                        "      b: \"\"\n",
                   11, "'columns.b' is empty");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    route:\n"
                        "      - when: x > 1\n",
                   10, "route[0] has no 'to");
}

static void test_wrong_kinds(void **state)
{
    (void)state;
    s_expect_error(HEAD "tables:\n"
                        "  from: a\n"
                        "  to: trading.a\n",
                   8, "'tables' must be a list", "not a mapping");
    s_expect_error("name: x\nsource: s\nredis: redis://h\n"
                   "targets:\n"
                   "  - postgresql://h/t\n" TABLES,
                   5, "'targets' must be a mapping", "not a list");
    s_expect_error("name: x\nsource:\n  - a\n  - b\n", 3, "'source' must be a string",
                   "not a list");
    s_expect_error("name: x\nsource: s\nredis: {a: b}\n", 3, "'redis' must be a string",
                   "not a mapping");
    s_expect_error(HEAD "tables:\n"
                        "  - public.a\n",
                   8, "tables[0] must be a mapping", "not a string");
    s_expect_error("- name: x\n", 1, "must be a mapping", "found a list");
    s_expect_error("just text\n", 1, "must be a mapping", "found a string");
    s_expect_error("name: x\nsource: s\nredis: redis://h\n"
                   "targets:\n"
                   "  t: [a]\n" TABLES,
                   5, "'targets.t' must be a string");
    s_expect_error("? [a, b]\n: c\n", 1, "keys must be plain strings");
    s_expect_error(HEAD "tables:\n"
                        "  - from: [a]\n"
                        "    to: trading.a\n",
                   8, "'tables[0].from' must be a string");
}

static void test_missing_required(void **state)
{
    (void)state;
    s_expect_error("source: s\nredis: redis://h\ntargets: {t: d}\ntables: [{from: a, to: t.a}]\n",
                   1, "missing required key 'name'");
    s_expect_error("name: x\nredis: redis://h\ntargets: {t: d}\ntables: [{from: a, to: t.a}]\n", 1,
                   "missing required key 'source'");
    s_expect_error("name: x\nsource: s\ntargets: {t: d}\ntables: [{from: a, to: t.a}]\n", 1,
                   "missing required key 'redis'");
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntables: [{from: a, to: t.a}]\n", 1,
                   "missing required key 'targets'");
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntargets: {t: d}\n", 1,
                   "missing required key 'tables'");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n",
                   8, "tables[0]: missing required key 'to'");
    s_expect_error(HEAD "tables:\n"
                        "  - from: a\n"
                        "    to: trading.a\n"
                        "  - to: trading.b\n",
                   10, "tables[1]: missing required key 'from'");
}

static void test_empty_values(void **state)
{
    (void)state;
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntargets: {}\n" TABLES, 4,
                   "'targets' is empty");
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntargets:\n" TABLES, 4,
                   "'targets' is empty");
    s_expect_error(HEAD "tables: []\n", 7, "'tables' is empty");
    s_expect_error(HEAD "tables:\n", 7, "'tables' is empty");
    s_expect_error("name: x\nsource: ''\n", 2, "'source' is empty");
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntargets:\n  t: ''\n" TABLES, 5,
                   "'targets.t' is empty");
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntargets:\n  t:\n" TABLES, 5,
                   "'targets.t' is empty");
    s_expect_error("name: x\nsource: s\nredis: 127.0.0.1:6379\n", 3,
                   "'redis' must be a URL like redis://");
    s_expect_error("name: x\nsource: s\nredis: rediss://h:6380\n", 3,
                   "'redis': TLS (rediss://) is not supported");
}

static void test_target_alias_rules(void **state)
{
    (void)state;
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntargets:\n  a.b: d\n" TABLES, 5,
                   "target alias 'a.b' must be");
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntargets:\n  '': d\n" TABLES, 5,
                   "target alias '' must be");
}

static void test_undefined_target(void **state)
{
    (void)state;
    const char *text = HEAD "batch_rows: 10\n"
                            "range_rows: 100\n"
                            "tables:\n"
                            "  - from: trading_order\n"
                            "    to: tradng.public.orders\n";
    char err[256];
    assert_null(s_load(text, err, sizeof err));
    assert_string_equal(err, "job.yaml:11: table public.trading_order: target 'tradng' is not "
                             "defined under targets (defined: trading, billing)");
}

static void test_targets_after_tables(void **state)
{
    (void)state;
    const char *text = "name: x\n"
                       "tables:\n"
                       "  - from: a\n"
                       "    to: late.a\n"
                       "source: s\n"
                       "redis: redis://h\n"
                       "targets:\n"
                       "  late: d\n";
    char err[256] = "";
    bf_job_t *job = s_load(text, err, sizeof err);
    if (!job)
        fail_msg("%s", err);
    assert_string_equal(job->tables[0].routes[0].alias, "late");
    bf_job_destroy(&job);
}

static void test_identifier_parts(void **state)
{
    (void)state;
    s_expect_error(HEAD "tables:\n  - from: a\n    to: orders\n", 9, "table public.a",
                   "'orders' must be written", "ALIAS.[schema.]table");
    s_expect_error(HEAD "tables:\n  - from: a\n    to: trading.x.y.z\n", 9, "must be written");
    s_expect_error(HEAD "tables:\n  - from: a\n    to: trading..z\n", 9, "empty name");
    s_expect_error(HEAD "tables:\n  - from: a\n    to: trading.\n", 9, "empty name");
    s_expect_error(HEAD "tables:\n  - from: db.s.a\n    to: trading.a\n", 8, "tables[0].from",
                   "[schema.]table");
    s_expect_error(HEAD "tables:\n  - from: .a\n    to: trading.a\n", 8, "empty name");
    s_expect_error(HEAD "tables:\n  - from: ''\n    to: trading.a\n", 8, "empty name");
    s_expect_error(HEAD "tables:\n  - from: 'public.\"my.table\"'\n    to: trading.a\n", 8,
                   "quoted identifiers", "not supported");
    s_expect_error(HEAD "tables:\n  - from: a\n    to: 'trading.\"Orders\"'\n", 9,
                   "quoted identifiers", "not supported");
    s_expect_error(HEAD "tables:\n  - from: public. a\n    to: trading.a\n", 8, "white space");
}

static void test_duplicates(void **state)
{
    (void)state;
    s_expect_error(HEAD "name: again\n" TABLES, 7, "duplicate key 'name'", "first at line 1");
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntargets:\n  t: a\n  t: b\n" TABLES, 6,
                   "duplicate key 't'", "under targets", "first at line 5");
    s_expect_error(HEAD "tables:\n  - from: a\n    to: trading.a\n    from: b\n", 10,
                   "duplicate key 'from'", "tables[0]");
    s_expect_error(HEAD "tables:\n"
                        "  - from: public.a\n"
                        "    to: trading.public.a\n"
                        "  - from: a\n"
                        "    to: trading.a\n",
                   10, "table public.a", "listed twice", "first at line 8");

    /* The same source into two different targets is fine. */
    char err[256] = "";
    bf_job_t *job = s_load(HEAD "tables:\n"
                                "  - from: a\n"
                                "    to: trading.a\n"
                                "  - from: a\n"
                                "    to: billing.a\n",
                           err, sizeof err);
    if (!job)
        fail_msg("%s", err);
    assert_int_equal(job->ntables, 2);
    bf_job_destroy(&job);
}

static void test_yaml_syntax_error(void **state)
{
    (void)state;
    s_expect_error(HEAD "tables:\n  - from: [a\n    to: b\n", 9, "YAML syntax error",
                   "flow sequence at line 8");
    s_expect_error("name: x\nsource: s\n  bad: indent\n", 3, "YAML syntax error",
                   "mapping values are not allowed");
    s_expect_error("name: x\n\tsource: s\n", 2, "YAML syntax error");
    s_expect_error("name: *nope\n", 1, "YAML syntax error");
    s_expect_error("name: \"\xff\"\n", 1, "YAML syntax error");
}

static void test_empty_file(void **state)
{
    (void)state;
    s_expect_error("", 1, "empty");
    s_expect_error("# nothing but a comment\n\n", 1, "empty");
    s_expect_error("---\n", 1, "empty");
}

static void test_second_document(void **state)
{
    (void)state;
    s_expect_error(HEAD TABLES "---\nname: other\n", 11, "second YAML document");
}

static void test_env_getenv(void **state)
{
    (void)state;
    setenv("BF_TEST_PW", "s3cr3t", 1);
    setenv("BF_TEST_HOST", "db.local", 1);
    setenv("BF_TEST_BATCH", "250", 1);
    const char *text = "name: x\n"
                       "source: postgresql://app:${BF_TEST_PW}@${BF_TEST_HOST}/m\n"
                       "redis: redis://:${BF_TEST_PW}@h\n"
                       "targets:\n"
                       "  t: \"host=${BF_TEST_HOST} password=$${BF_TEST_PW}\"\n"
                       "batch_rows: ${BF_TEST_BATCH}\n"
                       "tables: [{from: a, to: t.a}]\n";
    char err[256] = "";
    bf_job_t *job = bf_job_load_string(text, "job.yaml", NULL, NULL, err, sizeof err);
    if (!job)
        fail_msg("%s", err);
    assert_string_equal(job->source, "postgresql://app:s3cr3t@db.local/m");
    assert_string_equal(job->redis, "redis://:s3cr3t@h");
    assert_string_equal(job->targets[0].dsn, "host=db.local password=$s3cr3t");
    assert_int_equal(job->batch_rows, 250);
    assert_string_equal(job->text, text);
    assert_int_equal(job->nenv, 3);
    assert_string_equal(job->env_names[0], "BF_TEST_PW");
    assert_string_equal(job->env_values[0], "s3cr3t");
    assert_string_equal(job->env_names[1], "BF_TEST_HOST");
    assert_string_equal(job->env_values[1], "db.local");
    assert_string_equal(job->env_names[2], "BF_TEST_BATCH");
    assert_string_equal(job->env_values[2], "250");
    bf_job_destroy(&job);
    unsetenv("BF_TEST_PW");
    unsetenv("BF_TEST_HOST");
    unsetenv("BF_TEST_BATCH");
}

static void test_env_callback(void **state)
{
    (void)state;
    setenv("BF_TEST_PW", "from-getenv", 1);
    s_env_t env = {{"BF_TEST_PW", "EMPTY", NULL}, {"from-callback", "", NULL}, 0};
    const char *text = "name: x${EMPTY}\n"
                       "source: postgresql://app:${BF_TEST_PW}@h/m\n"
                       "redis: redis://:${BF_TEST_PW}@h\n"
                       "targets: {t: d}\n"
                       "tables: [{from: a, to: t.a}]\n";
    char err[256] = "";
    bf_job_t *job = bf_job_load_string(text, "job.yaml", s_env_lookup, &env, err, sizeof err);
    if (!job)
        fail_msg("%s", err);
    assert_string_equal(job->name, "x");
    assert_string_equal(job->source, "postgresql://app:from-callback@h/m");
    assert_int_equal(job->nenv, 2);
    assert_string_equal(job->env_names[0], "EMPTY");
    assert_string_equal(job->env_values[0], "");
    assert_string_equal(job->env_names[1], "BF_TEST_PW");
    assert_string_equal(job->env_values[1], "from-callback");
    assert_int_equal(env.calls, 2); /* each distinct name looked up once */
    bf_job_destroy(&job);
    unsetenv("BF_TEST_PW");
}

static void test_env_unset(void **state)
{
    (void)state;
    const char *text = "name: x\n"
                       "source: postgresql://app:${NOPE}@h/m\n";
    char err[256];
    assert_null(s_load(text, err, sizeof err));
    assert_string_equal(
        err, "job.yaml:2: environment variable NOPE is not set (referenced by 'source')");
    s_expect_error("name: x\nsource: s\nredis: redis://h\ntargets:\n  t: ${MISSING}\n" TABLES, 5,
                   "environment variable MISSING is not set", "'targets.t'");
    s_expect_error(HEAD "tables:\n  - from: a\n    to: ${DEST}\n", 9,
                   "environment variable DEST is not set", "'tables[0].to'");
}

static void test_env_syntax(void **state)
{
    (void)state;
    s_expect_error("name: x\nsource: postgresql://app:${PW@h/m\n", 2, "unterminated '${'",
                   "'source'");
    s_expect_error("name: x\nsource: s\nredis: redis://:${1PW}@h\n", 3,
                   "invalid variable reference", "'redis'");
    s_expect_error("name: x\nsource: ${}\n", 2, "invalid variable reference");
    s_expect_error("name: x\nsource: ${A-B}\n", 2, "invalid variable reference");
}

/* Expanded values must never show up in messages. */
static void test_env_values_not_in_errors(void **state)
{
    (void)state;
    s_env_t env = {{"N", "B", "T", NULL}, {"hunter2 bad", "hunter3", "hunter4", NULL}, 0};
    char err[512];

    assert_null(
        bf_job_load_string("name: ${N}\n", "job.yaml", s_env_lookup, &env, err, sizeof err));
    assert_null(strstr(err, "hunter"));
    assert_non_null(strstr(err, "job.yaml:1: 'name' must be"));

    assert_null(bf_job_load_string(HEAD "batch_rows: x${B}\n" TABLES, "job.yaml", s_env_lookup,
                                   &env, err, sizeof err));
    assert_null(strstr(err, "hunter"));
    assert_non_null(strstr(err, "x${B}"));

    assert_null(bf_job_load_string(HEAD "tables:\n  - from: ${T}\n    to: ${T}.a\n", "job.yaml",
                                   s_env_lookup, &env, err, sizeof err));
    assert_null(strstr(err, "hunter"));
    assert_non_null(strstr(err, "job.yaml:9: table ${T}: target '${T}.a' is not defined"));

    assert_null(bf_job_load_string(HEAD "tables:\n  - from: a.b.${T}\n    to: t.a\n", "job.yaml",
                                   s_env_lookup, &env, err, sizeof err));
    assert_null(strstr(err, "hunter"));
    assert_non_null(strstr(err, "a.b.${T}"));

    assert_null(bf_job_load_string("name: x\nsource: s\nredis: http://${B}@h\n", "job.yaml",
                                   s_env_lookup, &env, err, sizeof err));
    assert_null(strstr(err, "hunter"));
    assert_non_null(strstr(err, "job.yaml:3: 'redis' must be a URL"));
}

static void test_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/bf_test_job_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = HEAD TABLES;
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);

    char err[256] = "";
    bf_job_t *job = bf_job_load_file(path, err, sizeof err);
    if (!job) {
        unlink(path);
        fail_msg("%s", err);
    }
    assert_string_equal(job->path, path);
    assert_string_equal(job->text, text);
    assert_string_equal(job->name, "split-trading");
    assert_int_equal(job->ntables, 1);
    bf_job_destroy(&job);

    /* Errors from a file carry its path. */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("name: x\nsourc: s\n", f);
    fclose(f);
    assert_null(bf_job_load_file(path, err, sizeof err));
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s:2: unknown key 'sourc'", path);
    assert_non_null(strstr(err, prefix));
    unlink(path);
}

static void test_load_file_unreadable(void **state)
{
    (void)state;
    char err[256];
    assert_null(bf_job_load_file("/nonexistent/dir/job.yaml", err, sizeof err));
    assert_string_equal(err, "/nonexistent/dir/job.yaml: cannot read: No such file or directory");
    assert_null(bf_job_load_file("/tmp", err, sizeof err));
    assert_string_equal(err, "/tmp: cannot read: Is a directory");
}

static void test_destroy_null(void **state)
{
    (void)state;
    bf_job_destroy(NULL);
    bf_job_t *job = NULL;
    bf_job_destroy(&job);
    assert_null(job);
}

static void test_err_buffer_edge_cases(void **state)
{
    (void)state;
    /* No buffer, or a tiny one: must not crash or overflow. */
    assert_null(s_load("name: x\n", NULL, 0));
    char small[8];
    assert_null(s_load("nmae: x\n", small, sizeof small));
    assert_string_equal(small, "job.yam");
    char err[256];
    assert_null(bf_job_load_string(NULL, "job.yaml", NULL, NULL, err, sizeof err));
    assert_non_null(strstr(err, "job.yaml"));
    /* Control characters in a key do not break the message into lines. */
    s_expect_error("\"a\\nb\": 1\n", 1, "unknown key 'a b'");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_full),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_flow_style_and_quotes),
        cmocka_unit_test(test_name_rules),
        cmocka_unit_test(test_rows_options),
        cmocka_unit_test(test_throttle_options),
        cmocka_unit_test(test_unknown_key_suggestion),
        cmocka_unit_test(test_unknown_key_list),
        cmocka_unit_test(test_unknown_table_key),
        cmocka_unit_test(test_wrong_kinds),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_empty_values),
        cmocka_unit_test(test_target_alias_rules),
        cmocka_unit_test(test_undefined_target),
        cmocka_unit_test(test_targets_after_tables),
        cmocka_unit_test(test_identifier_parts),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_yaml_syntax_error),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_second_document),
        cmocka_unit_test(test_env_getenv),
        cmocka_unit_test(test_env_callback),
        cmocka_unit_test(test_env_unset),
        cmocka_unit_test(test_env_syntax),
        cmocka_unit_test(test_env_values_not_in_errors),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_load_file_unreadable),
        cmocka_unit_test(test_destroy_null),
        cmocka_unit_test(test_table_options),
        cmocka_unit_test(test_table_option_errors),
        cmocka_unit_test(test_err_buffer_edge_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for common/dsn.c: password redaction and redis:// URL parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "dsn.h"

/* Redacts dsn and checks that secret is gone, "***" is there, and the output equals
 * expected when given. */
static void s_check_redact(const char *dsn, const char *secret, const char *expected)
{
    char out[512];
    bf_redact(dsn, out, sizeof out);
    if (secret && strstr(out, secret)) {
        fail_msg("secret '%s' leaked: '%s' -> '%s'", secret, dsn, out);
    }
    if (secret)
        assert_non_null(strstr(out, "***"));
    if (expected)
        assert_string_equal(out, expected);
}

static void test_redact_postgres_uri(void **state)
{
    (void)state;
    s_check_redact("postgresql://user:secret@host:5432/db", "secret",
                   "postgresql://user:***@host:5432/db");
    s_check_redact("postgres://app:hunter2@127.0.0.1/monolith", "hunter2",
                   "postgres://app:***@127.0.0.1/monolith");
    s_check_redact("POSTGRESQL://u:S3cr3t@h/d", "S3cr3t", "POSTGRESQL://u:***@h/d");
    /* Multiple hosts. */
    s_check_redact("postgresql://u:pw1234@h1:5432,h2:5433/db", "pw1234",
                   "postgresql://u:***@h1:5432,h2:5433/db");
}

static void test_redact_uri_without_password(void **state)
{
    (void)state;
    s_check_redact("postgresql://user@host:5432/db", NULL, "postgresql://user@host:5432/db");
    s_check_redact("postgresql://host:5432/db", NULL, "postgresql://host:5432/db");
    s_check_redact("postgresql:///db?host=/tmp", NULL, "postgresql:///db?host=/tmp");
    s_check_redact("postgresql://host/db?application_name=a@b", NULL,
                   "postgresql://host/db?application_name=a@b");
}

static void test_redact_uri_special_chars(void **state)
{
    (void)state;
    /* Percent-encoded '@', ':' and '/'. */
    s_check_redact("postgresql://u:p%40ss%3Aw%2Frd@host/db", "p%40ss",
                   "postgresql://u:***@host/db");
    /* Raw '@' and ':' in the password: up to the last '@'. */
    s_check_redact("postgresql://u:p@ss:w@rd@host/db", "rd", "postgresql://u:***@host/db");
    s_check_redact("postgresql://u:p@ss:w@rd@host/db", "p@ss", NULL);
    /* Raw '/' in the password. */
    s_check_redact("postgresql://u:pa/ss@host/db", "ss@", "postgresql://u:***@host/db");
    s_check_redact("postgresql://u:pa/ss@host/db", "pa/", NULL);
    /* Raw '?' in the password. */
    s_check_redact("postgresql://u:pa?ss@host/db", "pa?ss", "postgresql://u:***@host/db");
    /* Raw '@' and '?' together, and an '@' in the query after real credentials. */
    s_check_redact("postgresql://u:a@b?c@host/db", "b?c", "postgresql://u:***@host/db");
    s_check_redact("postgresql://u:a/b@c?d@host/db", "b@c", NULL);
    s_check_redact("postgresql://u:pa?ss@host/db?application_name=x@y", "pa?ss",
                   "postgresql://u:***@host/db?application_name=x@y");
}

static void test_redact_uri_query(void **state)
{
    (void)state;
    s_check_redact("postgresql://host/db?sslmode=require&password=x1y2z3", "x1y2z3",
                   "postgresql://host/db?sslmode=require&password=***");
    s_check_redact("postgresql://host/db?password=x1y2z3&sslmode=require", "x1y2z3",
                   "postgresql://host/db?password=***&sslmode=require");
    s_check_redact("postgresql://u:aaa111@host/db?password=bbb222", "aaa111", NULL);
    s_check_redact("postgresql://u:aaa111@host/db?password=bbb222", "bbb222",
                   "postgresql://u:***@host/db?password=***");
    s_check_redact("postgresql://host/db?sslpassword=keypass9", "keypass9",
                   "postgresql://host/db?sslpassword=***");
    s_check_redact("postgresql://host/db?PASSWORD=UPPER99", "UPPER99", NULL);
}

static void test_redact_conninfo(void **state)
{
    (void)state;
    s_check_redact("host=x password=secret dbname=y", "secret", "host=x password=*** dbname=y");
    s_check_redact("password=secret", "secret", "password=***");
    s_check_redact("host=x password = secret dbname=y", "secret", "host=x password = *** dbname=y");
    s_check_redact("host=x password='a b\\'c' dbname=y", "a b", "host=x password=*** dbname=y");
    s_check_redact("host=x password='a b\\'c' dbname=y", "\\'c", NULL);
    s_check_redact("host=x password=sec\\ ret dbname=y", "ret", "host=x password=*** dbname=y");
    s_check_redact("host=x   user=app\tpassword=tabbed", "tabbed",
                   "host=x   user=app\tpassword=***");
    /* Unterminated quote: everything after is hidden. */
    s_check_redact("host=x password='unterminated secret", "unterminated", "host=x password=***");
    /* Something that is not key=value: hidden. */
    s_check_redact("host=x oops hunter2", "hunter2", "host=x ***");
    /* Nothing secret: unchanged. */
    s_check_redact("host=x dbname='my db' user=app", NULL, "host=x dbname='my db' user=app");
    s_check_redact("host=x sslpassword=kp123", "kp123", "host=x sslpassword=***");
}

static void test_redact_redis(void **state)
{
    (void)state;
    s_check_redact("redis://:secret@host:6379/0", "secret", "redis://:***@host:6379/0");
    s_check_redact("redis://user:secret@host", "secret", "redis://user:***@host");
    s_check_redact("redis://127.0.0.1:6379/0", NULL, "redis://127.0.0.1:6379/0");
    s_check_redact("redis://lonesecret@host", "lonesecret", "redis://***@host");
    s_check_redact("redis://:p@ss/w:rd@host/1", "ss/w", "redis://:***@host/1");
}

static void test_redact_other(void **state)
{
    (void)state;
    s_check_redact("monolith", NULL, "monolith");
    s_check_redact("", NULL, "");
    s_check_redact("user:secret@host", "secret", "***@host");
    char out[8] = "garbage";
    assert_ptr_equal(bf_redact(NULL, out, sizeof out), out);
    assert_string_equal(out, "");
    /* outlen 0 must not write. */
    char untouched[4] = "abc";
    bf_redact("password=x", untouched, 0);
    assert_string_equal(untouched, "abc");
}

static void test_redact_truncation(void **state)
{
    (void)state;
    const char *dsn = "postgresql://user:verysecretpassword@host.example.com:5432/db";
    for (size_t len = 1; len < 80; len++) {
        char out[96];
        memset(out, 'Z', sizeof out);
        bf_redact(dsn, out, len);
        assert_true(strlen(out) < len);
        assert_int_equal(out[len], 'Z'); /* nothing past outlen */
        assert_null(strstr(out, "verysecret"));
        assert_null(strstr(out, "secretpassword"));
    }
    char out[16];
    bf_redact("host=x password=abcdefghij", out, sizeof out);
    assert_string_equal(out, "host=x password");
}

static void test_redis_parse_full(void **state)
{
    (void)state;
    bf_redis_url_t url;
    char err[256];
    assert_int_equal(
        bf_redis_url_parse("redis://alice:s3cret@cache.local:6380/2", &url, err, sizeof err), 0);
    assert_string_equal(url.host, "cache.local");
    assert_int_equal(url.port, 6380);
    assert_int_equal(url.db, 2);
    assert_string_equal(url.user, "alice");
    assert_string_equal(url.password, "s3cret");
}

static void test_redis_parse_defaults(void **state)
{
    (void)state;
    bf_redis_url_t url;
    char err[256];
    assert_int_equal(bf_redis_url_parse("redis://127.0.0.1", &url, err, sizeof err), 0);
    assert_string_equal(url.host, "127.0.0.1");
    assert_int_equal(url.port, 6379);
    assert_int_equal(url.db, 0);
    assert_string_equal(url.user, "");
    assert_string_equal(url.password, "");

    assert_int_equal(bf_redis_url_parse("redis://h/", &url, err, sizeof err), 0);
    assert_int_equal(url.db, 0);
    assert_int_equal(bf_redis_url_parse("redis://h/5", &url, err, sizeof err), 0);
    assert_int_equal(url.port, 6379);
    assert_int_equal(url.db, 5);
    assert_int_equal(bf_redis_url_parse("REDIS://h:1", &url, err, sizeof err), 0);
    assert_int_equal(url.port, 1);
}

static void test_redis_parse_password_only(void **state)
{
    (void)state;
    bf_redis_url_t url;
    char err[256];
    assert_int_equal(bf_redis_url_parse("redis://:pw@127.0.0.1:6379/0", &url, err, sizeof err), 0);
    assert_string_equal(url.user, "");
    assert_string_equal(url.password, "pw");
    assert_string_equal(url.host, "127.0.0.1");
}

static void test_redis_parse_percent(void **state)
{
    (void)state;
    bf_redis_url_t url;
    char err[256];
    assert_int_equal(
        bf_redis_url_parse("redis://us%65r:p%40ss%3Aw%2Frd%25@h:7000", &url, err, sizeof err), 0);
    assert_string_equal(url.user, "user");
    assert_string_equal(url.password, "p@ss:w/rd%");
    assert_string_equal(url.host, "h");
    assert_int_equal(url.port, 7000);
    /* Raw '@' and '/' in the password: the last '@' ends it. */
    assert_int_equal(bf_redis_url_parse("redis://:a@b/c@h/3", &url, err, sizeof err), 0);
    assert_string_equal(url.password, "a@b/c");
    assert_string_equal(url.host, "h");
    assert_int_equal(url.db, 3);
}

static void test_redis_parse_ipv6(void **state)
{
    (void)state;
    bf_redis_url_t url;
    char err[256];
    assert_int_equal(bf_redis_url_parse("redis://[::1]:6390/1", &url, err, sizeof err), 0);
    assert_string_equal(url.host, "::1");
    assert_int_equal(url.port, 6390);
    assert_int_equal(url.db, 1);
}

/* Parses url, expects failure with words in err and without secret. */
static void s_check_bad(const char *url, const char *words, const char *secret)
{
    bf_redis_url_t out;
    char err[256];
    assert_int_equal(bf_redis_url_parse(url, &out, err, sizeof err), -1);
    if (!strstr(err, words))
        fail_msg("'%s': expected '%s' in '%s'", url, words, err);
    if (secret && strstr(err, secret))
        fail_msg("'%s': secret '%s' in '%s'", url, secret, err);
    assert_null(strchr(err, '\n'));
    assert_string_equal(out.password, "");
}

static void test_redis_parse_errors(void **state)
{
    (void)state;
    s_check_bad("http://:topsecret@h", "scheme 'http' is not supported", "topsecret");
    s_check_bad("rediss://:topsecret@h", "TLS", "topsecret");
    s_check_bad("unix:///tmp/redis.sock", "not supported", NULL);
    s_check_bad("localhost:6379", "expected redis://", NULL);
    s_check_bad("", "empty", NULL);
    s_check_bad("redis://:topsecret@", "no host", "topsecret");
    s_check_bad("redis://", "no host", NULL);
    s_check_bad("redis://:topsecret@h:0", "port", "topsecret");
    s_check_bad("redis://:topsecret@h:65536", "port", "topsecret");
    s_check_bad("redis://:topsecret@h:abc", "port", "topsecret");
    s_check_bad("redis://:topsecret@h:", "port", "topsecret");
    s_check_bad("redis://:topsecret@h/x", "database", "topsecret");
    s_check_bad("redis://:topsecret@h/-1", "database", "topsecret");
    s_check_bad("redis://:topsecret@h/99999999999", "database", "topsecret");
    s_check_bad("redis://:top%zzsecret@h", "percent-encoding in the password", "secret");
    s_check_bad("redis://:top%00secret@h", "percent-encoding in the password", "secret");
    s_check_bad("redis://:topsecret%4@h", "percent-encoding in the password", "topsecret");
    s_check_bad("redis://topsecret@h", "':password@'", "topsecret");
    s_check_bad("redis://:topsecret@h/0?timeout=1", "query", "topsecret");
    s_check_bad("redis://:topsecret@[::1", "']'", "topsecret");
    s_check_bad(NULL, "empty", NULL);
}

static void test_redis_parse_too_long(void **state)
{
    (void)state;
    char url[1024];
    char big[400];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    snprintf(url, sizeof url, "redis://:%s@h", big);
    s_check_bad(url, "too long in the password", "xxxxx");
    snprintf(url, sizeof url, "redis://%s:pw@h", big);
    s_check_bad(url, "too long in the user name", NULL);
    snprintf(url, sizeof url, "redis://%s", big);
    s_check_bad(url, "host name too long", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redact_postgres_uri),
        cmocka_unit_test(test_redact_uri_without_password),
        cmocka_unit_test(test_redact_uri_special_chars),
        cmocka_unit_test(test_redact_uri_query),
        cmocka_unit_test(test_redact_conninfo),
        cmocka_unit_test(test_redact_redis),
        cmocka_unit_test(test_redact_other),
        cmocka_unit_test(test_redact_truncation),
        cmocka_unit_test(test_redis_parse_full),
        cmocka_unit_test(test_redis_parse_defaults),
        cmocka_unit_test(test_redis_parse_password_only),
        cmocka_unit_test(test_redis_parse_percent),
        cmocka_unit_test(test_redis_parse_ipv6),
        cmocka_unit_test(test_redis_parse_errors),
        cmocka_unit_test(test_redis_parse_too_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

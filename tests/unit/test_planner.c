/* Unit tests for the pure part of the planner: boundaries from sorted keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "planner.h"

/* Makes n sorted decimal keys from vals (ascending). */
static char **s_keys(const long long *vals, size_t n)
{
    char **k = calloc(n, sizeof *k);
    for (size_t i = 0; i < n; i++) {
        k[i] = malloc(24);
        snprintf(k[i], 24, "%lld", vals[i]);
    }
    return k;
}

static void s_free_keys(char **k, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(k[i]);
    free(k);
}

/* Counts how many of vals fall in [lo, hi) with numeric comparison. */
static long long s_count(const long long *vals, size_t n, const char *lo, const char *hi)
{
    long long c = 0;
    for (size_t i = 0; i < n; i++) {
        if (lo && vals[i] < atoll(lo))
            continue;
        if (hi && vals[i] >= atoll(hi))
            continue;
        c++;
    }
    return c;
}

static void test_small_table_one_range(void **state)
{
    (void)state;
    long long v[] = {1, 2, 3};
    char **k = s_keys(v, 3);
    bf_plan_range_t out[2];
    size_t n = bf_plan_pick((const char *const *)k, 3, 3, 1000, out);
    assert_int_equal(n, 1);
    assert_null(out[0].lo);
    assert_null(out[0].hi);
    assert_int_equal(out[0].est, 3);
    s_free_keys(k, 3);
}

static void test_empty_table(void **state)
{
    (void)state;
    bf_plan_range_t out[2];
    size_t n = bf_plan_pick(NULL, 0, 0, 1000, out);
    assert_int_equal(n, 1);
    assert_null(out[0].lo);
    assert_null(out[0].hi);
    assert_int_equal(out[0].est, 0);
}

/* DESIGN.md: 1..1000 plus 9e11..9e11+4e5 must give ranges of similar row counts,
 * where (max-min)/n strides would put almost everything in one range. */
static void test_gap_gives_even_ranges(void **state)
{
    (void)state;
    size_t n = 1000 + 400000;
    long long *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < 1000; i++)
        v[i] = (long long)i + 1;
    for (size_t i = 0; i < 400000; i++)
        v[1000 + i] = 900000000000LL + (long long)i;
    char **k = s_keys(v, n);
    size_t cap = bf_plan_max_ranges((double)n, 50000);
    assert_int_equal(cap, 9);
    bf_plan_range_t *out = calloc(cap + 1, sizeof *out);
    size_t got = bf_plan_pick((const char *const *)k, n, (double)n, 50000, out);
    assert_int_equal(got, 9);
    assert_null(out[0].lo);
    assert_null(out[got - 1].hi);
    long long total = 0;
    for (size_t i = 0; i < got; i++) {
        long long c = s_count(v, n, out[i].lo, out[i].hi);
        total += c;
        /* every range within 10% of the ideal size */
        assert_true(c > 40000 && c < 50000);
        assert_true(llabs(out[i].est - c) <= 1);
        if (i > 0)
            assert_string_equal(out[i].lo, out[i - 1].hi); /* contiguous, no gap */
    }
    assert_int_equal(total, (long long)n);
    free(out);
    s_free_keys(k, n);
    free(v);
}

/* A sample (1 key in 100) of a bigger table still gives estimates that add up. */
static void test_sample_scales_estimates(void **state)
{
    (void)state;
    size_t n = 10000;
    long long *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = -5000 + (long long)i * 100; /* negative keys too */
    char **k = s_keys(v, n);
    bf_plan_range_t out[11];
    size_t got = bf_plan_pick((const char *const *)k, n, 1e6, 100000, out);
    assert_int_equal(got, 10);
    long long sum = 0;
    for (size_t i = 0; i < got; i++) {
        sum += out[i].est;
        assert_true(out[i].est >= 90000 && out[i].est <= 110000);
    }
    assert_true(llabs(sum - 1000000) <= 10);
    s_free_keys(k, n);
    free(v);
}

/* Fewer keys than ranges wanted: never an empty or inverted range. */
static void test_more_ranges_than_keys(void **state)
{
    (void)state;
    long long v[] = {-9223372036854775807LL, 0, 9223372036854775807LL};
    char **k = s_keys(v, 3);
    bf_plan_range_t out[8];
    size_t got = bf_plan_pick((const char *const *)k, 3, 3000, 100, out);
    assert_true(got >= 1 && got <= 3);
    for (size_t i = 0; i + 1 < got; i++)
        assert_string_equal(out[i].hi, out[i + 1].lo);
    assert_null(out[got - 1].hi);
    s_free_keys(k, 3);
}

/* Duplicate sample keys never make an empty range [x, x). */
static void test_duplicates_skipped(void **state)
{
    (void)state;
    const char *k[] = {"1", "1", "1", "1", "1", "1", "2", "3"};
    bf_plan_range_t out[9];
    size_t got = bf_plan_pick(k, 8, 8, 1, out);
    for (size_t i = 0; i < got; i++)
        if (out[i].lo && out[i].hi)
            assert_string_not_equal(out[i].lo, out[i].hi);
    assert_true(got <= 3);
}

/* Key texts: a one-column key is its own text; a composite key is the JSON array
 * that json_build_array(k1::text, ...)::text gives. */
static void s_split_ok(const char *text, int n, const char *const *want)
{
    char *parts[4] = {NULL, NULL, NULL, NULL};
    if (bf_key_split(text, n, parts) != 0)
        fail_msg("bf_key_split(%s, %d) failed", text, n);
    for (int i = 0; i < n; i++) {
        assert_non_null(parts[i]);
        if (strcmp(parts[i], want[i]) != 0)
            fail_msg("part %d of %s: got '%s', want '%s'", i, text, parts[i], want[i]);
        free(parts[i]);
    }
}

static void test_key_split(void **state)
{
    (void)state;
    s_split_ok("42", 1, (const char *[]){"42"});
    s_split_ok("[\"1\", \"x\"]", 1, (const char *[]){"[\"1\", \"x\"]"}); /* one column: as is */
    s_split_ok("-9223372036854775808", 1, (const char *[]){"-9223372036854775808"});
    s_split_ok("[\"42\", \"EUR\"]", 2, (const char *[]){"42", "EUR"});
    s_split_ok("[\"a,b\",\"c]d\"]", 2, (const char *[]){"a,b", "c]d"});
    s_split_ok(" [ \"q\\\"uote\" , \"back\\\\slash\" ] ", 2,
               (const char *[]){"q\"uote", "back\\slash"});
    s_split_ok("[\"tab\\there\", \"nl\\nx\", \"\\/\"]", 3,
               (const char *[]){"tab\there", "nl\nx", "/"});
    s_split_ok("[\"caf\\u00e9\", \"\\ud83d\\ude00\", \"\"]", 3,
               (const char *[]){"caf\xc3\xa9", "\xf0\x9f\x98\x80", ""});
    s_split_ok("[\"caf\xc3\xa9\", \"x\"]", 2, (const char *[]){"caf\xc3\xa9", "x"});
    const char *bad[] = {"",
                         "42",
                         "[\"1\"]",
                         "[\"1\", \"2\", \"3\"]",
                         "[1, 2]",
                         "[\"1\" \"2\"]",
                         "[\"1\", \"2\"",
                         "[\"1\", \"2\"] x",
                         "[\"\\x\", \"2\"]",
                         "[\"\\u12\", \"2\"]",
                         "[\"\\ud800\", \"2\"]",
                         "[\"\\u0000\", \"2\"]",
                         "[\"a\nb\", \"2\"]",
                         "[\"1\",]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *parts[4] = {NULL, NULL, NULL, NULL};
        if (bf_key_split(bad[i], 2, parts) == 0)
            fail_msg("bf_key_split accepted '%s' as a 2-column key", bad[i]);
        for (int k = 0; k < 4; k++)
            assert_null(parts[k]);
    }
    assert_int_equal(bf_key_split(NULL, 1, (char *[1]){NULL}), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_table_one_range),
        cmocka_unit_test(test_key_split),
        cmocka_unit_test(test_empty_table),
        cmocka_unit_test(test_gap_gives_even_ranges),
        cmocka_unit_test(test_sample_scales_estimates),
        cmocka_unit_test(test_more_ranges_than_keys),
        cmocka_unit_test(test_duplicates_skipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

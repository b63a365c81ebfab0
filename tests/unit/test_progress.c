/* Unit tests for coordinator/progress.c: the rate window, the ETA (bytes left per
 * table, countdown between checkpoints) and number formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "progress.h"

static void test_count(void **state)
{
    (void)state;
    char buf[32];
    assert_string_equal(bf_progress_count(0, buf, sizeof buf), "0");
    assert_string_equal(bf_progress_count(999, buf, sizeof buf), "999");
    assert_string_equal(bf_progress_count(1000, buf, sizeof buf), "1,000");
    assert_string_equal(bf_progress_count(1234567, buf, sizeof buf), "1,234,567");
    assert_string_equal(bf_progress_count(-5, buf, sizeof buf), "0");
}

/* The rate counts from the first sample that shows rows moved (start-up is not
 * copy time), over the window. */
static void test_rate_window(void **state)
{
    (void)state;
    bf_rate_window_t w = {0};
    assert_true(bf_rate_window_add(&w, 0, 0, 5000) == 0);
    assert_true(bf_rate_window_add(&w, 1000, 0, 5000) == 0);
    assert_true(bf_rate_window_add(&w, 2000, 100, 5000) == 0); /* first move: the start */
    assert_true(bf_rate_window_add(&w, 3000, 300, 5000) == 200.0);
    assert_true(bf_rate_window_add(&w, 4000, 500, 5000) == 200.0);
    /* the window slides: 10 s later only the last 5 s count */
    for (long long t = 5000; t <= 14000; t += 1000)
        bf_rate_window_add(&w, t, 500 + (t - 4000) / 1000 * 1000, 5000);
    double r = bf_rate_window_add(&w, 15000, 11500, 5000);
    assert_true(r > 999.0 && r < 1001.0);
}

/* Between checkpoints the ETA counts down; a new count recomputes it, minus the lag. */
static void test_eta_countdown(void **state)
{
    (void)state;
    bf_rate_window_t w = {0};
    assert_true(bf_rate_window_eta(&w, 1000, 1000, 500, 100.0, 0) == 5.0);
    assert_true(bf_rate_window_eta(&w, 2000, 1000, 500, 100.0, 0) == 4.0);
    assert_true(bf_rate_window_eta(&w, 9000, 1000, 500, 100.0, 0) == 0.0);
    assert_true(bf_rate_window_eta(&w, 9500, 1000, 600, 100.0, 0.5) == 3.5);
    bf_rate_window_t u = {0};
    assert_true(bf_rate_window_eta(&u, 0, 1000, 0, 0.0, 0) == -1.0);
}

/* Bytes left: measured bytes per row for started tables, the width from the
 * statistics scaled by measured/width for the others. */
static void test_bytes_left(void **state)
{
    (void)state;
    bf_table_progress_t p[3];
    memset(p, 0, sizeof p);
    p[0] = (bf_table_progress_t){
        .ranges = 2, .done = 1, .est = 200, .rows = 100, .bytes = 10000, .width = 50};
    p[1] = (bf_table_progress_t){.ranges = 1, .est = 100, .width = 25};
    p[2] = (bf_table_progress_t){.ranges = 1, .done = 1, .est = 50, .rows = 50, .bytes = 99};
    /* A: 100 rows x 100 B; B: 100 rows x 25 x (10000 / (100 x 50)) = 50 B; C done */
    assert_int_equal(bf_progress_bytes_left(p, 3), 100 * 100 + 100 * 50);
    /* no width: the average bytes per row so far */
    p[1].width = 0;
    assert_int_equal(bf_progress_bytes_left(p, 2), 100 * 100 + 100 * 100);
    /* nothing copied: unknown */
    bf_table_progress_t q = {.ranges = 1, .est = 10, .width = 5};
    assert_int_equal(bf_progress_bytes_left(&q, 1), -1);
}

/* A table waits for the tables of its `after` list that are not done. */
static void test_waits(void **state)
{
    (void)state;
    bf_table_progress_t p[4];
    memset(p, 0, sizeof p);
    const char *names[] = {"public.customer", "public.order", "public.fill", "public.other"};
    for (int t = 0; t < 4; t++) {
        snprintf(p[t].name, sizeof p[t].name, "%s", names[t]);
        p[t].ranges = 4;
    }
    snprintf(p[1].after, sizeof p[1].after, "0");
    snprintf(p[2].after, sizeof p[2].after, "0,1,9,x");
    char buf[160];
    assert_false(bf_progress_waits(p, 4, 0, buf, sizeof buf));
    assert_string_equal(buf, "");
    assert_true(bf_progress_waits(p, 4, 1, buf, sizeof buf));
    assert_string_equal(buf, "public.customer");
    assert_true(bf_progress_waits(p, 4, 2, buf, sizeof buf)); /* 9: no such table, ignored */
    assert_string_equal(buf, "public.customer, public.order");
    int on[4];
    assert_int_equal(bf_progress_waiting_on(p, 4, 2, on, 4), 2);
    assert_int_equal(on[0], 0);
    assert_int_equal(on[1], 1);
    assert_int_equal(bf_progress_waiting_on(p, 4, 2, on, 1), 1); /* at most max */
    p[0].done = 4; /* customer done: order starts, fill still waits for order */
    assert_false(bf_progress_waits(p, 4, 1, buf, sizeof buf));
    assert_true(bf_progress_waits(p, 4, 2, buf, sizeof buf));
    assert_string_equal(buf, "public.order");
    char tiny[8]; /* names cut, never overflowing */
    assert_true(bf_progress_waits(p, 4, 2, tiny, sizeof tiny));
    assert_true(strlen(tiny) < sizeof tiny);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_count),         cmocka_unit_test(test_rate_window),
        cmocka_unit_test(test_eta_countdown), cmocka_unit_test(test_bytes_left),
        cmocka_unit_test(test_waits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

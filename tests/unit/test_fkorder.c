/* Unit tests for coordinator/fkorder.c: which foreign keys order the tables
 * (child after parent) and which cannot (self-references, cycles). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "fkorder.h"

static void s_add(bf_fk_graph_t *g, int child, int parent)
{
    bf_fk_add(g, child, parent, 0, "fk", "c", "p");
}

/* A chain: 2 -> 1 -> 0 (2 waits for 1, 1 for 0); two keys between the same
 * tables count once. */
static void test_chain(void **state)
{
    (void)state;
    bf_fk_graph_t g = {0};
    s_add(&g, 2, 1);
    s_add(&g, 1, 0);
    s_add(&g, 2, 1);
    s_add(&g, 2, 0);
    bf_fk_order(&g, 3);
    for (int e = 0; e < g.nedges; e++)
        assert_false(g.edges[e].cycle);
    char **after = bf_fk_after(&g, 3);
    assert_string_equal(after[0], "");
    assert_string_equal(after[1], "0");
    assert_string_equal(after[2], "0,1");
    bf_fk_after_free(after, 3);
    bf_fk_clear(&g);
    assert_int_equal(g.nedges, 0);
}

/* A self-reference and a cycle (0 -> 1 -> 2 -> 0) are not ordered; a table
 * that refers into the cycle (3 -> 0) still waits for it, and a table the cycle
 * refers to (1 -> 4) is still waited for. Only the self-referencing table has its
 * ranges copied in key order (the cycle's are not: a cycle is not a self-reference). */
static void test_cycles(void **state)
{
    (void)state;
    bf_fk_graph_t g = {0};
    s_add(&g, 0, 0); /* self */
    s_add(&g, 0, 1);
    s_add(&g, 1, 2);
    s_add(&g, 2, 0);
    s_add(&g, 3, 0);
    s_add(&g, 1, 4);
    bf_fk_order(&g, 5);
    assert_true(g.edges[0].cycle);
    assert_true(g.edges[1].cycle);
    assert_true(g.edges[2].cycle);
    assert_true(g.edges[3].cycle);
    assert_false(g.edges[4].cycle);
    assert_false(g.edges[5].cycle);
    char **after = bf_fk_after(&g, 5);
    assert_string_equal(after[0], "");
    assert_string_equal(after[1], "4");
    assert_string_equal(after[2], "");
    assert_string_equal(after[3], "0");
    assert_string_equal(after[4], "");
    bf_fk_after_free(after, 5);
    bool *ordered = bf_fk_ordered(&g, 5);
    assert_true(ordered[0]);
    for (int t = 1; t < 5; t++)
        assert_false(ordered[t]);
    free(ordered);
    bf_fk_clear(&g);
}

/* Two tables referring to each other directly. */
static void test_pair(void **state)
{
    (void)state;
    bf_fk_graph_t g = {0};
    s_add(&g, 0, 1);
    s_add(&g, 1, 0);
    bf_fk_order(&g, 2);
    assert_true(g.edges[0].cycle && g.edges[1].cycle);
    char **after = bf_fk_after(&g, 2);
    assert_string_equal(after[0], "");
    assert_string_equal(after[1], "");
    bf_fk_after_free(after, 2);
    bool *ordered = bf_fk_ordered(&g, 2);
    assert_false(ordered[0] || ordered[1]);
    free(ordered);
    bf_fk_clear(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain),
        cmocka_unit_test(test_cycles),
        cmocka_unit_test(test_pair),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

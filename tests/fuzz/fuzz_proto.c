/* libFuzzer target for the protocol decoder. Arbitrary bytes must never crash it;
 * whatever it accepts must re-encode, decode to the same message, and re-encode
 * to the same bytes.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon \
 *       common/proto.c common/log.c tests/fuzz/fuzz_proto.c -lmsgpackc -o fuzz_proto
 *   ./fuzz_proto -max_total_time=60 corpus/
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

static bool s_str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool s_msg_eq(const bf_msg_t *a, const bf_msg_t *b)
{
    if (a->nenv != b->nenv)
        return false;
    for (int i = 0; i < a->nenv; i++)
        if (!s_str_eq(a->env_names[i], b->env_names[i]) ||
            !s_str_eq(a->env_values[i], b->env_values[i]))
            return false;
    return a->type == b->type && a->v == b->v && a->sid == b->sid && a->ep == b->ep &&
           s_str_eq(a->worker_id, b->worker_id) && s_str_eq(a->host, b->host) &&
           s_str_eq(a->version, b->version) && a->pid == b->pid && a->credit == b->credit &&
           a->heartbeat_ms == b->heartbeat_ms && a->liveness == b->liveness &&
           a->lease_ttl_ms == b->lease_ttl_ms && s_str_eq(a->job, b->job) &&
           a->range_id == b->range_id && a->token == b->token && a->table == b->table &&
           a->seq == b->seq && a->has_lo == b->has_lo && a->has_hi == b->has_hi &&
           a->has_cursor == b->has_cursor && s_str_eq(a->lo, b->lo) && s_str_eq(a->hi, b->hi) &&
           s_str_eq(a->cursor, b->cursor) && a->retry_after_ms == b->retry_after_ms &&
           a->leases == b->leases && a->rows == b->rows && a->bytes == b->bytes &&
           s_str_eq(a->code, b->code) && s_str_eq(a->message, b->message) &&
           a->retryable == b->retryable && a->deadline_ms == b->deadline_ms && a->done == b->done;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bf_msg_t m1, m2;
    char err[256];
    if (bf_msg_decode(data, size, &m1, err, sizeof err)) {
        if (!memchr(err, '\0', sizeof err) || err[0] == '\0')
            __builtin_trap(); /* every failure needs a reason */
        return 0;
    }

    char *b1 = NULL, *b2 = NULL;
    size_t l1 = 0, l2 = 0;
    if (bf_msg_encode(&m1, &b1, &l1))
        __builtin_trap(); /* accepted input must be encodable */
    if (bf_msg_decode(b1, l1, &m2, err, sizeof err))
        __builtin_trap(); /* our own encoding must decode */
    if (!s_msg_eq(&m1, &m2))
        __builtin_trap();
    if (bf_msg_encode(&m2, &b2, &l2) || l1 != l2 || memcmp(b1, b2, l1) != 0)
        __builtin_trap(); /* encoding is stable */

    bf_msg_clear(&m1);
    bf_msg_clear(&m2);
    free(b1);
    free(b2);
    return 0;
}

/* Protocol codec: round trips of every message type, rejection of malformed
 * frames with a useful reason, and random / mutated input that must never crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "log.h"
#include "proto.h"

/* ---- helpers ----------------------------------------------------------- */

/* Message string fields are char *; tests point them at literals. */
#define S(lit) ((char *)(lit))

static uint64_t s_rand(uint64_t *st)
{
    /* xorshift64*: deterministic, no global state */
    uint64_t x = *st;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *st = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void s_str_eq(const char *a, const char *b)
{
    if (!a || !b) {
        assert_ptr_equal(a, b);
        return;
    }
    assert_string_equal(a, b);
}

static void s_msg_eq(const bf_msg_t *a, const bf_msg_t *b)
{
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->v, b->v);
    assert_true(a->sid == b->sid);
    assert_true(a->ep == b->ep);
    s_str_eq(a->worker_id, b->worker_id);
    s_str_eq(a->host, b->host);
    s_str_eq(a->version, b->version);
    assert_true(a->fv == b->fv);
    assert_true(a->pid == b->pid);
    assert_true(a->credit == b->credit);
    assert_true(a->heartbeat_ms == b->heartbeat_ms);
    assert_true(a->liveness == b->liveness);
    assert_true(a->lease_ttl_ms == b->lease_ttl_ms);
    s_str_eq(a->job, b->job);
    assert_int_equal(a->nenv, b->nenv);
    for (int i = 0; i < a->nenv; i++) {
        s_str_eq(a->env_names[i], b->env_names[i]);
        s_str_eq(a->env_values[i], b->env_values[i]);
    }
    assert_true(a->range_id == b->range_id);
    assert_true(a->token == b->token);
    assert_true(a->table == b->table);
    assert_true(a->seq == b->seq);
    assert_int_equal(a->has_lo, b->has_lo);
    assert_int_equal(a->has_hi, b->has_hi);
    assert_int_equal(a->has_cursor, b->has_cursor);
    s_str_eq(a->lo, b->lo);
    s_str_eq(a->hi, b->hi);
    s_str_eq(a->cursor, b->cursor);
    assert_true(a->retry_after_ms == b->retry_after_ms);
    assert_true(a->leases == b->leases);
    assert_true(a->rows == b->rows);
    assert_true(a->bytes == b->bytes);
    s_str_eq(a->code, b->code);
    s_str_eq(a->message, b->message);
    assert_int_equal(a->retryable, b->retryable);
    assert_true(a->deadline_ms == b->deadline_ms);
    assert_int_equal(a->done, b->done);
}

/* Encodes in, decodes it back and compares with in (whose v must be set). */
static void s_roundtrip(const bf_msg_t *in)
{
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(bf_msg_encode(in, &buf, &len), 0);
    assert_non_null(buf);
    assert_true(len > 0);
    bf_msg_t out;
    char err[256];
    int rc = bf_msg_decode(buf, len, &out, err, sizeof err);
    if (rc)
        fail_msg("decode of %s failed: %s", bf_msg_type_name(in->type), err);
    s_msg_eq(in, &out);
    bf_msg_clear(&out);
    free(buf);
}

static void s_expect_fail(const void *buf, size_t len, const char *needle)
{
    bf_msg_t m, zero;
    memset(&m, 0xa5, sizeof m);
    memset(&zero, 0, sizeof zero);
    char err[256];
    memset(err, 'x', sizeof err);
    assert_int_equal(bf_msg_decode(buf, len, &m, err, sizeof err), -1);
    assert_non_null(memchr(err, '\0', sizeof err));
    assert_true(err[0] != '\0');
    if (needle && !strstr(err, needle))
        fail_msg("error '%s' does not mention '%s'", err, needle);
    assert_memory_equal(&m, &zero, sizeof m);
}

static void s_pack_s(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* Starts a map of nkeys with v and t (2 of the nkeys). */
static void s_begin(msgpack_sbuffer *sb, msgpack_packer *pk, size_t nkeys, int64_t v,
                    const char *type)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(pk, nkeys);
    s_pack_s(pk, "v");
    msgpack_pack_int64(pk, v);
    s_pack_s(pk, "t");
    s_pack_s(pk, type);
}

static void s_kv_int(msgpack_packer *pk, const char *key, int64_t val)
{
    s_pack_s(pk, key);
    msgpack_pack_int64(pk, val);
}

static void s_kv_str(msgpack_packer *pk, const char *key, const char *val)
{
    s_pack_s(pk, key);
    s_pack_s(pk, val);
}

/* A fully populated LEASE used by several tests. */
static bf_msg_t s_lease(void)
{
    bf_msg_t m = {.type = BF_MSG_LEASE, .v = BF_PROTO_VERSION, .sid = 42, .ep = 3};
    m.range_id = 17;
    m.token = 99;
    m.table = 2;
    m.seq = 5;
    m.lo = S("a\"b");
    m.hi = S("zz\xc3\xa9");
    m.cursor = S("m");
    m.has_lo = m.has_hi = m.has_cursor = true;
    return m;
}

/* ---- round trips ------------------------------------------------------- */

static void test_roundtrip_hello(void **state)
{
    (void)state;
    bf_msg_t m = {.type = BF_MSG_HELLO, .v = BF_PROTO_VERSION};
    m.worker_id = S("w-\"1\"-\xe2\x9c\x93");
    m.host = S("h\xc3\xb4st.example");
    m.pid = 12345;
    m.version = S("0.1.0");
    m.fv = 2;
    m.credit = 4;
    s_roundtrip(&m);
    m.host = NULL; /* optional strings may be absent */
    m.version = NULL;
    m.fv = 0;
    s_roundtrip(&m);
}

static void test_roundtrip_welcome(void **state)
{
    (void)state;
    char *names[] = {S("PGPASSWORD"), S("MY_VAR")};
    char *values[] = {S("s\"ecr'et \xe2\x82\xac"), S("")};
    bf_msg_t m = {.type = BF_MSG_WELCOME, .v = BF_PROTO_VERSION, .sid = UINT64_MAX, .ep = 7};
    m.heartbeat_ms = 1000;
    m.liveness = 3;
    m.lease_ttl_ms = 30000;
    m.job = S("name: \"x\"\nsql: UPDATE t SET c = 'd\xc3\xa9j\xc3\xa0'\n");
    m.env_names = names;
    m.env_values = values;
    m.nenv = 2;
    m.version = S("0.2.0");
    m.fv = 3;
    s_roundtrip(&m);
    m.version = NULL;
    m.fv = 0;
    m.nenv = 0;
    m.env_names = m.env_values = NULL;
    m.job = S("");
    s_roundtrip(&m);
}

static void test_roundtrip_lease(void **state)
{
    (void)state;
    bf_msg_t m = s_lease();
    s_roundtrip(&m);
    m.lo = m.hi = m.cursor = NULL; /* nil: open ends, no cursor yet */
    s_roundtrip(&m);
    m.has_cursor = false; /* absent cursor */
    m.lo = S("");
    m.range_id = INT64_MAX;
    m.token = INT64_MAX;
    s_roundtrip(&m);
}

static void test_roundtrip_others(void **state)
{
    (void)state;
    bf_msg_t m = {.type = BF_MSG_CREDIT, .v = BF_PROTO_VERSION, .sid = 1, .ep = 1, .credit = 8};
    s_roundtrip(&m);

    m = (bf_msg_t){.type = BF_MSG_NOWORK, .v = BF_PROTO_VERSION, .sid = 2, .retry_after_ms = 250};
    s_roundtrip(&m);

    m = (bf_msg_t){.type = BF_MSG_HEARTBEAT, .v = BF_PROTO_VERSION, .sid = 3, .ep = 9};
    m.leases = 2;
    m.rows = 1000000;
    m.bytes = (int64_t)1 << 40;
    s_roundtrip(&m);

    m = (bf_msg_t){.type = BF_MSG_PROGRESS, .v = BF_PROTO_VERSION, .sid = 4, .ep = 9};
    m.range_id = 5;
    m.token = 6;
    m.rows = 70;
    m.bytes = 800;
    s_roundtrip(&m);

    m.type = BF_MSG_DONE;
    s_roundtrip(&m);

    m = (bf_msg_t){.type = BF_MSG_FAIL, .v = BF_PROTO_VERSION, .sid = 5, .ep = 9};
    m.range_id = 5;
    m.token = 6;
    m.code = S("SQL_ERROR");
    m.message = S("ERROR:  relation \"t\" does not exist \xe2\x80\x94 line 1");
    m.retryable = true;
    s_roundtrip(&m);
    m.message = NULL;
    m.retryable = false;
    s_roundtrip(&m);

    m = (bf_msg_t){.type = BF_MSG_REVOKE, .v = BF_PROTO_VERSION, .sid = 6, .range_id = 1};
    m.token = 2;
    s_roundtrip(&m);

    m = (bf_msg_t){.type = BF_MSG_SHRINK, .v = BF_PROTO_VERSION, .sid = 7, .range_id = 1};
    m.token = 2;
    m.credit = 3;
    s_roundtrip(&m);

    m = (bf_msg_t){.type = BF_MSG_DRAIN, .v = BF_PROTO_VERSION, .ep = 1, .deadline_ms = 5000};
    m.done = true;
    s_roundtrip(&m);

    m = (bf_msg_t){.type = BF_MSG_ERR, .v = BF_PROTO_VERSION, .code = S("STALE_EPOCH")};
    m.message = S("epoch 3 < 4");
    s_roundtrip(&m);
}

/* Fields that do not belong to the type are neither sent nor decoded. */
static void test_foreign_fields_dropped(void **state)
{
    (void)state;
    bf_msg_t m = {.type = BF_MSG_CREDIT, .v = BF_PROTO_VERSION, .credit = 3};
    m.rows = 5;
    m.host = S("h");
    m.has_lo = true;
    char *buf;
    size_t len;
    assert_int_equal(bf_msg_encode(&m, &buf, &len), 0);
    bf_msg_t out;
    char err[128];
    assert_int_equal(bf_msg_decode(buf, len, &out, err, sizeof err), 0);
    assert_true(out.credit == 3);
    assert_true(out.rows == 0);
    assert_null(out.host);
    assert_false(out.has_lo);
    bf_msg_clear(&out);
    free(buf);
}

/* A HELLO of a release from before HELLO carried fv (the functions version) is
 * read with fv 0, which the coordinator refuses as another release. */
static void test_hello_without_fv(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 5, BF_PROTO_VERSION, "HELLO");
    s_kv_str(&pk, "worker_id", "w1");
    s_kv_str(&pk, "version", "0.1.0");
    s_kv_int(&pk, "credit", 1);
    bf_msg_t m;
    char err[128];
    assert_int_equal(bf_msg_decode(sb.data, sb.size, &m, err, sizeof err), 0);
    assert_string_equal(m.version, "0.1.0");
    assert_true(m.fv == 0);
    bf_msg_clear(&m);
    msgpack_sbuffer_destroy(&sb);
}

static void test_unknown_keys_ignored(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 6, BF_PROTO_VERSION, "CREDIT");
    s_kv_int(&pk, "credit", 2);
    s_pack_s(&pk, "future"); /* nested unknown value */
    msgpack_pack_array(&pk, 2);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_int(&pk, 1); /* non-string key below the top level is fine */
    msgpack_pack_double(&pk, 1.5);
    msgpack_pack_bin(&pk, 2);
    msgpack_pack_bin_body(&pk, "\0\1", 2);
    s_kv_str(&pk, "rows", "not for CREDIT"); /* known key, other type: ignored */
    s_kv_int(&pk, "sid", 11);
    bf_msg_t m;
    char err[128];
    int rc = bf_msg_decode(sb.data, sb.size, &m, err, sizeof err);
    if (rc)
        fail_msg("decode failed: %s", err);
    assert_int_equal(m.type, BF_MSG_CREDIT);
    assert_true(m.credit == 2);
    assert_true(m.sid == 11);
    assert_true(m.ep == 0);
    bf_msg_clear(&m);
    msgpack_sbuffer_destroy(&sb);
}

/* int8/int64 encodings of non-negative values are as good as positive ones. */
static void test_signed_encoded_positive(void **state)
{
    (void)state;
    const uint8_t frame[] = {0x83, 0xa1, 'v',  0xd0, 0x01, 0xa1, 't',  0xa6, 'C',  'R',
                             'E',  'D',  'I',  'T',  0xa6, 'c',  'r',  'e',  'd',  'i',
                             't',  0xd3, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07};
    bf_msg_t m;
    char err[128];
    int rc = bf_msg_decode(frame, sizeof frame, &m, err, sizeof err);
    if (rc)
        fail_msg("decode failed: %s", err);
    assert_true(m.credit == 7);
    assert_true(m.v == BF_PROTO_VERSION);
    bf_msg_clear(&m);
}

static void test_type_names(void **state)
{
    (void)state;
    assert_string_equal(bf_msg_type_name(BF_MSG_LEASE), "LEASE");
    assert_string_equal(bf_msg_type_name(BF_MSG_ERR), "ERR");
    assert_non_null(bf_msg_type_name(BF_MSG__COUNT));
    assert_non_null(bf_msg_type_name((bf_msg_type_t)-1));
}

/* ---- encode refuses what decode would refuse --------------------------- */

static void test_encode_rejects(void **state)
{
    (void)state;
    bf_log_set_level((bf_log_level_t)(BF_LOG_ERROR + 1)); /* expected errors: keep quiet */
    char *buf = (char *)1;
    size_t len = 1;
    bf_msg_t m = {.type = BF_MSG_NONE};
    assert_int_equal(bf_msg_encode(&m, &buf, &len), -1);
    assert_null(buf);
    m.type = BF_MSG__COUNT;
    assert_int_equal(bf_msg_encode(&m, &buf, &len), -1);

    m = s_lease();
    m.token = -1;
    assert_int_equal(bf_msg_encode(&m, &buf, &len), -1);
    m = s_lease();
    m.has_hi = false; /* LEASE needs hi, even if nil */
    assert_int_equal(bf_msg_encode(&m, &buf, &len), -1);

    m = (bf_msg_t){.type = BF_MSG_HELLO}; /* worker_id missing */
    assert_int_equal(bf_msg_encode(&m, &buf, &len), -1);

    char *names[] = {S("A"), S("A")};
    char *values[] = {S("1"), S("2")};
    m = (bf_msg_t){.type = BF_MSG_WELCOME, .job = S("j"), .nenv = 2};
    m.env_names = names;
    m.env_values = values;
    assert_int_equal(bf_msg_encode(&m, &buf, &len), -1);
    names[1] = S("B=C");
    assert_int_equal(bf_msg_encode(&m, &buf, &len), -1);
    names[1] = S("B");
    m.nenv = 257;
    assert_int_equal(bf_msg_encode(&m, &buf, &len), -1);
    m.nenv = 2;
    assert_int_equal(bf_msg_encode(&m, &buf, &len), 0);
    free(buf);

    size_t n = (size_t)BF_PROTO_MAX_STR + 1;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, 'x', n);
    big[n] = '\0';
    m = (bf_msg_t){.type = BF_MSG_ERR, .code = big};
    assert_int_equal(bf_msg_encode(&m, &buf, &len), -1);
    free(big);
    bf_log_set_level(BF_LOG_INFO);
}

/* ---- rejections -------------------------------------------------------- */

static void test_reject_empty(void **state)
{
    (void)state;
    s_expect_fail("", 0, "empty");
    s_expect_fail(NULL, 5, "empty");
}

static void test_reject_too_large(void **state)
{
    (void)state;
    size_t len = (size_t)BF_PROTO_MAX_FRAME + 1;
    char *big = calloc(1, len);
    assert_non_null(big);
    s_expect_fail(big, len, "too large");
    free(big);
}

static void test_reject_random_bytes(void **state)
{
    (void)state;
    s_expect_fail("\xc1", 1, "malformed");
    s_expect_fail("hello world", 11, "trailing");
    s_expect_fail("\x07", 1, "not a map");
    s_expect_fail("\x92\x01", 2, "truncated");
    s_expect_fail("\x80", 1, "missing protocol version");
}

static void test_reject_truncated(void **state)
{
    (void)state;
    bf_msg_t m = s_lease();
    char *buf;
    size_t len;
    assert_int_equal(bf_msg_encode(&m, &buf, &len), 0);
    for (size_t n = 0; n < len; n++) {
        /* exact-size copy so ASan catches any over-read */
        char *p = malloc(n ? n : 1);
        assert_non_null(p);
        memcpy(p, buf, n);
        s_expect_fail(p, n, NULL);
        free(p);
    }
    free(buf);
}

static void test_reject_top_level(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    s_pack_s(&pk, "v");
    msgpack_pack_int(&pk, 1);
    s_expect_fail(sb.data, sb.size, "not a map");
    msgpack_sbuffer_destroy(&sb);

    /* non-string key */
    s_expect_fail("\x81\x01\x02", 3, "non-string key");

    /* more than 64 keys */
    msgpack_sbuffer_init(&sb);
    msgpack_pack_map(&pk, 65);
    for (int i = 0; i < 65; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        s_kv_int(&pk, key, i);
    }
    s_expect_fail(sb.data, sb.size, "too many keys");
    msgpack_sbuffer_destroy(&sb);
}

static void test_reject_version(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 3, 2, "CREDIT");
    s_kv_int(&pk, "credit", 1);
    s_expect_fail(sb.data, sb.size, "unsupported protocol version 2");
    msgpack_sbuffer_destroy(&sb);

    s_begin(&sb, &pk, 3, -1, "CREDIT");
    s_kv_int(&pk, "credit", 1);
    s_expect_fail(sb.data, sb.size, "unsupported protocol version -1");
    msgpack_sbuffer_destroy(&sb);

    msgpack_sbuffer_init(&sb);
    msgpack_pack_map(&pk, 2);
    s_kv_str(&pk, "t", "CREDIT");
    s_kv_int(&pk, "credit", 1);
    s_expect_fail(sb.data, sb.size, "missing protocol version");
    msgpack_sbuffer_destroy(&sb);

    msgpack_sbuffer_init(&sb);
    msgpack_pack_map(&pk, 1);
    s_kv_str(&pk, "v", "1");
    s_expect_fail(sb.data, sb.size, "'v': expected integer");
    msgpack_sbuffer_destroy(&sb);
}

static void test_reject_type(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 2, BF_PROTO_VERSION, "BOGUS");
    s_expect_fail(sb.data, sb.size, "unknown message type 'BOGUS'");
    msgpack_sbuffer_destroy(&sb);

    s_begin(&sb, &pk, 2, BF_PROTO_VERSION, "lease"); /* case matters */
    s_expect_fail(sb.data, sb.size, "unknown message type");
    msgpack_sbuffer_destroy(&sb);

    s_begin(&sb, &pk, 2, BF_PROTO_VERSION, "NONE");
    s_expect_fail(sb.data, sb.size, "unknown message type");
    msgpack_sbuffer_destroy(&sb);

    msgpack_sbuffer_init(&sb);
    msgpack_pack_map(&pk, 1);
    s_kv_int(&pk, "v", BF_PROTO_VERSION);
    s_expect_fail(sb.data, sb.size, "missing message type");
    msgpack_sbuffer_destroy(&sb);

    msgpack_sbuffer_init(&sb);
    msgpack_pack_map(&pk, 2);
    s_kv_int(&pk, "v", BF_PROTO_VERSION);
    s_kv_int(&pk, "t", 4);
    s_expect_fail(sb.data, sb.size, "'t': expected string");
    msgpack_sbuffer_destroy(&sb);
}

static void test_reject_field_type(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 5, BF_PROTO_VERSION, "DONE");
    s_kv_int(&pk, "range_id", 1);
    s_kv_int(&pk, "token", 2);
    s_kv_str(&pk, "rows", "12");
    s_expect_fail(sb.data, sb.size, "DONE: field 'rows': expected integer");
    msgpack_sbuffer_destroy(&sb);

    s_begin(&sb, &pk, 3, BF_PROTO_VERSION, "HELLO");
    s_kv_int(&pk, "worker_id", 1);
    s_expect_fail(sb.data, sb.size, "HELLO: field 'worker_id': expected string");
    msgpack_sbuffer_destroy(&sb);

    s_begin(&sb, &pk, 3, BF_PROTO_VERSION, "DRAIN");
    s_kv_int(&pk, "done", 1);
    s_expect_fail(sb.data, sb.size, "DRAIN: field 'done': expected boolean");
    msgpack_sbuffer_destroy(&sb);

    s_begin(&sb, &pk, 3, BF_PROTO_VERSION, "CREDIT");
    s_pack_s(&pk, "credit");
    msgpack_pack_uint64(&pk, UINT64_MAX);
    s_expect_fail(sb.data, sb.size, "out of range");
    msgpack_sbuffer_destroy(&sb);

    s_begin(&sb, &pk, 4, BF_PROTO_VERSION, "CREDIT");
    s_kv_int(&pk, "credit", 1);
    s_kv_str(&pk, "sid", "x");
    s_expect_fail(sb.data, sb.size, "'sid'");
    msgpack_sbuffer_destroy(&sb);

    s_begin(&sb, &pk, 4, BF_PROTO_VERSION, "CREDIT");
    s_kv_int(&pk, "credit", 1);
    s_kv_int(&pk, "credit", 2);
    s_expect_fail(sb.data, sb.size, "duplicate field 'credit'");
    msgpack_sbuffer_destroy(&sb);
}

static void test_reject_negative(void **state)
{
    (void)state;
    const char *fields[] = {"range_id", "token", "table", "seq"};
    for (int bad = 0; bad < 4; bad++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        s_begin(&sb, &pk, 8, BF_PROTO_VERSION, "LEASE");
        for (int i = 0; i < 4; i++)
            s_kv_int(&pk, fields[i], i == bad ? -5 : 1);
        s_pack_s(&pk, "lo");
        msgpack_pack_nil(&pk);
        s_pack_s(&pk, "hi");
        msgpack_pack_nil(&pk);
        char want[64];
        snprintf(want, sizeof want, "LEASE: field '%s': negative", fields[bad]);
        s_expect_fail(sb.data, sb.size, want);
        msgpack_sbuffer_destroy(&sb);
    }

    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 3, BF_PROTO_VERSION, "CREDIT");
    s_kv_int(&pk, "credit", INT64_MIN);
    s_expect_fail(sb.data, sb.size, "negative");
    msgpack_sbuffer_destroy(&sb);
}

static void test_reject_missing(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 7, BF_PROTO_VERSION, "LEASE");
    s_kv_int(&pk, "range_id", 1);
    s_kv_int(&pk, "table", 1);
    s_kv_int(&pk, "seq", 1);
    s_kv_str(&pk, "lo", "a");
    s_kv_str(&pk, "hi", "b");
    s_expect_fail(sb.data, sb.size, "LEASE: missing field 'token'");
    msgpack_sbuffer_destroy(&sb);

    struct {
        const char *type, *want;
    } cases[] = {
        {"HELLO", "HELLO: missing field 'worker_id'"},
        {"WELCOME", "WELCOME: missing field 'heartbeat_ms'"},
        {"CREDIT", "CREDIT: missing field 'credit'"},
        {"DONE", "DONE: missing field 'range_id'"},
        {"FAIL", "FAIL: missing field 'range_id'"},
        {"ERR", "ERR: missing field 'code'"},
        {"SHRINK", "SHRINK: missing field 'range_id'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_begin(&sb, &pk, 2, BF_PROTO_VERSION, cases[i].type);
        s_expect_fail(sb.data, sb.size, cases[i].want);
        msgpack_sbuffer_destroy(&sb);
    }

    /* FAIL without code */
    s_begin(&sb, &pk, 4, BF_PROTO_VERSION, "FAIL");
    s_kv_int(&pk, "range_id", 1);
    s_kv_int(&pk, "token", 1);
    s_expect_fail(sb.data, sb.size, "FAIL: missing field 'code'");
    msgpack_sbuffer_destroy(&sb);
}

static void test_reject_strings(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 3, BF_PROTO_VERSION, "HELLO");
    s_pack_s(&pk, "worker_id");
    msgpack_pack_str(&pk, 5);
    msgpack_pack_str_body(&pk, "ab\0cd", 5);
    s_expect_fail(sb.data, sb.size, "NUL");
    msgpack_sbuffer_destroy(&sb);

    size_t n = (size_t)BF_PROTO_MAX_STR + 1;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'j', n);
    s_begin(&sb, &pk, 6, BF_PROTO_VERSION, "WELCOME");
    s_kv_int(&pk, "heartbeat_ms", 1);
    s_kv_int(&pk, "liveness", 1);
    s_kv_int(&pk, "lease_ttl_ms", 1);
    s_pack_s(&pk, "job");
    msgpack_pack_str(&pk, n);
    msgpack_pack_str_body(&pk, big, n);
    s_expect_fail(sb.data, sb.size, "WELCOME: field 'job': string too long");
    msgpack_sbuffer_destroy(&sb);
    free(big);
}

/* Starts a WELCOME whose last key is env; the caller packs its value. */
static void s_welcome_env(msgpack_sbuffer *sb, msgpack_packer *pk)
{
    s_begin(sb, pk, 7, BF_PROTO_VERSION, "WELCOME");
    s_kv_int(pk, "heartbeat_ms", 1);
    s_kv_int(pk, "liveness", 1);
    s_kv_int(pk, "lease_ttl_ms", 1);
    s_kv_str(pk, "job", "j");
    s_pack_s(pk, "env");
}

static void test_reject_env(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_welcome_env(&sb, &pk);
    s_pack_s(&pk, "A=1");
    s_expect_fail(sb.data, sb.size, "WELCOME: field 'env': expected map");
    msgpack_sbuffer_destroy(&sb);

    s_welcome_env(&sb, &pk);
    msgpack_pack_map(&pk, 2);
    s_kv_str(&pk, "A", "1");
    s_kv_int(&pk, "B", 2);
    s_expect_fail(sb.data, sb.size, "value of 'B': expected string");
    msgpack_sbuffer_destroy(&sb);

    s_welcome_env(&sb, &pk);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_int(&pk, 1);
    s_pack_s(&pk, "x");
    s_expect_fail(sb.data, sb.size, "name 0: expected string");
    msgpack_sbuffer_destroy(&sb);

    s_welcome_env(&sb, &pk);
    msgpack_pack_map(&pk, 2);
    s_kv_str(&pk, "A", "1");
    s_kv_str(&pk, "A", "2");
    s_expect_fail(sb.data, sb.size, "duplicate name 'A'");
    msgpack_sbuffer_destroy(&sb);

    s_welcome_env(&sb, &pk);
    msgpack_pack_map(&pk, 1);
    s_kv_str(&pk, "", "1");
    s_expect_fail(sb.data, sb.size, "bad name");
    msgpack_sbuffer_destroy(&sb);

    s_welcome_env(&sb, &pk);
    msgpack_pack_map(&pk, 257);
    for (int i = 0; i < 257; i++) {
        char key[16];
        snprintf(key, sizeof key, "V%d", i);
        s_kv_str(&pk, key, "x");
    }
    s_expect_fail(sb.data, sb.size, "too many entries");
    msgpack_sbuffer_destroy(&sb);
}

static void test_reject_huge_lengths(void **state)
{
    (void)state;
    /* 10-byte frames whose headers claim gigabytes */
    const char *frames[] = {
        "\x81\xa1v\xdb\xff\xff\xff\xff\x00\x00", /* str32 */
        "\xdf\xff\xff\xff\xff\xa1v\x01\x00\x00", /* map32 */
        "\x81\xa1v\xdd\xff\xff\xff\xff\x00\x00", /* array32 */
        "\x81\xa1v\xc6\xff\xff\xff\xff\x00\x00", /* bin32 */
        "\x81\xa1v\xc9\xff\xff\xff\xff\x01\x00", /* ext32 */
        "\x81\xa1v\xde\xff\xff\x00\x00\x00\x00", /* map16 */
        "\xdb\xff\xff\xff\xff\x00\x00\x00\x00\x00",
    };
    for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++)
        s_expect_fail(frames[i], 10, "truncated");

    /* nested containers each claiming nearly all remaining bytes */
    char nest[64];
    for (size_t i = 0; i < sizeof nest; i += 4) {
        nest[i] = (char)0xdc;
        nest[i + 1] = 0x00;
        nest[i + 2] = 0x3c;
        nest[i + 3] = (char)0x81;
    }
    s_expect_fail(nest, sizeof nest, "truncated");
}

static void test_reject_deep_nesting(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 4, BF_PROTO_VERSION, "CREDIT");
    s_kv_int(&pk, "credit", 1);
    s_pack_s(&pk, "deep");
    for (int i = 0; i < 40; i++)
        msgpack_pack_array(&pk, 1);
    msgpack_pack_nil(&pk);
    s_expect_fail(sb.data, sb.size, "nested too deep");
    msgpack_sbuffer_destroy(&sb);
}

static void test_reject_too_many_objects(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    s_begin(&sb, &pk, 4, BF_PROTO_VERSION, "CREDIT");
    s_kv_int(&pk, "credit", 1);
    s_pack_s(&pk, "many");
    msgpack_pack_array(&pk, 70000);
    for (int i = 0; i < 70000; i++)
        msgpack_pack_nil(&pk);
    s_expect_fail(sb.data, sb.size, "too many msgpack objects");
    msgpack_sbuffer_destroy(&sb);
}

static void test_reject_trailing(void **state)
{
    (void)state;
    bf_msg_t m = s_lease();
    char *buf;
    size_t len;
    assert_int_equal(bf_msg_encode(&m, &buf, &len), 0);
    char *p = malloc(len + 1);
    assert_non_null(p);
    memcpy(p, buf, len);
    p[len] = 0x00;
    s_expect_fail(p, len + 1, "trailing");
    free(p);
    free(buf);
}

static void test_err_always_terminated(void **state)
{
    (void)state;
    bf_msg_t m;
    char err[6];
    memset(err, 'x', sizeof err);
    assert_int_equal(bf_msg_decode("\xc1", 1, &m, err, sizeof err), -1);
    assert_int_equal(err[5], '\0');
    assert_int_equal(bf_msg_decode("\xc1", 1, &m, NULL, 0), -1);
}

/* ---- never crash ------------------------------------------------------- */

/* Decoded messages must re-encode and decode to the same thing. */
static void s_decode_any(const uint8_t *buf, size_t len)
{
    bf_msg_t m;
    char err[256];
    if (bf_msg_decode(buf, len, &m, err, sizeof err)) {
        assert_non_null(memchr(err, '\0', sizeof err));
        return;
    }
    char *again;
    size_t alen;
    assert_int_equal(bf_msg_encode(&m, &again, &alen), 0);
    bf_msg_t m2;
    assert_int_equal(bf_msg_decode(again, alen, &m2, err, sizeof err), 0);
    s_msg_eq(&m, &m2);
    bf_msg_clear(&m2);
    bf_msg_clear(&m);
    free(again);
}

static void test_random_buffers(void **state)
{
    (void)state;
    uint64_t st = 0x9E3779B97F4A7C15ULL;
    uint8_t buf[96];
    for (int i = 0; i < 100000; i++) {
        size_t len = s_rand(&st) % (sizeof buf + 1);
        for (size_t j = 0; j < len; j++)
            buf[j] = (uint8_t)s_rand(&st);
        if (len && (i & 1))
            buf[0] = (uint8_t)(0x80 | (buf[0] & 0x0f)); /* often a fixmap */
        s_decode_any(buf, len);
    }
}

static void test_mutations(void **state)
{
    (void)state;
    char *names[] = {S("A"), S("B")};
    char *values[] = {S("1"), S("2")};
    bf_msg_t seeds[5];
    seeds[0] = s_lease();
    seeds[1] = (bf_msg_t){.type = BF_MSG_WELCOME, .heartbeat_ms = 1, .liveness = 2, .job = S("j")};
    seeds[1].lease_ttl_ms = 3;
    seeds[1].env_names = names;
    seeds[1].env_values = values;
    seeds[1].nenv = 2;
    seeds[2] = (bf_msg_t){.type = BF_MSG_HELLO, .worker_id = S("w"), .host = S("h"), .pid = 200};
    seeds[3] = (bf_msg_t){.type = BF_MSG_FAIL, .range_id = 1, .token = 1, .code = S("X")};
    seeds[3].retryable = true;
    seeds[4] = (bf_msg_t){.type = BF_MSG_DRAIN, .done = true, .sid = 300};
    char *enc[5];
    size_t elen[5];
    for (int i = 0; i < 5; i++)
        assert_int_equal(bf_msg_encode(&seeds[i], &enc[i], &elen[i]), 0);

    uint64_t st = 12345;
    for (int i = 0; i < 100000; i++) {
        int k = (int)(s_rand(&st) % 5);
        uint8_t *p = malloc(elen[k]);
        assert_non_null(p);
        memcpy(p, enc[k], elen[k]);
        p[s_rand(&st) % elen[k]] = (uint8_t)s_rand(&st);
        s_decode_any(p, elen[k]);
        free(p);
    }
    for (int i = 0; i < 5; i++)
        free(enc[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_hello),
        cmocka_unit_test(test_roundtrip_welcome),
        cmocka_unit_test(test_roundtrip_lease),
        cmocka_unit_test(test_roundtrip_others),
        cmocka_unit_test(test_foreign_fields_dropped),
        cmocka_unit_test(test_hello_without_fv),
        cmocka_unit_test(test_unknown_keys_ignored),
        cmocka_unit_test(test_signed_encoded_positive),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_encode_rejects),
        cmocka_unit_test(test_reject_empty),
        cmocka_unit_test(test_reject_too_large),
        cmocka_unit_test(test_reject_random_bytes),
        cmocka_unit_test(test_reject_truncated),
        cmocka_unit_test(test_reject_top_level),
        cmocka_unit_test(test_reject_version),
        cmocka_unit_test(test_reject_type),
        cmocka_unit_test(test_reject_field_type),
        cmocka_unit_test(test_reject_negative),
        cmocka_unit_test(test_reject_missing),
        cmocka_unit_test(test_reject_strings),
        cmocka_unit_test(test_reject_env),
        cmocka_unit_test(test_reject_huge_lengths),
        cmocka_unit_test(test_reject_deep_nesting),
        cmocka_unit_test(test_reject_too_many_objects),
        cmocka_unit_test(test_reject_trailing),
        cmocka_unit_test(test_err_always_terminated),
        cmocka_unit_test(test_random_buffers),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

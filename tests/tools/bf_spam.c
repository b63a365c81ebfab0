/* bf_spam ENDPOINT COUNT [SEED]: sends COUNT hostile frames to a coordinator's ROUTER
 * from a few DEALER sockets, cycling through kinds of malformed or unauthorised
 * messages (see s_kinds below), then exits 0 after printing "sent N frames". Used by
 * tests/integration/test_hostile_frames.sh: the coordinator must drop them all,
 * log the drops rate-limited, and keep serving its real workers.
 *
 * It never reads what the coordinator answers (so it never learns a session id),
 * sends with ZMQ_DONTWAIT and waits a bounded time for room when a queue is full,
 * and lingers 2 s at exit so that queued frames reach the coordinator. */
#include "proto.h"
#include "rstate.h"

#include <errno.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define NSOCKS 4
#define MAX_RANDOM 4096
#define LINGER_MS 2000
#define SEND_WAIT_MS 1000 /* per frame, when the send queue is full */
#define DEADLINE_MS 60000 /* for the whole run */

static uint64_t s_rng;

static uint64_t s_rand(void)
{
    /* xorshift64*: reproducible from the seed printed at start */
    s_rng ^= s_rng >> 12;
    s_rng ^= s_rng << 25;
    s_rng ^= s_rng >> 27;
    return s_rng * 0x2545F4914F6CDD1DULL;
}

static size_t s_below(size_t n)
{
    return n ? (size_t)(s_rand() % n) : 0;
}

static long long s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- frames ------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len;
} frame_t;

static void s_frame_random(frame_t *f, size_t len)
{
    f->data = malloc(len ? len : 1);
    f->len = len;
    for (size_t i = 0; i < len; i++)
        f->data[i] = (char)s_rand();
}

static void s_frame_bytes(frame_t *f, const void *p, size_t len)
{
    f->data = malloc(len ? len : 1);
    f->len = len;
    if (len)
        memcpy(f->data, p, len);
}

static void s_frame_sbuf(frame_t *f, msgpack_sbuffer *sb)
{
    f->len = sb->size;
    f->data = msgpack_sbuffer_release(sb);
    if (!f->data)
        f->data = malloc(1);
}

/* A valid message of a worker's (or, when any, any) type with plausible fields and
 * a made-up session. Encoded with the project's encoder, so only what the test
 * wants to be wrong is wrong. */
static void s_frame_valid(frame_t *f, bf_msg_type_t type)
{
    bf_msg_t m = {.type = type, .sid = s_rand() | 1, .ep = 1 + s_below(1000)};
    switch (type) {
    case BF_MSG_HELLO:
        m.worker_id = (char *)"bf-spam";
        m.host = (char *)"spam.invalid";
        m.version = (char *)"0.0.0-spam";
        m.fv = bf_rstate_functions_version(); /* a release the coordinator accepts */
        m.pid = (int64_t)getpid();
        m.credit = 1;
        m.sid = 0;
        m.ep = 0;
        break;
    case BF_MSG_WELCOME:
        m.heartbeat_ms = 1;
        m.liveness = 1;
        m.lease_ttl_ms = 1;
        m.job = (char *)"name: spam\n";
        break;
    case BF_MSG_CREDIT:
        m.credit = (int64_t)s_below(1000);
        break;
    case BF_MSG_LEASE:
        m.lo = (char *)"1";
        m.hi = (char *)"1000";
        m.cursor = (char *)"500";
        m.has_lo = m.has_hi = m.has_cursor = true;
        m.table = 0;
        m.seq = 1;
        /* fall through */
    case BF_MSG_DONE:
    case BF_MSG_PROGRESS:
    case BF_MSG_REVOKE:
    case BF_MSG_SHRINK:
        m.range_id = (int64_t)s_below(100);
        m.token = (int64_t)(s_rand() >> 1);
        m.rows = 1000;
        m.bytes = 100000;
        break;
    case BF_MSG_FAIL:
        /* a non-retryable failure: accepted, it would stop the whole job */
        m.range_id = (int64_t)s_below(100);
        m.token = (int64_t)(s_rand() >> 1);
        m.code = (char *)"DATA";
        m.message = (char *)"bf_spam: made-up failure";
        m.retryable = false;
        break;
    case BF_MSG_HEARTBEAT:
        m.leases = 8;
        m.rows = 1;
        break;
    case BF_MSG_NOWORK:
        m.retry_after_ms = 1;
        break;
    case BF_MSG_DRAIN:
        m.done = true;
        break;
    case BF_MSG_ERR:
        m.code = (char *)"BAD_PROTO";
        break;
    default:
        break;
    }
    if (bf_msg_encode(&m, &f->data, &f->len) != 0) {
        fprintf(stderr, "bf_spam: cannot encode %s\n", bf_msg_type_name(type));
        exit(1);
    }
}

static void s_pack_cstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* Field kinds, for picking a value the decoder must refuse. */
typedef enum { F_INT, F_ID, F_STR, F_BOOL } fkind_t; /* F_ID: sid, ep (any uint64) */

typedef struct {
    const char *key;
    fkind_t kind;
} wfield_t;

/* Packs a value that is wrong for a field of kind k. */
static void s_pack_wrong(msgpack_packer *pk, fkind_t k)
{
    for (;;) {
        switch (s_below(9)) {
        case 0:
            msgpack_pack_nil(pk);
            return;
        case 1:
            if (k == F_BOOL)
                continue;
            msgpack_pack_true(pk);
            return;
        case 2: /* negative: refused for every integer field, sid and ep included */
            msgpack_pack_int64(pk, -(int64_t)s_below(1000) - 1);
            return;
        case 3:
            msgpack_pack_double(pk, 1.5);
            return;
        case 4:
            if (k == F_STR)
                continue;
            s_pack_cstr(pk, "12");
            return;
        case 5:
            msgpack_pack_array(pk, 2);
            msgpack_pack_int(pk, 1);
            msgpack_pack_int(pk, 2);
            return;
        case 6:
            msgpack_pack_map(pk, 1);
            s_pack_cstr(pk, "k");
            msgpack_pack_nil(pk);
            return;
        case 7:
            msgpack_pack_bin(pk, 3);
            msgpack_pack_bin_body(pk, "abc", 3);
            return;
        default:
            if (k == F_STR) { /* a string with a NUL byte inside */
                msgpack_pack_str(pk, 3);
                msgpack_pack_str_body(pk, "a\0b", 3);
            } else if (k == F_INT) { /* beyond int64 */
                msgpack_pack_uint64(pk, (uint64_t)INT64_MAX + 1 + s_below(1000));
            } else {
                msgpack_pack_int(pk, -1);
            }
            return;
        }
    }
}

static void s_pack_right(msgpack_packer *pk, const wfield_t *f)
{
    if (strcmp(f->key, "v") == 0)
        msgpack_pack_int(pk, BF_PROTO_VERSION);
    else if (f->kind == F_INT || f->kind == F_ID)
        msgpack_pack_uint64(pk, s_rand() >> 1);
    else if (f->kind == F_BOOL)
        msgpack_pack_false(pk);
    else
        s_pack_cstr(pk, "x");
}

/* A worker's message with every field it reads present and one of them (possibly
 * v, sid or ep; t gets a non-string) of the wrong type, so the decoder must refuse
 * it. Unknown keys are ignored by design, so only fields the type reads are bad. */
static void s_frame_wrong_types(frame_t *f)
{
    static const wfield_t common[] = {{"v", F_INT}, {"t", F_STR}, {"sid", F_ID}, {"ep", F_ID}};
    static const struct {
        const char *type;
        wfield_t fields[4];
        size_t n;
    } types[] = {
        {"HELLO", {{"worker_id", F_STR}, {"host", F_STR}, {"pid", F_INT}, {"credit", F_INT}}, 4},
        {"CREDIT", {{"credit", F_INT}}, 1},
        {"DONE", {{"range_id", F_INT}, {"token", F_INT}, {"rows", F_INT}, {"bytes", F_INT}}, 4},
        {"FAIL",
         {{"range_id", F_INT}, {"token", F_INT}, {"code", F_STR}, {"retryable", F_BOOL}},
         4},
        {"HEARTBEAT", {{"leases", F_INT}, {"rows", F_INT}, {"bytes", F_INT}}, 3},
        {"PROGRESS", {{"range_id", F_INT}, {"token", F_INT}, {"rows", F_INT}}, 3},
    };
    size_t ti = s_below(sizeof types / sizeof types[0]);
    size_t ncommon = sizeof common / sizeof common[0], n = ncommon + types[ti].n;
    size_t bad = s_below(n);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n);
    for (size_t i = 0; i < n; i++) {
        const wfield_t *fl = i < ncommon ? &common[i] : &types[ti].fields[i - ncommon];
        s_pack_cstr(&pk, fl->key);
        if (i == 1 && i != bad)
            s_pack_cstr(&pk, types[ti].type);
        else if (i == 1) /* t: any non-string */
            s_pack_wrong(&pk, F_STR);
        else if (i == bad)
            s_pack_wrong(&pk, fl->kind);
        else
            s_pack_right(&pk, fl);
    }
    s_frame_sbuf(f, &sb);
}

/* {"v":V,"t":T,"sid":1,"ep":1} with the given (possibly wrong) version or type. */
static void s_frame_header(frame_t *f, int vkind, const char *type)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    s_pack_cstr(&pk, "v");
    switch (vkind) {
    case 0:
        msgpack_pack_int(&pk, BF_PROTO_VERSION);
        break;
    case 1:
        msgpack_pack_int(&pk, 0);
        break;
    case 2:
        msgpack_pack_int(&pk, BF_PROTO_VERSION + 1);
        break;
    case 3:
        msgpack_pack_int(&pk, -1);
        break;
    case 4:
        msgpack_pack_uint64(&pk, UINT64_MAX);
        break;
    default:
        s_pack_cstr(&pk, "1");
        break;
    }
    s_pack_cstr(&pk, "t");
    s_pack_cstr(&pk, type);
    s_pack_cstr(&pk, "sid");
    msgpack_pack_uint64(&pk, 1);
    s_pack_cstr(&pk, "ep");
    msgpack_pack_uint64(&pk, 1);
    s_pack_cstr(&pk, "worker_id");
    s_pack_cstr(&pk, "bf-spam");
    s_frame_sbuf(f, &sb);
}

/* A declared length or count far beyond the frame, at the top or inside a map. */
static void s_frame_huge_length(frame_t *f)
{
    static const uint8_t heads[] = {0xdb, 0xc6, 0xc9, 0xdd, 0xdf, 0xda, 0xdc, 0xde, 0xd9, 0xc4};
    uint8_t buf[64];
    size_t n = 0;
    if (s_below(2)) { /* {"v":1,"t":<huge>} */
        static const uint8_t pre[] = {0x82, 0xa1, 'v', 0x01, 0xa1, 't'};
        memcpy(buf, pre, sizeof pre);
        n = sizeof pre;
    }
    uint8_t h = heads[s_below(sizeof heads)];
    buf[n++] = h;
    size_t lenbytes = (h == 0xd9 || h == 0xc4) ? 1 : (h == 0xda || h == 0xdc || h == 0xde) ? 2 : 4;
    for (size_t i = 0; i < lenbytes; i++)
        buf[n++] = s_below(4) ? 0xff : (uint8_t)s_rand();
    if (h == 0xc9)
        buf[n++] = 0x01; /* ext type */
    size_t tail = s_below(16);
    for (size_t i = 0; i < tail; i++)
        buf[n++] = (uint8_t)s_rand();
    s_frame_bytes(f, buf, n);
}

/* A top-level array (or another non-map) holding what a message would. */
static void s_frame_not_map(frame_t *f)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    switch (s_below(4)) {
    case 0:
        msgpack_pack_array(&pk, 4);
        msgpack_pack_int(&pk, BF_PROTO_VERSION);
        s_pack_cstr(&pk, "HELLO");
        msgpack_pack_int(&pk, 0);
        msgpack_pack_int(&pk, 0);
        break;
    case 1:
        msgpack_pack_array(&pk, 0);
        break;
    case 2:
        s_pack_cstr(&pk, "HELLO");
        break;
    default:
        msgpack_pack_nil(&pk);
        break;
    }
    s_frame_sbuf(f, &sb);
}

/* Structural oddities: duplicate keys, deep nesting, too many objects, non-string
 * keys, trailing bytes, two messages in one frame, env with bad names. */
static void s_frame_structure(frame_t *f)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    switch (s_below(6)) {
    case 0: /* duplicate "t" */
        msgpack_pack_map(&pk, 3);
        s_pack_cstr(&pk, "v");
        msgpack_pack_int(&pk, BF_PROTO_VERSION);
        s_pack_cstr(&pk, "t");
        s_pack_cstr(&pk, "CREDIT");
        s_pack_cstr(&pk, "t");
        s_pack_cstr(&pk, "HELLO");
        break;
    case 1: { /* nested 40 deep under an unknown key */
        msgpack_pack_map(&pk, 3);
        s_pack_cstr(&pk, "v");
        msgpack_pack_int(&pk, BF_PROTO_VERSION);
        s_pack_cstr(&pk, "t");
        s_pack_cstr(&pk, "HEARTBEAT");
        s_pack_cstr(&pk, "x");
        for (int i = 0; i < 40; i++)
            msgpack_pack_array(&pk, 1);
        msgpack_pack_nil(&pk);
        break;
    }
    case 2: /* 70000 tiny objects */
        msgpack_pack_map(&pk, 3);
        s_pack_cstr(&pk, "v");
        msgpack_pack_int(&pk, BF_PROTO_VERSION);
        s_pack_cstr(&pk, "t");
        s_pack_cstr(&pk, "HEARTBEAT");
        s_pack_cstr(&pk, "x");
        msgpack_pack_array(&pk, 70000);
        for (int i = 0; i < 70000; i++)
            msgpack_pack_nil(&pk);
        break;
    case 3: /* integer key */
        msgpack_pack_map(&pk, 2);
        msgpack_pack_int(&pk, 1);
        msgpack_pack_int(&pk, BF_PROTO_VERSION);
        s_pack_cstr(&pk, "t");
        s_pack_cstr(&pk, "HEARTBEAT");
        break;
    case 4: { /* a valid message, then trailing bytes or a second message */
        frame_t v;
        s_frame_valid(&v, BF_MSG_HEARTBEAT);
        msgpack_sbuffer_write(&sb, v.data, v.len);
        if (s_below(2))
            msgpack_sbuffer_write(&sb, v.data, v.len);
        else
            msgpack_pack_nil(&pk);
        free(v.data);
        break;
    }
    default: /* WELCOME-like env with a bad name, from a worker */
        msgpack_pack_map(&pk, 7);
        s_pack_cstr(&pk, "v");
        msgpack_pack_int(&pk, BF_PROTO_VERSION);
        s_pack_cstr(&pk, "t");
        s_pack_cstr(&pk, "WELCOME");
        s_pack_cstr(&pk, "heartbeat_ms");
        msgpack_pack_int(&pk, 1);
        s_pack_cstr(&pk, "liveness");
        msgpack_pack_int(&pk, 1);
        s_pack_cstr(&pk, "lease_ttl_ms");
        msgpack_pack_int(&pk, 1);
        s_pack_cstr(&pk, "job");
        s_pack_cstr(&pk, "x");
        s_pack_cstr(&pk, "env");
        msgpack_pack_map(&pk, 1);
        s_pack_cstr(&pk, "A=B");
        s_pack_cstr(&pk, "c");
        break;
    }
    s_frame_sbuf(f, &sb);
}

static const bf_msg_type_t s_truncatable[] = {BF_MSG_HELLO, BF_MSG_LEASE, BF_MSG_DONE,
                                              BF_MSG_CREDIT, BF_MSG_FAIL};
static const bf_msg_type_t s_made_up[] = {BF_MSG_DONE, BF_MSG_FAIL, BF_MSG_CREDIT, BF_MSG_HEARTBEAT,
                                          BF_MSG_PROGRESS};
static const bf_msg_type_t s_coord_only[] = {BF_MSG_WELCOME, BF_MSG_LEASE,  BF_MSG_NOWORK,
                                             BF_MSG_REVOKE,  BF_MSG_SHRINK, BF_MSG_DRAIN,
                                             BF_MSG_ERR};
#define S_PICK(arr) arr[s_below(sizeof arr / sizeof arr[0])]

/* ---- sending ----------------------------------------------------------- */

typedef struct {
    void *sock[NSOCKS];
    bool said_hello[NSOCKS];
    long long deadline;
    unsigned long sent, skipped;
} spam_t;

/* Sends one part without blocking; when the queue is full, waits a bounded time
 * for room. Returns 0 or -1 (not sent). */
static int s_send_part(spam_t *s, void *sock, const frame_t *f, int flags)
{
    for (;;) {
        if (zmq_send(sock, f->data, f->len, flags | ZMQ_DONTWAIT) >= 0)
            return 0;
        if (zmq_errno() != EAGAIN && zmq_errno() != EINTR)
            return -1;
        long long left = s->deadline - s_now_ms();
        if (left <= 0)
            return -1;
        zmq_pollitem_t item = {.socket = sock, .events = ZMQ_POLLOUT};
        if (zmq_poll(&item, 1, left < SEND_WAIT_MS ? (long)left : SEND_WAIT_MS) <= 0)
            return -1;
    }
}

/* Sends nparts frames as one message; frees them. Counts one frame sent. */
static void s_send(spam_t *s, int si, frame_t *parts, int nparts)
{
    int rc = 0;
    for (int i = 0; i < nparts && rc == 0; i++)
        rc = s_send_part(s, s->sock[si], &parts[i], i + 1 < nparts ? ZMQ_SNDMORE : 0);
    if (rc == 0)
        s->sent++;
    else
        s->skipped++;
    /* A message cut off after SNDMORE parts is completed (or dropped) by the next
     * send on that socket; nothing more to do here. */
    for (int i = 0; i < nparts; i++)
        free(parts[i].data);
}

enum {
    K_RANDOM,
    K_TRUNCATED,
    K_HUGE_LENGTH,
    K_WRONG_TYPES,
    K_BOGUS_TYPE,
    K_BAD_VERSION,
    K_NOT_MAP,
    K_MULTI_FRAME,
    K_MADE_UP_SESSION,
    K_HELLO_GARBAGE,
    K_COORD_ONLY,
    K_STRUCTURE,
    K__COUNT
};

/* The tool checks itself: a frame meant to be malformed must be refused by the
 * decoder (else the test would not test what it says), and a well-formed one with
 * a made-up session must be accepted (so that the session check is what stops it). */
static void s_check(int kind, const frame_t *f, bool want_ok)
{
    bf_msg_t m;
    char err[256];
    int rc = bf_msg_decode(f->data, f->len, &m, err, sizeof err);
    bf_msg_clear(&m);
    if ((rc == 0) != want_ok) {
        fprintf(stderr, "bf_spam: frame of kind %d (%zu bytes) was %s by the decoder%s%s\n", kind,
                f->len, rc == 0 ? "accepted" : "refused", rc ? ": " : "", rc ? err : "");
        exit(1);
    }
}

static void s_send_kind(spam_t *s, int kind, int si)
{
    frame_t parts[3];
    int nparts = 1;
    int check = 1; /* 1: must be refused, 0: must be accepted, -1: no check */
    switch (kind) {
    case K_RANDOM:
        s_frame_random(&parts[0], s_below(MAX_RANDOM + 1));
        break;
    case K_TRUNCATED: {
        frame_t v;
        s_frame_valid(&v, S_PICK(s_truncatable));
        s_frame_bytes(&parts[0], v.data, s_below(v.len)); /* 0 .. len-1 bytes */
        free(v.data);
        break;
    }
    case K_HUGE_LENGTH:
        s_frame_huge_length(&parts[0]);
        break;
    case K_WRONG_TYPES:
        s_frame_wrong_types(&parts[0]);
        break;
    case K_BOGUS_TYPE:
        s_frame_header(&parts[0], 0, s_below(2) ? "BOGUS" : "hello");
        break;
    case K_BAD_VERSION:
        s_frame_header(&parts[0], 1 + (int)s_below(5), "HELLO");
        break;
    case K_NOT_MAP:
        s_frame_not_map(&parts[0]);
        break;
    case K_MULTI_FRAME:
        nparts = 2 + (int)s_below(2);
        check = -1; /* refused for its frame count, whatever the frames hold */
        for (int i = 0; i < nparts; i++)
            if (s_below(2))
                s_frame_valid(&parts[i], S_PICK(s_made_up));
            else
                s_frame_random(&parts[i], s_below(64));
        break;
    case K_MADE_UP_SESSION:
        s_frame_valid(&parts[0], S_PICK(s_made_up));
        check = 0;
        break;
    case K_HELLO_GARBAGE:
        /* Every accepted HELLO is a join (logged, and given a lease for its credit
         * of 1 that it never works on), so each socket says HELLO once; later
         * slots are garbage from a peer that joined. */
        if (!s->said_hello[si]) {
            s->said_hello[si] = true;
            s_frame_valid(&parts[0], BF_MSG_HELLO);
            check = 0;
        } else if (s_below(2)) {
            s_frame_random(&parts[0], s_below(256));
        } else { /* a valid HELLO with junk after it */
            frame_t v;
            s_frame_valid(&v, BF_MSG_HELLO);
            size_t junk = 1 + s_below(32);
            parts[0].len = v.len + junk;
            parts[0].data = malloc(parts[0].len);
            memcpy(parts[0].data, v.data, v.len);
            for (size_t i = 0; i < junk; i++)
                parts[0].data[v.len + i] = (char)s_rand();
            free(v.data);
        }
        break;
    case K_COORD_ONLY:
        s_frame_valid(&parts[0], S_PICK(s_coord_only));
        check = 0;
        break;
    default:
        s_frame_structure(&parts[0]);
        break;
    }
    if (check >= 0)
        s_check(kind, &parts[0], check == 0);
    s_send(s, si, parts, nparts);
}

/* One frame over ZMQ_MAXMSGSIZE (the coordinator disconnects that peer), from a
 * socket of its own so the other sockets' queues are not lost with it. */
static void s_send_oversized(spam_t *s, void *ctx, const char *endpoint)
{
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = LINGER_MS;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(sock, endpoint) != 0) {
        zmq_close(sock);
        return;
    }
    frame_t f;
    s_frame_random(&f, (size_t)BF_PROTO_MAX_FRAME + 1);
    f.data[0] = (char)0x80; /* an empty map, then 16 MB of trailing bytes */
    if (s_send_part(s, sock, &f, 0) == 0)
        s->sent++;
    else
        s->skipped++;
    free(f.data);
    zmq_close(sock);
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: bf_spam ENDPOINT COUNT [SEED]\n");
        return 2;
    }
    const char *endpoint = argv[1];
    char *end;
    unsigned long count = strtoul(argv[2], &end, 10);
    if (*end || argv[2][0] == '\0' || argv[2][0] == '-') {
        fprintf(stderr, "bf_spam: bad COUNT '%s'\n", argv[2]);
        return 2;
    }
    uint64_t seed =
        argc == 4 ? strtoull(argv[3], NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    s_rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    fprintf(stderr, "bf_spam: %lu frames to %s, seed %llu\n", count, endpoint,
            (unsigned long long)seed);

    void *ctx = zmq_ctx_new();
    spam_t s = {.deadline = s_now_ms() + DEADLINE_MS};
    for (int i = 0; i < NSOCKS; i++) {
        s.sock[i] = zmq_socket(ctx, ZMQ_DEALER);
        int linger = LINGER_MS;
        zmq_setsockopt(s.sock[i], ZMQ_LINGER, &linger, sizeof linger);
        if (zmq_connect(s.sock[i], endpoint) != 0) {
            fprintf(stderr, "bf_spam: cannot connect %s: %s\n", endpoint,
                    zmq_strerror(zmq_errno()));
            return 1;
        }
    }
    /* COUNT frames in all, the last one oversized; a frame that cannot be queued
     * before the deadline counts as skipped. */
    for (unsigned long n = 0; n + 1 < count && s_now_ms() < s.deadline; n++)
        s_send_kind(&s, (int)(n % K__COUNT), (int)s_below(NSOCKS));
    if (count > 0 && s_now_ms() < s.deadline)
        s_send_oversized(&s, ctx, endpoint);

    for (int i = 0; i < NSOCKS; i++)
        zmq_close(s.sock[i]);
    zmq_ctx_term(ctx); /* waits up to LINGER_MS for queued frames */
    if (s.skipped)
        fprintf(stderr, "bf_spam: %lu frames not sent (queue full or deadline)\n", s.skipped);
    printf("sent %lu frames\n", s.sent);
    return 0;
}

/* Message encoding and defensive decoding. Both directions are driven by one field
 * table per type, so whatever bf_msg_encode() produces bf_msg_decode() accepts and
 * vice versa. Before msgpack-c sees a frame, s_scan() walks it and checks every
 * declared length against the bytes really present: msgpack-c allocates arrays and
 * maps up front from the declared count, which would let a 10-byte frame ask for
 * gigabytes. */
#include "proto.h"

#include "log.h"

#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_KEYS 64       /* top-level map entries */
#define S_MAX_ENV 256       /* env map entries */
#define S_MAX_DEPTH 16      /* container nesting (unknown keys may hold anything) */
#define S_MAX_OBJECTS 65536 /* msgpack objects per frame: bounds the zone size */

typedef enum { S_INT, S_STR, S_NSTR, S_BOOL, S_ENV } s_kind_t;

typedef struct {
    const char *key;
    s_kind_t kind;
    size_t off;     /* value in bf_msg_t */
    size_t has_off; /* S_NSTR: its has_X flag */
} s_field_t;

#define S_F(name, kind)                                                                            \
    {                                                                                              \
#name, kind, offsetof(bf_msg_t, name), 0                                                   \
    }
#define S_FN(name)                                                                                 \
    {                                                                                              \
#name, S_NSTR, offsetof(bf_msg_t, name), offsetof(bf_msg_t, has_##name)                    \
    }

enum {
    F_WORKER_ID,
    F_HOST,
    F_PID,
    F_VERSION,
    F_FV,
    F_CREDIT,
    F_HEARTBEAT_MS,
    F_LIVENESS,
    F_LEASE_TTL_MS,
    F_JOB,
    F_ENV,
    F_RANGE_ID,
    F_TOKEN,
    F_TABLE,
    F_SEQ,
    F_LO,
    F_HI,
    F_CURSOR,
    F_RETRY_AFTER_MS,
    F_LEASES,
    F_ROWS,
    F_BYTES,
    F_CODE,
    F_MESSAGE,
    F_RETRYABLE,
    F_DEADLINE_MS,
    F_DONE,
    F__COUNT
};

static const s_field_t s_fields[F__COUNT] = {
    [F_WORKER_ID] = S_F(worker_id, S_STR),
    [F_HOST] = S_F(host, S_STR),
    [F_PID] = S_F(pid, S_INT),
    [F_VERSION] = S_F(version, S_STR),
    [F_FV] = S_F(fv, S_INT),
    [F_CREDIT] = S_F(credit, S_INT),
    [F_HEARTBEAT_MS] = S_F(heartbeat_ms, S_INT),
    [F_LIVENESS] = S_F(liveness, S_INT),
    [F_LEASE_TTL_MS] = S_F(lease_ttl_ms, S_INT),
    [F_JOB] = S_F(job, S_STR),
    [F_ENV] = {"env", S_ENV, 0, 0},
    [F_RANGE_ID] = S_F(range_id, S_INT),
    [F_TOKEN] = S_F(token, S_INT),
    [F_TABLE] = S_F(table, S_INT),
    [F_SEQ] = S_F(seq, S_INT),
    [F_LO] = S_FN(lo),
    [F_HI] = S_FN(hi),
    [F_CURSOR] = S_FN(cursor),
    [F_RETRY_AFTER_MS] = S_F(retry_after_ms, S_INT),
    [F_LEASES] = S_F(leases, S_INT),
    [F_ROWS] = S_F(rows, S_INT),
    [F_BYTES] = S_F(bytes, S_INT),
    [F_CODE] = S_F(code, S_STR),
    [F_MESSAGE] = S_F(message, S_STR),
    [F_RETRYABLE] = S_F(retryable, S_BOOL),
    [F_DEADLINE_MS] = S_F(deadline_ms, S_INT),
    [F_DONE] = S_F(done, S_BOOL),
};

typedef struct {
    unsigned char field;
    bool required;
} s_use_t;

typedef struct {
    const char *name;
    const s_use_t *uses;
    size_t nuses;
} s_type_t;

static const s_use_t s_hello[] = {{F_WORKER_ID, true}, {F_HOST, false}, {F_PID, false},
                                  {F_VERSION, false},  {F_FV, false},   {F_CREDIT, false}};
static const s_use_t s_welcome[] = {
    {F_HEARTBEAT_MS, true}, {F_LIVENESS, true}, {F_LEASE_TTL_MS, true}, {F_JOB, true},
    {F_ENV, false},         {F_VERSION, false}, {F_FV, false}};
static const s_use_t s_credit[] = {{F_CREDIT, true}};
static const s_use_t s_lease[] = {{F_RANGE_ID, true}, {F_TOKEN, true}, {F_TABLE, true},
                                  {F_SEQ, true},      {F_LO, true},    {F_HI, true},
                                  {F_CURSOR, false}};
static const s_use_t s_nowork[] = {{F_RETRY_AFTER_MS, false}};
static const s_use_t s_heartbeat[] = {{F_LEASES, false}, {F_ROWS, false}, {F_BYTES, false}};
static const s_use_t s_progress[] = {
    {F_RANGE_ID, true}, {F_TOKEN, true}, {F_ROWS, true}, {F_BYTES, false}};
static const s_use_t s_done[] = {
    {F_RANGE_ID, true}, {F_TOKEN, true}, {F_ROWS, true}, {F_BYTES, false}, {F_CREDIT, false}};
static const s_use_t s_fail[] = {
    {F_RANGE_ID, true}, {F_TOKEN, true}, {F_CODE, true}, {F_MESSAGE, false}, {F_RETRYABLE, false}};
static const s_use_t s_revoke[] = {{F_RANGE_ID, true}, {F_TOKEN, true}};
static const s_use_t s_shrink[] = {{F_RANGE_ID, true}, {F_TOKEN, true}, {F_CREDIT, false}};
static const s_use_t s_drain[] = {{F_DEADLINE_MS, false}, {F_DONE, false}};
static const s_use_t s_errmsg[] = {{F_CODE, true}, {F_MESSAGE, false}};

#define S_T(name, arr)                                                                             \
    {                                                                                              \
        name, arr, sizeof(arr) / sizeof(arr[0])                                                    \
    }

static const s_type_t s_types[BF_MSG__COUNT] = {
    [BF_MSG_NONE] = {"NONE", NULL, 0},
    [BF_MSG_HELLO] = S_T("HELLO", s_hello),
    [BF_MSG_WELCOME] = S_T("WELCOME", s_welcome),
    [BF_MSG_CREDIT] = S_T("CREDIT", s_credit),
    [BF_MSG_LEASE] = S_T("LEASE", s_lease),
    [BF_MSG_NOWORK] = S_T("NOWORK", s_nowork),
    [BF_MSG_HEARTBEAT] = S_T("HEARTBEAT", s_heartbeat),
    [BF_MSG_PROGRESS] = S_T("PROGRESS", s_progress),
    [BF_MSG_DONE] = S_T("DONE", s_done),
    [BF_MSG_FAIL] = S_T("FAIL", s_fail),
    [BF_MSG_REVOKE] = S_T("REVOKE", s_revoke),
    [BF_MSG_SHRINK] = S_T("SHRINK", s_shrink),
    [BF_MSG_DRAIN] = S_T("DRAIN", s_drain),
    [BF_MSG_ERR] = S_T("ERR", s_errmsg),
};

const char *bf_msg_type_name(bf_msg_type_t t)
{
    if ((int)t <= BF_MSG_NONE || (int)t >= BF_MSG__COUNT)
        return "NONE";
    return s_types[t].name;
}

/* Field access by table offset: readers for encode, writers for decode. */
static int64_t s_int(const bf_msg_t *m, const s_field_t *f)
{
    return *(const int64_t *)((const char *)m + f->off);
}

static const char *s_str(const bf_msg_t *m, const s_field_t *f)
{
    return *(char *const *)((const char *)m + f->off);
}

static bool s_flag(const bf_msg_t *m, size_t off)
{
    return *(const bool *)((const char *)m + off);
}

static int64_t *s_int_at(bf_msg_t *m, const s_field_t *f)
{
    return (int64_t *)((char *)m + f->off);
}

static char **s_str_at(bf_msg_t *m, const s_field_t *f)
{
    return (char **)((char *)m + f->off);
}

static bool *s_flag_at(bf_msg_t *m, size_t off)
{
    return (bool *)((char *)m + off);
}

static void s_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void s_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Formats a reason into why and returns it. */
static const char *s_why(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static const char *s_why(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return why;
}

/* Env names are handed to setenv(): non-empty, no '='. */
static bool s_env_name_ok(const char *p, size_t n)
{
    return n > 0 && !memchr(p, '=', n);
}

/* ---- encoding ---------------------------------------------------------- */

/* Checks m against what decode accepts; returns the reason or NULL. */
static const char *s_check(const bf_msg_t *m, const s_type_t *ty, char *why, size_t whylen)
{
    for (size_t i = 0; i < ty->nuses; i++) {
        const s_field_t *f = &s_fields[ty->uses[i].field];
        bool req = ty->uses[i].required;
        switch (f->kind) {
        case S_INT:
            if (s_int(m, f) < 0)
                return s_why(why, whylen, "field '%s' is negative", f->key);
            break;
        case S_STR:
        case S_NSTR: {
            const char *s = s_str(m, f);
            bool present = f->kind == S_STR ? s != NULL : s_flag(m, f->has_off);
            if (req && !present)
                return s_why(why, whylen, "missing field '%s'", f->key);
            if (present && s && strlen(s) > BF_PROTO_MAX_STR)
                return s_why(why, whylen, "field '%s' too long", f->key);
            break;
        }
        case S_ENV:
            if (m->nenv < 0 || m->nenv > S_MAX_ENV)
                return s_why(why, whylen, "bad env count %d", m->nenv);
            if (m->nenv > 0 && (!m->env_names || !m->env_values))
                return s_why(why, whylen, "env arrays missing");
            for (int k = 0; k < m->nenv; k++) {
                const char *n = m->env_names[k], *v = m->env_values[k];
                if (!n || !v || !s_env_name_ok(n, strlen(n)))
                    return s_why(why, whylen, "bad env entry %d", k);
                if (strlen(n) > BF_PROTO_MAX_STR || strlen(v) > BF_PROTO_MAX_STR)
                    return s_why(why, whylen, "env entry %d too long", k);
                for (int j = 0; j < k; j++)
                    if (strcmp(n, m->env_names[j]) == 0)
                        return s_why(why, whylen, "duplicate env name '%.64s'", n);
            }
            break;
        case S_BOOL:
            break;
        }
    }
    return NULL;
}

static bool s_encoded(const bf_msg_t *m, const s_field_t *f)
{
    if (f->kind == S_STR)
        return s_str(m, f) != NULL;
    if (f->kind == S_NSTR)
        return s_flag(m, f->has_off);
    return true;
}

static int s_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n) ? -1 : 0;
}

static int s_pack_field(msgpack_packer *pk, const bf_msg_t *m, const s_field_t *f)
{
    if (s_pack_str(pk, f->key))
        return -1;
    switch (f->kind) {
    case S_INT:
        return msgpack_pack_int64(pk, s_int(m, f));
    case S_STR:
        return s_pack_str(pk, s_str(m, f));
    case S_NSTR: {
        const char *s = s_str(m, f);
        return s ? s_pack_str(pk, s) : msgpack_pack_nil(pk);
    }
    case S_BOOL:
        return s_flag(m, f->off) ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    case S_ENV:
        if (msgpack_pack_map(pk, (size_t)m->nenv))
            return -1;
        for (int k = 0; k < m->nenv; k++)
            if (s_pack_str(pk, m->env_names[k]) || s_pack_str(pk, m->env_values[k]))
                return -1;
        return 0;
    }
    return -1;
}

int bf_msg_encode(const bf_msg_t *m, char **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    if (!m || (int)m->type <= BF_MSG_NONE || (int)m->type >= BF_MSG__COUNT) {
        log_error("proto: cannot encode message of unknown type %d", m ? (int)m->type : -1);
        return -1;
    }
    const s_type_t *ty = &s_types[m->type];
    char why[160];
    if (s_check(m, ty, why, sizeof why)) {
        log_error("proto: cannot encode %s: %s", ty->name, why);
        return -1;
    }

    size_t nkeys = 4;
    for (size_t i = 0; i < ty->nuses; i++)
        nkeys += s_encoded(m, &s_fields[ty->uses[i].field]);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, nkeys);
    rc = rc || s_pack_str(&pk, "v") || msgpack_pack_int64(&pk, BF_PROTO_VERSION);
    rc = rc || s_pack_str(&pk, "t") || s_pack_str(&pk, ty->name);
    rc = rc || s_pack_str(&pk, "sid") || msgpack_pack_uint64(&pk, m->sid);
    rc = rc || s_pack_str(&pk, "ep") || msgpack_pack_uint64(&pk, m->ep);
    for (size_t i = 0; !rc && i < ty->nuses; i++) {
        const s_field_t *f = &s_fields[ty->uses[i].field];
        if (s_encoded(m, f))
            rc = s_pack_field(&pk, m, f);
    }
    if (rc || sb.size > BF_PROTO_MAX_FRAME) {
        log_error("proto: cannot encode %s: %s", ty->name,
                  rc ? "out of memory" : "frame too large");
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    *len = sb.size;
    *buf = msgpack_sbuffer_release(&sb);
    return 0;
}

/* ---- decoding ---------------------------------------------------------- */

static uint64_t s_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Walks one msgpack object from p without allocating. Every item still owed by an
 * open container needs at least one byte, so declared counts are checked against
 * the bytes left the moment they are read. Sets *end to the first byte after it. */
static int s_scan(const uint8_t *p, size_t len, size_t *end, char *err, size_t errlen)
{
    size_t left[S_MAX_DEPTH + 1]; /* items still owed at each open level */
    int depth = 0;
    size_t pos = 0, pending = 1, objects = 0;
    left[0] = 1;
    for (;;) {
        while (left[depth] == 0) {
            if (depth == 0) {
                *end = pos;
                return 0;
            }
            depth--;
        }
        if (pending > len - pos) {
            s_err(err, errlen, "truncated msgpack");
            return -1;
        }
        if (++objects > S_MAX_OBJECTS) {
            s_err(err, errlen, "too many msgpack objects");
            return -1;
        }
        uint8_t b = p[pos++];
        left[depth]--;
        pending--;
        size_t hdr = 0;   /* length bytes following b */
        size_t extra = 0; /* fixed payload bytes after the header */
        int kind = 0;     /* 0 scalar, 1 str/bin/ext, 2 array, 3 map */
        uint64_t n = 0;   /* declared length or count */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool */
        } else if (b <= 0x8f) {
            kind = 3, n = b & 0x0f;
        } else if (b <= 0x9f) {
            kind = 2, n = b & 0x0f;
        } else if (b <= 0xbf) {
            kind = 1, n = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4:
            case 0xd9:
                kind = 1, hdr = 1;
                break;
            case 0xc5:
            case 0xda:
                kind = 1, hdr = 2;
                break;
            case 0xc6:
            case 0xdb:
                kind = 1, hdr = 4;
                break;
            case 0xc7:
                kind = 1, hdr = 1, extra = 1;
                break;
            case 0xc8:
                kind = 1, hdr = 2, extra = 1;
                break;
            case 0xc9:
                kind = 1, hdr = 4, extra = 1;
                break;
            case 0xca:
                extra = 4;
                break;
            case 0xcb:
                extra = 8;
                break;
            case 0xcc:
            case 0xd0:
                extra = 1;
                break;
            case 0xcd:
            case 0xd1:
                extra = 2;
                break;
            case 0xce:
            case 0xd2:
                extra = 4;
                break;
            case 0xcf:
            case 0xd3:
                extra = 8;
                break;
            case 0xd4:
                extra = 2;
                break;
            case 0xd5:
                extra = 3;
                break;
            case 0xd6:
                extra = 5;
                break;
            case 0xd7:
                extra = 9;
                break;
            case 0xd8:
                extra = 17;
                break;
            case 0xdc:
                kind = 2, hdr = 2;
                break;
            case 0xdd:
                kind = 2, hdr = 4;
                break;
            case 0xde:
                kind = 3, hdr = 2;
                break;
            case 0xdf:
                kind = 3, hdr = 4;
                break;
            default:
                s_err(err, errlen, "malformed msgpack (byte 0x%02x)", b);
                return -1;
            }
        }
        /* pending <= len - pos holds here; keep room for the owed items */
        if (hdr) {
            if (hdr > len - pos - pending) {
                s_err(err, errlen, "truncated msgpack");
                return -1;
            }
            n = s_be(p + pos, hdr);
            pos += hdr;
        }
        if (kind == 1)
            extra += n; /* n < 2^32: no overflow */
        if (extra > len - pos - pending) {
            s_err(err, errlen, "truncated msgpack (declared length %llu)", (unsigned long long)n);
            return -1;
        }
        pos += extra;
        if (kind >= 2 && n > 0) {
            uint64_t items = kind == 3 ? 2 * n : n;
            if (items > len - pos - pending) {
                s_err(err, errlen, "truncated msgpack (declared count %llu)",
                      (unsigned long long)n);
                return -1;
            }
            if (depth == S_MAX_DEPTH) {
                s_err(err, errlen, "msgpack nested too deep");
                return -1;
            }
            left[++depth] = (size_t)items;
            pending += (size_t)items;
        }
    }
}

static bool s_key_is(const msgpack_object *k, const char *key)
{
    size_t n = strlen(key);
    return k->via.str.size == n && memcmp(k->via.str.ptr, key, n) == 0;
}

/* Finds key in a map whose keys are all strings: 1 found, 0 absent, -1 duplicate. */
static int s_find(const msgpack_object_map *map, const char *key, const msgpack_object **val)
{
    *val = NULL;
    for (uint32_t i = 0; i < map->size; i++) {
        if (!s_key_is(&map->ptr[i].key, key))
            continue;
        if (*val)
            return -1;
        *val = &map->ptr[i].val;
    }
    return *val ? 1 : 0;
}

/* Non-negative integer, however it was encoded. */
static int s_get_uint(const msgpack_object *o, uint64_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *out = o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 >= 0) {
        *out = (uint64_t)o->via.i64;
        return 0;
    }
    return -1;
}

/* Copies a msgpack string with its length; NULL reason on success. */
static const char *s_get_str(const msgpack_object *o, char **out)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return "expected string";
    uint32_t n = o->via.str.size;
    if (n > BF_PROTO_MAX_STR)
        return "string too long";
    if (n && memchr(o->via.str.ptr, 0, n))
        return "string contains NUL byte";
    char *s = malloc((size_t)n + 1);
    if (!s)
        return "out of memory";
    if (n)
        memcpy(s, o->via.str.ptr, n);
    s[n] = '\0';
    *out = s;
    return NULL;
}

/* Readable, bounded copy of an untrusted string for error messages. */
static void s_printable(const msgpack_object *o, char *out, size_t outlen)
{
    size_t n = o->via.str.size < outlen - 1 ? o->via.str.size : outlen - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)o->via.str.ptr[i];
        out[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[n] = '\0';
}

static const char *s_get_env(const msgpack_object *o, bf_msg_t *m, char *why, size_t whylen)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return "expected map";
    const msgpack_object_map *map = &o->via.map;
    if (map->size > S_MAX_ENV)
        return s_why(why, whylen, "too many entries (%u > %d)", map->size, S_MAX_ENV);
    if (map->size == 0)
        return NULL;
    m->env_names = calloc(map->size, sizeof(char *));
    m->env_values = calloc(map->size, sizeof(char *));
    if (!m->env_names || !m->env_values)
        return "out of memory";
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key;
        const char *r = s_get_str(k, &m->env_names[i]);
        if (r)
            return s_why(why, whylen, "name %u: %s", i, r);
        m->nenv = (int)i + 1; /* names so far are owned and freed by clear */
        r = s_get_str(&map->ptr[i].val, &m->env_values[i]);
        if (r)
            return s_why(why, whylen, "value of '%.64s': %s", m->env_names[i], r);
        if (!s_env_name_ok(k->via.str.ptr, k->via.str.size))
            return s_why(why, whylen, "bad name '%.64s'", m->env_names[i]);
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(m->env_names[i], m->env_names[j]) == 0)
                return s_why(why, whylen, "duplicate name '%.64s'", m->env_names[i]);
    }
    return NULL;
}

/* Decodes one field of the type into m; NULL on success. */
static const char *s_get_field(const msgpack_object *o, const s_field_t *f, bf_msg_t *m, char *why,
                               size_t whylen)
{
    uint64_t u;
    switch (f->kind) {
    case S_INT:
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 < 0)
            return "negative value";
        if (s_get_uint(o, &u))
            return "expected integer";
        if (u > INT64_MAX)
            return "integer out of range";
        *s_int_at(m, f) = (int64_t)u;
        return NULL;
    case S_STR:
        return s_get_str(o, s_str_at(m, f));
    case S_NSTR:
        *s_flag_at(m, f->has_off) = true;
        if (o->type == MSGPACK_OBJECT_NIL)
            return NULL;
        if (o->type != MSGPACK_OBJECT_STR)
            return "expected string or nil";
        return s_get_str(o, s_str_at(m, f));
    case S_BOOL:
        if (o->type != MSGPACK_OBJECT_BOOLEAN)
            return "expected boolean";
        *s_flag_at(m, f->off) = o->via.boolean;
        return NULL;
    case S_ENV:
        return s_get_env(o, m, why, whylen);
    }
    return "bad field kind";
}

static int s_decode_map(const msgpack_object *root, bf_msg_t *m, char *err, size_t errlen)
{
    if (root->type != MSGPACK_OBJECT_MAP) {
        s_err(err, errlen, "message is not a map");
        return -1;
    }
    const msgpack_object_map *map = &root->via.map;
    if (map->size > S_MAX_KEYS) {
        s_err(err, errlen, "too many keys (%u > %d)", map->size, S_MAX_KEYS);
        return -1;
    }
    for (uint32_t i = 0; i < map->size; i++) {
        if (map->ptr[i].key.type != MSGPACK_OBJECT_STR) {
            s_err(err, errlen, "non-string key");
            return -1;
        }
    }

    const msgpack_object *o;
    int r = s_find(map, "v", &o);
    uint64_t u = 0;
    if (r <= 0) {
        s_err(err, errlen, r ? "duplicate field 'v'" : "missing protocol version 'v'");
        return -1;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 < 0) {
        s_err(err, errlen, "unsupported protocol version %lld", (long long)o->via.i64);
        return -1;
    }
    if (s_get_uint(o, &u)) {
        s_err(err, errlen, "field 'v': expected integer");
        return -1;
    }
    if (u != BF_PROTO_VERSION) {
        s_err(err, errlen, "unsupported protocol version %llu", (unsigned long long)u);
        return -1;
    }
    m->v = BF_PROTO_VERSION;

    r = s_find(map, "t", &o);
    if (r <= 0) {
        s_err(err, errlen, r ? "duplicate field 't'" : "missing message type 't'");
        return -1;
    }
    if (o->type != MSGPACK_OBJECT_STR) {
        s_err(err, errlen, "field 't': expected string");
        return -1;
    }
    for (int t = BF_MSG_NONE + 1; t < BF_MSG__COUNT; t++)
        if (s_key_is(o, s_types[t].name))
            m->type = (bf_msg_type_t)t;
    if (m->type == BF_MSG_NONE) {
        char name[33];
        s_printable(o, name, sizeof name);
        s_err(err, errlen, "unknown message type '%s'", name);
        return -1;
    }
    const s_type_t *ty = &s_types[m->type];

    /* sid and ep are always sent; absent reads as 0 (no session yet). */
    static const char *const ids[] = {"sid", "ep"};
    uint64_t *dst[] = {&m->sid, &m->ep};
    for (int i = 0; i < 2; i++) {
        r = s_find(map, ids[i], &o);
        if (r < 0) {
            s_err(err, errlen, "%s: duplicate field '%s'", ty->name, ids[i]);
            return -1;
        }
        if (r > 0 && s_get_uint(o, dst[i])) {
            s_err(err, errlen, "%s: field '%s': expected non-negative integer", ty->name, ids[i]);
            return -1;
        }
    }

    /* Only the fields of the type are read; any other key is ignored. */
    for (size_t i = 0; i < ty->nuses; i++) {
        const s_field_t *f = &s_fields[ty->uses[i].field];
        r = s_find(map, f->key, &o);
        if (r < 0) {
            s_err(err, errlen, "%s: duplicate field '%s'", ty->name, f->key);
            return -1;
        }
        if (r == 0) {
            if (ty->uses[i].required) {
                s_err(err, errlen, "%s: missing field '%s'", ty->name, f->key);
                return -1;
            }
            continue;
        }
        char why[128];
        const char *bad = s_get_field(o, f, m, why, sizeof why);
        if (bad) {
            s_err(err, errlen, "%s: field '%s': %s", ty->name, f->key, bad);
            return -1;
        }
    }
    return 0;
}

int bf_msg_decode(const void *buf, size_t len, bf_msg_t *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (err && errlen)
        err[0] = '\0';
    if (!buf || len == 0) {
        s_err(err, errlen, "empty frame");
        return -1;
    }
    if (len > BF_PROTO_MAX_FRAME) {
        s_err(err, errlen, "frame too large (%zu bytes)", len);
        return -1;
    }
    size_t end = 0;
    if (s_scan(buf, len, &end, err, errlen))
        return -1;
    if (end != len) {
        s_err(err, errlen, "trailing bytes after message (%zu)", len - end);
        return -1;
    }

    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&up, buf, len, &off);
    int rc = -1;
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        s_err(err, errlen, "out of memory");
    else if (ur != MSGPACK_UNPACK_SUCCESS)
        s_err(err, errlen, "malformed msgpack");
    else if (off != len)
        s_err(err, errlen, "trailing bytes after message (%zu)", len - off);
    else
        rc = s_decode_map(&up.data, m, err, errlen);
    msgpack_unpacked_destroy(&up);
    if (rc)
        bf_msg_clear(m);
    return rc;
}

void bf_msg_clear(bf_msg_t *m)
{
    if (!m)
        return;
    free(m->worker_id);
    free(m->host);
    free(m->version);
    free(m->job);
    for (int i = 0; i < m->nenv; i++) {
        if (m->env_names)
            free(m->env_names[i]);
        if (m->env_values)
            free(m->env_values[i]);
    }
    free(m->env_names);
    free(m->env_values);
    free(m->lo);
    free(m->hi);
    free(m->cursor);
    free(m->code);
    free(m->message);
    memset(m, 0, sizeof *m);
}

/* Coordinator <-> worker messages: one msgpack map per ZeroMQ frame with
 * v (protocol version), t (type name), sid (session), ep (coordinator epoch) and
 * the fields of the type. Decoding is defensive: every type and length is checked
 * and a malformed frame is rejected with a reason, never an abort. */
#ifndef BF_PROTO_H
#define BF_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BF_PROTO_VERSION 1
#define BF_PROTO_MAX_FRAME (16 * 1024 * 1024) /* also set as ZMQ_MAXMSGSIZE */
#define BF_PROTO_MAX_STR (1024 * 1024)        /* longest string field (job text) */

typedef enum {
    BF_MSG_NONE = 0,
    BF_MSG_HELLO,     /* worker: worker_id, host, pid, version, fv, credit */
    BF_MSG_WELCOME,   /* coord: heartbeat_ms, liveness, lease_ttl_ms, job, env, version, fv */
    BF_MSG_CREDIT,    /* worker: credit = how many more leases it will take */
    BF_MSG_LEASE,     /* coord: range_id, token, table, lo, hi, cursor, seq */
    BF_MSG_NOWORK,    /* coord: retry_after_ms */
    BF_MSG_HEARTBEAT, /* both: leases (held), rows, bytes */
    BF_MSG_PROGRESS,  /* worker: range_id, token, rows, bytes */
    BF_MSG_DONE,      /* worker: range_id, token, rows, bytes */
    BF_MSG_FAIL,      /* worker: range_id, token, code, message, retryable */
    BF_MSG_REVOKE,    /* coord: range_id, token */
    BF_MSG_SHRINK,    /* coord: range_id, token, credit (idle workers): split your range */
    BF_MSG_DRAIN,     /* coord: deadline_ms, done (job finished: exit) */
    BF_MSG_ERR,       /* coord: code (UNKNOWN_SESSION, STALE_EPOCH, VERSION), message */
    BF_MSG__COUNT
} bf_msg_type_t;

/* A decoded message. Fields not used by a type are zero / NULL. Strings are owned
 * by the message (NUL-terminated copies) and freed by bf_msg_clear(). */
typedef struct {
    bf_msg_type_t type;
    int64_t v;    /* protocol version */
    uint64_t sid; /* session id given by WELCOME, 0 before */
    uint64_t ep;  /* coordinator epoch, 0 before WELCOME */

    char *worker_id, *host, *version; /* HELLO; version also WELCOME: the sender's release */
    int64_t fv; /* HELLO, WELCOME: the Redis functions version of the sender's release, which a
                 * worker and its coordinator must share (0: a release from before it was sent) */
    int64_t pid, credit; /* HELLO, CREDIT, DONE (the next lease asked along), SHRINK */

    int64_t heartbeat_ms, liveness, lease_ttl_ms; /* WELCOME */
    char *job;                                    /* WELCOME: job file text */
    char **env_names, **env_values;               /* WELCOME: referenced env vars */
    int nenv;

    int64_t range_id, token, table, seq; /* LEASE, DONE, FAIL, PROGRESS, REVOKE, SHRINK */
    char *lo, *hi, *cursor;              /* LEASE; NULL = open end / start */
    bool has_lo, has_hi, has_cursor;     /* distinguishes NULL (open) from absent */

    int64_t retry_after_ms;      /* NOWORK */
    int64_t leases, rows, bytes; /* HEARTBEAT, PROGRESS, DONE */
    char *code, *message;        /* FAIL, ERR */
    bool retryable;              /* FAIL */
    int64_t deadline_ms;         /* DRAIN */
    bool done;                   /* DRAIN */
} bf_msg_t;

const char *bf_msg_type_name(bf_msg_type_t t);

/* Encodes m into a malloc'd buffer. Returns 0, or -1 on a programmer error
 * (unknown type, or a message decode would reject: negative number, missing
 * required field, over-long string, bad env), which is logged. */
int bf_msg_encode(const bf_msg_t *m, char **buf, size_t *len);

/* Decodes one frame into m (which it zeroes first). Returns 0, or -1 with a short
 * reason in err; m is then cleared. Never reads past len; never aborts. */
int bf_msg_decode(const void *buf, size_t len, bf_msg_t *m, char *err, size_t errlen);

/* Frees every owned field and zeroes m. Safe on a zeroed message. */
void bf_msg_clear(bf_msg_t *m);

#endif

/* bf_peer: the coordinator or a worker of another release of backfill, as far as
 * the first exchange goes, for tests/integration/test_release_mismatch.sh.
 *
 *   bf_peer hello ENDPOINT FV
 *       Says HELLO to a coordinator as a worker whose release has Redis functions
 *       version FV (0: a HELLO without fv, as releases from before it was sent
 *       spoke) and prints the answer on one line: "ERR CODE MESSAGE" or "WELCOME".
 *   bf_peer coordinator ENDPOINT FV JOBFILE
 *       Binds ENDPOINT and answers the first HELLO with a WELCOME of a coordinator
 *       whose release has functions version FV (0: no fv and no version, as
 *       releases from before them) and JOBFILE's text, then prints "welcomed ID"
 *       and exits 0.
 *   bf_peer refuse ENDPOINT
 *       Binds ENDPOINT and answers the first HELLO with ERR VERSION, as a
 *       coordinator refuses a worker of another release, then prints "refused ID"
 *       and exits 0.
 *
 * Bound, the last two print "listening" first (exit 1 when ENDPOINT cannot be
 * bound). Each exits 1 when nothing came within 20 s. */
#include "net.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WAIT_MS 20000

static void s_pack_s(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* A HELLO as releases before fv sent it: no fv key at all. */
static int s_old_hello(zsock_t *sock)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 8);
    s_pack_s(&pk, "v");
    msgpack_pack_int64(&pk, BF_PROTO_VERSION);
    s_pack_s(&pk, "t");
    s_pack_s(&pk, "HELLO");
    s_pack_s(&pk, "sid");
    msgpack_pack_uint64(&pk, 0);
    s_pack_s(&pk, "ep");
    msgpack_pack_uint64(&pk, 0);
    s_pack_s(&pk, "worker_id");
    s_pack_s(&pk, "bf-peer-old");
    s_pack_s(&pk, "host");
    s_pack_s(&pk, "peer.invalid");
    s_pack_s(&pk, "version");
    s_pack_s(&pk, "0.0.1-old");
    s_pack_s(&pk, "pid");
    msgpack_pack_int64(&pk, getpid());
    zframe_t *f = zframe_new(sb.data, sb.size);
    int rc = zframe_send(&f, sock, 0);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static int s_hello(const char *endpoint, long fv)
{
    zsock_t *sock = zsock_new_dealer(endpoint);
    if (!sock) {
        fprintf(stderr, "bf_peer: cannot connect to %s\n", endpoint);
        return 1;
    }
    int rc = 1;
    bf_msg_t hello = {.type = BF_MSG_HELLO,
                      .worker_id = (char *)"bf-peer",
                      .host = (char *)"peer.invalid",
                      .version = (char *)"9.9.9-peer",
                      .fv = fv,
                      .pid = getpid(),
                      .credit = 0};
    /* ZMQ_IMMEDIATE is off on this socket: the HELLO waits for the connection. */
    if ((fv > 0 ? bf_net_send(sock, NULL, &hello) : s_old_hello(sock)) != 0) {
        fprintf(stderr, "bf_peer: cannot send HELLO\n");
    } else if (!bf_net_wait(sock, WAIT_MS)) {
        fprintf(stderr, "bf_peer: no answer within %d ms\n", WAIT_MS);
    } else {
        bf_msg_t m;
        if (bf_net_recv(sock, NULL, &m) == 0) {
            if (m.type == BF_MSG_ERR)
                printf("ERR %s %s\n", m.code ? m.code : "", m.message ? m.message : "");
            else
                printf("%s\n", bf_msg_type_name(m.type));
            rc = 0;
        }
        bf_msg_clear(&m);
    }
    zsock_destroy(&sock);
    return rc;
}

/* Answers the first HELLO at endpoint with a WELCOME (of fv, with job) or, when
 * job is NULL, an ERR VERSION. */
static int s_coordinator(const char *endpoint, long fv, const char *job)
{
    zsock_t *sock = zsock_new_router(endpoint);
    if (!sock) {
        fprintf(stderr, "bf_peer: cannot bind %s\n", endpoint);
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    int rc = 1;
    long long until = zclock_mono() + WAIT_MS;
    while (rc != 0 && zclock_mono() < until) {
        if (!bf_net_wait(sock, 100))
            continue;
        zframe_t *id = NULL;
        bf_msg_t m;
        bool hello = bf_net_recv(sock, &id, &m) == 0 && m.type == BF_MSG_HELLO;
        if (hello && !job) {
            char why[256];
            snprintf(why, sizeof why, "bf_peer refuses worker %s", m.worker_id);
            bf_msg_t e = {.type = BF_MSG_ERR, .code = (char *)"VERSION", .message = why};
            e.ep = 1;
            if (bf_net_send(sock, id, &e) == 0) {
                printf("refused %s\n", m.worker_id);
                rc = 0;
            }
        } else if (hello) {
            bf_msg_t w = {.type = BF_MSG_WELCOME,
                          .heartbeat_ms = 1000,
                          .liveness = 3,
                          .lease_ttl_ms = 30000,
                          .job = (char *)job,
                          .version = fv > 0 ? (char *)"9.9.9-peer" : NULL,
                          .fv = fv};
            w.sid = 77;
            w.ep = 1;
            if (bf_net_send(sock, id, &w) == 0) {
                printf("welcomed %s\n", m.worker_id);
                rc = 0;
            }
        }
        bf_msg_clear(&m);
        zframe_destroy(&id);
    }
    if (rc != 0)
        fprintf(stderr, "bf_peer: no HELLO within %d ms\n", WAIT_MS);
    fflush(stdout);
    zclock_sleep(500); /* let the WELCOME go out */
    zsock_destroy(&sock);
    return rc;
}

int main(int argc, char **argv)
{
    zsys_init();
    zsys_set_linger(500);
    if (argc == 4 && strcmp(argv[1], "hello") == 0)
        return s_hello(argv[2], atol(argv[3]));
    if (argc == 3 && strcmp(argv[1], "refuse") == 0)
        return s_coordinator(argv[2], 0, NULL);
    if (argc == 5 && strcmp(argv[1], "coordinator") == 0) {
        FILE *f = fopen(argv[4], "r");
        if (!f) {
            perror(argv[4]);
            return 1;
        }
        static char job[65536];
        size_t n = fread(job, 1, sizeof job - 1, f);
        fclose(f);
        job[n] = '\0';
        return s_coordinator(argv[2], atol(argv[3]), job);
    }
    fprintf(stderr, "usage: bf_peer hello ENDPOINT FV | bf_peer coordinator ENDPOINT FV JOBFILE "
                    "| bf_peer refuse ENDPOINT\n");
    return 2;
}

#include "net.h"

#include "log.h"

#include <stdlib.h>

int bf_net_send(zsock_t *sock, zframe_t *identity, const bf_msg_t *m)
{
    char *buf = NULL;
    size_t len = 0;
    if (bf_msg_encode(m, &buf, &len) != 0)
        return -1;
    void *raw = zsock_resolve(sock);
    int rc = 0;
    if (identity &&
        zmq_send(raw, zframe_data(identity), zframe_size(identity), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        rc = -1;
    if (rc == 0 && zmq_send(raw, buf, len, ZMQ_DONTWAIT) < 0)
        rc = -1;
    free(buf);
    return rc;
}

/* Malformed frames are logged, but not all of them: a flood must not flood the log. */
static unsigned long s_dropped = 0;

static bool s_log_drop(void)
{
    s_dropped++;
    return s_dropped <= 10 || s_dropped % 1000 == 0;
}

int bf_net_recv(zsock_t *sock, zframe_t **identity_p, bf_msg_t *m)
{
    memset(m, 0, sizeof *m);
    zmsg_t *msg = zmsg_recv(sock);
    if (!msg)
        return -2;
    if (identity_p)
        *identity_p = zmsg_pop(msg);
    int rc = 0;
    zframe_t *body = zmsg_pop(msg);
    char err[256];
    if (!body || zmsg_size(msg) != 0) {
        if (s_log_drop())
            log_warn("dropped a message with %zu frames, expected one (%lu dropped so far)",
                     zmsg_size(msg) + (body ? 1 : 0), s_dropped);
        rc = -1;
    } else if (bf_msg_decode(zframe_data(body), zframe_size(body), m, err, sizeof err) != 0) {
        if (s_log_drop())
            log_warn("dropped a malformed frame of %zu bytes: %s (%lu dropped so far)",
                     zframe_size(body), err, s_dropped);
        rc = -1;
    }
    zframe_destroy(&body);
    zmsg_destroy(&msg);
    return rc;
}

bool bf_net_wait(zsock_t *sock, int timeout_ms)
{
    zmq_pollitem_t item = {.socket = zsock_resolve(sock), .events = ZMQ_POLLIN};
    return zmq_poll(&item, 1, timeout_ms) > 0 && (item.revents & ZMQ_POLLIN);
}

int bf_net_wait_fd(zsock_t *sock, int fd, int timeout_ms)
{
    zmq_pollitem_t items[2] = {{.socket = zsock_resolve(sock), .events = ZMQ_POLLIN},
                               {.fd = fd, .events = ZMQ_POLLIN}};
    if (zmq_poll(items, 2, timeout_ms) <= 0)
        return 0;
    return ((items[0].revents & ZMQ_POLLIN) ? 1 : 0) | ((items[1].revents & ZMQ_POLLIN) ? 2 : 0);
}

/* Sending and receiving protocol messages on czmq sockets. */
#ifndef BF_NET_H
#define BF_NET_H

#include "proto.h"

#include <czmq.h>

/* Sends m (to the peer `identity` on a ROUTER, or plain on a DEALER when identity
 * is NULL) without blocking. Returns 0 or -1 (peer gone / queue full). */
int bf_net_send(zsock_t *sock, zframe_t *identity, const bf_msg_t *m);

/* Receives one message. On a ROUTER *identity_p receives the peer's identity
 * (caller destroys). Returns 0, -1 when the frame was malformed (logged, dropped;
 * *identity_p still set on a ROUTER), or -2 when interrupted. */
int bf_net_recv(zsock_t *sock, zframe_t **identity_p, bf_msg_t *m);

/* Waits up to timeout_ms for a message to read. */
bool bf_net_wait(zsock_t *sock, int timeout_ms);
/* Waits up to timeout_ms for a message on sock or input on fd. Returns a mask:
 * 1 sock has a message, 2 fd is readable (0 on timeout). */
int bf_net_wait_fd(zsock_t *sock, int fd, int timeout_ms);

#endif

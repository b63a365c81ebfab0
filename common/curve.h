/* CURVE encryption and authentication between coordinator and workers (czmq zcert
 * and zauth). Certificates are czmq's files: NAME.key holds the public key,
 * NAME.key_secret both keys (`backfill keygen` writes them). The coordinator
 * accepts only workers whose public certificate is in an allowed folder; the
 * workers know the coordinator's public key, so they cannot be talked to by
 * anyone else either. */
#ifndef BF_CURVE_H
#define BF_CURVE_H

#include <czmq.h>
#include <stddef.h>

typedef struct bf_curve_server bf_curve_server_t;

/* Makes router a CURVE server with the certificate at cert_path (its secret
 * file, cert_path + "_secret", must exist) that accepts only clients whose public
 * certificates are in allow_dir. Call before binding. Returns NULL with a
 * message in err. */
bf_curve_server_t *bf_curve_server_new(zsock_t *router, const char *cert_path,
                                       const char *allow_dir, char *err, size_t errlen);

/* Logs the connections refused since the last call (a key not allowed, or a
 * peer that does not speak CURVE). Never blocks. */
void bf_curve_server_poll(bf_curve_server_t *self);

void bf_curve_server_destroy(bf_curve_server_t **self_p);

/* Makes dealer a CURVE client with its own certificate (cert_path, with its
 * _secret file) talking to the server whose public certificate is at
 * server_cert_path. Call before connecting. 0, or -1 with a message in err. */
int bf_curve_client_apply(zsock_t *dealer, const char *cert_path, const char *server_cert_path,
                          char *err, size_t errlen);

/* Writes a new key pair: path (public) and path + "_secret". 0, or -1 with a
 * message in err. */
int bf_curve_keygen(const char *path, const char *name, char *err, size_t errlen);

#endif

#include "curve.h"

#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct bf_curve_server {
    zactor_t *auth;   /* czmq zauth: answers libzmq's ZAP requests from allow_dir */
    zsock_t *monitor; /* PAIR receiving the router's handshake failures */
    char allow_dir[512];
    long long quiet_until[2]; /* per kind (wrong key, no CURVE): no log line before this */
    int more[2];              /* refusals not logged since */
};

/* Loads a certificate; with need_secret, its _secret file must be there too. */
static zcert_t *s_load(const char *path, bool need_secret, const char *what, char *err,
                       size_t errlen)
{
    char secret[1024];
    snprintf(secret, sizeof secret, "%s_secret", path);
    if (access(path, R_OK) != 0 && access(secret, R_OK) != 0) {
        snprintf(err, errlen, "%s certificate %s: %s (create one with `backfill keygen`)", what,
                 path, strerror(errno));
        return NULL;
    }
    if (need_secret && access(secret, R_OK) != 0) {
        snprintf(err, errlen,
                 "%s certificate %s: its secret key file %s is missing or unreadable (%s)", what,
                 path, secret, strerror(errno));
        return NULL;
    }
    zcert_t *cert = zcert_load(path);
    if (!cert)
        snprintf(err, errlen, "%s certificate %s: not a czmq certificate", what, path);
    return cert;
}

bf_curve_server_t *bf_curve_server_new(zsock_t *router, const char *cert_path,
                                       const char *allow_dir, char *err, size_t errlen)
{
    struct stat st;
    if (stat(allow_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "allowed worker keys: %s is not a folder", allow_dir);
        return NULL;
    }
    zcert_t *cert = s_load(cert_path, true, "coordinator", err, errlen);
    if (!cert)
        return NULL;
    bf_curve_server_t *self = zmalloc(sizeof *self);
    snprintf(self->allow_dir, sizeof self->allow_dir, "%s", allow_dir);
    /* zauth first: without a ZAP handler, libzmq lets any client key in. */
    self->auth = zactor_new(zauth, NULL);
    zstr_sendx(self->auth, "CURVE", allow_dir, NULL);
    zsock_wait(self->auth);
    zcert_apply(cert, zsock_resolve(router));
    zsock_set_curve_server(router, 1);
    zsock_set_zap_domain(router, "backfill");
    zcert_destroy(&cert);
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "inproc://bf-curve-monitor-%p", (void *)self);
    if (zmq_socket_monitor(zsock_resolve(router), endpoint,
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) == 0)
        self->monitor = zsock_new_pair(endpoint);
    if (!self->monitor)
        log_warn("cannot watch the CURVE handshakes: refused workers will not be logged");
    log_info("CURVE on: workers must hold a key whose public certificate is in %s", allow_dir);
    return self;
}

void bf_curve_server_poll(bf_curve_server_t *self)
{
    while (self && self->monitor && (zsock_events(self->monitor) & ZMQ_POLLIN)) {
        zframe_t *ev = zframe_recv(self->monitor);
        char *addr = zstr_recv(self->monitor); /* the coordinator's own endpoint */
        if (ev && zframe_size(ev) >= 6) {
            uint16_t event;
            uint32_t value;
            memcpy(&event, zframe_data(ev), 2);
            memcpy(&value, zframe_data(ev) + 2, 4);
            int kind = event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ? 0 : 1;
            /* Refused peers retry every few hundred ms: the first refusal of a kind
             * is logged, then a count every 10 s. */
            long long now = zclock_mono();
            if (self->quiet_until[kind] <= now) {
                char more[64] = "";
                if (self->more[kind])
                    snprintf(more, sizeof more, " (and %d more in the last 10 s)",
                             self->more[kind]);
                if (kind == 0)
                    log_warn("refused a worker on %s: its public key is not in %s (ZAP status "
                             "%u)%s",
                             addr ? addr : "?", self->allow_dir, value, more);
                else
                    log_warn("refused a connection on %s: CURVE handshake failed (a worker "
                             "without --curve-cert, or with the wrong coordinator key?)%s",
                             addr ? addr : "?", more);
                self->more[kind] = 0;
                self->quiet_until[kind] = now + 10000;
            } else {
                self->more[kind]++;
            }
        }
        zframe_destroy(&ev);
        zstr_free(&addr);
    }
}

void bf_curve_server_destroy(bf_curve_server_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bf_curve_server_t *self = *self_p;
    zsock_destroy(&self->monitor);
    zactor_destroy(&self->auth);
    free(self);
    *self_p = NULL;
}

int bf_curve_client_apply(zsock_t *dealer, const char *cert_path, const char *server_cert_path,
                          char *err, size_t errlen)
{
    zcert_t *mine = s_load(cert_path, true, "worker", err, errlen);
    if (!mine)
        return -1;
    zcert_t *server = s_load(server_cert_path, false, "coordinator", err, errlen);
    if (!server) {
        zcert_destroy(&mine);
        return -1;
    }
    zcert_apply(mine, zsock_resolve(dealer));
    zsock_set_curve_serverkey(dealer, zcert_public_txt(server));
    zcert_destroy(&mine);
    zcert_destroy(&server);
    return 0;
}

int bf_curve_keygen(const char *path, const char *name, char *err, size_t errlen)
{
    char secret[1024];
    snprintf(secret, sizeof secret, "%s_secret", path);
    if (access(path, F_OK) == 0 || access(secret, F_OK) == 0) {
        snprintf(err, errlen, "%s exists already: not overwriting a key (remove it first)", path);
        return -1;
    }
    zcert_t *cert = zcert_new();
    if (!cert) {
        snprintf(err, errlen, "cannot make a key pair");
        return -1;
    }
    zcert_set_meta(cert, "name", "%s", name);
    zcert_set_meta(cert, "created-by", "backfill keygen");
    /* The secret file is written with mode 0600 below; keep the umask tight too. */
    mode_t old = umask(077);
    int rc = zcert_save(cert, path);
    umask(old);
    if (rc == 0)
        chmod(path, 0644);
    zcert_destroy(&cert);
    if (rc != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    chmod(secret, 0600);
    return 0;
}

/* bf_tap: a TCP relay for tests. Listens on HOST:PORT and relays every
 * connection to TO_HOST:TO_PORT, both ways, optionally appending every byte it
 * relays to a dump file (what a packet capture on the wire would see). Used to
 * show that CURVE traffic is encrypted, and to reach servers on the host's
 * loopback from network namespaces. Runs until SIGTERM/SIGINT.
 *
 *   bf_tap LISTEN_HOST:PORT TO_HOST:PORT [DUMP_FILE]
 *
 * Prints "listening" on stdout once it accepts connections. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PAIRS 512

static volatile sig_atomic_t s_stop = 0;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static int s_addr(const char *spec, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host)
        return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct sockaddr_in from, to;
    if (argc < 3 || argc > 4 || s_addr(argv[1], &from) != 0 || s_addr(argv[2], &to) != 0) {
        fprintf(stderr, "usage: bf_tap LISTEN_HOST:PORT TO_HOST:PORT [DUMP_FILE]\n");
        return 2;
    }
    FILE *dump = argc == 4 ? fopen(argv[3], "ab") : NULL;
    if (argc == 4 && !dump) {
        fprintf(stderr, "bf_tap: %s: %s\n", argv[3], strerror(errno));
        return 1;
    }
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&from, sizeof from) != 0 || listen(lfd, 64) != 0) {
        fprintf(stderr, "bf_tap: cannot listen on %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    /* fds[0] is the listener; then pairs: fds[1 + 2i] client side, fds[2 + 2i] server. */
    struct pollfd fds[1 + 2 * MAX_PAIRS];
    int npairs = 0;
    fds[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
    char buf[65536];
    while (!s_stop) {
        if (poll(fds, (nfds_t)(1 + 2 * npairs), 200) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if ((fds[0].revents & POLLIN) && npairs < MAX_PAIRS) {
            int c = accept(lfd, NULL, NULL);
            int s = c >= 0 ? socket(AF_INET, SOCK_STREAM, 0) : -1;
            if (s >= 0 && connect(s, (struct sockaddr *)&to, sizeof to) == 0) {
                fds[1 + 2 * npairs] = (struct pollfd){.fd = c, .events = POLLIN};
                fds[2 + 2 * npairs] = (struct pollfd){.fd = s, .events = POLLIN};
                npairs++;
            } else {
                if (c >= 0)
                    close(c);
                if (s >= 0)
                    close(s);
            }
        }
        for (int i = 0; i < npairs; i++) {
            for (int side = 0; side < 2; side++) {
                struct pollfd *src = &fds[1 + 2 * i + side], *dst = &fds[1 + 2 * i + !side];
                if (!(src->revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                ssize_t n = read(src->fd, buf, sizeof buf);
                bool ok = n > 0;
                for (ssize_t off = 0; ok && off < n;) {
                    ssize_t w = write(dst->fd, buf + off, (size_t)(n - off));
                    if (w <= 0)
                        ok = false;
                    else
                        off += w;
                }
                if (ok && dump) {
                    fwrite(buf, 1, (size_t)n, dump);
                    fflush(dump);
                }
                if (!ok) { /* one side closed: close both, drop the pair */
                    close(fds[1 + 2 * i].fd);
                    close(fds[2 + 2 * i].fd);
                    fds[1 + 2 * i] = fds[1 + 2 * (npairs - 1)];
                    fds[2 + 2 * i] = fds[2 + 2 * (npairs - 1)];
                    npairs--;
                    i--;
                    break;
                }
            }
        }
    }
    for (int i = 1; i < 1 + 2 * npairs; i++)
        close(fds[i].fd);
    close(lfd);
    if (dump)
        fclose(dump);
    return 0;
}

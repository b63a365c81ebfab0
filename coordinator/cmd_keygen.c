/* `backfill keygen PATH [--name NAME]`: a CURVE key pair for a coordinator or a
 * worker (czmq certificate files PATH and PATH_secret). */
#include "commands.h"
#include "curve.h"
#include "exitcodes.h"

#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>

static const char *s_usage =
    "usage: backfill keygen PATH [--name NAME]\n\n"
    "Writes a CURVE key pair: PATH holds the public key, PATH_secret both keys (mode\n"
    "0600). For the coordinator: `backfill coordinator --curve-cert PATH`, and give\n"
    "PATH to the workers (`--curve-server PATH`). For a worker: `backfill worker\n"
    "--curve-cert PATH`, and copy PATH (the public part only) into the coordinator's\n"
    "--curve-allow folder. NAME (default: the file name) is written into the files.\n";

int bf_cmd_keygen(int argc, char **argv)
{
    static const struct option opts[] = {{"name", required_argument, NULL, 'n'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *name = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'n') {
            name = optarg;
        } else if (c == 'h') {
            fputs(s_usage, stdout);
            return BF_EXIT_OK;
        } else {
            fputs(s_usage, stderr);
            return BF_EXIT_USAGE;
        }
    }
    if (optind + 1 != argc) {
        fputs(s_usage, stderr);
        return BF_EXIT_USAGE;
    }
    const char *path = argv[optind];
    char base[512];
    snprintf(base, sizeof base, "%s", path);
    char err[1200];
    if (bf_curve_keygen(path, name ? name : basename(base), err, sizeof err) != 0) {
        fprintf(stderr, "backfill keygen: %s\n", err);
        return BF_EXIT_USAGE;
    }
    printf("wrote %s (public key: share it) and %s_secret (keep it private)\n", path, path);
    return BF_EXIT_OK;
}

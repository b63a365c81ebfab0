/* The `backfill` binary: a table of sub-commands. */
#include "commands.h"
#include "exitcodes.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;                 /* sub-command */
    int (*fn)(int argc, char **argv); /* entry point */
    const char *summary;              /* one line for `backfill --help` */
} command_t;

static const command_t s_commands[] = {
    {"run", bf_cmd_run, "coordinator plus N local workers in one command; resumable"},
    {"coordinator", bf_cmd_coordinator, "plan the job and hand out ranges on a ZeroMQ endpoint"},
    {"worker", bf_cmd_worker, "join a coordinator and copy the ranges it leases"},
    {"plan", bf_cmd_plan, "print the ranges a job would be split into, copy nothing"},
    {"status", bf_cmd_status, "per-table progress from the checkpoints in Redis"},
    {"pause", bf_cmd_pause, "stop all copying of a running job (workers keep their ranges)"},
    {"resume", bf_cmd_resume, "let a paused job copy again"},
    {"cancel", bf_cmd_cancel, "stop a running job; its ranges go back, run it again to resume"},
    {"throttle", bf_cmd_throttle, "limit a job to N rows/s over all workers, while it runs"},
    {"verify", bf_cmd_verify, "compare source and target range by range (count + hash)"},
    {"keygen", bf_cmd_keygen, "write a CURVE key pair for a coordinator or a worker"},
    {"demo", bf_cmd_demo, "throwaway PostgreSQL + Redis, sample monolith, full backfill"},
    {"sandbox", bf_cmd_sandbox, "start/stop throwaway PostgreSQL + Redis (tests, demos)"},
};

static void s_usage(FILE *f)
{
    fprintf(f, "usage: backfill COMMAND [ARGS]   (backfill COMMAND --help for details)\n\n"
               "Copies rows from a monolith's PostgreSQL into service databases: ranges of\n"
               "primary keys handed out to workers over ZeroMQ, checkpointed in Redis.\n\n");
    for (size_t i = 0; i < sizeof s_commands / sizeof s_commands[0]; i++)
        fprintf(f, "  %-12s %s\n", s_commands[i].name, s_commands[i].summary);
    fprintf(f,
            "\nexit codes: %d ok, %d failed/mismatch, %d usage or job file error, %d server "
            "unreachable,\n            %d data/schema problem, %d internal, %d interrupted "
            "(resumable)\n",
            BF_EXIT_OK, BF_EXIT_FAILED, BF_EXIT_USAGE, BF_EXIT_CONNECT, BF_EXIT_DATA,
            BF_EXIT_INTERNAL, BF_EXIT_INTERRUPTED);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        s_usage(stderr);
        return BF_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        s_usage(stdout);
        return BF_EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("backfill %s\n", BF_VERSION);
        return BF_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof s_commands / sizeof s_commands[0]; i++)
        if (strcmp(cmd, s_commands[i].name) == 0)
            return s_commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "backfill: unknown command '%s'\n\n", cmd);
    s_usage(stderr);
    return BF_EXIT_USAGE;
}

/* Live control of a running job, fleet-wide through the job's Redis state:
 * `backfill pause|resume|cancel JOB.yaml` and `backfill throttle JOB.yaml
 * --rows-per-second N`. Every worker asks Redis before each batch (bf_admit in
 * functions.lua), so a change reaches all of them within about one batch. */
#include "commands.h"
#include "exitcodes.h"
#include "jobctx.h"
#include "joblock.h"
#include "log.h"
#include "strbuf.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { CTL_PAUSE, CTL_RESUME, CTL_CANCEL, CTL_THROTTLE } ctl_t;

static const char *const s_usage[] = {
    [CTL_PAUSE] = "usage: backfill pause JOB.yaml\n\n"
                  "Stops all copying of the job: every worker finishes the batch in hand and\n"
                  "then waits at its checkpoint, keeping its range. `backfill resume` continues.\n",
    [CTL_RESUME] = "usage: backfill resume JOB.yaml\n\n"
                   "Lets the workers of a paused job copy again.\n",
    [CTL_CANCEL] = "usage: backfill cancel JOB.yaml\n\n"
                   "Stops the job: the coordinator tells every worker to hand its range back at\n"
                   "its last checkpoint, and exits (code 130, as on Ctrl-C). Nothing is lost;\n"
                   "run the job again (`backfill run` or `backfill coordinator`) to resume it.\n",
    [CTL_THROTTLE] = "usage: backfill throttle JOB.yaml --rows-per-second N\n\n"
                     "Limits the job to N rows per second over all its workers (a token bucket\n"
                     "shared in Redis); 0 removes the limit. Takes effect at each worker's next\n"
                     "batch (about a second: batch_ms) and can be changed while the job runs.\n"};

static int s_control(int argc, char **argv, ctl_t what)
{
    static const struct option opts[] = {{"rows-per-second", required_argument, NULL, 'r'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    long long rate = -1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            fputs(s_usage[what], stdout);
            return BF_EXIT_OK;
        }
        if (c == 'r' && what == CTL_THROTTLE) {
            /* (A rate over a trillion rows/s is a typo.) */
            if (bf_parse_ll(optarg, 0, 1000000000000LL, &rate) == 0)
                continue;
            fprintf(stderr,
                    "backfill throttle: --rows-per-second wants a whole number from 0 to "
                    "1000000000000, not '%s'\n",
                    optarg);
            return BF_EXIT_USAGE;
        }
        fputs(s_usage[what], stderr);
        return BF_EXIT_USAGE;
    }
    if (optind + 1 != argc || (what == CTL_THROTTLE && rate < 0)) {
        fputs(s_usage[what], stderr);
        return BF_EXIT_USAGE;
    }
    bf_log_set_role(argv[0]);
    bf_jobctx_t ctx;
    int rc = bf_jobctx_open(&ctx, argv[optind], BF_NEED_REDIS | BF_REDIS_ONLY);
    if (rc != BF_EXIT_OK) {
        bf_jobctx_close(&ctx);
        return rc;
    }
    bf_rstate_t *r = ctx.redis;
    const char *name = ctx.job->name;
    int planned = bf_rstate_is_planned(r);
    if (planned <= 0) {
        if (planned < 0)
            log_error("%s", r->errmsg);
        else
            log_error("job %s has not started (no plan in redis %s): nothing to %s", name,
                      r->redacted, argv[0]);
        bf_jobctx_close(&ctx);
        return planned < 0 ? BF_EXIT_CONNECT : BF_EXIT_USAGE;
    }
    if (what == CTL_CANCEL) {
        /* The flag is for a running coordinator (a starting one clears it). */
        char holder[700];
        int held = bf_joblock_holder(r, holder, sizeof holder);
        if (held < 0) {
            log_error("%s", r->errmsg);
            bf_jobctx_close(&ctx);
            return BF_EXIT_CONNECT;
        }
        if (held == 0) {
            printf("job %s: no coordinator is running it; nothing to cancel\n", name);
            bf_jobctx_close(&ctx);
            return BF_EXIT_OK;
        }
    }
    const char *meta = bf_rstate_key(r, "meta");
    redisReply *rep = NULL;
    switch (what) {
    case CTL_PAUSE:
        rep = bf_rstate_cmd(r, "HSET %s paused 1", meta);
        break;
    case CTL_RESUME:
        rep = bf_rstate_cmd(r, "HDEL %s paused", meta);
        break;
    case CTL_CANCEL:
        rep = bf_rstate_cmd(r, "HSET %s cancel 1", meta);
        break;
    case CTL_THROTTLE:
        rep = rate > 0 ? bf_rstate_cmd(r, "HSET %s rate %lld", meta, rate)
                       : bf_rstate_cmd(r, "HDEL %s rate", meta);
        break;
    }
    if (!rep) {
        log_error("%s", r->errmsg);
        bf_jobctx_close(&ctx);
        return BF_EXIT_CONNECT;
    }
    freeReplyObject(rep);
    switch (what) {
    case CTL_PAUSE:
        printf("job %s paused: workers stop after the batch in hand; `backfill resume %s` "
               "continues\n",
               name, argv[optind]);
        break;
    case CTL_RESUME:
        printf("job %s resumed\n", name);
        break;
    case CTL_CANCEL:
        printf("job %s cancelled: the coordinator stops within a second and its workers hand "
               "their ranges back; run the job again to resume\n",
               name);
        break;
    case CTL_THROTTLE:
        if (rate > 0)
            printf("job %s throttled to %lld rows/s over all workers\n", name, rate);
        else
            printf("job %s: throttle removed\n", name);
        break;
    }
    bf_jobctx_close(&ctx);
    return BF_EXIT_OK;
}

int bf_cmd_pause(int argc, char **argv)
{
    return s_control(argc, argv, CTL_PAUSE);
}
int bf_cmd_resume(int argc, char **argv)
{
    return s_control(argc, argv, CTL_RESUME);
}
int bf_cmd_cancel(int argc, char **argv)
{
    return s_control(argc, argv, CTL_CANCEL);
}
int bf_cmd_throttle(int argc, char **argv)
{
    return s_control(argc, argv, CTL_THROTTLE);
}

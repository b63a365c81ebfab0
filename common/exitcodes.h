/* Named exit codes shared by every sub-command, so that scripts, systemd and the
 * `run` supervisor can tell a retryable failure from one that needs a fix. */
#ifndef BF_EXITCODES_H
#define BF_EXITCODES_H

#define BF_EXIT_OK 0            /* done; for verify: everything matches */
#define BF_EXIT_FAILED 1        /* job failed, or verify found mismatching ranges */
#define BF_EXIT_USAGE 2         /* bad command line or job file: fix it and run again */
#define BF_EXIT_CONNECT 3       /* a server could not be reached: retryable */
#define BF_EXIT_DATA 4          /* a table, column or row problem: needs a fix */
#define BF_EXIT_INTERNAL 5      /* a bug or resource exhaustion */
#define BF_EXIT_INTERRUPTED 130 /* stopped by SIGINT/SIGTERM; progress is checkpointed */

#endif

/* Fault injection points for the fault tests (tests/integration/test_fence_*.sh,
 * test_chaos.sh): real signals at exact places that random timing would only
 * rarely hit. Off unless the environment sets
 *
 *   BF_FAULT=POINT:N:ACTION     e.g. after-commit:3:kill, in-copy:2:stop
 *
 * which makes the N-th pass through POINT in this process raise SIGKILL (kill)
 * or SIGSTOP (stop) against itself. Points: "in-copy" (a batch's rows are
 * streaming into the target, its transaction holds the range), "after-commit"
 * (a batch is committed on the target, its Redis checkpoint not yet written),
 * "between-targets" (a routed batch was written to one target, the next target's
 * rows are not read yet), and in the coordinator "before-finish" (every range is
 * done; the parked rows and the targets' sequences are not handled yet). */
#ifndef BF_FAULT_H
#define BF_FAULT_H

/* Reads BF_FAULT once; an unparsable value is reported and ignored. */
void bf_fault_init(void);

/* Counts a pass through point and fires the configured action on the N-th. */
void bf_fault_point(const char *point);

#endif

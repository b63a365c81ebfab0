/* Sub-commands of the `backfill` binary. Each takes the arguments after its name
 * (argv[0] is the sub-command name) and returns a BF_EXIT_* code. */
#ifndef BF_COMMANDS_H
#define BF_COMMANDS_H

int bf_cmd_run(int argc, char **argv);
int bf_cmd_coordinator(int argc, char **argv);
int bf_cmd_worker(int argc, char **argv);
int bf_cmd_plan(int argc, char **argv);
int bf_cmd_status(int argc, char **argv);
int bf_cmd_verify(int argc, char **argv);
int bf_cmd_demo(int argc, char **argv);
int bf_cmd_sandbox(int argc, char **argv);
int bf_cmd_pause(int argc, char **argv);
int bf_cmd_resume(int argc, char **argv);
int bf_cmd_cancel(int argc, char **argv);
int bf_cmd_throttle(int argc, char **argv);
int bf_cmd_keygen(int argc, char **argv);

/* The body of `run`, also used by `demo`. */
int bf_run_job(const char *job_path, int workers, const char *log_level);

#endif

/* One logging entry point for every process. Lines carry time, level, role, pid
 * and job; `--log-format json` switches to JSON lines. Formatting is skipped for
 * filtered levels. Never pass a connection string here without bf_redact(). */
#ifndef BF_LOG_H
#define BF_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { BF_LOG_DEBUG = 0, BF_LOG_INFO, BF_LOG_WARN, BF_LOG_ERROR } bf_log_level_t;

extern bf_log_level_t bf_log_min_level;

void bf_log_set_role(const char *role);
void bf_log_set_job(const char *job);
void bf_log_set_level(bf_log_level_t level);
void bf_log_set_json(bool json);
/* Parses "debug", "info", "warn", "error"; returns -1 when unknown. */
int bf_log_level_parse(const char *name);
/* Called before each line the calling thread writes (a live progress display
 * erases itself; lines of other threads, e.g. the metrics server's, do not call
 * it: they would race the display). */
void bf_log_set_hook(void (*before_line)(void *arg), void *arg);
void bf_log_write(bf_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes a line another process logged (a child's stderr, relayed) to stderr as
 * is, calling the hook first like a line of this thread's. */
void bf_log_relay(const char *line, size_t len);

#define bf_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) >= bf_log_min_level)                                                           \
            bf_log_write((level), __VA_ARGS__);                                                    \
    } while (0)
#define log_debug(...) bf_log(BF_LOG_DEBUG, __VA_ARGS__)
#define log_info(...) bf_log(BF_LOG_INFO, __VA_ARGS__)
#define log_warn(...) bf_log(BF_LOG_WARN, __VA_ARGS__)
#define log_error(...) bf_log(BF_LOG_ERROR, __VA_ARGS__)

#endif

#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

bf_log_level_t bf_log_min_level = BF_LOG_INFO;

static char s_role[32] = "backfill";
static char s_job[128] = "";
static bool s_json = false;
static const char *s_level_names[] = {"debug", "info", "warn", "error"};
static void (*s_hook)(void *);
static void *s_hook_arg;
static pthread_t s_hook_thread; /* the hook runs only for lines of this thread */

void bf_log_set_hook(void (*before_line)(void *arg), void *arg)
{
    s_hook = before_line;
    s_hook_arg = arg;
    s_hook_thread = pthread_self();
}

void bf_log_set_role(const char *role)
{
    snprintf(s_role, sizeof s_role, "%s", role);
}

void bf_log_set_job(const char *job)
{
    snprintf(s_job, sizeof s_job, "%s", job ? job : "");
}

void bf_log_set_level(bf_log_level_t level)
{
    bf_log_min_level = level;
}

void bf_log_set_json(bool json)
{
    s_json = json;
}

int bf_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, s_level_names[i]) == 0)
            return i;
    return -1;
}

/* Writes s as a JSON string body (without quotes). */
static void s_json_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
}

void bf_log_write(bf_log_level_t level, const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ld", (long)(tv.tv_usec / 1000));

    /* One fprintf per line keeps lines whole when several processes share stderr. */
    char line[4608];
    if (s_json) {
        FILE *f = fmemopen(line, sizeof line - 2, "w");
        if (!f)
            return;
        fprintf(f, "{\"time\":\"%s\",\"level\":\"%s\",\"role\":\"%s\",\"pid\":%d,\"job\":\"", ts,
                s_level_names[level], s_role, (int)getpid());
        s_json_escape(f, s_job);
        fputs("\",\"msg\":\"", f);
        s_json_escape(f, msg);
        fputs("\"}", f);
        long len = ftell(f);
        fclose(f);
        line[len] = '\n';
        line[len + 1] = 0;
    } else {
        snprintf(line, sizeof line, "%s %-5s %s[%d]%s%s: %s\n", ts, s_level_names[level], s_role,
                 (int)getpid(), s_job[0] ? " " : "", s_job, msg);
    }
    if (s_hook && pthread_equal(pthread_self(), s_hook_thread))
        s_hook(s_hook_arg);
    fputs(line, stderr);
}

void bf_log_relay(const char *line, size_t len)
{
    if (s_hook && pthread_equal(pthread_self(), s_hook_thread))
        s_hook(s_hook_arg);
    fwrite(line, 1, len, stderr);
}

#include "fault.h"

#include "log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char s_point[32]; /* "" = no fault configured */
static long s_at;        /* fire on this pass */
static long s_passes;    /* passes so far */
static int s_signal;     /* SIGKILL or SIGSTOP */

void bf_fault_init(void)
{
    const char *spec = getenv("BF_FAULT");
    s_point[0] = 0;
    s_passes = 0;
    if (!spec || !*spec)
        return;
    char point[32], action[16];
    long at = 0;
    if (sscanf(spec, "%31[a-z-]:%ld:%15[a-z]", point, &at, action) != 3 || at < 1 ||
        (strcmp(action, "kill") != 0 && strcmp(action, "stop") != 0)) {
        log_warn("ignoring BF_FAULT='%s' (expected POINT:N:kill|stop)", spec);
        return;
    }
    snprintf(s_point, sizeof s_point, "%s", point);
    s_at = at;
    s_signal = strcmp(action, "kill") == 0 ? SIGKILL : SIGSTOP;
    log_warn("fault injection armed: %s at pass %ld of %s", action, at, point);
}

void bf_fault_point(const char *point)
{
    if (!s_point[0] || strcmp(point, s_point) != 0)
        return;
    if (++s_passes != s_at)
        return;
    log_warn("fault injection: %s at %s (pass %ld)", s_signal == SIGKILL ? "SIGKILL" : "SIGSTOP",
             point, s_passes);
    raise(s_signal);
}

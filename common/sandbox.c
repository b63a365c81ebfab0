/* Throwaway PostgreSQL + Redis servers, see sandbox.h.
 *
 * Layout of a sandbox directory DIR (the "run dir" is DIR itself unless the server
 * user cannot reach DIR, e.g. DIR under /root while running as root: then the server
 * files live in a mkdtemp'd /tmp/bf-sandbox-XXXXXX and DIR/run links to it):
 *
 *   DIR/env            KEY=value lines (shell-sourceable), written before the servers start
 *   DIR/run            symlink to the run dir when it is not DIR
 *   RUN/pgdata         PostgreSQL data directory
 *   RUN/pg             PostgreSQL unix socket directory (a /tmp/bf-pg-XXXXXX when the
 *                      socket path would be too long)
 *   RUN/redis          Redis data directory (AOF)
 *   RUN/pg.log, RUN/redis.log, RUN/redis.pid, RUN/initdb.log, RUN/pg_ctl.log
 */
#include "sandbox.h"

#include "log.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define S_RUNDIR_PREFIX "bf-sandbox-"
#define S_SOCKDIR_PREFIX "bf-pg-"
/* Longest socket file name PostgreSQL appends to the socket directory. */
#define S_PGSOCK_SUFFIX "/.s.PGSQL.65535"
#define S_SOCKPATH_MAX 100

typedef struct {
    bool drop;        /* we are root: run server programs as uid/gid */
    bool have_runner; /* uid/gid/user are known */
    uid_t uid;
    gid_t gid;
    char user[64];
    char dir[PATH_MAX];     /* the sandbox directory */
    char rundir[PATH_MAX];  /* where the server files live */
    char sockdir[PATH_MAX]; /* PostgreSQL socket directory */
    char bindir[PATH_MAX];  /* PostgreSQL server binaries; empty when not found */
    char redis_bin[PATH_MAX];
} s_ctx_t;

/* Entries a sandbox directory may hold; anything else makes start refuse the dir. */
static const char *const s_entries[] = {"env",       "env.tmp",    "run",        "pgdata",
                                        "pg",        "redis",      "pg.log",     "redis.log",
                                        "redis.pid", "initdb.log", "pg_ctl.log", NULL};

/* ------------------------------------------------------------------ small helpers */

static int s_path(char *out, size_t outlen, const char *a, const char *b)
{
    int n = snprintf(out, outlen, "%s/%s", a, b);
    if (n < 0 || (size_t)n >= outlen) {
        log_error("sandbox: path too long: %s/%s", a, b);
        return -1;
    }
    return 0;
}

static int s_copy(char *out, size_t outlen, const char *s)
{
    size_t n = strlen(s);
    if (n >= outlen)
        return -1;
    memcpy(out, s, n + 1);
    return 0;
}

/* Copies s into out, truncating to fit; always NUL-terminates. */
static void s_set(char *out, size_t outlen, const char *s)
{
    size_t n = strlen(s);
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, s, n);
    out[n] = 0;
}

static long long s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static bool s_is_exec(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

static bool s_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool s_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static const char *s_basename(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* True when path is a directory this code mkdtemp'd under /tmp with the given prefix,
 * i.e. safe to remove recursively. */
static bool s_is_our_tmp(const char *path, const char *prefix)
{
    return strncmp(path, "/tmp/", 5) == 0 && strchr(path + 5, '/') == NULL &&
           strncmp(s_basename(path), prefix, strlen(prefix)) == 0;
}

/* The last lines (at most ~1500 bytes) of a log file, for error messages. */
static void s_tail(const char *path, char *out, size_t outlen)
{
    out[0] = 0;
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(out, outlen, "(no %s: %s)", path, strerror(errno));
        return;
    }
    char buf[1536];
    long want = (long)sizeof buf - 1;
    bool cut = false;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        if (size > want) {
            fseek(f, size - want, SEEK_SET);
            cut = true;
        } else {
            fseek(f, 0, SEEK_SET);
        }
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *start = buf;
    if (cut) {
        char *nl = strchr(buf, '\n');
        if (nl)
            start = nl + 1;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    if (!*start)
        snprintf(out, outlen, "(%s is empty)", path);
    else
        snprintf(out, outlen, "%s", start);
}

static int s_mkdir_p(const char *path, mode_t mode)
{
    char tmp[PATH_MAX];
    if (s_copy(tmp, sizeof tmp, path) != 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, mode) != 0 && errno != EEXIST)
        return -1;
    return s_is_dir(tmp) ? 0 : (errno = ENOTDIR, -1);
}

static int s_rm_errors;

static int s_rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(p) != 0 && errno != ENOENT) {
        log_warn("sandbox: cannot remove %s: %s", p, strerror(errno));
        s_rm_errors++;
    }
    return 0;
}

/* rm -rf path (does not follow symlinks). */
static int s_rmrf(const char *path)
{
    if (!s_exists(path))
        return 0;
    s_rm_errors = 0;
    if (nftw(path, s_rm_cb, 16, FTW_DEPTH | FTW_PHYS) != 0) {
        log_warn("sandbox: cannot remove %s: %s", path, strerror(errno));
        return -1;
    }
    return s_rm_errors ? -1 : 0;
}

static uid_t s_chown_uid;
static gid_t s_chown_gid;
static int s_chown_errors;

static int s_chown_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (lchown(p, s_chown_uid, s_chown_gid) != 0) {
        log_error("sandbox: cannot chown %s: %s", p, strerror(errno));
        s_chown_errors++;
        return 1;
    }
    return 0;
}

/* chown -R to the server user when running as root; a no-op otherwise. */
static int s_chown_r(const s_ctx_t *c, const char *path)
{
    if (!c->drop)
        return 0;
    s_chown_uid = c->uid;
    s_chown_gid = c->gid;
    s_chown_errors = 0;
    if (nftw(path, s_chown_cb, 16, FTW_PHYS) != 0 || s_chown_errors) {
        if (!s_chown_errors)
            log_error("sandbox: cannot chown %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Reads the first line of a pid file; 0 when missing or unreadable. */
static pid_t s_read_pid(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return pid > 0 && pid < INT_MAX ? (pid_t)pid : 0;
}

/* True while pid exists and is not a zombie. */
static bool s_pid_alive(pid_t pid)
{
    if (pid <= 0)
        return false;
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return false;
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(p, "re");
    if (!f)
        return errno != ENOENT;
    char buf[512];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'))
        return false;
    return true;
}

/* True when pid is alive and its command name starts with name (guards against
 * signalling an unrelated process that reused the pid of a stale pid file). */
static bool s_proc_is(pid_t pid, const char *name)
{
    if (!s_pid_alive(pid))
        return false;
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/comm", (int)pid);
    FILE *f = fopen(p, "re");
    if (!f)
        return errno != ENOENT; /* no /proc: trust the pid file */
    char comm[64] = "";
    if (!fgets(comm, sizeof comm, f))
        comm[0] = 0;
    fclose(f);
    return strncmp(comm, name, strlen(name)) == 0;
}

static bool s_wait_gone(pid_t pid, int timeout_ms)
{
    long long deadline = s_now_ms() + timeout_ms;
    while (s_pid_alive(pid)) {
        if (s_now_ms() >= deadline)
            return false;
        s_sleep_ms(25);
    }
    return true;
}

/* ------------------------------------------------------------------ child processes */

static void s_close_from(int lowfd)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    if (close_range((unsigned)lowfd, ~0U, 0) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = lowfd; fd < max; fd++)
        close(fd);
}

/* In the forked child: drop privileges when root, redirect output, exec. */
__attribute__((noreturn)) static void s_child_exec(const s_ctx_t *c, char *const argv[],
                                                   const char *out_path, bool truncate)
{
    int in = open("/dev/null", O_RDONLY);
    if (in >= 0 && in != 0) {
        dup2(in, 0);
        close(in);
    }
    if (c->drop) {
        gid_t g = c->gid;
        if (setgroups(1, &g) != 0 || setgid(c->gid) != 0 || setuid(c->uid) != 0) {
            dprintf(2, "backfill sandbox: cannot switch to user %s: %s\n", c->user,
                    strerror(errno));
            _exit(126);
        }
    }
    int out = out_path
                  ? open(out_path, O_WRONLY | O_CREAT | O_APPEND | (truncate ? O_TRUNC : 0), 0640)
                  : open("/dev/null", O_WRONLY);
    if (out < 0) {
        dprintf(2, "backfill sandbox: cannot open %s: %s\n", out_path ? out_path : "/dev/null",
                strerror(errno));
        _exit(126);
    }
    dup2(out, 1);
    dup2(out, 2);
    if (out > 2)
        close(out);
    s_close_from(3);
    if (chdir(c->rundir[0] ? c->rundir : "/") != 0 && chdir("/") != 0)
        _exit(126);
    execv(argv[0], argv);
    dprintf(2, "backfill sandbox: cannot execute %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Runs argv[0] (an absolute path) as the server user with stdout/stderr appended to
 * out_path (NULL: /dev/null) and waits for it, killing it after timeout_ms. Returns
 * its exit status, or -1 with the reason in why. */
static int s_run(const s_ctx_t *c, char *const argv[], const char *out_path, bool truncate,
                 int timeout_ms, char *why, size_t whylen)
{
    why[0] = 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, whylen, "cannot fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0)
        s_child_exec(c, argv, out_path, truncate);

    long long deadline = s_now_ms() + timeout_ms;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            snprintf(why, whylen, "waitpid: %s", strerror(errno));
            kill(pid, SIGKILL);
            return -1;
        }
        if (s_now_ms() >= deadline) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            snprintf(why, whylen, "timed out after %d s", timeout_ms / 1000);
            return -1;
        }
        s_sleep_ms(10);
    }
    if (WIFEXITED(status)) {
        snprintf(why, whylen, "exit status %d", WEXITSTATUS(status));
        return WEXITSTATUS(status);
    }
    if (WIFSIGNALED(status))
        snprintf(why, whylen, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(why, whylen, "wait status %d", status);
    return -1;
}

/* True when the server user can read, write and enter path. */
static bool s_user_can_access(const s_ctx_t *c, const char *path)
{
    if (!c->drop)
        return access(path, R_OK | W_OK | X_OK) == 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        gid_t g = c->gid;
        if (setgroups(1, &g) != 0 || setgid(c->gid) != 0 || setuid(c->uid) != 0)
            _exit(2);
        _exit(access(path, R_OK | W_OK | X_OK) == 0 ? 0 : 1);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return false;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* ------------------------------------------------------------------ discovery */

/* Sets the user the servers run as: the caller, or when root the named user (default
 * "postgres"), since PostgreSQL refuses to run as root. */
static int s_runner_from_name(s_ctx_t *c, const char *name, bool quiet)
{
    if (geteuid() != 0) {
        struct passwd *pw = getpwuid(geteuid());
        const char *n = pw ? pw->pw_name : getenv("USER");
        if (!n || s_copy(c->user, sizeof c->user, n) != 0) {
            if (!quiet)
                log_error("sandbox: cannot determine the name of user id %d", (int)geteuid());
            return -1;
        }
        c->drop = false;
        c->uid = geteuid();
        c->gid = getegid();
        c->have_runner = true;
        return 0;
    }
    c->drop = true;
    if (!name || !*name || strcmp(name, "root") == 0)
        name = "postgres";
    struct passwd *pw = getpwnam(name);
    if (!pw || pw->pw_uid == 0) {
        if (!quiet)
            log_error("sandbox: running as root, but PostgreSQL refuses to run as root and there "
                      "is no unprivileged '%s' user to run the servers as: install postgresql "
                      "(its package creates the 'postgres' user), create an unprivileged user "
                      "named %s, or run backfill as a non-root user",
                      name, name);
        return -1;
    }
    if (s_copy(c->user, sizeof c->user, pw->pw_name) != 0) {
        if (!quiet)
            log_error("sandbox: user name too long: %s", pw->pw_name);
        return -1;
    }
    c->uid = pw->pw_uid;
    c->gid = pw->pw_gid;
    c->have_runner = true;
    return 0;
}

static bool s_bindir_ok(const char *dir)
{
    char p[PATH_MAX];
    const char *progs[] = {"initdb", "pg_ctl", "postgres"};
    for (size_t i = 0; i < sizeof progs / sizeof progs[0]; i++) {
        int n = snprintf(p, sizeof p, "%s/%s", dir, progs[i]);
        if (n < 0 || (size_t)n >= sizeof p || !s_is_exec(p))
            return false;
    }
    return true;
}

/* Finds prog in $PATH (then in extra, a NULL-terminated list of directories) and
 * stores its absolute path in out. Symlinks are kept: redis-server is a link to
 * redis-check-rdb on Debian, which picks its role from argv[0]. */
static int s_which(const char *prog, const char *const *extra, char *out, size_t outlen)
{
    const char *path = getenv("PATH");
    char cand[PATH_MAX];
    if (path) {
        const char *p = path;
        while (*p) {
            const char *e = strchr(p, ':');
            size_t len = e ? (size_t)(e - p) : strlen(p);
            if (len > 0 && len < sizeof cand - strlen(prog) - 2) {
                memcpy(cand, p, len);
                snprintf(cand + len, sizeof cand - len, "/%s", prog);
                if (cand[0] == '/' && s_is_exec(cand) && s_copy(out, outlen, cand) == 0)
                    return 0;
            }
            if (!e)
                break;
            p = e + 1;
        }
    }
    for (; extra && *extra; extra++) {
        int n = snprintf(cand, sizeof cand, "%s/%s", *extra, prog);
        if (n > 0 && (size_t)n < sizeof cand && s_is_exec(cand) && s_copy(out, outlen, cand) == 0)
            return 0;
    }
    return -1;
}

/* PostgreSQL server binaries: $BF_PG_BINDIR, the highest /usr/lib/postgresql/N/bin,
 * `pg_config --bindir` (often the client-only directory), then $PATH. */
static int s_find_bindir(char *out, size_t outlen)
{
    const char *env = getenv("BF_PG_BINDIR");
    if (env && *env && s_bindir_ok(env) && s_copy(out, outlen, env) == 0)
        return 0;

    DIR *d = opendir("/usr/lib/postgresql");
    if (d) {
        long best_major = -1, best_minor = -1;
        char best[PATH_MAX] = "";
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            char *end;
            long major = strtol(de->d_name, &end, 10);
            if (end == de->d_name)
                continue;
            long minor = *end == '.' ? strtol(end + 1, NULL, 10) : 0;
            char cand[PATH_MAX];
            int n = snprintf(cand, sizeof cand, "/usr/lib/postgresql/%s/bin", de->d_name);
            if (n < 0 || (size_t)n >= sizeof cand || !s_bindir_ok(cand))
                continue;
            if (major > best_major || (major == best_major && minor > best_minor)) {
                best_major = major;
                best_minor = minor;
                s_set(best, sizeof best, cand);
            }
        }
        closedir(d);
        if (best[0] && s_copy(out, outlen, best) == 0)
            return 0;
    }

    FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
    if (p) {
        char line[PATH_MAX] = "";
        if (!fgets(line, sizeof line, p))
            line[0] = 0;
        pclose(p);
        line[strcspn(line, "\r\n")] = 0;
        if (line[0] && s_bindir_ok(line) && s_copy(out, outlen, line) == 0)
            return 0;
    }

    char initdb[PATH_MAX];
    char real[PATH_MAX];
    if (s_which("initdb", NULL, initdb, sizeof initdb) == 0 && realpath(initdb, real)) {
        char *slash = strrchr(real, '/');
        if (slash) {
            *slash = 0;
            if (s_bindir_ok(real) && s_copy(out, outlen, real) == 0)
                return 0;
        }
    }
    return -1;
}

static int s_find_redis(char *out, size_t outlen)
{
    const char *env = getenv("BF_REDIS_SERVER");
    if (env && *env && s_is_exec(env) && s_copy(out, outlen, env) == 0)
        return 0;
    static const char *const extra[] = {"/usr/bin", "/usr/local/bin", "/usr/sbin",
                                        "/usr/local/sbin", NULL};
    return s_which("redis-server", extra, out, outlen);
}

/* ------------------------------------------------------------------ env file */

typedef struct {
    int pg_port;
    int redis_port;
    char pg_user[64];
    char sockdir[PATH_MAX];
    char bindir[PATH_MAX];
    char rundir[PATH_MAX];
} s_env_t;

static bool s_shell_safe(const char *v)
{
    if (!*v)
        return false;
    for (const char *p = v; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr("_./:@%+,-=", ch)))
            return false;
    }
    return true;
}

static void s_env_put(FILE *f, const char *key, const char *val)
{
    if (s_shell_safe(val)) {
        fprintf(f, "%s=%s\n", key, val);
        return;
    }
    fprintf(f, "%s='", key);
    for (const char *p = val; *p; p++) {
        if (*p == '\'')
            fputs("'\\''", f);
        else
            fputc(*p, f);
    }
    fputs("'\n", f);
}

/* Undoes the shell quoting s_env_put may add (single quotes, backslashes, double
 * quotes). */
static void s_unquote(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    char q = 0;
    for (const char *p = in; *p && o + 1 < outlen; p++) {
        if (q == '\'') {
            if (*p == '\'')
                q = 0;
            else
                out[o++] = *p;
        } else if (q == '"') {
            if (*p == '"')
                q = 0;
            else if (*p == '\\' && p[1])
                out[o++] = *++p;
            else
                out[o++] = *p;
        } else if (*p == '\'' || *p == '"') {
            q = *p;
        } else if (*p == '\\' && p[1]) {
            out[o++] = *++p;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = 0;
}

static int s_env_write(const s_ctx_t *c, const bf_sandbox_t *sb)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    if (s_path(path, sizeof path, c->dir, "env") != 0 ||
        s_path(tmp, sizeof tmp, c->dir, "env.tmp") != 0)
        return -1;
    FILE *f = fopen(tmp, "we");
    if (!f) {
        log_error("sandbox: cannot write %s: %s", tmp, strerror(errno));
        return -1;
    }
    char num[32], url[96];
    fputs("# backfill sandbox: PostgreSQL and Redis for demos and tests\n", f);
    s_env_put(f, "BF_PGHOST", "127.0.0.1");
    snprintf(num, sizeof num, "%d", sb->pg_port);
    s_env_put(f, "BF_PGPORT", num);
    s_env_put(f, "BF_PGUSER", sb->pg_user);
    s_env_put(f, "BF_PGSOCKDIR", c->sockdir);
    snprintf(num, sizeof num, "%d", sb->redis_port);
    s_env_put(f, "BF_REDIS_PORT", num);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", sb->redis_port);
    s_env_put(f, "BF_REDIS_URL", url);
    s_env_put(f, "BF_PG_BINDIR", c->bindir);
    s_env_put(f, "BF_SANDBOX_DIR", c->dir);
    s_env_put(f, "BF_SANDBOX_RUNDIR", c->rundir);
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad || rename(tmp, path) != 0) {
        log_error("sandbox: cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (c->drop && lchown(path, c->uid, c->gid) != 0)
        log_warn("sandbox: cannot chown %s: %s", path, strerror(errno));
    return 0;
}

/* Parses dir/env. Returns 0, or -1 (logged unless quiet) when it is missing or lacks
 * the ports. */
static int s_env_read(const char *dir, s_env_t *e, bool quiet)
{
    memset(e, 0, sizeof *e);
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/env", dir);
    if (n < 0 || (size_t)n >= sizeof path) {
        if (!quiet)
            log_error("sandbox: path too long: %s/env", dir);
        return -1;
    }
    FILE *f = fopen(path, "re");
    if (!f) {
        if (!quiet)
            log_error("sandbox: cannot read %s: %s (is a sandbox started there?)", path,
                      strerror(errno));
        return -1;
    }
    char line[PATH_MAX + 128];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *eq = strchr(line, '=');
        if (line[0] == '#' || !eq)
            continue;
        *eq = 0;
        const char *key = line;
        if (strncmp(key, "export ", 7) == 0)
            key += 7;
        char val[PATH_MAX];
        s_unquote(eq + 1, val, sizeof val);
        if (strcmp(key, "BF_PGPORT") == 0)
            e->pg_port = atoi(val);
        else if (strcmp(key, "BF_REDIS_PORT") == 0)
            e->redis_port = atoi(val);
        else if (strcmp(key, "BF_PGUSER") == 0)
            s_set(e->pg_user, sizeof e->pg_user, val);
        else if (strcmp(key, "BF_PGSOCKDIR") == 0)
            s_set(e->sockdir, sizeof e->sockdir, val);
        else if (strcmp(key, "BF_PG_BINDIR") == 0)
            s_set(e->bindir, sizeof e->bindir, val);
        else if (strcmp(key, "BF_SANDBOX_RUNDIR") == 0)
            s_set(e->rundir, sizeof e->rundir, val);
    }
    fclose(f);
    if (e->pg_port <= 0 || e->pg_port > 65535 || e->redis_port <= 0 || e->redis_port > 65535) {
        if (!quiet)
            log_error("sandbox: %s lacks valid BF_PGPORT and BF_REDIS_PORT", path);
        return -1;
    }
    return 0;
}

/* Fills c for an existing sandbox in sb->dir (from dir/env when present, else from the
 * default layout), for stop and restart. */
static void s_ctx_existing(s_ctx_t *c, const bf_sandbox_t *sb)
{
    memset(c, 0, sizeof *c);
    if (!realpath(sb->dir, c->dir))
        s_set(c->dir, sizeof c->dir, sb->dir);
    s_env_t e;
    bool have_env = s_env_read(sb->dir, &e, true) == 0;

    if (have_env && e.rundir[0] &&
        (strcmp(e.rundir, c->dir) == 0 || s_is_our_tmp(e.rundir, S_RUNDIR_PREFIX))) {
        s_set(c->rundir, sizeof c->rundir, e.rundir);
    } else {
        char link[PATH_MAX], target[PATH_MAX];
        ssize_t n = -1;
        if (s_path(link, sizeof link, c->dir, "run") == 0)
            n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            if (s_is_our_tmp(target, S_RUNDIR_PREFIX))
                s_set(c->rundir, sizeof c->rundir, target);
        }
        if (!c->rundir[0])
            s_set(c->rundir, sizeof c->rundir, c->dir);
    }
    if (have_env && e.sockdir[0])
        s_set(c->sockdir, sizeof c->sockdir, e.sockdir);
    else if (s_path(c->sockdir, sizeof c->sockdir, c->rundir, "pg") != 0)
        c->sockdir[0] = 0;
    if (have_env && e.bindir[0] && s_bindir_ok(e.bindir))
        s_set(c->bindir, sizeof c->bindir, e.bindir);
    else if (s_find_bindir(c->bindir, sizeof c->bindir) != 0)
        c->bindir[0] = 0;
    if (s_find_redis(c->redis_bin, sizeof c->redis_bin) != 0)
        c->redis_bin[0] = 0;

    /* The server user: when root, the owner of the data directory, else the one named
     * in sb/env, else "postgres". */
    if (geteuid() == 0) {
        char pgdata[PATH_MAX];
        struct stat st;
        if (s_path(pgdata, sizeof pgdata, c->rundir, "pgdata") == 0 && stat(pgdata, &st) == 0 &&
            st.st_uid != 0) {
            struct passwd *pw = getpwuid(st.st_uid);
            c->drop = true;
            c->uid = st.st_uid;
            c->gid = pw ? pw->pw_gid : st.st_gid;
            s_set(c->user, sizeof c->user, pw ? pw->pw_name : "?");
            c->have_runner = true;
            return;
        }
    }
    const char *name = sb->pg_user[0] ? sb->pg_user : (have_env ? e.pg_user : NULL);
    if (s_runner_from_name(c, name, true) != 0) {
        c->drop = geteuid() == 0;
        c->have_runner = false;
    }
}

/* ------------------------------------------------------------------ PostgreSQL */

static int s_pg_initdb(const s_ctx_t *c)
{
    char initdb[PATH_MAX], pgdata[PATH_MAX], logf[PATH_MAX], why[128];
    if (s_path(initdb, sizeof initdb, c->bindir, "initdb") != 0 ||
        s_path(pgdata, sizeof pgdata, c->rundir, "pgdata") != 0 ||
        s_path(logf, sizeof logf, c->rundir, "initdb.log") != 0)
        return -1;
    const char *locales[] = {"--locale=C.UTF-8", "--locale=C"};
    int rc = -1;
    for (size_t i = 0; i < 2; i++) {
        s_rmrf(pgdata);
        char user[80];
        s_set(user, sizeof user, c->user);
        char *argv[] = {initdb,         (char *)"-D",        pgdata,
                        (char *)"-A",   (char *)"trust",     (char *)"-U",
                        user,           (char *)"--no-sync", (char *)"-E",
                        (char *)"UTF8", (char *)locales[i],  NULL};
        rc = s_run(c, argv, logf, i == 0, 180000, why, sizeof why);
        if (rc == 0)
            return 0;
        log_debug("sandbox: initdb %s failed (%s)", locales[i], why);
    }
    char tail[1600];
    s_tail(logf, tail, sizeof tail);
    log_error("sandbox: initdb failed (%s); last lines of %s:\n%s", why, logf, tail);
    return -1;
}

/* Appends a conf value, single-quoted with quotes doubled. */
static void s_conf_str(FILE *f, const char *key, const char *val)
{
    fprintf(f, "%s = '", key);
    for (const char *p = val; *p; p++) {
        if (*p == '\'')
            fputc('\'', f);
        fputc(*p, f);
    }
    fputs("'\n", f);
}

static int s_pg_configure(const s_ctx_t *c, int port)
{
    char conf[PATH_MAX];
    if (s_path(conf, sizeof conf, c->rundir, "pgdata/postgresql.conf") != 0)
        return -1;
    FILE *f = fopen(conf, "ae");
    if (!f) {
        log_error("sandbox: cannot open %s: %s", conf, strerror(errno));
        return -1;
    }
    fputs("\n# backfill sandbox: throwaway server, durability off\n", f);
    s_conf_str(f, "listen_addresses", "127.0.0.1");
    fprintf(f, "port = %d\n", port);
    s_conf_str(f, "unix_socket_directories", c->sockdir);
    fputs("fsync = off\n"
          "full_page_writes = off\n"
          "synchronous_commit = off\n"
          "max_connections = 200\n"
          "shared_buffers = 256MB\n"
          "max_wal_size = 4GB\n"
          "checkpoint_timeout = 30min\n"
          "logging_collector = off\n",
          f);
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) {
        log_error("sandbox: cannot write %s: %s", conf, strerror(errno));
        return -1;
    }
    return 0;
}

static int s_pg_start(const s_ctx_t *c)
{
    char pg_ctl[PATH_MAX], pgdata[PATH_MAX], logf[PATH_MAX], ctllog[PATH_MAX], why[128];
    if (s_path(pg_ctl, sizeof pg_ctl, c->bindir, "pg_ctl") != 0 ||
        s_path(pgdata, sizeof pgdata, c->rundir, "pgdata") != 0 ||
        s_path(logf, sizeof logf, c->rundir, "pg.log") != 0 ||
        s_path(ctllog, sizeof ctllog, c->rundir, "pg_ctl.log") != 0)
        return -1;
    char *argv[] = {pg_ctl,       (char *)"-D", pgdata,       (char *)"-l",    logf,
                    (char *)"-w", (char *)"-t", (char *)"60", (char *)"start", NULL};
    int rc = s_run(c, argv, ctllog, true, 90000, why, sizeof why);
    if (rc == 0)
        return 0;
    char tail[1600];
    struct stat st;
    const char *shown = stat(logf, &st) == 0 && st.st_size > 0 ? logf : ctllog;
    s_tail(shown, tail, sizeof tail);
    log_error("sandbox: PostgreSQL failed to start (pg_ctl %s); last lines of %s:\n%s", why, shown,
              tail);
    return -1;
}

/* Stops PostgreSQL if it runs: pg_ctl stop -m fast, falling back to signals. */
static int s_pg_stop(const s_ctx_t *c)
{
    char pgdata[PATH_MAX], pidfile[PATH_MAX], ctllog[PATH_MAX];
    if (s_path(pgdata, sizeof pgdata, c->rundir, "pgdata") != 0 ||
        s_path(pidfile, sizeof pidfile, c->rundir, "pgdata/postmaster.pid") != 0 ||
        s_path(ctllog, sizeof ctllog, c->rundir, "pg_ctl.log") != 0)
        return -1;
    pid_t pid = s_read_pid(pidfile);
    if (pid <= 0)
        return 0;
    if (!s_proc_is(pid, "postgres")) {
        log_debug("sandbox: removing stale %s (pid %d is gone)", pidfile, (int)pid);
        unlink(pidfile);
        return 0;
    }
    log_info("sandbox: stopping PostgreSQL (pid %d)", (int)pid);
    char why[128] = "";
    if (c->bindir[0] && c->have_runner) {
        char pg_ctl[PATH_MAX];
        if (s_path(pg_ctl, sizeof pg_ctl, c->bindir, "pg_ctl") == 0) {
            char *argv[] = {pg_ctl,         (char *)"-D", pgdata,       (char *)"-m",
                            (char *)"fast", (char *)"-w", (char *)"-t", (char *)"60",
                            (char *)"stop", NULL};
            int rc = s_run(c, argv, ctllog, false, 90000, why, sizeof why);
            if (rc == 0 && s_wait_gone(pid, 5000))
                return 0;
        }
    }
    /* pg_ctl missing or failed: fast shutdown, then immediate, then kill. */
    const int sigs[] = {SIGINT, SIGQUIT, SIGKILL};
    const int waits[] = {30000, 5000, 5000};
    for (int i = 0; i < 3; i++) {
        if (kill(pid, sigs[i]) != 0 && errno == ESRCH)
            return 0;
        if (s_wait_gone(pid, waits[i]))
            return 0;
    }
    char tail[1600];
    s_tail(ctllog, tail, sizeof tail);
    log_error("sandbox: cannot stop PostgreSQL pid %d (pg_ctl: %s); last lines of %s:\n%s",
              (int)pid, why[0] ? why : "not run", ctllog, tail);
    return -1;
}

/* ------------------------------------------------------------------ Redis */

static bool s_is_string_reply(const redisReply *r)
{
#ifdef REDIS_REPLY_VERBATIM
    if (r->type == REDIS_REPLY_VERBATIM)
        return true;
#endif
    return r->type == REDIS_REPLY_STRING;
}

/* PINGs Redis on port; returns 1 when it answers PONG (and stores INFO's process_id
 * in *server_pid), 0 when not (yet), e.g. still loading the AOF. */
static int s_redis_ping(int port, pid_t *server_pid)
{
    struct timeval tv = {0, 500000};
    redisContext *ctx = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!ctx)
        return 0;
    if (ctx->err) {
        redisFree(ctx);
        return 0;
    }
    redisSetTimeout(ctx, tv);
    int ok = 0;
    redisReply *r = redisCommand(ctx, "PING");
    if (r && r->type == REDIS_REPLY_STATUS && r->str && strcmp(r->str, "PONG") == 0)
        ok = 1;
    if (r)
        freeReplyObject(r);
    *server_pid = 0;
    if (ok) {
        r = redisCommand(ctx, "INFO server");
        if (r && s_is_string_reply(r) && r->str) {
            const char *p = strstr(r->str, "process_id:");
            if (p)
                *server_pid = (pid_t)atol(p + strlen("process_id:"));
        }
        if (r)
            freeReplyObject(r);
    }
    redisFree(ctx);
    return ok;
}

static int s_redis_stop(const s_ctx_t *c)
{
    char pidfile[PATH_MAX];
    if (s_path(pidfile, sizeof pidfile, c->rundir, "redis.pid") != 0)
        return -1;
    pid_t pid = s_read_pid(pidfile);
    if (pid <= 0)
        return 0;
    if (!s_proc_is(pid, "redis")) {
        log_debug("sandbox: removing stale %s (pid %d is gone)", pidfile, (int)pid);
        unlink(pidfile);
        return 0;
    }
    log_info("sandbox: stopping Redis (pid %d)", (int)pid);
    /* SIGTERM is a graceful SHUTDOWN: the AOF is flushed and fsynced. */
    if (kill(pid, SIGTERM) != 0 && errno == ESRCH)
        goto gone;
    if (s_wait_gone(pid, 10000))
        goto gone;
    log_warn("sandbox: Redis pid %d ignored SIGTERM for 10 s; killing it", (int)pid);
    kill(pid, SIGKILL);
    if (!s_wait_gone(pid, 5000)) {
        log_error("sandbox: cannot stop Redis pid %d", (int)pid);
        return -1;
    }
gone:
    unlink(pidfile);
    return 0;
}

static int s_redis_start(const s_ctx_t *c, int port)
{
    char data[PATH_MAX], pidfile[PATH_MAX], logf[PATH_MAX], portstr[16], why[128];
    if (!c->redis_bin[0]) {
        log_error("sandbox: redis-server not found in PATH (install redis-server)");
        return -1;
    }
    if (s_path(data, sizeof data, c->rundir, "redis") != 0 ||
        s_path(pidfile, sizeof pidfile, c->rundir, "redis.pid") != 0 ||
        s_path(logf, sizeof logf, c->rundir, "redis.log") != 0)
        return -1;
    snprintf(portstr, sizeof portstr, "%d", port);
    unlink(pidfile);
    char redis_bin[PATH_MAX];
    s_set(redis_bin, sizeof redis_bin, c->redis_bin);
    char *argv[] = {redis_bin,
                    (char *)"--port",
                    portstr,
                    (char *)"--bind",
                    (char *)"127.0.0.1",
                    (char *)"--dir",
                    data,
                    (char *)"--appendonly",
                    (char *)"yes",
                    (char *)"--appendfsync",
                    (char *)"everysec",
                    (char *)"--save",
                    (char *)"",
                    (char *)"--daemonize",
                    (char *)"yes",
                    (char *)"--pidfile",
                    pidfile,
                    (char *)"--logfile",
                    logf,
                    (char *)"--protected-mode",
                    (char *)"no",
                    NULL};
    int rc = s_run(c, argv, logf, false, 15000, why, sizeof why);
    if (rc == 0) {
        /* Daemonized: wait until our server (the pid in the pid file, not some other
         * process that grabbed the port) answers PING. */
        long long deadline = s_now_ms() + 10000;
        for (;;) {
            pid_t server = 0;
            if (s_redis_ping(port, &server)) {
                pid_t ours = s_read_pid(pidfile);
                if (ours > 0 && (server == 0 || server == ours))
                    return 0;
                if (ours > 0 || s_now_ms() >= deadline) {
                    snprintf(why, sizeof why, "port %d answers from another Redis (pid %d)", port,
                             (int)server);
                    break;
                }
            }
            if (s_now_ms() >= deadline) {
                snprintf(why, sizeof why, "no answer to PING on port %d within 10 s", port);
                break;
            }
            s_sleep_ms(50);
        }
    }
    s_redis_stop(c);
    char tail[1600];
    s_tail(logf, tail, sizeof tail);
    log_error("sandbox: Redis failed to start (%s); last lines of %s:\n%s", why, logf, tail);
    return -1;
}

/* ------------------------------------------------------------------ directories */

static bool s_known_entry(const char *name)
{
    for (int i = 0; s_entries[i]; i++)
        if (strcmp(name, s_entries[i]) == 0)
            return true;
    return false;
}

/* Stops whatever runs in the sandbox and, when remove, deletes its files (only the
 * entries a sandbox creates) and the directory itself when that leaves it empty. */
static int s_stop_all(const s_ctx_t *c, bool remove_files, bool remove_dir)
{
    int rc = 0;
    if (s_pg_stop(c) != 0)
        rc = -1;
    if (s_redis_stop(c) != 0)
        rc = -1;
    if (rc != 0 || !remove_files)
        return rc;

    if (strcmp(c->sockdir, c->rundir) != 0 && s_is_our_tmp(c->sockdir, S_SOCKDIR_PREFIX))
        s_rmrf(c->sockdir);
    if (strcmp(c->rundir, c->dir) != 0 && s_is_our_tmp(c->rundir, S_RUNDIR_PREFIX))
        s_rmrf(c->rundir);
    DIR *d = opendir(c->dir);
    if (!d)
        return errno == ENOENT ? 0 : -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!s_known_entry(de->d_name))
            continue;
        char p[PATH_MAX];
        if (s_path(p, sizeof p, c->dir, de->d_name) == 0 && s_rmrf(p) != 0)
            rc = -1;
    }
    closedir(d);
    if (remove_dir && rmdir(c->dir) != 0 && errno != ENOENT) {
        log_warn("sandbox: left %s in place: %s", c->dir, strerror(errno));
        if (errno != ENOTEMPTY && errno != EEXIST)
            rc = -1;
    }
    return rc;
}

/* Creates dir when missing. */
static int s_make_dir(const char *dir, bool *created)
{
    *created = false;
    struct stat st;
    if (lstat(dir, &st) == 0)
        return 0;
    if (errno != ENOENT) {
        log_error("sandbox: cannot use %s: %s", dir, strerror(errno));
        return -1;
    }
    if (s_mkdir_p(dir, 0755) != 0) {
        log_error("sandbox: cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    *created = true;
    return 0;
}

/* Serializes sandbox commands on one directory (a second `start` waits, then finds
 * and replaces the first one's servers). Returns an fd to close, or -1 (no lock). */
static int s_lock_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return fd;
    if (errno != EWOULDBLOCK) {
        close(fd);
        return -1;
    }
    log_info("sandbox: waiting for another backfill sandbox command on %s", dir);
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

static void s_unlock_dir(int fd)
{
    if (fd >= 0)
        close(fd);
}

/* Checks an existing dir (under the lock): fine when empty; an earlier sandbox there
 * is stopped and cleared; anything else is refused. */
static int s_prepare_dir(const char *dir)
{
    if (!s_is_dir(dir)) {
        log_error("sandbox: %s exists and is not a directory", dir);
        return -1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        log_error("sandbox: cannot read %s: %s", dir, strerror(errno));
        return -1;
    }
    bool ours = false;
    char foreign[256] = "";
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (s_known_entry(de->d_name))
            ours = true;
        else if (!foreign[0])
            s_set(foreign, sizeof foreign, de->d_name);
    }
    closedir(d);
    if (foreign[0]) {
        log_error("sandbox: %s holds files that are not a sandbox's (e.g. %s); refusing to use "
                  "it: pick another --dir or empty it",
                  dir, foreign);
        return -1;
    }
    if (!ours)
        return 0;

    /* Left over from an earlier run (maybe crashed): stop its servers, start afresh. */
    bf_sandbox_t old;
    memset(&old, 0, sizeof old);
    if (!realpath(dir, old.dir) && s_copy(old.dir, sizeof old.dir, dir) != 0)
        return -1;
    s_env_t e;
    if (s_env_read(old.dir, &e, true) == 0)
        s_set(old.pg_user, sizeof old.pg_user, e.pg_user);
    log_warn("sandbox: %s holds a sandbox from an earlier run; stopping it and starting afresh",
             dir);
    s_ctx_t c;
    s_ctx_existing(&c, &old);
    if (s_stop_all(&c, true, false) != 0) {
        log_error("sandbox: cannot stop the earlier sandbox in %s; stop its servers by hand "
                  "(see %s/pgdata/postmaster.pid and %s/redis.pid)",
                  dir, c.rundir, c.rundir);
        return -1;
    }
    return 0;
}

/* Binds a TCP socket to 127.0.0.1:0; returns the fd (kept open so that the next call
 * gets a different port) and the port. */
static int s_free_port(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

static int s_pick_ports(int *pg_port, int *redis_port)
{
    int fd1 = s_free_port(pg_port);
    if (fd1 < 0) {
        log_error("sandbox: cannot find a free port on 127.0.0.1: %s", strerror(errno));
        return -1;
    }
    int fd2 = s_free_port(redis_port);
    int err = errno;
    close(fd1);
    if (fd2 < 0) {
        log_error("sandbox: cannot find a free port on 127.0.0.1: %s", strerror(err));
        return -1;
    }
    close(fd2);
    if (*pg_port == *redis_port) {
        log_error("sandbox: got the same free port twice (%d)", *pg_port);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ public API */

static int s_start(bf_sandbox_t *sb, const char *dir, bool created, s_ctx_t *cp);

int bf_sandbox_start(bf_sandbox_t *sb, const char *dir)
{
    memset(sb, 0, sizeof *sb);
    s_ctx_t c;
    memset(&c, 0, sizeof c);
    if (s_runner_from_name(&c, NULL, false) != 0)
        return -1;
    if (s_find_bindir(c.bindir, sizeof c.bindir) != 0) {
        log_error("sandbox: PostgreSQL server programs (initdb, pg_ctl, postgres) not found in "
                  "/usr/lib/postgresql/*/bin, `pg_config --bindir` or PATH: install postgresql "
                  "or set BF_PG_BINDIR");
        return -1;
    }
    if (s_find_redis(c.redis_bin, sizeof c.redis_bin) != 0) {
        log_error("sandbox: redis-server not found in PATH: install redis-server");
        return -1;
    }

    bool created = false;
    char tmpl[] = "/tmp/" S_RUNDIR_PREFIX "XXXXXX";
    if (!dir) {
        if (!mkdtemp(tmpl)) {
            log_error("sandbox: cannot create a directory under /tmp: %s", strerror(errno));
            return -1;
        }
        dir = tmpl;
        created = true;
    } else if (s_make_dir(dir, &created) != 0) {
        return -1;
    }
    int lock = s_lock_dir(dir);
    int rc = s_start(sb, dir, created, &c);
    s_unlock_dir(lock);
    return rc;
}

/* bf_sandbox_start under the directory lock; c has the runner and programs. */
static int s_start(bf_sandbox_t *sb, const char *dir, bool created, s_ctx_t *cp)
{
    s_ctx_t c = *cp;
    if (s_prepare_dir(dir) != 0) {
        if (created)
            rmdir(dir);
        return -1;
    }
    if (!realpath(dir, c.dir)) {
        log_error("sandbox: cannot resolve %s: %s", dir, strerror(errno));
        return -1;
    }
    if (s_copy(sb->dir, sizeof sb->dir, c.dir) != 0 || strlen(c.dir) > 400) {
        log_error("sandbox: directory path too long: %s", c.dir);
        if (created)
            rmdir(c.dir);
        return -1;
    }
    s_set(sb->pg_user, sizeof sb->pg_user, c.user);
    s_set(c.rundir, sizeof c.rundir, c.dir);

    /* From here on, failures clean up what was created. */
    if (c.drop && s_chown_r(&c, c.dir) != 0)
        goto fail;
    if (!s_user_can_access(&c, c.dir)) {
        /* e.g. a build dir under /root: keep the server files where the user can go. */
        char rtmpl[] = "/tmp/" S_RUNDIR_PREFIX "XXXXXX";
        char link[PATH_MAX];
        if (!mkdtemp(rtmpl)) {
            log_error("sandbox: cannot create a directory under /tmp: %s", strerror(errno));
            goto fail;
        }
        s_set(c.rundir, sizeof c.rundir, rtmpl);
        if (s_path(link, sizeof link, c.dir, "run") != 0 || symlink(c.rundir, link) != 0) {
            log_error("sandbox: cannot link %s/run to %s: %s", c.dir, c.rundir, strerror(errno));
            s_rmrf(c.rundir);
            goto fail;
        }
        if (c.drop && lchown(link, c.uid, c.gid) != 0)
            log_warn("sandbox: cannot chown %s: %s", link, strerror(errno));
        if (s_chown_r(&c, c.rundir) != 0)
            goto fail;
        log_info("sandbox: user %s cannot reach %s; keeping the server files in %s", c.user, c.dir,
                 c.rundir);
    }

    /* The socket path (sockdir + "/.s.PGSQL.NNNNN") must fit in sun_path. */
    if (s_path(c.sockdir, sizeof c.sockdir, c.rundir, "pg") != 0)
        goto fail;
    if (strlen(c.sockdir) + strlen(S_PGSOCK_SUFFIX) >= S_SOCKPATH_MAX) {
        char stmpl[] = "/tmp/" S_SOCKDIR_PREFIX "XXXXXX";
        if (!mkdtemp(stmpl)) {
            log_error("sandbox: cannot create a directory under /tmp: %s", strerror(errno));
            goto fail;
        }
        s_set(c.sockdir, sizeof c.sockdir, stmpl);
        chmod(c.sockdir, 0755);
    } else if (mkdir(c.sockdir, 0755) != 0 && errno != EEXIST) {
        log_error("sandbox: cannot create %s: %s", c.sockdir, strerror(errno));
        goto fail;
    }
    char redisdir[PATH_MAX];
    if (s_path(redisdir, sizeof redisdir, c.rundir, "redis") != 0)
        goto fail;
    if (mkdir(redisdir, 0750) != 0 && errno != EEXIST) {
        log_error("sandbox: cannot create %s: %s", redisdir, strerror(errno));
        goto fail;
    }
    if (s_chown_r(&c, c.sockdir) != 0 || s_chown_r(&c, redisdir) != 0)
        goto fail;

    if (s_pick_ports(&sb->pg_port, &sb->redis_port) != 0)
        goto fail;
    /* Written before the servers start so that stop finds them even after a crash. */
    if (s_env_write(&c, sb) != 0)
        goto fail;

    log_info("sandbox: initdb in %s/pgdata (user %s)", c.rundir, c.user);
    if (s_pg_initdb(&c) != 0 || s_pg_configure(&c, sb->pg_port) != 0 || s_pg_start(&c) != 0)
        goto fail;
    if (s_redis_start(&c, sb->redis_port) != 0)
        goto fail;
    log_info("sandbox: PostgreSQL on 127.0.0.1:%d (user %s), Redis on 127.0.0.1:%d; env in %s/env",
             sb->pg_port, sb->pg_user, sb->redis_port, sb->dir);
    return 0;

fail:
    s_stop_all(&c, true, created);
    return -1;
}

int bf_sandbox_load(bf_sandbox_t *sb, const char *dir)
{
    memset(sb, 0, sizeof *sb);
    if (!dir || !*dir) {
        log_error("sandbox: no directory given");
        return -1;
    }
    char abs[PATH_MAX];
    if (!realpath(dir, abs) && s_copy(abs, sizeof abs, dir) != 0) {
        log_error("sandbox: directory path too long: %s", dir);
        return -1;
    }
    if (s_copy(sb->dir, sizeof sb->dir, abs) != 0) {
        log_error("sandbox: directory path too long: %s", abs);
        return -1;
    }
    s_env_t e;
    if (s_env_read(sb->dir, &e, false) != 0)
        return -1;
    sb->pg_port = e.pg_port;
    sb->redis_port = e.redis_port;
    s_set(sb->pg_user, sizeof sb->pg_user, e.pg_user);
    return 0;
}

int bf_sandbox_stop(bf_sandbox_t *sb, bool keep_dir)
{
    if (!sb || !sb->dir[0]) {
        log_error("sandbox: stop without a directory");
        return -1;
    }
    if (!s_exists(sb->dir)) {
        log_info("sandbox: %s does not exist; nothing to stop", sb->dir);
        return 0;
    }
    int lock = s_lock_dir(sb->dir);
    s_ctx_t c;
    s_ctx_existing(&c, sb);
    int rc = s_stop_all(&c, !keep_dir, !keep_dir);
    s_unlock_dir(lock);
    if (rc == 0)
        log_info("sandbox: stopped%s %s", keep_dir ? "; kept" : " and removed", sb->dir);
    return rc;
}

/* Stops and starts one server of a loaded sandbox (pg: PostgreSQL, else Redis),
 * down_ms apart, under the directory lock. */
static int s_restart(bf_sandbox_t *sb, bool pg, int down_ms)
{
    const char *name = pg ? "PostgreSQL" : "Redis";
    int port = pg ? sb ? sb->pg_port : 0 : sb ? sb->redis_port : 0;
    if (!sb || !sb->dir[0] || port <= 0) {
        log_error("sandbox: %s restart without a loaded sandbox", name);
        return -1;
    }
    s_ctx_t c;
    s_ctx_existing(&c, sb);
    if (c.drop && !c.have_runner) {
        log_error("sandbox: cannot tell which user runs the servers in %s", sb->dir);
        return -1;
    }
    int lock = s_lock_dir(sb->dir);
    int rc = pg ? s_pg_stop(&c) : s_redis_stop(&c);
    if (rc == 0 && down_ms > 0)
        s_sleep_ms(down_ms);
    if (rc == 0)
        rc = pg ? s_pg_start(&c) : s_redis_start(&c, port);
    s_unlock_dir(lock);
    if (rc == 0)
        log_info("sandbox: %s restarted on 127.0.0.1:%d", name, port);
    return rc == 0 ? 0 : -1;
}

int bf_sandbox_redis_restart(bf_sandbox_t *sb)
{
    return s_restart(sb, false, 0);
}

int bf_sandbox_pg_restart(bf_sandbox_t *sb, int down_ms)
{
    return s_restart(sb, true, down_ms);
}

/* Percent-encodes everything but RFC 3986 unreserved characters. */
static size_t s_uri_escape(const char *s, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s && o + 4 < outlen; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = 0;
    return o;
}

void bf_sandbox_pg_uri(const bf_sandbox_t *sb, const char *db, char *out, size_t outlen)
{
    if (!out || outlen == 0)
        return;
    char user[200], dbname[200];
    s_uri_escape(sb->pg_user[0] ? sb->pg_user : "postgres", user, sizeof user);
    s_uri_escape(db && *db ? db : "postgres", dbname, sizeof dbname);
    snprintf(out, outlen, "postgresql://%s@127.0.0.1:%d/%s", user, sb->pg_port, dbname);
}

/* The job file: what to copy from where to where. Parsed with libyaml; every error
 * names the file and line and says what to fix. `${VAR}` in any scalar expands from
 * the environment (or from a lookup the caller passes, e.g. values shipped by the
 * coordinator to workers), so passwords stay out of files. */
#ifndef BF_JOB_H
#define BF_JOB_H

#include <stddef.h>
#include <stdint.h>

#define BF_DEFAULT_BATCH_ROWS 10000
#define BF_DEFAULT_RANGE_ROWS 1000000
#define BF_DEFAULT_BATCH_MS 1000
#define BF_DEFAULT_BATCH_MAX_MB 64

typedef struct {
    char *alias; /* name used in `to:` (a YAML key under targets) */
    char *dsn;   /* libpq connection string or URI, ${VAR} expanded */
    int line;    /* line in the job file */
} bf_target_t;

/* How rows are written (per table). */
typedef enum {
    BF_MODE_INSERT = 0, /* plain COPY: the fastest; the target must not hold the keys */
    BF_MODE_SKIP,       /* rows whose key the target holds are kept (dual writes win) */
    BF_MODE_UPSERT,     /* rows whose key the target holds are overwritten (source wins) */
    BF_MODE_NEWER,      /* overwritten only where the source's version column is greater */
} bf_mode_t;

/* One entry of a table's `columns:` mapping. */
typedef struct {
    char *name; /* target column */
    char *expr; /* SQL expression over the source columns; NULL = not written */
    int line;
} bf_column_t;

/* Where rows go: `to:` is one route without a condition; `route:` lists several,
 * the first whose `when` holds takes the row. */
typedef struct {
    char *when;   /* SQL condition on the source row; NULL = every row left */
    char *alias;  /* target alias, one of job->targets */
    char *schema; /* target schema, default "public" */
    char *table;  /* target table */
    int line;     /* line of this route's `to:` */
    int when_line;
} bf_route_t;

typedef struct {
    char *from_schema;    /* source schema, default "public" */
    char *from_table;     /* source table */
    int line;             /* line of this entry's `from:` */
    char **key;           /* key columns (`key:`), NULL = the source's primary key */
    int nkey;             /* entries in key */
    int key_line;         /* line of `key:` */
    char *where;          /* SQL filter on the source, NULL = every row */
    int where_line;       /* line of `where:` */
    bf_column_t *columns; /* `columns:` entries (others matched by name) */
    int ncolumns;
    bf_mode_t mode; /* `mode:`, default insert */
    int mode_line;
    char *version; /* `version:` target column compared in mode newer */
    int version_line;
    bf_route_t *routes; /* at least one */
    int nroutes;
} bf_table_t;

/* "insert", "skip", "upsert", "newer". */
const char *bf_mode_name(bf_mode_t mode);

typedef struct {
    char *path;   /* file the job came from (for messages) */
    char *name;   /* job name: [A-Za-z0-9_.-]+, used in Redis keys and fence rows */
    char *source; /* source DSN */
    char *redis;  /* redis://[:password@]host[:port][/db] */
    bf_target_t *targets;
    int ntargets;
    bf_table_t *tables;
    int ntables;
    int64_t batch_rows;   /* rows of a lease's first batch, > 0 */
    int64_t batch_ms;     /* later batches are sized to take about this long; 0 = fixed */
    int64_t batch_max_mb; /* and to carry at most this much data */
    int64_t range_rows;   /* target rows per range, > 0 */
    /* Automatic throttle: the coordinator runs throttle_query (one number, e.g.
     * replication lag in seconds) on throttle_on ("source" or a target alias)
     * every 2 s; above throttle_max the workers back off until it is below. */
    char *throttle_query; /* NULL = none */
    char *throttle_on;    /* NULL = "source" */
    double throttle_max;
    int throttle_line; /* of throttle_query, for messages */
    /* Environment variables the file referenced, with the values used, so the
     * coordinator can ship them to workers along with the text. */
    char **env_names;
    char **env_values;
    int nenv;
    char *text; /* the job file's text as read */
} bf_job_t;

/* Returns the value for NAME or NULL when unset. */
typedef const char *(*bf_env_fn)(const char *name, void *arg);

/* Loads and validates a job file. On error returns NULL and writes one line
 * ("FILE:LINE: what is wrong; how to fix") to err. */
bf_job_t *bf_job_load_file(const char *path, char *err, size_t errlen);

/* The same for commands that only talk to Redis (status, pause, resume, cancel,
 * throttle): an unset ${VAR} outside `redis:` and `name:` (a database's password)
 * stays "${VAR}", so the operator's machine needs Redis's secret only. */
bf_job_t *bf_job_load_file_redis_only(const char *path, char *err, size_t errlen);

/* Same from text; label is the file name used in messages. env may be NULL
 * (then getenv is used). */
bf_job_t *bf_job_load_string(const char *text, const char *label, bf_env_fn env, void *env_arg,
                             char *err, size_t errlen);

void bf_job_destroy(bf_job_t **self_p);

/* The target with that alias, or NULL. */
const bf_target_t *bf_job_target(const bf_job_t *job, const char *alias);

#endif

/* The fence table on every target: the last word on what was written. Each batch
 * upserts its range's row in the same transaction as its rows; a worker whose
 * lease was taken over (smaller token) cannot commit. See DESIGN.md, Fencing. */
#ifndef BF_FENCE_H
#define BF_FENCE_H

/* lo and hi: the range's bounds as its last writer knew them ("=" key, "-" open;
 * NULL: not known yet). hi only shrinks (splits), and a split is recorded here
 * before Redis hears of it: a lease whose hi is larger than its fence rows' lost
 * that split in Redis (a failover, a crash with appendfsync everysec). */
#define BF_FENCE_DDL                                                                               \
    "CREATE TABLE IF NOT EXISTS public.backfill_fence ("                                           \
    " job text NOT NULL, range_id bigint NOT NULL, token bigint NOT NULL,"                         \
    " seq bigint NOT NULL, cursor text, final boolean NOT NULL DEFAULT false,"                     \
    " updated_at timestamptz NOT NULL DEFAULT now(), lo text, hi text,"                            \
    " PRIMARY KEY (job, range_id))"

/* A fence table of an earlier version gets lo and hi (only when missing: ALTER
 * TABLE would wait for every open batch). */
#define BF_FENCE_MIGRATE                                                                           \
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid ="                       \
    " 'public.backfill_fence'::regclass AND attname = 'hi' AND NOT attisdropped) THEN"             \
    " ALTER TABLE public.backfill_fence ADD COLUMN lo text, ADD COLUMN hi text;"                   \
    " END IF; END $$"

/* What the targets know of a job: one more than its largest range id, and its
 * largest fencing token (a coordinator raises Redis's counters to these). */
#define BF_FENCE_MAX                                                                               \
    "SELECT coalesce(max(range_id) + 1, 0), coalesce(max(token), 0)"                               \
    " FROM public.backfill_fence WHERE job = $1"

/* Another range's fence row starting at lo: the part a lost split gave away. */
#define BF_FENCE_FIND_LO                                                                           \
    "SELECT range_id FROM public.backfill_fence WHERE job = $1 AND lo = $2 AND range_id <> $3"     \
    " ORDER BY range_id LIMIT 1"

/* Rows a target rejected (constraint violation, value too long...), when the job
 * allows some (--max-rejects): what was tried, and why it failed. tbl is the
 * target table (the route's label), src the source table and key its key: two
 * source tables copied into one target table may reject rows of the same key.
 * parked: the row referred to a row the target did not have yet (a foreign key);
 * it is tried again when every range is done (coordinator/parked.c), and counts as
 * rejected only if it still fails then. */
#define BF_REJECTS_DDL                                                                             \
    "CREATE TABLE IF NOT EXISTS public.backfill_rejects ("                                         \
    " job text NOT NULL, range_id bigint NOT NULL, tbl text NOT NULL, key text NOT NULL,"          \
    " error text NOT NULL, row jsonb, at timestamptz NOT NULL DEFAULT now(),"                      \
    " parked boolean NOT NULL DEFAULT false, src text NOT NULL DEFAULT '',"                        \
    " PRIMARY KEY (job, tbl, src, key))"

/* A rejects table of an older version gets the parked and src columns and the key
 * with src (only when missing: ALTER TABLE locks the table even when there is
 * nothing to do). Its rows keep src '': whichever source table writes tbl. */
#define BF_REJECTS_MIGRATE                                                                         \
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid ="                       \
    " 'public.backfill_rejects'::regclass AND attname = 'parked' AND NOT attisdropped) THEN"       \
    " ALTER TABLE public.backfill_rejects ADD COLUMN parked boolean NOT NULL DEFAULT false;"       \
    " END IF; IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid ="                          \
    " 'public.backfill_rejects'::regclass AND attname = 'src' AND NOT attisdropped) THEN"          \
    " ALTER TABLE public.backfill_rejects ADD COLUMN src text NOT NULL DEFAULT '',"                \
    " DROP CONSTRAINT backfill_rejects_pkey, ADD PRIMARY KEY (job, tbl, src, key);"                \
    " END IF; END $$"

#define BF_REJECTS_INSERT                                                                          \
    "INSERT INTO public.backfill_rejects (job, range_id, tbl, key, error, row, parked, src)"       \
    " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8) ON CONFLICT (job, tbl, src, key) DO UPDATE"   \
    " SET error = EXCLUDED.error, row = EXCLUDED.row, at = now(), parked = EXCLUDED.parked"

/* A fresh plan starts the job over: forget the fence rows of an earlier plan. */
#define BF_FENCE_RESET "DELETE FROM public.backfill_fence WHERE job = $1"
#define BF_REJECTS_RESET "DELETE FROM public.backfill_rejects WHERE job = $1"

/* ... and keep a floor above every token of that plan (range_id -1, token $2):
 * a worker of the earlier plan still holding a lease (it outlived its coordinator)
 * finds its range's new fence row above its token, instead of creating one at 0
 * and committing (a range of the new plan with that id would then go on from its
 * cursor, skipping rows when the plans differ). */
#define BF_FENCE_FLOOR                                                                             \
    "INSERT INTO public.backfill_fence (job, range_id, token, seq) VALUES ($1, -1, $2, 0)"         \
    " ON CONFLICT (job, range_id) DO UPDATE SET token ="                                           \
    " greatest(backfill_fence.token, EXCLUDED.token), updated_at = now()"

/* A range's fence row, at the floor's token (0 without one). */
#define BF_FENCE_ENSURE                                                                            \
    "INSERT INTO public.backfill_fence (job, range_id, token, seq) SELECT $1, $2, coalesce("       \
    "(SELECT token FROM public.backfill_fence WHERE job = $1 AND range_id = -1), 0), 0"            \
    " ON CONFLICT (job, range_id) DO NOTHING"

#define BF_FENCE_LOCK                                                                              \
    "SELECT token, seq, cursor, final, lo, hi FROM public.backfill_fence "                         \
    "WHERE job = $1 AND range_id = $2 FOR UPDATE"

#define BF_FENCE_UPDATE                                                                            \
    "UPDATE public.backfill_fence SET token = $3, seq = $4, cursor = $5, final = $6,"              \
    " lo = $7, hi = $8, updated_at = now() WHERE job = $1 AND range_id = $2"

/* A split, before Redis makes it: the range's new hi ($3). */
#define BF_FENCE_SET_HI                                                                            \
    "UPDATE public.backfill_fence SET hi = $3, updated_at = now()"                                 \
    " WHERE job = $1 AND range_id = $2"

/* A transaction-scoped advisory lock per (job, range) on the target, taken first in
 * every batch: unlike the fence row's lock, its holder is visible in pg_locks, so
 * a new lease can find and end the transaction of an older one. */
#define BF_RANGE_KEY "hashtext($1), $2::int"
#define BF_RANGE_TRYLOCK "SELECT pg_try_advisory_xact_lock(" BF_RANGE_KEY ")"
#define BF_RANGE_LOCK "SELECT pg_advisory_xact_lock(" BF_RANGE_KEY ")"
/* Who holds it: pid, application_name, and whether it is a session like ours
 * (same role and application name, i.e. a backfill worker of this job). */
#define BF_RANGE_HOLDERS                                                                           \
    "SELECT l.pid, coalesce(a.application_name, ''),"                                              \
    " a.usename = current_user AND a.application_name = current_setting('application_name')"       \
    " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"                               \
    " WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()"                   \
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"           \
    " AND l.classid = (hashtext($1)::bigint & 4294967295)::oid AND l.objid = $2::bigint::oid"      \
    " AND l.objsubid = 2"

#endif

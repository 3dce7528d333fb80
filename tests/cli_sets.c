/*
 * Table sets of the pgfan command: a database of the shapes users have
 * copied with --copy-schema to three empty databases from one snapshot,
 * consistency under pgbench's writes, resume after SIGKILL, and a target
 * reloaded after its backend was terminated (--retries).  Every table is
 * compared row by row in sessions with fixed settings.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "clitest.h"
#include "pgtest.h"

Suite *sets_suite(void);

#define FIXED_SETTINGS                                                                   \
    "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, YMD'; "                         \
    "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "                       \
    "SET TimeZone = 'UTC'; SET bytea_output = 'hex'"

enum { SRC, T1, T2, T3, NDBS };
static char dbinfo[NDBS][1200];

static PGconn *open_db(int i)
{
    PGconn *c = PQconnectdb(dbinfo[i]);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s", PQerrorMessage(c));
    pgt_exec(c, FIXED_SETTINGS);
    return c;
}

/* Fresh databases <prefix>_src, _t1, _t2, _t3. */
static void fresh_databases(const char *prefix)
{
    static const char *suffix[NDBS] = {"src", "t1", "t2", "t3"};
    PGconn *admin = pgt_connect();
    for (int i = 0; i < NDBS; i++) {
        pgt_exec(admin, "DROP DATABASE IF EXISTS %s_%s WITH (FORCE)", prefix, suffix[i]);
        pgt_exec(admin, "CREATE DATABASE %s_%s", prefix, suffix[i]);
        snprintf(dbinfo[i], sizeof dbinfo[i], "%s dbname=%s_%s",
                 getenv("PGFAN_TEST_CONNINFO"), prefix, suffix[i]);
    }
    PQfinish(admin);
}

/* Every row of a table as text, sorted: compared value by value. */
static char *rows_of(PGconn *c, const char *table, int only)
{
    return pgt_value(c,
                     "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') "
                     "FROM %s%s t",
                     only ? "ONLY " : "", table);
}

static void assert_same_rows(PGconn *src, PGconn *dst, const char *table, int only,
                             int target)
{
    char *want = rows_of(src, table, only), *got = rows_of(dst, table, only);
    ck_assert_msg(strcmp(want, got) == 0, "%s differs on target %d", table, target);
    free(want);
    free(got);
}

static int count_in(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* ---- a database of the shapes users have ---- */

static const char *const shapes_sql =
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');"
    "CREATE DOMAIN posint AS int CHECK (VALUE > 0);"
    "CREATE SCHEMA \"Sales\";"
    "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, m mood);"
    "CREATE TABLE orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer int "
    "NOT NULL REFERENCES customers(id), placed timestamptz, qty posint);"
    "CREATE TABLE \"Sales\".\"Order Lines\" (order_id int REFERENCES orders(id) "
    "DEFERRABLE "
    "INITIALLY DEFERRED, line int, \"Price\" numeric(12,2), UNIQUE (order_id, line));"
    "CREATE TABLE events (at date NOT NULL, what text) PARTITION BY RANGE (at);"
    "CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO "
    "('2026-01-01');"
    "CREATE TABLE events_other PARTITION OF events DEFAULT;"
    "CREATE TABLE animals (id int, name text);"
    "CREATE TABLE dogs (good bool) INHERITS (animals);"
    "CREATE TABLE boxes (w int, h int, area int GENERATED ALWAYS AS (w * h) STORED);"
    "CREATE TABLE nothing_here (id int PRIMARY KEY);"
    "CREATE TABLE codes (code text);"
    "CREATE UNIQUE INDEX codes_code ON codes (lower(code));"
    "CREATE TABLE big (id bigserial PRIMARY KEY, payload text, b bytea, f float8) WITH "
    "(autovacuum_enabled = off);"
    "CREATE INDEX big_payload ON big (payload);"
    "INSERT INTO customers (name, m) SELECT 'c' || g, (ARRAY['sad','ok','happy'])[g % 3 "
    "+ "
    "1]::mood FROM generate_series(1, 300) g;"
    "INSERT INTO orders (customer, placed, qty) SELECT g % 300 + 1, "
    "'2025-03-01'::timestamptz "
    "+ g * interval '1 hour', g % 7 + 1 FROM generate_series(1, 900) g;"
    "INSERT INTO \"Sales\".\"Order Lines\" SELECT g % 900 + 1, g, g / 7.0 FROM "
    "generate_series(1, 2000) g;"
    "INSERT INTO events SELECT '2024-12-20'::date + g, 'e' || g FROM generate_series(1, "
    "600) "
    "g;"
    "INSERT INTO animals VALUES (1, 'cat'), (2, 'cow');"
    "INSERT INTO dogs VALUES (3, 'rex', true);"
    "INSERT INTO boxes (w, h) SELECT g, g + 1 FROM generate_series(1, 50) g;"
    "INSERT INTO codes SELECT 'Code' || g FROM generate_series(1, 100) g;"
    "INSERT INTO big (payload, b, f) SELECT repeat(md5(g::text), 8) || E'\\t\\\\', "
    "decode(md5(g::text), 'hex'), g / 3.0 FROM generate_series(1, 20000) g;"
    "SELECT setval('customers_id_seq', 777);";

static const char *const shape_tables[][2] = {
    /* table, 1 = compare ONLY its own rows */
    {"customers", "1"}, {"orders", "1"},       {"\"Sales\".\"Order Lines\"", "1"},
    {"events", "0"},    {"animals", "1"},      {"dogs", "1"},
    {"boxes", "1"},     {"nothing_here", "1"}, {"codes", "1"},
    {"big", "1"}};

/* The whole database, schema and all, to three empty databases.  Its
 * materialized views are refreshed as pg_restore would (one reads
 * another); one created WITH NO DATA stays unpopulated, as on the source. */
START_TEST(a_database_is_copied_with_its_schema)
{
    fresh_databases("sets_shape");
    PGconn *src = open_db(SRC);
    pgt_exec(src, "%s", shapes_sql);
    pgt_exec(src, "CREATE MATERIALIZED VIEW per_customer AS SELECT customer, "
                  "count(*) AS n, sum(qty) AS qty FROM orders GROUP BY customer;"
                  "CREATE MATERIALIZED VIEW busiest AS SELECT max(n) AS n FROM "
                  "per_customer;"
                  "CREATE MATERIALIZED VIEW not_yet AS SELECT 1 AS one WITH NO DATA");
    char *report = strdup("/tmp/pgfan-set-report.XXXXXX");
    close(mkstemp(report));
    cli_run r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "-t", dbinfo[T2], "-t",
                        dbinfo[T3], "--all-tables", "--copy-schema", "--verify", "--jobs",
                        "3", "--report", report, "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    char *json = cli_slurp(report);
    unlink(report);
    free(report);
    /* 10 tables (the partitions go through events) x 3 targets */
    ck_assert_int_eq(count_in(json, "\"state\": \"committed\""), 30);
    ck_assert_int_eq(count_in(json, "\"verify\": \"same\""), 30);
    ck_assert_msg(strstr(json, "\"consistent\": true"), "%s", json);
    ck_assert_msg(strstr(json, "\"table\": \"Sales.Order Lines\""), "%s", json);
    for (int t = T1; t <= T3; t++) {
        PGconn *dst = open_db(t);
        for (size_t k = 0; k < sizeof shape_tables / sizeof *shape_tables; k++)
            assert_same_rows(src, dst, shape_tables[k][0], shape_tables[k][1][0] == '1',
                             t);
        char *p = pgt_value(dst, "SELECT count(*) FROM ONLY events_2025");
        ck_assert_str_eq(p, "365"); /* routed into the same partitions */
        free(p);
        const char *views =
            "SELECT string_agg(relname || ' ' || relispopulated::text, ', ' "
            "ORDER BY relname) FROM pg_class WHERE relkind = 'm'";
        p = pgt_value(dst, "%s", views);
        ck_assert_str_eq(p, "busiest true, not_yet false, per_customer true");
        free(p);
        assert_same_rows(src, dst, "per_customer", 0, t);
        assert_same_rows(src, dst, "busiest", 0, t);
        /* Loaded with FREEZE into the table the set created: every page is
         * all-visible at once (ANALYZE counts them; with autovacuum off on
         * it, nothing else could have set them). */
        pgt_exec(dst, "ANALYZE big");
        p = pgt_value(dst,
                      "SELECT relpages > 0 AND relallvisible = relpages FROM pg_class "
                      "WHERE oid = 'big'::regclass");
        ck_assert_msg(strcmp(p, "t") == 0, "target %d: big was not frozen", t);
        free(p);
        const char *seqs[] = {"customers_id_seq", "orders_id_seq", "big_id_seq"};
        for (int s = 0; s < 3; s++) {
            char *want = pgt_value(src, "SELECT last_value FROM %s", seqs[s]);
            char *got = pgt_value(dst, "SELECT last_value FROM %s", seqs[s]);
            ck_assert_msg(strcmp(want, got) == 0, "%s: %s != %s", seqs[s], want, got);
            free(want);
            free(got);
        }
        const char *defs =
            "SELECT string_agg(pg_get_indexdef(i.indexrelid) || "
            "i.indisvalid::text, ';' ORDER BY pg_get_indexdef(i.indexrelid)) FROM "
            "pg_index i JOIN "
            "pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON "
            "n.oid = c.relnamespace WHERE n.nspname IN ('public', 'Sales')";
        char *want = pgt_value(src, "%s", defs), *got = pgt_value(dst, "%s", defs);
        ck_assert_str_eq(want, got);
        free(want);
        free(got);
        const char *cons =
            "SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid) "
            "|| convalidated::text, ';' ORDER BY conname) FROM pg_constraint "
            "WHERE connamespace IN ('public'::regnamespace, "
            "'\"Sales\"'::regnamespace)";
        want = pgt_value(src, "%s", cons);
        got = pgt_value(dst, "%s", cons);
        ck_assert_str_eq(want, got);
        free(want);
        free(got);
        PQfinish(dst);
    }
    free(json);
    cli_free(&r);
    PQfinish(src);
}
END_TEST

/* --all-tables copies tables, not large objects: a database that holds
 * one is refused before anything moves (no table loaded, nothing noted on
 * the target), and --no-large-objects copies its tables without them. */
START_TEST(large_objects_are_never_left_behind_silently)
{
    fresh_databases("sets_lo");
    PGconn *src = open_db(SRC), *dst = open_db(T1);
    pgt_exec(src, "CREATE TABLE docs (id int, body oid);"
                  "INSERT INTO docs SELECT 1, lo_from_bytea(0, 'hello')");
    pgt_exec(dst, "CREATE TABLE docs (id int, body oid)");
    cli_run r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "--all-tables",
                        "--no-progress", NULL);
    ck_assert_msg(r.code == 2 && strstr(r.err, "holds 1 large objects") &&
                      strstr(r.err, "--no-large-objects"),
                  "exit %d: %s", r.code, r.err);
    cli_free(&r);
    char *n = pgt_value(dst, "SELECT (SELECT count(*) FROM docs) || '/' || (SELECT "
                             "count(*) FROM pg_namespace WHERE nspname = 'pgfan')");
    ck_assert_str_eq(n, "0/0");
    free(n);
    r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "--all-tables", "--no-large-objects",
                "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    cli_free(&r);
    assert_same_rows(src, dst, "docs", 1, T1);
    PQfinish(dst);
    PQfinish(src);
}
END_TEST

/* A materialized view that cannot be refreshed on a target (its query
 * divides by zero there) fails that target's post-data, loudly: the
 * statement and the server's SQLSTATE on stderr, "post_data": "failed" in
 * the report, exit 3, while the table itself is committed. */
START_TEST(a_view_that_cannot_be_refreshed_fails_the_post_data)
{
    fresh_databases("sets_mv");
    PGconn *src = open_db(SRC);
    pgt_exec(src, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);"
                  "CREATE MATERIALIZED VIEW mv AS SELECT 1 / (CASE WHEN "
                  "current_database() LIKE '%%_src' THEN 1 ELSE 0 END) AS x FROM t");
    cli_run r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "--all-tables",
                        "--copy-schema", "--report", "-", "--no-progress", NULL);
    ck_assert_msg(r.code == 3, "exit %d: %s", r.code, r.err);
    ck_assert_msg(
        strstr(r.err, "REFRESH MATERIALIZED VIEW public.mv: division by zero") &&
            strstr(r.err, "(SQLSTATE 22012)"),
        "%s", r.err);
    ck_assert_msg(strstr(r.out, "\"post_data\": \"failed\"") &&
                      strstr(r.out, "\"state\": \"committed\""),
                  "%s", r.out);
    cli_free(&r);
    PQfinish(src);
}
END_TEST

/* pg_dump's patterns: --table with wildcards and quotes, --schema,
 * --exclude-table; a partition whose parent is selected is not copied
 * twice. */
START_TEST(patterns_select_as_pg_dump_does)
{
    fresh_databases("sets_pattern");
    PGconn *src = open_db(SRC);
    pgt_exec(src, "%s", shapes_sql);
    char *report = strdup("/tmp/pgfan-set-report.XXXXXX");
    close(mkstemp(report));
    cli_run r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "--table", "public.c*",
                        "--table", "orders", "--table", "event?", "--table", "events_*",
                        "--schema", "\"Sales\"", "--exclude-table", "codes",
                        "--copy-schema", "--report", report, "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    char *json = cli_slurp(report);
    unlink(report);
    free(report);
    ck_assert_int_eq(count_in(json, "\"table\": "), 4);
    ck_assert_msg(strstr(json, "\"table\": \"public.customers\"") &&
                      strstr(json, "\"table\": \"public.events\"") &&
                      strstr(json, "\"table\": \"Sales.Order Lines\""),
                  "%s", json);
    PGconn *dst = open_db(T1);
    assert_same_rows(src, dst, "events", 0, 1);
    char *codes = pgt_value(dst, "SELECT count(*) FROM pg_class WHERE relname = 'codes'");
    ck_assert_str_eq(codes, "0");
    free(codes);
    free(json);
    cli_free(&r);
    r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "--table", "no_such_table",
                "--no-progress", "--jobs", "2", NULL);
    ck_assert_msg(r.code == 2 &&
                      strstr(r.err, "no table matches --table \"no_such_table\""),
                  "exit %d: %s", r.code, r.err);
    cli_free(&r);
    PQfinish(dst);
    PQfinish(src);
}
END_TEST

/* pgbench writes on the source during the copy; every target holds one
 * instant: the sums of abalance, tbalance, bbalance and delta agree. */
START_TEST(every_target_is_one_instant_under_writes)
{
    fresh_databases("sets_bench");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "pgbench -q -i -s 2 '%s' >/dev/null 2>&1 || "
             "/usr/lib/postgresql/*/bin/pgbench -q -i -s 2 '%s' >/dev/null 2>&1",
             dbinfo[SRC], dbinfo[SRC]);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(
        cmd, sizeof cmd,
        "exec $(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | head -1) "
        "-n -c 2 -T 600 '%s' >/dev/null 2>&1",
        dbinfo[SRC]);
    pid_t bench = fork();
    if (bench == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    PGconn *src = open_db(SRC);
    /* writes are running before the copy starts: wait for some history */
    for (int i = 0; i < 3000; i++) {
        char *n = pgt_value(src, "SELECT count(*) >= 200 FROM pgbench_history");
        int enough = n[0] == 't';
        free(n);
        if (enough)
            break;
        usleep(10000);
    }
    cli_run r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "-t", dbinfo[T2], "-t",
                        dbinfo[T3], "--table", "pgbench_*", "--copy-schema", "--jobs",
                        "4", "--no-progress", NULL);
    kill(bench, SIGTERM);
    waitpid(bench, NULL, 0);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    for (int t = T1; t <= T3; t++) {
        PGconn *dst = open_db(t);
        char *sums = pgt_value(
            dst,
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT "
            "sum(tbalance) FROM pgbench_tellers) || ' ' || (SELECT sum(bbalance) FROM "
            "pgbench_branches) || ' ' || (SELECT coalesce(sum(delta), 0) FROM "
            "pgbench_history)");
        long a, b, c, d;
        ck_assert_int_eq(sscanf(sums, "%ld %ld %ld %ld", &a, &b, &c, &d), 4);
        ck_assert_msg(a == b && b == c && c == d, "target %d: %s", t, sums);
        char *hist = pgt_value(dst, "SELECT count(*) > 0 FROM pgbench_history");
        ck_assert_str_eq(hist, "t");
        free(hist);
        free(sums);
        PQfinish(dst);
    }
    cli_free(&r);
    PQfinish(src);
}
END_TEST

/* ---- resume and retries ---- */

static void numbered_tables(PGconn *src, PGconn *const dsts[], int ndst)
{
    for (int k = 1; k <= 4; k++) {
        /* table k has (5 - k) * 2000 rows: s_1 is copied first, s_4 last */
        pgt_exec(src, "CREATE TABLE s_%d (id int PRIMARY KEY, v text)", k);
        pgt_exec(src,
                 "INSERT INTO s_%d SELECT g, md5(g::text) FROM generate_series(1, %d) g",
                 k, (5 - k) * 2000);
        for (int t = 0; t < ndst; t++)
            pgt_exec(dsts[t], "CREATE TABLE s_%d (id int PRIMARY KEY, v text)", k);
    }
}

static pid_t spawn_set(char *const argv[], char *out, char *err)
{
    close(mkstemp(out));
    close(mkstemp(err));
    return cli_spawn(argv, out, err);
}

/* A snapshot of the source exported by *holder, which keeps it. */
static char *held_snapshot(PGconn **holder)
{
    *holder = open_db(SRC);
    pgt_exec(*holder, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    return pgt_value(*holder, "SELECT pg_export_snapshot()");
}

/* A session of database db holding advisory lock `key`. */
static PGconn *advisory_lock_on(int db, int key)
{
    PGconn *c = open_db(db);
    pgt_exec(c, "SELECT pg_advisory_lock(%d)", key);
    return c;
}

/* Waits until `sql` on c answers "t" (a state the test waits for; bounded). */
static int wait_until(PGconn *c, const char *sql)
{
    for (int i = 0; i < 6000; i++) {
        char *v = pgt_value(c, "%s", sql);
        int yes = v[0] == 't';
        free(v);
        if (yes)
            return 1;
        usleep(10000);
    }
    return 0;
}

/* Runs the set of argv until target 1 holds three tables and `waiting` (on
 * c) says the last one waits on target 2; kills its coordinator with
 * SIGKILL, then waits until `ended` says the table's command, which
 * follows its coordinator, let go. */
static void kill_set_while_waiting(char *const argv[], PGconn *t1, PGconn *c,
                                   const char *waiting, const char *ended)
{
    char out[] = "/tmp/pgfan-set-out.XXXXXX", err[] = "/tmp/pgfan-set-err.XXXXXX";
    pid_t pid = spawn_set(argv, out, err);
    ck_assert(wait_until(t1, "SELECT to_regclass('pgfan.loaded') IS NOT NULL"));
    ck_assert(wait_until(t1, "SELECT count(*) = 3 FROM pgfan.loaded"));
    ck_assert(wait_until(c, waiting));
    kill(pid, SIGKILL);
    cli_run r = cli_finish(pid, out, err);
    ck_assert_int_eq(r.code, 128 + SIGKILL);
    cli_free(&r);
    ck_assert(wait_until(c, ended));
}

/*
 * A run killed with SIGKILL while its last table waits on a lock on target
 * 2; resumed with the same --snapshot it loads exactly the pairs that did
 * not commit (the primary keys would refuse a second load).  Once that
 * snapshot is gone, --resume is refused unless --not-consistent.
 */
START_TEST(a_killed_run_resumes_exactly_the_missing_pairs)
{
    fresh_databases("sets_resume");
    PGconn *src = open_db(SRC), *t1 = open_db(T1), *t2 = open_db(T2);
    PGconn *dsts[2] = {t1, t2};
    numbered_tables(src, dsts, 2);
    PGconn *holder;
    char *snap = held_snapshot(&holder);
    pgt_exec(src, "INSERT INTO s_1 VALUES (-1, 'after the snapshot')");
    PGconn *locker = open_db(T2);
    pgt_exec(locker, "BEGIN");
    pgt_exec(locker, "LOCK TABLE s_4 IN SHARE MODE");
    char *argv[] = {
        "pgfan",   "-s",  dbinfo[SRC],  "-t", dbinfo[T1], "-t", dbinfo[T2],
        "--table", "s_*", "--snapshot", snap, "--jobs",   "1",  "--no-progress",
        NULL};
    /* (not `locker`: inside its transaction, pg_stat_activity stands still) */
    kill_set_while_waiting(argv, t1, t2,
                           "SELECT count(*) > 0 FROM pg_stat_activity WHERE "
                           "wait_event_type = 'Lock' AND query ILIKE 'copy%s_4%'",
                           "SELECT count(*) = 0 FROM pg_stat_activity WHERE "
                           "query ILIKE 'copy%s_4%' AND state <> 'idle'");
    pgt_exec(locker, "ROLLBACK");
    char *report = strdup("/tmp/pgfan-set-report.XXXXXX");
    close(mkstemp(report));
    cli_run r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "-t", dbinfo[T2], "--table",
                        "s_*", "--snapshot", snap, "--resume", "--report", report,
                        "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    char *json = cli_slurp(report);
    ck_assert_int_eq(count_in(json, "\"state\": \"skipped\""), 6);
    ck_assert_int_eq(count_in(json, "\"state\": \"committed\""), 2);
    ck_assert_msg(strstr(json, "\"resumed\": true") &&
                      strstr(json, "\"consistent\": true"),
                  "%s", json);
    free(json);
    cli_free(&r);
    for (int t = 0; t < 2; t++)
        for (int k = 1; k <= 4; k++) {
            char table[16];
            snprintf(table, sizeof table, "s_%d", k);
            char *n = pgt_value(dsts[t], "SELECT count(*) FROM s_%d", k);
            ck_assert_int_eq(atoi(n), (5 - k) * 2000); /* not the later row */
            free(n);
            (void)table;
        }
    /* the snapshot is gone: refused, then taken only with --not-consistent */
    pgt_exec(holder, "COMMIT");
    r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "-t", dbinfo[T2], "--table", "s_*",
                "--resume", "--no-progress", NULL);
    ck_assert_msg(r.code == 2 && strstr(r.err, "cannot be imported") &&
                      strstr(r.err, "--not-consistent"),
                  "exit %d: %s", r.code, r.err);
    cli_free(&r);
    r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "-t", dbinfo[T2], "--table", "s_*",
                "--resume", "--not-consistent", "--report", report, "--no-progress",
                NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    json = cli_slurp(report);
    ck_assert_int_eq(count_in(json, "\"state\": \"skipped\""), 8);
    ck_assert_msg(strstr(json, "\"consistent\": false"), "%s", json);
    free(json);
    cli_free(&r);
    unlink(report);
    free(report);
    free(snap);
    PQfinish(locker);
    PQfinish(holder);
    PQfinish(t1);
    PQfinish(t2);
    PQfinish(src);
}
END_TEST

/* The end of a resume test: its report and snapshot name go, and its five
 * connections close. */
static void end_resume_test(char *report, char *snap, PGconn *conns[5])
{
    unlink(report);
    free(report);
    free(snap);
    for (int i = 0; i < 5; i++)
        PQfinish(conns[i]);
}

/*
 * --copy-schema with --resume: the run is killed while its last table
 * waits on target 2, held by an advisory lock that a CHECK function of
 * the copied schema takes.  The resumed run applies no pre-data twice
 * (it would fail: the tables exist), loads exactly the missing pairs
 * (there are no primary keys yet to refuse a second load, so the counts
 * tell), and applies the post-data the killed run never reached.
 */
START_TEST(a_killed_run_with_its_schema_resumes_without_redoing_it)
{
    fresh_databases("sets_schema_resume");
    PGconn *src = open_db(SRC), *t1 = open_db(T1), *t2 = open_db(T2);
    numbered_tables(src, NULL, 0);
    pgt_exec(src, "CREATE FUNCTION gate(int) RETURNS bool LANGUAGE plpgsql AS $$ BEGIN "
                  "PERFORM pg_advisory_xact_lock_shared(4242); RETURN true; END $$");
    pgt_exec(src, "ALTER TABLE s_4 ADD CONSTRAINT gated CHECK (gate(id))");
    PGconn *holder;
    char *snap = held_snapshot(&holder);
    PGconn *gate = advisory_lock_on(T2, 4242);
    char *argv[] = {
        "pgfan",         "-s",  dbinfo[SRC],  "-t", dbinfo[T1], "-t", dbinfo[T2],
        "--table",       "s_*", "--snapshot", snap, "--jobs",   "1",  "--copy-schema",
        "--no-progress", NULL};
    kill_set_while_waiting(argv, t1, gate,
                           "SELECT count(*) = 1 FROM pg_stat_activity WHERE "
                           "wait_event_type = 'Lock' AND wait_event = 'advisory'",
                           "SELECT count(*) = 0 FROM pg_stat_activity WHERE "
                           "wait_event = 'advisory'");
    pgt_exec(gate, "SELECT pg_advisory_unlock(4242)");
    char *none = pgt_value(t1, "SELECT count(*) FROM pg_indexes WHERE tablename ~ '^s_'");
    ck_assert_str_eq(none, "0"); /* the killed run never reached post-data */
    free(none);
    char *report = strdup("/tmp/pgfan-set-report.XXXXXX");
    close(mkstemp(report));
    cli_run r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "-t", dbinfo[T2], "--table",
                        "s_*", "--snapshot", snap, "--copy-schema", "--resume",
                        "--report", report, "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    ck_assert_msg(count_in(r.err, "pre-data schema applied by the run being resumed") ==
                      2,
                  "%s", r.err);
    char *json = cli_slurp(report);
    ck_assert_int_eq(count_in(json, "\"state\": \"skipped\""), 6);
    ck_assert_int_eq(count_in(json, "\"state\": \"committed\""), 2);
    ck_assert_int_eq(count_in(json, "\"pre_data\": \"skipped\", \"post_data\": "
                                    "\"applied\""),
                     2);
    free(json);
    cli_free(&r);
    PGconn *dsts[2] = {t1, t2};
    for (int t = 0; t < 2; t++) {
        for (int k = 1; k <= 4; k++) {
            char table[16];
            snprintf(table, sizeof table, "s_%d", k);
            assert_same_rows(src, dsts[t], table, 1, t + 1);
        }
        char *keys = pgt_value(dsts[t], "SELECT count(*) FROM pg_constraint WHERE "
                                        "contype = 'p' AND conrelid::regclass::text ~ "
                                        "'^s_'");
        ck_assert_str_eq(keys, "4");
        free(keys);
    }
    end_resume_test(report, snap, (PGconn *[]){gate, holder, t1, t2, src});
}
END_TEST

/*
 * --retries: target 2's backend is terminated mid-load (held by an
 * advisory lock in a trigger until then); under --on-fault drop target 1
 * commits, and target 2's table is loaded again from the same snapshot.
 * A constraint violation is not retried.
 */
START_TEST(a_terminated_target_is_loaded_again)
{
    fresh_databases("sets_retry");
    PGconn *src = open_db(SRC), *t1 = open_db(T1), *t2 = open_db(T2);
    PGconn *dsts[2] = {t1, t2};
    numbered_tables(src, dsts, 2);
    pgt_exec(t2, "CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                 "PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$");
    pgt_exec(t2, "CREATE TRIGGER gate BEFORE INSERT ON s_2 FOR EACH ROW EXECUTE "
                 "FUNCTION gate()");
    PGconn *gate = advisory_lock_on(T2, 4242);
    char out[] = "/tmp/pgfan-set-out.XXXXXX", err[] = "/tmp/pgfan-set-err.XXXXXX";
    char report[] = "/tmp/pgfan-set-report.XXXXXX";
    close(mkstemp(report));
    char *argv[] = {"pgfan",    "-s",         dbinfo[SRC], "-t",
                    dbinfo[T1], "-t",         dbinfo[T2],  "--table",
                    "s_*",      "--on-fault", "drop",      "--retries",
                    "2",        "--report",   report,      "--no-progress",
                    NULL};
    pid_t pid = spawn_set(argv, out, err);
    ck_assert(wait_until(gate, "SELECT count(*) = 1 FROM pg_stat_activity WHERE "
                               "wait_event_type = 'Lock' AND wait_event = 'advisory'"));
    pgt_exec(gate, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                   "wait_event_type = 'Lock' AND wait_event = 'advisory'");
    pgt_exec(gate, "SELECT pg_advisory_unlock(4242)");
    cli_run r = cli_finish(pid, out, err);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "loading again on 1 target"), "%s", r.err);
    char *json = cli_slurp(report);
    ck_assert_int_eq(count_in(json, "\"state\": \"committed\""), 8);
    ck_assert_int_eq(count_in(json, "\"attempts\": 2"), 1);
    free(json);
    cli_free(&r);
    for (int t = 0; t < 2; t++)
        for (int k = 1; k <= 4; k++) {
            char *n = pgt_value(dsts[t], "SELECT count(*) FROM s_%d", k);
            ck_assert_int_eq(atoi(n), (5 - k) * 2000);
            free(n);
        }
    /* bad data is not retried: the primary key refuses a second load */
    r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "--table", "s_3", "--table", "s_4",
                "--on-fault", "drop", "--retries", "2", "--no-progress", NULL);
    ck_assert_msg(r.code == 1 && strstr(r.err, "23505") &&
                      !strstr(r.err, "loading again"),
                  "exit %d: %s", r.code, r.err);
    cli_free(&r);
    unlink(report);
    PQfinish(gate);
    PQfinish(t1);
    PQfinish(t2);
    PQfinish(src);
}
END_TEST

/* The post-data of the tables named s_*, as text that names no oid. */
static char *post_data_of(PGconn *c)
{
    return pgt_value(
        c, "SELECT (SELECT string_agg(d, ', ' ORDER BY d) FROM (SELECT "
           "x.indexrelid::regclass::text || ' ' || pg_get_indexdef(x.indexrelid) "
           "|| ' ' || x.indisvalid AS d FROM pg_index x WHERE "
           "x.indrelid::regclass::text ~ '^s_') i) || ' / ' || (SELECT "
           "string_agg(d, ', ' ORDER BY d) FROM (SELECT conrelid::regclass::text "
           "|| ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' ' || "
           "convalidated AS d FROM pg_constraint WHERE conrelid::regclass::text "
           "~ '^s_') k)");
}

/*
 * A run killed during its post-data, which pg_restore applies --jobs
 * entries at a time, each committed on its own: target 1's two gated
 * indexes (an advisory lock the test holds) wait at once while its third
 * job applies every other entry and target 2 finishes.  The resumed run
 * applies to target 1 only the two it lacks (the keys that are there
 * would refuse a second ADD), to target 2 none, and both end with the
 * source's indexes and constraints, valid.
 */
START_TEST(a_run_killed_in_its_post_data_resumes_what_is_missing)
{
    fresh_databases("sets_post_data_resume");
    PGconn *src = open_db(SRC), *t1 = open_db(T1), *t2 = open_db(T2);
    numbered_tables(src, NULL, 0);
    pgt_exec(src,
             "CREATE FUNCTION gate(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ "
             "BEGIN PERFORM pg_advisory_xact_lock_shared(4343); RETURN $1; END $$");
    for (int k = 0; k < 2; k++) { /* tables with no other post-data */
        pgt_exec(src, "CREATE TABLE s_%c (id int)", "xy"[k]);
        pgt_exec(src, "INSERT INTO s_%c SELECT generate_series(1, 100)", "xy"[k]);
        pgt_exec(src, "CREATE INDEX s_%c_gated ON s_%c (gate(id))", "xy"[k], "xy"[k]);
    }
    pgt_exec(src, "CREATE TABLE s_p (id int, k int, PRIMARY KEY (id, k)) "
                  "PARTITION BY RANGE (k)");
    pgt_exec(src, "CREATE TABLE s_p_1 PARTITION OF s_p FOR VALUES FROM (0) TO (10)");
    pgt_exec(src, "CREATE TABLE s_p_d PARTITION OF s_p DEFAULT");
    pgt_exec(src, "CREATE INDEX s_p_k ON s_p (k)");
    pgt_exec(src, "ALTER TABLE s_p ADD FOREIGN KEY (id) REFERENCES s_1");
    pgt_exec(src, "INSERT INTO s_p SELECT g, g %% 20 FROM generate_series(1, 500) g");
    PGconn *holder;
    char *snap = held_snapshot(&holder);
    PGconn *gate = advisory_lock_on(T1, 4343);
    char *argv[] = {
        "pgfan",         "-s",  dbinfo[SRC],  "-t", dbinfo[T1], "-t", dbinfo[T2],
        "--table",       "s_*", "--snapshot", snap, "--jobs",   "3",  "--copy-schema",
        "--no-progress", NULL};
    char out[] = "/tmp/pgfan-set-out.XXXXXX", err[] = "/tmp/pgfan-set-err.XXXXXX";
    pid_t pid = spawn_set(argv, out, err);
    ck_assert(wait_until(gate, "SELECT count(*) = 2 FROM pg_stat_activity WHERE "
                               "wait_event_type = 'Lock' AND wait_event = 'advisory'"));
    ck_assert(wait_until(t2, "SELECT count(*) = 1 FROM pgfan.runs WHERE post_data_at IS "
                             "NOT NULL"));
    ck_assert(wait_until(t1,
                         "SELECT count(*) = 1 FROM pg_constraint WHERE contype = 'f' AND "
                         "conrelid = 's_p'::regclass"));
    ck_assert(wait_until(t1, "SELECT count(*) = 4 FROM pg_inherits i JOIN pg_class c ON "
                             "c.oid = i.inhrelid WHERE c.relkind = 'i'"));
    kill(pid, SIGKILL);
    cli_run r = cli_finish(pid, out, err);
    ck_assert_int_eq(r.code, 128 + SIGKILL);
    cli_free(&r);
    /* pg_restore follows pgfan: nothing waits, nothing goes on */
    ck_assert(wait_until(gate, "SELECT count(*) = 0 FROM pg_stat_activity WHERE "
                               "wait_event = 'advisory'"));
    pgt_exec(gate, "SELECT pg_advisory_unlock(4343)");
    char *half =
        pgt_value(t1, "SELECT (SELECT count(*) FROM pg_constraint WHERE contype = "
                      "'p' AND conrelid::regclass::text ~ '^s_') || ' ' || "
                      "(SELECT count(*) FROM pg_class WHERE relname ~ "
                      "'_gated$') || ' ' || (SELECT count(*) FROM "
                      "pgfan.runs WHERE post_data_at IS NULL)");
    ck_assert_str_eq(half, "7 0 1"); /* every key, no gated index, not noted */
    free(half);

    char *report = strdup("/tmp/pgfan-set-report.XXXXXX");
    close(mkstemp(report));
    r = run_cli("-s", dbinfo[SRC], "-t", dbinfo[T1], "-t", dbinfo[T2], "--table", "s_*",
                "--snapshot", snap, "--jobs", "3", "--copy-schema", "--resume",
                "--report", report, "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "target 2: post-data schema applied by the run being "
                                "resumed") &&
                      strstr(r.err,
                             "target 1: 15 of 17 post-data entries applied by the run "
                             "being resumed"),
                  "%s", r.err);
    char *json = cli_slurp(report);
    ck_assert_msg(
        count_in(json, "\"pre_data\": \"skipped\", \"post_data\": \"applied\"") == 1 &&
            count_in(json, "\"pre_data\": \"skipped\", \"post_data\": "
                           "\"skipped\"") == 1,
        "%s", json);
    free(json);
    cli_free(&r);
    char *want = post_data_of(src), *got1 = post_data_of(t1), *got2 = post_data_of(t2);
    ck_assert_msg(strstr(want, "s_y_gated") && strstr(want, "s_p_1_pkey") &&
                      strstr(want, "FOREIGN KEY") && !strstr(want, " false"),
                  "%s", want);
    ck_assert_str_eq(got1, want);
    ck_assert_str_eq(got2, want);
    free(want);
    free(got1);
    free(got2);
    end_resume_test(report, snap, (PGconn *[]){gate, holder, t1, t2, src});
}
END_TEST

Suite *sets_suite(void)
{
    Suite *s = suite_create("sets");
    TCase *tc = tcase_create("sets");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, a_database_is_copied_with_its_schema);
    tcase_add_test(tc, patterns_select_as_pg_dump_does);
    tcase_add_test(tc, large_objects_are_never_left_behind_silently);
    tcase_add_test(tc, a_view_that_cannot_be_refreshed_fails_the_post_data);
    tcase_add_test(tc, every_target_is_one_instant_under_writes);
    tcase_add_test(tc, a_killed_run_resumes_exactly_the_missing_pairs);
    tcase_add_test(tc, a_killed_run_with_its_schema_resumes_without_redoing_it);
    tcase_add_test(tc, a_run_killed_in_its_post_data_resumes_what_is_missing);
    tcase_add_test(tc, a_terminated_target_is_loaded_again);
    suite_add_tcase(s, tc);
    return s;
}

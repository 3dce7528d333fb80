/*
 * The pgfan command at the edges of its memory bound: one row of 200 MiB
 * (400 MiB as COPY text) and sixteen targets with the default settings.
 * Each run's peak RSS comes from wait4() and is checked against the bound
 * pgfan(1) states.  Builds with AddressSanitizer skip only the RSS check:
 * its shadow memory and quarantine are not pgfan's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "clitest.h"
#include "pgtest.h"

Suite *flow_suite(void);

#if defined(__SANITIZE_ADDRESS__)
#define RSS_CHECKED 0
#else
#define RSS_CHECKED 1
#endif

#define MIB          (1024L * 1024L)
#define HUGE_ROW_MIB 200L
#define MANY_TARGETS 16
#define FIXED_SESSION                                                                    \
    "SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3; SET TimeZone = 'UTC'"

static char dbinfo[MANY_TARGETS + 1][1200];

/* Fresh databases <prefix>_0 (the source) to <prefix>_n. */
static void fresh_databases(const char *prefix, int n)
{
    const char *base = getenv("PGFAN_TEST_CONNINFO");
    ck_assert_ptr_nonnull(base);
    PGconn *admin = pgt_connect();
    for (int i = 0; i <= n; i++) {
        pgt_exec(admin, "DROP DATABASE IF EXISTS %s_%d WITH (FORCE)", prefix, i);
        pgt_exec(admin, "CREATE DATABASE %s_%d", prefix, i);
        snprintf(dbinfo[i], sizeof dbinfo[i], "%s dbname=%s_%d", base, prefix, i);
    }
    PQfinish(admin);
}

static void drop_databases(const char *prefix, int n)
{
    PGconn *admin = pgt_connect();
    for (int i = 0; i <= n; i++)
        pgt_exec(admin, "DROP DATABASE IF EXISTS %s_%d WITH (FORCE)", prefix, i);
    PQfinish(admin);
}

static PGconn *open_db(int i)
{
    PGconn *c = PQconnectdb(dbinfo[i]);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s", PQerrorMessage(c));
    pgt_exec(c, FIXED_SESSION);
    return c;
}

static char *value_in(int i, const char *sql)
{
    PGconn *c = open_db(i);
    char *v = pgt_value(c, "%s", sql);
    PQfinish(c);
    return v;
}

static void assert_rss_within(const cli_run *r, long bound_kb, const char *what)
{
    fprintf(stderr, "flow: %s: peak RSS %ld KiB (bound %ld KiB)\n", what, r->peak_rss_kb,
            bound_kb);
    if (RSS_CHECKED)
        ck_assert_msg(r->peak_rss_kb > 0 && r->peak_rss_kb <= bound_kb,
                      "%s: peak RSS %ld KiB, bound %ld KiB", what, r->peak_rss_kb,
                      bound_kb);
}

/*
 * One row of 200 MiB bytea to two targets, in binary (a 200 MiB CopyData
 * message) and as text (400 MiB of hex).  Both targets hold the same bytes
 * (length and md5 of the value), and pgfan's peak RSS stays within the row
 * and a quarter plus 64 MiB: on a plain connection the source's COPY is
 * read into one buffer of the row's size that the ring keeps as its slot,
 * and the receivers send from it.  Reading through libpq (its input buffer
 * and PQgetCopyData's copy: twice the row), a slot grown by doubling, a
 * partial row kept twice, or any cost per target (a slow target's libpq
 * buffer holding the row) breaks the bound.
 */
START_TEST(a_huge_row_costs_about_its_size)
{
    static const char *const formats[] = {"binary", "text"};
    const char *format = formats[_i];
    fresh_databases("flow_huge", 2);
    for (int i = 0; i <= 2; i++) {
        PGconn *c = open_db(i);
        pgt_exec(c, "CREATE TABLE huge (id int, b bytea)");
        PQfinish(c);
    }
    PGconn *s = open_db(0);
    /* md5 chains: incompressible bytes, so nothing is cheap by accident. */
    pgt_exec(
        s,
        "INSERT INTO huge SELECT 1, string_agg(decode(md5(g::text) || md5((-g)::text), "
        "'hex'), ''::bytea) FROM generate_series(1, %ld) g",
        HUGE_ROW_MIB * MIB / 32);
    PQfinish(s);
    const char *check = "SELECT string_agg(id || ':' || length(b) || ':' || md5(b), ',') "
                        "FROM huge";
    char *want = value_in(0, check);
    cli_run r = run_cli("-s", dbinfo[0], "-t", dbinfo[1], "-t", dbinfo[2], "--table",
                        "huge", "--format", format, "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "%s: exit %d: %s", format, r.code, r.err);
    for (int i = 1; i <= 2; i++) {
        char *got = value_in(i, check);
        ck_assert_msg(strcmp(got, want) == 0, "%s: target %d holds %s, want %s", format,
                      i, got, want);
        free(got);
    }
    long row_kb = HUGE_ROW_MIB * 1024L * (_i == 0 ? 1 : 2);
    char what[64];
    snprintf(what, sizeof what, "a %ld MiB %s row", row_kb / 1024, format);
    assert_rss_within(&r, row_kb + row_kb / 4 + 64 * 1024L, what);
    cli_free(&r);
    free(want);
    drop_databases("flow_huge", 2);
}
END_TEST

/* Sixteen targets with the default settings: every one ends with the
 * source's values, and pgfan stays within the ring plus libpq's buffers
 * (64 MiB, about eight times the default ring). */
START_TEST(sixteen_targets_with_the_default_settings)
{
    fresh_databases("flow_many", MANY_TARGETS);
    for (int i = 0; i <= MANY_TARGETS; i++) {
        PGconn *c = open_db(i);
        pgt_mixed_table(c, "many", i == 0 ? 100000 : 0);
        PQfinish(c);
    }
    char *argv[2 * MANY_TARGETS + 16];
    int n = 0;
    argv[n++] = "pgfan";
    argv[n++] = "-s";
    argv[n++] = dbinfo[0];
    for (int i = 1; i <= MANY_TARGETS; i++) {
        argv[n++] = "-t";
        argv[n++] = dbinfo[i];
    }
    argv[n++] = "--table";
    argv[n++] = "many";
    argv[n++] = "--no-progress";
    argv[n] = NULL;
    cli_run r = run_cli_argv(argv);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    PGconn *s = open_db(0);
    char *want = pgt_checksum(s, "many");
    PQfinish(s);
    for (int i = 1; i <= MANY_TARGETS; i++) {
        PGconn *c = open_db(i);
        char *got = pgt_checksum(c, "many");
        ck_assert_msg(strcmp(got, want) == 0, "target %d holds %s, want %s", i, got,
                      want);
        free(got);
        PQfinish(c);
    }
    assert_rss_within(&r, 64 * 1024L, "16 targets");
    free(want);
    cli_free(&r);
    drop_databases("flow_many", MANY_TARGETS);
}
END_TEST

/*
 * A table set with --jobs 4 to four targets: every table ends with the
 * source's values, and the whole process tree stays within the 64 MiB
 * pgfan(1) states.  wait4() gives the largest peak of any one process of
 * the tree; at most the coordinator and four table commands run at once,
 * so five times that peak bounds their sum from above.
 */
START_TEST(a_set_of_four_jobs_to_four_targets_stays_within_64_mib)
{
    enum { TARGETS = 4, TABLES = 4, JOBS = 4 };
    fresh_databases("flow_set", TARGETS);
    for (int i = 0; i <= TARGETS; i++) {
        PGconn *c = open_db(i);
        for (int k = 1; k <= TABLES; k++) {
            char name[16];
            snprintf(name, sizeof name, "part_%d", k);
            pgt_mixed_table(c, name, i == 0 ? 150000 : 0);
        }
        PQfinish(c);
    }
    cli_run r =
        run_cli("-s", dbinfo[0], "-t", dbinfo[1], "-t", dbinfo[2], "-t", dbinfo[3], "-t",
                dbinfo[4], "--table", "part_*", "--jobs", "4", "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    PGconn *s = open_db(0);
    for (int k = 1; k <= TABLES; k++) {
        char name[16];
        snprintf(name, sizeof name, "part_%d", k);
        char *want = pgt_checksum(s, name);
        for (int i = 1; i <= TARGETS; i++) {
            PGconn *c = open_db(i);
            char *got = pgt_checksum(c, name);
            ck_assert_msg(strcmp(got, want) == 0, "%s on target %d holds %s, want %s",
                          name, i, got, want);
            free(got);
            PQfinish(c);
        }
        free(want);
    }
    PQfinish(s);
    cli_run tree = r;
    tree.peak_rss_kb = r.peak_rss_kb * (JOBS + 1);
    assert_rss_within(&tree, 64 * 1024L,
                      "--jobs 4 to 4 targets (5 x the largest process)");
    cli_free(&r);
    drop_databases("flow_set", TARGETS);
}
END_TEST

Suite *flow_suite(void)
{
    Suite *s = suite_create("flow");
    TCase *tc = tcase_create("flow");
    tcase_set_timeout(tc, 900);
    tcase_add_loop_test(tc, a_huge_row_costs_about_its_size, 0, 2);
    tcase_add_test(tc, sixteen_targets_with_the_default_settings);
    tcase_add_test(tc, a_set_of_four_jobs_to_four_targets_stays_within_64_mib);
    suite_add_tcase(s, tc);
    return s;
}

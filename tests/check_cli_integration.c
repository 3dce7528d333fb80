/*
 * The pgfan command against real servers: every format, --truncate,
 * --atomic, each exit code, the report, SIGINT, password masking and the
 * errors found before any data moves.  Targets are separate databases.
 */
#include <fcntl.h>
#include <stdarg.h>
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

Suite *fidelity_suite(void);

#define NT     3
#define SECRET "hunter2secret"

static void assert_no_secret(const cli_run *r)
{
    ck_assert_msg(!strstr(r->out, SECRET) && !strstr(r->err, SECRET),
                  "a password was printed:\n%s\n%s", r->out, r->err);
}

/* ---- databases ---- */

static char base[1024];
static char conninfo[NT + 1][1200];

/* Source: the test database; targets: cli_target_1..NT. */
static void setup_databases(void)
{
    const char *ci = getenv("PGFAN_TEST_CONNINFO");
    ck_assert_ptr_nonnull(ci);
    snprintf(base, sizeof base, "%s", ci);
    snprintf(conninfo[0], sizeof conninfo[0], "%s", base);
    PGconn *c = pgt_connect();
    for (int i = 1; i <= NT; i++) {
        char *has = pgt_value(c,
                              "SELECT count(*) FROM pg_database WHERE datname = "
                              "'cli_target_%d'",
                              i);
        if (strcmp(has, "0") == 0)
            pgt_exec(c, "CREATE DATABASE cli_target_%d", i);
        free(has);
        snprintf(conninfo[i], sizeof conninfo[i],
                 "%s dbname=cli_target_%d password=" SECRET, base, i);
    }
    PQfinish(c);
}

static PGconn *db(int i)
{
    PGconn *c = PQconnectdb(conninfo[i]);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    return c;
}

/* A source table and an empty copy of its shape on every target. */
static void make_tables(const char *name, long rows)
{
    PGconn *s = db(0);
    pgt_mixed_table(s, name, rows);
    PQfinish(s);
    for (int i = 1; i <= NT; i++) {
        PGconn *t = db(i);
        pgt_mixed_table(t, name, 0);
        PQfinish(t);
    }
}

/* Fresh tables for one test: `rows` on the source, empty on the targets. */
static void new_tables(char table[64], long rows)
{
    setup_databases();
    pgt_name(table, 64, "cli");
    make_tables(table, rows);
}

static void drop_tables(const char *name)
{
    for (int i = 0; i <= NT; i++) {
        PGconn *c = db(i);
        pgt_exec(c, "DROP TABLE IF EXISTS %s", name);
        PQfinish(c);
    }
}

static void assert_target(int i, const char *table, const char *want)
{
    PGconn *c = db(i);
    char *got = pgt_checksum(c, table);
    ck_assert_msg(strcmp(got, want) == 0, "target %d holds %s, want %s", i, got, want);
    free(got);
    char *prepared = pgt_value(c, "SELECT count(*) FROM pg_prepared_xacts");
    ck_assert_str_eq(prepared, "0");
    free(prepared);
    PQfinish(c);
}

static char *source_checksum(const char *table)
{
    PGconn *s = db(0);
    char *v = pgt_checksum(s, table);
    PQfinish(s);
    return v;
}

static void assert_all_targets_empty(const char *table)
{
    for (int i = 1; i <= NT; i++)
        assert_target(i, table, "0:0");
}

static void assert_no_copy_running(void)
{
    PGconn *c = db(0);
    pgt_assert_no_copy_running(c);
    PQfinish(c);
}

/* ---- tests ---- */

START_TEST(copies_to_three_targets_in_every_format)
{
    static const char *const formats[] = {"text", "csv", "binary", "auto"};
    char table[64], report[] = "/tmp/pgfan-report.XXXXXX";
    new_tables(table, 20000);
    close(mkstemp(report));
    cli_run r =
        run_cli("--source", conninfo[0], "--target", conninfo[1], "--target", conninfo[2],
                "--target", conninfo[3], "--table", table, "--format", formats[_i],
                "--report", report, "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    char *want = source_checksum(table);
    for (int i = 1; i <= NT; i++)
        assert_target(i, table, want);
    char *json = cli_slurp(report);
    unlink(report);
    ck_assert_ptr_nonnull(strstr(json, "\"source_rows\": 20000"));
    char fmt[40];
    snprintf(fmt, sizeof fmt, "\"format\": \"%s\"", _i == 3 ? "binary" : formats[_i]);
    ck_assert_msg(strstr(json, fmt), "report lacks %s:\n%s", fmt, json);
    int committed = 0;
    for (const char *p = json; (p = strstr(p, "\"state\": \"committed\"")); p++)
        committed++;
    ck_assert_int_eq(committed, NT);
    ck_assert_ptr_nonnull(strstr(r.err, "total: 20000 rows")); /* the summary */
    assert_no_secret(&r);
    free(json), free(want), cli_free(&r);
    drop_tables(table);
}
END_TEST

START_TEST(report_fields_and_auto_falls_back_to_text)
{
    char table[64];
    new_tables(table, 500);
    PGconn *t = db(2); /* one target stores `amount` as text: binary would not load */
    pgt_exec(t, "ALTER TABLE %s ALTER amount TYPE text", table);
    PQfinish(t);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                        conninfo[3], "--table", table, "--report", "-", "--quiet", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    static const char *const fields[] = {
        "\"targets\": [",       "\"target\": ",    "\"state\": \"committed\"",
        "\"rows\": 500",        "\"bytes\": ",     "\"seconds\": ",
        "\"sqlstate\": null",   "\"error\": null", "\"totals\": {",
        "\"source_rows\": 500", "\"mb_per_s\": ",  "\"format\": \"text\"",
        "password=********"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        ck_assert_msg(strstr(r.out, fields[i]), "report lacks %s:\n%s", fields[i], r.out);
    ck_assert_str_eq(r.err, ""); /* --quiet */
    assert_no_secret(&r);
    cli_free(&r);
    drop_tables(table);
}
END_TEST

START_TEST(truncate_replaces_what_the_targets_had)
{
    char table[64];
    new_tables(table, 3000);
    for (int i = 1; i <= NT; i++) {
        PGconn *t = db(i);
        pgt_exec(
            t, "INSERT INTO %s (id, name) SELECT g, 'old' FROM generate_series(1, 77) g",
            table);
        PQfinish(t);
    }
    cli_run r =
        run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                conninfo[3], "--table", table, "--truncate", "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    char *want = source_checksum(table);
    for (int i = 1; i <= NT; i++)
        assert_target(i, table, want);
    free(want), cli_free(&r);
    drop_tables(table);
}
END_TEST

START_TEST(atomic_commits_everywhere)
{
    char table[64];
    new_tables(table, 5000);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                        conninfo[3], "--table", table, "--atomic", "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    char *want = source_checksum(table);
    for (int i = 1; i <= NT; i++)
        assert_target(i, table, want); /* also: no prepared transaction left */
    free(want), cli_free(&r);
    drop_tables(table);
}
END_TEST

START_TEST(atomic_fails_everywhere_when_one_target_rejects_a_row)
{
    char table[64];
    new_tables(table, 5000);
    PGconn *t = db(2);
    pgt_exec(t, "ALTER TABLE %s ADD CONSTRAINT reject_4000 CHECK (id <> 4000)", table);
    PQfinish(t);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                        conninfo[3], "--table", table, "--atomic", "--no-progress", NULL);
    ck_assert_int_eq(r.code, 1);
    ck_assert_msg(strstr(r.err, "target 2 (") && strstr(r.err, "reject_4000") &&
                      strstr(r.err, "SQLSTATE 23514"),
                  "stderr: %s", r.err);
    assert_all_targets_empty(table);
    assert_no_copy_running();
    assert_no_secret(&r);
    cli_free(&r);
    drop_tables(table);
}
END_TEST

START_TEST(atomic_fails_everywhere_when_one_target_cannot_prepare)
{
    char table[64];
    new_tables(table, 2000);
    /* A deferred constraint trigger fails only at PREPARE, after the COPY
     * succeeded everywhere: the other targets are prepared by then. */
    PGconn *t = db(3);
    pgt_exec(t,
             "CREATE FUNCTION refuse_%s() RETURNS trigger LANGUAGE plpgsql AS "
             "$$BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'P0001'; END$$",
             table);
    pgt_exec(t,
             "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON %s DEFERRABLE INITIALLY "
             "DEFERRED FOR EACH ROW WHEN (NEW.id = 1) EXECUTE FUNCTION refuse_%s()",
             table, table);
    PQfinish(t);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                        conninfo[3], "--table", table, "--atomic", "--no-progress",
                        "--report", "-", NULL);
    ck_assert_int_eq(r.code, 1);
    ck_assert_msg(strstr(r.err, "target 3 (") && strstr(r.err, "refused at commit"), "%s",
                  r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "\"sqlstate\": \"P0001\""));
    ck_assert_ptr_null(strstr(r.out, "\"state\": \"committed\""));
    assert_all_targets_empty(table); /* and no prepared transaction anywhere */
    cli_free(&r);
    PGconn *c = db(3);
    pgt_exec(c, "DROP TABLE %s", table);
    pgt_exec(c, "DROP FUNCTION refuse_%s()", table);
    PQfinish(c);
    drop_tables(table);
}
END_TEST

START_TEST(atomic_needs_prepared_transactions_up_front)
{
    /* Server B runs with max_prepared_transactions = 0. */
    char table[64], b[1200];
    new_tables(table, 100);
    PGconn *bc = pgt_connect_b();
    char *mpx = pgt_value(bc, "SHOW max_prepared_transactions");
    ck_assert_msg(strcmp(mpx, "0") == 0,
                  "server B must run without prepared transactions");
    free(mpx);
    pgt_mixed_table(bc, table, 0);
    PQfinish(bc);
    snprintf(b, sizeof b, "%s password=" SECRET, getenv("PGFAN_TEST_CONNINFO_B"));
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", b, "--table", table,
                        "--atomic", NULL);
    ck_assert_int_eq(r.code, 2);
    ck_assert_msg(strstr(r.err, "target 2 (") &&
                      strstr(r.err, "max_prepared_transactions"),
                  "%s", r.err);
    assert_target(1, table, "0:0");
    assert_no_secret(&r);
    cli_free(&r);
    bc = pgt_connect_b();
    pgt_exec(bc, "DROP TABLE %s", table);
    PQfinish(bc);
    drop_tables(table);
}
END_TEST

START_TEST(exit_1_and_3_by_fault_policy)
{
    char table[64];
    int drop = _i;
    new_tables(table, 5000);
    PGconn *t = db(1);
    pgt_exec(t, "ALTER TABLE %s ADD CHECK (id <> 2500)", table);
    PQfinish(t);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                        conninfo[3], "--table", table, "--on-fault",
                        drop ? "drop" : "abort", "--report", "-", "--no-progress", NULL);
    ck_assert_int_eq(r.code, drop ? 3 : 1);
    ck_assert_ptr_nonnull(strstr(r.err, "SQLSTATE 23514"));
    assert_target(1, table, "0:0");
    if (drop) {
        char *want = source_checksum(table);
        assert_target(2, table, want);
        assert_target(3, table, want);
        free(want);
        ck_assert_ptr_nonnull(strstr(r.out, "\"state\": \"dropped\""));
    } else {
        assert_all_targets_empty(table);
        ck_assert_ptr_nonnull(strstr(r.out, "\"state\": \"failed\""));
        ck_assert_ptr_nonnull(strstr(r.out, "\"state\": \"rolled_back\""));
    }
    cli_free(&r);
    drop_tables(table);
}
END_TEST

START_TEST(errors_before_any_data_moves_exit_2)
{
    char table[64], unreachable[200];
    new_tables(table, 100);
    PGconn *t = db(3);
    pgt_exec(t, "ALTER TABLE %s DROP COLUMN name", table);
    PQfinish(t);
    t = db(2);
    pgt_exec(t, "DROP TABLE %s", table);
    PQfinish(t);

    /* usage */
    cli_run r = run_cli("--table", table, NULL);
    ck_assert_int_eq(r.code, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "--source is required"));
    cli_free(&r);
    r = run_cli("-s", conninfo[0], "-t", conninfo[1], "--table", table, "--format", "xml",
                NULL);
    ck_assert_int_eq(r.code, 2);
    cli_free(&r);

    /* a target missing the table */
    r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "--table", table,
                NULL);
    ck_assert_int_eq(r.code, 2);
    ck_assert_msg(strstr(r.err, "target 2 (") && strstr(r.err, "does not exist") &&
                      strstr(r.err, "SQLSTATE 42P01"),
                  "%s", r.err);
    assert_no_secret(&r);
    cli_free(&r);

    /* a target missing a column */
    r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[3], "--table", table,
                NULL);
    ck_assert_int_eq(r.code, 2);
    ck_assert_msg(strstr(r.err, "target 2 (") &&
                      strstr(r.err, "has no column \"name\"") &&
                      strstr(r.err, "SQLSTATE 42703"),
                  "%s", r.err);
    cli_free(&r);

    /* an unreachable target */
    snprintf(unreachable, sizeof unreachable,
             "host=127.0.0.1 port=1 connect_timeout=3 dbname=x password=%s", SECRET);
    r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", unreachable, "--table", table,
                NULL);
    ck_assert_int_eq(r.code, 2);
    ck_assert_msg(strstr(r.err, "target 2 (host=127.0.0.1 port=1") &&
                      strstr(r.err, "password=********") && strstr(r.err, "connection"),
                  "%s", r.err);
    assert_no_secret(&r);
    cli_free(&r);
    assert_target(1, table, "0:0"); /* nothing moved */
    drop_tables(table);
}
END_TEST

START_TEST(uri_passwords_are_masked)
{
    char table[64], uri[600];
    new_tables(table, 100);
    PQconninfoOption *opts = PQconninfoParse(base, NULL);
    const char *port = "5432", *user = "postgres";
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, "port") == 0 && o->val)
            port = o->val;
        if (strcmp(o->keyword, "user") == 0 && o->val)
            user = o->val;
    }
    snprintf(uri, sizeof uri, "postgresql://%s:%s@127.0.0.1:%s/cli_target_1?password=%s",
             user, SECRET, port, SECRET);
    PQconninfoFree(opts);
    cli_run r = run_cli("-s", conninfo[0], "-t", uri, "--table", table, "--report", "-",
                        "--progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, ":********@127.0.0.1"));
    ck_assert_ptr_nonnull(strstr(r.out, "?password=********"));
    assert_no_secret(&r);
    cli_free(&r);
    drop_tables(table);
}
END_TEST

START_TEST(sigint_aborts_cleanly)
{
    char table[64];
    new_tables(table, 400000);
    char *argv[] = {"pgfan",     "-s",       conninfo[0],  "-t",
                    conninfo[1], "-t",       conninfo[2],  "-t",
                    conninfo[3], "--table",  table,        "--format",
                    "text",      "--atomic", "--progress", NULL};
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    close(mkstemp(out));
    close(mkstemp(err));
    pid_t pid = cli_spawn(argv, out, err);
    /* Wait until the targets are receiving, then interrupt. */
    PGconn *c = db(0);
    for (int tries = 0; tries < 3000; tries++) {
        char *n =
            pgt_value(c, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                         "AND query ILIKE 'copy%%FROM STDIN%%'");
        int active = atoi(n);
        free(n);
        if (active == NT)
            break;
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    PQfinish(c);
    kill(pid, SIGINT);
    cli_run r = cli_finish(pid, out, err);
    ck_assert_msg(r.code == 130, "exit %d: %s", r.code, r.err);
    ck_assert_ptr_nonnull(strstr(r.err, "interrupted"));
    assert_all_targets_empty(table);
    assert_no_copy_running();
    assert_no_secret(&r);
    cli_free(&r);
    drop_tables(table);
}
END_TEST

START_TEST(help_and_version)
{
    cli_run r = run_cli("--help", NULL);
    ck_assert_int_eq(r.code, 0);
    static const char *const options[] = {
        "--source",   "--target",      "--table",         "--query",      "--copy-out",
        "--into",     "--copy-in",     "--columns",       "--format",     "--on-fault",
        "--atomic",   "--truncate",    "--stall-timeout", "--ring-slots", "--chunk-size",
        "--progress", "--no-progress", "--report",        "--quiet",      "--version",
        "--help"};
    for (size_t i = 0; i < sizeof options / sizeof *options; i++)
        ck_assert_msg(strstr(r.out, options[i]), "--help lacks %s", options[i]);
    cli_free(&r);
    r = run_cli("--version", NULL);
    ck_assert_int_eq(r.code, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "pgfan 0.1.0"));
    cli_free(&r);
}
END_TEST

START_TEST(query_into_a_named_table)
{
    char table[64], into[64], query[200];
    setup_databases();
    pgt_name(table, sizeof table, "cli");
    pgt_name(into, sizeof into, "cli_into");
    make_tables(table, 1000);
    for (int i = 1; i <= NT; i++) {
        PGconn *t = db(i);
        pgt_exec(t, "CREATE TABLE %s (id int8, label text, extra int DEFAULT 7)", into);
        PQfinish(t);
    }
    snprintf(query, sizeof query, "SELECT id, name AS label FROM %s WHERE id %% 2 = 0",
             table);
    cli_run r =
        run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                conninfo[3], "--query", query, "--into", into, "--no-progress", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    for (int i = 1; i <= NT; i++) {
        PGconn *t = db(i);
        char *n = pgt_value(t, "SELECT count(*) || ':' || sum(extra) FROM %s", into);
        ck_assert_str_eq(n, "500:3500");
        free(n);
        pgt_exec(t, "DROP TABLE %s", into);
        PQfinish(t);
    }
    cli_free(&r);
    drop_tables(table);
}
END_TEST

static Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, copies_to_three_targets_in_every_format, 0, 4);
    tcase_add_test(tc, report_fields_and_auto_falls_back_to_text);
    tcase_add_test(tc, truncate_replaces_what_the_targets_had);
    tcase_add_test(tc, atomic_commits_everywhere);
    tcase_add_test(tc, atomic_fails_everywhere_when_one_target_rejects_a_row);
    tcase_add_test(tc, atomic_fails_everywhere_when_one_target_cannot_prepare);
    tcase_add_test(tc, atomic_needs_prepared_transactions_up_front);
    tcase_add_loop_test(tc, exit_1_and_3_by_fault_policy, 0, 2);
    tcase_add_test(tc, errors_before_any_data_moves_exit_2);
    tcase_add_test(tc, uri_passwords_are_masked);
    tcase_add_test(tc, sigint_aborts_cleanly);
    tcase_add_test(tc, help_and_version);
    tcase_add_test(tc, query_into_a_named_table);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(cli_suite());
    srunner_add_suite(sr, fidelity_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

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
Suite *sets_suite(void);
Suite *flow_suite(void);

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

/* Prepared transactions are named, so a leftover says which run left it. */
static void assert_nothing_prepared(PGconn *c, int target)
{
    char *prepared = pgt_value(c, "SELECT count(*) || coalesce(' ' || string_agg(gid, ' "
                                  "'), '') FROM pg_prepared_xacts");
    ck_assert_msg(strcmp(prepared, "0") == 0, "target %d left prepared: %s", target,
                  prepared);
    free(prepared);
}

static void assert_target(int i, const char *table, const char *want)
{
    PGconn *c = db(i);
    char *got = pgt_checksum(c, table);
    ck_assert_msg(strcmp(got, want) == 0, "target %d holds %s, want %s", i, got, want);
    free(got);
    assert_nothing_prepared(c, i);
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
    /* libpq's complaint about a connection string quotes the bad part. */
    cli_run bad =
        run_cli("-s", conninfo[0], "-t", "postgresql://u:S3cr%zzet@127.0.0.1/db",
                "--table", table, NULL);
    ck_assert_int_eq(bad.code, 2);
    ck_assert_msg(strstr(bad.err, "invalid connection string") &&
                      !strstr(bad.err, "zzet"),
                  "%s", bad.err);
    cli_free(&bad);
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

/* ---- honest endings ---- */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static pid_t spawn_cli(char *const argv[], char *out, char *err)
{
    close(mkstemp(out));
    close(mkstemp(err));
    return cli_spawn(argv, out, err);
}

/* Waits until a backend of database `dbname` running a statement that
 * contains `running` waits on `event` (type:name), or the child exits;
 * returns that backend's pid or 0. */
static int wait_for_running(PGconn *admin, const char *dbname, const char *running,
                            const char *event, pid_t child)
{
    for (int tries = 0; tries < 6000; tries++) {
        char *pid = pgt_value(admin,
                              "SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE "
                              "datname = '%s' AND wait_event_type || ':' || wait_event = "
                              "'%s' AND query LIKE '%%%s%%'",
                              dbname, event, running);
        int p = atoi(pid);
        free(pid);
        if (p)
            return p;
        siginfo_t info = {0};
        if (waitid(P_PID, (id_t)child, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            info.si_pid == child)
            return 0; /* exited; left for cli_finish() to reap */
        sleep_ms(10); /* a poll for a state, bounded by the loop; not a timing bet */
    }
    return 0;
}

/* The same for any statement. */
static int wait_for_backend(PGconn *admin, const char *dbname, const char *event,
                            pid_t child)
{
    return wait_for_running(admin, dbname, "", event, child);
}

/* Polls until no backend of the source runs the statement containing
 * `marker`, or about a minute passes; returns 1 when none runs. */
static int source_statement_ended(PGconn *admin, const char *marker)
{
    for (int tries = 0; tries < 6000; tries++) {
        char *n =
            pgt_value(admin,
                      "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                      "AND query LIKE '%%%s%%' AND pid <> pg_backend_pid()",
                      marker);
        int running = atoi(n);
        free(n);
        if (!running)
            return 1;
        sleep_ms(10); /* a poll for a state, bounded by the loop; not a timing bet */
    }
    return 0;
}

/* Waits up to about two minutes for the child to exit, without reaping it;
 * returns 1 if it did. */
static int child_exited_within_2min(pid_t child)
{
    for (int tries = 0; tries < 12000; tries++) {
        siginfo_t info = {0};
        if (waitid(P_PID, (id_t)child, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            info.si_pid == child)
            return 1;
        sleep_ms(10); /* a poll for a state, bounded by the loop; not a timing bet */
    }
    return 0;
}

/* Once every COPY has started and waits (the targets for data, the source
 * for the advisory lock `key` that `gate` holds, in the statement marked
 * `marker`), stops target 2's backend (SIGSTOP) while it waits for data and
 * opens the gate.  Returns that backend's pid, for SIGCONT. */
static int stop_target_2_at_the_gate(PGconn *admin, PGconn *gate, const char *marker,
                                     int key, pid_t pid)
{
    ck_assert_int_ne(wait_for_running(admin, PQdb(admin), marker, "Lock:advisory", pid),
                     0);
    int backend =
        wait_for_running(admin, "cli_target_2", "COPY", "Client:ClientRead", pid);
    ck_assert_int_ne(backend, 0);
    ck_assert_int_eq(kill(backend, SIGSTOP), 0);
    pgt_exec(gate, "SELECT pg_advisory_unlock(%d)", key);
    return backend;
}

/* A target whose backend is stopped (SIGSTOP) no longer sets the pace: the
 * source is read to its end and the other targets get everything while it
 * is stopped, its share waiting in the spill journal; continued, it catches
 * up from the journal and all three commit the source's exact values.  The
 * source is held at its middle row, so every target's COPY is running (and
 * target 2 waits for data, not for its next command) when it is stopped.
 *
 * Loop 1 gives the journal a 1 MB budget, --on-fault drop and a stall
 * timeout: once the budget is spent, the stopped target is a stall fault
 * and dropped, the others commit, and pgfan ends (exit 3) while that
 * backend is still stopped, having kept the journal within its budget. */
START_TEST(a_stopped_target_reads_on_from_the_spill_journal)
{
    const int budget = _i == 1;
    char table[64];
    new_tables(table, 200000);
    PGconn *admin = db(0), *gate = db(0);
    pgt_exec(gate, "SELECT pg_advisory_lock(815)");
    char query[256], report[] = "/tmp/pgfan-cli-report.XXXXXX";
    close(mkstemp(report));
    snprintf(query, sizeof query,
             "SELECT t.* FROM %s t WHERE t.id <> 100000 OR "
             "pg_advisory_lock_shared(815) IS NOT NULL /* spill_gate */",
             table);
    char *argv[] = {"pgfan",     "-s",           conninfo[0], "-t",
                    conninfo[1], "-t",           conninfo[2], "-t",
                    conninfo[3], "--query",      query,       "--into",
                    table,       "--ring-slots", "8",         "--chunk-size",
                    "65536",     "--report",     report,      "--no-progress",
                    NULL,        NULL,           NULL,        NULL,
                    NULL,        NULL,           NULL,        NULL};
    if (budget) {
        char **extra = &argv[19];
        const char *more[] = {"--spill-limit",   "1MB", "--on-fault", "drop",
                              "--stall-timeout", "2"};
        for (size_t k = 0; k < 6; k++)
            extra[k] = (char *)more[k];
    }
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    pid_t pid = spawn_cli(argv, out, err);
    int backend = stop_target_2_at_the_gate(admin, gate, "spill_gate", 815, pid);
    int ended = source_statement_ended(admin, "spill_gate");
    int exited = budget && child_exited_within_2min(pid);
    kill(backend, SIGCONT);
    ck_assert_msg(ended, "the source was held back by the stopped target");
    ck_assert_msg(exited || !budget, "pgfan waited for the stopped target");
    cli_run r = cli_finish(pid, out, err);
    ck_assert_msg(r.code == (budget ? 3 : 0), "exit %d: %s", r.code, r.err);
    char *want = source_checksum(table);
    for (int i = 1; i <= 3; i++)
        assert_target(i, table, budget && i == 2 ? "0:0" : want);
    free(want);
    char *json = cli_slurp(report);
    const char *peak = strstr(json, "\"spill_peak_bytes\": ");
    ck_assert_ptr_nonnull(peak);
    unsigned long long peak_bytes =
        strtoull(peak + strlen("\"spill_peak_bytes\": "), NULL, 10);
    if (budget) {
        ck_assert_msg(peak_bytes > 0 && peak_bytes <= 1048576, "%s", json);
        ck_assert_msg(strstr(r.err, "target 2 (") && strstr(r.err, "held the copy back"),
                      "%s", r.err);
    } else {
        ck_assert_msg(peak_bytes > 1000000, "%s", json);
    }
    free(json);
    unlink(report);
    cli_free(&r);
    PQfinish(gate);
    PQfinish(admin);
    drop_tables(table);
}
END_TEST

/* A target whose backend stops (SIGSTOP) while idle in its transaction
 * cannot hold pgfan's ending: when another target fails before the commit,
 * the ROLLBACK it is sent goes unanswered, is cancelled, and its connection
 * closed, which rolls it back.  pgfan exits 1 while that backend is still
 * stopped, and nothing is committed anywhere.  Target 1's deferred unique
 * check waits on a row another session has not committed yet, so target 2
 * has ended its COPY and waits in its transaction when it is stopped. */
START_TEST(an_unanswered_rollback_is_given_up)
{
    char table[64];
    new_tables(table, 3000);
    PGconn *t = db(1), *blocker = db(1), *admin = db(0);
    pgt_exec(
        t,
        "ALTER TABLE %s ADD CONSTRAINT %s_once UNIQUE (id) DEFERRABLE INITIALLY DEFERRED",
        table, table);
    PQfinish(t);
    pgt_exec(blocker, "BEGIN");
    pgt_exec(blocker, "INSERT INTO %s (id) VALUES (1)", table);
    char *argv[] = {
        "pgfan", "-s",        conninfo[0], "-t",  conninfo[1],     "-t", conninfo[2],
        "-t",    conninfo[3], "--table",   table, "--no-progress", NULL};
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    pid_t pid = spawn_cli(argv, out, err);
    ck_assert_int_ne(
        wait_for_running(admin, "cli_target_1", "CONSTRAINTS", "Lock:transactionid", pid),
        0);
    int backend =
        wait_for_running(admin, "cli_target_2", "COPY", "Client:ClientRead", pid);
    ck_assert_int_ne(backend, 0);
    ck_assert_int_eq(kill(backend, SIGSTOP), 0);
    pgt_exec(blocker, "COMMIT");
    int exited = child_exited_within_2min(pid);
    kill(backend, SIGCONT);
    ck_assert_msg(exited, "pgfan waited for the stopped target's ROLLBACK");
    cli_run r = cli_finish(pid, out, err);
    ck_assert_int_eq(r.code, 1);
    ck_assert_msg(strstr(r.err, "target 1 (") && strstr(r.err, "SQLSTATE 23505"), "%s",
                  r.err);
    pgt_exec(blocker, "DELETE FROM %s", table);
    assert_all_targets_empty(table);
    cli_free(&r);
    PQfinish(blocker);
    PQfinish(admin);
    drop_tables(table);
}
END_TEST

/* A target whose server stops answering once it has all its data (its
 * backend stopped with SIGSTOP while it waits for the source's last row)
 * would hold the run forever: nothing is left to move, so no stall shows.
 * --end-timeout 1 cancels its COPY; the stopped backend leaves the cancel
 * unanswered too, so after the realignment bound its connection is given
 * up and closed, which rolls it back.  Under drop the others commit and
 * pgfan exits 3 while that backend is still stopped. */
START_TEST(a_target_stopped_with_all_its_data_ends_at_the_end_timeout)
{
    char table[64];
    new_tables(table, 2000);
    PGconn *admin = db(0), *gate = db(0);
    pgt_exec(gate, "SELECT pg_advisory_lock(817)");
    char query[256];
    snprintf(query, sizeof query,
             "SELECT t.* FROM %s t WHERE t.id <> 2000 OR "
             "pg_advisory_lock_shared(817) IS NOT NULL /* end_gate */",
             table);
    char *argv[] = {"pgfan",     "-s",
                    conninfo[0], "-t",
                    conninfo[1], "-t",
                    conninfo[2], "-t",
                    conninfo[3], "--query",
                    query,       "--into",
                    table,       "--chunk-size",
                    "16384",     "--on-fault",
                    "drop",      "--end-timeout",
                    "1",         "--no-progress",
                    NULL};
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    pid_t pid = spawn_cli(argv, out, err);
    int backend = stop_target_2_at_the_gate(admin, gate, "end_gate", 817, pid);
    int exited = child_exited_within_2min(pid);
    kill(backend, SIGCONT);
    ck_assert_msg(exited, "pgfan waited for the stopped target");
    cli_run r = cli_finish(pid, out, err);
    ck_assert_msg(r.code == 3, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "target 2 (") && strstr(r.err, "(the end timeout)") &&
                      strstr(r.err, "went unanswered"),
                  "%s", r.err);
    char *want = source_checksum(table);
    for (int i = 1; i <= 3; i++)
        assert_target(i, table, i == 2 ? "0:0" : want);
    free(want);
    cli_free(&r);
    PQfinish(gate);
    PQfinish(admin);
    drop_tables(table);
}
END_TEST

/* Rows target `dbname`'s COPY has stored so far (pg_stat_progress_copy), or
 * -1 when no COPY runs there. */
static long copy_progress(PGconn *admin, const char *dbname)
{
    char *v = pgt_value(admin,
                        "SELECT coalesce(max(tuples_processed), -1) FROM "
                        "pg_stat_progress_copy WHERE datname = '%s'",
                        dbname);
    long n = atol(v);
    free(v);
    return n;
}

/* Rows of `table` committed on target i, or -1. */
static long committed_rows(int i, const char *table)
{
    PGconn *c = db(i);
    char *v = pgt_value(c, "SELECT count(*) FROM %s", table);
    long n = atol(v);
    free(v);
    PQfinish(c);
    return n;
}

/* Whether targets 1 and 2 have the whole table: loaded (their COPY has
 * stored every row) under abort; committed under --on-fault drop. */
static int fast_targets_have_it(PGconn *admin, int committed, const char *table,
                                long nrows)
{
    if (committed)
        return committed_rows(1, table) == nrows && committed_rows(2, table) == nrows;
    return copy_progress(admin, "cli_target_1") == nrows &&
           copy_progress(admin, "cli_target_2") == nrows;
}

/* A target limited by --max-rate trails while the two others load the
 * whole table (loop 1, --on-fault drop: and commit it); it then completes
 * every row exactly once, having taken at least its rate's time (a lower
 * bound, which a busy machine cannot break). */
START_TEST(a_rate_limited_target_trails_while_the_others_load)
{
    const long nrows = 200000;
    char table[64];
    new_tables(table, nrows);
    PGconn *admin = db(0), *gate = db(0);
    pgt_exec(gate, "SELECT pg_advisory_lock(816)");
    char query[256], report[] = "/tmp/pgfan-cli-report.XXXXXX";
    close(mkstemp(report));
    snprintf(query, sizeof query,
             "SELECT t.* FROM (SELECT pg_advisory_lock_shared(816)) rate_gate, %s t",
             table);
    char *argv[] = {"pgfan",      "-s",
                    conninfo[0],  "-t",
                    conninfo[1],  "-t",
                    conninfo[2],  "-t",
                    conninfo[3],  "--query",
                    query,        "--into",
                    table,        "--max-rate",
                    "3=4MB",      "--stall-timeout",
                    "3",          "--report",
                    report,       "--no-progress",
                    "--on-fault", _i ? "drop" : "abort",
                    NULL};
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    pid_t pid = spawn_cli(argv, out, err);
    ck_assert_int_ne(wait_for_backend(admin, "cli_target_3", "Client:ClientRead", pid),
                     0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pgt_exec(gate, "SELECT pg_advisory_unlock(816)");
    long slow_when_fast_done = -1;
    for (int tries = 0; tries < 6000 && slow_when_fast_done < 0; tries++) {
        if (fast_targets_have_it(admin, _i, table, nrows))
            slow_when_fast_done = copy_progress(admin, "cli_target_3");
        else
            sleep_ms(10); /* a poll for a state, bounded by the loop */
    }
    cli_run r = cli_finish(pid, out, err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    ck_assert_msg(slow_when_fast_done >= 0 && slow_when_fast_done < nrows / 2,
                  "target 3 had %ld rows when the others had all", slow_when_fast_done);
    char *json = cli_slurp(report);
    const char *bytes = strstr(json, "\"targets\": [");
    for (int i = 0; i < 3 && bytes; i++) /* the third target's entry */
        bytes = strstr(bytes + 1, "\"bytes\": ");
    ck_assert_ptr_nonnull(bytes);
    double sent = strtod(bytes + strlen("\"bytes\": "), NULL);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    ck_assert_msg(took >= 0.9 * sent / (4 << 20), "%.0f bytes in %.2f s", sent, took);
    char *want = source_checksum(table);
    for (int i = 1; i <= 3; i++)
        assert_target(i, table, want);
    free(want);
    free(json);
    unlink(report);
    cli_free(&r);
    PQfinish(gate);
    PQfinish(admin);
    drop_tables(table);
}
END_TEST

/* Runs tests/pg-harness.sh CMD DIR for a server of the test's own (one it
 * restarts); returns the last line it printed (start: the conninfo).  The
 * server goes with the test's process: a test that fails before stopping
 * it leaves no server behind. */
static void harness_for(const char *cmd, const char *dir, pid_t owner, char *line,
                        size_t len)
{
    const char *script = getenv("PGFAN_HARNESS");
    char command[1024];
    ck_assert_msg(script != NULL, "PGFAN_HARNESS is not set (run through make check)");
    snprintf(command, sizeof command, "sh '%s' %s '%s' %ld 2>&1", script, cmd, dir,
             (long)owner);
    FILE *p = popen(command, "r");
    ck_assert_ptr_nonnull(p);
    char buf[1024] = "";
    line[0] = '\0';
    while (fgets(buf, sizeof buf, p)) {
        buf[strcspn(buf, "\n")] = '\0';
        snprintf(line, len, "%s", buf);
    }
    int rc = pclose(p);
    ck_assert_msg(rc == 0, "pg-harness.sh %s failed: %s", cmd, line);
}

static void harness(const char *cmd, const char *dir, char *line, size_t len)
{
    harness_for(cmd, dir, getpid(), line, len);
}

/* A private server whose test process ends without stopping it (a failed
 * assertion exits at once) is stopped and its directory removed. */
START_TEST(a_private_server_goes_with_its_test)
{
    pid_t owner = fork();
    ck_assert_int_ge(owner, 0);
    if (owner == 0) {
        pause();
        _exit(0);
    }
    char dir[32] = "/tmp/pgfan-owned.XXXXXX", line[1024];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    harness_for("start", dir, owner, line, sizeof line);
    PGconn *c = PQconnectdb(line);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s", PQerrorMessage(c));
    PQfinish(c);
    kill(owner, SIGKILL);
    waitpid(owner, NULL, 0); /* a zombie would still count as alive */
    int gone = 0;
    for (int tries = 0; tries < 600 && !gone; tries++) {
        gone = access(dir, F_OK) != 0;
        if (!gone)
            sleep_ms(100); /* a poll for a state, bounded by the loop */
    }
    ck_assert_msg(gone, "%s is still there a minute after its owner ended", dir);
    c = PQconnectdb(line);
    ck_assert_int_ne(PQstatus(c), CONNECTION_OK);
    PQfinish(c);
}
END_TEST

/* Rows the COPY on the private server has stored, -1 when none runs (or
 * the server is down). */
static long private_copy_progress(const char *where)
{
    PGconn *c = PQconnectdb(where);
    long n = -1;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *res = PQexec(
            c, "SELECT coalesce(max(tuples_processed), -1) FROM pg_stat_progress_copy");
        if (PQresultStatus(res) == PGRES_TUPLES_OK)
            n = atol(PQgetvalue(res, 0, 0));
        PQclear(res);
    }
    PQfinish(c);
    return n;
}

/* Polls (bounded) until the private server's COPY has stored more than
 * `rows`; returns whether it did. */
static int private_copy_passes(const char *where, long rows)
{
    for (int tries = 0; tries < 3000; tries++) {
        if (private_copy_progress(where) > rows)
            return 1;
        sleep_ms(20); /* a poll for a state, bounded by the loop */
    }
    return 0;
}

/* A --retries run whose second target is a server of the test's own (in
 * `dir`, reached by `lost`), with the source held at its middle row by the
 * advisory lock `key` until the test lets go, so that whatever the test
 * does to that server lands mid-stream whatever the speeds. */
typedef struct lost_run {
    long nrows;
    int key;
    char table[64], dir[32], lost[1024], line[1024], query[256], report[32];
    PGconn *gate;
    char *argv[32];
    char out[32], err[32];
    pid_t pid;
} lost_run;

/* Sets the run up and starts pgfan with the common options and `extra`
 * (NULL-terminated). */
static void lost_run_start(lost_run *lr, int key, const char *const *extra)
{
    lr->nrows = 60000;
    lr->key = key;
    new_tables(lr->table, lr->nrows);
    snprintf(lr->dir, sizeof lr->dir, "/tmp/pgfan-lost.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(lr->dir));
    harness("start", lr->dir, lr->lost, sizeof lr->lost);
    PGconn *c = PQconnectdb(lr->lost);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    pgt_mixed_table(c, lr->table, 0);
    pgt_exec(c, "CHECKPOINT"); /* its server runs with synchronous_commit off */
    PQfinish(c);
    lr->gate = db(0);
    pgt_exec(lr->gate, "SELECT pg_advisory_lock(%d)", key);
    snprintf(lr->report, sizeof lr->report, "/tmp/pgfan-cli-report.XXXXXX");
    close(mkstemp(lr->report));
    snprintf(
        lr->query, sizeof lr->query,
        "SELECT * FROM %s WHERE id <> %ld OR pg_advisory_lock_shared(%d) IS NOT NULL "
        "/* lost_gate */",
        lr->table, lr->nrows / 2, key);
    const char *common[] = {"pgfan",     "-s",         conninfo[0],    "-t",
                            conninfo[1], "-t",         lr->lost,       "-t",
                            conninfo[2], "--query",    lr->query,      "--into",
                            lr->table,   "--truncate", "--retries",    "2",
                            "--report",  lr->report,   "--no-progress"};
    size_t n = 0;
    for (size_t k = 0; k < sizeof common / sizeof *common; k++)
        lr->argv[n++] = (char *)common[k];
    for (size_t k = 0; extra[k]; k++)
        lr->argv[n++] = (char *)extra[k];
    lr->argv[n] = NULL;
    snprintf(lr->out, sizeof lr->out, "/tmp/pgfan-cli-out.XXXXXX");
    snprintf(lr->err, sizeof lr->err, "/tmp/pgfan-cli-err.XXXXXX");
    lr->pid = spawn_cli(lr->argv, lr->out, lr->err);
    ck_assert_msg(private_copy_passes(lr->lost, 0), "target 2's COPY never got rows");
}

static void lost_run_let_go(lost_run *lr)
{
    pgt_exec(lr->gate, "SELECT pg_advisory_unlock(%d)", lr->key);
}

/* After pgfan ended: the report says target 2 was reloaded once, targets 1
 * and 2 hold the source's values and target 3 holds `third`. */
static void lost_run_check(lost_run *lr, const char *third)
{
    char *json = cli_slurp(lr->report);
    const char *second = strstr(json, "\"targets\": [");
    second = second ? strstr(second + 1, "\"retries\": ") : NULL;
    second = second ? strstr(second + 1, "\"retries\": ") : NULL;
    ck_assert_msg(second && strncmp(second, "\"retries\": 1,", 13) == 0, "%s", json);
    char *want = source_checksum(lr->table);
    assert_target(1, lr->table, want);
    assert_target(2, lr->table, third ? third : want);
    PGconn *c = PQconnectdb(lr->lost);
    char *got = pgt_checksum(c, lr->table);
    ck_assert_msg(strcmp(got, want) == 0, "the reloaded target holds %s, want %s", got,
                  want);
    assert_nothing_prepared(c, 2);
    free(got);
    PQfinish(c);
    free(want);
    free(json);
}

static void lost_run_free(lost_run *lr)
{
    unlink(lr->report);
    PQfinish(lr->gate);
    harness("stop", lr->dir, lr->line, sizeof lr->line);
    drop_tables(lr->table);
}

/*
 * --retries: target 2's server is restarted in immediate mode while the
 * source is held back halfway.  pgfan reconnects, loads target 2 again
 * from the journal, and only then is the source let go: every target ends
 * identical to the source, exit 0, the report says one retry.  Loop 1
 * does the same under --atomic (all prepared, then all committed; no
 * prepared transaction left behind).
 */
START_TEST(a_target_server_restarted_mid_stream_is_reloaded)
{
    const char *extra[] = {_i ? "--atomic" : "--quiet", NULL};
    lost_run lr;
    lost_run_start(&lr, 818, extra);
    harness("restart", lr.dir, lr.line, sizeof lr.line);
    /* Loaded again from the start: its new COPY passes the first rows. */
    ck_assert_msg(private_copy_passes(lr.lost, 0), "target 2 was not loaded again: %s",
                  cli_slurp(lr.err));
    lost_run_let_go(&lr);
    cli_run r = cli_finish(lr.pid, lr.out, lr.err);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    lost_run_check(&lr, NULL);
    cli_free(&r);
    lost_run_free(&lr);
}
END_TEST

/* Polls the file until it contains `text`, for about `seconds`; returns 1
 * when it does. */
static int file_says_within(const char *path, const char *text, int seconds)
{
    for (int tries = 0; tries < seconds * 50; tries++) {
        char *now = cli_slurp(path);
        int found = now && strstr(now, text) != NULL;
        free(now);
        if (found)
            return 1;
        sleep_ms(20); /* a poll for a state, bounded by the loop */
    }
    return 0;
}

/*
 * --retries while another target stops: target 2's server goes down (and
 * stays down) while the source is held at its middle row; once pgfan says
 * it is reconnecting, target 3's backend is stopped and the source let go.
 * The reconnection must not hold up the rest of the copy: target 3 is
 * reported stalled and dropped while target 2's server is still down, and
 * only then does that server come back.  A reconnection that blocked the
 * copy would report the stall only after its minute had run out and target
 * 2 had been given up; so target 2 must end reloaded from the journal, and
 * targets 1 and 2 commit the source's values (exit 3: target 3 was
 * dropped).
 */
START_TEST(a_reconnecting_target_holds_no_other_back)
{
    const char *extra[] = {"--on-fault", "drop", "--stall-timeout", "2", NULL};
    lost_run lr;
    lost_run_start(&lr, 819, extra);
    PGconn *admin = db(0);
    harness("down", lr.dir, lr.line, sizeof lr.line);
    ck_assert_msg(file_says_within(lr.err, "reconnecting to load it again", 120),
                  "pgfan did not notice that target 2's server went away");
    int backend =
        wait_for_running(admin, "cli_target_2", "COPY", "Client:ClientRead", lr.pid);
    ck_assert_int_ne(backend, 0);
    ck_assert_int_eq(kill(backend, SIGSTOP), 0);
    lost_run_let_go(&lr);
    int stalled = file_says_within(lr.err, "held the copy back", 120);
    kill(backend, SIGCONT);
    harness("up", lr.dir, lr.line, sizeof lr.line);
    cli_run r = cli_finish(lr.pid, lr.out, lr.err);
    ck_assert_msg(stalled, "target 3's stall waited for target 2's reconnection: %s",
                  r.err);
    ck_assert_msg(r.code == 3, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "target 3 (") != NULL, "%s", r.err);
    lost_run_check(&lr, "0:0");
    cli_free(&r);
    PQfinish(admin);
    lost_run_free(&lr);
}
END_TEST

/* --retries reloads only targets whose server went away: a row a target
 * rejects (a CHECK constraint) fails the copy as before, with no retry. */
START_TEST(a_rejected_row_is_not_retried)
{
    char table[64];
    new_tables(table, 2000);
    PGconn *t = db(2);
    pgt_exec(t, "ALTER TABLE %s ADD CHECK (id <> 1500)", table);
    PQfinish(t);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2],
                        "--table", table, "--retries", "2", "--no-progress", NULL);
    ck_assert_msg(r.code == 1, "exit %d: %s", r.code, r.err);
    ck_assert_ptr_nonnull(strstr(r.err, "23514"));
    ck_assert_ptr_null(strstr(r.err, "reconnecting"));
    assert_all_targets_empty(table);
    cli_free(&r);
    drop_tables(table);
}
END_TEST

/* Rows far bigger than a slot (up to 3 MB against 4 KiB slots, in a ring
 * of two) travel in slots of their own, libpq's buffers adopted rather
 * than copied: every target gets every value, in binary and in text. */
START_TEST(rows_bigger_than_a_slot_arrive_whole)
{
    static const char *const formats[] = {"binary", "text"};
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "big");
    for (int i = 0; i <= NT; i++) {
        PGconn *c = db(i);
        pgt_exec(c, "CREATE TABLE %s (id int, b bytea, t text)", table);
        PQfinish(c);
    }
    PGconn *s = db(0);
    pgt_exec(s,
             "INSERT INTO %s SELECT g, decode(repeat(md5(g::text), CASE g %% 4 WHEN 0 "
             "THEN 1 WHEN 1 THEN 200 WHEN 2 THEN 20000 ELSE 100000 END), 'hex'), "
             "repeat(chr(233), g %% 3 * 30000) FROM generate_series(1, 40) g",
             table);
    PQfinish(s);
    char *want = source_checksum(table);
    for (size_t f = 0; f < 2; f++) {
        cli_run r =
            run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                    conninfo[3], "--table", table, "--format", formats[f], "--chunk-size",
                    "4096", "--ring-slots", "2", "--truncate", "--no-progress", NULL);
        ck_assert_msg(r.code == 0, "%s: exit %d: %s", formats[f], r.code, r.err);
        for (int i = 1; i <= NT; i++)
            assert_target(i, table, want);
        cli_free(&r);
    }
    free(want);
    drop_tables(table);
}
END_TEST

/* A deferred constraint the data violates fails before the first COMMIT,
 * so under --on-fault abort no target commits (it used to fail only at its
 * own COMMIT, after others had committed). */
START_TEST(deferred_constraint_fails_before_any_commit)
{
    char table[64];
    new_tables(table, 3000);
    PGconn *t = db(1);
    pgt_exec(t,
             "ALTER TABLE %s ADD CONSTRAINT %s_once UNIQUE (flag) DEFERRABLE INITIALLY "
             "DEFERRED",
             table, table);
    PQfinish(t);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                        conninfo[3], "--table", table, "--no-progress", NULL);
    ck_assert_int_eq(r.code, 1);
    ck_assert_msg(strstr(r.err, "target 1 (") && strstr(r.err, "SQLSTATE 23505"), "%s",
                  r.err);
    assert_all_targets_empty(table);
    cli_free(&r);
    drop_tables(table);
}
END_TEST

/* A report path that cannot be written is found before anything happens;
 * a report that cannot be written after the commit does not turn it into
 * a failure. */
START_TEST(report_failures_never_misstate_the_outcome)
{
    char table[64];
    new_tables(table, 500);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "--table", table,
                        "--report", "/nonexistent-pgfan-dir/report.json", NULL);
    ck_assert_int_eq(r.code, 2);
    ck_assert_msg(strstr(r.err, "cannot write the report"), "%s", r.err);
    assert_target(1, table, "0:0");
    cli_free(&r);
    /* stdout closed: the data is committed, exit 0, and the lost report is said. */
    char *argv[] = {"/bin/sh",  "-c",        "exec \"$0\" \"$@\" >&-",
                    (char *)"", "-s",        conninfo[0],
                    "-t",       conninfo[1], "--table",
                    table,      "--report",  "-",
                    NULL};
    argv[3] = (char *)getenv("PGFAN_CLI");
    char errpath[] = "/tmp/pgfan-closed-stdout.XXXXXX";
    close(mkstemp(errpath));
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int e = open(errpath, O_WRONLY | O_TRUNC);
        dup2(e, 2);
        execv("/bin/sh", argv);
        _exit(127);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    char *err = cli_slurp(errpath);
    unlink(errpath);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d: %s", status,
                  err);
    ck_assert_msg(strstr(err, "report could not be written"), "%s", err);
    free(err);
    char *want = source_checksum(table);
    assert_target(1, table, want);
    free(want);
    drop_tables(table);
}
END_TEST

/* When the source fails, the report says why every target rolled back. */
START_TEST(source_failure_is_named_in_the_report)
{
    char table[64];
    new_tables(table, 10);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "--query",
                        "SELECT g::int8 AS id, (1 / (20000 - g))::text AS name FROM "
                        "generate_series(1, 40000) g",
                        "--into", table, "--report", "-", "--no-progress", NULL);
    ck_assert_int_eq(r.code, 1);
    ck_assert_msg(strstr(r.out, "\"source\": {\"sqlstate\": \"22012\", \"error\": "
                                "\"division by zero\"}"),
                  "%s", r.out);
    ck_assert_ptr_nonnull(strstr(r.out, "\"state\": \"rolled_back\""));
    assert_target(1, table, "0:0");
    cli_free(&r);
    drop_tables(table);
}
END_TEST

/* The source table as a target would double itself (or, with --truncate,
 * deadlock against its own read): refused before anything happens. */
START_TEST(the_source_table_is_never_its_own_target)
{
    char table[64];
    new_tables(table, 700);
    char *before = source_checksum(table);
    for (int truncate = 0; truncate < 2; truncate++) {
        cli_run r =
            run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[0], "--table",
                    table, truncate ? "--truncate" : "--no-progress", NULL);
        ck_assert_int_eq(r.code, 2);
        ck_assert_msg(strstr(r.err, "target 2 (") && strstr(r.err, "source table itself"),
                      "%s", r.err);
        cli_free(&r);
    }
    char *after = source_checksum(table);
    ck_assert_str_eq(after, before);
    assert_target(1, table, "0:0");
    free(before), free(after);
    drop_tables(table);
}
END_TEST

/* Two --atomic runs with the same pid (1, in their own pid namespaces) use
 * different transaction ids, announced before they prepare. */
START_TEST(atomic_run_ids_are_unique_across_pid_namespaces)
{
    char table[2][64], out[2][40], err[2][40];
    pid_t pid[2];
    for (int k = 0; k < 2; k++) {
        new_tables(table[k], 2000);
        snprintf(out[k], sizeof out[k], "/tmp/pgfan-ns-out.XXXXXX");
        snprintf(err[k], sizeof err[k], "/tmp/pgfan-ns-err.XXXXXX");
        char *argv[] = {
            "unshare",  "--pid",         "--fork",  (char *)getenv("PGFAN_CLI"),
            "-s",       conninfo[0],     "-t",      conninfo[1],
            "-t",       conninfo[2],     "--table", table[k],
            "--atomic", "--no-progress", NULL};
        close(mkstemp(out[k]));
        close(mkstemp(err[k]));
        pid[k] = fork();
        ck_assert_int_ge(pid[k], 0);
        if (pid[k] == 0) {
            int o = open(out[k], O_WRONLY | O_TRUNC),
                e = open(err[k], O_WRONLY | O_TRUNC);
            dup2(o, 1);
            dup2(e, 2);
            execvp("unshare", argv);
            _exit(127);
        }
    }
    /* Both runs end before anything is checked: a run still between its
     * PREPARE and COMMIT PREPARED would count as left prepared, and a
     * failing test's process group is killed, which would strand it. */
    cli_run run[2];
    for (int k = 0; k < 2; k++)
        run[k] = cli_finish(pid[k], out[k], err[k]);
    char id[2][33];
    for (int k = 0; k < 2; k++) {
        cli_run r = run[k];
        ck_assert_msg(r.code == 0, "run %d: exit %d: %s", k, r.code, r.err);
        const char *p = strstr(r.err, "preparing transactions pgfan_");
        ck_assert_msg(p, "%s", r.err);
        p += strlen("preparing transactions pgfan_");
        ck_assert_int_eq((int)strspn(p, "0123456789abcdef"), 32);
        memcpy(id[k], p, 32);
        id[k][32] = '\0';
        cli_free(&r);
        char *want = source_checksum(table[k]);
        assert_target(1, table[k], want); /* and nothing left prepared */
        assert_target(2, table[k], want);
        free(want);
        drop_tables(table[k]);
    }
    ck_assert_str_ne(id[0], id[1]);
}
END_TEST

/* The database cli_sync as a target whose commits wait for a synchronous
 * standby that does not exist (until pgt_missing_standby(admin, 0)), with
 * an empty `table`; its conninfo in `sync`, and a session there that
 * commits locally. */
static PGconn *waiting_for_a_standby(PGconn *admin, const char *table, char *sync,
                                     size_t len)
{
    pgt_sync_database(admin, "cli_sync");
    snprintf(sync, len, "%s dbname=cli_sync", base);
    PGconn *sc = PQconnectdb(sync);
    ck_assert_int_eq(PQstatus(sc), CONNECTION_OK);
    pgt_exec(sc, "SET synchronous_commit = local");
    pgt_exec(sc, "DROP TABLE IF EXISTS %s", table);
    pgt_mixed_table(sc, table, 0);
    pgt_missing_standby(admin, 1);
    return sc;
}

/* The target of waiting_for_a_standby() holds exactly the source's rows
 * and nothing is left prepared; then what the test made goes. */
static void sync_target_has_the_source(PGconn *admin, PGconn *sc, const char *table)
{
    char *want = source_checksum(table);
    char *got = pgt_checksum(sc, table);
    ck_assert_str_eq(got, want);
    char *prepared = pgt_value(sc, "SELECT count(*) FROM pg_prepared_xacts");
    ck_assert_str_eq(prepared, "0");
    free(prepared), free(got), free(want);
    pgt_exec(sc, "DROP TABLE %s", table);
    PQfinish(sc);
    PQfinish(admin);
    drop_tables(table);
}

/*
 * A COMMIT (or PREPARE, or COMMIT PREPARED) whose connection is lost: the
 * server is asked what happened, never guessed.  The target's database
 * waits for a synchronous standby that does not exist, so its commits
 * hang after committing locally; the test terminates the waiting backend,
 * which is exactly "committed, answer lost".
 */
START_TEST(a_lost_commit_is_settled_by_asking_the_server)
{
    char table[64];
    new_tables(table, 1000);
    PGconn *admin = db(0);
    char sync[1200];
    PGconn *sc = waiting_for_a_standby(admin, table, sync, sizeof sync);
    char *argv[] = {"pgfan",
                    "-s",
                    conninfo[0],
                    "-t",
                    conninfo[1],
                    "-t",
                    sync,
                    "--table",
                    table,
                    "--report",
                    "-",
                    "--no-progress",
                    _i ? "--atomic" : NULL,
                    NULL};
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    pid_t pid = spawn_cli(argv, out, err);
    int killed = 0, backend;
    while ((backend = wait_for_backend(admin, "cli_sync", "IPC:SyncRep", pid)) != 0) {
        pgt_exec(admin, "SELECT pg_terminate_backend(%d)", backend);
        killed++;
    }
    pgt_missing_standby(admin, 0);
    cli_run r = cli_finish(pid, out, err);
    ck_assert_msg(killed >= 1, "no commit waited: %s", r.err);
    ck_assert_msg(r.code == 0, "exit %d after %d lost answers: %s", r.code, killed,
                  r.err);
    ck_assert_ptr_null(strstr(r.out, "\"state\": \"unknown\""));
    cli_free(&r);
    sync_target_has_the_source(admin, sc, table);
}
END_TEST

/* How often `text` occurs in `s`. */
static int occurrences(const char *s, const char *text)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, text)) != NULL; p += strlen(text))
        n++;
    return n;
}

/* --end-timeout bounds the statements that end a target's copy after its
 * COPY: here every COMMIT on the target's database waits for a synchronous
 * standby that does not exist.  Cancelled after 1 s, the COMMIT answers
 * that it committed locally, which is what pgfan reports (exit 0, the rows
 * there); without the bound it would wait for the standby forever.  Loop 1
 * runs with --atomic: PREPARE TRANSACTION and COMMIT PREPARED both wait,
 * and each is cancelled in turn, leaving nothing prepared. */
START_TEST(a_commit_that_waits_ends_at_the_end_timeout)
{
    char table[64];
    new_tables(table, 1000);
    PGconn *admin = db(0);
    char sync[1200];
    PGconn *sc = waiting_for_a_standby(admin, table, sync, sizeof sync);
    char *argv[] = {"pgfan",
                    "-s",
                    conninfo[0],
                    "-t",
                    conninfo[1],
                    "-t",
                    sync,
                    "--table",
                    table,
                    "--end-timeout",
                    "1",
                    "--report",
                    "-",
                    "--no-progress",
                    _i ? "--atomic" : NULL,
                    NULL};
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    pid_t pid = spawn_cli(argv, out, err);
    int exited = child_exited_within_2min(pid);
    int backend;
    while ((backend = wait_for_backend(admin, "cli_sync", "IPC:SyncRep", pid)) != 0)
        pgt_exec(admin, "SELECT pg_terminate_backend(%d)", backend); /* only if it hung */
    pgt_missing_standby(admin, 0);
    cli_run r = cli_finish(pid, out, err);
    ck_assert_msg(exited, "the COMMIT waited for the standby: %s", r.err);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    /* each statement did wait, and the server says it took effect locally */
    ck_assert_msg(occurrences(r.err, "canceling wait for synchronous replication") ==
                      1 + _i,
                  "%s", r.err);
    ck_assert_ptr_null(strstr(r.out, "\"state\": \"unknown\""));
    cli_free(&r);
    sync_target_has_the_source(admin, sc, table);
}
END_TEST

/* Polls until backend `pid` has left, or about a minute passes. */
static void backend_left(PGconn *admin, int pid)
{
    for (int tries = 0; tries < 6000; tries++) {
        char *n =
            pgt_value(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid);
        int left = strcmp(n, "0") == 0;
        free(n);
        if (left)
            return;
        sleep_ms(10); /* a poll for a state, bounded by the loop; not a timing bet */
    }
}

/*
 * --atomic, and target 2's backend stops (SIGSTOP) in its PREPARE while
 * that waits for a synchronous standby that does not exist: the PREPARE is
 * cancelled at --end-timeout, the cancel goes unanswered, and what the
 * PREPARE did stays unknown while that backend lives (it could still
 * prepare).  pgfan says so (exit 4, target 2 "unknown") and names the
 * statement that settles it, while target 1 is rolled back.  Continued,
 * the backend leaves the transaction prepared (it was, before the wait),
 * and the named statement settles it.
 */
START_TEST(a_stopped_prepare_is_reported_unknown)
{
    char table[64];
    new_tables(table, 1000);
    PGconn *admin = db(0);
    char sync[1200];
    PGconn *sc = waiting_for_a_standby(admin, table, sync, sizeof sync);
    char *argv[] = {
        "pgfan",    "-s",      conninfo[0],     "-t",       conninfo[1],     "-t",
        sync,       "--table", table,           "--atomic", "--end-timeout", "1",
        "--report", "-",       "--no-progress", NULL};
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    pid_t pid = spawn_cli(argv, out, err);
    int backend = wait_for_running(admin, "cli_sync", "PREPARE", "IPC:SyncRep", pid);
    int stopped = backend && kill(backend, SIGSTOP) == 0;
    int exited = stopped && child_exited_within_2min(pid);
    if (stopped)
        kill(backend, SIGCONT);
    pgt_missing_standby(admin, 0);
    cli_run r = cli_finish(pid, out, err);
    ck_assert_msg(stopped, "no PREPARE waited: %s", r.err);
    backend_left(admin, backend); /* pgfan asked it to terminate */
    ck_assert_msg(exited, "pgfan waited for the stopped PREPARE: %s", r.err);
    ck_assert_msg(r.code == 4, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.out, "\"state\": \"unknown\""), "%s", r.out);
    const char *hint = strstr(r.err, "run ROLLBACK PREPARED '");
    ck_assert_msg(hint && strstr(r.err, "target 2 ("), "%s", r.err);
    char gid[80] = "";
    sscanf(hint + strlen("run ROLLBACK PREPARED '"), "%79[^']", gid);
    char *left = pgt_value(sc, "SELECT string_agg(gid, ',') FROM pg_prepared_xacts");
    ck_assert_str_eq(left, gid);
    pgt_exec(sc, "ROLLBACK PREPARED '%s'", gid);
    assert_target(1, table, "0:0");
    char *got = pgt_checksum(sc, table);
    ck_assert_str_eq(got, "0:0");
    free(got), free(left);
    cli_free(&r);
    pgt_exec(sc, "DROP TABLE %s", table);
    PQfinish(sc);
    PQfinish(admin);
    drop_tables(table);
}
END_TEST

/* The deferred checks before the commit are bounded too: target 1's
 * deferred unique check waits on a row another session has not committed,
 * and --end-timeout 1 cancels it while that session still holds it; under
 * abort nothing commits (exit 1). */
START_TEST(a_deferred_check_that_waits_ends_at_the_end_timeout)
{
    char table[64];
    new_tables(table, 1000);
    PGconn *t = db(1), *blocker = db(1);
    pgt_exec(
        t,
        "ALTER TABLE %s ADD CONSTRAINT %s_once UNIQUE (id) DEFERRABLE INITIALLY DEFERRED",
        table, table);
    PQfinish(t);
    pgt_exec(blocker, "BEGIN");
    pgt_exec(blocker, "INSERT INTO %s (id) VALUES (1)", table);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                        conninfo[3], "--table", table, "--end-timeout", "1",
                        "--no-progress", NULL);
    ck_assert_int_eq(PQtransactionStatus(blocker), PQTRANS_INTRANS); /* still held */
    pgt_exec(blocker, "ROLLBACK");
    ck_assert_msg(r.code == 1, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "target 1 (") &&
                      strstr(r.err, "SET CONSTRAINTS ALL IMMEDIATE did not end within "
                                    "1000 ms (--end-timeout)") &&
                      strstr(r.err, "SQLSTATE 57014"),
                  "%s", r.err);
    assert_all_targets_empty(table);
    cli_free(&r);
    PQfinish(blocker);
    drop_tables(table);
}
END_TEST

/* How another session makes pgfan wait on target 2: statements that take
 * the lock (%s is the table, at most twice), the wait pgfan is then seen
 * in, and how the lock is let go and its objects dropped. */
typedef struct lock_hold {
    const char *take[3];
    const char *event;
    const char *release;
    const char *cleanup;
} lock_hold;

/* Sends `sig` to pgfan while it waits on target 2 as `h` makes it (in a
 * TRUNCATE with `truncate`): the wait is cancelled, pgfan exits 130,
 * nothing is committed and no statement is left waiting. */
static void interrupt_while_held(const lock_hold *h, int truncate, int sig)
{
    char table[64];
    new_tables(table, 1000);
    PGconn *holder = db(2);
    for (int k = 0; k < 3 && h->take[k]; k++)
        pgt_exec(holder, h->take[k], table, table);
    char *argv[] = {"pgfan",
                    "-s",
                    conninfo[0],
                    "-t",
                    conninfo[1],
                    "-t",
                    conninfo[2],
                    "--table",
                    table,
                    "--no-progress",
                    truncate ? "--truncate" : NULL,
                    NULL};
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    pid_t pid = spawn_cli(argv, out, err);
    PGconn *admin = db(0);
    int backend = wait_for_backend(admin, "cli_target_2", h->event, pid);
    ck_assert_int_ne(backend, 0);
    kill(pid, sig);
    cli_run r = cli_finish(pid, out, err);
    pgt_assert_no_copy_running(holder); /* while the lock is still held */
    pgt_exec(holder, "%s", h->release);
    ck_assert_msg(r.code == 130, "exit %d: %s", r.code, r.err);
    assert_all_targets_empty(table);
    cli_free(&r);
    PQfinish(admin);
    drop_tables(table);
    if (h->cleanup)
        pgt_exec(holder, h->cleanup, table);
    PQfinish(holder);
}

/* SIGTERM while a TRUNCATE waits for a lock held elsewhere. */
START_TEST(a_signal_interrupts_a_blocked_statement)
{
    lock_hold h = {{"BEGIN", "LOCK TABLE %s IN ACCESS SHARE MODE"},
                   "Lock:relation",
                   "ROLLBACK",
                   NULL};
    interrupt_while_held(&h, 1, SIGTERM);
}
END_TEST

/* SIGINT while a target's COPY cannot start (its table is locked in SHARE
 * mode by another session). */
START_TEST(a_signal_interrupts_a_locked_copy_start)
{
    lock_hold h = {
        {"BEGIN", "LOCK TABLE %s IN SHARE MODE"}, "Lock:relation", "ROLLBACK", NULL};
    interrupt_while_held(&h, 0, SIGINT);
}
END_TEST

/* SIGINT while target 2 works out the end of its COPY (an AFTER STATEMENT
 * trigger waits on an advisory lock held elsewhere): CopyDone's answer is
 * no longer awaited and the statement is cancelled. */
START_TEST(a_signal_interrupts_the_wait_for_a_copys_end)
{
    lock_hold h = {{"CREATE FUNCTION %s_gate() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN PERFORM pg_advisory_xact_lock_shared(4243); RETURN NULL; "
                    "END $$",
                    "CREATE TRIGGER gate AFTER INSERT ON %s FOR EACH STATEMENT EXECUTE "
                    "FUNCTION %s_gate()",
                    "SELECT pg_advisory_lock(4243)"},
                   "Lock:advisory",
                   "SELECT pg_advisory_unlock(4243)",
                   "DROP FUNCTION %s_gate()"};
    interrupt_while_held(&h, 0, SIGINT);
}
END_TEST

/*
 * The same lock with --stall-timeout: the COPY start is given up, named,
 * and pgfan exits 1 with nothing committed.  Loop 0: the start's own limit
 * and the server's lock_timeout (both 1 s from --stall-timeout) race, and
 * either one names the lock.  Loop 1: target 2's session has lock_timeout
 * 200 ms of its own and --stall-timeout is 5 s, so the shorter setting is
 * kept: the server gives up first (55P03), still exit 1.
 */
START_TEST(a_locked_copy_start_fails_at_the_stall_timeout)
{
    int own = _i == 1;
    char table[64], target2[1300];
    new_tables(table, 1000);
    snprintf(target2, sizeof target2, "%s%s", conninfo[2],
             own ? " options='-c lock_timeout=200'" : "");
    PGconn *holder = db(2);
    pgt_exec(holder, "BEGIN");
    pgt_exec(holder, "LOCK TABLE %s IN SHARE MODE", table);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", target2, "--table",
                        table, "--stall-timeout", own ? "5" : "1", "--no-progress", NULL);
    pgt_assert_no_copy_running(holder);
    pgt_exec(holder, "ROLLBACK");
    ck_assert_msg(r.code == 1, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "target 2") &&
                      ((!own && strstr(r.err, "locked by another session")) ||
                       strstr(r.err, "(SQLSTATE 55P03)")),
                  "%s", r.err);
    assert_all_targets_empty(table);
    cli_free(&r);
    PQfinish(holder);
    drop_tables(table);
}
END_TEST

/* A target blocked on a row lock with --on-fault drop --stall-timeout: it
 * is stalled out, cancelled and rolled back; the others commit; pgfan
 * exits 3 and leaves no COPY behind. */
START_TEST(a_lock_blocked_target_is_dropped_and_the_rest_commit)
{
    char table[64];
    new_tables(table, 200000);
    PGconn *t = db(2), *blocker = db(2);
    pgt_exec(t, "ALTER TABLE %s ADD PRIMARY KEY (id)", table);
    pgt_exec(blocker, "BEGIN");
    pgt_exec(blocker, "INSERT INTO %s (id) VALUES (5000)", table);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                        conninfo[3], "--table", table, "--on-fault", "drop",
                        "--stall-timeout", "1", "--report", "-", "--no-progress", NULL);
    pgt_assert_no_copy_running(t); /* before the blocker lets go */
    pgt_exec(blocker, "ROLLBACK");
    ck_assert_msg(r.code == 3, "exit %d: %s", r.code, r.err);
    /* Either watch may see it first: the stall (nothing moves) or the
     * server's lock_timeout the command sets from --stall-timeout. */
    ck_assert_msg(strstr(r.err, "target 2 (") && (strstr(r.err, "held the copy back") ||
                                                  strstr(r.err, "(SQLSTATE 55P03)")),
                  "%s", r.err);
    char *want = source_checksum(table);
    assert_target(1, table, want);
    assert_target(2, table, "0:0");
    assert_target(3, table, want);
    free(want);
    cli_free(&r);
    PQfinish(t);
    PQfinish(blocker);
    drop_tables(table);
}
END_TEST

/*
 * Target 2 waits on a row lock at its COPY's end (each target checks a
 * foreign key; a session holds a referenced row FOR UPDATE until the
 * command is over), where nothing the client sees tells the wait from
 * work.  Loops 0 and 1: --stall-timeout 1 bounds it as the transaction's
 * lock_timeout, and target 2 fails with 55P03.  Loops 2 and 3: no stall
 * timeout, --end-timeout 1 cancels the COPY (57014).  Either happens while
 * the lock is still held; under drop (odd loops) the others commit (exit
 * 3), under abort nothing does (exit 1).
 */
START_TEST(a_wait_at_a_copys_end_ends_at_its_bound)
{
    int drop = _i % 2 == 1, end_timeout = _i >= 2;
    const char *sqlstate = end_timeout ? "57014" : "55P03";
    char said[64], reported[64];
    snprintf(said, sizeof said, "(SQLSTATE %s)", sqlstate);
    snprintf(reported, sizeof reported, "\"sqlstate\": \"%s\"", sqlstate);
    char table[64];
    new_tables(table, 1000);
    for (int i = 1; i <= NT; i++) {
        PGconn *t = db(i);
        pgt_exec(t, "CREATE TABLE %s_p (id int8 PRIMARY KEY)", table);
        pgt_exec(t, "INSERT INTO %s_p SELECT generate_series(1, 1000)", table);
        pgt_exec(t, "ALTER TABLE %s ADD FOREIGN KEY (id) REFERENCES %s_p", table, table);
        PQfinish(t);
    }
    PGconn *holder = db(2);
    pgt_exec(holder, "BEGIN");
    pgt_exec(holder, "SELECT FROM %s_p WHERE id = 500 FOR UPDATE", table);
    cli_run r =
        run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                conninfo[3], "--table", table, "--on-fault", drop ? "drop" : "abort",
                end_timeout ? "--end-timeout" : "--stall-timeout", "1", "--report", "-",
                "--no-progress", NULL);
    ck_assert_int_eq(PQtransactionStatus(holder), PQTRANS_INTRANS); /* still locked */
    pgt_assert_no_copy_running(holder);
    pgt_exec(holder, "ROLLBACK");
    ck_assert_msg(r.code == (drop ? 3 : 1), "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "target 2 (") &&
                      strstr(r.err, end_timeout ? "within 1000 ms (the end timeout)"
                                                : "lock timeout") &&
                      strstr(r.err, said),
                  "%s", r.err);
    ck_assert_msg(strstr(r.out, reported), "%s", r.out);
    char *want = source_checksum(table);
    assert_target(1, table, drop ? want : "0:0");
    assert_target(2, table, "0:0");
    assert_target(3, table, drop ? want : "0:0");
    free(want);
    cli_free(&r);
    PQfinish(holder);
    drop_tables(table);
    for (int i = 1; i <= NT; i++) {
        PGconn *t = db(i);
        pgt_exec(t, "DROP TABLE %s_p", table);
        PQfinish(t);
    }
}
END_TEST

/* Polls `c` until `count_sql` (a count) is nonzero, or about a minute
 * passes; returns 1 when it was. */
static int server_shows(PGconn *c, const char *count_sql)
{
    for (int tries = 0; tries < 6000; tries++) {
        char *n = pgt_value(c, "%s", count_sql);
        int seen = strcmp(n, "0") != 0;
        free(n);
        if (seen)
            return 1;
        sleep_ms(10); /* a poll for a state, bounded by the loop; not a timing bet */
    }
    return 0;
}

/*
 * The timeouts a database or role sets for its applications do not end a
 * load: pgfan turns them off in its sessions, as pg_dump does.  Every
 * connection here asks for a statement_timeout and an
 * idle_in_transaction_session_timeout of 1 s.  Target 2's COPY end waits
 * on a row lock (a referenced row held FOR UPDATE) while target 1, done,
 * waits idle in its transaction; the holder lets go only once the servers
 * show target 2's COPY running and target 1 idle in its transaction, each
 * for longer than those timeouts.  Then all commit the source's rows.
 */
START_TEST(application_timeouts_do_not_end_a_load)
{
    char table[64];
    new_tables(table, 1000);
    PGconn *t1 = db(1), *t2 = db(2), *holder = db(2);
    pgt_exec(holder, "CREATE TABLE %s_p (id int8 PRIMARY KEY)", table);
    pgt_exec(holder, "INSERT INTO %s_p SELECT generate_series(1, 1000)", table);
    pgt_exec(holder, "ALTER TABLE %s ADD FOREIGN KEY (id) REFERENCES %s_p", table, table);
    pgt_exec(holder, "BEGIN");
    pgt_exec(holder, "SELECT FROM %s_p WHERE id = 500 FOR UPDATE", table);
    char timed[NT + 1][1400];
    for (int i = 0; i <= NT; i++)
        snprintf(timed[i], sizeof timed[i],
                 "%.1199s options='-c statement_timeout=1000 "
                 "-c idle_in_transaction_session_timeout=1000'",
                 conninfo[i]);
    char *argv[] = {"pgfan", "-s",     timed[0],  "-t",  timed[1],        "-t", timed[2],
                    "-t",    timed[3], "--table", table, "--no-progress", NULL};
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    pid_t pid = spawn_cli(argv, out, err);
    int copy_waited =
        server_shows(/* not from the holder: its view is frozen */
                     t2, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                         "current_database() "
                         "AND state = 'active' AND query ILIKE 'copy%' "
                         "AND clock_timestamp() - query_start > interval '1500 ms'");
    int idle_waited = server_shows(
        t1, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction' "
            "AND clock_timestamp() - state_change > interval '1500 ms'");
    pgt_exec(holder, "ROLLBACK");
    cli_run r = cli_finish(pid, out, err);
    ck_assert_msg(copy_waited && idle_waited, "a timeout ended a session: %s", r.err);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    char *want = source_checksum(table);
    for (int i = 1; i <= NT; i++)
        assert_target(i, table, want);
    free(want);
    cli_free(&r);
    drop_tables(table);
    pgt_exec(holder, "DROP TABLE %s_p", table);
    PQfinish(holder);
    PQfinish(t2);
    PQfinish(t1);
}
END_TEST

/* --truncate with --stall-timeout 1 while another session holds target 2's
 * table (ACCESS SHARE, until the command is over): the server gives up the
 * TRUNCATE's lock wait (55P03) and pgfan exits 1 with every target as it
 * was (each kept its 3 rows). */
START_TEST(a_locked_truncate_fails_at_the_stall_timeout)
{
    char table[64];
    new_tables(table, 1000);
    for (int i = 1; i <= NT; i++) {
        PGconn *t = db(i);
        pgt_exec(t, "INSERT INTO %s (id) VALUES (1), (2), (3)", table);
        PQfinish(t);
    }
    PGconn *holder = db(2);
    pgt_exec(holder, "BEGIN");
    pgt_exec(holder, "LOCK TABLE %s IN ACCESS SHARE MODE", table);
    cli_run r = run_cli("-s", conninfo[0], "-t", conninfo[1], "-t", conninfo[2], "-t",
                        conninfo[3], "--table", table, "--truncate", "--stall-timeout",
                        "1", "--no-progress", NULL);
    ck_assert_int_eq(PQtransactionStatus(holder), PQTRANS_INTRANS); /* still locked */
    pgt_exec(holder, "ROLLBACK");
    ck_assert_msg(r.code == 1, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "target 2 (") && strstr(r.err, "(SQLSTATE 55P03)"), "%s",
                  r.err);
    for (int i = 1; i <= NT; i++) {
        PGconn *t = db(i);
        char *n = pgt_value(t, "SELECT count(*) FROM %s", table);
        ck_assert_msg(strcmp(n, "3") == 0, "target %d holds %s rows", i, n);
        free(n);
        PQfinish(t);
    }
    cli_free(&r);
    PQfinish(holder);
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
    tcase_add_test(tc, deferred_constraint_fails_before_any_commit);
    tcase_add_test(tc, an_unanswered_rollback_is_given_up);
    tcase_add_test(tc, a_target_stopped_with_all_its_data_ends_at_the_end_timeout);
    tcase_add_loop_test(tc, a_commit_that_waits_ends_at_the_end_timeout, 0, 2);
    tcase_add_test(tc, a_stopped_prepare_is_reported_unknown);
    tcase_add_test(tc, a_deferred_check_that_waits_ends_at_the_end_timeout);
    tcase_add_test(tc, rows_bigger_than_a_slot_arrive_whole);
    tcase_add_test(tc, report_failures_never_misstate_the_outcome);
    tcase_add_test(tc, source_failure_is_named_in_the_report);
    tcase_add_test(tc, the_source_table_is_never_its_own_target);
    tcase_add_test(tc, atomic_run_ids_are_unique_across_pid_namespaces);
    tcase_add_loop_test(tc, a_lost_commit_is_settled_by_asking_the_server, 0, 2);
    tcase_add_test(tc, a_signal_interrupts_a_blocked_statement);
    tcase_add_test(tc, a_lock_blocked_target_is_dropped_and_the_rest_commit);
    tcase_add_test(tc, a_signal_interrupts_a_locked_copy_start);
    tcase_add_test(tc, a_signal_interrupts_the_wait_for_a_copys_end);
    tcase_add_loop_test(tc, a_locked_copy_start_fails_at_the_stall_timeout, 0, 2);
    tcase_add_test(tc, a_locked_truncate_fails_at_the_stall_timeout);
    tcase_add_loop_test(tc, a_wait_at_a_copys_end_ends_at_its_bound, 0, 4);
    tcase_add_test(tc, application_timeouts_do_not_end_a_load);
    suite_add_tcase(s, tc);
    TCase *spill = tcase_create("spill");
    tcase_set_timeout(spill, 600);
    tcase_add_loop_test(spill, a_stopped_target_reads_on_from_the_spill_journal, 0, 2);
    tcase_add_loop_test(spill, a_rate_limited_target_trails_while_the_others_load, 0, 2);
    tcase_add_loop_test(spill, a_target_server_restarted_mid_stream_is_reloaded, 0, 2);
    tcase_add_test(spill, a_reconnecting_target_holds_no_other_back);
    tcase_add_test(spill, a_rejected_row_is_not_retried);
    tcase_add_test(spill, a_private_server_goes_with_its_test);
    suite_add_tcase(s, spill);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(cli_suite());
    srunner_add_suite(sr, fidelity_suite());
    srunner_add_suite(sr, sets_suite());
    srunner_add_suite(sr, flow_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/*
 * Fidelity of the pgfan command: every target holds exactly the source's
 * values, whatever the servers' settings and types, or the copy fails
 * loudly.  Databases whose defaults differ (DateStyle DMY/MDY/German,
 * IntervalStyle sql_standard/iso_8601, extra_float_digits 0, lc_monetary,
 * TimeZone, bytea_output, array_nulls off, LATIN1 and SQL_ASCII encodings) exchange a zoo
 * of types in every format; every target is compared with the source
 * value by value, in sessions with fixed settings.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "clitest.h"
#include "pgtest.h"

Suite *fidelity_suite(void);

/* The settings every comparison session uses, whatever the database's. */
#define FIXED_SETTINGS                                                                   \
    "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, YMD'; "                         \
    "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "                       \
    "SET TimeZone = 'UTC'; SET lc_monetary = 'C'; SET bytea_output = 'hex'; "            \
    "SET array_nulls = on"

/* A database and the defaults that make it awkward. */
typedef struct awkward_db {
    const char *name;
    const char *create; /* after CREATE DATABASE name */
    const char *settings[7];
} awkward_db;

static const awkward_db databases[] = {
    {"fid_utf8_dmy",
     "ENCODING 'UTF8' TEMPLATE template0",
     {"DateStyle = 'SQL, DMY'", "IntervalStyle = 'sql_standard'",
      "extra_float_digits = 0", "lc_monetary = 'de_DE.UTF-8'",
      "TimeZone = 'Asia/Kolkata'", "bytea_output = 'escape'", NULL}},
    {"fid_utf8_mdy",
     "ENCODING 'UTF8' TEMPLATE template0",
     {"DateStyle = 'SQL, MDY'", "TimeZone = 'America/New_York'", "extra_float_digits = 1",
      "array_nulls = off", NULL}},
    {"fid_latin1",
     "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
     {"DateStyle = 'German, DMY'", "IntervalStyle = 'iso_8601'", "extra_float_digits = 0",
      "TimeZone = 'Pacific/Chatham'", NULL}},
    {"fid_ascii",
     "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
     {"DateStyle = 'Postgres, DMY'", "IntervalStyle = 'postgres_verbose'",
      "lc_monetary = 'de_DE.UTF-8'", NULL}},
};
enum { DB_UTF8_DMY, DB_UTF8_MDY, DB_LATIN1, DB_ASCII, NDB };

static char conninfo[NDB][1200];

static PGconn *open_db(int i)
{
    PGconn *c = PQconnectdb(conninfo[i]);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s: %s", databases[i].name,
                  PQerrorMessage(c));
    return c;
}

/* A session with fixed settings, for writing and comparing values. */
static PGconn *fixed_session(int i)
{
    PGconn *c = open_db(i);
    pgt_exec(c, FIXED_SETTINGS);
    return c;
}

static void setup_databases(void)
{
    PGconn *admin = pgt_connect();
    PGresult *res = PQexec(admin, "SET lc_monetary = 'de_DE.UTF-8'");
    ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK,
                  "these tests need the de_DE.UTF-8 locale (./dev test makes it with "
                  "localedef -i de_DE -f UTF-8 de_DE.UTF-8): %s",
                  PQerrorMessage(admin));
    PQclear(res);
    for (int i = 0; i < NDB; i++) {
        const awkward_db *d = &databases[i];
        snprintf(conninfo[i], sizeof conninfo[i], "%s dbname=%s",
                 getenv("PGFAN_TEST_CONNINFO"), d->name);
        char *has = pgt_value(
            admin, "SELECT count(*) FROM pg_database WHERE datname = '%s'", d->name);
        int exists = strcmp(has, "0") != 0;
        free(has);
        if (!exists)
            pgt_exec(admin, "CREATE DATABASE %s %s", d->name, d->create);
        /* every time: a database kept from an earlier run gets new settings */
        for (int k = 0; d->settings[k]; k++)
            pgt_exec(admin, "ALTER DATABASE %s SET %s", d->name, d->settings[k]);
        if (exists)
            continue;
        PGconn *c = fixed_session(i);
        pgt_exec(c, "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')");
        pgt_exec(c, "CREATE TYPE pair AS (a int, b text)");
        pgt_exec(c, "CREATE DOMAIN posint AS int CHECK (VALUE > 0)");
        PQfinish(c);
    }
    PQfinish(admin);
}

#define ZOO_COLUMNS                                                                      \
    "id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz, iv interval, tm time, " \
    "ttz timetz, f4 float4, f8 float8, n numeric, m money, b bytea, tx text, "           \
    "vc varchar(40), ia int[], ta text[], e mood, c pair, dm posint, j jsonb, "          \
    "rc regclass, rt regtype"

/* Every column but those that can never travel in binary. */
#define ZOO_BINARY_COLUMNS "id,d,ts,tstz,iv,tm,ttz,f4,f8,n,b,tx,vc,ia,ta,e,c,dm,j"

/* Edge values of every type; text uses only what LATIN1 can hold. */
static const char *const zoo_rows =
    "(1, '2001-02-08', '2001-02-08 04:05:06.789', '2001-02-08 04:05:06.789+05:30', "
    " '-1 days -02:03:04', '23:59:59.999999', '12:00:00-08:30', '3.4028235e38', "
    " '0.30000000000000004', '123456789012345678901234567890.123456789', '12345.67', "
    " '\\x00ff5c27', E'café tab\\there\\nnl \\\\ \"q\" ''s'' ,c', "
    " 'ßü', '{1,NULL,3}', '{\"a,b\",\"c\\\"d\",NULL,\"NULL\"}', 'happy', "
    " '(1,\"x,y\")', 5, '{\"a\": [1, 2.5, \"é\"]}', '%s', 'mood'), "
    "(2, '0044-03-15 BC', 'infinity', '-infinity', '1 year 2 mons -3 days 04:05:06.789', "
    " '00:00', '00:00+00', '1.4e-45', '5e-324', 'NaN', '-0.01', '\\x', '\\.', '\\N', "
    " '{}', '{}', 'sad', '(,)', 1, 'null', 'pg_class', 'int4'), "
    "(3, 'infinity', '1999-12-31 23:59:59', '1999-12-31 23:59:59-08', '-178000000 "
    "years', "
    " '12:34:56', '12:34:56+14', '-0', '-0', '1e-20', '0', '\\x0102', '', '', "
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), "
    "(4, '2001-12-01', '2001-02-03 00:00:00', NULL, '@ 1 minute ago', NULL, NULL, 'NaN', "
    " 'Infinity', '-Infinity', '-92233720368547758.08', NULL, NULL, NULL, NULL, NULL, "
    " 'ok', NULL, NULL, '[]', NULL, NULL), "
    "(5, '2001-01-12', NULL, NULL, '-3 days +04:00', NULL, NULL, '-Infinity', "
    " '1.7976931348623157e308', 'Infinity', '92233720368547758.07', NULL, NULL, NULL, "
    " '{{1,2},{3,4}}', NULL, NULL, NULL, 2147483647, NULL, NULL, NULL), "
    "(6, '2001-02-12', '1900-01-01 00:00:00', '1900-01-01 00:00:00+00', "
    " '-1 year -2 mons +3 days -04:05:06', '24:00:00', '00:00:01-15:59', "
    "'-1.17549435e-38', "
    " '-2.2250738585072014e-308', '-0.000000000000000000000001', NULL, NULL, "
    " E'a\\rbé', NULL, NULL, '{\"\",\" \"}', NULL, '(-1,\"\")', NULL, "
    " '{\"k\": \"\\\\u0000 is not here\"}', NULL, NULL)";

/* A fresh zoo table, filled on the source and empty on every target. */
static void make_zoo(const char *table, int source, const int *targets, int ntargets)
{
    PGconn *s = fixed_session(source);
    pgt_exec(s, "CREATE TABLE %s (" ZOO_COLUMNS ")", table);
    char *rows = malloc(strlen(zoo_rows) + 128);
    sprintf(rows, zoo_rows, table);
    pgt_exec(s, "INSERT INTO %s VALUES %s", table, rows);
    free(rows);
    PQfinish(s);
    for (int k = 0; k < ntargets; k++) {
        PGconn *t = fixed_session(targets[k]);
        pgt_exec(t, "CREATE TABLE %s (" ZOO_COLUMNS ")", table);
        PQfinish(t);
    }
}

static void drop_zoo(const char *table, int source, const int *targets, int ntargets)
{
    for (int k = -1; k < ntargets; k++) {
        PGconn *c = open_db(k < 0 ? source : targets[k]);
        pgt_exec(c, "DROP TABLE IF EXISTS %s", table);
        PQfinish(c);
    }
}

/* Target `t` holds exactly the source's values: compared cell by cell, each
 * rendered by its own server in a session with fixed settings. */
static void assert_same_values(int source, int t, const char *table, const char *columns)
{
    PGconn *a = fixed_session(source), *b = fixed_session(t);
    char sql[600];
    snprintf(sql, sizeof sql, "SELECT %s FROM %s ORDER BY id", columns, table);
    PGresult *want = PQexec(a, sql), *got = PQexec(b, sql);
    ck_assert_msg(PQresultStatus(want) == PGRES_TUPLES_OK, "%s", PQerrorMessage(a));
    ck_assert_msg(PQresultStatus(got) == PGRES_TUPLES_OK, "%s", PQerrorMessage(b));
    ck_assert_int_eq(PQntuples(got), PQntuples(want));
    ck_assert_int_eq(PQnfields(got), PQnfields(want));
    ck_assert_int_gt(PQntuples(want), 0);
    for (int row = 0; row < PQntuples(want); row++)
        for (int col = 0; col < PQnfields(want); col++) {
            int null_a = PQgetisnull(want, row, col), null_b = PQgetisnull(got, row, col);
            const char *va = PQgetvalue(want, row, col), *vb = PQgetvalue(got, row, col);
            ck_assert_msg(null_a == null_b && strcmp(va, vb) == 0,
                          "%s -> %s, row %d, column %s: source has %s%s%s, target has "
                          "%s%s%s",
                          databases[source].name, databases[t].name, row + 1,
                          PQfname(want, col), null_a ? "NULL" : "'", null_a ? "" : va,
                          null_a ? "" : "'", null_b ? "NULL" : "'", null_b ? "" : vb,
                          null_b ? "" : "'");
        }
    PQclear(want);
    PQclear(got);
    PQfinish(a);
    PQfinish(b);
}

/* pgfan from `source` to `targets`, extra arguments at the end. */
static cli_run fan(int source, const int *targets, int ntargets, const char *table,
                   const char *const *extra)
{
    const char *argv[40];
    int n = 0;
    argv[n++] = "pgfan";
    argv[n++] = "--source";
    argv[n++] = conninfo[source];
    for (int k = 0; k < ntargets; k++) {
        argv[n++] = "--target";
        argv[n++] = conninfo[targets[k]];
    }
    argv[n++] = "--table";
    argv[n++] = table;
    argv[n++] = "--no-progress";
    for (int k = 0; extra && extra[k] && n < 39; k++)
        argv[n++] = extra[k];
    argv[n] = NULL;
    return run_cli_argv((char *const *)argv);
}

/* ---- the matrix: sources x formats, every target of the source ---- */

typedef struct pairing {
    int source;
    int targets[3];
    int ntargets;
} pairing;

static const pairing pairings[] = {
    {DB_UTF8_DMY, {DB_UTF8_MDY, DB_LATIN1, DB_ASCII}, 3},
    {DB_LATIN1, {DB_UTF8_MDY, DB_UTF8_DMY}, 2},
    {DB_ASCII, {DB_UTF8_MDY}, 1},
};
static const char *const formats[] = {"text", "csv", "binary", "auto"};

START_TEST(fidelity_matrix)
{
    const pairing *p = &pairings[_i / 4];
    const char *format = formats[_i % 4];
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "zoo");
    make_zoo(table, p->source, p->targets, p->ntargets);
    const char *args[] = {"--format", format, "--report", "-", NULL, NULL, NULL};
    if (strcmp(format, "binary") == 0) {
        /* money and reg* can never go binary: refused before data moves,
         * naming the column. */
        cli_run r = fan(p->source, p->targets, p->ntargets, table, args);
        ck_assert_msg(r.code == 2, "exit %d: %s", r.code, r.err);
        ck_assert_msg(strstr(r.err, "--format binary") && strstr(r.err, "\"m\"") &&
                          strstr(r.err, "money"),
                      "%s", r.err);
        cli_free(&r);
        args[4] = "--columns";
        args[5] = ZOO_BINARY_COLUMNS;
    }
    cli_run r = fan(p->source, p->targets, p->ntargets, table, args);
    ck_assert_msg(r.code == 0, "%s -> ... in %s: exit %d: %s", databases[p->source].name,
                  format, r.code, r.err);
    const char *want_format = strcmp(format, "auto") == 0 ? "text" : format;
    char fmt[40];
    snprintf(fmt, sizeof fmt, "\"format\": \"%s\"", want_format);
    ck_assert_msg(strstr(r.out, fmt), "report lacks %s:\n%s", fmt, r.out);
    if (strcmp(format, "auto") == 0)
        ck_assert_msg(strstr(r.out, "\"format_reason\": \"column \\\"m\\\": type money"),
                      "%s", r.out);
    for (int k = 0; k < p->ntargets; k++)
        assert_same_values(p->source, p->targets[k], table,
                           strcmp(format, "binary") == 0 ? ZOO_BINARY_COLUMNS : "*");
    cli_free(&r);
    drop_zoo(table, p->source, p->targets, p->ntargets);
}
END_TEST

/* A character the target database cannot hold: the server's own
 * conversion error, naming that target; nothing committed anywhere. */
START_TEST(unconvertible_characters_are_refused)
{
    static const char *const chars[] = {"\\u20ac", "\\U0001F600"}; /* euro, emoji */
    const int targets[] = {DB_UTF8_MDY, DB_LATIN1};
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "enc");
    PGconn *s = fixed_session(DB_UTF8_DMY);
    pgt_exec(s, "CREATE TABLE %s (id int, t text)", table);
    pgt_exec(s, "INSERT INTO %s SELECT g, 'plain ' || g FROM generate_series(1, 1000) g",
             table);
    pgt_exec(s, "INSERT INTO %s VALUES (1001, E'price 5%s')", table, chars[_i]);
    PQfinish(s);
    for (int k = 0; k < 2; k++) {
        PGconn *t = open_db(targets[k]);
        pgt_exec(t, "CREATE TABLE %s (id int, t text)", table);
        PQfinish(t);
    }
    const char *args[] = {"--format", _i ? "binary" : "text", NULL};
    cli_run r = fan(DB_UTF8_DMY, targets, 2, table, args);
    ck_assert_msg(r.code == 1, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "target 2 (") && strstr(r.err, "SQLSTATE 22P05") &&
                      strstr(r.err, "LATIN1"),
                  "%s", r.err);
    for (int k = 0; k < 2; k++) {
        PGconn *t = open_db(targets[k]);
        char *n = pgt_value(t, "SELECT count(*) FROM %s", table);
        ck_assert_msg(strcmp(n, "0") == 0, "%s holds %s rows", databases[targets[k]].name,
                      n);
        free(n);
        PQfinish(t);
    }
    cli_free(&r);
    drop_zoo(table, DB_UTF8_DMY, targets, 2);
}
END_TEST

/* Same names, other structures: a composite whose attribute differs, a
 * domain over int against one over bigint.  auto says which column keeps
 * it in text and copies faithfully; an explicit binary is refused. */
START_TEST(structurally_different_types_never_go_binary)
{
    const int targets[] = {DB_UTF8_MDY};
    static const char *const cases[][3] = {
        {"CREATE TYPE %s_t AS (a int, b text)", "CREATE TYPE %s_t AS (a bigint, b text)",
         "'(1,x)'"},
        {"CREATE DOMAIN %s_t AS int", "CREATE DOMAIN %s_t AS bigint", "42"},
        {"CREATE TYPE %s_t AS (a int, b text)", "CREATE TYPE %s_t AS (a int, b varchar)",
         "'(2,y)'"},
    };
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "shape");
    PGconn *s = fixed_session(DB_UTF8_DMY), *t = fixed_session(DB_UTF8_MDY);
    pgt_exec(s, cases[_i][0], table);
    pgt_exec(t, cases[_i][1], table);
    pgt_exec(s, "CREATE TABLE %s (id int, v %s_t)", table, table);
    pgt_exec(t, "CREATE TABLE %s (id int, v %s_t)", table, table);
    pgt_exec(s, "INSERT INTO %s VALUES (1, %s), (2, NULL)", table, cases[_i][2]);
    const char *auto_args[] = {"--report", "-", NULL};
    cli_run r = fan(DB_UTF8_DMY, targets, 1, table, auto_args);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.out, "\"format\": \"text\"") &&
                      strstr(r.out, "\"format_reason\": \"column \\\"v\\\""),
                  "%s", r.out);
    ck_assert_msg(strstr(r.err, "copies as text: column \"v\""), "%s", r.err);
    cli_free(&r);
    assert_same_values(DB_UTF8_DMY, DB_UTF8_MDY, table, "*");
    const char *binary_args[] = {"--format", "binary", "--truncate", NULL};
    r = fan(DB_UTF8_DMY, targets, 1, table, binary_args);
    ck_assert_msg(r.code == 2, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "column \"v\""), "%s", r.err);
    cli_free(&r);
    pgt_exec(s, "DROP TABLE %s; DROP TYPE %s_t", table, table);
    pgt_exec(t, "DROP TABLE %s; DROP TYPE %s_t", table, table);
    PQfinish(s);
    PQfinish(t);
}
END_TEST

/* A table with equal types everywhere goes binary, user-defined enums and
 * composites included, when their OIDs can travel. */
START_TEST(equal_types_go_binary)
{
    const int targets[] = {DB_UTF8_MDY};
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "same");
    PGconn *s = fixed_session(DB_UTF8_DMY), *t = fixed_session(DB_UTF8_MDY);
    const char *cols =
        "id int, e mood, c pair, dm posint, r int4range, a text[], j jsonb";
    pgt_exec(s, "CREATE TABLE %s (%s)", table, cols);
    pgt_exec(t, "CREATE TABLE %s (%s)", table, cols);
    pgt_exec(s,
             "INSERT INTO %s VALUES (1, 'ok', '(1,a)', 3, '[1,5)', '{x,NULL}', '{}'), "
             "(2, NULL, NULL, NULL, 'empty', '{}', NULL)",
             table);
    const char *args[] = {"--report", "-", NULL};
    cli_run r = fan(DB_UTF8_DMY, targets, 1, table, args);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.out, "\"format\": \"binary\"") &&
                      strstr(r.out, "\"format_reason\": null"),
                  "%s", r.out);
    cli_free(&r);
    assert_same_values(DB_UTF8_DMY, DB_UTF8_MDY, table, "*");
    pgt_exec(s, "DROP TABLE %s", table);
    pgt_exec(t, "DROP TABLE %s", table);
    PQfinish(s);
    PQfinish(t);
}
END_TEST

/* --table names the source's table; every target loads the table of the
 * same schema-qualified name, whatever its search_path says. */
START_TEST(the_same_table_whatever_the_search_path)
{
    const int targets[] = {DB_UTF8_MDY};
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "sp");
    PGconn *s = fixed_session(DB_UTF8_DMY), *t = fixed_session(DB_UTF8_MDY);
    pgt_exec(s, "CREATE TABLE public.%s AS SELECT g AS id FROM generate_series(1, 50) g",
             table);
    pgt_exec(t, "CREATE SCHEMA IF NOT EXISTS other");
    pgt_exec(t, "CREATE TABLE public.%s (id int)", table);
    pgt_exec(t, "CREATE TABLE other.%s (id int)", table);
    PGconn *admin = pgt_connect();
    pgt_exec(admin, "ALTER DATABASE %s SET search_path = other, public",
             databases[DB_UTF8_MDY].name);
    const char *args[] = {"--report", "-", NULL};
    cli_run r = fan(DB_UTF8_DMY, targets, 1, table, args);
    pgt_exec(admin, "ALTER DATABASE %s RESET search_path", databases[DB_UTF8_MDY].name);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    char want[120];
    snprintf(want, sizeof want, "\"table\": \"public.%s\"", table);
    ck_assert_msg(strstr(r.out, want), "%s", r.out);
    char *n = pgt_value(t,
                        "SELECT (SELECT count(*) FROM public.%s) || '/' || "
                        "(SELECT count(*) FROM other.%s)",
                        table, table);
    ck_assert_str_eq(n, "50/0");
    free(n);
    cli_free(&r);
    /* An unqualified --into is taken in the source table's schema. */
    const char *into[] = {"--into", table, "--truncate", NULL};
    pgt_exec(admin, "ALTER DATABASE %s SET search_path = other, public",
             databases[DB_UTF8_MDY].name);
    r = fan(DB_UTF8_DMY, targets, 1, table, into);
    pgt_exec(admin, "ALTER DATABASE %s RESET search_path", databases[DB_UTF8_MDY].name);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    n = pgt_value(t,
                  "SELECT (SELECT count(*) FROM public.%s) || '/' || "
                  "(SELECT count(*) FROM other.%s)",
                  table, table);
    ck_assert_str_eq(n, "50/0");
    free(n);
    cli_free(&r);
    pgt_exec(s, "DROP TABLE public.%s", table);
    pgt_exec(t, "DROP TABLE public.%s, other.%s", table, table);
    PQfinish(admin);
    PQfinish(s);
    PQfinish(t);
}
END_TEST

/* A partitioned source gives all its rows; --truncate empties what the
 * copy refills: the whole partitioned target (no FREEZE there), only the
 * parent of an inheritance tree. */
START_TEST(partitioned_and_inheritance_tables_with_truncate)
{
    const int targets[] = {DB_UTF8_MDY, DB_LATIN1};
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "part");
    PGconn *s = fixed_session(DB_UTF8_DMY), *p = fixed_session(DB_UTF8_MDY),
           *h = fixed_session(DB_LATIN1);
    const char *parted =
        "CREATE TABLE %s (id int, k text) PARTITION BY RANGE (id); "
        "CREATE TABLE %s_lo PARTITION OF %s FOR VALUES FROM (0) TO (100); "
        "CREATE TABLE %s_def PARTITION OF %s DEFAULT";
    pgt_exec(s, parted, table, table, table, table, table);
    pgt_exec(p, parted, table, table, table, table, table);
    pgt_exec(s, "INSERT INTO %s SELECT g, 'k' || g FROM generate_series(1, 300) g",
             table);
    pgt_exec(p, "INSERT INTO %s SELECT g, 'old' FROM generate_series(1, 500, 7) g",
             table);
    pgt_exec(h,
             "CREATE TABLE %s (id int, k text); CREATE TABLE %s_child () INHERITS (%s)",
             table, table, table);
    pgt_exec(h, "INSERT INTO %s VALUES (-1, 'parent''s own, replaced')", table);
    pgt_exec(h, "INSERT INTO %s_child VALUES (-2, 'child, kept')", table);
    const char *args[] = {"--truncate", NULL};
    cli_run r = fan(DB_UTF8_DMY, targets, 2, table, args);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    assert_same_values(DB_UTF8_DMY, DB_UTF8_MDY, table, "*");
    char *n = pgt_value(p,
                        "SELECT (SELECT count(*) FROM %s_lo) || '/' || (SELECT "
                        "count(*) FROM %s_def)",
                        table, table);
    ck_assert_str_eq(n, "99/201"); /* routed into the partitions */
    free(n);
    n = pgt_value(h,
                  "SELECT (SELECT count(*) FROM ONLY %s) || '/' || "
                  "(SELECT string_agg(k, ',') FROM %s_child)",
                  table, table);
    ck_assert_str_eq(n, "300/child, kept");
    free(n);
    cli_free(&r);
    pgt_exec(s, "DROP TABLE %s", table);
    pgt_exec(p, "DROP TABLE %s", table);
    pgt_exec(h, "DROP TABLE %s CASCADE", table);
    PQfinish(s);
    PQfinish(p);
    PQfinish(h);
}
END_TEST

/* serial and identity columns: each target's sequence ends where the
 * source's is, so the next insert there does not collide. */
START_TEST(sequences_end_at_the_source_value)
{
    const int targets[] = {DB_UTF8_MDY, DB_LATIN1};
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "seq");
    const char *shape = "CREATE TABLE %s (id serial PRIMARY KEY, "
                        "n bigint GENERATED ALWAYS AS IDENTITY, v text)";
    PGconn *c[3] = {fixed_session(DB_UTF8_DMY), fixed_session(DB_UTF8_MDY),
                    fixed_session(DB_LATIN1)};
    for (int k = 0; k < 3; k++)
        pgt_exec(c[k], shape, table);
    pgt_exec(c[0], "INSERT INTO %s (v) SELECT 'v' || g FROM generate_series(1, 700) g",
             table);
    pgt_exec(c[0], "DELETE FROM %s WHERE id > 650", table); /* the sequence stays ahead */
    const char *none[] = {"--no-sequences", NULL};
    cli_run r = fan(DB_UTF8_DMY, targets, 2, table, _i ? none : NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    cli_free(&r);
    for (int k = 1; k < 3; k++) {
        char *got =
            pgt_value(c[k],
                      "SELECT nextval(pg_get_serial_sequence('%s', 'id')) || '/' || "
                      "nextval(pg_get_serial_sequence('%s', 'n'))",
                      table, table);
        ck_assert_str_eq(got, _i ? "1/1" : "701/701");
        free(got);
    }
    for (int k = 0; k < 3; k++) {
        pgt_exec(c[k], "DROP TABLE %s", table);
        PQfinish(c[k]);
    }
}
END_TEST

/* Generated columns are left to each target, with a note saying so;
 * --columns takes names as SQL writes them. */
START_TEST(generated_columns_and_quoted_column_names)
{
    const int targets[] = {DB_UTF8_MDY};
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "gen");
    const char *shape = "CREATE TABLE %s (id int, \"select\" text, \"Mixed Case\" int, "
                        "\"a,b\" int, twice int GENERATED ALWAYS AS (id * 2) STORED)";
    PGconn *s = fixed_session(DB_UTF8_DMY), *t = fixed_session(DB_UTF8_MDY);
    pgt_exec(s, shape, table);
    pgt_exec(t, shape, table);
    pgt_exec(
        s,
        "INSERT INTO %s SELECT g, 's' || g, g + 1, g + 2 FROM generate_series(1, 20) g",
        table);
    cli_run r = fan(DB_UTF8_DMY, targets, 1, table, NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.err, "generated columns") && strstr(r.err, "\"twice\""), "%s",
                  r.err);
    cli_free(&r);
    assert_same_values(DB_UTF8_DMY, DB_UTF8_MDY, table, "*");
    const char *cols[] = {"--truncate", "--columns", "id, \"select\",\"Mixed Case\"",
                          NULL};
    r = fan(DB_UTF8_DMY, targets, 1, table, cols);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    cli_free(&r);
    char *n = pgt_value(t,
                        "SELECT count(*) || '/' || count(\"a,b\") || '/' || sum(twice) "
                        "|| '/' || sum(\"Mixed Case\") FROM %s",
                        table);
    ck_assert_str_eq(n, "20/0/420/230");
    free(n);
    const char *gen[] = {"--columns", "id,twice", NULL};
    r = fan(DB_UTF8_DMY, targets, 1, table, gen);
    ck_assert_msg(r.code == 2 && strstr(r.err, "\"twice\"") &&
                      strstr(r.err, "generated column"),
                  "exit %d: %s", r.code, r.err);
    cli_free(&r);
    pgt_exec(s, "DROP TABLE %s", table);
    pgt_exec(t, "DROP TABLE %s", table);
    PQfinish(s);
    PQfinish(t);
}
END_TEST

/* --query maps result columns to target columns by name, and says how to
 * fix a name that does not match. */
START_TEST(query_columns_are_matched_by_name)
{
    char table[64];
    setup_databases();
    pgt_name(table, sizeof table, "q");
    PGconn *t = fixed_session(DB_UTF8_MDY);
    pgt_exec(t, "CREATE TABLE %s (id int, label text)", table);
    cli_run r = run_cli("--source", conninfo[DB_UTF8_DMY], "--target",
                        conninfo[DB_UTF8_MDY], "--query",
                        "SELECT g AS id, 'x' || g AS name FROM generate_series(1, 9) g",
                        "--into", table, NULL);
    ck_assert_msg(r.code == 2 && strstr(r.err, "no column \"name\"") &&
                      strstr(r.err, "alias"),
                  "exit %d: %s", r.code, r.err);
    cli_free(&r);
    r = run_cli("--source", conninfo[DB_UTF8_DMY], "--target", conninfo[DB_UTF8_MDY],
                "--query", "SELECT 'x' || g, g FROM generate_series(1, 9) g", "--into",
                table, "--columns", "label,id", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    cli_free(&r);
    char *n = pgt_value(t, "SELECT sum(id) || '/' || max(label) FROM %s", table);
    ck_assert_str_eq(n, "45/x9");
    free(n);
    pgt_exec(t, "DROP TABLE %s", table);
    PQfinish(t);
}
END_TEST

/*
 * As with pg_dump, row-level security never hides rows silently: a source
 * role whose policy shows it half of a table (not its owner, no BYPASSRLS)
 * gets the server's refusal (42501, exit 2, named in the report, nothing
 * loaded) instead of a copy of that half; --enable-row-security asks for
 * exactly the rows the policy shows.
 */
START_TEST(rows_hidden_by_row_security_are_never_copied_silently)
{
    char table[64], reader[1400];
    setup_databases();
    pgt_name(table, sizeof table, "rls");
    PGconn *s = fixed_session(DB_UTF8_DMY), *t = fixed_session(DB_UTF8_MDY);
    pgt_exec(s, "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                "'pgfan_rls_reader') THEN CREATE ROLE pgfan_rls_reader LOGIN PASSWORD "
                "'pgfan'; END IF; END $$");
    pgt_exec(s, "CREATE TABLE %s (id int, shown bool)", table);
    pgt_exec(s, "INSERT INTO %s SELECT g, g %% 2 = 0 FROM generate_series(1, 100) g",
             table);
    pgt_exec(s, "ALTER TABLE %s ENABLE ROW LEVEL SECURITY", table);
    pgt_exec(s, "CREATE POLICY shown ON %s FOR SELECT USING (shown)", table);
    pgt_exec(s, "GRANT SELECT ON %s TO pgfan_rls_reader", table);
    pgt_exec(t, "CREATE TABLE %s (id int, shown bool)", table);
    snprintf(reader, sizeof reader, "%.1199s user=pgfan_rls_reader password=pgfan",
             conninfo[DB_UTF8_DMY]);
    cli_run r = run_cli("--source", reader, "--target", conninfo[DB_UTF8_MDY], "--table",
                        table, "--no-progress", "--report", "-", NULL);
    ck_assert_msg(r.code == 2 && strstr(r.err, "row-level security") &&
                      strstr(r.err, "(SQLSTATE 42501)"),
                  "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.out, "\"source\": {\"sqlstate\": \"42501\""), "%s", r.out);
    cli_free(&r);
    char *n = pgt_value(t, "SELECT count(*) FROM %s", table);
    ck_assert_str_eq(n, "0");
    free(n);
    r = run_cli("--source", reader, "--target", conninfo[DB_UTF8_MDY], "--table", table,
                "--no-progress", "--enable-row-security", NULL);
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    cli_free(&r);
    n = pgt_value(
        t, "SELECT count(*) || '/' || sum(id) || '/' || bool_and(shown) FROM %s", table);
    ck_assert_str_eq(n, "50/2550/true"); /* every even id, once */
    free(n);
    pgt_exec(t, "DROP TABLE %s", table);
    pgt_exec(s, "DROP TABLE %s", table);
    pgt_exec(s, "DROP OWNED BY pgfan_rls_reader"); /* and what a failed run left */
    pgt_exec(s, "DROP ROLE pgfan_rls_reader");
    PQfinish(t);
    PQfinish(s);
}
END_TEST

Suite *fidelity_suite(void)
{
    Suite *s = suite_create("fidelity");
    TCase *tc = tcase_create("fidelity");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, fidelity_matrix, 0, 12);
    tcase_add_loop_test(tc, unconvertible_characters_are_refused, 0, 2);
    tcase_add_loop_test(tc, structurally_different_types_never_go_binary, 0, 3);
    tcase_add_test(tc, equal_types_go_binary);
    tcase_add_test(tc, the_same_table_whatever_the_search_path);
    tcase_add_test(tc, partitioned_and_inheritance_tables_with_truncate);
    tcase_add_loop_test(tc, sequences_end_at_the_source_value, 0, 2);
    tcase_add_test(tc, generated_columns_and_quoted_column_names);
    tcase_add_test(tc, query_columns_are_matched_by_name);
    tcase_add_test(tc, rows_hidden_by_row_security_are_never_copied_silently);
    suite_add_tcase(s, tc);
    return s;
}

#include "pgtest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

PGconn *pgt_connect(void)
{
    const char *ci = getenv("PGFAN_TEST_CONNINFO");
    if (!ci || !*ci)
        ck_abort_msg("PGFAN_TEST_CONNINFO is not set: integration tests need a server "
                     "(run them with 'make check' or './dev test')");
    PGconn *c = PQconnectdb(ci);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "cannot connect to the test server: %s",
                  PQerrorMessage(c));
    PGresult *r = PQexec(c, "SET client_min_messages = warning");
    PQclear(r);
    return c;
}

static char *format_sql(const char *fmt, va_list ap)
{
    va_list aq;
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    char *sql = malloc((size_t)n + 1);
    vsnprintf(sql, (size_t)n + 1, fmt, ap);
    return sql;
}

void pgt_exec(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = format_sql(fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s failed: %s", sql,
                  PQerrorMessage(c));
    PQclear(r);
    free(sql);
}

char *pgt_value(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = format_sql(fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0,
                  "%s failed: %s", sql, PQerrorMessage(c));
    char *v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    free(sql);
    return v;
}

char *pgt_checksum(PGconn *c, const char *table)
{
    return pgt_value(
        c,
        "SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::bigint), 0) "
        "FROM %s t",
        table);
}

void pgt_assert_usable(PGconn *c)
{
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    ck_assert_int_eq(PQtransactionStatus(c), PQTRANS_IDLE);
    ck_assert_int_eq(PQisnonblocking(c), 0);
    char *one = pgt_value(c, "SELECT 1");
    ck_assert_str_eq(one, "1");
    free(one);
}

void pgt_name(char *buf, size_t len, const char *prefix)
{
    static int n;
    snprintf(buf, len, "%s_%d_%d", prefix, (int)getpid(), ++n);
}

void pgt_mixed_table(PGconn *c, const char *name, long rows)
{
    pgt_exec(c,
             "CREATE TABLE %s (id int8, name text, ts timestamptz, amount numeric(12,2), "
             "flag bool, blob bytea)",
             name);
    pgt_exec(
        c,
        "INSERT INTO %s SELECT g, "
        "  CASE WHEN g %% 11 = 0 THEN NULL "
        "       WHEN g %% 5 = 0 THEN E'tab\\there\\nnew \\\\ back \"q\" ''s'' ü€' || g "
        "       ELSE md5(g::text) END, "
        "  timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', "
        "  CASE WHEN g %% 7 = 0 THEN NULL ELSE g * 1.25 END, "
        "  CASE WHEN g %% 13 = 0 THEN NULL ELSE g %% 2 = 0 END, "
        "  CASE WHEN g %% 3 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END "
        "FROM generate_series(1, %ld) g",
        name, rows);
}

void pgt_empty_copy(PGconn *c, const char *name, const char *like)
{
    pgt_exec(c, "CREATE TABLE %s (LIKE %s)", name, like);
}

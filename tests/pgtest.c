#include "pgtest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static PGconn *connect_to(const char *ci);

PGconn *pgt_connect(void)
{
    return connect_to(getenv("PGFAN_TEST_CONNINFO"));
}

PGconn *pgt_connect_b(void)
{
    const char *b = getenv("PGFAN_TEST_CONNINFO_B");
    return connect_to(b && *b ? b : getenv("PGFAN_TEST_CONNINFO"));
}

static PGconn *connect_to(const char *ci)
{
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

void pgt_assert_no_copy_running(PGconn *admin)
{
    char *n =
        pgt_value(admin, "SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' "
                         "AND query ILIKE 'copy%%' AND pid <> pg_backend_pid()");
    ck_assert_msg(strcmp(n, "0") == 0, "%s COPY statements still running", n);
    free(n);
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

void pgt_sync_database(PGconn *admin, const char *name)
{
    char *has =
        pgt_value(admin, "SELECT count(*) FROM pg_database WHERE datname = '%s'", name);
    if (strcmp(has, "0") == 0)
        pgt_exec(admin, "CREATE DATABASE %s", name);
    free(has);
    pgt_exec(admin, "ALTER DATABASE %s SET synchronous_commit = on", name);
}

void pgt_missing_standby(PGconn *admin, int on)
{
    pgt_exec(admin, on ? "ALTER SYSTEM SET synchronous_standby_names = 'pgfan_nobody'"
                       : "ALTER SYSTEM RESET synchronous_standby_names");
    pgt_exec(admin, "SELECT pg_reload_conf()");
}

void pgt_empty_copy(PGconn *c, const char *name, const char *like)
{
    pgt_exec(c, "CREATE TABLE %s (LIKE %s)", name, like);
}

#define MAX_TARGETS 8

/* Opens a source connection and `n` target connections, each with an empty
 * table shaped like `source_table`. */
void fanout_open(fanout *f, const char *source_table, size_t n, const char *format)
{
    memset(f, 0, sizeof *f);
    f->source = pgt_connect();
    f->n = n;
    for (size_t i = 0; i < n; i++) {
        f->targets[i] = pgt_connect();
        pgt_name(f->tables[i], sizeof f->tables[i], "dst");
        pgt_empty_copy(f->targets[i], f->tables[i], source_table);
        snprintf(f->copy_in[i], sizeof f->copy_in[i], "COPY %s FROM STDIN (FORMAT %s)",
                 f->tables[i], format);
        f->copy_in_ptr[i] = f->copy_in[i];
    }
}

void fanout_close(fanout *f)
{
    PGconn *admin = pgt_connect();
    for (size_t i = 0; i < f->n; i++) {
        PQfinish(f->targets[i]);
        pgt_exec(admin, "DROP TABLE IF EXISTS %s", f->tables[i]);
    }
    PQfinish(f->source);
    PQfinish(admin);
}

/* Every target equals the source, every connection is usable. */
void assert_copies_equal(fanout *f, const char *source_table)
{
    char *want = pgt_checksum(f->source, source_table);
    for (size_t i = 0; i < f->n; i++) {
        char *got = pgt_checksum(f->targets[i], f->tables[i]);
        ck_assert_msg(strcmp(got, want) == 0, "target %zu holds %s, source %s", i, got,
                      want);
        free(got);
        pgt_assert_usable(f->targets[i]);
    }
    pgt_assert_usable(f->source);
    free(want);
}

void assert_targets_empty(fanout *f)
{
    for (size_t i = 0; i < f->n; i++) {
        char *got = pgt_value(f->targets[i], "SELECT count(*) FROM %s", f->tables[i]);
        ck_assert_str_eq(got, "0");
        free(got);
        pgt_assert_usable(f->targets[i]);
    }
    pgt_assert_usable(f->source);
}

void pgt_buffer_add(pgt_buffer *b, const char *d, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->data = realloc(b->data, b->cap);
        ck_assert_ptr_nonnull(b->data);
    }
    memcpy(b->data + b->len, d, n);
    b->len += n;
}

int pgt_buffer_chunk(void *arg, const char *d, size_t n)
{
    pgt_buffer_add(arg, d, n);
    return 0;
}

pgt_buffer pgt_direct_copy(PGconn *c, const char *sql)
{
    pgt_buffer b = {0};
    PGresult *r = PQexec(c, sql);
    ck_assert_int_eq(PQresultStatus(r), PGRES_COPY_OUT);
    PQclear(r);
    char *row;
    int n;
    while ((n = PQgetCopyData(c, &row, 0)) > 0) {
        pgt_buffer_add(&b, row, (size_t)n);
        PQfreemem(row);
    }
    r = PQgetResult(c);
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    return b;
}

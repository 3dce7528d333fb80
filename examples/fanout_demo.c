/*
 * fanout_demo: copy one table from a source database into the same table in
 * several target databases with libpgfan, then verify every target.
 *
 *   fanout_demo TABLE SOURCE_CONNINFO TARGET_CONNINFO [TARGET_CONNINFO ...]
 *
 * Each target is loaded in its own transaction; the table must exist there.
 * Prints rows, bytes, MB/s and seconds per target, then checks that each
 * target's row count and content checksum equal the source's.
 */
#include <pgfan.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TARGETS 16

static PGconn *connect_or_die(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "fanout_demo: cannot connect: %s", PQerrorMessage(c));
        exit(2);
    }
    return c;
}

/* count(*) and an order-independent checksum of every row's text. */
static int checksum(PGconn *c, const char *table, char *out, size_t len)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::bigint), 0) "
             "FROM %s t",
             table);
    PGresult *res = PQexec(c, sql);
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (ok)
        snprintf(out, len, "%s", PQgetvalue(res, 0, 0));
    else
        fprintf(stderr, "fanout_demo: checksum failed: %s", PQerrorMessage(c));
    PQclear(res);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc - 3 > MAX_TARGETS) {
        fprintf(stderr, "usage: fanout_demo TABLE SOURCE TARGET [TARGET ...]\n");
        return 2;
    }
    const char *table = argv[1];
    size_t n = (size_t)argc - 3;
    PGconn *source = connect_or_die(argv[2]);
    PGconn *targets[MAX_TARGETS];
    const char *copy_in[MAX_TARGETS];
    char copy_out[256], copy_in_sql[256];
    snprintf(copy_out, sizeof copy_out, "COPY %s TO STDOUT (FORMAT binary)", table);
    snprintf(copy_in_sql, sizeof copy_in_sql, "COPY %s FROM STDIN (FORMAT binary)",
             table);
    for (size_t i = 0; i < n; i++) {
        targets[i] = connect_or_die(argv[3 + i]);
        copy_in[i] = copy_in_sql;
    }

    pgfan_transfer_result result;
    pgfan_receiver_result per[MAX_TARGETS];
    int rc = pgfan_transfer(source, copy_out, n, targets, copy_in, NULL, &result, per);
    printf("source: %llu rows, %.1f MB read once in %.2f s\n",
           (unsigned long long)result.rows, result.bytes / 1e6, result.seconds);
    for (size_t i = 0; i < n; i++)
        printf("target %zu (%s): %s, %llu rows, %.1f MB, %.1f MB/s, %.2f s\n", i + 1,
               per[i].label, pgfan_receiver_state_name(per[i].state),
               (unsigned long long)per[i].rows, per[i].bytes / 1e6,
               per[i].seconds > 0 ? per[i].bytes / 1e6 / per[i].seconds : 0.0,
               per[i].seconds);
    if (rc != PGFAN_OK) {
        fprintf(stderr, "fanout_demo: transfer failed: %s: %s%s%s\n", pgfan_strerror(rc),
                result.error.message, result.error.sqlstate[0] ? " SQLSTATE " : "",
                result.error.sqlstate);
        return 1;
    }

    char want[128], got[128];
    int bad = checksum(source, table, want, sizeof want) != 0;
    for (size_t i = 0; i < n && !bad; i++) {
        bad |= checksum(targets[i], table, got, sizeof got) != 0;
        int same = !bad && strcmp(want, got) == 0;
        printf("verify target %zu: rows:checksum %s %s source %s\n", i + 1, got,
               same ? "==" : "!=", want);
        bad |= !same;
    }
    for (size_t i = 0; i < n; i++)
        PQfinish(targets[i]);
    PQfinish(source);
    if (bad) {
        fprintf(stderr, "fanout_demo: verification FAILED\n");
        return 1;
    }
    printf("verified: every target equals the source\n");
    return 0;
}

/* Helpers for integration tests against a real PostgreSQL server. */
#ifndef PGFAN_PGTEST_H
#define PGFAN_PGTEST_H

#include <check.h>
#include <libpq-fe.h>

/* Connects to $PGFAN_TEST_CONNINFO; a missing server fails the test. */
PGconn *pgt_connect(void);
/* Connects to server B ($PGFAN_TEST_CONNINFO_B, else the same server). */
PGconn *pgt_connect_b(void);
/* Runs SQL (printf-style) and fails the test unless it succeeds. */
void pgt_exec(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* First column of the first row, as a malloc'd string. */
char *pgt_value(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "count:checksum" of a table, independent of row order. */
char *pgt_checksum(PGconn *c, const char *table);
/* The connection is idle, outside a transaction, and answers SELECT 1. */
void pgt_assert_usable(PGconn *c);
/* No COPY statement of another session is running on the server of `admin`. */
void pgt_assert_no_copy_running(PGconn *admin);
/* A table name unique to this test process: prefix_<pid>_<n>. */
void pgt_name(char *buf, size_t len, const char *prefix);
/* A source table of `rows` mixed-type rows (int8, text, timestamptz,
 * numeric, bool, bytea; NULLs and special characters included). */
void pgt_mixed_table(PGconn *c, const char *name, long rows);
/* An empty table with the same columns as `like`. */
void pgt_empty_copy(PGconn *c, const char *name, const char *like);
/* Database `name` (created if missing) whose sessions commit synchronously:
 * while pgt_missing_standby(admin, 1) is in force, every COMMIT there
 * commits locally and then waits for a standby that never comes. */
void pgt_sync_database(PGconn *admin, const char *name);
void pgt_missing_standby(PGconn *admin, int on);

/* A growing byte buffer, e.g. what a call receiver was given. */
typedef struct pgt_buffer {
    char *data;
    size_t len, cap;
} pgt_buffer;

void pgt_buffer_add(pgt_buffer *b, const char *d, size_t n);
/* A pgfan_call_fn appending every chunk to the pgt_buffer in `arg`. */
int pgt_buffer_chunk(void *arg, const char *d, size_t n);
/* What plain libpq reads for a COPY ... TO STDOUT on `c`. */
pgt_buffer pgt_direct_copy(PGconn *c, const char *sql);

#define MAX_TARGETS 8

/* A source connection and up to MAX_TARGETS target connections, each target
 * with its own empty table shaped like the source table. */
typedef struct fanout {
    PGconn *source;
    PGconn *targets[MAX_TARGETS];
    char tables[MAX_TARGETS][64];
    char copy_in[MAX_TARGETS][160];
    const char *copy_in_ptr[MAX_TARGETS];
    size_t n;
} fanout;

void fanout_open(fanout *f, const char *source_table, size_t n, const char *format);
/* Drops the target tables and closes every connection. */
void fanout_close(fanout *f);
/* Every target equals the source, every connection is usable. */
void assert_copies_equal(fanout *f, const char *source_table);
/* Every target table is empty, every connection is usable. */
void assert_targets_empty(fanout *f);

#endif

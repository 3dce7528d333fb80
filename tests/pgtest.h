/* Helpers for integration tests against a real PostgreSQL server. */
#ifndef PGFAN_PGTEST_H
#define PGFAN_PGTEST_H

#include <check.h>
#include <libpq-fe.h>

/* Connects to $PGFAN_TEST_CONNINFO; a missing server fails the test. */
PGconn *pgt_connect(void);
/* Runs SQL (printf-style) and fails the test unless it succeeds. */
void pgt_exec(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* First column of the first row, as a malloc'd string. */
char *pgt_value(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "count:checksum" of a table, independent of row order. */
char *pgt_checksum(PGconn *c, const char *table);
/* The connection is idle, outside a transaction, and answers SELECT 1. */
void pgt_assert_usable(PGconn *c);
/* A table name unique to this test process: prefix_<pid>_<n>. */
void pgt_name(char *buf, size_t len, const char *prefix);
/* A source table of `rows` mixed-type rows (int8, text, timestamptz,
 * numeric, bool, bytea; NULLs and special characters included). */
void pgt_mixed_table(PGconn *c, const char *name, long rows);
/* An empty table with the same columns as `like`. */
void pgt_empty_copy(PGconn *c, const char *name, const char *like);

#endif

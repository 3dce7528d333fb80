/*
 * Pre-flight of the pgfan command: everything that can be checked before a
 * byte moves (tables, columns, types), and the COPY statements to run.
 */
#ifndef PGFAN_CLI_PLAN_H
#define PGFAN_CLI_PLAN_H

#include <libpq-fe.h>
#include <pgfan.h>

#include "options.h"

#define WHO_SOURCE (-1)
#define WHO_NONE   (-2)

/* Why the command failed: which side, the server's SQLSTATE, a message. */
typedef struct cli_fail {
    int who; /* WHO_SOURCE, WHO_NONE or a target index */
    char sqlstate[6];
    char message[512];
} cli_fail;

typedef struct plan {
    char *copy_out;
    char *copy_in[MAX_TARGETS];
    char *target_table[MAX_TARGETS]; /* qualified, quoted; NULL with --copy-in */
    pgfan_format format;
    double estimated_rows; /* from the source table's statistics; < 0 unknown */
} plan;

void fail_set(cli_fail *f, int who, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Fills `f` from a failed libpq result (SQLSTATE, primary message). */
void fail_from_result(cli_fail *f, int who, const PGresult *res, PGconn *conn);

/* Returns 0, or -1 with the reason in `f`. */
int plan_copy(const cli_options *o, PGconn *source, PGconn *const targets[], plan *p,
              cli_fail *f);
void plan_free(plan *p);

#endif

/*
 * Pre-flight of the pgfan command: everything that can be checked before a
 * byte moves (tables, columns, types), and the statements to run.
 */
#ifndef PGFAN_CLI_PLAN_H
#define PGFAN_CLI_PLAN_H

#include <libpq-fe.h>
#include <pgfan.h>

#include "options.h"

#define WHO_SOURCE    (-1)
#define WHO_NONE      (-2)
#define MAX_SEQUENCES 64

/* Why the command failed: which side, the server's SQLSTATE, a message. */
typedef struct cli_fail {
    int who; /* WHO_SOURCE, WHO_NONE or a target index */
    char sqlstate[6];
    char message[512];
} cli_fail;

/* A sequence owned by a copied column (serial, identity), on every side. */
typedef struct sequence_pair {
    char *column;              /* the column's name, as stored */
    char *source;              /* schema-qualified, quoted */
    char *target[MAX_TARGETS]; /* NULL where the target column owns none */
} sequence_pair;

typedef struct plan {
    char *copy_out;
    char *copy_in[MAX_TARGETS];
    char *target_table[MAX_TARGETS];   /* qualified, quoted; NULL with --copy-in */
    char *truncate_sql[MAX_TARGETS];   /* with --truncate */
    char *copy_in_freeze[MAX_TARGETS]; /* --load-fresh: copy_in with FREEZE, for
                                          a table found empty and unreferenced;
                                          swapped with copy_in once it is */
    unsigned char frozen[MAX_TARGETS]; /* copy_in is the FREEZE one */
    pgfan_format format;
    char format_reason[640]; /* why --format auto chose text; "" otherwise */
    char notes[640];         /* e.g. generated columns left to the targets */
    double estimated_rows;   /* from the source table's statistics; < 0 unknown */
    sequence_pair sequences[MAX_SEQUENCES];
    size_t nsequences;
} plan;

/* A malloc'ed printf (NULL when out of memory). */
char *format_sql(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fail_set(cli_fail *f, int who, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Fills `f` from a failed libpq result (SQLSTATE, primary message). */
void fail_from_result(cli_fail *f, int who, const PGresult *res, PGconn *conn);

/* Returns 0, or -1 with the reason in `f`. */
int plan_copy(const cli_options *o, PGconn *source, PGconn *const targets[], plan *p,
              cli_fail *f);
void plan_free(plan *p);

#endif

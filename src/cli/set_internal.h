/*
 * The parts of a table set's run (set.h): the selection and snapshot
 * (set.c), the notes kept on the targets (set_state.c), the per-table
 * commands run K at a time (set_jobs.c), schema from pg_dump
 * (set_schema.c, set_post_data.c), verification (set_verify.c) and the report
 * (set_report.c).
 */
#ifndef PGFAN_CLI_SET_INTERNAL_H
#define PGFAN_CLI_SET_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>

#include "set.h"

/* One table on one target. */
typedef struct pair {
    char state[16]; /* "" (not loaded), "skipped" (loaded by an earlier run),
                       or the table command's outcome: "committed", ... */
    uint64_t rows, bytes;
    double seconds;
    unsigned int attempts;
    char sqlstate[6];
    char error[PGFAN_MESSAGE_MAX];
    int verified; /* -1 not checked, 0 differs, 1 same */
    char verify_note[300];
} pair;

typedef struct set_table {
    char oid[16];
    char *qualified;      /* quote_ident(schema).quote_ident(name) */
    char *display;        /* schema.name */
    char kind;            /* 'r' table, 'p' partitioned */
    double size;          /* bytes on disk: the biggest go first */
    double rows_estimate; /* from the statistics, for progress */
    pair pairs[MAX_TARGETS];
} set_table;

/* --copy-schema's two sections, and where each stands on a target. */
typedef enum schema_section { PRE_DATA, POST_DATA } schema_section;
typedef enum schema_state {
    SCHEMA_PENDING, /* not applied (yet) */
    SCHEMA_APPLIED, /* by this run */
    SCHEMA_SKIPPED, /* applied by the run being resumed */
    SCHEMA_FAILED
} schema_state;

typedef struct set_run {
    run *r;
    set_table *tables;
    size_t ntables;
    char snapshot[64];
    int consistent; /* every table came from the one snapshot */
    int resumed;
    char set_id[40];
    char source_id[256];
    char prior_snapshot[64]; /* the snapshot of the run being resumed */
    int schema_failed;
    schema_state schema[2][MAX_TARGETS]; /* [section][target] */
    unsigned int jobs;                   /* tables loaded at a time */
} set_run;

/* query_ok() (run.h) for party `who` of the set's run. */
static inline PGresult *set_query(set_run *s, PGconn **c, int who, const char *sql,
                                  int nparams, const char *const *params, cli_fail *f)
{
    return query_ok(s->r, c, sql, nparams, params, who, f);
}

/* "pgfan: <what>" on stderr unless --quiet. */
void say(set_run *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Array literals of the selected tables: "{oid,...}" and
 * "{\"qualified name\",...}". */
char *oid_array(const set_run *s);
char *name_array(const set_run *s);

/* Runs argv[0]-less `argv` from `path` with stdout to /dev/null and stderr
 * to `errlog`; returns the child's pid, or -1. */
pid_t spawn_logged(const char *path, const char *const *argv, const char *errlog);

/* set_state.c: pgfan.runs and pgfan.loaded on each target. */
int find_prior_run(set_run *s, cli_fail *f);
int prepare_targets(set_run *s, cli_fail *f);

/* set_jobs.c: loads every pending pair; returns 0, or -1 when it could not
 * start. */
int copy_set(set_run *s);

/* set_schema.c: pg_dump's pre-data or post-data section onto every target
 * that has not had it from the run being resumed; -1 when one refused it. */
int apply_schema(set_run *s, schema_section section);
extern const char *const schema_section_name[2];

/* set_post_data.c: for each target of a resumed run that lacks the
 * post-data, lists[i] names a pg_restore list of `toc` (pg_restore -l)
 * without the entries the target already has; -1 when one cannot be made. */
#define POST_DATA_LIST_MAX 320
int post_data_lists(set_run *s, const char *toc, const char *dir,
                    char lists[][POST_DATA_LIST_MAX]);
/* After the post-data, as pg_restore does: REFRESH each materialized view
 * the snapshot has populated and a target has not (pg_dump's schema leaves
 * them empty); a target where one fails has its post-data failed. */
int refresh_materialized_views(set_run *s);

/* set_verify.c: compares each committed pair with the snapshot. */
void verify_set(set_run *s);

/* set_report.c: the report, the summary; closes everything. */
int end_set(set_run *s, int code);
int pair_done(const pair *p);
/* The COPY bytes a table moved: the most any of its targets took. */
uint64_t table_bytes(const set_table *t);

#endif

/* What the pgfan command tells at the end: a summary and a JSON report. */
#ifndef PGFAN_CLI_REPORT_H
#define PGFAN_CLI_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include <pgfan.h>

typedef enum target_outcome {
    OUTCOME_PENDING = 0,
    OUTCOME_COMMITTED,
    OUTCOME_ROLLED_BACK, /* its COPY was fine, but the copy as a whole failed */
    OUTCOME_DROPPED,     /* faulted and dropped under --on-fault drop */
    OUTCOME_FAILED,      /* its own COPY or commit failed */
    OUTCOME_UNKNOWN      /* its COMMIT's answer was lost and could not be settled */
} target_outcome;

typedef struct target_report {
    char masked[1024]; /* connection string, password masked */
    char table[320];   /* schema-qualified table loaded; "" with --copy-in */
    target_outcome outcome;
    uint64_t rows, bytes;
    double seconds;
    unsigned int retries; /* reloads after its server was lost (--retries) */
    char sqlstate[6];
    char error[PGFAN_MESSAGE_MAX];
} target_report;

typedef struct run_report {
    target_report targets[64];
    size_t ntargets;
    uint64_t source_rows, bytes;
    uint64_t spill_peak_bytes; /* the spill journal's largest size */
    double seconds;
    pgfan_format format;
    char format_reason[640]; /* why --format auto chose text */
    char source_sqlstate[6]; /* the source's failure, if it failed */
    char source_error[PGFAN_MESSAGE_MAX];
} run_report;

const char *outcome_name(target_outcome o);
/* A JSON string; "" as null with json_or_null. */
void json_string(FILE *out, const char *s);
void json_or_null(FILE *out, const char *s);
double mb_per_s(uint64_t bytes, double seconds);
/* Writes the JSON report; returns 0 or -1 (errno set). */
int write_json_report(FILE *out, const run_report *r);
/* The outcome as tab-separated lines ("exit", "source", one "target" line
 * per target), for a table set's coordinator (set.c). */
int write_status_lines(FILE *out, const run_report *r, int exit_code);
/* Human summary, one line per target and a total. */
void print_summary(FILE *out, const run_report *r);

#endif

/* Command-line options of the pgfan command. */
#ifndef PGFAN_CLI_OPTIONS_H
#define PGFAN_CLI_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include <pgfan.h>

#define MAX_TARGETS  64
#define MAX_PATTERNS 256

typedef enum source_kind {
    SOURCE_NONE,
    SOURCE_TABLE,
    SOURCE_QUERY,
    SOURCE_COPY
} source_kind;
typedef enum format_choice {
    FORMAT_AUTO,
    FORMAT_TEXT,
    FORMAT_CSV,
    FORMAT_BINARY
} format_choice;

typedef struct cli_options {
    const char *source;
    const char *targets[MAX_TARGETS];
    size_t ntargets;
    source_kind kind;
    const char *table, *query, *copy_out;
    const char *into, *copy_in;
    const char *columns;
    format_choice format;
    pgfan_policy on_fault;
    int atomic, truncate;
    int no_sequences;        /* leave the targets' sequences as they are */
    int enable_row_security; /* read only the rows policies let the role see */
    int no_large_objects;    /* --all-tables although the source has some */
    unsigned int stall_timeout_ms;
    unsigned int end_timeout_ms;       /* --end-timeout; 0: none */
    uint64_t spill_limit;              /* bytes; 0: no spill journal */
    const char *spill_dir;             /* NULL: $TMPDIR or /tmp */
    uint64_t max_rate;                 /* bytes/s for every target; 0: no limit */
    uint64_t target_rate[MAX_TARGETS]; /* --max-rate N=RATE, by target */
    unsigned char target_rate_set[MAX_TARGETS];
    unsigned int ring_slots;
    size_t chunk_size;
    int progress; /* -1: when stderr is a terminal */
    const char *report;
    int quiet, show_version, show_help;
    /* Table sets (set.h). */
    const char *tables[MAX_PATTERNS]; /* every --table, patterns allowed */
    size_t ntables;
    const char *schemas[MAX_PATTERNS];
    size_t nschemas;
    const char *excludes[MAX_PATTERNS];
    size_t nexcludes;
    int all_tables, resume, not_consistent, verify, copy_schema;
    unsigned int jobs;    /* 0: chosen from the cores */
    unsigned int retries; /* reloads of a (table, target) pair that lost its server */
    const char *snapshot; /* an exported snapshot to read through */
    int set_mode;         /* more than one table, a pattern or a set option */
    /* Given by a set's coordinator to the command it runs per table. */
    const char *set_id;      /* note the commit in pgfan.loaded under this id */
    const char *status_file; /* write each target's outcome there, tab-separated */
    int load_fresh;          /* the table is the set's own (--copy-schema): FREEZE it */
} cli_options;

/*
 * Parses argv into `o`.  Returns 0, or -1 with a one-line reason in `err`
 * (a usage error).  --help and --version set their flags and succeed.
 */
/* A size such as 0, 500MB or 2GB (units of 1024).  Returns 0 or -1. */
int parse_size(const char *s, uint64_t *out);
int parse_options(int argc, char **argv, cli_options *o, char *err, size_t errlen);

/* Bytes/s target `i` (from 0) may be sent: its own --max-rate N=RATE, else
 * --max-rate RATE; 0: no limit. */
uint64_t target_max_rate(const cli_options *o, size_t i);

/* The --help text. */
extern const char cli_usage[];

#endif

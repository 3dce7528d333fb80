/* The end of a table set: its JSON report, the summary, the exit code. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "set_internal.h"

#define interrupted cli_interrupted

int pair_done(const pair *p)
{
    return strcmp(p->state, "committed") == 0 || strcmp(p->state, "skipped") == 0;
}

uint64_t table_bytes(const set_table *t)
{
    uint64_t most = 0;
    for (size_t i = 0; i < MAX_TARGETS; i++)
        if (t->pairs[i].bytes > most)
            most = t->pairs[i].bytes;
    return most;
}

static const char *state_name(const pair *p)
{
    return p->state[0] ? p->state : "not_loaded";
}

static void write_pair(FILE *out, const set_run *s, const set_table *t, size_t i,
                       int first)
{
    const pair *p = &t->pairs[i];
    fprintf(out, "%s\n    {\"table\": ", first ? "" : ",");
    json_string(out, t->display);
    fprintf(out, ", \"target\": ");
    json_string(out, s->r->report.targets[i].masked);
    fprintf(out,
            ", \"target_index\": %zu, \"state\": \"%s\", \"rows\": %llu, "
            "\"bytes\": %llu, \"seconds\": %.3f, \"attempts\": %u, \"sqlstate\": ",
            i + 1, state_name(p), (unsigned long long)p->rows,
            (unsigned long long)p->bytes, p->seconds, p->attempts);
    json_or_null(out, p->sqlstate);
    fprintf(out, ", \"error\": ");
    json_or_null(out, p->error);
    fprintf(out, ", \"verify\": %s",
            p->verified < 0 ? "null"
            : p->verified   ? "\"same\""
                            : "\"different\"");
    if (p->verified == 0) {
        fprintf(out, ", \"verify_detail\": ");
        json_string(out, p->verify_note);
    }
    fputc('}', out);
}

/* With --copy-schema: where each section stands on each target. */
static void write_schema(FILE *out, const set_run *s)
{
    static const char *const names[] = {"", "applied", "skipped", "failed"};
    fprintf(out, ",\n  \"schema\": [");
    for (size_t i = 0; i < s->r->opt.ntargets; i++) {
        fprintf(out, "%s\n    {\"target\": %zu", i ? "," : "", i + 1);
        for (int k = PRE_DATA; k <= POST_DATA; k++) {
            fprintf(out, ", \"%s\": ", k == PRE_DATA ? "pre_data" : "post_data");
            json_or_null(out, names[s->schema[k][i]]);
        }
        fputc('}', out);
    }
    fprintf(out, "\n  ]");
}

static int write_set_report(FILE *out, const set_run *s, int code, double seconds)
{
    size_t skipped = 0;
    fprintf(out, "{\n  \"set_id\": ");
    json_or_null(out, s->set_id);
    fprintf(out, ",\n  \"snapshot\": ");
    json_or_null(out, s->snapshot);
    fprintf(out,
            ",\n  \"consistent\": %s,\n  \"resumed\": %s,\n  \"exit_code\": %d,\n"
            "  \"seconds\": %.3f,\n  \"tables\": [",
            s->consistent ? "true" : "false", s->resumed ? "true" : "false", code,
            seconds);
    int first = 1;
    for (size_t t = 0; t < s->ntables; t++)
        for (size_t i = 0; i < s->r->opt.ntargets; i++) {
            write_pair(out, s, &s->tables[t], i, first);
            first = 0;
            skipped += strcmp(s->tables[t].pairs[i].state, "skipped") == 0;
        }
    fprintf(out, "\n  ],\n  \"skipped\": %zu,\n  \"schema_failed\": %s", skipped,
            s->schema_failed ? "true" : "false");
    if (s->r->opt.copy_schema)
        write_schema(out, s);
    fprintf(out, "\n}\n");
    return ferror(out) ? -1 : 0;
}

/* 0 every pair loaded; 3 some; 1 none; 4 a COMMIT unsettled; 130 when
 * interrupted before this run committed anything. */
static int set_exit_code(const set_run *s)
{
    size_t all = 0, done = 0, now = 0, unknown = 0, differ = 0;
    for (size_t t = 0; t < s->ntables; t++)
        for (size_t i = 0; i < s->r->opt.ntargets; i++) {
            const pair *p = &s->tables[t].pairs[i];
            all++;
            done += pair_done(p);
            now += strcmp(p->state, "committed") == 0;
            unknown += strcmp(p->state, "unknown") == 0;
            differ += p->verified == 0;
        }
    if (unknown)
        return EXIT_UNKNOWN;
    if (interrupted)
        return now ? EXIT_PARTIAL : EXIT_INTERRUPTED;
    if (done == all && !differ && !s->schema_failed)
        return EXIT_ALL_COMMITTED;
    return done ? EXIT_PARTIAL : EXIT_FAILED;
}

static void print_set_summary(const set_run *s, double seconds)
{
    uint64_t bytes = 0;
    for (size_t i = 0; i < s->r->opt.ntargets; i++) {
        size_t done = 0, failed = 0, skipped = 0;
        for (size_t t = 0; t < s->ntables; t++) {
            const pair *p = &s->tables[t].pairs[i];
            done += strcmp(p->state, "committed") == 0;
            skipped += strcmp(p->state, "skipped") == 0;
            failed += !pair_done(p);
        }
        fprintf(stderr,
                "target %zu: %zu tables committed, %zu skipped (loaded before), "
                "%zu not loaded  %s\n",
                i + 1, done, skipped, failed, s->r->report.targets[i].masked);
    }
    for (size_t t = 0; t < s->ntables; t++)
        bytes += table_bytes(&s->tables[t]);

    fprintf(
        stderr,
        "total: %zu tables, %.1f MB read once from snapshot %s%s in %.2f s, %.1f MB/s\n",
        s->ntables, (double)bytes / 1e6, s->snapshot,
        s->consistent ? "" : " (not consistent)", seconds, mb_per_s(bytes, seconds));
}

int end_set(set_run *s, int code)
{
    run *r = s->r;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double seconds = (double)(now.tv_sec - r->started.tv_sec) +
                     (double)(now.tv_nsec - r->started.tv_nsec) / 1e9;
    if (code == EXIT_ALL_COMMITTED)
        code = set_exit_code(s);
    if (r->report_file) {
        int rc = write_set_report(r->report_file, s, code, seconds);
        if (fflush(r->report_file) != 0 ||
            (r->report_file != stdout && fclose(r->report_file)))
            rc = -1;
        if (rc != 0)
            fprintf(stderr,
                    "pgfan: the report could not be written; the outcome stands\n");
    }
    if (!r->opt.quiet && code != EXIT_USAGE && s->ntables)
        print_set_summary(s, seconds);
    if (code == EXIT_INTERRUPTED && !r->opt.quiet)
        fprintf(stderr, "pgfan: interrupted: nothing of this run committed\n");
    for (size_t i = 0; i < r->opt.ntargets; i++)
        PQfinish(r->targets[i]);
    PQfinish(r->source);
    for (size_t t = 0; t < s->ntables; t++) {
        free(s->tables[t].qualified);
        free(s->tables[t].display);
    }
    free(s->tables);
    return code;
}

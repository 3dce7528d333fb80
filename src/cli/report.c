#include "report.h"

#include <string.h>

const char *outcome_name(target_outcome o)
{
    switch (o) {
    case OUTCOME_COMMITTED:
        return "committed";
    case OUTCOME_ROLLED_BACK:
        return "rolled_back";
    case OUTCOME_DROPPED:
        return "dropped";
    case OUTCOME_FAILED:
        return "failed";
    case OUTCOME_UNKNOWN:
        return "unknown";
    case OUTCOME_PENDING:
        break;
    }
    return "failed";
}

void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (*p == '\t')
            fputs("\\t", out);
        else if (*p == '\r')
            fputs("\\r", out);
        else if (*p < 0x20)
            fprintf(out, "\\u%04x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

double mb_per_s(uint64_t bytes, double seconds)
{
    return seconds > 0 ? (double)bytes / 1e6 / seconds : 0.0;
}

void json_or_null(FILE *out, const char *s)
{
    if (s[0])
        json_string(out, s);
    else
        fputs("null", out);
}

int write_json_report(FILE *out, const run_report *r)
{
    fputs("{\n  \"source\": {\"sqlstate\": ", out);
    json_or_null(out, r->source_sqlstate);
    fputs(", \"error\": ", out);
    json_or_null(out, r->source_error);
    fputs("},\n  \"targets\": [", out);
    for (size_t i = 0; i < r->ntargets; i++) {
        const target_report *t = &r->targets[i];
        fputs(i ? ",\n    {" : "\n    {", out);
        fputs("\"target\": ", out);
        json_string(out, t->masked);
        fputs(", \"table\": ", out);
        if (t->table[0])
            json_string(out, t->table);
        else
            fputs("null", out);
        fprintf(
            out,
            ", \"state\": \"%s\", \"rows\": %llu, \"bytes\": %llu, \"seconds\": %.3f, "
            "\"retries\": %u",
            outcome_name(t->outcome), (unsigned long long)t->rows,
            (unsigned long long)t->bytes, t->seconds, t->retries);
        fputs(", \"sqlstate\": ", out);
        if (t->sqlstate[0])
            json_string(out, t->sqlstate);
        else
            fputs("null", out);
        fputs(", \"error\": ", out);
        if (t->error[0])
            json_string(out, t->error);
        else
            fputs("null", out);
        fputc('}', out);
    }
    fprintf(out,
            "\n  ],\n  \"totals\": {\"source_rows\": %llu, \"bytes\": %llu, \"seconds\": "
            "%.3f, "
            "\"mb_per_s\": %.2f, \"spill_peak_bytes\": %llu, \"format\": \"%s\", "
            "\"format_reason\": ",
            (unsigned long long)r->source_rows, (unsigned long long)r->bytes, r->seconds,
            mb_per_s(r->bytes, r->seconds), (unsigned long long)r->spill_peak_bytes,
            pgfan_format_name(r->format));
    if (r->format_reason[0])
        json_string(out, r->format_reason);
    else
        fputs("null", out);
    fputs("}\n}\n", out);
    return ferror(out) ? -1 : 0;
}

void print_summary(FILE *out, const run_report *r)
{
    for (size_t i = 0; i < r->ntargets; i++) {
        const target_report *t = &r->targets[i];
        fprintf(out,
                "target %zu: %-11s %12llu rows %10.1f MB %8.1f MB/s %7.2f s  %s%s%s\n",
                i + 1, outcome_name(t->outcome), (unsigned long long)t->rows,
                (double)t->bytes / 1e6, mb_per_s(t->bytes, t->seconds), t->seconds,
                t->table, t->table[0] ? " on " : "", t->masked);
    }
    fprintf(out, "total: %llu rows, %.1f MB read once (%s) in %.2f s, %.1f MB/s\n",
            (unsigned long long)r->source_rows, (double)r->bytes / 1e6,
            pgfan_format_name(r->format), r->seconds, mb_per_s(r->bytes, r->seconds));
    if (r->spill_peak_bytes)
        fprintf(out, "spill journal: at most %.1f MB, for targets that fell behind\n",
                (double)r->spill_peak_bytes / 1e6);
}

/* One field of a status line: tabs and line ends would split it. */
static void status_field(FILE *out, const char *s)
{
    for (; *s; s++)
        fputc(*s == '\t' || *s == '\n' || *s == '\r' ? ' ' : *s, out);
}

int write_status_lines(FILE *out, const run_report *r, int exit_code)
{
    fprintf(out, "exit\t%d\n", exit_code);
    fprintf(out, "source\t%llu\t%llu\t%s\t", (unsigned long long)r->source_rows,
            (unsigned long long)r->bytes, r->source_sqlstate);
    status_field(out, r->source_error);
    fputc('\n', out);
    for (size_t i = 0; i < r->ntargets; i++) {
        const target_report *t = &r->targets[i];
        fprintf(out, "target\t%zu\t%s\t%llu\t%llu\t%.3f\t%s\t", i,
                outcome_name(t->outcome), (unsigned long long)t->rows,
                (unsigned long long)t->bytes, t->seconds, t->sqlstate);
        status_field(out, t->error);
        fputc('\n', out);
    }
    return ferror(out) ? -1 : 0;
}

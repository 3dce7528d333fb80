/* The live progress display of the pgfan command, on stderr. */
#ifndef PGFAN_CLI_PROGRESS_H
#define PGFAN_CLI_PROGRESS_H

#include <stdio.h>

#include <pgfan.h>

typedef struct progress_view {
    FILE *out;
    int tty;             /* redraw in place; else one line per second */
    int lines;           /* lines drawn last time (tty) */
    double last_line_at; /* seconds (non-tty) */
    double estimated_rows;
    char *const *tables; /* the table loaded on each target, or NULLs */
} progress_view;

void progress_draw(progress_view *v, const pgfan_manager *m);
/* Removes the live lines before the final summary. */
void progress_clear(progress_view *v);

#endif

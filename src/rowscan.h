/*
 * Streaming row scanner for COPY data in text, CSV or binary format.
 *
 * Fed arbitrary pieces of a COPY data stream, it counts complete rows and
 * reports where the last complete unit (row, binary header or trailer)
 * ends, so a producer can cut the stream at row boundaries.  It validates
 * what it must to count correctly (binary lengths, CSV quoting) and never
 * trusts a length from the data without checking it.
 */
#ifndef FAN_ROWSCAN_H
#define FAN_ROWSCAN_H

#include <stddef.h>
#include <stdint.h>

#include "pgfan.h"

typedef struct fan_rowscan {
    pgfan_format format;
    uint64_t rows; /* complete rows so far */
    int finished;  /* end marker (text "\." line) or binary trailer seen */
    /* text / CSV */
    int in_quote;
    size_t line_len; /* bytes of the current line so far */
    char line_head[3];
    /* binary */
    int phase;
    unsigned char hold[19];
    size_t held;
    uint64_t skip; /* bytes of field data or header extension to pass over */
    int fields_left;
    char err[128];
} fan_rowscan;

void fan_rowscan_init(fan_rowscan *s, pgfan_format format);

/*
 * Scans `n` bytes.  *boundary (optional) receives the offset within `p` just
 * past the last complete unit that ended in this piece, or SIZE_MAX if none
 * did.  Returns 0, or -1 with a reason in s->err for malformed data.
 */
int fan_rowscan_feed(fan_rowscan *s, const char *p, size_t n, size_t *boundary);

/*
 * Declares the end of the stream.  A final text/CSV line without a newline
 * counts as a row.  Returns 0, or -1 with a reason in s->err when the stream
 * ends inside a row or quoted field, or a binary stream lacks its parts.
 */
int fan_rowscan_finish(fan_rowscan *s);

/* True when the scanner sits at a row boundary (nothing partial pending). */
int fan_rowscan_at_boundary(const fan_rowscan *s);

#endif

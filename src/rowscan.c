#include "rowscan.h"

#include <stdio.h>
#include <string.h>

static const unsigned char binary_signature[11] = {'P',  'G',  'C',  'O',  'P', 'Y',
                                                   '\n', 0377, '\r', '\n', 0};

enum bin_phase {
    BIN_HEADER,      /* 19 bytes: signature, flags, extension length */
    BIN_EXTENSION,   /* skip header extension */
    BIN_TUPLE_START, /* int16 field count, or -1 trailer */
    BIN_FIELD_LEN,   /* int32 length, or -1 NULL */
    BIN_FIELD_DATA,  /* skip field bytes */
    BIN_DONE         /* trailer seen */
};

void fan_rowscan_init(fan_rowscan *s, pgfan_format format)
{
    memset(s, 0, sizeof *s);
    s->format = format;
    s->phase = BIN_HEADER;
}

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Ends a text/CSV line; the "\." end-of-data line is not a row. */
static void end_line(fan_rowscan *s)
{
    if (s->line_len == 2 && s->line_head[0] == '\\' && s->line_head[1] == '.')
        s->finished = 1;
    else if (!s->finished)
        s->rows++;
    s->line_len = 0;
}

static void note_line_byte(fan_rowscan *s, char c)
{
    if (s->line_len < sizeof s->line_head)
        s->line_head[s->line_len] = c;
    s->line_len++;
}

static int feed_textual(fan_rowscan *s, const char *p, size_t n, size_t *boundary)
{
    int csv = s->format == PGFAN_FORMAT_CSV;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (csv && c == '"') {
            s->in_quote = !s->in_quote;
        } else if (c == '\n' && !s->in_quote) {
            /* "\\.\r\n" is the end marker too: drop the '\r'. */
            if (s->line_len == 3 && s->line_head[2] == '\r')
                s->line_len = 2;
            end_line(s);
            *boundary = i + 1;
            continue;
        }
        note_line_byte(s, c);
    }
    return 0;
}

static int fail(fan_rowscan *s, const char *msg)
{
    snprintf(s->err, sizeof s->err, "%s", msg);
    return -1;
}

/* Collects `want` bytes into s->hold; returns 1 when complete. */
static int gather(fan_rowscan *s, const char *p, size_t n, size_t *i, size_t want)
{
    size_t take = want - s->held;
    if (take > n - *i)
        take = n - *i;
    memcpy(s->hold + s->held, p + *i, take);
    s->held += take;
    *i += take;
    if (s->held < want)
        return 0;
    s->held = 0;
    return 1;
}

static int feed_binary(fan_rowscan *s, const char *p, size_t n, size_t *boundary)
{
    size_t i = 0;
    while (i < n) {
        switch (s->phase) {
        case BIN_HEADER:
            if (!gather(s, p, n, &i, 19))
                return 0;
            if (memcmp(s->hold, binary_signature, 11) != 0)
                return fail(s, "binary COPY data lacks the PGCOPY signature");
            if (be32(s->hold + 11) & 0x10000)
                return fail(s, "binary COPY data with OIDs is not supported");
            s->skip = be32(s->hold + 15);
            if (s->skip > 0x7fffffff)
                return fail(s, "binary COPY header extension length is invalid");
            s->phase = BIN_EXTENSION;
            break;
        case BIN_EXTENSION:
        case BIN_FIELD_DATA: {
            uint64_t take = s->skip < n - i ? s->skip : n - i;
            s->skip -= take;
            i += take;
            if (s->skip > 0)
                return 0;
            if (s->phase == BIN_EXTENSION) {
                s->phase = BIN_TUPLE_START;
                *boundary = i;
            } else if (--s->fields_left == 0) {
                s->rows++;
                s->phase = BIN_TUPLE_START;
                *boundary = i;
            } else {
                s->phase = BIN_FIELD_LEN;
            }
            break;
        }
        case BIN_TUPLE_START: {
            if (!gather(s, p, n, &i, 2))
                return 0;
            int16_t count = (int16_t)((uint16_t)s->hold[0] << 8 | s->hold[1]);
            if (count == -1) {
                s->phase = BIN_DONE;
                s->finished = 1;
                *boundary = i;
            } else if (count < 0) {
                return fail(s, "binary COPY tuple has a negative field count");
            } else if (count == 0) {
                s->rows++;
                *boundary = i;
            } else {
                s->fields_left = count;
                s->phase = BIN_FIELD_LEN;
            }
            break;
        }
        case BIN_FIELD_LEN: {
            if (!gather(s, p, n, &i, 4))
                return 0;
            int32_t len = (int32_t)be32(s->hold);
            if (len < -1)
                return fail(s, "binary COPY field has an invalid length");
            s->skip = len < 0 ? 0 : (uint64_t)len;
            s->phase = BIN_FIELD_DATA;
            break;
        }
        case BIN_DONE:
        default:
            return fail(s, "binary COPY data continues after the trailer");
        }
    }
    if (s->phase == BIN_EXTENSION && s->skip == 0) {
        s->phase = BIN_TUPLE_START;
        *boundary = n;
    }
    /* A zero-length last field ends exactly at the end of the piece. */
    if (s->phase == BIN_FIELD_DATA && s->skip == 0) {
        if (--s->fields_left == 0) {
            s->rows++;
            s->phase = BIN_TUPLE_START;
            *boundary = n;
        } else {
            s->phase = BIN_FIELD_LEN;
        }
    }
    return 0;
}

int fan_rowscan_feed(fan_rowscan *s, const char *p, size_t n, size_t *boundary)
{
    size_t dummy;
    if (!boundary)
        boundary = &dummy;
    *boundary = SIZE_MAX;
    if (s->format == PGFAN_FORMAT_BINARY)
        return feed_binary(s, p, n, boundary);
    return feed_textual(s, p, n, boundary);
}

int fan_rowscan_at_boundary(const fan_rowscan *s)
{
    if (s->format == PGFAN_FORMAT_BINARY)
        return s->held == 0 && (s->phase == BIN_TUPLE_START || s->phase == BIN_DONE);
    return s->line_len == 0 && !s->in_quote;
}

int fan_rowscan_finish(fan_rowscan *s)
{
    if (s->format == PGFAN_FORMAT_BINARY) {
        if (s->phase == BIN_HEADER && s->held == 0)
            return 0; /* no data at all: zero rows */
        if (s->phase != BIN_DONE)
            return fail(s, "binary COPY data ends without its trailer");
        return 0;
    }
    if (s->in_quote)
        return fail(s, "CSV data ends inside a quoted field");
    if (s->line_len > 0)
        end_line(s);
    return 0;
}

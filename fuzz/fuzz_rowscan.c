/*
 * Fuzzes the streaming row scanner (text, CSV, binary): the first byte picks
 * the format, the second seeds how the rest is cut into pieces.  Fed in
 * pieces or in one go, the scanner must agree on validity, row count, the
 * last row boundary and the end of the stream.
 */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "rowscan.h"

static pgfan_format format_of(uint8_t b)
{
    return b % 3 == 0   ? PGFAN_FORMAT_TEXT
           : b % 3 == 1 ? PGFAN_FORMAT_CSV
                        : PGFAN_FORMAT_BINARY;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    if (size < 2)
        return 0;
    pgfan_format format = format_of(in[0]);
    uint32_t cut = in[1] * 2654435761u + 1;
    const char *data = (const char *)in + 2;
    size_t n = size - 2;

    fan_rowscan whole, pieces;
    size_t b;
    fan_rowscan_init(&whole, format);
    int rc_whole = fan_rowscan_feed(&whole, data, n, &b);
    size_t last_whole = b;

    fan_rowscan_init(&pieces, format);
    int rc_pieces = 0;
    size_t off = 0, last_pieces = SIZE_MAX;
    while (off < n && rc_pieces == 0) {
        cut = cut * 1103515245u + 12345u;
        size_t len = 1 + (cut >> 16) % 17;
        if (len > n - off)
            len = n - off;
        rc_pieces = fan_rowscan_feed(&pieces, data + off, len, &b);
        if (rc_pieces == 0 && b != SIZE_MAX) {
            assert(b <= len);
            last_pieces = off + b;
        }
        off += len;
    }
    assert(rc_whole == rc_pieces);
    if (rc_whole != 0) {
        assert(whole.err[0] != '\0' && memchr(whole.err, '\0', sizeof whole.err));
        return 0;
    }
    assert(last_whole == SIZE_MAX || last_whole <= n);
    assert(last_whole == last_pieces);
    assert(whole.rows == pieces.rows);
    assert(whole.finished == pieces.finished);
    assert(fan_rowscan_at_boundary(&whole) == fan_rowscan_at_boundary(&pieces));
    int end_whole = fan_rowscan_finish(&whole);
    assert(end_whole == fan_rowscan_finish(&pieces));
    assert(whole.rows == pieces.rows);
    return 0;
}

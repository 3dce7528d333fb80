/*
 * Fuzzes the iterator producer through the whole library: arbitrary bytes,
 * cut into arbitrary chunks, go through a small ring to a call receiver.
 * The first byte picks the format, the second seeds the cuts.  Either the
 * copy succeeds and the receiver got exactly the input, with the row count
 * the scanner finds in one go, or the producer reports malformed data.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <pgfan.h>

#include "rowscan.h"

typedef struct feed {
    const char *data;
    size_t len, off;
    uint32_t cut;
} feed;

typedef struct sink {
    char *data;
    size_t len;
} sink;

static int next_chunk(void *arg, const char **data, size_t *len)
{
    feed *f = arg;
    if (f->off == f->len)
        return 0;
    f->cut = f->cut * 1103515245u + 12345u;
    size_t n = (f->cut >> 16) % 700; /* empty chunks too */
    if (n > f->len - f->off)
        n = f->len - f->off;
    *data = f->data + f->off;
    *len = n;
    f->off += n;
    return 1;
}

static int collect(void *arg, const char *data, size_t len)
{
    sink *s = arg;
    memcpy(s->data + s->len, data, len);
    s->len += len;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    if (size < 2)
        return 0;
    pgfan_format format = in[0] % 3 == 0   ? PGFAN_FORMAT_TEXT
                          : in[0] % 3 == 1 ? PGFAN_FORMAT_CSV
                                           : PGFAN_FORMAT_BINARY;
    feed f = {(const char *)in + 2, size - 2, 0, in[1] + 1u};
    sink s = {malloc(size), 0};
    pgfan_producer *p;
    pgfan_receiver *r;
    pgfan_manager *m;
    pgfan_options o;
    pgfan_options_init(&o);
    o.ring_slots = 4;
    o.chunk_bytes = 4096;
    assert(pgfan_producer_new_iterator(&p, format, next_chunk, &f) == PGFAN_OK);
    assert(pgfan_manager_new(&m, p, &o) == PGFAN_OK);
    assert(pgfan_receiver_new_call(&r, collect, &s) == PGFAN_OK);
    assert(pgfan_manager_add_receiver(m, r, NULL) == PGFAN_OK);
    int rc = pgfan_manager_run(m);

    fan_rowscan scan;
    fan_rowscan_init(&scan, format);
    int valid = fan_rowscan_feed(&scan, f.data, f.len, NULL) == 0 &&
                fan_rowscan_finish(&scan) == 0;
    if (rc == PGFAN_OK) {
        assert(valid);
        assert(s.len == f.len && memcmp(s.data, f.data, f.len) == 0);
        pgfan_progress pr;
        assert(pgfan_manager_progress(m, &pr) == PGFAN_OK);
        assert(pr.producer_rows == scan.rows);
    } else {
        assert(rc == PGFAN_EPRODUCER);
        pgfan_fault fault;
        assert(pgfan_manager_fault(m, 0, &fault) == PGFAN_OK);
        assert(fault.code == PGFAN_EDATA && fault.message[0]);
        assert(!valid);
    }
    pgfan_manager_free(m);
    free(s.data);
    return 0;
}

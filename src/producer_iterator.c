/*
 * An iterator producer: a callback yields chunks of COPY data that may
 * split rows anywhere; the row scanner finds the boundaries and counts.
 */
#include <stdlib.h>

#include "pq.h"
#include "producer.h"

int pgfan_producer_new_iterator(pgfan_producer **out, pgfan_format format,
                                pgfan_iterator_fn fn, void *arg)
{
    if (!out || !fn || (unsigned)format > PGFAN_FORMAT_BINARY)
        return PGFAN_EINVAL;
    *out = NULL;
    pgfan_producer *p = fan_producer_alloc(&fan_iterator_producer, format);
    if (!p)
        return PGFAN_ENOMEM;
    p->iterate = fn;
    p->iterate_arg = arg;
    *out = p;
    return PGFAN_OK;
}

static int iterator_begin(pgfan_producer *p, pgfan_fault *f)
{
    (void)p, (void)f;
    return PGFAN_OK;
}

static void iterator_nothing(pgfan_producer *p)
{
    (void)p;
}

/* The callback failed (rc < 0), or gave `len` bytes at NULL. */
static int callback_fault(pgfan_producer *p, int rc, size_t len)
{
    pgfan_fault f;
    if (rc < 0)
        fan_fault_set(&f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, PGFAN_ECALLBACK,
                      "the iterator callback failed (%d)", rc);
    else
        fan_fault_set(&f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, PGFAN_ECALLBACK,
                      "the iterator returned a NULL chunk of %zu bytes", len);
    fan_producer_post(p, &f);
    return PGFAN_ECALLBACK;
}

static int iterator_run(fan_packer *k)
{
    pgfan_producer *p = fan_pack_producer(k);
    for (;;) {
        const char *data = NULL;
        size_t len = 0;
        if (fan_pack_stopping(k))
            return PGFAN_EABORTED;
        fan_pack_flush(k); /* the callback may block for long */
        int rc = p->iterate(p->iterate_arg, &data, &len);
        if (rc < 0 || (rc > 0 && len > 0 && !data))
            return callback_fault(p, rc, len);
        if (rc == 0)
            break;
        rc = fan_pack_bytes(k, data, len);
        if (rc == PGFAN_EDATA) {
            pgfan_fault f;
            fan_fault_set(&f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, PGFAN_EDATA, "%s",
                          p->scan.err);
            fan_producer_post(p, &f);
        }
        if (rc != PGFAN_OK)
            return rc;
    }
    uint64_t before = p->scan.rows;
    if (fan_rowscan_finish(&p->scan) != 0) {
        pgfan_fault f;
        fan_fault_set(&f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, PGFAN_EDATA, "%s",
                      p->scan.err);
        fan_producer_post(p, &f);
        return PGFAN_EDATA;
    }
    /* Relaxed: a progress counter. */
    atomic_fetch_add_explicit(&p->rows, p->scan.rows - before, memory_order_relaxed);
    fan_pack_finish_rows(k);
    p->final_rows = p->scan.rows;
    return PGFAN_OK;
}

const fan_producer_ops fan_iterator_producer = {
    .begin = iterator_begin,
    .run = iterator_run,
    .realign = iterator_nothing,
    .destroy = iterator_nothing,
};

/*
 * The producer thread and the packing of COPY data into ring slots.  A
 * slot is published when full, or when no more data is ready right now, so
 * a trickling source still flows.  A row never spans two slots.
 */
#include "producer.h"

#include <stdlib.h>
#include <string.h>

#include "pq.h"

struct fan_packer {
    pgfan_producer *p;
    fan_ring *ring;
    fan_slot *slot;    /* claimed, not yet published; NULL if none */
    size_t cut;        /* iterator: bytes of `slot` that end at a row boundary */
    uint64_t cut_rows; /* iterator: scanner rows at `cut` */
    uint64_t published_rows;
};

pgfan_producer *fan_producer_alloc(const fan_producer_ops *ops, pgfan_format format)
{
    pgfan_producer *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->ops = ops;
    p->format = format;
    p->nfields = -1;
    return p;
}

void pgfan_producer_free(pgfan_producer *p)
{
    if (!p)
        return;
    p->ops->destroy(p);
    free(p);
}

void fan_producer_attach(pgfan_producer *p, fan_shared *s)
{
    p->shared = s;
}

int fan_producer_is_attached(const pgfan_producer *p)
{
    return p->shared != NULL;
}

PGconn *fan_producer_conn(const pgfan_producer *p)
{
    return p->conn;
}

pgfan_format fan_producer_format(const pgfan_producer *p)
{
    return p->format;
}

int fan_producer_nfields(const pgfan_producer *p)
{
    return p->nfields;
}

int fan_producer_begin(pgfan_producer *p, pgfan_fault *f)
{
    fan_rowscan_init(&p->scan, p->format);
    return p->ops->begin(p, f);
}

void fan_producer_realign(pgfan_producer *p)
{
    p->ops->realign(p);
}

uint64_t fan_producer_bytes(const pgfan_producer *p)
{
    return atomic_load_explicit(&((pgfan_producer *)p)->bytes, memory_order_relaxed);
}

uint64_t fan_producer_rows(const pgfan_producer *p)
{
    return atomic_load_explicit(&((pgfan_producer *)p)->rows, memory_order_relaxed);
}

void fan_producer_post(pgfan_producer *p, const pgfan_fault *f)
{
    pgfan_fault copy = *f;
    copy.bytes = fan_producer_bytes(p);
    copy.rows = fan_producer_rows(p);
    fan_shared_post_fault(p->shared, &copy);
}

/* ---- packing ---- */

pgfan_producer *fan_pack_producer(fan_packer *k)
{
    return k->p;
}

int fan_pack_stopping(const fan_packer *k)
{
    /* seq_cst load of the verdict: pairs with the manager's CAS. */
    return fan_shared_verdict(k->p->shared) == FAN_VERDICT_ABORT;
}

void fan_pack_flush(fan_packer *k)
{
    fan_ring_flush(k->ring);
}

/* How often a writer held back checks whether a reader should spill: the
 * others lose at most this long to a slow reader, and a reader only a
 * moment behind is not sent to disk. */
#define SPILL_CHECK_MS 5

/* Claims the next slot, waiting for the slowest gating reader, or asking
 * it to spill when the others keep up.  NULL if stopped. */
static fan_slot *claim(fan_packer *k)
{
    int spill = k->ring->journal != NULL;
    while (!fan_ring_wait_space(k->ring, spill ? SPILL_CHECK_MS : -1)) {
        if (fan_pack_stopping(k))
            return NULL;
        if (spill)
            fan_ring_spill(k->ring);
    }
    k->slot = fan_ring_claim(k->ring);
    k->cut = 0;
    return k->slot;
}

void fan_pack_publish(fan_packer *k)
{
    if (k->slot && k->slot->len > 0) {
        fan_ring_publish(k->ring);
        k->slot = NULL;
    }
}

static void add_progress(pgfan_producer *p, uint64_t bytes, uint64_t rows)
{
    /* Relaxed: counters for progress, nothing is read on their strength. */
    atomic_fetch_add_explicit(&p->bytes, bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->rows, rows, memory_order_relaxed);
}

int fan_pack_message(fan_packer *k, const char *buf, size_t n, int is_row)
{
    if (k->slot && k->slot->len + n > k->slot->cap)
        fan_pack_publish(k);
    if (!k->slot && !claim(k))
        return PGFAN_EABORTED;
    if (fan_ring_reserve(k->ring, k->slot, k->slot->len + n) != 0)
        return PGFAN_ENOMEM;
    memcpy(k->slot->data + k->slot->len, buf, n);
    k->slot->len += n;
    k->slot->rows += (uint64_t)is_row;
    add_progress(k->p, n, (uint64_t)is_row);
    if (k->slot->len >= k->ring->chunk_bytes)
        fan_pack_publish(k);
    return PGFAN_OK;
}

int fan_pack_message_take(fan_packer *k, char *buf, size_t n, int is_row,
                          void (*release)(void *))
{
    if (n <= k->ring->chunk_bytes) {
        int rc = fan_pack_message(k, buf, n, is_row);
        release(buf);
        return rc;
    }
    /* A huge row costs its size once here, not a doubling slot and a copy
     * on top of libpq's buffer. */
    fan_pack_publish(k);
    if (!k->slot && !claim(k)) {
        release(buf);
        return PGFAN_EABORTED;
    }
    fan_ring_adopt(k->slot, buf, n, release);
    k->slot->rows = (uint64_t)is_row;
    add_progress(k->p, n, (uint64_t)is_row);
    fan_pack_publish(k);
    return PGFAN_OK;
}

int fan_pack_wait_source(fan_packer *k)
{
    struct pollfd pfd = {.fd = PQsocket(k->p->conn), .events = POLLIN};
    if (fan_pack_stopping(k))
        return -1;
    fan_ring_flush(k->ring);
    fan_waiter_sleep(&k->ring->writer, &pfd, 1, -1);
    return fan_pack_stopping(k) ? -1 : 0;
}

/* Publishes the claimed slot up to its last row boundary and carries the
 * partial row that follows into a fresh slot. */
static int cut_slot(fan_packer *k)
{
    fan_slot *old = k->slot;
    size_t tail = old->len - k->cut;
    const char *tail_src = old->data + k->cut;
    old->len = k->cut;
    old->rows = k->cut_rows - k->published_rows;
    k->published_rows = k->cut_rows;
    fan_ring_publish(k->ring);
    k->slot = NULL;
    if (!claim(k))
        return PGFAN_EABORTED;
    /* The old slot stays intact until every reader releases it, and we only
     * read it, so copying the tail from it is safe. */
    if (fan_ring_reserve(k->ring, k->slot, tail) != 0)
        return PGFAN_ENOMEM;
    memcpy(k->slot->data, tail_src, tail);
    k->slot->len = tail;
    return PGFAN_OK;
}

int fan_pack_bytes(fan_packer *k, const char *data, size_t len)
{
    pgfan_producer *p = k->p;
    while (len > 0) {
        if (!k->slot && !claim(k))
            return PGFAN_EABORTED;
        fan_slot *s = k->slot;
        if (s->len == s->cap) {
            int rc = k->cut > 0 ? cut_slot(k)
                                : (fan_ring_reserve(k->ring, s, s->cap * 2) ? PGFAN_ENOMEM
                                                                            : PGFAN_OK);
            if (rc != PGFAN_OK)
                return rc;
            continue;
        }
        size_t take = s->cap - s->len < len ? s->cap - s->len : len;
        size_t boundary;
        uint64_t before = p->scan.rows;
        memcpy(s->data + s->len, data, take);
        if (fan_rowscan_feed(&p->scan, data, take, &boundary) != 0)
            return PGFAN_EDATA;
        if (boundary != SIZE_MAX) {
            k->cut = s->len + boundary;
            k->cut_rows = p->scan.rows;
        }
        s->len += take;
        data += take;
        len -= take;
        add_progress(p, take, p->scan.rows - before);
    }
    return PGFAN_OK;
}

void fan_pack_finish_rows(fan_packer *k)
{
    pgfan_producer *p = k->p;
    if (k->slot) {
        k->slot->rows = p->scan.rows - k->published_rows;
        fan_pack_publish(k);
    }
}

/* ---- the thread ---- */

static void *producer_main(void *arg)
{
    pgfan_producer *p = arg;
    fan_packer k = {.p = p, .ring = &p->shared->ring};
    int rc = p->ops->run(&k);
    if (rc == PGFAN_ENOMEM) {
        pgfan_fault f;
        fan_fault_set(&f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, PGFAN_ENOMEM,
                      "out of memory");
        fan_producer_post(p, &f);
    }
    if (rc != PGFAN_OK)
        fan_producer_realign(p);
    else
        p->shared->source_rows = p->final_rows;
    /* The ring state's seq_cst store publishes source_rows and the last
     * head: a reader that sees ENDED (acquire) sees both. */
    fan_ring_close(k.ring, rc == PGFAN_OK ? FAN_RING_ENDED : FAN_RING_FAILED);
    fan_shared_poke(p->shared);
    return NULL;
}

int fan_producer_start(pgfan_producer *p)
{
    return fan_thread_start(&p->thread, producer_main, p);
}

void fan_producer_join(pgfan_producer *p)
{
    fan_thread_join(&p->thread);
}

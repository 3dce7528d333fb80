/*
 * The producer: the one source of COPY data, run by the producer thread.
 *
 * A statement producer reads CopyData messages with PQgetCopyData (async)
 * and packs whole messages into ring slots; an iterator producer packs the
 * callback's bytes and cuts slots at row boundaries found by the row
 * scanner.  A slot is published when full, or when no more data is ready
 * right now, so a trickling source still flows.
 */
#include "copysql.h"
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PRODUCER_LABEL "source"

int pgfan_producer_new_statement(pgfan_producer **out, PGconn *conn,
                                 const char *copy_to_sql)
{
    pgfan_format format;
    char err[256];

    if (!out || !conn || !copy_to_sql)
        return PGFAN_EINVAL;
    *out = NULL;
    if (fan_copysql_check(copy_to_sql, FAN_COPY_TO_STDOUT, &format, err, sizeof err) != 0)
        return PGFAN_ENOTCOPY;
    pgfan_producer *p = calloc(1, sizeof *p);
    if (!p || !(p->sql = strdup(copy_to_sql))) {
        free(p);
        return PGFAN_ENOMEM;
    }
    p->kind = FAN_PRODUCER_STATEMENT;
    p->conn = conn;
    p->format = format;
    p->nfields = -1;
    *out = p;
    return PGFAN_OK;
}

int pgfan_producer_new_iterator(pgfan_producer **out, pgfan_format format,
                                pgfan_iterator_fn fn, void *arg)
{
    if (!out || !fn || (unsigned)format > PGFAN_FORMAT_BINARY)
        return PGFAN_EINVAL;
    *out = NULL;
    pgfan_producer *p = calloc(1, sizeof *p);
    if (!p)
        return PGFAN_ENOMEM;
    p->kind = FAN_PRODUCER_ITERATOR;
    p->iterate = fn;
    p->iterate_arg = arg;
    p->format = format;
    p->nfields = -1;
    *out = p;
    return PGFAN_OK;
}

void pgfan_producer_free(pgfan_producer *p)
{
    if (!p)
        return;
    free(p->sql);
    free(p);
}

/* Runs the COPY TO statement and checks that the server entered COPY OUT. */
int fan_producer_begin(pgfan_producer *p, pgfan_fault *f)
{
    fan_rowscan_init(&p->scan, p->format);
    if (p->kind == FAN_PRODUCER_ITERATOR)
        return PGFAN_OK;
    int rc = fan_conn_ready(p->conn, f, PGFAN_PRODUCER_INDEX, PRODUCER_LABEL);
    if (rc != PGFAN_OK)
        return rc;
    if (!PQsendQuery(p->conn, p->sql)) {
        fan_fault_from_conn(f, PGFAN_PRODUCER_INDEX, p->conn, PRODUCER_LABEL);
        return PGFAN_ECONN;
    }
    PGresult *res = PQgetResult(p->conn);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COPY_OUT) {
        p->in_copy = 1;
        p->nfields = PQnfields(res);
        if (PQbinaryTuples(res))
            p->format = PGFAN_FORMAT_BINARY;
        else if (p->format == PGFAN_FORMAT_BINARY)
            p->format = PGFAN_FORMAT_TEXT;
        PQclear(res);
        return PGFAN_OK;
    }
    if (st == PGRES_FATAL_ERROR || !res) {
        fan_fault_from_result(f, PGFAN_PRODUCER_INDEX, res, PRODUCER_LABEL);
        rc = f->code;
    } else {
        fan_fault_set(f, PGFAN_PRODUCER_INDEX, PGFAN_ENOTCOPY,
                      "%s: the statement did not start COPY TO STDOUT (got %s)",
                      PRODUCER_LABEL, PQresStatus(st));
        rc = PGFAN_ENOTCOPY;
    }
    PQclear(res);
    fan_drain_results(p->conn, NULL, PGFAN_PRODUCER_INDEX, PRODUCER_LABEL);
    return rc;
}

/* Waits for the source socket until `deadline`.  Returns 0, or -1 when
 * the deadline passed. */
static int wait_readable_until(PGconn *conn, const struct timespec *deadline)
{
    long left = fan_ms_until(deadline);
    if (left <= 0)
        return -1;
    struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
    poll(&pfd, 1, (int)(left > 1000 ? 1000 : left));
    return 0;
}

/* Reads the cancelled COPY OUT to its end and its results, within the
 * deadline.  Returns 0, or -1 when the server did not finish in time. */
static int drain_until(PGconn *conn, const struct timespec *deadline)
{
    char *buf;
    for (;;) {
        int n = PQgetCopyData(conn, &buf, 1);
        if (n > 0) {
            PQfreemem(buf);
            continue;
        }
        if (n == -1)
            break; /* the COPY ended: its results follow */
        if (n == -2) {
            if (PQstatus(conn) == CONNECTION_BAD)
                return 0; /* broken: nothing left to wait for */
            break;        /* not in COPY OUT any more: collect what is pending */
        }
        if (wait_readable_until(conn, deadline) != 0)
            return -1;
        if (!PQconsumeInput(conn))
            return 0;
    }
    for (;;) {
        while (PQisBusy(conn)) {
            if (wait_readable_until(conn, deadline) != 0)
                return -1;
            if (!PQconsumeInput(conn))
                return 0;
        }
        PGresult *res = PQgetResult(conn);
        if (!res)
            return 0;
        PQclear(res); /* 57014 or COMMAND_OK: both fine */
    }
}

/*
 * Brings the source connection out of COPY OUT: the frontend cannot end a
 * COPY TO except by cancelling it, then reading everything up to the end.
 * Both 57014 (cancelled) and COMMAND_OK (the cancel came too late) are fine.
 * A server that does not finish within realign_timeout_ms is reported and
 * its connection left to the caller.
 */
void fan_producer_realign(pgfan_producer *p)
{
    if (p->kind != FAN_PRODUCER_STATEMENT || !p->in_copy)
        return;
    p->in_copy = 0;
    if (PQstatus(p->conn) == CONNECTION_BAD)
        return;
    PGcancel *cancel = PQgetCancel(p->conn);
    if (cancel) {
        char errbuf[256];
        PQcancel(cancel, errbuf, sizeof errbuf);
        PQfreeCancel(cancel);
    }
    struct timespec deadline;
    fan_deadline(&deadline, p->manager->opts.realign_timeout_ms);
    if (drain_until(p->conn, &deadline) != 0) {
        pgfan_fault f;
        fan_fault_set(&f, PGFAN_PRODUCER_INDEX, PGFAN_ECONN,
                      "%s: the server did not end the cancelled COPY within %u ms; the "
                      "connection is still in COPY mode and should be closed",
                      PRODUCER_LABEL, p->manager->opts.realign_timeout_ms);
        fan_manager_post_fault(p->manager, &f);
        p->gave_up = 1;
    }
}

/* ---- the producer thread ---- */

typedef struct packer {
    pgfan_producer *p;
    fan_ring *ring;
    fan_slot *slot;    /* claimed, not yet published; NULL if none */
    size_t cut;        /* iterator: bytes of `slot` that end at a row boundary */
    uint64_t cut_rows; /* iterator: scanner rows at `cut` */
    uint64_t published_rows;
} packer;

static int stopping(const pgfan_producer *p)
{
    /* Acquire: pairs with the manager's store in give_verdict(). */
    return atomic_load_explicit(&p->stop, memory_order_acquire);
}

/* Claims the next slot, waiting for the slowest gating reader.  NULL if stopped. */
static fan_slot *claim(packer *k)
{
    while (!fan_ring_wait_space(k->ring, -1))
        if (stopping(k->p))
            return NULL;
    k->slot = fan_ring_claim(k->ring);
    k->cut = 0;
    return k->slot;
}

static void publish(packer *k)
{
    if (k->slot && k->slot->len > 0) {
        fan_ring_publish(k->ring);
        k->slot = NULL;
    }
}

static void add_progress(pgfan_producer *p, uint64_t bytes, uint64_t rows)
{
    atomic_fetch_add_explicit(&p->bytes, bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->rows, rows, memory_order_relaxed);
}

/* Appends one CopyData message; a row never spans two slots. */
static int pack_message(packer *k, const char *buf, size_t n, int is_row)
{
    if (k->slot && k->slot->len + n > k->slot->cap)
        publish(k);
    if (!k->slot && !claim(k))
        return PGFAN_EABORTED;
    if (fan_ring_reserve(k->ring, k->slot, k->slot->len + n) != 0)
        return PGFAN_ENOMEM;
    memcpy(k->slot->data + k->slot->len, buf, n);
    k->slot->len += n;
    k->slot->rows += (uint64_t)is_row;
    add_progress(k->p, n, (uint64_t)is_row);
    if (k->slot->len >= k->ring->chunk_bytes)
        publish(k);
    return PGFAN_OK;
}

static void post(pgfan_producer *p, const pgfan_fault *f)
{
    pgfan_fault copy = *f;
    copy.bytes = atomic_load_explicit(&p->bytes, memory_order_relaxed);
    copy.rows = atomic_load_explicit(&p->rows, memory_order_relaxed);
    fan_manager_post_fault(p->manager, &copy);
}

/* PQgetCopyData returned -1: the result tells whether the source completed. */
static int statement_end(pgfan_producer *p)
{
    pgfan_fault f;
    PGresult *res = PQgetResult(p->conn);
    int rc = PGFAN_OK;
    if (PQresultStatus(res) == PGRES_COMMAND_OK) {
        p->final_rows = strtoull(PQcmdTuples(res), NULL, 10);
    } else {
        fan_fault_from_result(&f, PGFAN_PRODUCER_INDEX, res, PRODUCER_LABEL);
        post(p, &f);
        rc = f.code;
    }
    PQclear(res);
    p->in_copy = 0;
    if (fan_drain_results(p->conn, &f, PGFAN_PRODUCER_INDEX, PRODUCER_LABEL) != 0 &&
        rc == PGFAN_OK) {
        post(p, &f);
        rc = f.code;
    }
    return rc;
}

/* Waits for the source socket or a kick.  Returns 0, or -1 if stopped. */
static int wait_source(packer *k)
{
    struct pollfd pfd = {.fd = PQsocket(k->p->conn), .events = POLLIN};
    if (stopping(k->p))
        return -1;
    fan_ring_flush(k->ring);
    fan_waiter_sleep(&k->ring->writer, &pfd, 1, -1);
    return stopping(k->p) ? -1 : 0;
}

/*
 * Rows in one CopyData message of a statement producer.  The server sends
 * one row per message, except in binary format: the header travels in
 * front of the first tuple and the trailer (int16 -1) comes alone, or right
 * after the header when there are no rows.
 */
static int message_rows(const pgfan_producer *p, const char *buf, size_t n, int first)
{
    if (p->format != PGFAN_FORMAT_BINARY)
        return 1;
    size_t off = 0;
    if (first && n >= 19) {
        const unsigned char *h = (const unsigned char *)buf + 15;
        uint32_t ext =
            (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        off = 19 + (ext < n - 19 ? ext : n - 19);
    }
    size_t rest = n - off;
    if (rest == 0)
        return 0;
    return !(rest == 2 && (unsigned char)buf[off] == 0xff &&
             (unsigned char)buf[off + 1] == 0xff);
}

static int run_statement(packer *k)
{
    pgfan_producer *p = k->p;
    int consumed = 0, first = 1;
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(p->conn, &buf, 1);
        if (n > 0) {
            int rc =
                pack_message(k, buf, (size_t)n, message_rows(p, buf, (size_t)n, first));
            first = 0;
            PQfreemem(buf);
            if (rc != PGFAN_OK)
                return rc;
            consumed = 0;
        } else if (n == 0) {
            if (!consumed) {
                consumed = 1;
                if (!PQconsumeInput(p->conn)) {
                    pgfan_fault f;
                    fan_fault_from_conn(&f, PGFAN_PRODUCER_INDEX, p->conn,
                                        PRODUCER_LABEL);
                    post(p, &f);
                    p->in_copy = 0;
                    return PGFAN_ECONN;
                }
                continue;
            }
            publish(k); /* nothing more ready: let the readers have it */
            if (wait_source(k) != 0)
                return PGFAN_EABORTED;
            consumed = 0;
        } else if (n == -1) {
            publish(k);
            return statement_end(p);
        } else {
            pgfan_fault f;
            fan_fault_from_conn(&f, PGFAN_PRODUCER_INDEX, p->conn, PRODUCER_LABEL);
            post(p, &f);
            p->in_copy = 0;
            return PGFAN_ECONN;
        }
    }
}

/* Publishes the claimed slot up to its last row boundary and carries the
 * partial row that follows into a fresh slot. */
static int cut_slot(packer *k)
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

static int pack_bytes(packer *k, const char *data, size_t len)
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

static int run_iterator(packer *k)
{
    pgfan_producer *p = k->p;
    pgfan_fault f;
    for (;;) {
        const char *data = NULL;
        size_t len = 0;
        if (stopping(p))
            return PGFAN_EABORTED;
        fan_ring_flush(k->ring); /* the callback may block for long */
        int rc = p->iterate(p->iterate_arg, &data, &len);
        if (rc < 0) {
            fan_fault_set(&f, PGFAN_PRODUCER_INDEX, PGFAN_ECALLBACK,
                          "source: the iterator callback failed (%d)", rc);
            post(p, &f);
            return PGFAN_ECALLBACK;
        }
        if (rc == 0)
            break;
        if (len > 0 && !data) {
            fan_fault_set(&f, PGFAN_PRODUCER_INDEX, PGFAN_ECALLBACK,
                          "source: the iterator returned a NULL chunk of %zu bytes", len);
            post(p, &f);
            return PGFAN_ECALLBACK;
        }
        rc = pack_bytes(k, data, len);
        if (rc == PGFAN_EDATA) {
            fan_fault_set(&f, PGFAN_PRODUCER_INDEX, PGFAN_EDATA, "source: %s",
                          p->scan.err);
            post(p, &f);
        }
        if (rc != PGFAN_OK)
            return rc;
    }
    uint64_t before = p->scan.rows;
    if (fan_rowscan_finish(&p->scan) != 0) {
        fan_fault_set(&f, PGFAN_PRODUCER_INDEX, PGFAN_EDATA, "source: %s", p->scan.err);
        post(p, &f);
        return PGFAN_EDATA;
    }
    add_progress(p, 0, p->scan.rows - before);
    if (k->slot) {
        k->slot->rows = p->scan.rows - k->published_rows;
        publish(k);
    }
    p->final_rows = p->scan.rows;
    return PGFAN_OK;
}

void *fan_producer_main(void *arg)
{
    pgfan_producer *p = arg;
    packer k = {.p = p, .ring = &p->manager->ring};
    int rc = p->kind == FAN_PRODUCER_STATEMENT ? run_statement(&k) : run_iterator(&k);
    if (rc == PGFAN_ENOMEM) {
        pgfan_fault f;
        fan_fault_set(&f, PGFAN_PRODUCER_INDEX, PGFAN_ENOMEM, "source: out of memory");
        post(p, &f);
    }
    if (rc != PGFAN_OK)
        fan_producer_realign(p);
    p->ended = rc == PGFAN_OK;
    /* Release (seq_cst) of final_rows and the last head with the state:
     * a reader that sees ENDED sees both. */
    fan_ring_close(k.ring, rc == PGFAN_OK ? FAN_RING_ENDED : FAN_RING_FAILED);
    fan_manager_poke(p->manager);
    return NULL;
}

/*
 * A statement producer: COPY ... TO STDOUT on a connection; each CopyData
 * message is a row, or binary framing.  On a plain connection the COPY's
 * bytes are read here (wire.h), otherwise with PQgetCopyData (async).
 */
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "copysql.h"
#include "pq.h"
#include "producer.h"

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
    pgfan_producer *p = fan_producer_alloc(&fan_statement_producer, format);
    if (!p || !(p->sql = strdup(copy_to_sql))) {
        free(p);
        return PGFAN_ENOMEM;
    }
    p->conn = conn;
    *out = p;
    return PGFAN_OK;
}

static void statement_destroy(pgfan_producer *p)
{
    fan_wire_out_close(&p->wire);
    free(p->sql);
}

static void poll_source(PGconn *conn, long ms)
{
    struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
    poll(&pfd, 1, (int)ms);
}

static int wire_broke(pgfan_fault *f)
{
    fan_fault_set(f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, PGFAN_ECONN,
                  "could not hand the server's messages to libpq (out of memory or "
                  "descriptors); the connection should be closed");
    return PGFAN_ECONN;
}

static int source_broke(pgfan_producer *p)
{
    pgfan_fault f;
    wire_broke(&f);
    fan_producer_post(p, &f);
    return PGFAN_ECONN;
}

/*
 * The start of a COPY read on the wire: the answer is read here until its
 * CopyOutResponse, which libpq is handed and parses; the data behind it
 * stays with the reader.  Any other answer (an error), a broken
 * connection, an interrupt or the start limit leaves the rest to libpq
 * and fan_await_result_until(), which cancel and report as always.
 */
static int wire_begin(pgfan_producer *p, const fan_wait *w, int *binary, pgfan_fault *f)
{
    struct timespec limit;
    if (w->limit_ms)
        fan_deadline(&limit, w->limit_ms);
    if (fan_wire_out_open(&p->wire, p->shared->ring.chunk_bytes) != 0)
        return fan_copy_started(p->conn, PGRES_COPY_OUT, w, PGFAN_PRODUCER_INDEX,
                                FAN_SOURCE_LABEL, &p->nfields, binary, f);
    int at = FAN_WIRE_NEED;
    for (;;) {
        int got = fan_wire_out_fill(&p->wire, PQsocket(p->conn));
        if (got < 0)
            break;
        if ((at = fan_wire_out_begin(&p->wire, p->conn)) != FAN_WIRE_NEED)
            break;
        if (got > 0)
            continue;
        long ms = w->limit_ms ? fan_ms_until(&limit) : 100;
        if ((w->interrupt && *w->interrupt) || ms <= 0)
            break;
        poll_source(p->conn, ms < 100 ? ms : 100);
    }
    if (at == FAN_WIRE_STARTED)
        return fan_copy_result(p->conn, PGRES_COPY_OUT, PGFAN_PRODUCER_INDEX,
                               FAN_SOURCE_LABEL, &p->nfields, binary, f);
    /* Another answer was handed over whole; otherwise what was read is. */
    if (at == FAN_WIRE_FAILED || fan_wire_out_give_rest(&p->wire, p->conn) != 0) {
        fan_wire_out_close(&p->wire);
        return wire_broke(f);
    }
    fan_wire_out_close(&p->wire);
    int rc = fan_await_result_until(p->conn, w, w->limit_ms ? &limit : NULL,
                                    PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, f);
    return rc != PGFAN_OK ? rc
                          : fan_copy_result(p->conn, PGRES_COPY_OUT, PGFAN_PRODUCER_INDEX,
                                            FAN_SOURCE_LABEL, &p->nfields, binary, f);
}

/* Runs the COPY TO statement and checks that the server entered COPY OUT. */
static int statement_begin(pgfan_producer *p, pgfan_fault *f)
{
    int binary;
    fan_wait w = fan_wait_from_options(&p->shared->opts);
    int rc = fan_copy_send(p->conn, p->sql, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, f);
    if (rc == PGFAN_OK && fan_wire_usable(p->conn))
        rc = wire_begin(p, &w, &binary, f);
    else if (rc == PGFAN_OK)
        rc = fan_copy_started(p->conn, PGRES_COPY_OUT, &w, PGFAN_PRODUCER_INDEX,
                              FAN_SOURCE_LABEL, &p->nfields, &binary, f);
    if (rc != PGFAN_OK) {
        fan_wire_out_close(&p->wire);
        return rc;
    }
    p->in_copy = 1;
    p->format = fan_copy_format(p->format, binary);
    return PGFAN_OK;
}

/* Waits for the source socket until `deadline`.  Returns 0, or -1 when
 * the deadline passed. */
static int wait_readable_until(PGconn *conn, const struct timespec *deadline)
{
    long left = fan_ms_until(deadline);
    if (left <= 0)
        return -1;
    poll_source(conn, left > 1000 ? 1000 : left);
    return 0;
}

/* Reads a cancelled COPY on the wire up to its end, forgetting its data,
 * and gives libpq the rest.  Returns 0, or -1 when the server did not get
 * there within the deadline (or the stand-in failed). */
static int wire_drain_until(pgfan_producer *p, const struct timespec *deadline)
{
    fan_wire_out *r = &p->wire;
    fan_wire_out_discard(r);
    for (;;) {
        fan_wire_message m;
        int next = fan_wire_out_next(r, &m);
        free(m.owned);
        if (next == FAN_WIRE_DATA)
            continue;
        if (next == FAN_WIRE_ASIDE) {
            if (fan_wire_out_give(r, p->conn, &m) != 0)
                return -1;
            continue;
        }
        if (next != FAN_WIRE_NEED)
            break;
        int got = fan_wire_out_fill(r, PQsocket(p->conn));
        if (got < 0)
            break;
        if (got == 0 && wait_readable_until(p->conn, deadline) != 0)
            return -1;
    }
    if (fan_wire_out_give_rest(r, p->conn) != 0)
        return -1;
    fan_wire_out_close(r);
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
static void statement_realign(pgfan_producer *p)
{
    if (!p->in_copy)
        return;
    p->in_copy = 0;
    if (PQstatus(p->conn) == CONNECTION_BAD)
        return;
    fan_send_cancel(p->conn);
    unsigned int ms = p->shared->opts.realign_timeout_ms;
    struct timespec deadline;
    fan_deadline(&deadline, ms);
    if ((p->wire.on && wire_drain_until(p, &deadline) != 0) ||
        drain_until(p->conn, &deadline) != 0) {
        pgfan_fault f;
        fan_fault_set(&f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, PGFAN_ECONN,
                      "the server did not end the cancelled COPY within %u ms; the "
                      "connection is still in COPY mode and should be closed",
                      ms);
        fan_shared_post_fault(p->shared, &f);
    }
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
        fan_fault_from_result(&f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, res);
        fan_producer_post(p, &f);
        rc = f.code;
    }
    PQclear(res);
    p->in_copy = 0;
    if (fan_drain_results(p->conn, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, &f) != 0 &&
        rc == PGFAN_OK) {
        fan_producer_post(p, &f);
        rc = f.code;
    }
    return rc;
}

/*
 * Rows in one CopyData message.  The server sends one row per message,
 * except in binary format: the header travels in front of the first tuple
 * and the trailer (int16 -1) comes alone, or right after the header when
 * there are no rows.
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

static int conn_lost(pgfan_producer *p)
{
    pgfan_fault f;
    fan_fault_from_conn(&f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, p->conn);
    fan_producer_post(p, &f);
    p->in_copy = 0;
    return PGFAN_ECONN;
}

static int packed(fan_packer *k, const fan_wire_message *m, int *first)
{
    pgfan_producer *p = fan_pack_producer(k);
    int rows = message_rows(p, m->data, m->len, *first);
    *first = 0;
    /* A message bigger than a slot was read into its own buffer, which
     * becomes a slot as it is: the row is held once. */
    return m->owned ? fan_pack_message_take(k, m->owned, m->len, rows, free)
                    : fan_pack_message(k, m->data, m->len, rows);
}

/*
 * Reads the COPY on the wire until the server leaves COPY OUT, then gives
 * libpq what follows.  Returns PGFAN_OK to go on with libpq (which reads
 * the end, or finds the connection broken), or a failure.
 */
static int wire_run(fan_packer *k, int *first)
{
    pgfan_producer *p = fan_pack_producer(k);
    fan_wire_out *r = &p->wire;
    for (;;) {
        fan_wire_message m;
        int next = fan_wire_out_next(r, &m), rc = PGFAN_OK;
        if (next == FAN_WIRE_END)
            break;
        if (next == FAN_WIRE_NOMEM)
            return PGFAN_ENOMEM; /* reported by the thread */
        if (next == FAN_WIRE_DATA) {
            rc = packed(k, &m, first);
        } else if (next == FAN_WIRE_ASIDE) {
            if (fan_wire_out_give(r, p->conn, &m) != 0)
                return source_broke(p);
        } else {
            int got = fan_wire_out_fill(r, PQsocket(p->conn));
            if (got < 0)
                break; /* closed or failed: libpq finds out and says which */
            if (got == 0) {
                fan_pack_publish(k); /* nothing more ready: let the readers have it */
                if (fan_pack_wait_source(k) != 0)
                    return PGFAN_EABORTED;
            }
        }
        if (rc != PGFAN_OK)
            return rc;
    }
    if (fan_wire_out_give_rest(r, p->conn) != 0)
        return source_broke(p);
    fan_wire_out_close(r);
    return PGFAN_OK;
}

static int statement_run(fan_packer *k)
{
    pgfan_producer *p = fan_pack_producer(k);
    int consumed = 0, first = 1;
    if (p->wire.on) {
        int rc = wire_run(k, &first);
        if (rc != PGFAN_OK)
            return rc;
    }
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(p->conn, &buf, 1);
        if (n > 0) {
            int rc = fan_pack_message_take(
                k, buf, (size_t)n, message_rows(p, buf, (size_t)n, first), PQfreemem);
            first = 0;
            if (rc != PGFAN_OK)
                return rc;
            consumed = 0;
        } else if (n == 0) {
            if (!consumed) {
                consumed = 1;
                if (!PQconsumeInput(p->conn))
                    return conn_lost(p);
                continue;
            }
            fan_pack_publish(k); /* nothing more ready: let the readers have it */
            if (fan_pack_wait_source(k) != 0)
                return PGFAN_EABORTED;
            consumed = 0;
        } else if (n == -1) {
            fan_pack_publish(k);
            return statement_end(p);
        } else {
            return conn_lost(p);
        }
    }
}

const fan_producer_ops fan_statement_producer = {
    .begin = statement_begin,
    .run = statement_run,
    .realign = statement_realign,
    .destroy = statement_destroy,
};

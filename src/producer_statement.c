/*
 * A statement producer: COPY ... TO STDOUT on a connection, read with
 * PQgetCopyData (async); each CopyData message is a row, or binary framing.
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
    free(p->sql);
}

/* Runs the COPY TO statement and checks that the server entered COPY OUT. */
static int statement_begin(pgfan_producer *p, pgfan_fault *f)
{
    int binary;
    fan_wait w = fan_wait_from_options(&p->shared->opts);
    int rc = fan_copy_send(p->conn, p->sql, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, f);
    if (rc == PGFAN_OK)
        rc = fan_copy_started(p->conn, PGRES_COPY_OUT, &w, PGFAN_PRODUCER_INDEX,
                              FAN_SOURCE_LABEL, &p->nfields, &binary, f);
    if (rc != PGFAN_OK)
        return rc;
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
    if (drain_until(p->conn, &deadline) != 0) {
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

static int statement_run(fan_packer *k)
{
    pgfan_producer *p = fan_pack_producer(k);
    int consumed = 0, first = 1;
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

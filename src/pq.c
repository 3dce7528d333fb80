/* libpq helpers: fault records, labels, starting a COPY. */
#include "pq.h"

#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "clock.h"

void fan_fault_set(pgfan_fault *f, int who, const char *label, int code, const char *fmt,
                   ...)
{
    va_list ap;
    memset(f, 0, sizeof *f);
    f->receiver = who;
    f->code = code;
    snprintf(f->label, sizeof f->label, "%s", label ? label : "");
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
}

/* libpq messages end with a newline; fault messages are one line. */
static void trim(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        s[--n] = '\0';
}

void fan_fault_from_result(pgfan_fault *f, int who, const char *label,
                           const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *whole = res ? PQresultErrorMessage(res) : "";

    fan_fault_set(f, who, label, PGFAN_ESERVER, "%s",
                  primary ? primary : (whole && *whole ? whole : "unknown server error"));
    if (state)
        snprintf(f->sqlstate, sizeof f->sqlstate, "%s", state);
    else
        f->code = PGFAN_ECONN; /* libpq's own error: no server behind it */
    trim(f->message);
}

void fan_fault_from_conn(pgfan_fault *f, int who, const char *label, PGconn *conn)
{
    const char *msg = conn ? PQerrorMessage(conn) : "";
    fan_fault_set(f, who, label, PGFAN_ECONN, "%s",
                  msg && *msg ? msg : "connection is not usable");
    trim(f->message);
}

void fan_conn_label(PGconn *conn, char *buf, size_t len)
{
    const char *host = PQhost(conn);
    const char *port = PQport(conn);
    const char *db = PQdb(conn);
    if (host && host[0] == '/')
        snprintf(buf, len, "[%s]:%s/%s", host, port ? port : "", db ? db : "");
    else
        snprintf(buf, len, "%s:%s/%s", host ? host : "", port ? port : "", db ? db : "");
}

int fan_drain_results(PGconn *conn, int who, const char *label, pgfan_fault *f)
{
    PGresult *res;
    int failed = 0;
    while ((res = PQgetResult(conn)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_FATAL_ERROR && !failed) {
            failed = 1;
            if (f)
                fan_fault_from_result(f, who, label, res);
        }
        PQclear(res);
        if (st == PGRES_COPY_IN) /* should not happen after CopyDone/Fail */
            PQputCopyEnd(conn, "pgfan: unexpected COPY IN state");
        if (st == PGRES_COPY_OUT) {
            char *buf;
            while (PQgetCopyData(conn, &buf, 0) > 0)
                PQfreemem(buf);
        }
        if (PQstatus(conn) == CONNECTION_BAD)
            break;
    }
    return failed ? -1 : 0;
}

int fan_conn_ready(PGconn *conn, int who, const char *label, pgfan_fault *f)
{
    if (PQstatus(conn) != CONNECTION_OK) {
        fan_fault_from_conn(f, who, label, conn);
        return PGFAN_ECONN;
    }
    if (PQisBusy(conn) || PQtransactionStatus(conn) == PQTRANS_ACTIVE) {
        fan_fault_set(f, who, label, PGFAN_EBUSY,
                      "the connection is busy with another command");
        return PGFAN_EBUSY;
    }
    return PGFAN_OK;
}

int fan_copy_send(PGconn *conn, const char *sql, int who, const char *label,
                  pgfan_fault *f)
{
    int rc = fan_conn_ready(conn, who, label, f);
    if (rc != PGFAN_OK)
        return rc;
    if (!PQsendQuery(conn, sql)) {
        fan_fault_from_conn(f, who, label, conn);
        return PGFAN_ECONN;
    }
    return PGFAN_OK;
}

fan_wait fan_wait_from_options(const pgfan_options *opts)
{
    fan_wait w = {opts->interrupt, opts->start_timeout_ms, opts->realign_timeout_ms};
    return w;
}

/* Polls conn until its answer is complete, the deadline (NULL: none)
 * passes or *interrupt turns nonzero.  Returns 0 when complete, 1 when
 * given up, -1 when the connection broke. */
static int poll_until_ready(PGconn *conn, const struct timespec *deadline,
                            const volatile sig_atomic_t *interrupt)
{
    for (;;) {
        if (!PQconsumeInput(conn))
            return -1;
        if (!PQisBusy(conn))
            return 0;
        if (interrupt && *interrupt)
            return 1;
        long ms = 100; /* a signal's EINTR is seen at once; the flag at worst here */
        if (deadline) {
            long left = fan_ms_until(deadline);
            if (left <= 0)
                return 1;
            if (left < ms)
                ms = left;
        }
        struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
        poll(&pfd, 1, (int)ms);
    }
}

/* After a cancel: reads the answer away, ending a COPY that began anyway. */
static void discard_answer(PGconn *conn)
{
    PGresult *res;
    while ((res = PQgetResult(conn)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        PQclear(res);
        if (st == PGRES_COPY_IN)
            PQputCopyEnd(conn, "pgfan: the copy could not start");
        if (st == PGRES_COPY_OUT || st == PGRES_COPY_IN) {
            fan_drain_results(conn, 0, NULL, NULL);
            return;
        }
        if (PQstatus(conn) == CONNECTION_BAD)
            return;
    }
}

int fan_await_result(PGconn *conn, const fan_wait *w, int who, const char *label,
                     pgfan_fault *f)
{
    struct timespec limit;
    if (w->limit_ms)
        fan_deadline(&limit, w->limit_ms);
    return fan_await_result_until(conn, w, w->limit_ms ? &limit : NULL, who, label, f);
}

int fan_await_result_until(PGconn *conn, const fan_wait *w, const struct timespec *limit,
                           int who, const char *label, pgfan_fault *f)
{
    int got = poll_until_ready(conn, limit, w->interrupt);
    if (got == 0)
        return PGFAN_OK;
    if (got < 0) {
        fan_fault_from_conn(f, who, label, conn);
        return PGFAN_ECONN;
    }
    int interrupted = w->interrupt && *w->interrupt;
    fan_send_cancel(conn);
    struct timespec answer;
    fan_deadline(&answer, w->cancel_ms);
    if (poll_until_ready(conn, &answer, NULL) != 0) {
        fan_fault_set(f, who, label, PGFAN_ECONN,
                      "the server did not answer a cancel within %u ms; the "
                      "connection is still busy and should be closed",
                      w->cancel_ms);
        return PGFAN_ECONN;
    }
    discard_answer(conn);
    if (interrupted) {
        fan_fault_set(f, who, label, PGFAN_EABORTED,
                      "interrupted while waiting for the server to answer");
        return PGFAN_EABORTED;
    }
    fan_fault_set(f, who, label, PGFAN_ESTALL,
                  "the server did not start the COPY within %u ms (is the table "
                  "locked by another session?)",
                  w->limit_ms);
    return PGFAN_ESTALL;
}

int fan_exec_within(PGconn *conn, const char *sql, const fan_wait *w, int who,
                    const char *label, pgfan_fault *f)
{
    pgfan_fault ignored;
    if (!f)
        f = &ignored;
    if (!PQsendQuery(conn, sql)) {
        fan_fault_from_conn(f, who, label, conn);
        return PGFAN_ECONN;
    }
    struct timespec limit, answer;
    if (w->limit_ms)
        fan_deadline(&limit, w->limit_ms);
    int got = poll_until_ready(conn, w->limit_ms ? &limit : NULL, w->interrupt);
    int interrupted = got > 0 && w->interrupt && *w->interrupt;
    if (got > 0) {
        fan_send_cancel(conn);
        fan_deadline(&answer, w->cancel_ms);
        got = poll_until_ready(conn, &answer, NULL);
        if (got > 0) {
            fan_fault_set(f, who, label, PGFAN_ECONN,
                          "the server answered neither %s nor its cancel within %u ms; "
                          "the connection is still busy and should be closed",
                          sql, w->cancel_ms);
            return PGFAN_ECONN;
        }
    }
    if (got < 0) {
        fan_fault_from_conn(f, who, label, conn);
        return PGFAN_ECONN;
    }
    int rc = PGFAN_OK;
    PGresult *res;
    while ((res = PQgetResult(conn)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && rc == PGFAN_OK) {
            fan_fault_from_result(f, who, label, res);
            rc = f->code;
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            if (state && strcmp(state, "57014") == 0) /* query_canceled: ours */
                rc = f->code = interrupted ? PGFAN_EABORTED : PGFAN_ESTALL;
        }
        PQclear(res);
    }
    if (rc == PGFAN_OK && PQstatus(conn) == CONNECTION_BAD) {
        fan_fault_from_conn(f, who, label, conn);
        rc = PGFAN_ECONN;
    }
    return rc;
}

int fan_copy_started(PGconn *conn, ExecStatusType want, const fan_wait *w, int who,
                     const char *label, int *nfields, int *binary, pgfan_fault *f)
{
    int waited = fan_await_result(conn, w, who, label, f);
    if (waited != PGFAN_OK)
        return waited;
    return fan_copy_result(conn, want, who, label, nfields, binary, f);
}

int fan_copy_result(PGconn *conn, ExecStatusType want, int who, const char *label,
                    int *nfields, int *binary, pgfan_fault *f)
{
    PGresult *res = PQgetResult(conn);
    ExecStatusType st = PQresultStatus(res);
    int rc;
    if (st == want) {
        *nfields = PQnfields(res);
        *binary = PQbinaryTuples(res);
        PQclear(res);
        return PGFAN_OK;
    }
    if (st == PGRES_FATAL_ERROR || !res) {
        fan_fault_from_result(f, who, label, res);
        rc = f->code;
    } else {
        fan_fault_set(f, who, label, PGFAN_ENOTCOPY,
                      "the statement did not start %s (got %s)",
                      want == PGRES_COPY_OUT ? "COPY TO STDOUT" : "COPY FROM STDIN",
                      PQresStatus(st));
        rc = PGFAN_ENOTCOPY;
    }
    PQclear(res);
    fan_drain_results(conn, who, label, NULL);
    return rc;
}

pgfan_format fan_copy_format(pgfan_format asked, int binary)
{
    if (binary)
        return PGFAN_FORMAT_BINARY;
    return asked == PGFAN_FORMAT_BINARY ? PGFAN_FORMAT_TEXT : asked;
}

void fan_send_cancel(PGconn *conn)
{
    PGcancel *cancel = PQgetCancel(conn);
    if (cancel) {
        char err[256];
        PQcancel(cancel, err, sizeof err);
        PQfreeCancel(cancel);
    }
}

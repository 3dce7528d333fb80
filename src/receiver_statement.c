/*
 * A statement receiver: COPY ... FROM STDIN on a connection.  Slots go out
 * with PQputCopyData on a non-blocking connection, flushed while poll()ing
 * both the socket and the receiver's waiter, so the manager can always wake
 * it.  Whenever the socket is readable it reads input, so a server that
 * ends the COPY early (bad row, constraint, terminated backend) is noticed
 * while the stream is still running.
 *
 * A server that leaves COPY mode on its own sends its error and stops
 * reading data: the receiver then ends its side of the COPY to collect that
 * error with its SQLSTATE.  On a plain connection the receiver does the
 * COPY's socket work itself (wire.h), so it sees every message as it
 * arrives, an error right behind a notice included.  Over TLS or GSS
 * encryption libpq does it, and libpq parses nothing but notices while in
 * COPY IN: input that is not a notice (told apart by counting them through
 * libpq's default notice receiver) means the server left COPY mode, and an
 * error that arrives in the same read as a notice stays unparsed behind it
 * until the COPY ends.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "copysql.h"
#include "pq.h"
#include "receiver.h"

/* How long to wait for the rest of a notice split across reads. */
#define SPLIT_NOTICE_WAIT_MS 50

/* How long a server may leave CopyFail unanswered before it is also sent a
 * cancel request (at most a quarter of realign_timeout_ms). */
#define CANCEL_AFTER_MS 1000

#define COPY_MESSAGE_MAX FAN_WIRE_MESSAGE_MAX

int pgfan_receiver_new_statement(pgfan_receiver **out, PGconn *conn,
                                 const char *copy_from_sql)
{
    pgfan_format format;
    char err[256], label[128];

    if (!out || !conn || !copy_from_sql)
        return PGFAN_EINVAL;
    *out = NULL;
    if (fan_copysql_check(copy_from_sql, FAN_COPY_FROM_STDIN, &format, err, sizeof err) !=
        0)
        return PGFAN_ENOTCOPY;
    fan_conn_label(conn, label, sizeof label);
    pgfan_receiver *r = fan_receiver_alloc(&fan_statement_receiver, label);
    if (!r || !(r->sql = strdup(copy_from_sql))) {
        free(r);
        return PGFAN_ENOMEM;
    }
    r->conn = conn;
    r->format = format;
    *out = r;
    return PGFAN_OK;
}

static void statement_destroy(pgfan_receiver *r)
{
    free(r->sql);
}

/* ---- start (caller's thread) ---- */

static int statement_send_begin(pgfan_receiver *r, pgfan_fault *f)
{
    return fan_copy_send(r->conn, r->sql, (int)r->index, r->label, f);
}

static int statement_finish_begin(pgfan_receiver *r, pgfan_format source_format,
                                  pgfan_fault *f)
{
    (void)source_format; /* checked against what the server says, by the caller */
    int binary;
    fan_wait w = fan_wait_from_options(&r->shared->opts);
    int rc = fan_copy_started(r->conn, PGRES_COPY_IN, &w, (int)r->index, r->label,
                              &r->nfields, &binary, f);
    if (rc != PGFAN_OK)
        return rc;
    r->in_copy = 1;
    r->format = fan_copy_format(r->format, binary);
    return PGFAN_OK;
}

/* ---- the receiver's thread ---- */

static void conn_fault(pgfan_receiver *r)
{
    pgfan_fault f;
    fan_fault_from_conn(&f, (int)r->index, r->label, r->conn);
    if (PQstatus(r->conn) == CONNECTION_BAD)
        r->in_copy = 0; /* nothing to realign on a dead connection */
    fan_receiver_raise(r, &f);
}

/* libpq's own notice receiver, which ignores its argument and hands the
 * notice to the connection's notice processor. */
static PQnoticeReceiver libpq_default_receiver;
static pthread_once_t default_receiver_once = PTHREAD_ONCE_INIT;

static void find_default_receiver(void)
{
    /* An invalid option makes libpq return a dead connection at once,
     * without any network activity, carrying the default hooks. */
    PGconn *probe = PQconnectStart("pgfan_probe_invalid_option=1");
    if (probe) {
        libpq_default_receiver = PQsetNoticeReceiver(probe, NULL, NULL);
        PQfinish(probe);
    }
}

static void count_notice(void *arg, const PGresult *res)
{
    pgfan_receiver *r = arg;
    fan_receiver_count_add(r, FAN_COUNT_NOTICES, 1);
    r->saved_notice(NULL, res);
}

/*
 * Counting notices tells them apart from an ErrorResponse.  We can forward
 * to libpq's default receiver (it ignores its argument) but not to a custom
 * receiver, whose argument libpq does not return: such connections keep
 * their receiver, and server errors show at the end of the COPY instead.
 */
static void install_notice_counter(pgfan_receiver *r)
{
    pthread_once(&default_receiver_once, find_default_receiver);
    r->saved_notice = PQsetNoticeReceiver(r->conn, NULL, NULL);
    if (r->saved_notice && r->saved_notice == libpq_default_receiver) {
        PQsetNoticeReceiver(r->conn, count_notice, r);
        r->counting_notices = 1;
    }
}

static void remove_notice_counter(pgfan_receiver *r)
{
    if (r->counting_notices)
        PQsetNoticeReceiver(r->conn, r->saved_notice, NULL);
    r->counting_notices = 0;
}

/*
 * A server that does not answer CopyFail soon is not reading its socket:
 * its backend may wait for a lock held elsewhere, which CopyFail cannot
 * end.  A cancel request interrupts the wait, and the COPY then fails with
 * 57014 like any CopyFail.
 */
static void cancel_if_due(pgfan_receiver *r, int *timeout_ms)
{
    if (!r->cancel_pending)
        return;
    long left = fan_ms_until(&r->cancel_at);
    if (left > 0) {
        if (*timeout_ms < 0 || left < *timeout_ms)
            *timeout_ms = (int)left;
        return;
    }
    r->cancel_pending = 0;
    if (r->end_bounded) {
        /* CopyDone's answer is overdue: the cancel now gets its own bound. */
        r->end_cancelled = 1;
        fan_deadline(&r->deadline, r->shared->opts.realign_timeout_ms);
        r->has_deadline = 1;
    }
    fan_send_cancel(r->conn);
}

/* Sleeps on the waiter and, for statement receivers, the socket. */
static void sleep_on(pgfan_receiver *r, short events, int timeout_ms, short *revents)
{
    struct pollfd pfd = {.fd = PQsocket(r->conn), .events = events};
    int n = events ? 1 : 0;
    cancel_if_due(r, &timeout_ms);
    if (r->has_deadline) {
        long left = fan_ms_until(&r->deadline);
        timeout_ms =
            left < 0 ? 0 : (timeout_ms < 0 || left < timeout_ms ? (int)left : timeout_ms);
    }
    fan_waiter_sleep(fan_receiver_waiter(r), &pfd, n, timeout_ms);
    *revents = n ? pfd.revents : 0;
}

static int past_deadline(pgfan_receiver *r)
{
    return r->has_deadline && fan_ms_until(&r->deadline) <= 0;
}

static void timeout_fault(pgfan_receiver *r, pgfan_fault *f)
{
    const pgfan_options *o = &r->shared->opts;
    r->given_up = 1;
    if (r->end_cancelled) {
        fan_fault_set(
            f, (int)r->index, r->label, PGFAN_ESTALL,
            "the COPY did not end within %u ms (the end timeout) and its cancel "
            "went unanswered for %u ms; the connection is still in COPY mode "
            "and should be closed",
            o->end_timeout_ms, o->realign_timeout_ms);
        return;
    }
    fan_fault_set(f, (int)r->index, r->label, PGFAN_ECONN,
                  "the server did not answer within %u ms; the connection is still in "
                  "COPY mode and should be closed",
                  o->realign_timeout_ms);
}

static int end_copy(pgfan_receiver *r, const char *errormsg, pgfan_fault *f, int *got_ok);
static int wire_check(pgfan_receiver *r);

/*
 * The server left COPY mode on its own: end our side with CopyFail so libpq
 * parses what the server sent, and report the server's own error.  Bounded
 * by realign_timeout_ms like any CopyFail.
 */
static void collect_server_error(pgfan_receiver *r)
{
    pgfan_fault f;
    int ok;
    fan_fault_set(&f, (int)r->index, r->label, PGFAN_ESERVER,
                  "the server ended the COPY without an error message");
    end_copy(r, "pgfan: the server ended the COPY", &f, &ok);
    fan_receiver_clear_deadlines(r); /* they were for this CopyFail only */
    fan_receiver_raise(r, &f);
}

/* Waits up to `ms` for the socket alone: a wake-up of our waiter (new
 * slots, a command) is no answer from the server. */
static int socket_readable_within(pgfan_receiver *r, long ms)
{
    struct pollfd pfd = {.fd = PQsocket(r->conn), .events = POLLIN};
    return poll(&pfd, 1, (int)ms) > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR));
}

/*
 * Reads whatever the server sent.  Returns 0 if the COPY is still healthy,
 * -1 after raising a fault.
 *
 * A zero-length PQputCopyData makes libpq parse what arrived: it processes
 * notices and queues notifications for the caller, whose NOTIFYs are not
 * ours to take.
 */
static int check_input(pgfan_receiver *r)
{
    if (r->wire.on)
        return wire_check(r);
    struct timespec split_until;
    int split_wait = 0;
    for (;;) {
        uint64_t before = fan_receiver_count(r, FAN_COUNT_NOTICES);
        if (!PQconsumeInput(r->conn) || PQstatus(r->conn) == CONNECTION_BAD ||
            PQputCopyData(r->conn, "", 0) < 0) {
            conn_fault(r);
            return -1;
        }
        if (fan_receiver_count(r, FAN_COUNT_NOTICES) != before || !r->counting_notices)
            return 0;
        /* Not a notice: either one split across reads, or the server left
         * COPY mode.  Give a split notice SPLIT_NOTICE_WAIT_MS to complete. */
        if (!split_wait) {
            fan_deadline(&split_until, SPLIT_NOTICE_WAIT_MS);
            split_wait = 1;
        }
        long left = fan_ms_until(&split_until);
        if (left <= 0 || !socket_readable_within(r, left)) {
            collect_server_error(r);
            return -1;
        }
    }
}

/* A zero-timeout look at the socket: libpq may swallow write errors, so a
 * closed connection shows only as readable. */
static int socket_readable(pgfan_receiver *r)
{
    struct pollfd pfd = {.fd = PQsocket(r->conn), .events = POLLIN};
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR));
}

/*
 * Flushes libpq's output buffer.  Returns 0 when flushed, 1 when a command
 * interrupted it (only if `interruptible`), -1 after a fault or when the
 * realignment deadline passed.
 */
static int flush_all(pgfan_receiver *r, int interruptible)
{
    for (;;) {
        int rc = PQflush(r->conn);
        if (rc == 0)
            return 0;
        if (rc < 0) {
            conn_fault(r);
            return -1;
        }
        if (interruptible && fan_receiver_interrupted(r))
            return 1;
        if (past_deadline(r))
            return -1;
        short revents;
        sleep_on(r, POLLIN | POLLOUT, -1, &revents);
        if (!(revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        /* While the COPY runs, input means a notice or the server leaving
         * COPY mode; while we end it, it is the server's answer: keep
         * reading so neither side blocks, and let the caller collect it. */
        if (r->in_copy ? check_input(r) != 0 : !PQconsumeInput(r->conn))
            return -1;
    }
}

/* ---- COPY IN on the wire (plain connections; wire.h) ---- */

static int wire_fault(pgfan_receiver *r, const char *what)
{
    pgfan_fault f;
    fan_fault_set(&f, (int)r->index, r->label,
                  errno == ENOMEM ? PGFAN_ENOMEM : PGFAN_ECONN, "%s: %s", what,
                  strerror(errno));
    fan_receiver_raise(r, &f);
    return -1;
}

/* Reads what the server sent and counts its notices (errno kept). */
static int wire_read(pgfan_receiver *r)
{
    uint64_t notices = 0;
    int rc = fan_wire_read(&r->wire, PQsocket(r->conn), &notices);
    int saved = errno;
    fan_receiver_count_add(r, FAN_COUNT_NOTICES, notices);
    errno = saved;
    return rc;
}

/*
 * Reads what the server sent.  Returns 0 if the COPY still runs (libpq got
 * the notices), -1 after raising a fault: the server's own error once it
 * left COPY mode, or what libpq makes of a closed connection.
 */
static int wire_check(pgfan_receiver *r)
{
    int rc = wire_read(r);
    if (r->wire.left_copy) {
        collect_server_error(r);
        return -1;
    }
    if (rc != 0 && errno == ENOMEM)
        return wire_fault(r, "reading the server's messages");
    if (rc != 0) {
        /* Closed or broken: nothing more goes out, libpq reads the rest. */
        fan_wire_hand_over(&r->wire, r->conn, 1);
        fan_wire_stop(&r->wire);
        return check_input(r);
    }
    if (fan_wire_hand_over(&r->wire, r->conn, 0) != 0)
        return wire_fault(r, "handing the server's notices to libpq");
    return 0;
}

/* Leaving a slot with a message half sent: its rest is kept, as the slot
 * may be reused before it goes (a dropped receiver leaves the ring before
 * its CopyFail).  Returns -1 without memory for it. */
static int wire_hold_rest(pgfan_receiver *r)
{
    fan_wire *w = &r->wire;
    const char *data = w->cur;
    w->cur = NULL;
    if (!w->on || !data || w->rest_len ||
        fan_wire_message_end(w->cur_len, r->slot_sent) == r->slot_sent)
        return 0;
    if (fan_wire_keep_rest(w, data, w->cur_len, r->slot_sent) == 0)
        return 0;
    errno = ENOMEM;
    return -1;
}

static int wire_leave_slot(pgfan_receiver *r, int rc)
{
    return wire_hold_rest(r) == 0 ? rc
                                  : wire_fault(r, "keeping a CopyData message half sent");
}

static int wire_deliver(pgfan_receiver *r, const fan_slot *s)
{
    fan_wire *w = &r->wire;
    int fd = PQsocket(r->conn);
    size_t total = fan_wire_length(s->len);
    w->cur = s->data;
    w->cur_len = s->len;
    while (r->slot_sent < total) {
        size_t before = fan_wire_data_sent(s->len, r->slot_sent);
        int rc = w->rest_len ? fan_wire_send_rest(w, fd, &r->slot_sent)
                             : fan_wire_send(fd, s->data, s->len, &r->slot_sent, total);
        /* the manager's stall watch */
        fan_receiver_count_add(r, FAN_COUNT_MOVED,
                               fan_wire_data_sent(s->len, r->slot_sent) - before);
        if (rc == 0)
            continue;
        if (rc < 0) {
            /* The connection broke: libpq reads what the server said. */
            collect_server_error(r);
            return wire_leave_slot(r, -1);
        }
        if (fan_receiver_interrupted(r))
            return wire_leave_slot(r, 1);
        short revents;
        sleep_on(r, POLLIN | POLLOUT, -1, &revents);
        if ((revents & (POLLIN | POLLHUP | POLLERR)) && wire_check(r) != 0)
            return wire_leave_slot(r, -1);
    }
    w->cur = NULL;
    r->slot_sent = 0;
    return 0;
}

/*
 * Ends the receiver's socket work before the COPY's end goes out through
 * libpq: a message half sent is finished first (the server reads messages
 * whole), then libpq gets every byte read.  Returns -1 with `f` set when
 * the message could not be finished (the deadline passed, or no memory to
 * keep it): the connection is then given up.  A broken connection is left
 * for libpq to find.
 */
static int wire_end(pgfan_receiver *r, pgfan_fault *f)
{
    fan_wire *w = &r->wire;
    int fd = PQsocket(r->conn), rc = 0;
    if (wire_hold_rest(r) != 0) {
        r->given_up = 1;
        fan_fault_set(f, (int)r->index, r->label, PGFAN_ENOMEM,
                      "no memory to keep a CopyData message half sent; the "
                      "connection is still in COPY mode and should be closed");
        rc = -1;
    }
    while (rc == 0 && w->rest_len && fan_wire_send_rest(w, fd, &r->slot_sent) == 1) {
        if (past_deadline(r)) {
            timeout_fault(r, f);
            rc = -1;
            break;
        }
        short revents;
        sleep_on(r, POLLIN | POLLOUT, -1, &revents);
        /* Keep reading, so that neither side blocks on the other. */
        if (revents & (POLLIN | POLLHUP | POLLERR))
            wire_read(r);
    }
    wire_read(r);
    fan_wire_hand_over(w, r->conn, 1);
    fan_wire_stop(w);
    /* Notices sent while the server finishes the COPY reach libpq alone. */
    install_notice_counter(r);
    r->slot_sent = 0;
    return rc;
}

/* Hands one slot to the target.  Returns 0, 1 when interrupted by a
 * command, or -1 after a fault. */
static int statement_deliver(pgfan_receiver *r, const fan_slot *s)
{
    if (r->wire.on)
        return wire_deliver(r, s);
    /* An interrupted slot goes on where it stopped: its first pieces are
     * queued already.  The slot stays intact meanwhile, as the cursor still
     * holds it (a receiver that stepped out only comes back if it is). */
    int flushed_for_room = 0;
    /* A non-blocking libpq grows its buffer rather than refuse a message:
     * a slot bigger than a ring slot (a huge row) would be copied whole,
     * once per target, into a slow target's buffer, so such a slot is sent
     * a piece at a time.  Other slots are flushed once, after the slot. */
    int piecewise = s->len > fan_receiver_ring(r)->chunk_bytes;
    while (r->slot_sent < s->len) {
        size_t left = s->len - r->slot_sent;
        size_t n = left < COPY_MESSAGE_MAX ? left : COPY_MESSAGE_MAX;
        int rc = PQputCopyData(r->conn, s->data + r->slot_sent, (int)n);
        if (rc == 1) {
            r->slot_sent += n;
            flushed_for_room = 0;
            fan_receiver_count_add(r, FAN_COUNT_MOVED, n); /* the manager's stall watch */
            if (piecewise && r->slot_sent < s->len && (rc = flush_all(r, 1)) != 0)
                return rc;
            continue;
        }
        if (rc < 0) {
            conn_fault(r);
            return -1;
        }
        /* 0: libpq could not grow its buffer.  Once everything queued is
         * sent, the buffer is as empty as it gets: a second 0 then means
         * no memory, not a full socket. */
        if (flushed_for_room) {
            pgfan_fault f;
            fan_fault_set(&f, (int)r->index, r->label, PGFAN_ENOMEM,
                          "libpq cannot buffer a CopyData message of %zu bytes", n);
            fan_receiver_raise(r, &f);
            return -1;
        }
        if ((rc = flush_all(r, 1)) != 0)
            return rc;
        flushed_for_room = 1;
    }
    r->slot_sent = 0;
    return 0;
}

/* The copy was aborted while the answer to CopyDone is awaited (an
 * interrupt): cancel the statement, and wait no longer than a CopyFail's
 * answer.  The COPY then fails with 57014 and nothing of it commits. */
static void cancel_if_aborted(pgfan_receiver *r)
{
    if (r->has_deadline || fan_receiver_command_of(r) != FAN_CMD_ABORT)
        return;
    fan_deadline(&r->deadline, r->shared->opts.realign_timeout_ms);
    r->has_deadline = 1;
    r->cancel_pending = 0; /* this is the cancel; an end timeout sends no other */
    fan_send_cancel(r->conn);
}

/* A COPY the end timeout cancelled fails with 57014: say why. */
static void name_end_timeout(const pgfan_receiver *r, pgfan_fault *f)
{
    if (!r->end_cancelled || strcmp(f->sqlstate, "57014") != 0)
        return;
    f->code = PGFAN_ESTALL;
    snprintf(f->message, sizeof f->message,
             "the COPY did not end within %u ms (the end timeout) and was cancelled",
             r->shared->opts.end_timeout_ms);
}

/* Waits for the server's answer to CopyDone/CopyFail, never past the
 * deadline.  Keeps the first error in `f`. */
static int collect_results(pgfan_receiver *r, pgfan_fault *f, int *got_ok)
{
    int failed = 0;
    for (;;) {
        while (PQisBusy(r->conn) && PQstatus(r->conn) != CONNECTION_BAD) {
            short revents;
            cancel_if_aborted(r);
            if (past_deadline(r)) {
                timeout_fault(r, f);
                return -1;
            }
            sleep_on(r, POLLIN, -1, &revents);
            if (!PQconsumeInput(r->conn))
                break;
        }
        PGresult *res = PQgetResult(r->conn);
        if (!res)
            return failed ? -1 : 0;
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_COMMAND_OK) {
            r->server_rows = strtoull(PQcmdTuples(res), NULL, 10);
            *got_ok = 1;
        } else if (st == PGRES_COPY_IN) {
            /* CopyFail did not go out yet: send it again. */
            PQputCopyEnd(r->conn, "pgfan: COPY ended by the client");
            flush_all(r, 0);
        } else if (!failed) {
            failed = 1;
            fan_fault_from_result(f, (int)r->index, r->label, res);
            name_end_timeout(r, f);
        }
        PQclear(res);
    }
}

/*
 * Sends CopyDone (errormsg NULL) or CopyFail and reads the results.  The
 * answer to CopyFail is awaited at most realign_timeout_ms; the answer to
 * CopyDone may legitimately take long (end-of-statement triggers, foreign
 * key checks), so it is awaited while the server is alive.
 */
static int end_copy(pgfan_receiver *r, const char *errormsg, pgfan_fault *f, int *got_ok)
{
    *got_ok = 0;
    r->in_copy = 0;
    if (PQstatus(r->conn) == CONNECTION_BAD) {
        fan_fault_from_conn(f, (int)r->index, r->label, r->conn);
        return -1;
    }
    if (errormsg) {
        unsigned int realign = r->shared->opts.realign_timeout_ms;
        fan_deadline(&r->deadline, realign);
        r->has_deadline = 1;
        fan_deadline(&r->cancel_at,
                     realign / 4 < CANCEL_AFTER_MS ? realign / 4 : CANCEL_AFTER_MS);
        r->cancel_pending = 1;
    } else if (r->shared->opts.end_timeout_ms) {
        fan_deadline(&r->cancel_at, r->shared->opts.end_timeout_ms);
        r->cancel_pending = 1;
        r->end_bounded = 1;
    }
    if (r->wire.on && wire_end(r, f) != 0)
        return -1;
    int rc;
    while ((rc = PQputCopyEnd(r->conn, errormsg)) == 0)
        if (flush_all(r, 0) < 0)
            break;
    if (rc <= 0 || flush_all(r, 0) < 0) {
        if (past_deadline(r))
            timeout_fault(r, f);
        else
            fan_fault_from_conn(f, (int)r->index, r->label, r->conn);
        return -1;
    }
    return collect_results(r, f, got_ok);
}

static int statement_complete(pgfan_receiver *r, pgfan_fault *f)
{
    int ok = 0;
    fan_fault_set(f, (int)r->index, r->label, PGFAN_ESERVER,
                  "the server did not confirm the COPY");
    int rc = end_copy(r, NULL, f, &ok) == 0 && ok ? 0 : -1;
    fan_receiver_clear_deadlines(r);
    return rc;
}

/* CopyFail, bounded by realign_timeout_ms; a server that does not answer
 * is reported and its connection given up. */
static void statement_fail(pgfan_receiver *r, const char *reason)
{
    pgfan_fault f;
    int ok;
    if (!r->in_copy)
        return;
    if (end_copy(r, reason, &f, &ok) != 0 && past_deadline(r))
        fan_shared_post_fault(r->shared, &f);
    fan_receiver_clear_deadlines(r);
}

/* While paused, faulted or waiting for the verdict: keep sending what libpq
 * holds, watch the socket, wait for a command. */
static void statement_idle(pgfan_receiver *r, int timeout_ms)
{
    short events = 0, revents;
    if (r->in_copy) {
        events = POLLIN;
        if (PQflush(r->conn) == 1)
            events |= POLLOUT;
    }
    sleep_on(r, events, timeout_ms, &revents);
    /* Input must be read, or poll() reports it again at once: a receiver
     * that has sent everything would spin, and an error arriving while it
     * waits for the others would show only at CopyDone. */
    if (r->in_copy && (revents & (POLLIN | POLLHUP | POLLERR)) &&
        fan_receiver_state(r) != PGFAN_RECEIVER_FAULTED)
        check_input(r);
}

/* Waits for the next slot, watching the socket for server errors. */
static void statement_wait_data(pgfan_receiver *r, uint64_t cursor)
{
    struct pollfd pfd = {.fd = r->in_copy ? PQsocket(r->conn) : -1, .events = POLLIN};
    fan_ring_wait_data(fan_receiver_ring(r), r->index, cursor, &pfd, pfd.fd >= 0 ? 1 : 0,
                       -1);
    if (pfd.fd >= 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)))
        check_input(r);
}

/* Flushing each slot bounds libpq's buffer to about one slot. */
static void statement_after_slot(pgfan_receiver *r)
{
    if (flush_all(r, 1) == 0 && socket_readable(r))
        check_input(r);
}

static void statement_enter(pgfan_receiver *r)
{
    PQsetnonblocking(r->conn, 1);
    r->given_up = 0;
    if (r->in_copy && fan_wire_usable(r->conn))
        fan_wire_start(&r->wire);
    else
        install_notice_counter(r);
}

static void statement_leave(pgfan_receiver *r)
{
    if (!r->conn)
        return; /* let go of after a lost connection */
    if (r->wire.on) {
        fan_wire_hand_over(&r->wire, r->conn, 1);
        fan_wire_stop(&r->wire);
    }
    remove_notice_counter(r);
    /* A given-up connection may hold a message half sent: PQfinish's
     * Terminate must not wait for a server that reads nothing. */
    if (!r->given_up)
        PQsetnonblocking(r->conn, 0);
}

/* A failed start realigns before the thread ran: the same CopyFail path,
 * on a connection made non-blocking for it. */
static void statement_realign(pgfan_receiver *r, const char *reason)
{
    if (!r->in_copy)
        return;
    PQsetnonblocking(r->conn, 1);
    statement_fail(r, reason);
    PQsetnonblocking(r->conn, 0);
}

const fan_receiver_ops fan_statement_receiver = {
    .send_begin = statement_send_begin,
    .finish_begin = statement_finish_begin,
    .enter = statement_enter,
    .leave = statement_leave,
    .deliver = statement_deliver,
    .after_slot = statement_after_slot,
    .wait_data = statement_wait_data,
    .idle = statement_idle,
    .complete = statement_complete,
    .fail = statement_fail,
    .realign = statement_realign,
    .destroy = statement_destroy,
};

/*
 * Receivers: one thread each, draining the ring at their own pace.
 *
 * A statement receiver sends slots with PQputCopyData on a non-blocking
 * connection and flushes while poll()ing both the socket and its waiter, so
 * the manager can always wake it.  Whenever the socket is readable it reads
 * input, so a server that ends the COPY early (bad row, constraint,
 * terminated backend) is noticed while the stream is still running.
 *
 * libpq leaves an ErrorResponse unparsed while in COPY IN; only notices are
 * processed.  During a healthy COPY FROM a server sends nothing but notices
 * (ParameterStatus and NOTIFY wait for ReadyForQuery), so input that is not
 * a notice means the server left COPY mode: the receiver then ends its side
 * of the COPY to collect the server's error with its SQLSTATE.
 */
#include "copysql.h"
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long to wait for the rest of a notice split across reads. */
#define SPLIT_NOTICE_WAIT_MS 50

/* How long a server may leave CopyFail unanswered before it is also sent a
 * cancel request (at most a quarter of realign_timeout_ms). */
#define CANCEL_AFTER_MS 1000

/*
 * The largest CopyData message we send; a slot goes out in pieces of at
 * most this (COPY data is a byte stream, messages need not end at rows).
 * The server reads a whole message before it parses any of it, into a
 * 64 KiB COPY input buffer: bigger messages make it wait longer and copy
 * more.  Measured against 128 KiB messages (3 targets, text): the servers
 * used less CPU and the copy finished sooner in 7 of 7 paired runs.
 */
#define COPY_MESSAGE_MAX 65536

int pgfan_receiver_new_statement(pgfan_receiver **out, PGconn *conn,
                                 const char *copy_from_sql)
{
    pgfan_format format;
    char err[256];

    if (!out || !conn || !copy_from_sql)
        return PGFAN_EINVAL;
    *out = NULL;
    if (fan_copysql_check(copy_from_sql, FAN_COPY_FROM_STDIN, &format, err, sizeof err) !=
        0)
        return PGFAN_ENOTCOPY;
    pgfan_receiver *r = calloc(1, sizeof *r);
    if (!r || !(r->sql = strdup(copy_from_sql))) {
        free(r);
        return PGFAN_ENOMEM;
    }
    r->kind = FAN_RECEIVER_STATEMENT;
    r->conn = conn;
    r->format = format;
    r->nfields = -1;
    fan_conn_label(conn, r->label, sizeof r->label);
    *out = r;
    return PGFAN_OK;
}

int pgfan_receiver_new_call(pgfan_receiver **out, pgfan_call_fn fn, void *arg)
{
    if (!out || !fn)
        return PGFAN_EINVAL;
    *out = NULL;
    pgfan_receiver *r = calloc(1, sizeof *r);
    if (!r)
        return PGFAN_ENOMEM;
    r->kind = FAN_RECEIVER_CALL;
    r->call = fn;
    r->call_arg = arg;
    r->nfields = -1;
    snprintf(r->label, sizeof r->label, "call");
    *out = r;
    return PGFAN_OK;
}

int pgfan_receiver_set_label(pgfan_receiver *r, const char *label)
{
    if (!r || !label)
        return PGFAN_EINVAL;
    if (r->manager && r->manager->phase != FAN_PHASE_NEW)
        return PGFAN_ESTATE;
    snprintf(r->label, sizeof r->label, "%s", label);
    return PGFAN_OK;
}

void pgfan_receiver_free(pgfan_receiver *r)
{
    if (!r)
        return;
    free(r->sql);
    free(r);
}

/* ---- start (caller's thread) ---- */

int fan_receiver_send_begin(pgfan_receiver *r, pgfan_fault *f)
{
    if (r->kind != FAN_RECEIVER_STATEMENT)
        return PGFAN_OK;
    int rc = fan_conn_ready(r->conn, f, (int)r->index, r->label);
    if (rc != PGFAN_OK)
        return rc;
    if (!PQsendQuery(r->conn, r->sql)) {
        fan_fault_from_conn(f, (int)r->index, r->conn, r->label);
        return PGFAN_ECONN;
    }
    return PGFAN_OK;
}

static int check_agreement(pgfan_receiver *r, const pgfan_producer *p, pgfan_fault *f)
{
    pgfan_format want = r->kind == FAN_RECEIVER_CALL ? p->format : r->format;
    if (want != p->format) {
        fan_fault_set(
            f, (int)r->index, PGFAN_EFORMAT,
            "%s: format mismatch: the source sends %s but this target expects %s",
            r->label, pgfan_format_name(p->format), pgfan_format_name(want));
        return PGFAN_EFORMAT;
    }
    if (r->nfields >= 0 && p->nfields >= 0 && r->nfields != p->nfields) {
        fan_fault_set(f, (int)r->index, PGFAN_EFORMAT,
                      "%s: column count mismatch: the source sends %d columns but this "
                      "target expects %d",
                      r->label, p->nfields, r->nfields);
        return PGFAN_EFORMAT;
    }
    r->format = p->format;
    return PGFAN_OK;
}

/* Collects the result of the COPY FROM statement and checks it fits. */
int fan_receiver_finish_begin(pgfan_receiver *r, const pgfan_producer *p, pgfan_fault *f)
{
    if (r->kind != FAN_RECEIVER_STATEMENT)
        return check_agreement(r, p, f);
    PGresult *res = PQgetResult(r->conn);
    ExecStatusType st = PQresultStatus(res);
    int rc;
    if (st == PGRES_COPY_IN) {
        r->in_copy = 1;
        r->nfields = PQnfields(res);
        if (PQbinaryTuples(res))
            r->format = PGFAN_FORMAT_BINARY;
        else if (r->format == PGFAN_FORMAT_BINARY)
            r->format = PGFAN_FORMAT_TEXT;
        PQclear(res);
        return check_agreement(r, p, f);
    }
    if (st == PGRES_FATAL_ERROR || !res) {
        fan_fault_from_result(f, (int)r->index, res, r->label);
        rc = f->code;
    } else {
        fan_fault_set(f, (int)r->index, PGFAN_ENOTCOPY,
                      "%s: the statement did not start COPY FROM STDIN (got %s)",
                      r->label, PQresStatus(st));
        rc = PGFAN_ENOTCOPY;
    }
    PQclear(res);
    fan_drain_results(r->conn, NULL, (int)r->index, r->label);
    return rc;
}

void fan_receiver_command(pgfan_receiver *r, enum fan_command cmd)
{
    /* seq_cst store, then kick: the thread re-reads commands after waking. */
    atomic_store(&r->command, cmd);
    fan_ring_kick_reader(&r->manager->ring, r->index);
}

/* ---- the receiver thread ---- */

static fan_ring *ring_of(pgfan_receiver *r)
{
    return &r->manager->ring;
}

static enum fan_command command_of(pgfan_receiver *r)
{
    return (enum fan_command)atomic_load(&r->command);
}

static void set_state(pgfan_receiver *r, pgfan_receiver_state s)
{
    if (fan_state_is_final(s))
        fan_now(&r->ended_at); /* published by the seq_cst store below */
    atomic_store(&r->state, (int)s);
}

static int state_of(pgfan_receiver *r)
{
    return atomic_load(&r->state);
}

/* Reports a fault; the receiver waits in `state` for the manager. */
static void raise_fault_in(pgfan_receiver *r, pgfan_fault *f, pgfan_receiver_state state)
{
    f->bytes = atomic_load_explicit(&r->bytes, memory_order_relaxed);
    f->rows = atomic_load_explicit(&r->rows, memory_order_relaxed);
    set_state(r, state);
    fan_manager_post_fault(r->manager, f);
}

static void raise_fault(pgfan_receiver *r, pgfan_fault *f)
{
    raise_fault_in(r, f, PGFAN_RECEIVER_FAULTED);
}

static void conn_fault(pgfan_receiver *r)
{
    pgfan_fault f;
    fan_fault_from_conn(&f, (int)r->index, r->conn, r->label);
    if (PQstatus(r->conn) == CONNECTION_BAD)
        r->in_copy = 0; /* nothing to realign on a dead connection */
    raise_fault(r, &f);
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
    /* Relaxed: only this thread writes; the manager reads a count. */
    atomic_fetch_add_explicit(&r->notices, 1, memory_order_relaxed);
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
    PGcancel *cancel = PQgetCancel(r->conn);
    if (cancel) {
        char err[256];
        PQcancel(cancel, err, sizeof err);
        PQfreeCancel(cancel);
    }
}

/* Sleeps on the waiter and, for statement receivers, the socket. */
static void sleep_on(pgfan_receiver *r, short events, int timeout_ms, short *revents)
{
    struct pollfd pfd = {.fd = r->kind == FAN_RECEIVER_STATEMENT ? PQsocket(r->conn) : -1,
                         .events = events};
    int n = r->kind == FAN_RECEIVER_STATEMENT && events ? 1 : 0;
    cancel_if_due(r, &timeout_ms);
    if (r->has_deadline) {
        long left = fan_ms_until(&r->deadline);
        timeout_ms =
            left < 0 ? 0 : (timeout_ms < 0 || left < timeout_ms ? (int)left : timeout_ms);
    }
    fan_waiter_sleep(&ring_of(r)->readers[r->index].waiter, &pfd, n, timeout_ms);
    *revents = n ? pfd.revents : 0;
}

static int past_deadline(pgfan_receiver *r)
{
    return r->has_deadline && fan_ms_until(&r->deadline) <= 0;
}

static void timeout_fault(pgfan_receiver *r, pgfan_fault *f)
{
    fan_fault_set(
        f, (int)r->index, PGFAN_ECONN,
        "%s: the server did not answer within %u ms; the connection is still in "
        "COPY mode and should be closed",
        r->label, r->manager->opts.realign_timeout_ms);
}

static int end_copy(pgfan_receiver *r, const char *errormsg, pgfan_fault *f, int *got_ok);

/*
 * The server left COPY mode on its own: end our side with CopyFail so libpq
 * parses what the server sent, and report the server's own error.  Bounded
 * by realign_timeout_ms like any CopyFail.
 */
static void collect_server_error(pgfan_receiver *r)
{
    pgfan_fault f;
    int ok;
    fan_fault_set(&f, (int)r->index, PGFAN_ESERVER,
                  "%s: the server ended the COPY without an error message", r->label);
    end_copy(r, "pgfan: the server ended the COPY", &f, &ok);
    r->has_deadline = 0; /* the deadline was for this CopyFail only */
    r->cancel_pending = 0;
    raise_fault(r, &f);
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
    struct timespec split_until;
    int split_wait = 0;
    for (;;) {
        uint64_t before = atomic_load_explicit(&r->notices, memory_order_relaxed);
        if (!PQconsumeInput(r->conn) || PQstatus(r->conn) == CONNECTION_BAD ||
            PQputCopyData(r->conn, "", 0) < 0) {
            conn_fault(r);
            return -1;
        }
        if (atomic_load_explicit(&r->notices, memory_order_relaxed) != before ||
            !r->counting_notices)
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

static int interrupting(enum fan_command cmd)
{
    return cmd == FAN_CMD_ABORT || cmd == FAN_CMD_DROP || cmd == FAN_CMD_PAUSE ||
           cmd == FAN_CMD_STALL;
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
        if (interruptible && interrupting(command_of(r)))
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

/* Hands one slot to the target.  Returns 0, 1 when interrupted by a
 * command, or -1 after a fault. */
static int deliver(pgfan_receiver *r, const fan_slot *s)
{
    if (r->kind == FAN_RECEIVER_CALL) {
        int rc = r->call(r->call_arg, s->data, s->len);
        if (rc != 0) {
            pgfan_fault f;
            fan_fault_set(&f, (int)r->index, PGFAN_ECALLBACK,
                          "%s: the receiver callback failed (%d)", r->label, rc);
            f.reconcilable = 1; /* the slot is still ours: it can be retried */
            raise_fault(r, &f);
            return -1;
        }
        atomic_fetch_add_explicit(&r->moved, s->len, memory_order_relaxed);
        return 0;
    }
    /* An interrupted slot goes on where it stopped: its first pieces are
     * queued already.  The slot stays intact meanwhile, as the cursor still
     * holds it (a receiver that stepped out only comes back if it is). */
    int flushed_for_room = 0;
    while (r->slot_sent < s->len) {
        size_t left = s->len - r->slot_sent;
        size_t n = left < COPY_MESSAGE_MAX ? left : COPY_MESSAGE_MAX;
        int rc = PQputCopyData(r->conn, s->data + r->slot_sent, (int)n);
        if (rc == 1) {
            r->slot_sent += n;
            flushed_for_room = 0;
            /* Relaxed: a progress count the manager reads for stalls. */
            atomic_fetch_add_explicit(&r->moved, n, memory_order_relaxed);
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
            fan_fault_set(&f, (int)r->index, PGFAN_ENOMEM,
                          "%s: libpq cannot buffer a CopyData message of %zu bytes",
                          r->label, n);
            raise_fault(r, &f);
            return -1;
        }
        if ((rc = flush_all(r, 1)) != 0)
            return rc;
        flushed_for_room = 1;
    }
    r->slot_sent = 0;
    return 0;
}

static void add_progress(pgfan_receiver *r, const fan_slot *s)
{
    atomic_fetch_add_explicit(&r->bytes, s->len, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->rows, s->rows, memory_order_relaxed);
}

/* Waits for the server's answer to CopyDone/CopyFail, never past the
 * deadline.  Keeps the first error in `f`. */
static int collect_results(pgfan_receiver *r, pgfan_fault *f, int *got_ok)
{
    int failed = 0;
    for (;;) {
        while (PQisBusy(r->conn) && PQstatus(r->conn) != CONNECTION_BAD) {
            short revents;
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
            fan_fault_from_result(f, (int)r->index, res, r->label);
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
        fan_fault_from_conn(f, (int)r->index, r->conn, r->label);
        return -1;
    }
    if (errormsg) {
        unsigned int realign = r->manager->opts.realign_timeout_ms;
        fan_deadline(&r->deadline, realign);
        r->has_deadline = 1;
        fan_deadline(&r->cancel_at,
                     realign / 4 < CANCEL_AFTER_MS ? realign / 4 : CANCEL_AFTER_MS);
        r->cancel_pending = 1;
    }
    int rc;
    while ((rc = PQputCopyEnd(r->conn, errormsg)) == 0)
        if (flush_all(r, 0) < 0)
            break;
    if (rc <= 0 || flush_all(r, 0) < 0) {
        if (past_deadline(r))
            timeout_fault(r, f);
        else
            fan_fault_from_conn(f, (int)r->index, r->conn, r->label);
        return -1;
    }
    return collect_results(r, f, got_ok);
}

/* CopyDone, then check the server's row count against the producer's. */
static void complete(pgfan_receiver *r)
{
    pgfan_fault f;
    int ok = 0;
    if (r->kind == FAN_RECEIVER_CALL) {
        set_state(r, PGFAN_RECEIVER_DONE);
        return;
    }
    fan_fault_set(&f, (int)r->index, PGFAN_ESERVER,
                  "%s: the server did not confirm the COPY", r->label);
    if (end_copy(r, NULL, &f, &ok) != 0 || !ok) {
        raise_fault(r, &f);
        set_state(r, PGFAN_RECEIVER_FAILED);
        return;
    }
    uint64_t want = r->manager->producer->final_rows;
    atomic_store_explicit(&r->rows, r->server_rows, memory_order_relaxed);
    if (r->server_rows != want) {
        fan_fault_set(&f, (int)r->index, PGFAN_EROWCOUNT,
                      "%s: the target stored %llu rows but the source sent %llu",
                      r->label, (unsigned long long)r->server_rows,
                      (unsigned long long)want);
        raise_fault(r, &f);
        set_state(r, PGFAN_RECEIVER_FAILED);
        return;
    }
    set_state(r, PGFAN_RECEIVER_DONE);
}

/* CopyFail with the reason; the connection ends up idle. */
static void fail_copy(pgfan_receiver *r, pgfan_receiver_state final)
{
    if (r->kind == FAN_RECEIVER_STATEMENT && r->in_copy) {
        pgfan_fault f;
        int ok;
        /* The manager wrote its reason before the seq_cst store of the
         * command we acted on. */
        const char *reason = final == PGFAN_RECEIVER_DROPPED
                                 ? "pgfan: target dropped after a fault"
                                 : r->manager->reason;
        if (end_copy(r, reason, &f, &ok) != 0 && past_deadline(r))
            fan_manager_post_fault(r->manager, &f);
    }
    set_state(r, final);
}

/* Leaves the gating set at a point where no slot is held. */
static void step_out(pgfan_receiver *r, enum fan_command why)
{
    fan_ring_leave(ring_of(r), r->index);
    if (why == FAN_CMD_STALL) {
        pgfan_fault f;
        fan_fault_set(&f, (int)r->index, PGFAN_ESTALL,
                      "%s: the target held the copy back longer than %u ms", r->label,
                      r->manager->opts.stall_timeout_ms);
        f.reconcilable = 1;
        raise_fault_in(r, &f, PGFAN_RECEIVER_PAUSED);
    } else {
        set_state(r, PGFAN_RECEIVER_PAUSED);
    }
}

/*
 * Back to work after a pause or fault.  The manager re-joins a receiver
 * that had stepped out, but a RESUME can overtake a PAUSE we were still
 * acting on: then we re-join ourselves (we hold no slot here), or report
 * that our data has left the ring.
 */
static void resume(pgfan_receiver *r)
{
    int expect = FAN_CMD_RESUME;
    if (!atomic_compare_exchange_strong(&r->command, &expect, FAN_CMD_NONE))
        return; /* overtaken by abort or drop */
    if (!fan_ring_is_gating(ring_of(r), r->index) &&
        fan_ring_join(ring_of(r), r->index) != 0) {
        pgfan_fault f;
        fan_fault_set(&f, (int)r->index, PGFAN_EGONE,
                      "%s: paused until its data left the ring", r->label);
        raise_fault(r, &f);
        return;
    }
    set_state(r, PGFAN_RECEIVER_ACTIVE);
}

/* While faulted or paused: keep sending what libpq holds, watch the socket,
 * wait for a command. */
static void idle(pgfan_receiver *r)
{
    short events = 0, revents;
    if (r->kind == FAN_RECEIVER_STATEMENT && r->in_copy) {
        events = POLLIN;
        if (PQflush(r->conn) == 1)
            events |= POLLOUT;
    }
    sleep_on(r, events, -1, &revents);
    /* Input must be read, or poll() reports it again at once: a receiver
     * that has sent everything would spin, and an error arriving while it
     * waits for the others would show only at CopyDone. */
    if (r->in_copy && (revents & (POLLIN | POLLHUP | POLLERR)) &&
        state_of(r) != PGFAN_RECEIVER_FAULTED)
        check_input(r);
}

/* Waits for the next slot, watching the socket for server errors. */
static void wait_for_data(pgfan_receiver *r, uint64_t cursor)
{
    fan_ring *ring = ring_of(r);
    struct pollfd pfd = {
        .fd = r->kind == FAN_RECEIVER_STATEMENT && r->in_copy ? PQsocket(r->conn) : -1,
        .events = POLLIN};
    fan_ring_wait_data(ring, r->index, cursor, &pfd, pfd.fd >= 0 ? 1 : 0, -1);
    if (pfd.fd >= 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)))
        check_input(r);
}

/* Drains the ring until a command ends the copy for this receiver. */
static enum fan_command pump(pgfan_receiver *r)
{
    fan_ring *ring = ring_of(r);
    for (;;) {
        enum fan_command cmd = command_of(r);
        int state = state_of(r);
        uint64_t cursor = fan_ring_cursor(ring, r->index);
        if (cmd == FAN_CMD_ABORT || cmd == FAN_CMD_DROP)
            return cmd;
        if (cmd == FAN_CMD_COMMIT && atomic_load(&r->drained))
            return cmd;
        if ((cmd == FAN_CMD_PAUSE || cmd == FAN_CMD_STALL) &&
            state == PGFAN_RECEIVER_ACTIVE) {
            step_out(r, cmd);
            continue;
        }
        if (cmd == FAN_CMD_RESUME) {
            resume(r);
            continue;
        }
        if (state != PGFAN_RECEIVER_ACTIVE) {
            idle(r);
            continue;
        }
        /* State before head: a head read after seeing ENDED is final. */
        int ring_state = fan_ring_state(ring);
        if (cursor != fan_ring_head(ring)) {
            const fan_slot *s = fan_ring_slot(ring, cursor);
            if (deliver(r, s) != 0)
                continue;
            add_progress(r, s);
            fan_ring_release(ring, r->index, cursor + 1);
            /* Flushing each slot bounds libpq's buffer to about one slot. */
            if (r->kind == FAN_RECEIVER_STATEMENT && flush_all(r, 1) == 0 &&
                socket_readable(r))
                check_input(r);
            continue;
        }
        if (ring_state == FAN_RING_ENDED) {
            /* seq_cst, read by the manager's evaluate() before it gives
             * the COMMIT verdict: every slot up to the final head is sent. */
            if (!atomic_exchange(&r->drained, 1))
                fan_manager_poke(r->manager);
            idle(r);
            continue;
        }
        if (ring_state == FAN_RING_FAILED) {
            idle(r);
            continue;
        }
        wait_for_data(r, cursor);
    }
}

void *fan_receiver_main(void *arg)
{
    pgfan_receiver *r = arg;
    if (r->kind == FAN_RECEIVER_STATEMENT) {
        PQsetnonblocking(r->conn, 1);
        install_notice_counter(r);
    }
    set_state(r, PGFAN_RECEIVER_ACTIVE);
    enum fan_command cmd = pump(r);
    if (cmd == FAN_CMD_COMMIT) {
        complete(r);
    } else {
        /* It reads no slot again: the others need not wait for its
         * CopyFail to be answered. */
        if (fan_ring_is_gating(ring_of(r), r->index))
            fan_ring_leave(ring_of(r), r->index);
        fail_copy(r,
                  cmd == FAN_CMD_DROP ? PGFAN_RECEIVER_DROPPED : PGFAN_RECEIVER_FAILED);
    }
    if (fan_ring_is_gating(ring_of(r), r->index))
        fan_ring_leave(ring_of(r), r->index);
    if (r->kind == FAN_RECEIVER_STATEMENT) {
        remove_notice_counter(r);
        PQsetnonblocking(r->conn, 0);
    }
    /* seq_cst: the manager sees `exited` only after we stopped using conn. */
    atomic_store(&r->exited, 1);
    fan_manager_poke(r->manager);
    return NULL;
}

/*
 * Realignment before the receiver's thread runs (a failed start): the same
 * CopyFail path as the thread's, so it is bounded by realign_timeout_ms too.
 */
void fan_receiver_realign(pgfan_receiver *r, const char *reason)
{
    if (r->kind != FAN_RECEIVER_STATEMENT || !r->in_copy)
        return;
    pgfan_fault f;
    int ok;
    PQsetnonblocking(r->conn, 1);
    if (end_copy(r, reason, &f, &ok) != 0 && past_deadline(r))
        fan_manager_post_fault(r->manager, &f);
    r->has_deadline = 0;
    r->cancel_pending = 0;
    PQsetnonblocking(r->conn, 0);
}

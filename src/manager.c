/*
 * The manager: owns the producer, the receivers and the shared object, and
 * runs in the caller's thread.  It never touches the data path and never
 * writes a producer's or receiver's fields: it commands them through their
 * modules, reads what they publish, collects faults, applies the policy
 * and decides, once, whether the copy commits (only in finish()) or fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "pq.h"
#include "producer.h"
#include "receiver.h"
#include "settings.h"
#include "shared.h"

enum fan_phase { FAN_PHASE_NEW, FAN_PHASE_STARTED, FAN_PHASE_FINISHED };

/* The manager's own bookkeeping per receiver (its thread only). */
typedef struct receiver_watch {
    struct timespec stalled_since;
    uint64_t stalled_at; /* the `moved` count that has not changed since then */
    int stalling;
    struct timespec hold_until; /* a reconcilable fault waits until then */
    int holding;
    int done_reported; /* complete_early: PGFAN_EVENT_RECEIVER_DONE given */
    PGconn *conn;      /* the connection it uses (changed by a retry) */
} receiver_watch;

struct pgfan_manager {
    fan_shared shared;
    pgfan_producer *producer;
    pgfan_receiver **receivers;
    receiver_watch *watch;
    size_t nreceivers, receivers_cap;
    enum fan_phase phase;
    struct timespec started_at, finished_at;
    size_t faults_reported;
    int end_reported;
    int commit_interrupted;
    int failure; /* the status finish() returns */
};

int pgfan_manager_new(pgfan_manager **out, pgfan_producer *producer,
                      const pgfan_options *opts)
{
    pgfan_options o;
    if (!out || !producer || fan_producer_is_attached(producer))
        return PGFAN_EINVAL;
    *out = NULL;
    if (opts)
        o = *opts;
    else
        pgfan_options_init(&o);
    if (o.ring_slots < 2 || (o.ring_slots & (o.ring_slots - 1)) != 0 ||
        o.chunk_bytes < 4096 || o.chunk_bytes > (size_t)1 << 30)
        return PGFAN_EINVAL;
    if (o.complete_early && o.policy != PGFAN_POLICY_DROP)
        return PGFAN_EINVAL; /* under abort, everyone commits or nobody */
    if (o.retries && !o.spill_limit)
        return PGFAN_EINVAL; /* a reload replays the journal */
    if (o.progress_ms == 0)
        o.progress_ms = 100;
    pgfan_manager *m = calloc(1, sizeof *m);
    if (!m)
        return PGFAN_ENOMEM;
    if (fan_shared_init(&m->shared, &o) != 0) {
        free(m);
        return PGFAN_ESYSTEM;
    }
    m->producer = producer;
    fan_producer_attach(producer, &m->shared);
    *out = m;
    return PGFAN_OK;
}

/* Whether the source or a receiver other than `except` runs on `conn`. */
static int uses_conn(const pgfan_manager *m, PGconn *conn, size_t except)
{
    if (conn == fan_producer_conn(m->producer))
        return 1;
    for (size_t i = 0; i < m->nreceivers; i++)
        if (i != except && m->watch[i].conn == conn)
            return 1;
    return 0;
}

int pgfan_manager_add_receiver(pgfan_manager *m, pgfan_receiver *r, size_t *index)
{
    if (!m || !r || fan_receiver_is_attached(r))
        return PGFAN_EINVAL;
    if (m->phase != FAN_PHASE_NEW)
        return PGFAN_ESTATE;
    PGconn *conn = fan_receiver_conn(r);
    if (conn && uses_conn(m, conn, m->nreceivers))
        return PGFAN_EINVAL; /* one connection cannot run two COPYs */
    if (m->nreceivers == m->receivers_cap) {
        size_t cap = m->receivers_cap ? m->receivers_cap * 2 : 4;
        pgfan_receiver **p = realloc(m->receivers, cap * sizeof *p);
        receiver_watch *w = p ? realloc(m->watch, cap * sizeof *w) : NULL;
        if (p)
            m->receivers = p;
        if (!w)
            return PGFAN_ENOMEM;
        m->watch = w;
        m->receivers_cap = cap;
    }
    memset(&m->watch[m->nreceivers], 0, sizeof *m->watch);
    m->watch[m->nreceivers].conn = conn;
    fan_receiver_attach(r, m->nreceivers, &m->shared);
    m->receivers[m->nreceivers++] = r;
    if (index)
        *index = m->nreceivers - 1;
    return PGFAN_OK;
}

/* ---- start ---- */

static void realign_all(pgfan_manager *m, const char *reason)
{
    for (size_t i = 0; i < m->nreceivers; i++)
        fan_receiver_realign(m->receivers[i], reason);
    fan_producer_realign(m->producer);
}

/* Reads a session's settings; a connection that cannot answer now is left
 * for the start of its COPY to report.  Returns 0, 1 when skipped, or -1
 * with the server's error in `f`. */
static int read_settings(const pgfan_manager *m, PGconn *conn, int textual,
                         fan_session_settings *s, int who, const char *label,
                         pgfan_fault *f)
{
    PGTransactionStatusType tx = PQtransactionStatus(conn);
    if (PQstatus(conn) != CONNECTION_OK || PQisBusy(conn) ||
        (tx != PQTRANS_IDLE && tx != PQTRANS_INTRANS))
        return 1;
    fan_wait w = fan_wait_from_options(&m->shared.opts);
    return fan_settings_read(conn, textual, &w, who, label, s, f) == PGFAN_OK ? 0 : -1;
}

/*
 * Refuses, before any COPY starts, a source and targets whose session
 * settings would change values on the way (settings.h), naming the
 * setting, both values and the party.
 */
static int check_settings(pgfan_manager *m, pgfan_fault *f)
{
    PGconn *source = fan_producer_conn(m->producer);
    fan_session_settings src, dst;
    char why[400];
    if (m->shared.opts.trust_session_settings || !source)
        return PGFAN_OK;
    int textual = fan_producer_format(m->producer) != PGFAN_FORMAT_BINARY;
    int rc = read_settings(m, source, textual, &src, PGFAN_PRODUCER_INDEX,
                           FAN_SOURCE_LABEL, f);
    if (rc != 0)
        return rc < 0 ? f->code : PGFAN_OK;
    if (fan_settings_check_source(&src, textual, why, sizeof why) != 0) {
        fan_fault_set(f, PGFAN_PRODUCER_INDEX, FAN_SOURCE_LABEL, PGFAN_ESETTINGS, "%s",
                      why);
        return PGFAN_ESETTINGS;
    }
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        PGconn *conn = fan_receiver_conn(r);
        if (!conn)
            continue;
        rc = read_settings(m, conn, textual, &dst, (int)i, fan_receiver_label(r), f);
        if (rc < 0)
            return f->code;
        if (rc == 0 && fan_settings_compare(&src, &dst, textual, why, sizeof why) != 0) {
            fan_fault_set(f, (int)i, fan_receiver_label(r), PGFAN_ESETTINGS, "%s", why);
            return PGFAN_ESETTINGS;
        }
    }
    return PGFAN_OK;
}

static int begin_copies(pgfan_manager *m)
{
    pgfan_fault f;
    int rc = check_settings(m, &f);
    if (rc != PGFAN_OK) {
        fan_shared_post_fault(&m->shared, &f);
        return rc;
    }
    rc = fan_producer_begin(m->producer, &f);
    size_t sent = 0;
    if (rc == PGFAN_OK)
        for (; sent < m->nreceivers; sent++)
            if ((rc = fan_receiver_send_begin(m->receivers[sent], &f)) != PGFAN_OK)
                break;
    /* Collect every answer, also after a failure, so no result is left. */
    for (size_t i = 0; i < sent; i++) {
        pgfan_fault g;
        int r2 =
            fan_receiver_finish_begin(m->receivers[i], fan_producer_format(m->producer),
                                      fan_producer_nfields(m->producer), &g);
        if (r2 != PGFAN_OK && rc == PGFAN_OK) {
            rc = r2;
            f = g;
        }
    }
    if (rc != PGFAN_OK) {
        fan_shared_post_fault(&m->shared, &f);
        realign_all(m, "pgfan: the copy could not start");
    }
    return rc;
}

/* Threads that could not be created count as ended, so ending waits only
 * for those that run; their connections are realigned by the caller. */
static int start_threads(pgfan_manager *m)
{
    int rc = PGFAN_OK;
    for (size_t i = 0; i < m->nreceivers; i++) {
        if (rc == PGFAN_OK && (rc = fan_receiver_start(m->receivers[i])) == PGFAN_OK)
            continue;
        fan_receiver_mark_failed(m->receivers[i]);
    }
    if (rc == PGFAN_OK && fan_producer_start(m->producer) == PGFAN_OK)
        return PGFAN_OK;
    fan_ring_close(&m->shared.ring, FAN_RING_FAILED);
    return PGFAN_ESYSTEM;
}

static void join_threads(pgfan_manager *m)
{
    for (size_t i = 0; i < m->nreceivers; i++)
        fan_receiver_join(m->receivers[i]);
    fan_producer_join(m->producer);
}

static void give_verdict(pgfan_manager *m, enum fan_verdict v, int failure,
                         const char *reason);

int pgfan_manager_start(pgfan_manager *m)
{
    if (!m)
        return PGFAN_EINVAL;
    if (m->phase != FAN_PHASE_NEW)
        return PGFAN_ESTATE;
    if (m->nreceivers == 0)
        return PGFAN_ENORECEIVERS;
    int rc = fan_shared_start(&m->shared, m->nreceivers);
    if (rc != PGFAN_OK)
        return rc;
    fan_now(&m->started_at);
    rc = begin_copies(m);
    if (rc != PGFAN_OK) {
        for (size_t i = 0; i < m->nreceivers; i++)
            fan_receiver_mark_failed(m->receivers[i]);
        m->failure = rc;
        m->phase = FAN_PHASE_FINISHED;
        fan_now(&m->finished_at);
        return rc;
    }
    m->phase = FAN_PHASE_STARTED;
    rc = start_threads(m);
    if (rc != PGFAN_OK) {
        give_verdict(m, FAN_VERDICT_ABORT, rc, "pgfan: could not start threads");
        pgfan_manager_finish(m);
        /* Threads that never ran leave their connections to us. */
        realign_all(m, "pgfan: could not start threads");
        m->failure = rc;
    }
    return rc;
}

/* ---- the manager's cycle ---- */

/* Decides the copy's fate once and tells every thread.  Later calls are
 * ignored. */
/* Every receiver not dropped gets `cmd` (a dropped one keeps its own). */
static void command_all_kept(pgfan_manager *m, enum fan_command cmd)
{
    for (size_t i = 0; i < m->nreceivers; i++)
        if (fan_receiver_command_of(m->receivers[i]) != FAN_CMD_DROP)
            fan_receiver_command(m->receivers[i], cmd);
}

static void give_verdict(pgfan_manager *m, enum fan_verdict v, int failure,
                         const char *reason)
{
    if (!fan_shared_decide(&m->shared, v, reason))
        return;
    if (v == FAN_VERDICT_ABORT)
        m->failure = failure;
    command_all_kept(m, v == FAN_VERDICT_COMMIT ? FAN_CMD_COMMIT : FAN_CMD_ABORT);
    if (v == FAN_VERDICT_ABORT)
        fan_ring_stop(&m->shared.ring); /* the producer sees the verdict */
}

/* What an unresolved receiver fault does: drop it, or fail the copy. */
static void settle_receiver_fault(pgfan_manager *m, size_t i)
{
    char reason[PGFAN_MESSAGE_MAX];
    m->watch[i].holding = 0;
    if (fan_shared_verdict(&m->shared) != FAN_VERDICT_NONE)
        return;
    if (m->shared.opts.policy == PGFAN_POLICY_DROP) {
        fan_receiver_command(m->receivers[i], FAN_CMD_DROP);
        return;
    }
    snprintf(reason, sizeof reason, "pgfan: target %zu (%s) failed", i,
             fan_receiver_label(m->receivers[i]));
    give_verdict(m, FAN_VERDICT_ABORT, PGFAN_ERECEIVER, reason);
}

/* A fault the receiver can resume from is held for fault_hold_ms, waiting
 * for pgfan_manager_reconcile(); any other fault is settled at once. */
static void apply_policy(pgfan_manager *m, const pgfan_fault *f)
{
    if (f->receiver == PGFAN_MANAGER_INDEX)
        return; /* about the copy as a whole: already decided */
    if (f->receiver == PGFAN_PRODUCER_INDEX) {
        give_verdict(m, FAN_VERDICT_ABORT, PGFAN_EPRODUCER, "pgfan: the source failed");
        return;
    }
    size_t i = (size_t)f->receiver;
    if (fan_state_is_final(fan_receiver_state(m->receivers[i])))
        return; /* a fault while ending: recorded, nothing to decide */
    if ((f->reconcilable || f->retryable) && m->shared.opts.fault_hold_ms > 0) {
        fan_deadline(&m->watch[i].hold_until, m->shared.opts.fault_hold_ms);
        m->watch[i].holding = 1;
        return;
    }
    settle_receiver_fault(m, i);
}

/* Drops, or fails the copy for, faulted receivers whose hold expired. */
static void expire_holds(pgfan_manager *m)
{
    for (size_t i = 0; i < m->nreceivers; i++)
        if (m->watch[i].holding && fan_ms_until(&m->watch[i].hold_until) <= 0)
            settle_receiver_fault(m, i);
}

/*
 * A receiver that has unread slots and hands nothing to its target (no
 * byte queued to libpq or given to its callback) for stall_timeout_ms has
 * stopped: it is asked to step out of the gating set, and reports the stall
 * fault itself at a point where it holds no slot.  This does not wait for
 * the ring to fill: with batched wake-ups the writer may sleep with free
 * slots behind a stopped reader, and a target blocked on a lock moves no
 * more than a stopped one.  A receiver that is merely the slowest keeps
 * moving and is not a stall.
 */
static void detect_stalls(pgfan_manager *m)
{
    if (m->shared.opts.stall_timeout_ms == 0 ||
        fan_shared_verdict(&m->shared) != FAN_VERDICT_NONE)
        return;
    fan_ring *ring = &m->shared.ring;
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        receiver_watch *w = &m->watch[i];
        /* Relaxed snapshots: a stale or inconsistent pair (a cursor read
         * past the head) lasts one cycle, and a stall needs a whole
         * stall_timeout_ms without movement. */
        uint64_t cursor = fan_ring_cursor(ring, i);
        uint64_t head = fan_ring_head(ring);
        /* Waiting for its max_rate is movement too. */
        uint64_t moved = fan_receiver_count(r, FAN_COUNT_MOVED) +
                         fan_receiver_count(r, FAN_COUNT_PACED);
        int waiting = (fan_ring_is_gating(ring, i) || fan_ring_is_spilled(ring, i)) &&
                      fan_receiver_state(r) == PGFAN_RECEIVER_ACTIVE &&
                      fan_receiver_command_of(r) == FAN_CMD_NONE && head != cursor;
        if (!waiting || (w->stalling && moved != w->stalled_at)) {
            w->stalling = 0;
            continue;
        }
        if (!w->stalling) {
            w->stalling = 1;
            w->stalled_at = moved;
            fan_now(&w->stalled_since);
        } else if (fan_seconds_since(&w->stalled_since) * 1000.0 >=
                   m->shared.opts.stall_timeout_ms) {
            w->stalling = 0;
            fan_receiver_command(r, FAN_CMD_STALL);
        }
    }
}

/* Returns 1 and the next unreported fault, if any. */
static int take_fault(pgfan_manager *m, pgfan_fault *out)
{
    if (!fan_shared_fault(&m->shared, m->faults_reported, out))
        return 0;
    m->faults_reported++;
    return 1;
}

static int receiver_live(pgfan_receiver *r)
{
    return !fan_state_is_final(fan_receiver_state(r)) &&
           fan_receiver_command_of(r) != FAN_CMD_DROP;
}

/* Ended by complete_early.  Read after a seq_cst load of a final state,
 * which the thread stores after writing the flag. */
static int ended_early(pgfan_receiver *r)
{
    return fan_state_is_final(fan_receiver_state(r)) && r->completed_early;
}

/* Reports a receiver that completed early and let go of its connection;
 * returns 1 if it did.  *pending: one completed but has not let go yet. */
static int report_early(pgfan_manager *m, pgfan_event *ev, int *pending)
{
    *pending = 0;
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        if (m->watch[i].done_reported || !ended_early(r))
            continue;
        if (!fan_receiver_exited(r)) {
            *pending = 1;
            continue;
        }
        m->watch[i].done_reported = 1;
        ev->type = PGFAN_EVENT_RECEIVER_DONE;
        ev->receiver = i;
        return 1;
    }
    return 0;
}

static void post_no_receivers(pgfan_manager *m)
{
    pgfan_fault f;
    fan_fault_set(&f, PGFAN_MANAGER_INDEX, "pgfan", PGFAN_ENORECEIVERS,
                  "no receivers: every target failed or was dropped");
    fan_shared_post_fault(&m->shared, &f);
}

/* Fails the copy when nobody is left to receive or the source failed.
 * Commit is never decided here: only pgfan_manager_finish() commits. */
static void evaluate(pgfan_manager *m)
{
    if (fan_shared_verdict(&m->shared) != FAN_VERDICT_NONE)
        return;
    size_t live = 0;
    for (size_t i = 0; i < m->nreceivers; i++)
        live += (size_t)(receiver_live(m->receivers[i]) ||
                         fan_receiver_state(m->receivers[i]) == PGFAN_RECEIVER_DONE);
    if (live == 0) {
        post_no_receivers(m);
        give_verdict(m, FAN_VERDICT_ABORT, PGFAN_ENORECEIVERS,
                     "pgfan: no receivers left");
    } else if (fan_ring_state(&m->shared.ring) == FAN_RING_FAILED) {
        give_verdict(m, FAN_VERDICT_ABORT, PGFAN_EPRODUCER, "pgfan: the source failed");
    }
}

/*
 * The source reached its end and every live receiver has all of it; with
 * `paused_count`, receivers the caller paused count too (finish() resumes
 * them before it commits).
 */
static int everyone_has_everything(pgfan_manager *m, int paused_count)
{
    if (fan_ring_state(&m->shared.ring) != FAN_RING_ENDED)
        return 0;
    size_t live = 0, ready = 0, early = 0;
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        early += fan_receiver_state(r) == PGFAN_RECEIVER_DONE;
        if (!receiver_live(r))
            continue;
        live++;
        enum fan_command cmd = fan_receiver_command_of(r);
        /* With complete_early a drained receiver ends its COPY itself:
         * it is ready once it has (and is no longer live). */
        if ((!m->shared.opts.complete_early && fan_receiver_drained(r) &&
             fan_receiver_state(r) == PGFAN_RECEIVER_ACTIVE && cmd == FAN_CMD_NONE) ||
            (paused_count && cmd == FAN_CMD_PAUSE))
            ready++;
    }
    return (live > 0 || early > 0) && ready == live;
}

static int all_exited(pgfan_manager *m)
{
    if (fan_shared_verdict(&m->shared) == FAN_VERDICT_NONE ||
        fan_ring_state(&m->shared.ring) == FAN_RING_OPEN)
        return 0;
    for (size_t i = 0; i < m->nreceivers; i++)
        if (!fan_receiver_exited(m->receivers[i]))
            return 0;
    return 1;
}

/*
 * Before the verdict an interrupt aborts the copy.  After it, CopyDone is
 * out and its answer may take long (a lock, deferred checks): the
 * receivers still waiting cancel their statement, and no receiver may
 * commit.
 */
static void obey_interrupt(pgfan_manager *m)
{
    enum fan_verdict v = fan_shared_verdict(&m->shared);
    if (v == FAN_VERDICT_NONE) {
        give_verdict(m, FAN_VERDICT_ABORT, PGFAN_EABORTED, "pgfan: interrupted");
        return;
    }
    if (v != FAN_VERDICT_COMMIT || m->commit_interrupted)
        return;
    m->commit_interrupted = 1;
    m->failure = PGFAN_EABORTED;
    command_all_kept(m, FAN_CMD_ABORT);
}

/* A posted fault, if any, becomes the event, its policy applied. */
static int next_fault(pgfan_manager *m, pgfan_event *ev)
{
    if (!take_fault(m, &ev->fault))
        return 0;
    apply_policy(m, &ev->fault);
    ev->type = PGFAN_EVENT_FAULT;
    return 1;
}

int pgfan_manager_next(pgfan_manager *m, pgfan_event *ev)
{
    if (!m || !ev)
        return PGFAN_EINVAL;
    if (m->phase != FAN_PHASE_STARTED)
        return PGFAN_ESTATE;
    memset(ev, 0, sizeof *ev);
    struct timespec t0;
    fan_now(&t0);
    unsigned int stall_ms = m->shared.opts.stall_timeout_ms;
    const volatile sig_atomic_t *interrupt = m->shared.opts.interrupt;
    for (;;) {
        if (interrupt && *interrupt)
            obey_interrupt(m);
        if (next_fault(m, ev))
            return PGFAN_OK;
        int early_pending;
        if (report_early(m, ev, &early_pending))
            return PGFAN_OK;
        expire_holds(m);
        detect_stalls(m);
        evaluate(m);
        /* END comes after every RECEIVER_DONE, and after every fault posted
         * before the last receiver exited (it may post one between the
         * take_fault above and all_exited). */
        if (!early_pending &&
            (all_exited(m) || (fan_shared_verdict(&m->shared) == FAN_VERDICT_NONE &&
                               everyone_has_everything(m, 1)))) {
            if (next_fault(m, ev))
                return PGFAN_OK;
            ev->type = PGFAN_EVENT_END;
            m->end_reported = 1;
            return PGFAN_OK;
        }
        double left_ms = m->shared.opts.progress_ms - fan_seconds_since(&t0) * 1000.0;
        if (left_ms <= 0) {
            ev->type = PGFAN_EVENT_PROGRESS;
            return PGFAN_OK;
        }
        /* Wake often enough to notice stalls and expired holds in time. */
        if (stall_ms > 0 && left_ms > stall_ms / 4.0 + 1)
            left_ms = stall_ms / 4.0 + 1;
        fan_waiter_sleep(&m->shared.wake, NULL, 0, (int)left_ms + 1);
    }
}

/* ---- steering receivers ---- */

static pgfan_receiver *steerable(pgfan_manager *m, size_t index)
{
    if (!m || index >= m->nreceivers || m->phase != FAN_PHASE_STARTED ||
        fan_shared_verdict(&m->shared) != FAN_VERDICT_NONE)
        return NULL;
    pgfan_receiver *r = m->receivers[index];
    if (fan_receiver_command_of(r) == FAN_CMD_DROP ||
        fan_state_is_final(fan_receiver_state(r)))
        return NULL;
    return r;
}

static int refused(const pgfan_manager *m, size_t index)
{
    return m && index < m->nreceivers ? PGFAN_ESTATE : PGFAN_EINVAL;
}

/* Puts a receiver that stepped out back in the gating set.  Safe from this
 * thread: a PAUSED receiver holds no slot and waits for our command. */
static int rejoin(pgfan_manager *m, size_t i)
{
    fan_ring *ring = &m->shared.ring;
    if (!fan_ring_is_gating(ring, i) && fan_ring_join(ring, i) != 0)
        return PGFAN_EGONE;
    m->watch[i].holding = 0;
    fan_receiver_command(m->receivers[i], FAN_CMD_RESUME);
    return PGFAN_OK;
}

int pgfan_manager_reconcile(pgfan_manager *m, size_t index)
{
    pgfan_receiver *r = steerable(m, index);
    if (!r)
        return refused(m, index);
    int state = fan_receiver_state(r);
    pgfan_fault f;
    int reconcilable = fan_shared_receiver_fault(&m->shared, index, &f) && f.reconcilable;
    if (!m->watch[index].holding || !reconcilable ||
        (state != PGFAN_RECEIVER_FAULTED && state != PGFAN_RECEIVER_PAUSED))
        return PGFAN_ESTATE;
    return rejoin(m, index);
}

int pgfan_manager_retry(pgfan_manager *m, size_t index, PGconn *conn)
{
    pgfan_receiver *r = steerable(m, index);
    if (!r)
        return refused(m, index);
    if (!conn || uses_conn(m, conn, index))
        return PGFAN_EINVAL;
    pgfan_fault f;
    if (!m->watch[index].holding || fan_receiver_state(r) != PGFAN_RECEIVER_FAULTED ||
        !fan_shared_receiver_fault(&m->shared, index, &f) || !f.retryable)
        return PGFAN_ESTATE;
    if (!fan_journal_whole(&m->shared.journal))
        return PGFAN_EGONE; /* checked again by the receiver (J4) */
    m->watch[index].holding = 0;
    m->watch[index].conn = conn;
    fan_shared_forget_receiver_fault(&m->shared, index);
    r->retry_conn = conn; /* the thread takes it after loading the command */
    fan_receiver_command(r, FAN_CMD_RETRY);
    return PGFAN_OK;
}

int pgfan_manager_drop(pgfan_manager *m, size_t index)
{
    pgfan_receiver *r = steerable(m, index);
    if (!r)
        return refused(m, index);
    m->watch[index].holding = 0;
    if (m->shared.opts.policy == PGFAN_POLICY_ABORT) {
        settle_receiver_fault(m, index);
        return PGFAN_OK;
    }
    fan_receiver_command(r, FAN_CMD_DROP);
    return PGFAN_OK;
}

int pgfan_manager_pause(pgfan_manager *m, size_t index)
{
    pgfan_receiver *r = steerable(m, index);
    int state = r ? fan_receiver_state(r) : -1;
    if (!r || (state != PGFAN_RECEIVER_ACTIVE && state != PGFAN_RECEIVER_STARTING) ||
        fan_receiver_command_of(r) != FAN_CMD_NONE)
        return refused(m, index);
    fan_receiver_command(r, FAN_CMD_PAUSE);
    return PGFAN_OK;
}

int pgfan_manager_resume(pgfan_manager *m, size_t index)
{
    pgfan_receiver *r = steerable(m, index);
    if (!r || fan_receiver_command_of(r) != FAN_CMD_PAUSE)
        return refused(m, index);
    /* Wait until it has stepped out (at its next point holding no slot):
     * only then may this thread put it back in the gating set. */
    while (fan_receiver_state(r) == PGFAN_RECEIVER_ACTIVE &&
           fan_ring_is_gating(&m->shared.ring, index))
        fan_waiter_sleep(&m->shared.wake, NULL, 0, 1);
    return rejoin(m, index);
}

/* Receivers the caller paused and never resumed: resume them, or drop
 * them when their data has left the ring. */
static void resume_paused(pgfan_manager *m)
{
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        if (fan_receiver_command_of(r) != FAN_CMD_PAUSE)
            continue;
        if (pgfan_manager_resume(m, i) == PGFAN_EGONE) {
            pgfan_fault f;
            fan_fault_set(&f, (int)i, fan_receiver_label(r), PGFAN_EGONE,
                          "paused until its data left the ring; dropped");
            fan_shared_post_fault(&m->shared, &f);
            fan_receiver_command(r, FAN_CMD_DROP);
        }
    }
}

/* ---- ending ---- */

/* Runs cycles until every thread is done; faults are applied on the way. */
static void run_to_end(pgfan_manager *m)
{
    pgfan_event ev;
    while (pgfan_manager_next(m, &ev) == PGFAN_OK && ev.type != PGFAN_EVENT_END)
        ;
}

static int outcome(pgfan_manager *m)
{
    if (m->failure != PGFAN_OK)
        return m->failure;
    size_t done = 0, failed = 0;
    for (size_t i = 0; i < m->nreceivers; i++) {
        int st = fan_receiver_state(m->receivers[i]);
        failed += st == PGFAN_RECEIVER_FAILED;
        done += st == PGFAN_RECEIVER_DONE;
    }
    /* Under the drop policy a target whose COPY failed only at its end
     * counts as dropped: with none done, that is "no receivers", whether
     * the errors came mid-stream or at CopyDone. */
    if (done == 0 && (failed == 0 || m->shared.opts.policy == PGFAN_POLICY_DROP)) {
        if (failed > 0)
            post_no_receivers(m);
        return PGFAN_ENORECEIVERS;
    }
    return failed > 0 ? PGFAN_ERECEIVER : PGFAN_OK;
}

/* Runs cycles until every live receiver has everything, or the copy
 * failed meanwhile (a fault, a receiver resumed too late under abort). */
static void wait_until_drained(pgfan_manager *m)
{
    pgfan_event ev;
    while (fan_shared_verdict(&m->shared) == FAN_VERDICT_NONE &&
           !everyone_has_everything(m, 0))
        if (pgfan_manager_next(m, &ev) != PGFAN_OK)
            break;
}

static int end_phase(pgfan_manager *m)
{
    run_to_end(m);
    join_threads(m);
    m->failure = outcome(m);
    m->phase = FAN_PHASE_FINISHED;
    fan_now(&m->finished_at);
    return m->failure;
}

int pgfan_manager_finish(pgfan_manager *m)
{
    if (!m)
        return PGFAN_EINVAL;
    if (m->phase == FAN_PHASE_FINISHED)
        return m->failure;
    if (m->phase != FAN_PHASE_STARTED)
        return PGFAN_ESTATE;
    /*
     * The point of no return, and the only one: CopyDone goes out only
     * here, only after the caller saw PGFAN_EVENT_END, and only when the
     * source reached its end.  A loop broken early is a failed copy, never
     * a partial commit.
     */
    if (fan_shared_verdict(&m->shared) == FAN_VERDICT_NONE) {
        if (!m->end_reported || !everyone_has_everything(m, 1)) {
            give_verdict(m, FAN_VERDICT_ABORT, PGFAN_EABORTED,
                         "pgfan: the copy was finished before it reached its end");
        } else {
            resume_paused(m);
            wait_until_drained(m);
            give_verdict(m, FAN_VERDICT_COMMIT, PGFAN_OK, "");
        }
    }
    return end_phase(m);
}

int pgfan_manager_abort(pgfan_manager *m, const char *reason)
{
    if (!m)
        return PGFAN_EINVAL;
    if (m->phase != FAN_PHASE_STARTED)
        return PGFAN_ESTATE; /* finished: nothing left to roll back */
    give_verdict(m, FAN_VERDICT_ABORT, PGFAN_EABORTED,
                 reason ? reason : "pgfan: the copy was aborted");
    end_phase(m);
    return PGFAN_OK;
}

int pgfan_manager_run(pgfan_manager *m)
{
    int rc = pgfan_manager_start(m);
    if (rc != PGFAN_OK)
        return rc;
    run_to_end(m);
    return pgfan_manager_finish(m);
}

void pgfan_manager_free(pgfan_manager *m)
{
    if (!m)
        return;
    if (m->phase == FAN_PHASE_STARTED)
        pgfan_manager_abort(m, "pgfan: the manager was freed during the copy");
    for (size_t i = 0; i < m->nreceivers; i++)
        pgfan_receiver_free(m->receivers[i]);
    free(m->receivers);
    free(m->watch);
    pgfan_producer_free(m->producer);
    fan_shared_destroy(&m->shared);
    free(m);
}

/* ---- inspection ---- */

size_t pgfan_manager_receiver_count(const pgfan_manager *m)
{
    return m ? m->nreceivers : 0;
}

static double elapsed(const pgfan_manager *m, const struct timespec *end)
{
    if (m->phase == FAN_PHASE_NEW)
        return 0.0;
    if (end && end->tv_sec != 0)
        return fan_seconds_between(&m->started_at, end);
    return fan_seconds_since(&m->started_at);
}

int pgfan_manager_progress(const pgfan_manager *m, pgfan_progress *out)
{
    if (!m || !out)
        return PGFAN_EINVAL;
    fan_ring *ring = (fan_ring *)&m->shared.ring;
    memset(out, 0, sizeof *out);
    out->producer_bytes = fan_producer_bytes(m->producer);
    out->producer_rows = fan_producer_rows(m->producer);
    out->producer_done = m->shared.ring_ready && fan_ring_state(ring) == FAN_RING_ENDED;
    out->receivers = m->nreceivers;
    for (size_t i = 0; i < m->nreceivers; i++)
        out->active += m->shared.ring_ready && fan_ring_is_gating(ring, i) &&
                       !fan_state_is_final(fan_receiver_state(m->receivers[i]));
    out->seconds = elapsed(m, &m->finished_at);
    if (m->shared.journal_ready) {
        for (size_t i = 0; i < m->nreceivers; i++)
            out->spilled += fan_ring_is_spilled(ring, i);
        /* Relaxed: figures for the report. */
        out->spill_bytes =
            atomic_load_explicit(&m->shared.journal.bytes, memory_order_relaxed);
        out->spill_peak_bytes =
            atomic_load_explicit(&m->shared.journal.peak_bytes, memory_order_relaxed);
    }
    return PGFAN_OK;
}

/*
 * The one commit rule, for every caller (pgfan_transfer(), the command):
 * after finish, a receiver may commit when its COPY completed and the copy
 * as a whole allows it: under abort, only if the copy succeeded; under
 * drop, unless the source failed or the copy was aborted.
 */
static int may_commit(const pgfan_manager *m, pgfan_receiver *r, int state)
{
    if (state == PGFAN_RECEIVER_DONE && r->completed_early)
        return 1; /* its COPY ended whole, before any verdict */
    if (m->phase != FAN_PHASE_FINISHED || state != PGFAN_RECEIVER_DONE)
        return 0;
    if (m->failure == PGFAN_OK)
        return 1;
    return m->shared.opts.policy == PGFAN_POLICY_DROP && m->failure != PGFAN_EPRODUCER &&
           m->failure != PGFAN_EABORTED;
}

int pgfan_manager_receiver(const pgfan_manager *m, size_t index,
                           pgfan_receiver_result *out)
{
    if (!m || !out || index >= m->nreceivers)
        return PGFAN_EINVAL;
    pgfan_receiver *r = m->receivers[index];
    fan_ring *ring = (fan_ring *)&m->shared.ring;
    memset(out, 0, sizeof *out);
    out->state = (pgfan_receiver_state)fan_receiver_state(r);
    out->bytes = fan_receiver_count(r, FAN_COUNT_BYTES);
    out->rows = fan_receiver_count(r, FAN_COUNT_ROWS);
    if (m->shared.ring_ready) {
        /* The two loads are not ordered: a cursor may be read past the
         * head, which is no lag. */
        uint64_t cursor = fan_ring_cursor(ring, index);
        uint64_t head = fan_ring_head(ring);
        out->lag = head - cursor < (uint64_t)1 << 63 ? head - cursor : 0;
    }
    out->seconds =
        elapsed(m, fan_state_is_final(out->state) ? fan_receiver_ended_at(r) : NULL);
    snprintf(out->label, sizeof out->label, "%s", fan_receiver_label(r));
    out->notices = fan_receiver_count(r, FAN_COUNT_NOTICES);
    out->has_fault =
        fan_shared_receiver_fault((fan_shared *)&m->shared, index, &out->fault);
    out->may_commit = may_commit(m, r, out->state);
    out->retries = (unsigned int)fan_receiver_count(r, FAN_COUNT_RETRIES);
    return PGFAN_OK;
}

size_t pgfan_manager_fault_count(const pgfan_manager *m)
{
    return m ? fan_shared_fault_count((fan_shared *)&m->shared) : 0;
}

int pgfan_manager_fault(const pgfan_manager *m, size_t index, pgfan_fault *out)
{
    if (!m || !out)
        return PGFAN_EINVAL;
    return fan_shared_fault((fan_shared *)&m->shared, index, out) ? PGFAN_OK
                                                                  : PGFAN_EINVAL;
}

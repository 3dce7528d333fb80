/*
 * The manager: owns the producer, the receivers, the ring and the threads.
 * It runs in the caller's thread and never touches the data path: it
 * watches states, collects faults, applies the policy and decides, once,
 * whether the copy commits (CopyDone) or fails (CopyFail).
 */
#include "internal.h"
#include "settings.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pgfan_manager_new(pgfan_manager **out, pgfan_producer *producer,
                      const pgfan_options *opts)
{
    pgfan_options o;
    if (!out || !producer || producer->manager)
        return PGFAN_EINVAL;
    *out = NULL;
    if (opts)
        o = *opts;
    else
        pgfan_options_init(&o);
    if (o.ring_slots < 2 || (o.ring_slots & (o.ring_slots - 1)) != 0 ||
        o.chunk_bytes < 4096 || o.chunk_bytes > (size_t)1 << 30)
        return PGFAN_EINVAL;
    if (o.progress_ms == 0)
        o.progress_ms = 100;
    pgfan_manager *m = calloc(1, sizeof *m);
    if (!m)
        return PGFAN_ENOMEM;
    m->wake.fd = -1;
    if (fan_waiter_init(&m->wake) != 0) {
        free(m);
        return PGFAN_ESYSTEM;
    }
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        fan_waiter_destroy(&m->wake);
        free(m);
        return PGFAN_ESYSTEM;
    }
    m->opts = o;
    m->producer = producer;
    producer->manager = m;
    *out = m;
    return PGFAN_OK;
}

int pgfan_manager_add_receiver(pgfan_manager *m, pgfan_receiver *r, size_t *index)
{
    if (!m || !r || r->manager)
        return PGFAN_EINVAL;
    if (m->phase != FAN_PHASE_NEW)
        return PGFAN_ESTATE;
    if (r->kind == FAN_RECEIVER_STATEMENT && m->producer->conn == r->conn)
        return PGFAN_EINVAL; /* one connection cannot run two COPYs */
    for (size_t i = 0; i < m->nreceivers; i++)
        if (r->conn && m->receivers[i]->conn == r->conn)
            return PGFAN_EINVAL;
    if (m->nreceivers == m->receivers_cap) {
        size_t cap = m->receivers_cap ? m->receivers_cap * 2 : 4;
        pgfan_receiver **p = realloc(m->receivers, cap * sizeof *p);
        if (!p)
            return PGFAN_ENOMEM;
        m->receivers = p;
        m->receivers_cap = cap;
    }
    r->index = m->nreceivers;
    r->manager = m;
    m->receivers[m->nreceivers++] = r;
    if (index)
        *index = r->index;
    return PGFAN_OK;
}

void fan_manager_post_fault(pgfan_manager *m, const pgfan_fault *f)
{
    pthread_mutex_lock(&m->lock);
    if (m->nfaults == m->faults_cap) {
        size_t cap = m->faults_cap ? m->faults_cap * 2 : 8;
        pgfan_fault *p = realloc(m->faults, cap * sizeof *p);
        if (p) {
            m->faults = p;
            m->faults_cap = cap;
        }
    }
    if (m->nfaults < m->faults_cap)
        m->faults[m->nfaults++] = *f;
    if (f->receiver >= 0 && (size_t)f->receiver < m->nreceivers) {
        pgfan_receiver *r = m->receivers[f->receiver];
        if (!r->has_fault) {
            r->has_fault = 1;
            r->fault = *f;
        }
    }
    pthread_mutex_unlock(&m->lock);
    fan_manager_poke(m);
}

void fan_manager_poke(pgfan_manager *m)
{
    fan_waiter_kick(&m->wake);
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
static int read_settings(PGconn *conn, int textual, fan_session_settings *s, int who,
                         const char *label, pgfan_fault *f)
{
    PGresult *failed;
    PGTransactionStatusType tx = PQtransactionStatus(conn);
    if (PQstatus(conn) != CONNECTION_OK || PQisBusy(conn) ||
        (tx != PQTRANS_IDLE && tx != PQTRANS_INTRANS))
        return 1;
    if (fan_settings_read(conn, textual, s, &failed) == 0)
        return 0;
    fan_fault_from_result(f, who, failed, label);
    PQclear(failed);
    return -1;
}

/*
 * Refuses, before any COPY starts, a source and targets whose session
 * settings would change values on the way (settings.h), naming the
 * setting, both values and the party.
 */
static int check_settings(pgfan_manager *m, pgfan_fault *f)
{
    pgfan_producer *p = m->producer;
    fan_session_settings src, dst;
    char why[400];
    if (m->opts.trust_session_settings || p->kind != FAN_PRODUCER_STATEMENT)
        return PGFAN_OK;
    int textual = p->format != PGFAN_FORMAT_BINARY;
    int rc = read_settings(p->conn, textual, &src, PGFAN_PRODUCER_INDEX, "source", f);
    if (rc != 0)
        return rc < 0 ? f->code : PGFAN_OK;
    if (fan_settings_check_source(&src, textual, why, sizeof why) != 0) {
        fan_fault_set(f, PGFAN_PRODUCER_INDEX, PGFAN_ESETTINGS, "source: %s", why);
        return PGFAN_ESETTINGS;
    }
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        if (r->kind != FAN_RECEIVER_STATEMENT)
            continue;
        rc = read_settings(r->conn, textual, &dst, (int)i, r->label, f);
        if (rc < 0)
            return f->code;
        if (rc == 0 && fan_settings_compare(&src, &dst, textual, why, sizeof why) != 0) {
            fan_fault_set(f, (int)i, PGFAN_ESETTINGS, "%s: %s", r->label, why);
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
        fan_manager_post_fault(m, &f);
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
        int r2 = fan_receiver_finish_begin(m->receivers[i], m->producer, &g);
        if (r2 != PGFAN_OK && rc == PGFAN_OK) {
            rc = r2;
            f = g;
        }
    }
    if (rc != PGFAN_OK) {
        fan_manager_post_fault(m, &f);
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
        pgfan_receiver *r = m->receivers[i];
        if (rc == PGFAN_OK &&
            pthread_create(&r->thread, NULL, fan_receiver_main, r) == 0) {
            r->thread_started = 1;
            continue;
        }
        rc = PGFAN_ESYSTEM;
        atomic_store(&r->state, PGFAN_RECEIVER_FAILED);
        atomic_store(&r->exited, 1);
    }
    if (rc == PGFAN_OK &&
        pthread_create(&m->producer->thread, NULL, fan_producer_main, m->producer) == 0) {
        m->producer->thread_started = 1;
        return PGFAN_OK;
    }
    fan_ring_close(&m->ring, FAN_RING_FAILED);
    return PGFAN_ESYSTEM;
}

static void join_threads(pgfan_manager *m)
{
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        if (r->thread_started) {
            pthread_join(r->thread, NULL);
            r->thread_started = 0;
        }
    }
    if (m->producer->thread_started) {
        pthread_join(m->producer->thread, NULL);
        m->producer->thread_started = 0;
    }
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
    if (fan_ring_init(&m->ring, m->opts.ring_slots, m->opts.chunk_bytes, m->nreceivers,
                      0) != 0)
        return errno == ENOMEM ? PGFAN_ENOMEM : PGFAN_ESYSTEM;
    m->ring_ready = 1;
    fan_now(&m->started_at);
    int rc = begin_copies(m);
    if (rc != PGFAN_OK) {
        for (size_t i = 0; i < m->nreceivers; i++)
            atomic_store(&m->receivers[i]->state, PGFAN_RECEIVER_FAILED);
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

/* Decides the copy's fate once.  Later calls are ignored. */
static void give_verdict(pgfan_manager *m, enum fan_verdict v, int failure,
                         const char *reason)
{
    int none = FAN_VERDICT_NONE;
    if (!atomic_compare_exchange_strong(&m->verdict, &none, (int)v))
        return;
    if (v == FAN_VERDICT_ABORT) {
        m->failure = failure;
        snprintf(m->reason, sizeof m->reason, "%s", reason);
        /* Release (seq_cst) pairs with the producer's acquire in stopping(). */
        atomic_store(&m->producer->stop, 1);
    }
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        if (atomic_load(&r->command) != FAN_CMD_DROP)
            fan_receiver_command(r, v == FAN_VERDICT_COMMIT ? FAN_CMD_COMMIT
                                                            : FAN_CMD_ABORT);
    }
    if (v == FAN_VERDICT_ABORT)
        fan_ring_stop(&m->ring);
}

/* What an unresolved receiver fault does: drop it, or fail the copy. */
static void settle_receiver_fault(pgfan_manager *m, pgfan_receiver *r)
{
    char reason[PGFAN_MESSAGE_MAX];
    r->holding = 0;
    if (atomic_load(&m->verdict) != FAN_VERDICT_NONE)
        return;
    if (m->opts.policy == PGFAN_POLICY_DROP) {
        fan_receiver_command(r, FAN_CMD_DROP);
        return;
    }
    snprintf(reason, sizeof reason, "pgfan: target %zu (%s) failed", r->index, r->label);
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
    pgfan_receiver *r = m->receivers[f->receiver];
    if (fan_state_is_final(atomic_load(&r->state)))
        return; /* a fault while ending: recorded, nothing to decide */
    if (f->reconcilable && m->opts.fault_hold_ms > 0) {
        fan_deadline(&r->hold_until, m->opts.fault_hold_ms);
        r->holding = 1;
        return;
    }
    settle_receiver_fault(m, r);
}

/* Drops, or fails the copy for, faulted receivers whose hold expired. */
static void expire_holds(pgfan_manager *m)
{
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        if (r->holding && fan_ms_until(&r->hold_until) <= 0)
            settle_receiver_fault(m, r);
    }
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
    if (m->opts.stall_timeout_ms == 0 || atomic_load(&m->verdict) != FAN_VERDICT_NONE)
        return;
    fan_ring *ring = &m->ring;
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        /* Relaxed snapshots: a stale or inconsistent pair (a cursor read
         * past the head) lasts one cycle, and a stall needs a whole
         * stall_timeout_ms without movement. */
        uint64_t cursor = fan_ring_cursor(ring, i);
        uint64_t head = fan_ring_head(ring);
        uint64_t moved = atomic_load_explicit(&r->moved, memory_order_relaxed);
        int waiting = fan_ring_is_gating(ring, i) &&
                      atomic_load(&r->state) == PGFAN_RECEIVER_ACTIVE &&
                      atomic_load(&r->command) == FAN_CMD_NONE && head != cursor;
        if (!waiting || (r->stalling && moved != r->stalled_at)) {
            r->stalling = 0;
            continue;
        }
        if (!r->stalling) {
            r->stalling = 1;
            r->stalled_at = moved;
            fan_now(&r->stalled_since);
        } else if (fan_seconds_since(&r->stalled_since) * 1000.0 >=
                   m->opts.stall_timeout_ms) {
            r->stalling = 0;
            fan_receiver_command(r, FAN_CMD_STALL);
        }
    }
}

/* Returns 1 and the next unreported fault, if any. */
static int take_fault(pgfan_manager *m, pgfan_fault *out)
{
    int got = 0;
    pthread_mutex_lock(&m->lock);
    if (m->faults_reported < m->nfaults) {
        *out = m->faults[m->faults_reported++];
        got = 1;
    }
    pthread_mutex_unlock(&m->lock);
    return got;
}

static int receiver_live(pgfan_receiver *r)
{
    int st = atomic_load(&r->state);
    return !fan_state_is_final(st) && atomic_load(&r->command) != FAN_CMD_DROP;
}

static void post_no_receivers(pgfan_manager *m)
{
    pgfan_fault f;
    fan_fault_set(&f, PGFAN_MANAGER_INDEX, PGFAN_ENORECEIVERS,
                  "no receivers: every target failed or was dropped");
    fan_manager_post_fault(m, &f);
}

/* Fails the copy when nobody is left to receive or the source failed.
 * Commit is never decided here: only pgfan_manager_finish() commits. */
static void evaluate(pgfan_manager *m)
{
    if (atomic_load(&m->verdict) != FAN_VERDICT_NONE)
        return;
    size_t live = 0;
    for (size_t i = 0; i < m->nreceivers; i++)
        live += (size_t)receiver_live(m->receivers[i]);
    if (live == 0) {
        post_no_receivers(m);
        give_verdict(m, FAN_VERDICT_ABORT, PGFAN_ENORECEIVERS,
                     "pgfan: no receivers left");
    } else if (fan_ring_state(&m->ring) == FAN_RING_FAILED) {
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
    if (fan_ring_state(&m->ring) != FAN_RING_ENDED)
        return 0;
    size_t live = 0, ready = 0;
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        if (!receiver_live(r))
            continue;
        live++;
        if ((atomic_load(&r->drained) &&
             atomic_load(&r->state) == PGFAN_RECEIVER_ACTIVE &&
             atomic_load(&r->command) == FAN_CMD_NONE) ||
            (paused_count && atomic_load(&r->command) == FAN_CMD_PAUSE))
            ready++;
    }
    return live > 0 && ready == live;
}

static int all_exited(pgfan_manager *m)
{
    if (atomic_load(&m->verdict) == FAN_VERDICT_NONE)
        return 0;
    if (fan_ring_state(&m->ring) == FAN_RING_OPEN)
        return 0;
    for (size_t i = 0; i < m->nreceivers; i++)
        if (!atomic_load(&m->receivers[i]->exited))
            return 0;
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
    for (;;) {
        if (take_fault(m, &ev->fault)) {
            apply_policy(m, &ev->fault);
            ev->type = PGFAN_EVENT_FAULT;
            return PGFAN_OK;
        }
        expire_holds(m);
        detect_stalls(m);
        evaluate(m);
        if (all_exited(m) || (atomic_load(&m->verdict) == FAN_VERDICT_NONE &&
                              everyone_has_everything(m, 1))) {
            ev->type = PGFAN_EVENT_END;
            m->end_reported = 1;
            return PGFAN_OK;
        }
        double left_ms = m->opts.progress_ms - fan_seconds_since(&t0) * 1000.0;
        if (left_ms <= 0) {
            ev->type = PGFAN_EVENT_PROGRESS;
            return PGFAN_OK;
        }
        /* Wake often enough to notice stalls and expired holds in time. */
        if (m->opts.stall_timeout_ms > 0 && left_ms > m->opts.stall_timeout_ms / 4.0 + 1)
            left_ms = m->opts.stall_timeout_ms / 4.0 + 1;
        fan_waiter_sleep(&m->wake, NULL, 0, (int)left_ms + 1);
    }
}

/* ---- steering receivers ---- */

static pgfan_receiver *steerable(pgfan_manager *m, size_t index)
{
    if (!m || index >= m->nreceivers || m->phase != FAN_PHASE_STARTED ||
        atomic_load(&m->verdict) != FAN_VERDICT_NONE)
        return NULL;
    pgfan_receiver *r = m->receivers[index];
    int cmd = atomic_load(&r->command);
    if (cmd == FAN_CMD_DROP || fan_state_is_final(atomic_load(&r->state)))
        return NULL;
    return r;
}

/* Puts a receiver that stepped out back in the gating set.  Safe from this
 * thread: a PAUSED receiver holds no slot and waits for our command. */
static int rejoin(pgfan_manager *m, pgfan_receiver *r)
{
    if (!fan_ring_is_gating(&m->ring, r->index) && fan_ring_join(&m->ring, r->index) != 0)
        return PGFAN_EGONE;
    r->holding = 0;
    fan_receiver_command(r, FAN_CMD_RESUME);
    return PGFAN_OK;
}

int pgfan_manager_reconcile(pgfan_manager *m, size_t index)
{
    pgfan_receiver *r = steerable(m, index);
    if (!r)
        return m && index < m->nreceivers ? PGFAN_ESTATE : PGFAN_EINVAL;
    int state = atomic_load(&r->state);
    pthread_mutex_lock(&m->lock);
    int reconcilable = r->has_fault && r->fault.reconcilable;
    pthread_mutex_unlock(&m->lock);
    if (!r->holding || !reconcilable ||
        (state != PGFAN_RECEIVER_FAULTED && state != PGFAN_RECEIVER_PAUSED))
        return PGFAN_ESTATE;
    return rejoin(m, r);
}

int pgfan_manager_drop(pgfan_manager *m, size_t index)
{
    pgfan_receiver *r = steerable(m, index);
    if (!r)
        return m && index < m->nreceivers ? PGFAN_ESTATE : PGFAN_EINVAL;
    r->holding = 0;
    if (m->opts.policy == PGFAN_POLICY_ABORT) {
        settle_receiver_fault(m, r);
        return PGFAN_OK;
    }
    fan_receiver_command(r, FAN_CMD_DROP);
    return PGFAN_OK;
}

int pgfan_manager_pause(pgfan_manager *m, size_t index)
{
    pgfan_receiver *r = steerable(m, index);
    int state = r ? atomic_load(&r->state) : -1;
    if (!r || (state != PGFAN_RECEIVER_ACTIVE && state != PGFAN_RECEIVER_STARTING) ||
        atomic_load(&r->command) != FAN_CMD_NONE)
        return m && index < m->nreceivers ? PGFAN_ESTATE : PGFAN_EINVAL;
    fan_receiver_command(r, FAN_CMD_PAUSE);
    return PGFAN_OK;
}

int pgfan_manager_resume(pgfan_manager *m, size_t index)
{
    pgfan_receiver *r = steerable(m, index);
    if (!r || atomic_load(&r->command) != FAN_CMD_PAUSE)
        return m && index < m->nreceivers ? PGFAN_ESTATE : PGFAN_EINVAL;
    /* Wait until it has stepped out (at its next point holding no slot):
     * only then may this thread put it back in the gating set. */
    while (atomic_load(&r->state) == PGFAN_RECEIVER_ACTIVE &&
           fan_ring_is_gating(&m->ring, index))
        fan_waiter_sleep(&m->wake, NULL, 0, 1);
    return rejoin(m, r);
}

/* Receivers the caller paused and never resumed: resume them, or drop
 * them when their data has left the ring. */
static void resume_paused(pgfan_manager *m)
{
    for (size_t i = 0; i < m->nreceivers; i++) {
        pgfan_receiver *r = m->receivers[i];
        if (atomic_load(&r->command) != FAN_CMD_PAUSE)
            continue;
        if (pgfan_manager_resume(m, i) == PGFAN_EGONE) {
            pgfan_fault f;
            fan_fault_set(&f, (int)i, PGFAN_EGONE,
                          "%s: paused until its data left the ring; dropped", r->label);
            fan_manager_post_fault(m, &f);
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
        int st = atomic_load(&m->receivers[i]->state);
        failed += st == PGFAN_RECEIVER_FAILED;
        done += st == PGFAN_RECEIVER_DONE;
    }
    /* Under the drop policy a target whose COPY failed only at its end
     * counts as dropped: with none done, that is "no receivers", whether
     * the errors came mid-stream or at CopyDone. */
    if (done == 0 && (failed == 0 || m->opts.policy == PGFAN_POLICY_DROP)) {
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
    while (atomic_load(&m->verdict) == FAN_VERDICT_NONE && !everyone_has_everything(m, 0))
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
    if (atomic_load(&m->verdict) == FAN_VERDICT_NONE) {
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
    pgfan_producer_free(m->producer);
    if (m->ring_ready)
        fan_ring_destroy(&m->ring);
    fan_waiter_destroy(&m->wake);
    pthread_mutex_destroy(&m->lock);
    free(m->faults);
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
        return (double)(end->tv_sec - m->started_at.tv_sec) +
               (double)(end->tv_nsec - m->started_at.tv_nsec) / 1e9;
    return fan_seconds_since(&m->started_at);
}

int pgfan_manager_progress(const pgfan_manager *m, pgfan_progress *out)
{
    if (!m || !out)
        return PGFAN_EINVAL;
    memset(out, 0, sizeof *out);
    out->producer_bytes = atomic_load_explicit(&m->producer->bytes, memory_order_relaxed);
    out->producer_rows = atomic_load_explicit(&m->producer->rows, memory_order_relaxed);
    out->producer_done =
        m->ring_ready && fan_ring_state((fan_ring *)&m->ring) == FAN_RING_ENDED;
    out->receivers = m->nreceivers;
    for (size_t i = 0; i < m->nreceivers; i++)
        out->active += m->ring_ready && fan_ring_is_gating((fan_ring *)&m->ring, i) &&
                       !fan_state_is_final(atomic_load(&m->receivers[i]->state));
    out->seconds = elapsed(m, &m->finished_at);
    return PGFAN_OK;
}

int pgfan_manager_receiver(const pgfan_manager *m, size_t index,
                           pgfan_receiver_result *out)
{
    if (!m || !out || index >= m->nreceivers)
        return PGFAN_EINVAL;
    pgfan_receiver *r = m->receivers[index];
    memset(out, 0, sizeof *out);
    out->state = (pgfan_receiver_state)atomic_load(&r->state);
    out->bytes = atomic_load_explicit(&r->bytes, memory_order_relaxed);
    out->rows = atomic_load_explicit(&r->rows, memory_order_relaxed);
    if (m->ring_ready) {
        /* The two loads are not ordered: a cursor may be read past the
         * head, which is no lag. */
        uint64_t cursor = fan_ring_cursor((fan_ring *)&m->ring, index);
        uint64_t head = fan_ring_head((fan_ring *)&m->ring);
        out->lag = head - cursor < (uint64_t)1 << 63 ? head - cursor : 0;
    }
    out->seconds = elapsed(m, fan_state_is_final(out->state) ? &r->ended_at : NULL);
    snprintf(out->label, sizeof out->label, "%s", r->label);
    out->notices = atomic_load_explicit(&r->notices, memory_order_relaxed);
    pthread_mutex_lock((pthread_mutex_t *)&m->lock);
    out->has_fault = r->has_fault;
    if (r->has_fault)
        out->fault = r->fault;
    pthread_mutex_unlock((pthread_mutex_t *)&m->lock);
    return PGFAN_OK;
}

size_t pgfan_manager_fault_count(const pgfan_manager *m)
{
    if (!m)
        return 0;
    pthread_mutex_lock((pthread_mutex_t *)&m->lock);
    size_t n = m->nfaults;
    pthread_mutex_unlock((pthread_mutex_t *)&m->lock);
    return n;
}

int pgfan_manager_fault(const pgfan_manager *m, size_t index, pgfan_fault *out)
{
    if (!m || !out)
        return PGFAN_EINVAL;
    int rc = PGFAN_OK;
    pthread_mutex_lock((pthread_mutex_t *)&m->lock);
    if (index < m->nfaults)
        *out = m->faults[index];
    else
        rc = PGFAN_EINVAL;
    pthread_mutex_unlock((pthread_mutex_t *)&m->lock);
    return rc;
}

/*
 * The receiver thread: a state machine that drains the ring for one
 * target at its own pace, steps out of the gating set when paused or
 * stalled, and ends the target's COPY as the manager commands.  What
 * handing a slot over means is the kind's (receiver_statement.c,
 * receiver_call.c).
 */
#include "receiver.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "pq.h"

pgfan_receiver *fan_receiver_alloc(const fan_receiver_ops *ops, const char *label)
{
    pgfan_receiver *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->ops = ops;
    r->nfields = -1;
    snprintf(r->label, sizeof r->label, "%s", label);
    return r;
}

int pgfan_receiver_set_label(pgfan_receiver *r, const char *label)
{
    if (!r || !label)
        return PGFAN_EINVAL;
    if (r->shared && r->shared->ring_ready)
        return PGFAN_ESTATE; /* started: faults already carry the old one */
    snprintf(r->label, sizeof r->label, "%s", label);
    return PGFAN_OK;
}

int pgfan_receiver_set_max_rate(pgfan_receiver *r, uint64_t bytes_per_second)
{
    if (!r)
        return PGFAN_EINVAL;
    if (r->shared && r->shared->ring_ready)
        return PGFAN_ESTATE; /* its thread reads it without a lock */
    r->max_rate = bytes_per_second;
    return PGFAN_OK;
}

void pgfan_receiver_free(pgfan_receiver *r)
{
    if (!r)
        return;
    r->ops->destroy(r);
    free(r->jslot.data);
    free(r);
}

void fan_receiver_attach(pgfan_receiver *r, size_t index, fan_shared *s)
{
    r->index = index;
    r->shared = s;
}

int fan_receiver_is_attached(const pgfan_receiver *r)
{
    return r->shared != NULL;
}

PGconn *fan_receiver_conn(const pgfan_receiver *r)
{
    return r->conn;
}

const char *fan_receiver_label(const pgfan_receiver *r)
{
    return r->label;
}

/* ---- accessors (any thread) ---- */

void fan_receiver_command(pgfan_receiver *r, enum fan_command cmd)
{
    /* seq_cst store, then kick: the thread re-reads commands after waking. */
    atomic_store_explicit(&r->command, cmd, memory_order_seq_cst);
    fan_ring_kick_reader(&r->shared->ring, r->index);
}

enum fan_command fan_receiver_command_of(pgfan_receiver *r)
{
    /* seq_cst: pairs with the store in fan_receiver_command(). */
    return (enum fan_command)atomic_load_explicit(&r->command, memory_order_seq_cst);
}

int fan_receiver_state(pgfan_receiver *r)
{
    /* seq_cst: pairs with set_state()'s store, after the work it announces. */
    return atomic_load_explicit(&r->state, memory_order_seq_cst);
}

int fan_receiver_drained(pgfan_receiver *r)
{
    /* seq_cst: pairs with the thread's exchange in drain_step(). */
    return atomic_load_explicit(&r->drained, memory_order_seq_cst);
}

int fan_receiver_exited(pgfan_receiver *r)
{
    /* seq_cst: pairs with the thread's store after its last use of conn. */
    return atomic_load_explicit(&r->exited, memory_order_seq_cst);
}

/* Relaxed: counters for progress and the stall watch; no data is read on
 * the strength of them. */
uint64_t fan_receiver_count(pgfan_receiver *r, enum fan_receiver_counter c)
{
    return atomic_load_explicit(&r->count[c], memory_order_relaxed);
}

void fan_receiver_count_add(pgfan_receiver *r, enum fan_receiver_counter c, uint64_t n)
{
    atomic_fetch_add_explicit(&r->count[c], n, memory_order_relaxed);
}

const struct timespec *fan_receiver_ended_at(pgfan_receiver *r)
{
    /* Written before the seq_cst store of a final state; read after
     * loading one. */
    return &r->ended_at;
}

fan_ring *fan_receiver_ring(pgfan_receiver *r)
{
    return &r->shared->ring;
}

fan_waiter *fan_receiver_waiter(pgfan_receiver *r)
{
    return &r->shared->ring.readers[r->index].waiter;
}

int fan_receiver_interrupted(pgfan_receiver *r)
{
    enum fan_command cmd = fan_receiver_command_of(r);
    return cmd == FAN_CMD_ABORT || cmd == FAN_CMD_DROP || cmd == FAN_CMD_PAUSE ||
           cmd == FAN_CMD_STALL || fan_ring_spill_asked(&r->shared->ring, r->index);
}

/* ---- start (caller's thread) ---- */

int fan_receiver_send_begin(pgfan_receiver *r, pgfan_fault *f)
{
    return r->ops->send_begin(r, f);
}

/* Collects the answer to the COPY and checks it fits the source's. */
int fan_receiver_finish_begin(pgfan_receiver *r, pgfan_format source_format,
                              int source_nfields, pgfan_fault *f)
{
    int rc = r->ops->finish_begin(r, source_format, f);
    if (rc != PGFAN_OK)
        return rc;
    if (r->format != source_format) {
        fan_fault_set(f, (int)r->index, r->label, PGFAN_EFORMAT,
                      "format mismatch: the source sends %s but this target expects %s",
                      pgfan_format_name(source_format), pgfan_format_name(r->format));
        return PGFAN_EFORMAT;
    }
    if (r->nfields >= 0 && source_nfields >= 0 && r->nfields != source_nfields) {
        fan_fault_set(f, (int)r->index, r->label, PGFAN_EFORMAT,
                      "column count mismatch: the source sends %d columns but this "
                      "target expects %d",
                      source_nfields, r->nfields);
        return PGFAN_EFORMAT;
    }
    return PGFAN_OK;
}

void fan_receiver_realign(pgfan_receiver *r, const char *reason)
{
    r->ops->realign(r, reason);
}

void fan_receiver_mark_failed(pgfan_receiver *r)
{
    /* seq_cst, as the thread would: no thread runs for this receiver. */
    atomic_store_explicit(&r->state, PGFAN_RECEIVER_FAILED, memory_order_seq_cst);
    atomic_store_explicit(&r->exited, 1, memory_order_seq_cst);
}

/* ---- the receiver thread ---- */

static void set_state(pgfan_receiver *r, pgfan_receiver_state s)
{
    if (fan_state_is_final(s))
        fan_now(&r->ended_at); /* published by the seq_cst store below */
    atomic_store_explicit(&r->state, (int)s, memory_order_seq_cst);
}

/* ---- retries ---- */

/* The server went away (restart, crash, terminated backend, network): a
 * new connection may well succeed where this one failed. */
static int connection_lost(PGconn *conn, const char *sqlstate)
{
    return PQstatus(conn) == CONNECTION_BAD || strncmp(sqlstate, "08", 2) == 0 ||
           strcmp(sqlstate, "57P01") == 0 || strcmp(sqlstate, "57P02") == 0 ||
           strcmp(sqlstate, "57P03") == 0;
}

/* A fault a reload may fix: a statement receiver lost its connection
 * before the copy's verdict, has retries left, and the kept journal still
 * holds the whole stream. */
static int may_retry(pgfan_receiver *r, const pgfan_fault *f)
{
    fan_shared *s = r->shared;
    return r->conn && r->retries < s->opts.retries && s->journal_ready &&
           fan_journal_whole(&s->journal) && fan_shared_verdict(s) == FAN_VERDICT_NONE &&
           connection_lost(r->conn, f->sqlstate);
}

/* Before a retryable fault is reported: the connection goes back to the
 * caller, who may close it at once, and the others no longer wait for us. */
static void let_go(pgfan_receiver *r)
{
    fan_ring *ring = fan_receiver_ring(r);
    r->ops->leave(r);
    r->conn = NULL;
    r->in_copy = 0;
    r->slot_sent = 0;
    fan_receiver_clear_deadlines(r);
    r->journaling = 0;
    if (fan_ring_is_gating(ring, r->index))
        fan_ring_leave(ring, r->index);
    fan_ring_spill_done(ring, r->index);
}

void fan_receiver_raise_in(pgfan_receiver *r, pgfan_fault *f, pgfan_receiver_state state)
{
    f->bytes = fan_receiver_count(r, FAN_COUNT_BYTES);
    f->rows = fan_receiver_count(r, FAN_COUNT_ROWS);
    if (state == PGFAN_RECEIVER_FAULTED && may_retry(r, f)) {
        f->retryable = 1;
        let_go(r);
    }
    set_state(r, state);
    fan_shared_post_fault(r->shared, f);
}

void fan_receiver_raise(pgfan_receiver *r, pgfan_fault *f)
{
    fan_receiver_raise_in(r, f, PGFAN_RECEIVER_FAULTED);
}

static void add_progress(pgfan_receiver *r, const fan_slot *s)
{
    fan_receiver_count_add(r, FAN_COUNT_BYTES, s->len);
    fan_receiver_count_add(r, FAN_COUNT_ROWS, s->rows);
    r->tokens -= (double)s->len;
}

/* ---- pacing to max_rate ---- */

#define PACE_BURST_S 0.05 /* the bucket holds this much of the rate */
#define PACE_STEP_MS 100  /* longest wait between looks at commands */

/*
 * A token bucket: a slot may start while the bucket is not in debt; sending
 * it takes its bytes out.  Returns 1 after waiting (part of) the debt off,
 * so the caller looks at its commands and comes back; 0 when the next slot
 * may go.  A slot partly sent goes on unpaced: it was paid for.
 */
static int pace(pgfan_receiver *r)
{
    if (!r->max_rate || r->slot_sent)
        return 0;
    double rate = (double)r->max_rate, burst = rate * PACE_BURST_S;
    struct timespec now;
    fan_now(&now);
    if (!r->pacing) {
        r->pacing = 1;
        r->tokens = burst;
    } else {
        r->tokens += fan_seconds_between(&r->paced_at, &now) * rate;
        if (r->tokens > burst)
            r->tokens = burst;
    }
    r->paced_at = now;
    if (r->tokens >= 0)
        return 0;
    double ms = -r->tokens * 1000.0 / rate + 1;
    /* Counted before the wait: the manager's stall watch sees movement. */
    fan_receiver_count_add(r, FAN_COUNT_PACED, 1);
    r->ops->idle(r, ms > PACE_STEP_MS ? PACE_STEP_MS : (int)ms);
    return 1;
}

/* CopyDone, then the server's row count against the source's. */
static void complete(pgfan_receiver *r)
{
    pgfan_fault f;
    if (r->ops->complete(r, &f) != 0) {
        fan_receiver_raise(r, &f);
        set_state(r, PGFAN_RECEIVER_FAILED);
        return;
    }
    /* The ring closed ENDED before the COMMIT verdict: source_rows is
     * published (shared.h). */
    uint64_t want = r->shared->source_rows;
    /* Relaxed: the count reported from now on is the server's. */
    atomic_store_explicit(&r->count[FAN_COUNT_ROWS], r->server_rows,
                          memory_order_relaxed);
    if (r->server_rows != want) {
        fan_fault_set(&f, (int)r->index, r->label, PGFAN_EROWCOUNT,
                      "the target stored %llu rows but the source sent %llu",
                      (unsigned long long)r->server_rows, (unsigned long long)want);
        fan_receiver_raise(r, &f);
        set_state(r, PGFAN_RECEIVER_FAILED);
        return;
    }
    set_state(r, PGFAN_RECEIVER_DONE);
}

/* CopyFail with the reason; the connection ends up idle. */
static void fail_copy(pgfan_receiver *r, pgfan_receiver_state final)
{
    /* The manager wrote its reason before the seq_cst CAS of the verdict,
     * which precedes the command we acted on. */
    r->ops->fail(r, final == PGFAN_RECEIVER_DROPPED
                        ? "pgfan: target dropped after a fault"
                        : r->shared->reason);
    set_state(r, final);
}

/* Leaves the gating set at a point where no slot is held. */
static void step_out(pgfan_receiver *r, enum fan_command why)
{
    fan_ring_leave(fan_receiver_ring(r), r->index);
    if (why == FAN_CMD_STALL) {
        pgfan_fault f;
        fan_fault_set(&f, (int)r->index, r->label, PGFAN_ESTALL,
                      "the target held the copy back longer than %u ms",
                      r->shared->opts.stall_timeout_ms);
        f.reconcilable = 1;
        fan_receiver_raise_in(r, &f, PGFAN_RECEIVER_PAUSED);
    } else {
        set_state(r, PGFAN_RECEIVER_PAUSED);
    }
}

/* ---- the spill journal ---- */

static void journal_fault(pgfan_receiver *r, const char *what)
{
    pgfan_fault f;
    fan_fault_set(&f, (int)r->index, r->label, PGFAN_ESYSTEM,
                  "cannot read the spill journal (%s): %s", what, strerror(errno));
    fan_receiver_raise(r, &f);
}

/* The writer asked us to read on from the journal: leave the ring at a
 * point where we hold no slot (a partly sent one goes on from the journal,
 * where it is whole) and find our cursor's record. */
static void spill_out(pgfan_receiver *r)
{
    fan_ring *ring = fan_receiver_ring(r);
    uint64_t seq, offset;
    fan_ring_spill_take(ring, r->index, &seq, &offset);
    uint64_t cursor = fan_ring_cursor(ring, r->index);
    for (; seq != cursor; seq++)
        if (fan_journal_read(ring->journal, &offset, seq, NULL, 1) != 0) {
            journal_fault(r, "seeking");
            return;
        }
    r->journaling = 1;
    r->jseq = cursor;
    r->joffset = offset;
    r->jloaded = 0;
}

/* Back to the ring at jseq.  `held`: the writer keeps that slot for us (a
 * full journal, scan_min); else only if it is still there. */
static int rejoin(pgfan_receiver *r, int held)
{
    fan_ring *ring = fan_receiver_ring(r);
    fan_ring_set_cursor(ring, r->index, r->jseq);
    if (held)
        fan_ring_rejoin_held(ring, r->index);
    else if (fan_ring_join(ring, r->index) != 0)
        return 0;
    r->journaling = 0;
    r->jloaded = 0;
    fan_ring_spill_done(ring, r->index);
    return 1;
}

/* complete_early: a receiver with the whole stream ends its COPY without
 * waiting for the verdict, unless one was given meanwhile. */
static int completes_early(pgfan_receiver *r)
{
    return r->shared->opts.complete_early &&
           r->shared->opts.policy == PGFAN_POLICY_DROP && fan_receiver_drained(r) &&
           fan_receiver_state(r) == PGFAN_RECEIVER_ACTIVE &&
           fan_shared_verdict(r->shared) == FAN_VERDICT_NONE;
}

static void end_or_wait(pgfan_receiver *r, int ring_state, uint64_t cursor)
{
    if (ring_state == FAN_RING_ENDED) {
        /* seq_cst, loaded by the manager before it reports the end: every
         * slot up to the final head is handed over. */
        if (!atomic_exchange_explicit(&r->drained, 1, memory_order_seq_cst))
            fan_shared_poke(r->shared);
        if (!completes_early(r))
            r->ops->idle(r, -1);
    } else if (ring_state == FAN_RING_FAILED) {
        r->ops->idle(r, -1);
    } else {
        r->ops->wait_data(r, cursor);
    }
}

/* One step of a receiver reading the journal: a record, a re-join, or a
 * wait.  It re-joins once it is within half the ring of head. */
static void journal_step(pgfan_receiver *r)
{
    fan_ring *ring = fan_receiver_ring(r);
    int ring_state = fan_ring_state(ring);
    uint64_t head = fan_ring_head(ring);
    if (r->slot_sent == 0 && head - r->jseq + ring->publish_batch <= ring->nslots / 2 &&
        rejoin(r, 0))
        return;
    /* J1, after head: a journal that is not full holds every slot below it. */
    if (r->jseq != fan_journal_end(ring->journal)) {
        if (r->jloaded != r->jseq + 1) {
            if (fan_journal_read(ring->journal, &r->joffset, r->jseq, &r->jslot, 0) !=
                0) {
                journal_fault(r, "reading");
                return;
            }
            r->jloaded = r->jseq + 1;
        }
        if (pace(r) || r->ops->deliver(r, &r->jslot) != 0)
            return;
        add_progress(r, &r->jslot);
        fan_ring_set_cursor(ring, r->index, ++r->jseq);
        r->ops->after_slot(r);
    } else if (r->jseq != head) {
        /* Only a full journal ends below head (J1). */
        rejoin(r, 1);
    } else {
        end_or_wait(r, ring_state, r->jseq);
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
    /* seq_cst: a command stored meanwhile (abort, drop) wins. */
    if (!atomic_compare_exchange_strong_explicit(&r->command, &expect, FAN_CMD_NONE,
                                                 memory_order_seq_cst,
                                                 memory_order_seq_cst))
        return;
    fan_ring *ring = fan_receiver_ring(r);
    if (fan_ring_spill_asked(ring, r->index))
        spill_out(r); /* asked before we stepped out: the journal has our data */
    if (!r->journaling && !fan_ring_is_gating(ring, r->index) &&
        fan_ring_join(ring, r->index) != 0) {
        pgfan_fault f;
        fan_fault_set(&f, (int)r->index, r->label, PGFAN_EGONE,
                      "paused until its data left the ring");
        fan_receiver_raise(r, &f);
        return;
    }
    set_state(r, PGFAN_RECEIVER_ACTIVE);
}

static void replay_fault(pgfan_receiver *r)
{
    pgfan_fault f;
    fan_fault_set(&f, (int)r->index, r->label, PGFAN_EGONE,
                  "cannot be reloaded: the spill journal filled up and no longer "
                  "holds the whole stream");
    fan_receiver_raise(r, &f);
}

/*
 * A retry: the COPY again on the caller's new connection, and the whole
 * stream from the kept journal's first record; the receiver re-joins the
 * ring once it has caught up (journal_step).
 */
static void reload(pgfan_receiver *r)
{
    int expect = FAN_CMD_RETRY;
    /* seq_cst: a command stored meanwhile (abort, drop) wins. */
    if (!atomic_compare_exchange_strong_explicit(&r->command, &expect, FAN_CMD_NONE,
                                                 memory_order_seq_cst,
                                                 memory_order_seq_cst))
        return;
    fan_ring *ring = fan_receiver_ring(r);
    pgfan_format format = r->format;
    int nfields = r->nfields;
    pgfan_fault f;
    r->conn = r->retry_conn; /* stored before the command we loaded */
    r->retry_conn = NULL;
    r->retries++;
    fan_receiver_count_add(r, FAN_COUNT_RETRIES, 1);
    fan_ring_spill_replay(ring, r->index);
    /* J4: after counting ourselves as a journal reader. */
    if (!fan_journal_whole(ring->journal)) {
        replay_fault(r);
        return;
    }
    memset(&f, 0, sizeof f);
    if (fan_receiver_send_begin(r, &f) != PGFAN_OK ||
        fan_receiver_finish_begin(r, format, nfields, &f) != PGFAN_OK) {
        fan_receiver_raise(r, &f);
        return;
    }
    r->ops->enter(r);
    /* Relaxed, as every counter: it starts over. */
    atomic_store_explicit(&r->count[FAN_COUNT_BYTES], 0, memory_order_relaxed);
    atomic_store_explicit(&r->count[FAN_COUNT_ROWS], 0, memory_order_relaxed);
    /* seq_cst, as in end_or_wait(): the manager must not take the old
     * drained for this run's. */
    atomic_store_explicit(&r->drained, 0, memory_order_seq_cst);
    fan_ring_set_cursor(ring, r->index, 0);
    r->journaling = 1;
    r->jseq = 0; /* a kept journal starts at the first slot, at offset 0 */
    r->joffset = 0;
    r->jloaded = 0;
    r->pacing = 0;
    set_state(r, PGFAN_RECEIVER_ACTIVE);
}

/* Acts on a command.  Returns the command that ends the copy for this
 * receiver, or FAN_CMD_NONE to go on. */
static enum fan_command obey(pgfan_receiver *r, int *acted)
{
    enum fan_command cmd = fan_receiver_command_of(r);
    *acted = 1;
    if (cmd == FAN_CMD_ABORT || cmd == FAN_CMD_DROP)
        return cmd;
    if (cmd == FAN_CMD_COMMIT && fan_receiver_drained(r))
        return cmd;
    if (cmd == FAN_CMD_NONE && completes_early(r)) {
        r->completed_early = 1;
        return FAN_CMD_COMMIT;
    }
    if ((cmd == FAN_CMD_PAUSE || cmd == FAN_CMD_STALL) &&
        fan_receiver_state(r) == PGFAN_RECEIVER_ACTIVE)
        step_out(r, cmd);
    else if (cmd == FAN_CMD_RESUME)
        resume(r);
    else if (cmd == FAN_CMD_RETRY)
        reload(r);
    else if (fan_receiver_state(r) == PGFAN_RECEIVER_ACTIVE && !r->journaling &&
             fan_ring_spill_asked(fan_receiver_ring(r), r->index))
        spill_out(r);
    else
        *acted = 0;
    return FAN_CMD_NONE;
}

/* One step of an active receiver: a slot, or a wait. */
static void drain_step(pgfan_receiver *r)
{
    if (r->journaling) {
        journal_step(r);
        return;
    }
    fan_ring *ring = fan_receiver_ring(r);
    uint64_t cursor = fan_ring_cursor(ring, r->index);
    /* State before head: a head read after seeing ENDED is final. */
    int ring_state = fan_ring_state(ring);
    if (cursor != fan_ring_head(ring)) {
        const fan_slot *s = fan_ring_slot(ring, cursor);
        if (pace(r) || r->ops->deliver(r, s) != 0)
            return;
        add_progress(r, s);
        fan_ring_release(ring, r->index, cursor + 1);
        r->ops->after_slot(r);
    } else {
        end_or_wait(r, ring_state, cursor);
    }
}

/* Drains the ring until a command ends the copy for this receiver. */
static enum fan_command pump(pgfan_receiver *r)
{
    for (;;) {
        int acted;
        enum fan_command end = obey(r, &acted);
        if (end != FAN_CMD_NONE)
            return end;
        if (acted)
            continue;
        if (fan_receiver_state(r) != PGFAN_RECEIVER_ACTIVE)
            r->ops->idle(r, -1);
        else
            drain_step(r);
    }
}

static void *receiver_main(void *arg)
{
    pgfan_receiver *r = arg;
    fan_ring *ring = fan_receiver_ring(r);
    r->ops->enter(r);
    set_state(r, PGFAN_RECEIVER_ACTIVE);
    enum fan_command cmd = pump(r);
    if (cmd == FAN_CMD_COMMIT) {
        complete(r);
    } else {
        /* It reads no slot again, from the ring or the journal (a message
         * half sent was copied aside): the others need not wait for its
         * CopyFail to be answered. */
        if (fan_ring_is_gating(ring, r->index))
            fan_ring_leave(ring, r->index);
        fan_ring_spill_done(ring, r->index);
        fail_copy(r,
                  cmd == FAN_CMD_DROP ? PGFAN_RECEIVER_DROPPED : PGFAN_RECEIVER_FAILED);
    }
    if (fan_ring_is_gating(ring, r->index))
        fan_ring_leave(ring, r->index);
    fan_ring_spill_done(ring, r->index);
    r->ops->leave(r);
    /* seq_cst: the manager sees `exited` only after we stopped using conn. */
    atomic_store_explicit(&r->exited, 1, memory_order_seq_cst);
    fan_shared_poke(r->shared);
    return NULL;
}

int fan_receiver_start(pgfan_receiver *r)
{
    return fan_thread_start(&r->thread, receiver_main, r);
}

void fan_receiver_join(pgfan_receiver *r)
{
    fan_thread_join(&r->thread);
}

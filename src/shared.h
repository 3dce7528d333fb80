/*
 * What the worker threads and the manager share, one level below both:
 * the options the threads read, the ring, the fault log, the verdict and
 * its reason, the manager's wake-up and the source's final row count.  The
 * producer and receiver threads are given this object, never the manager,
 * so control flows down and data one way.
 *
 * Who may touch what:
 *  - opts, ring: set by the manager before any thread starts and read-only
 *    (opts) or governed by ring.h (ring) until every thread is joined.
 *  - the fault log: any thread appends and reads under `lock`.
 *  - verdict: decided once (compare-and-swap, seq_cst) by the manager's
 *    thread; `reason` is written before that store and read only after a
 *    load that saw it (the CAS and the loads are seq_cst: they pair).
 *  - source_rows: written by the producer thread before it closes the ring
 *    ENDED, whose seq_cst store of the ring state publishes it; read only
 *    after the ring state read ENDED (fan_ring_state(), acquire).
 *  - wake: the manager sleeps on it, any thread pokes it.
 */
#ifndef FAN_SHARED_H
#define FAN_SHARED_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfan.h"
#include "ring.h"
#include "wake.h"

enum fan_verdict { FAN_VERDICT_NONE = 0, FAN_VERDICT_COMMIT, FAN_VERDICT_ABORT };

typedef struct fan_shared {
    pgfan_options opts;
    fan_ring ring;
    int ring_ready;
    fan_journal journal; /* open when opts.spill_limit > 0 */
    int journal_ready;

    pthread_mutex_t lock; /* the fault log below */
    pgfan_fault *faults;
    size_t nfaults, faults_cap;
    pgfan_fault *first; /* per receiver: its first fault (since its last retry) */
    unsigned char *has_first;
    size_t nreceivers;

    atomic_int verdict; /* enum fan_verdict */
    char reason[160];   /* CopyFail message, when the verdict is ABORT */
    uint64_t source_rows;
    fan_waiter wake;
} fan_shared;

/* A worker thread: started once, joined once. */
typedef struct fan_thread {
    pthread_t id;
    int started;
} fan_thread;

/* Returns PGFAN_OK or PGFAN_ESYSTEM. */
int fan_thread_start(fan_thread *t, void *(*fn)(void *), void *arg);
/* Joins a started thread; nothing for one that never started. */
void fan_thread_join(fan_thread *t);

/* Returns 0, or -1 when a lock or waiter cannot be made. */
int fan_shared_init(fan_shared *s, const pgfan_options *opts);
/* Sets up the ring and the per-receiver fault table.  Returns a status. */
int fan_shared_start(fan_shared *s, size_t nreceivers);
void fan_shared_destroy(fan_shared *s);

/* Appends a fault (copied) and wakes the manager.  Any thread. */
void fan_shared_post_fault(fan_shared *s, const pgfan_fault *f);
/* Wakes the manager to look again.  Any thread. */
void fan_shared_poke(fan_shared *s);

/* Decides the verdict once; returns 1 when this call decided it. */
int fan_shared_decide(fan_shared *s, enum fan_verdict v, const char *reason);
static inline enum fan_verdict fan_shared_verdict(fan_shared *s)
{
    /* seq_cst: pairs with the CAS in fan_shared_decide(); `reason` is
     * readable once ABORT is seen. */
    return (enum fan_verdict)atomic_load_explicit(&s->verdict, memory_order_seq_cst);
}

/* Copies out fault k, or receiver i's first fault.  Return 1 if there is one. */
int fan_shared_fault(fan_shared *s, size_t k, pgfan_fault *out);
int fan_shared_receiver_fault(fan_shared *s, size_t i, pgfan_fault *out);
/* Receiver i starts over (a retry): its next fault is its first.  The log
 * keeps every fault. */
void fan_shared_forget_receiver_fault(fan_shared *s, size_t i);
size_t fan_shared_fault_count(fan_shared *s);

#endif

/*
 * The broadcast ring: one writer (the producer thread), N readers (receiver
 * threads), every reader sees every slot.
 *
 * Sequence numbers are free-running 64-bit counters; slot index = seq & mask.
 * `head`: slots < head are published.  Each reader's `cursor`: slots <
 * cursor are done for it.  The writer may fill slot s only when
 * s - cursor < nslots for every reader in the gating set.
 *
 * Memory-ordering edges (every one is named where it is used):
 *  E1 publish: writer fills slots, then stores head (release);
 *     a reader loads head (acquire), then reads the slots below it.
 *  E2 release: a reader finishes reading, then stores its cursor (release);
 *     the writer loads cursors (acquire) before reusing a slot.
 *  E3 sleep/wake: the sleeper's seq_cst store of its `want` followed by a
 *     seq_cst re-check, against the waker's seq_cst store of head, cursor or
 *     state followed by a seq_cst load of `want` (wake.h).
 *
 * Head is stored once per `publish_batch` filled slots, so the head cache
 * line crosses to the readers once per batch, not once per slot; and
 * always before the writer goes idle or ends, so a batch never waits on
 * the next one.
 *
 * Wake-ups are batched: a sleeping reader asks to be woken when head is
 * `wake_batch` slots past its cursor, the sleeping writer when a reader's
 * cursor frees `wake_batch` slots.  So a hand-off costs a system call per
 * batch, not per slot.  Nobody sleeps forever short of its batch: the
 * writer wakes every reader with unread slots (fan_ring_flush) before it
 * goes idle, and every reader eventually releases up to head, which is past
 * the writer's mark.
 *  E4 join: a reader re-entering the gating set stores `gating`, bumps
 *     `epoch` and loads head, all seq_cst; the writer loads `epoch` seq_cst
 *     before every claim and rescans cursors when it changed.  Either the
 *     writer sees the reader, or the reader sees a head that tells it
 *     whether its data is still intact: a claim the writer made without
 *     seeing the reader is at most publish_batch - 1 slots past that head.
 *
 * Only a reader's own thread changes its gating membership, and only at a
 * point where it holds no slot, so a slot is never reused under a reader.
 * A reader asked to spill (journal.h, J2) leaves at such a point too; what
 * it has not read, the writer has put in the journal first.
 */
#ifndef FAN_RING_H
#define FAN_RING_H

#include <poll.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "journal.h"
#include "wake.h"

#define FAN_CACHELINE 64

typedef struct fan_slot {
    char *data;
    size_t len;    /* bytes of COPY data, whole rows only */
    size_t cap;    /* allocated bytes; may exceed chunk size for a huge row */
    uint64_t rows; /* rows whose data ends in this slot */
    /* A huge message's buffer, adopted from the producer instead of copied
     * (fan_ring_adopt): `data` is that buffer until the slot is claimed
     * again, when `release` frees it and the slot's own comes back. */
    void (*release)(void *);
    char *own;
    size_t own_cap;
} fan_slot;

enum fan_ring_state {
    FAN_RING_OPEN = 0,  /* the writer may still publish */
    FAN_RING_ENDED = 1, /* the writer reached the producer's end: head is final */
    FAN_RING_FAILED = 2 /* the writer stopped early: the data is incomplete */
};

enum fan_spill {
    FAN_SPILL_NONE = 0,   /* reading the ring */
    FAN_SPILL_ASKED = 1,  /* the writer put our unread slots in the journal */
    FAN_SPILL_READING = 2 /* out of the gating set, reading the journal */
};

typedef struct fan_reader {
    alignas(FAN_CACHELINE) _Atomic uint64_t cursor;
    alignas(FAN_CACHELINE) atomic_int gating;
    atomic_int spill;      /* enum fan_spill (J2, J3) */
    uint64_t spill_seq;    /* with FAN_SPILL_ASKED: the journal holds every */
    uint64_t spill_offset; /* slot from spill_seq on, from this offset */
    fan_waiter waiter;
} fan_reader;

typedef struct fan_ring {
    alignas(FAN_CACHELINE) _Atomic uint64_t head;
    alignas(FAN_CACHELINE) _Atomic uint64_t epoch;
    atomic_int state;
    atomic_int stopped;
    /* Writer-private: next sequence to fill, the last head stored, and the
     * cached gating minimum. */
    alignas(FAN_CACHELINE) uint64_t next;
    uint64_t published;
    uint64_t cached_min;
    uint64_t seen_epoch;
    fan_waiter writer;
    uint64_t nslots;
    uint64_t mask;
    uint64_t wake_batch;    /* slots per wake-up, 1 .. nslots/4 */
    uint64_t publish_batch; /* filled slots per head store, 1 .. nslots/8 */
    int spin_rounds;        /* pauses before a wait sleeps */
    size_t chunk_bytes;
    fan_slot *slots;
    fan_reader *readers;
    size_t nreaders;
    fan_journal *journal; /* NULL: no spilling */
} fan_ring;

/*
 * Sets up a ring of `nslots` (power of two >= 2) slots of `chunk_bytes` for
 * `nreaders` readers, all in the gating set with cursor = `first_seq`.
 * Returns 0, or -1 with errno set.
 */
int fan_ring_init(fan_ring *r, uint64_t nslots, size_t chunk_bytes, size_t nreaders,
                  uint64_t first_seq);
void fan_ring_destroy(fan_ring *r);

/* ---- writer ---- */

/*
 * Waits until the slot at r->next may be filled.  Returns 1 when it may, 0
 * when woken or timed out first (the caller checks its own flags and calls
 * again), and never blocks longer than `timeout_ms` (-1: no limit).
 */
int fan_ring_wait_space(fan_ring *r, int timeout_ms);
/* The slot at r->next, emptied; valid only after fan_ring_wait_space() == 1. */
fan_slot *fan_ring_claim(fan_ring *r);
/* Makes sure the claimed slot holds `need` bytes.  Returns 0 or -1 (ENOMEM). */
/* Writer: makes the claimed, empty slot `s` hold `buf` (n bytes) without
 * copying it; `release` frees it once every reader is done with the slot. */
void fan_ring_adopt(fan_slot *s, char *buf, size_t n, void (*release)(void *));
int fan_ring_reserve(fan_ring *r, fan_slot *s, size_t need);
/* Marks the claimed slot filled.  Head moves once publish_batch slots are
 * filled, waking readers whose batch is complete. */
void fan_ring_publish(fan_ring *r);
/* Moves head to every filled slot and wakes every sleeping reader that has
 * unread slots; the writer calls it before it goes idle (waiting for the
 * source or for space, or calling out). */
void fan_ring_flush(fan_ring *r);
/*
 * Asks every gating reader that holds the writer back to read on from the
 * journal, after putting the slots it has not read there.  Returns how many
 * were asked (0: no journal, or it is full).
 */
int fan_ring_spill(fan_ring *r);
/* Ends the stream (FAN_RING_ENDED: head moves to every filled slot first;
 * or FAN_RING_FAILED) and wakes every reader. */
void fan_ring_close(fan_ring *r, int state);

/* ---- readers ---- */

static inline uint64_t fan_ring_head(fan_ring *r)
{
    /* E1: acquire pairs with the writer's release store in publish. */
    return atomic_load_explicit(&r->head, memory_order_acquire);
}

static inline const fan_slot *fan_ring_slot(const fan_ring *r, uint64_t seq)
{
    return &r->slots[seq & r->mask];
}

/* Acquire: a head loaded after seeing ENDED or FAILED is the final head
 * (the writer publishes before it closes).  Readers load the state first. */
int fan_ring_state(fan_ring *r);

/*
 * Waits until head != cursor or the ring is closed or stopped (returns 1),
 * or until woken, one of `extra` is ready or `timeout_ms` passes (returns
 * 0; `extra` revents are filled).
 */
int fan_ring_wait_data(fan_ring *r, size_t reader, uint64_t cursor, struct pollfd *extra,
                       int nextra, int timeout_ms);
/* Marks slots < cursor done for `reader` and wakes a sleeping writer. */
void fan_ring_release(fan_ring *r, size_t reader, uint64_t cursor);
/* Takes `reader` out of the gating set (its thread must hold no slot). */
void fan_ring_leave(fan_ring *r, size_t reader);
/*
 * Puts `reader` back in the gating set at its cursor.  Returns 0, or -1 if
 * slots it has not read may already have been overwritten (it stays out).
 */
int fan_ring_join(fan_ring *r, size_t reader);
/* Relaxed snapshots for the reader's own thread and for progress, lag and
 * stall reports; no data is read on the strength of them. */
static inline uint64_t fan_ring_cursor(fan_ring *r, size_t reader)
{
    return atomic_load_explicit(&r->readers[reader].cursor, memory_order_relaxed);
}
static inline int fan_ring_is_gating(fan_ring *r, size_t reader)
{
    return atomic_load_explicit(&r->readers[reader].gating, memory_order_relaxed);
}

/* ---- readers: the journal ---- */

static inline int fan_ring_spill_asked(fan_ring *r, size_t reader)
{
    /* J2: seq_cst pairs with the writer's store of the request. */
    return atomic_load_explicit(&r->readers[reader].spill, memory_order_seq_cst) ==
           FAN_SPILL_ASKED;
}
/* Relaxed: for the stall watch and reports. */
static inline int fan_ring_is_spilled(fan_ring *r, size_t reader)
{
    return atomic_load_explicit(&r->readers[reader].spill, memory_order_relaxed) !=
           FAN_SPILL_NONE;
}
/* Takes an asked-for spill: leaves the gating set and returns where the
 * journal holds the reader's data (the record `*seq` at `*offset`). */
void fan_ring_spill_take(fan_ring *r, size_t reader, uint64_t *seq, uint64_t *offset);
/* Re-joins at the end of a full journal, whose slot the writer keeps while
 * the reader is counted as spilled (scan_min); fan_ring_spill_done() must
 * follow. */
void fan_ring_rejoin_held(fan_ring *r, size_t reader);
/* The reader reads the journal no more (re-joined, or ended) (J3). */
void fan_ring_spill_done(fan_ring *r, size_t reader);
/* A reader out of the gating set starts reading a kept journal from its
 * first record (a retry); it must then check fan_journal_whole() (J4). */
void fan_ring_spill_replay(fan_ring *r, size_t reader);
/* Moves the cursor of a reader outside the gating set, for fan_ring_join()
 * and for lag reports. */
static inline void fan_ring_set_cursor(fan_ring *r, size_t reader, uint64_t cursor)
{
    /* Relaxed: the writer reads no cursor outside the gating set, and
     * fan_ring_join()'s seq_cst stores order it before the writer's scan. */
    atomic_store_explicit(&r->readers[reader].cursor, cursor, memory_order_relaxed);
}

/* ---- anyone ---- */

/* Stops every wait: writer and readers return 0 and check their flags. */
void fan_ring_stop(fan_ring *r);
/* Wakes one reader's current or next wait (to make it check its flags). */
void fan_ring_kick_reader(fan_ring *r, size_t reader);
/* Wakes the writer's current or next wait. */
void fan_ring_kick_writer(fan_ring *r);

#endif

#include "ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Spinning before sleeping pays while the thread we wait for runs on
 * another core: a hand-off in flight then arrives within microseconds,
 * sooner than a sleep and wake-up (system calls and a context switch).
 * With more ring threads than cores the spinner only takes time from the
 * thread it waits for, so it gives up soon.  Waits are batched, so even the
 * long spin costs little CPU next to the servers'.
 */
#define SPIN_ROUNDS_OWN_CORES 512
#define SPIN_ROUNDS_SHARED    64

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

int fan_ring_init(fan_ring *r, uint64_t nslots, size_t chunk_bytes, size_t nreaders,
                  uint64_t first_seq)
{
    memset(r, 0, sizeof *r);
    r->writer.fd = -1;
    if (nslots < 2 || (nslots & (nslots - 1)) != 0 || chunk_bytes == 0) {
        errno = EINVAL;
        return -1;
    }
    r->nslots = nslots;
    r->mask = nslots - 1;
    r->wake_batch = nslots >= 8 ? nslots / 4 : 1;
    r->publish_batch = nslots >= 16 ? nslots / 8 : 1;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    r->spin_rounds = cpus > 0 && nreaders + 1 <= (size_t)cpus ? SPIN_ROUNDS_OWN_CORES
                                                              : SPIN_ROUNDS_SHARED;
    r->chunk_bytes = chunk_bytes;
    atomic_init(&r->head, first_seq);
    atomic_init(&r->epoch, 0);
    atomic_init(&r->state, FAN_RING_OPEN);
    atomic_init(&r->stopped, 0);
    r->next = first_seq;
    r->published = first_seq;
    r->cached_min = first_seq;
    r->seen_epoch = 0;

    r->slots = calloc(nslots, sizeof *r->slots);
    if (nreaders > 0 && posix_memalign((void **)&r->readers, FAN_CACHELINE,
                                       nreaders * sizeof *r->readers) != 0)
        r->readers = NULL;
    if (!r->slots || (nreaders > 0 && !r->readers))
        goto fail;
    for (size_t i = 0; i < nreaders; i++) {
        fan_reader *rd = &r->readers[i];
        memset(rd, 0, sizeof *rd);
        rd->waiter.fd = -1;
        atomic_init(&rd->cursor, first_seq);
        atomic_init(&rd->gating, 1);
        atomic_init(&rd->spill, FAN_SPILL_NONE);
        r->nreaders = i + 1;
        if (fan_waiter_init(&rd->waiter) != 0)
            goto fail;
    }
    if (fan_waiter_init(&r->writer) != 0)
        goto fail;
    for (uint64_t i = 0; i < nslots; i++) {
        r->slots[i].data = malloc(chunk_bytes);
        if (!r->slots[i].data)
            goto fail;
        r->slots[i].cap = chunk_bytes;
    }
    return 0;
fail:
    fan_ring_destroy(r);
    errno = ENOMEM;
    return -1;
}

/* Gives an adopted buffer back to its producer and the slot its own. */
static void slot_restore(fan_slot *s)
{
    if (!s->release)
        return;
    s->release(s->data);
    s->data = s->own;
    s->cap = s->own_cap;
    s->own = NULL;
    s->release = NULL;
}

void fan_ring_destroy(fan_ring *r)
{
    if (r->slots)
        for (uint64_t i = 0; i < r->nslots; i++) {
            slot_restore(&r->slots[i]);
            free(r->slots[i].data);
        }
    free(r->slots);
    for (size_t i = 0; i < r->nreaders; i++)
        fan_waiter_destroy(&r->readers[i].waiter);
    free(r->readers);
    fan_waiter_destroy(&r->writer);
    memset(r, 0, sizeof *r);
    r->writer.fd = -1;
}

/* The smallest cursor of the gating set, as a distance below `seq`.  A
 * full journal gates like a reader at its end while readers still read it:
 * they re-join the ring there, so that slot must stay. */
static uint64_t scan_min(fan_ring *r, uint64_t seq)
{
    uint64_t min = seq;
    fan_journal *j = r->journal;
    /* J3: seq_cst, before the gating loads below: a reader that re-joined
     * and then left the journal is seen in the gating set. */
    if (j && j->full && atomic_load_explicit(&j->spilled, memory_order_seq_cst) > 0)
        min = atomic_load_explicit(&j->end, memory_order_relaxed); /* our own store */
    for (size_t i = 0; i < r->nreaders; i++) {
        fan_reader *rd = &r->readers[i];
        /* E4: seq_cst load of membership, ordered after our epoch load. */
        if (!atomic_load_explicit(&rd->gating, memory_order_seq_cst))
            continue;
        /* E2 (+E3): seq_cst includes acquire; pairs with the reader's
         * release of its cursor, so its reads of the slot are complete. */
        uint64_t c = atomic_load_explicit(&rd->cursor, memory_order_seq_cst);
        if (seq - c > seq - min)
            min = c;
    }
    return min;
}

static int space_free(fan_ring *r, int force_scan)
{
    uint64_t s = r->next;
    if (r->journal && r->journal->full)
        force_scan = 1; /* the journal's readers do not bump the epoch */
    /* E4: seq_cst pairs with fan_ring_join()'s fetch_add. */
    uint64_t e = atomic_load_explicit(&r->epoch, memory_order_seq_cst);
    if (!force_scan && e == r->seen_epoch && s - r->cached_min < r->nslots)
        return 1;
    r->seen_epoch = e;
    r->cached_min = scan_min(r, s);
    return s - r->cached_min < r->nslots;
}

/* Stores head = next if slots were filled since the last store. */
static void publish_head(fan_ring *r)
{
    if (r->published == r->next)
        return;
    r->published = r->next;
    /* E1: release (seq_cst) publishes the contents of every slot < next.
     * E3: seq_cst store before loading the readers' `want`. */
    atomic_store_explicit(&r->head, r->next, memory_order_seq_cst);
    for (size_t i = 0; i < r->nreaders; i++)
        fan_waiter_notify_at(&r->readers[i].waiter, r->next);
}

int fan_ring_wait_space(fan_ring *r, int timeout_ms)
{
    if (space_free(r, 0))
        return 1;
    /* The readers we wait for must see and be woken for every filled slot,
     * or they would not free space.  Once is enough: we fill nothing more
     * until we return, and a reader that falls asleep meanwhile has
     * released everything it saw. */
    fan_ring_flush(r);
    for (int i = 0; i < r->spin_rounds; i++) {
        cpu_relax();
        if (space_free(r, 1))
            return 1;
    }
    /* The first cursor that frees wake_batch slots wakes us. */
    fan_waiter_prepare(&r->writer, r->next - r->nslots + r->wake_batch);
    /* E3: re-check after announcing the sleep. */
    if (space_free(r, 1) || atomic_load_explicit(&r->stopped, memory_order_seq_cst)) {
        fan_waiter_cancel(&r->writer);
        return space_free(r, 0);
    }
    fan_waiter_sleep(&r->writer, NULL, 0, timeout_ms);
    return space_free(r, 1);
}

fan_slot *fan_ring_claim(fan_ring *r)
{
    fan_slot *s = &r->slots[r->next & r->mask];
    /* J3: seq_cst pairs with the last reader's decrement. */
    if (r->journal && r->journal->active &&
        atomic_load_explicit(&r->journal->spilled, memory_order_seq_cst) == 0)
        fan_journal_reset(r->journal);
    /* Every reader released the slot (the claim waited for it): an adopted
     * buffer can go, and a slot grown for a huge row goes back to its
     * normal size, so memory stays bounded by nslots x chunk_bytes between
     * such rows. */
    slot_restore(s);
    if (s->cap > r->chunk_bytes) {
        char *p = realloc(s->data, r->chunk_bytes);
        if (p) {
            s->data = p;
            s->cap = r->chunk_bytes;
        }
    }
    s->len = 0;
    s->rows = 0;
    return s;
}

void fan_ring_adopt(fan_slot *s, char *buf, size_t n, void (*release)(void *))
{
    s->own = s->data;
    s->own_cap = s->cap;
    s->data = buf;
    s->cap = n;
    s->len = n;
    s->release = release;
}

int fan_ring_reserve(fan_ring *r, fan_slot *s, size_t need)
{
    (void)r;
    if (need <= s->cap)
        return 0;
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(s->data, cap);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    s->data = p;
    s->cap = cap;
    return 0;
}

void fan_ring_publish(fan_ring *r)
{
    /* J1: the record is written before head covers the slot, so a spilled
     * reader that sees head past its sequence finds it in the journal,
     * unless the journal is full. */
    if (r->journal && r->journal->active)
        fan_journal_append(r->journal, &r->slots[r->next & r->mask]);
    r->next++;
    if (r->next - r->published >= r->publish_batch)
        publish_head(r);
}

void fan_ring_flush(fan_ring *r)
{
    publish_head(r);
    /* A reader asleep at cursor c wants c + wake_batch; wake it when c < head.
     * E3: head was stored seq_cst by publish_head, in this same thread. */
    for (size_t i = 0; i < r->nreaders; i++)
        fan_waiter_notify_at(&r->readers[i].waiter, r->next + r->wake_batch - 1);
}

void fan_ring_close(fan_ring *r, int state)
{
    if (state == FAN_RING_ENDED)
        publish_head(r); /* E1 for the last slots; readers see ENDED after it */
    /* E3: seq_cst store of the state before the readers' `want`. */
    atomic_store_explicit(&r->state, state, memory_order_seq_cst);
    for (size_t i = 0; i < r->nreaders; i++)
        fan_waiter_notify(&r->readers[i].waiter);
}

int fan_ring_state(fan_ring *r)
{
    /* Acquire: a reader that sees ENDED also sees the final head. */
    return atomic_load_explicit(&r->state, memory_order_acquire);
}

static int data_ready(fan_ring *r, uint64_t cursor)
{
    /* `stopped` is relaxed while spinning: it only makes us return to check
     * our own flags; the seq_cst re-check before sleeping pairs with
     * fan_ring_stop()'s store (E3). */
    return fan_ring_head(r) != cursor || fan_ring_state(r) != FAN_RING_OPEN ||
           atomic_load_explicit(&r->stopped, memory_order_relaxed);
}

int fan_ring_wait_data(fan_ring *r, size_t reader, uint64_t cursor, struct pollfd *extra,
                       int nextra, int timeout_ms)
{
    fan_reader *rd = &r->readers[reader];
    for (int i = 0; i < nextra; i++)
        extra[i].revents = 0;
    for (int i = 0; i < r->spin_rounds; i++) {
        if (data_ready(r, cursor))
            return 1;
        cpu_relax();
    }
    fan_waiter_prepare(&rd->waiter, cursor + r->wake_batch);
    /* E3: seq_cst re-check of head and state after announcing the sleep. */
    if (atomic_load_explicit(&r->head, memory_order_seq_cst) != cursor ||
        atomic_load_explicit(&r->state, memory_order_seq_cst) != FAN_RING_OPEN ||
        atomic_load_explicit(&r->stopped, memory_order_seq_cst)) {
        fan_waiter_cancel(&rd->waiter);
        return 1;
    }
    fan_waiter_sleep(&rd->waiter, extra, nextra, timeout_ms);
    return data_ready(r, cursor);
}

void fan_ring_release(fan_ring *r, size_t reader, uint64_t cursor)
{
    /* E2: release (seq_cst) after our last read of the slots below cursor.
     * E3: seq_cst store before loading the writer's `want`. */
    atomic_store_explicit(&r->readers[reader].cursor, cursor, memory_order_seq_cst);
    fan_waiter_notify_at(&r->writer, cursor);
}

void fan_ring_leave(fan_ring *r, size_t reader)
{
    /* E3: seq_cst store before loading the writer's `want`. */
    atomic_store_explicit(&r->readers[reader].gating, 0, memory_order_seq_cst);
    fan_waiter_notify(&r->writer);
}

int fan_ring_join(fan_ring *r, size_t reader)
{
    fan_reader *rd = &r->readers[reader];
    /* Relaxed: only this reader's thread stores its cursor. */
    uint64_t cursor = atomic_load_explicit(&rd->cursor, memory_order_relaxed);
    /* E4: store membership, bump epoch, then load head, all seq_cst. */
    atomic_store_explicit(&rd->gating, 1, memory_order_seq_cst);
    atomic_fetch_add_explicit(&r->epoch, 1, memory_order_seq_cst);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_seq_cst);
    /* A writer that has not seen us may have filled up to publish_batch - 1
     * slots past head and be filling the next one, which overwrites
     * sequence head + publish_batch - 1 - nslots; everything from cursor on
     * must be newer. */
    if (head - cursor + r->publish_batch > r->nslots) {
        fan_ring_leave(r, reader);
        return -1;
    }
    return 0;
}

/* Starts the journal at `from` with the filled slots from there to next;
 * they are intact, as a gating reader at `from` holds them. */
static int journal_from(fan_ring *r, uint64_t from)
{
    fan_journal *j = r->journal;
    fan_journal_start(j, from);
    for (uint64_t seq = from; seq != r->next; seq++)
        if (fan_journal_append(j, &r->slots[seq & r->mask]) != 0)
            return -1;
    return 0;
}

/* Whether some gating reader keeps up (within half the ring of next):
 * only then is a reader that holds us back slower than the others.  When
 * every reader is behind, the source is simply faster than all targets,
 * and spilling would only move the whole stream to disk. */
static int someone_keeps_up(fan_ring *r)
{
    for (size_t i = 0; i < r->nreaders; i++) {
        fan_reader *rd = &r->readers[i];
        /* Seq_cst as in scan_min(); a stale answer only delays a spill. */
        if (atomic_load_explicit(&rd->gating, memory_order_seq_cst) &&
            r->next - atomic_load_explicit(&rd->cursor, memory_order_seq_cst) <=
                r->nslots / 2)
            return 1;
    }
    return 0;
}

int fan_ring_spill(fan_ring *r)
{
    fan_journal *j = r->journal;
    int asked = 0;
    if (!j || j->full || j->gave_up || !someone_keeps_up(r))
        return 0;
    for (size_t i = 0; i < r->nreaders; i++) {
        fan_reader *rd = &r->readers[i];
        /* E2/E4: seq_cst, as in scan_min(). */
        if (!atomic_load_explicit(&rd->gating, memory_order_seq_cst) ||
            atomic_load_explicit(&rd->spill, memory_order_seq_cst) != FAN_SPILL_NONE)
            continue;
        uint64_t c = atomic_load_explicit(&rd->cursor, memory_order_seq_cst);
        if (r->next - c < r->nslots)
            continue; /* not the one we wait for */
        if (!j->active && journal_from(r, c) != 0) {
            j->gave_up = 1; /* the budget does not hold one ring: never spill */
            break;
        }
        if (j->full || c < j->first)
            continue;
        rd->spill_seq = c;
        rd->spill_offset = fan_journal_offset(j, c);
        /* J3: counted before the reader can see the request. */
        atomic_fetch_add_explicit(&j->spilled, 1, memory_order_seq_cst);
        /* J2: seq_cst store after the records and the request's fields. */
        atomic_store_explicit(&rd->spill, FAN_SPILL_ASKED, memory_order_seq_cst);
        fan_waiter_kick(&rd->waiter);
        asked++;
    }
    return asked;
}

void fan_ring_spill_take(fan_ring *r, size_t reader, uint64_t *seq, uint64_t *offset)
{
    fan_reader *rd = &r->readers[reader];
    /* J2: the caller loaded FAN_SPILL_ASKED seq_cst before these. */
    *seq = rd->spill_seq;
    *offset = rd->spill_offset;
    atomic_store_explicit(&rd->spill, FAN_SPILL_READING, memory_order_seq_cst);
    fan_ring_leave(r, reader);
}

void fan_ring_spill_done(fan_ring *r, size_t reader)
{
    /* J3: after our last read of the journal. */
    if (atomic_exchange_explicit(&r->readers[reader].spill, FAN_SPILL_NONE,
                                 memory_order_seq_cst) == FAN_SPILL_NONE)
        return;
    atomic_fetch_sub_explicit(&r->journal->spilled, 1, memory_order_seq_cst);
    /* A full journal's end slot may have been held for us (scan_min), and
     * a reader that leaves without re-joining frees no cursor, so nothing
     * else would wake a writer asleep on it.  The eventfd keeps the kick
     * for a writer that checked `spilled` just before our decrement. */
    fan_waiter_kick(&r->writer);
}

void fan_ring_spill_replay(fan_ring *r, size_t reader)
{
    fan_reader *rd = &r->readers[reader];
    /* J4: counted (seq_cst) before the caller loads `overflowed`. */
    atomic_fetch_add_explicit(&r->journal->spilled, 1, memory_order_seq_cst);
    atomic_store_explicit(&rd->spill, FAN_SPILL_READING, memory_order_seq_cst);
}

void fan_ring_rejoin_held(fan_ring *r, size_t reader)
{
    /* E4 as in fan_ring_join(); no check of head is needed. */
    atomic_store_explicit(&r->readers[reader].gating, 1, memory_order_seq_cst);
    atomic_fetch_add_explicit(&r->epoch, 1, memory_order_seq_cst);
}

void fan_ring_stop(fan_ring *r)
{
    /* E3: seq_cst against the sleepers' re-check; the kicks below also wake
     * a thread already asleep or about to be. */
    atomic_store_explicit(&r->stopped, 1, memory_order_seq_cst);
    fan_waiter_kick(&r->writer);
    for (size_t i = 0; i < r->nreaders; i++)
        fan_waiter_kick(&r->readers[i].waiter);
}

void fan_ring_kick_reader(fan_ring *r, size_t reader)
{
    fan_waiter_kick(&r->readers[reader].waiter);
}

void fan_ring_kick_writer(fan_ring *r)
{
    fan_waiter_kick(&r->writer);
}

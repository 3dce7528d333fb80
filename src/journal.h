/*
 * The spill journal: an append-only file of ring slots, so that a reader
 * that would hold the writer back can read on from disk while the writer
 * and every other reader go at their own speed.
 *
 * The ring's writer appends; readers that were asked to spill read it
 * sequentially, each from its own offset, until they re-join the ring.  The
 * file is unlinked as soon as it is created, so it disappears with the last
 * descriptor whatever happens to the process.
 *
 * Records: a header (sequence, length, rows) and the slot's bytes.  While
 * the journal is active it holds every slot from `first` to `end`.  Once
 * its byte budget is spent it stops growing (`full`), and the writer keeps
 * the slot at `end` until the readers still in the journal have re-joined
 * there: a full journal turns back into plain backpressure (and so into a
 * stall fault, when the target stops).
 *
 * Memory-ordering edges (named where used; see also ring.h):
 *  J1 append: the writer write()s a record, then stores `end` (release);
 *     a reader loads `end` (acquire), then pread()s records below it.
 *  J2 spill: the writer appends the slots a reader has not read, stores
 *     the request's sequence and offset, then the reader's `spill` flag
 *     (seq_cst); the reader loads the flag (seq_cst), then the rest.
 *  J3 retire: a reader's last pread() precedes its seq_cst decrement of
 *     `spilled`; the writer loads `spilled` (seq_cst) == 0 before it
 *     truncates and reuses the file.
 *  J4 replay (a kept journal, for retries): a reader that re-reads the
 *     stream from its start increments `spilled`, then loads `overflowed`
 *     (both seq_cst); the writer stores `overflowed` when the journal fills,
 *     then loads `spilled` in every later scan_min (seq_cst).  So either the
 *     writer keeps the slot at `end` for that reader to re-join at, or the
 *     reader sees that the journal is not whole and gives up.
 */
#ifndef FAN_JOURNAL_H
#define FAN_JOURNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fan_slot fan_slot;

typedef struct fan_journal {
    int fd;
    uint64_t limit; /* bytes the file may hold */
    int keep;       /* set before start: hold the whole stream from its first
                       slot (for retries), never reset */
    /* Writer-private. */
    int active;        /* appending every published slot */
    int full;          /* the budget (or the disk) ran out: no more appends */
    int gave_up;       /* the budget did not hold one ring: no spilling */
    uint64_t first;    /* sequence of the first record */
    uint64_t size;     /* bytes in the file */
    uint64_t *offsets; /* offset of record first + i */
    size_t noffsets, cap;
    /* Shared. */
    _Atomic uint64_t end;        /* records below it are written (J1) */
    _Atomic uint64_t bytes;      /* relaxed: size, for progress */
    _Atomic uint64_t peak_bytes; /* relaxed: the largest size reached */
    atomic_int spilled;          /* readers asked to read it or reading it (J3) */
    atomic_int overflowed;       /* kept, but no longer whole: it filled up (J4) */
} fan_journal;

/* Creates the (unlinked) file in `dir` (NULL: $TMPDIR or /tmp).  Returns 0,
 * or -1 with errno set. */
int fan_journal_open(fan_journal *j, const char *dir, uint64_t limit);
void fan_journal_close(fan_journal *j);

/* ---- writer ---- */

/* Starts journaling at sequence `seq`, into an empty file. */
void fan_journal_start(fan_journal *j, uint64_t seq);
/* Appends the slot of sequence j->end (J1).  Returns 0, or -1 once the
 * journal is full (then it stays full until reset). */
int fan_journal_append(fan_journal *j, const fan_slot *s);
/* The offset of record `seq` (first <= seq < end). */
uint64_t fan_journal_offset(const fan_journal *j, uint64_t seq);
/* No reader needs it any more (J3): empties the file, stops journaling.
 * A kept journal is never reset. */
void fan_journal_reset(fan_journal *j);

/* A kept journal still holds the whole stream (J4). */
static inline int fan_journal_whole(fan_journal *j)
{
    return j->keep && !atomic_load_explicit(&j->overflowed, memory_order_seq_cst);
}

/* ---- readers ---- */

static inline uint64_t fan_journal_end(fan_journal *j)
{
    /* J1: acquire pairs with the writer's release after its write(). */
    return atomic_load_explicit(&j->end, memory_order_acquire);
}

/*
 * Reads the record at *offset, which must be `seq`, into `into` (grown as
 * needed) and moves *offset past it.  With `skip`, only moves past it.
 * Returns 0, or -1 with errno set (EIO for a record that does not match).
 */
int fan_journal_read(fan_journal *j, uint64_t *offset, uint64_t seq, fan_slot *into,
                     int skip);

#endif

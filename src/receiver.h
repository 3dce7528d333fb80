/*
 * Receivers: one thread each, draining the ring at their own pace.  Their
 * kinds (a COPY FROM statement, a callback) are variants behind an ops
 * table, one file each; this module runs the thread and its state machine.
 *
 * Who touches what:
 *  - Before start and after the thread is joined: the manager's thread,
 *    through the functions below only.
 *  - While the thread runs, the thread owns everything except:
 *    `command` (the manager stores it, then kicks the waiter; the thread
 *    loads it after waking: seq_cst both sides), `state`, `drained` and
 *    `exited` (the thread stores them after the work they announce and
 *    pokes the manager, which loads them: seq_cst both sides), and the
 *    relaxed counters in `count`.
 */
#ifndef FAN_RECEIVER_H
#define FAN_RECEIVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "pgfan.h"
#include "shared.h"
#include "wire.h"

/* What the manager asks a receiver thread to do. */
enum fan_command {
    FAN_CMD_NONE = 0,
    FAN_CMD_COMMIT, /* the copy commits: send CopyDone */
    FAN_CMD_ABORT,  /* failed copy: send CopyFail */
    FAN_CMD_DROP,   /* drop this receiver: CopyFail, leave the gating set */
    FAN_CMD_PAUSE,  /* leave the gating set and wait (the caller asked) */
    FAN_CMD_STALL,  /* leave the gating set and report a stall fault */
    FAN_CMD_RESUME, /* resume from the cursor (the manager re-joined it) */
    FAN_CMD_RETRY   /* reload from the journal's start on `retry_conn` */
};

/* A receiver's progress counters: bytes and rows handed over, bytes moved
 * to the target (the manager's stall watch), notices seen. */
enum fan_receiver_counter {
    FAN_COUNT_BYTES,
    FAN_COUNT_ROWS,
    FAN_COUNT_MOVED,
    FAN_COUNT_NOTICES,
    FAN_COUNT_PACED,   /* waits for max_rate: not a stall */
    FAN_COUNT_RETRIES, /* reloads after a lost connection */
    FAN_COUNTERS
};

typedef struct fan_receiver_ops {
    /* Caller's thread, before the thread runs. */
    int (*send_begin)(pgfan_receiver *r, pgfan_fault *f);
    /* Reads the answer to the COPY; sets r->format (a call receiver takes
     * the source's) and r->nfields. */
    int (*finish_begin)(pgfan_receiver *r, pgfan_format source_format, pgfan_fault *f);
    /* The receiver's thread. */
    void (*enter)(pgfan_receiver *r);
    void (*leave)(pgfan_receiver *r);
    /* Hands one slot over: 0 done, 1 interrupted by a command, -1 after a
     * fault was raised. */
    int (*deliver)(pgfan_receiver *r, const fan_slot *s);
    void (*after_slot)(pgfan_receiver *r);
    /* Waits for data past `cursor`, or for a command. */
    void (*wait_data)(pgfan_receiver *r, uint64_t cursor);
    /* Waits for a command (paused, faulted, or waiting for the verdict), at
     * most `timeout_ms` (-1: no limit). */
    void (*idle)(pgfan_receiver *r, int timeout_ms);
    /* CopyDone: returns 0 with r->server_rows set, or -1 with `f` filled. */
    int (*complete)(pgfan_receiver *r, pgfan_fault *f);
    /* CopyFail with `reason`, bounded by realign_timeout_ms. */
    void (*fail)(pgfan_receiver *r, const char *reason);
    /* The same for a failed start, in the caller's thread. */
    void (*realign)(pgfan_receiver *r, const char *reason);
    void (*destroy)(pgfan_receiver *r);
} fan_receiver_ops;

struct pgfan_receiver {
    const fan_receiver_ops *ops;
    fan_shared *shared; /* set by fan_receiver_attach() */
    size_t index;
    char label[128];
    pgfan_format format;
    int nfields; /* -1 for call receivers */
    /* statement kind */
    PGconn *conn;
    char *sql;
    int in_copy;      /* COPY IN running on conn */
    size_t slot_sent; /* bytes of the slot at the cursor already queued */
    fan_wire wire;    /* COPY IN on the wire (wire.h), plain connections */
    int counting_notices;
    PQnoticeReceiver saved_notice;
    struct timespec deadline; /* CopyFail must be answered by then */
    int has_deadline;
    struct timespec cancel_at; /* CopyFail unanswered by then: cancel too */
    int cancel_pending;
    int end_bounded;   /* the wait for CopyDone's answer has end_timeout_ms */
    int end_cancelled; /* ... and its cancel went out */
    int given_up;      /* a CopyFail went unanswered: the connection stays
                          non-blocking, so closing it cannot wait on the server */
    /* reading the spill journal (journal.h), this thread only */
    int journaling;
    uint64_t jseq;    /* the next sequence to hand over */
    uint64_t joffset; /* its record's offset */
    uint64_t jloaded; /* jslot holds sequence jloaded - 1; 0: nothing */
    fan_slot jslot;
    /* pacing to max_rate (bytes/s, 0: none), this thread only */
    uint64_t max_rate;
    double tokens; /* bytes that may go now; negative: owed */
    struct timespec paced_at;
    int pacing;
    /* retries: the manager stores retry_conn before its seq_cst store of
     * FAN_CMD_RETRY; the thread takes it after loading that command */
    PGconn *retry_conn;
    unsigned int retries; /* this thread only */
    /* call kind */
    pgfan_call_fn call;
    void *call_arg;

    atomic_int state;                     /* pgfan_receiver_state */
    atomic_int command;                   /* enum fan_command */
    atomic_int drained;                   /* consumed the final head of an ended ring */
    atomic_int exited;                    /* the thread no longer touches conn */
    _Atomic uint64_t count[FAN_COUNTERS]; /* relaxed progress counters */
    uint64_t server_rows;                 /* PQcmdTuples at COMMAND_OK */
    int completed_early; /* ended by complete_early, not by the verdict; written
                            before the seq_cst store of a final state */
    struct timespec ended_at;
    fan_thread thread;
};

pgfan_receiver *fan_receiver_alloc(const fan_receiver_ops *ops, const char *label);
void fan_receiver_attach(pgfan_receiver *r, size_t index, fan_shared *s);
int fan_receiver_is_attached(const pgfan_receiver *r);
PGconn *fan_receiver_conn(const pgfan_receiver *r);
const char *fan_receiver_label(const pgfan_receiver *r);

/* Start, in the caller's thread: send every COPY first, then collect. */
int fan_receiver_send_begin(pgfan_receiver *r, pgfan_fault *f);
int fan_receiver_finish_begin(pgfan_receiver *r, pgfan_format source_format,
                              int source_nfields, pgfan_fault *f);
/* A failed start: CopyFail before the thread ever ran. */
void fan_receiver_realign(pgfan_receiver *r, const char *reason);
int fan_receiver_start(pgfan_receiver *r);
void fan_receiver_join(pgfan_receiver *r);
/* A receiver whose thread could not start counts as failed and exited. */
void fan_receiver_mark_failed(pgfan_receiver *r);

void fan_receiver_command(pgfan_receiver *r, enum fan_command cmd);
enum fan_command fan_receiver_command_of(pgfan_receiver *r);
int fan_receiver_state(pgfan_receiver *r);
int fan_receiver_drained(pgfan_receiver *r);
int fan_receiver_exited(pgfan_receiver *r);
/* Relaxed progress counters: anyone reads, the receiver's thread adds. */
uint64_t fan_receiver_count(pgfan_receiver *r, enum fan_receiver_counter c);
void fan_receiver_count_add(pgfan_receiver *r, enum fan_receiver_counter c, uint64_t n);
const struct timespec *fan_receiver_ended_at(pgfan_receiver *r);

/* DONE, FAILED or DROPPED: the receiver's COPY has ended for good. */
static inline int fan_state_is_final(int state)
{
    return state == PGFAN_RECEIVER_DONE || state == PGFAN_RECEIVER_FAILED ||
           state == PGFAN_RECEIVER_DROPPED;
}

/* ---- for the kinds (the receiver's thread) ---- */

/* The bounds of one COPY end (CopyFail's, or CopyDone's end timeout) are
 * over. */
static inline void fan_receiver_clear_deadlines(pgfan_receiver *r)
{
    r->has_deadline = 0;
    r->cancel_pending = 0;
    r->end_bounded = 0;
    r->end_cancelled = 0;
}

/* Reports a fault; the receiver then waits in `state` for the manager. */
void fan_receiver_raise_in(pgfan_receiver *r, pgfan_fault *f, pgfan_receiver_state state);
void fan_receiver_raise(pgfan_receiver *r, pgfan_fault *f);
/* The ring and this receiver's waiter. */
fan_ring *fan_receiver_ring(pgfan_receiver *r);
fan_waiter *fan_receiver_waiter(pgfan_receiver *r);
/* A command that interrupts sending (abort, drop, pause, stall). */
int fan_receiver_interrupted(pgfan_receiver *r);

extern const fan_receiver_ops fan_statement_receiver;
extern const fan_receiver_ops fan_call_receiver;

#endif

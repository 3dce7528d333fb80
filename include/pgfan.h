/*
 * pgfan.h - read PostgreSQL COPY data once and stream it into many targets.
 *
 * One producer (a COPY ... TO STDOUT statement, or a callback yielding COPY
 * data) feeds any number of receivers (COPY ... FROM STDIN statements, or
 * callbacks) through a bounded broadcast ring.  Each receiver is drained by
 * its own thread at its own speed; a manager, driven from the caller's
 * thread, reports progress and faults and decides how the copy ends.
 *
 * Conventions:
 *  - Functions returning int return PGFAN_OK (0) on success and a negative
 *    pgfan_status on failure; pgfan_strerror() describes a code.
 *  - Ownership of an object passed to a function moves only when that
 *    function succeeds.
 *  - Connections (PGconn) always stay the caller's.  While a manager is
 *    started the caller must not use them; after pgfan_manager_finish() or
 *    pgfan_manager_abort() returns they are out of COPY mode and reusable.
 *  - The library never prints, exits or installs signal handlers.
 *  - A manager is driven from one thread at a time.  Distinct managers are
 *    independent and may be used from different threads.
 */
#ifndef PGFAN_H
#define PGFAN_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(PGFAN_BUILDING)
#define PGFAN_EXTERN __attribute__((visibility("default")))
#else
#define PGFAN_EXTERN
#endif

/* Version of the headers; pgfan_version() gives the library's. */
#define PGFAN_VERSION_MAJOR  0
#define PGFAN_VERSION_MINOR  1
#define PGFAN_VERSION_PATCH  0
#define PGFAN_VERSION_STRING "0.1.0"
#define PGFAN_VERSION_HEX                                                                \
    ((PGFAN_VERSION_MAJOR << 16) | (PGFAN_VERSION_MINOR << 8) | PGFAN_VERSION_PATCH)

/* Returns PGFAN_VERSION_HEX of the library actually linked. */
PGFAN_EXTERN unsigned int pgfan_version(void);
/* Returns PGFAN_VERSION_STRING of the library actually linked. */
PGFAN_EXTERN const char *pgfan_version_string(void);

/*
 * Status codes.  Zero is success, every error is negative.  One table
 * gives each code its number and description; the enum, pgfan_strerror()
 * and pgfan_status_name() are generated from it, so they cannot drift.
 */
#define PGFAN_STATUS_MAP(X)                                                              \
    X(OK, 0, "success")                                                                  \
    X(EINVAL, -1, "invalid argument")                                                    \
    X(ENOMEM, -2, "out of memory")                                                       \
    X(ESTATE, -3, "operation not valid in the current state")                            \
    X(ENOTCOPY, -4, "statement is not a COPY of the required direction")                 \
    X(EFORMAT, -5, "producer and receiver formats or columns differ")                    \
    X(ESERVER, -6, "the server reported an error")                                       \
    X(ECONN, -7, "connection is broken or not usable")                                   \
    X(ECALLBACK, -8, "a callback reported an error")                                     \
    X(EROWCOUNT, -9, "row count differs from the producer's")                            \
    X(EDATA, -10, "malformed COPY data")                                                 \
    X(ESTALL, -11, "receiver stalled the copy")                                          \
    X(EABORTED, -12, "the copy was aborted")                                             \
    X(ENORECEIVERS, -13, "no receivers")                                                 \
    X(EGONE, -14, "the receiver's data has left the ring")                               \
    X(ESYSTEM, -15, "a system call failed")                                              \
    X(EPRODUCER, -16, "the producer failed")                                             \
    X(ERECEIVER, -17, "a receiver failed")                                               \
    X(EBUSY, -18, "the connection is busy")                                              \
    X(EPARTIAL, -19, "some targets committed and some did not")                          \
    X(ESETTINGS, -20, "session settings differ in a way that would change the data")     \
    X(EOUTCOME, -21, "whether the COMMIT took effect is unknown")

typedef enum pgfan_status {
#define PGFAN_STATUS_ENUM(name, code, text) PGFAN_##name = code,
    PGFAN_STATUS_MAP(PGFAN_STATUS_ENUM)
#undef PGFAN_STATUS_ENUM
} pgfan_status;

/* The most negative status code this version defines. */
#define PGFAN_STATUS_LAST PGFAN_EOUTCOME

/* A static, human-readable description of a status code ("unknown error"
 * for a code this version does not define). */
PGFAN_EXTERN const char *pgfan_strerror(int code);

/* The code's name as written in C ("PGFAN_EGONE"), or "PGFAN_UNKNOWN". */
PGFAN_EXTERN const char *pgfan_status_name(int code);

/* COPY data formats.  Producer and receivers must agree. */
typedef enum pgfan_format {
    PGFAN_FORMAT_TEXT = 0,
    PGFAN_FORMAT_CSV = 1,
    PGFAN_FORMAT_BINARY = 2
} pgfan_format;

/* "text", "csv" or "binary". */
PGFAN_EXTERN const char *pgfan_format_name(pgfan_format format);

/* What a receiver fault does to the whole copy. */
typedef enum pgfan_policy {
    PGFAN_POLICY_ABORT = 0, /* any receiver fault fails the copy */
    PGFAN_POLICY_DROP = 1   /* faulted receivers are dropped, the others complete */
} pgfan_policy;

/* Receiver states (see pgfan(3)). */
typedef enum pgfan_receiver_state {
    PGFAN_RECEIVER_STARTING = 0, /* added, COPY not started yet */
    PGFAN_RECEIVER_ACTIVE,       /* receiving data */
    PGFAN_RECEIVER_PAUSED,       /* out of the gating set, may resume */
    PGFAN_RECEIVER_FAULTED,      /* fault reported, waiting for reconcile or drop */
    PGFAN_RECEIVER_DONE,         /* COPY completed and confirmed by the server */
    PGFAN_RECEIVER_FAILED,       /* COPY ended in failure (rolled back) */
    PGFAN_RECEIVER_DROPPED       /* removed after a fault, realigned */
} pgfan_receiver_state;

/* "starting", "active", "paused", "faulted", "done", "failed" or "dropped". */
PGFAN_EXTERN const char *pgfan_receiver_state_name(pgfan_receiver_state state);

typedef struct pgfan_producer pgfan_producer;
typedef struct pgfan_receiver pgfan_receiver;
typedef struct pgfan_manager pgfan_manager;

/* Room for a server or library message in fault records, with its NUL. */
#define PGFAN_MESSAGE_MAX 512

/* Who a fault record is about, when it is not a receiver: the producer,
 * or the copy as a whole (for example "no receivers left"). */
#define PGFAN_PRODUCER_INDEX (-1)
#define PGFAN_MANAGER_INDEX  (-2)

/*
 * A fault: an error raised by the producer or one receiver.  `sqlstate` and
 * `message` carry the server's SQLSTATE and primary message when a server
 * reported it; otherwise `sqlstate` is empty and `message` is libpq's or the
 * library's explanation.  `bytes` and `rows` are what that party had moved.
 */
typedef struct pgfan_fault {
    int receiver;     /* receiver index, PGFAN_PRODUCER_INDEX or PGFAN_MANAGER_INDEX */
    int code;         /* a pgfan_status */
    int reconcilable; /* the receiver can resume: pgfan_manager_reconcile() */
    int retryable;    /* the receiver lost its connection and can be reloaded
                         from the start on a new one: pgfan_manager_retry() */
    char sqlstate[6];
    char message[PGFAN_MESSAGE_MAX]; /* what went wrong, without the party's name */
    char label[128];                 /* the party: a receiver's label, "source" */
    uint64_t bytes;
    uint64_t rows;
} pgfan_fault;

/*
 * Options of a manager.  Initialise with pgfan_options_init() and change
 * what you need, so fields added later keep their defaults.
 */
typedef struct pgfan_options {
    unsigned int ring_slots;       /* power of two >= 2; default 64 */
    size_t chunk_bytes;            /* bytes per slot, >= 4096; default 128 KiB */
    pgfan_policy policy;           /* default PGFAN_POLICY_ABORT */
    unsigned int fault_hold_ms;    /* how long a faulted receiver is held; default 5000 */
    unsigned int stall_timeout_ms; /* 0 = wait for slow receivers forever (default) */
    unsigned int progress_ms;      /* pgfan_manager_next() tick; default 100 */
    unsigned int realign_timeout_ms; /* how long a server may take to answer CopyFail
                                        or a cancel before its connection is given up
                                        (reported, left for the caller to close);
                                        default 30000 */
    int trust_session_settings;      /* nonzero: skip the check, at start, that the
                                        source's and each target's session settings
                                        render and read values alike (client_encoding,
                                        DateStyle, IntervalStyle, extra_float_digits,
                                        lc_monetary, TimeZone); default 0 */
    const volatile sig_atomic_t *interrupt; /* when not NULL and *interrupt turns
                                        nonzero (say, from the caller's SIGINT
                                        handler), pgfan_manager_start() stops
                                        waiting for a server, cancels what it
                                        waits for and fails with PGFAN_EABORTED;
                                        during the copy, pgfan_manager_next()
                                        aborts it as pgfan_manager_abort() would.
                                        Default NULL */
    unsigned int start_timeout_ms;          /* how long pgfan_manager_start() waits for
                                               a server to start its COPY (a table
                                               locked by another session) before it
                                               cancels it and fails with PGFAN_ESTALL;
                                               0 = no limit (default) */
    uint64_t spill_limit;                   /* bytes of disk a spill journal may use:
                                               a receiver that would hold the
                                               producer back reads on from the
                                               journal while the others go on;
                                               once the journal is full, a receiver
                                               left behind faults with
                                               PGFAN_ESTALL.  0 = no journal
                                               (default): slow receivers set the
                                               pace, as stall_timeout_ms allows */
    const char *spill_dir;                  /* where the journal is created
                                               (unlinked at once); read by
                                               pgfan_manager_start(); NULL =
                                               $TMPDIR or /tmp (default) */
    int complete_early;                     /* nonzero, with PGFAN_POLICY_DROP
                                               only: a receiver that has the
                                               whole stream ends its COPY at
                                               once instead of waiting for the
                                               others and
                                               pgfan_manager_finish(), and
                                               pgfan_manager_next() reports
                                               PGFAN_EVENT_RECEIVER_DONE; an
                                               abort no longer rolls it back.
                                               Default 0 */
    unsigned int retries;                   /* how many times each statement
                                               receiver that loses its
                                               connection may be reloaded with
                                               pgfan_manager_retry(); needs
                                               spill_limit > 0, as the journal
                                               then keeps the whole stream (a
                                               write of every byte to disk).
                                               Default 0 */
    unsigned int end_timeout_ms;            /* how long a statement receiver's
                                               server may take to answer the
                                               end of its COPY (end-of-statement
                                               triggers, foreign key checks, a
                                               server that stopped answering)
                                               before the statement is
                                               cancelled and the receiver
                                               faults with PGFAN_ESTALL; a
                                               server that leaves the cancel
                                               unanswered for realign_timeout_ms
                                               too is given up.  pgfan_transfer()
                                               bounds its COMMIT by it too.
                                               0 = no limit (default) */
} pgfan_options;

/* Fills `opts` with the defaults.  `opts` must not be NULL. */
PGFAN_EXTERN void pgfan_options_init(pgfan_options *opts);

/* ---- Producers ---------------------------------------------------------- */

/*
 * A producer that runs `copy_to_sql` (a single "COPY ... TO STDOUT"
 * statement) on `conn`.  The connection must be idle (or in a transaction
 * block) and stays the caller's; the statement text is copied.  A statement
 * that is not a COPY TO STDOUT is refused with PGFAN_ENOTCOPY.
 */
PGFAN_EXTERN int pgfan_producer_new_statement(pgfan_producer **out, PGconn *conn,
                                              const char *copy_to_sql);

/*
 * An iterator callback.  Set *data and *len to the next chunk of COPY data
 * and return 1; return 0 at the end of the data; return a negative value to
 * fail the copy (reported as PGFAN_ECALLBACK).  The chunk must stay valid
 * until the next call.  Chunks may split rows anywhere: the producer
 * re-cuts the stream at row boundaries and counts rows itself.  Called from
 * the producer thread.
 */
typedef int (*pgfan_iterator_fn)(void *arg, const char **data, size_t *len);

/* A producer that yields the COPY data `fn` returns, in `format`. */
PGFAN_EXTERN int pgfan_producer_new_iterator(pgfan_producer **out, pgfan_format format,
                                             pgfan_iterator_fn fn, void *arg);

/* Frees a producer that was not handed to a manager.  NULL is ignored. */
PGFAN_EXTERN void pgfan_producer_free(pgfan_producer *producer);

/* ---- Receivers ---------------------------------------------------------- */

/*
 * A receiver that runs `copy_from_sql` (a single "COPY ... FROM STDIN"
 * statement) on `conn`.  Same rules as pgfan_producer_new_statement().
 */
PGFAN_EXTERN int pgfan_receiver_new_statement(pgfan_receiver **out, PGconn *conn,
                                              const char *copy_from_sql);

/*
 * A call-receiver callback, given each chunk of COPY data (whole rows, in the
 * producer's format) in order.  Return 0 to continue, non-zero to fault the
 * receiver (reported as PGFAN_ECALLBACK).  Called from the receiver's own
 * thread; a chunk may be passed again after a reconcile only if the callback
 * failed on it.
 */
typedef int (*pgfan_call_fn)(void *arg, const char *data, size_t len);

/* A receiver that hands every chunk to `fn`. */
PGFAN_EXTERN int pgfan_receiver_new_call(pgfan_receiver **out, pgfan_call_fn fn,
                                         void *arg);

/*
 * Names the receiver in fault records and reports (copied).  By default a
 * statement receiver is named "host:port/dbname" and a call receiver
 * "call".  Never include a password.
 */
PGFAN_EXTERN int pgfan_receiver_set_label(pgfan_receiver *receiver, const char *label);

/*
 * Limits what the receiver hands over to `bytes_per_second` of COPY data
 * (averaged, in bursts of at most 50 ms of the rate); 0 = no limit (the
 * default).  Only this receiver is slowed: with a spill journal
 * (pgfan_options.spill_limit) the others go on at their own pace, without
 * one they wait for it like for any slow receiver.  Time spent pacing is not
 * a stall.  Before pgfan_manager_start() only.
 */
PGFAN_EXTERN int pgfan_receiver_set_max_rate(pgfan_receiver *receiver,
                                             uint64_t bytes_per_second);

/* Frees a receiver that was not handed to a manager.  NULL is ignored. */
PGFAN_EXTERN void pgfan_receiver_free(pgfan_receiver *receiver);

/* ---- Manager ------------------------------------------------------------ */

/*
 * Creates a manager for `producer`, taking ownership of it on success.
 * `opts` may be NULL for the defaults.
 */
PGFAN_EXTERN int pgfan_manager_new(pgfan_manager **out, pgfan_producer *producer,
                                   const pgfan_options *opts);

/*
 * Adds a receiver before start, taking ownership of it on success.  Its
 * index (0, 1, ... in the order added) is stored in *index when not NULL.
 */
PGFAN_EXTERN int pgfan_manager_add_receiver(pgfan_manager *manager,
                                            pgfan_receiver *receiver, size_t *index);

/*
 * Starts the copy: checks that the source's and every statement receiver's
 * session settings render and read values alike (PGFAN_ESETTINGS names the
 * setting, both values and the target; see trust_session_settings), runs
 * the producer's and every receiver's COPY statement, checks that formats
 * and column counts agree, then starts the threads.  Nothing moves before
 * every check passed.  On failure every connection is realigned (out of
 * COPY mode) and the reason is recorded as a fault.
 */
PGFAN_EXTERN int pgfan_manager_start(pgfan_manager *manager);

/* What pgfan_manager_next() reports. */
typedef enum pgfan_event_type {
    PGFAN_EVENT_PROGRESS = 0, /* nothing new; counters moved */
    PGFAN_EVENT_FAULT,        /* `fault` describes a new fault */
    PGFAN_EVENT_END,          /* the copy reached its end (every receiver has all the
                                 source's data, or the copy failed): call
                                 pgfan_manager_finish() */
    PGFAN_EVENT_RECEIVER_DONE /* with complete_early: receiver `receiver` ended its
                                 COPY (see pgfan_manager_receiver()); its
                                 connection is the caller's again */
} pgfan_event_type;

typedef struct pgfan_event {
    pgfan_event_type type;
    pgfan_fault fault; /* valid for PGFAN_EVENT_FAULT */
    size_t receiver;   /* valid for PGFAN_EVENT_RECEIVER_DONE */
} pgfan_event;

/*
 * One cycle of the manager: waits at most `progress_ms` for something to
 * happen, applies the policy, and reports it in *event.  Returns PGFAN_OK,
 * or PGFAN_ESTATE when the manager is not started.
 */
PGFAN_EXTERN int pgfan_manager_next(pgfan_manager *manager, pgfan_event *event);

/*
 * Ends the copy, and is the only call that commits it.  After
 * PGFAN_EVENT_END, when the producer reached its end, paused receivers are
 * resumed (or dropped when their data left the ring), each receiver is
 * completed (CopyDone) and its row count checked against the producer's.
 * Called before PGFAN_EVENT_END, or after a fault failed the copy, it is a
 * failed copy: every receiver is aborted (CopyFail).  Waits for every
 * thread and realigns every connection.  Returns PGFAN_OK when the copy
 * succeeded for every remaining receiver, else the reason it failed.
 */
PGFAN_EXTERN int pgfan_manager_finish(pgfan_manager *manager);

/*
 * Aborts the copy from the caller's thread: every receiver still in COPY
 * gets CopyFail with `reason` (NULL for a default), the producer is
 * cancelled and drained, and every connection is realigned.  Until
 * pgfan_manager_finish() is called, an abort always rolls every target
 * back (no CopyDone was sent).  Returns PGFAN_OK, or PGFAN_ESTATE after
 * finish (nothing is left to roll back).
 */
PGFAN_EXTERN int pgfan_manager_abort(pgfan_manager *manager, const char *reason);

/*
 * Resumes a faulted or stall-paused receiver from its own cursor: nothing is
 * lost and nothing sent twice.  Only faults marked `reconcilable` can be
 * reconciled, within fault_hold_ms.  Returns PGFAN_EGONE (and the receiver
 * stays out) when slots it has not read were already overwritten (or may
 * be: the producer publishes in batches of ring_slots / 8), and
 * PGFAN_ESTATE when the receiver is not waiting to be reconciled.
 */
PGFAN_EXTERN int pgfan_manager_reconcile(pgfan_manager *manager, size_t index);

/*
 * Reloads a receiver that lost its connection (a fault marked `retryable`,
 * held for fault_hold_ms) on `conn`, a new connection that is idle or in a
 * transaction block the caller opened (say, after a TRUNCATE): its COPY
 * statement runs there again and the whole stream is replayed from the
 * spill journal, then it re-joins the others.  The old connection is no
 * longer used by the library once the fault was reported.  Returns
 * PGFAN_EGONE when the journal no longer holds the whole stream (it filled
 * up), PGFAN_ESTATE when the receiver is not waiting to be retried or has
 * used its pgfan_options.retries, PGFAN_EINVAL for a NULL or shared `conn`.
 * The retry itself may fault again.
 */
PGFAN_EXTERN int pgfan_manager_retry(pgfan_manager *manager, size_t index, PGconn *conn);

/*
 * Drops a receiver: CopyFail, rolled back, out of the gating set.  With
 * PGFAN_POLICY_ABORT this fails the copy.
 */
PGFAN_EXTERN int pgfan_manager_drop(pgfan_manager *manager, size_t index);

/*
 * Takes an active receiver out of the gating set until pgfan_manager_resume();
 * the others go on.  Resuming fails with PGFAN_EGONE when its data has left
 * the ring meanwhile.  pgfan_manager_finish() resumes paused receivers (or
 * drops them when too late).
 */
PGFAN_EXTERN int pgfan_manager_pause(pgfan_manager *manager, size_t index);
PGFAN_EXTERN int pgfan_manager_resume(pgfan_manager *manager, size_t index);

/* start + next until the end + finish. */
PGFAN_EXTERN int pgfan_manager_run(pgfan_manager *manager);

/*
 * Frees the manager with its producer and receivers.  A started manager is
 * aborted first.  NULL is ignored.  Connections stay the caller's.
 */
PGFAN_EXTERN void pgfan_manager_free(pgfan_manager *manager);

/* Number of receivers added. */
PGFAN_EXTERN size_t pgfan_manager_receiver_count(const pgfan_manager *manager);

/* Progress of the whole copy; cheap enough to call many times a second. */
typedef struct pgfan_progress {
    uint64_t producer_bytes;
    uint64_t producer_rows;
    int producer_done;         /* the producer reached its end */
    size_t receivers;          /* number of receivers */
    size_t active;             /* receivers still in the gating set */
    double seconds;            /* since start */
    size_t spilled;            /* receivers reading the spill journal (or asked to) */
    uint64_t spill_bytes;      /* the journal's size now */
    uint64_t spill_peak_bytes; /* the largest it has been */
} pgfan_progress;

PGFAN_EXTERN int pgfan_manager_progress(const pgfan_manager *manager,
                                        pgfan_progress *out);

/* Progress and, after finish or abort, the final result of one receiver. */
typedef struct pgfan_receiver_result {
    pgfan_receiver_state state;
    uint64_t bytes; /* COPY data bytes handed to the target */
    uint64_t rows;  /* rows handed over; after DONE, the server's count */
    uint64_t lag;   /* slots published but not yet consumed */
    double seconds; /* from start to the end of its COPY (or to now) */
    int has_fault;  /* `fault` is valid */
    pgfan_fault fault;
    char label[128];
    uint64_t notices;     /* notices its server sent during the copy: all on a plain
                             connection; over TLS or GSS encryption, and while the
                             server ends the COPY, when the connection has libpq's
                             default notice receiver */
    int may_commit;       /* after finish: its COPY completed (DONE) and the copy as a
                             whole allows it to commit (policy abort: every receiver
                             succeeded; drop: the source ended and it did); with
                             complete_early, also as soon as it ended early */
    unsigned int retries; /* times it was reloaded (pgfan_manager_retry()) */
} pgfan_receiver_result;

PGFAN_EXTERN int pgfan_manager_receiver(const pgfan_manager *manager, size_t index,
                                        pgfan_receiver_result *out);

/* Every fault recorded so far, in order. */
PGFAN_EXTERN size_t pgfan_manager_fault_count(const pgfan_manager *manager);
PGFAN_EXTERN int pgfan_manager_fault(const pgfan_manager *manager, size_t index,
                                     pgfan_fault *out);

/* ---- One call ----------------------------------------------------------- */

/*
 * The outcome of pgfan_transfer().  When the copy failed, `error` is the
 * first fault that caused it (receiver index, SQLSTATE, message).
 */
typedef struct pgfan_transfer_result {
    uint64_t rows;    /* rows read from the source */
    uint64_t bytes;   /* COPY data bytes read from the source */
    double seconds;   /* wall time of the whole transfer */
    size_t committed; /* targets whose COPY was committed */
    int has_error;
    pgfan_fault error;
} pgfan_transfer_result;

/*
 * Copies the result of `copy_to_sql` on `source` into every target: target
 * i runs copy_from_sql[i] on targets[i].  A target that is idle is wrapped
 * in its own transaction (BEGIN ... COMMIT, or ROLLBACK when its COPY
 * failed); a target already in a transaction block is left to the caller.
 * With PGFAN_POLICY_ABORT (the default) no target commits unless every one
 * succeeded; with PGFAN_POLICY_DROP the targets that succeeded commit and
 * PGFAN_EPARTIAL says that some did not.  Faults are never held here (no
 * one could reconcile them): fault_hold_ms is taken as 0.  `opts` may be NULL; `result`
 * may be NULL; `target_results`, when not NULL, receives one entry per target.
 */
PGFAN_EXTERN int pgfan_transfer(PGconn *source, const char *copy_to_sql, size_t ntargets,
                                PGconn *const targets[],
                                const char *const copy_from_sql[],
                                const pgfan_options *opts, pgfan_transfer_result *result,
                                pgfan_receiver_result *target_results);

#ifdef __cplusplus
}
#endif

#endif /* PGFAN_H */

/*
 * Internal structures shared by the producer, receiver and manager modules.
 * Nothing here is exported.
 */
#ifndef FAN_INTERNAL_H
#define FAN_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "pgfan.h"
#include "ring.h"
#include "rowscan.h"

enum fan_producer_kind { FAN_PRODUCER_STATEMENT, FAN_PRODUCER_ITERATOR };
enum fan_receiver_kind { FAN_RECEIVER_STATEMENT, FAN_RECEIVER_CALL };

/* What the manager asks a receiver thread to do. */
enum fan_command {
    FAN_CMD_NONE = 0,
    FAN_CMD_COMMIT, /* the producer reached its end: send CopyDone */
    FAN_CMD_ABORT,  /* failed copy: send CopyFail */
    FAN_CMD_DROP,   /* drop this receiver: CopyFail, leave the gating set */
    FAN_CMD_PAUSE,  /* leave the gating set and wait (the caller asked) */
    FAN_CMD_STALL,  /* leave the gating set and report a stall fault */
    FAN_CMD_RESUME  /* resume from the cursor (the manager re-joined it) */
};

struct pgfan_producer {
    enum fan_producer_kind kind;
    PGconn *conn;
    char *sql;
    pgfan_iterator_fn iterate;
    void *iterate_arg;
    pgfan_format format;
    int nfields; /* -1 when unknown (iterator) */
    struct pgfan_manager *manager;

    int in_copy;            /* COPY OUT running on conn */
    int gave_up;            /* realignment timed out: conn left in COPY OUT */
    fan_rowscan scan;       /* iterator: counts rows, finds row boundaries */
    _Atomic uint64_t bytes; /* progress counters, relaxed */
    _Atomic uint64_t rows;
    uint64_t final_rows; /* the source's row count, valid once ended */
    int ended;           /* reached its end: final_rows is valid */
    atomic_int stop;     /* the manager asks the thread to stop */
    pthread_t thread;
    int thread_started;
};

struct pgfan_receiver {
    enum fan_receiver_kind kind;
    PGconn *conn;
    char *sql;
    pgfan_call_fn call;
    void *call_arg;
    pgfan_format format;
    int nfields; /* -1 for call receivers */
    char label[128];
    size_t index;
    struct pgfan_manager *manager;

    /*
     * state, command, drained and exited are seq_cst.  command: the manager
     * writes its reason/verdict, then stores the command and kicks the
     * waiter; the thread loads the command after waking.  state, drained,
     * exited: the thread stores them after the work they announce (ended_at,
     * the last slot sent, its last use of conn) and pokes the manager, which
     * loads them in next().
     */
    int in_copy;            /* COPY IN running on conn (thread-owned) */
    size_t slot_sent;       /* bytes of the slot at the cursor already queued
                               to libpq (thread-owned; 0 between slots) */
    atomic_int state;       /* pgfan_receiver_state */
    atomic_int command;     /* enum fan_command, from the manager */
    atomic_int drained;     /* consumed the final head of an ended ring */
    atomic_int exited;      /* the thread no longer touches conn */
    int counting_notices;   /* our notice receiver is installed */
    _Atomic uint64_t bytes; /* progress counters, relaxed */
    _Atomic uint64_t rows;
    _Atomic uint64_t moved; /* bytes handed to libpq or the callback; relaxed,
                               read by the manager to tell a stopped target */
    uint64_t server_rows;   /* PQcmdTuples at COMMAND_OK */
    struct timespec ended_at;
    int has_fault; /* under manager->lock */
    pgfan_fault fault;
    _Atomic uint64_t notices; /* notices seen during the copy; written by the
                                 receiver thread, read relaxed for progress */
    struct timespec deadline; /* realignment must be done by then */
    int has_deadline;
    struct timespec cancel_at; /* CopyFail unanswered by then: cancel too */
    int cancel_pending;
    /* Manager-thread bookkeeping. */
    struct timespec stalled_since;
    uint64_t stalled_at; /* the `moved` count that has not changed since then */
    int stalling;
    struct timespec hold_until;
    int holding;
    PQnoticeReceiver saved_notice;
    pthread_t thread;
    int thread_started;
};

/* DONE, FAILED or DROPPED: the receiver's COPY has ended for good. */
static inline int fan_state_is_final(int state)
{
    return state == PGFAN_RECEIVER_DONE || state == PGFAN_RECEIVER_FAILED ||
           state == PGFAN_RECEIVER_DROPPED;
}

enum fan_phase { FAN_PHASE_NEW, FAN_PHASE_STARTED, FAN_PHASE_FINISHED };
enum fan_verdict { FAN_VERDICT_NONE = 0, FAN_VERDICT_COMMIT, FAN_VERDICT_ABORT };

struct pgfan_manager {
    pgfan_options opts;
    pgfan_producer *producer;
    pgfan_receiver **receivers;
    size_t nreceivers;
    size_t receivers_cap;
    fan_ring ring;
    int ring_ready;
    enum fan_phase phase;
    struct timespec started_at;
    struct timespec finished_at;

    pthread_mutex_t lock; /* protects the fault list and fault records */
    pgfan_fault *faults;
    size_t nfaults;
    size_t faults_cap;
    size_t faults_reported;

    fan_waiter wake;    /* the manager sleeps here; threads kick it */
    atomic_int verdict; /* enum fan_verdict, decided once */
    int end_reported;
    int failure;      /* the status finish() returns */
    char reason[160]; /* CopyFail message for receivers */
};

/* ---- manager services used by the threads ---- */

/* Records a fault (copied) and wakes the manager. */
void fan_manager_post_fault(struct pgfan_manager *m, const pgfan_fault *f);
/* Wakes the manager to re-evaluate states. */
void fan_manager_poke(struct pgfan_manager *m);
double fan_seconds_since(const struct timespec *t);
void fan_now(struct timespec *t);

/* ---- producer module ---- */
int fan_producer_begin(pgfan_producer *p, pgfan_fault *f);
void fan_producer_realign(pgfan_producer *p);
void *fan_producer_main(void *arg);

/* ---- receiver module ---- */
int fan_receiver_send_begin(pgfan_receiver *r, pgfan_fault *f);
int fan_receiver_finish_begin(pgfan_receiver *r, const pgfan_producer *p, pgfan_fault *f);
void fan_receiver_realign(pgfan_receiver *r, const char *reason);
void *fan_receiver_main(void *arg);
void fan_receiver_command(pgfan_receiver *r, enum fan_command cmd);

/* ---- libpq helpers (pq.c) ---- */
void fan_fault_set(pgfan_fault *f, int who, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Fills a fault from a failed result: SQLSTATE and primary message. */
void fan_fault_from_result(pgfan_fault *f, int who, const PGresult *res,
                           const char *label);
/* Fills a fault from the connection's error message. */
void fan_fault_from_conn(pgfan_fault *f, int who, PGconn *conn, const char *label);
/* "host:port/dbname" of a connection, never its password. */
void fan_conn_label(PGconn *conn, char *buf, size_t len);
/* Milliseconds from now to `t` (negative when passed). */
long fan_ms_until(const struct timespec *t);
void fan_deadline(struct timespec *t, unsigned int ms);
/* Reads results until NULL; keeps the first error in `f` (may be NULL). */
int fan_drain_results(PGconn *conn, pgfan_fault *f, int who, const char *label);
/* Checks that conn can run a statement now. */
int fan_conn_ready(PGconn *conn, pgfan_fault *f, int who, const char *label);

#endif

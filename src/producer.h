/*
 * The producer: the one source of COPY data, run by the producer thread.
 * Its kinds (a COPY TO statement, an iterator callback) are variants behind
 * an ops table, one file each; this module packs what they read into ring
 * slots and runs the thread.
 *
 * Who touches what:
 *  - Before start and after the thread is joined: the manager's thread,
 *    through the functions below only.
 *  - While the thread runs: the thread alone, except `bytes` and `rows`
 *    (relaxed counters anyone may read) and what it publishes through the
 *    shared object (faults, the ring, the source's row count).
 */
#ifndef FAN_PRODUCER_H
#define FAN_PRODUCER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "pgfan.h"
#include "rowscan.h"
#include "shared.h"
#include "wire.h"

#define FAN_SOURCE_LABEL "source"

typedef struct fan_packer fan_packer;

typedef struct fan_producer_ops {
    /* Starts the source's COPY (caller's thread, before the thread runs). */
    int (*begin)(pgfan_producer *p, pgfan_fault *f);
    /* Reads the whole source into the ring (producer thread).  Returns a
     * status; on success p->final_rows is the source's row count. */
    int (*run)(fan_packer *k);
    /* Brings the connection out of COPY after a failed start or run. */
    void (*realign)(pgfan_producer *p);
    void (*destroy)(pgfan_producer *p);
} fan_producer_ops;

struct pgfan_producer {
    const fan_producer_ops *ops;
    fan_shared *shared; /* set by fan_producer_attach() */
    pgfan_format format;
    int nfields; /* -1 when unknown (iterator) */
    /* statement kind */
    PGconn *conn;
    char *sql;
    int in_copy;       /* COPY OUT running on conn */
    fan_wire_out wire; /* reads the COPY itself (plain connections) */
    /* iterator kind */
    pgfan_iterator_fn iterate;
    void *iterate_arg;
    fan_rowscan scan; /* counts rows, finds row boundaries */

    _Atomic uint64_t bytes; /* progress counters, relaxed */
    _Atomic uint64_t rows;
    uint64_t final_rows; /* the thread's, until it closes the ring */
    fan_thread thread;
};

/* Allocates a producer of a kind; NULL without memory. */
pgfan_producer *fan_producer_alloc(const fan_producer_ops *ops, pgfan_format format);
/* Gives the producer the shared object it reports to.  Once. */
void fan_producer_attach(pgfan_producer *p, fan_shared *s);
int fan_producer_is_attached(const pgfan_producer *p);
/* The producer's connection, or NULL (a receiver may not share it). */
PGconn *fan_producer_conn(const pgfan_producer *p);
/* What the source sends, known after fan_producer_begin() (columns: -1
 * when unknown). */
pgfan_format fan_producer_format(const pgfan_producer *p);
int fan_producer_nfields(const pgfan_producer *p);

int fan_producer_begin(pgfan_producer *p, pgfan_fault *f);
void fan_producer_realign(pgfan_producer *p);
/* Starts and joins the producer thread. */
int fan_producer_start(pgfan_producer *p);
void fan_producer_join(pgfan_producer *p);

/* Relaxed progress counters. */
uint64_t fan_producer_bytes(const pgfan_producer *p);
uint64_t fan_producer_rows(const pgfan_producer *p);

/* ---- for the kinds ---- */

/* Appends one whole message (a row, or part of the binary framing). */
int fan_pack_message(fan_packer *k, const char *buf, size_t n, int is_row);
/* The same for a buffer the packer may keep: one bigger than a slot
 * becomes a slot of its own without being copied; `release` frees it
 * (also on failure). */
int fan_pack_message_take(fan_packer *k, char *buf, size_t n, int is_row,
                          void (*release)(void *));
/* Appends bytes that may split rows; rows are cut by the row scanner. */
int fan_pack_bytes(fan_packer *k, const char *data, size_t len);
/* Publishes the slot being filled, if it holds anything. */
void fan_pack_publish(fan_packer *k);
/* The last slot of an iterator: its rows are what the scanner counted. */
void fan_pack_finish_rows(fan_packer *k);
/* Waits for the source socket or a wake-up.  Returns 0, or -1 if stopped. */
int fan_pack_wait_source(fan_packer *k);
int fan_pack_stopping(const fan_packer *k);
/* Lets readers have every filled slot before the kind blocks or calls out. */
void fan_pack_flush(fan_packer *k);
pgfan_producer *fan_pack_producer(fan_packer *k);
/* Reports a fault with the producer's progress. */
void fan_producer_post(pgfan_producer *p, const pgfan_fault *f);

extern const fan_producer_ops fan_statement_producer;
extern const fan_producer_ops fan_iterator_producer;

#endif

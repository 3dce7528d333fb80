/*
 * libpq helpers shared by the producer and receiver kinds: fault records
 * from results and connections, connection labels, starting a COPY and
 * checking what the server answered.  Called from whichever thread owns
 * the connection at the time; none keeps state.
 */
#ifndef FAN_PQ_H
#define FAN_PQ_H

#include <libpq-fe.h>
#include <signal.h>
#include <time.h>

#include "pgfan.h"

/* The bounds of a wait on the caller's thread for a server's answer:
 * give up when *interrupt (may be NULL) turns nonzero or after limit_ms
 * (0: no limit); after giving up, wait at most cancel_ms for the answer
 * to the cancel. */
typedef struct fan_wait {
    const volatile sig_atomic_t *interrupt;
    unsigned int limit_ms;
    unsigned int cancel_ms;
} fan_wait;

/* The bounds a manager's options give the waits of its start. */
fan_wait fan_wait_from_options(const pgfan_options *opts);

/*
 * Waits, within `w`, until the answer to what was sent on conn can be read
 * without blocking.  On giving up it cancels the statement, reads and
 * discards its answer (ending a COPY IN that started anyway), and fills
 * `f`: PGFAN_EABORTED (interrupted), PGFAN_ESTALL (limit_ms passed) or
 * PGFAN_ECONN (the connection broke, or the server did not answer the
 * cancel in time: it is still busy and should be closed).  Returns the
 * status.
 */
int fan_await_result(PGconn *conn, const fan_wait *w, int who, const char *label,
                     pgfan_fault *f);
/* The same with the limit as a deadline (NULL: none) the caller set when
 * it began to wait. */
int fan_await_result_until(PGconn *conn, const fan_wait *w, const struct timespec *limit,
                           int who, const char *label, pgfan_fault *f);

/*
 * Runs one command (BEGIN, COMMIT, ROLLBACK, a SELECT whose rows are not
 * wanted) and waits for it within `w`.
 * On giving up it cancels the command and still reads its answer (at most
 * cancel_ms), so a COMMIT the cancel came too late for is reported as
 * done.  Returns PGFAN_OK when the command succeeded; otherwise fills `f`
 * (may be NULL): the server's error, PGFAN_EABORTED or PGFAN_ESTALL when
 * the cancel stopped it, PGFAN_ECONN when the connection broke or the
 * server answered not even the cancel (it is busy and should be closed).
 */
int fan_exec_within(PGconn *conn, const char *sql, const fan_wait *w, int who,
                    const char *label, pgfan_fault *f);

/* Fills a fault: who, its label, the code and a message. */
void fan_fault_set(pgfan_fault *f, int who, const char *label, int code, const char *fmt,
                   ...) __attribute__((format(printf, 5, 6)));
/* From a failed result: the server's SQLSTATE and primary message. */
void fan_fault_from_result(pgfan_fault *f, int who, const char *label,
                           const PGresult *res);
/* From the connection's error message. */
void fan_fault_from_conn(pgfan_fault *f, int who, const char *label, PGconn *conn);

/* "host:port/dbname" of a connection, never its password. */
void fan_conn_label(PGconn *conn, char *buf, size_t len);

/* Checks that conn can run a statement now.  Returns a status. */
int fan_conn_ready(PGconn *conn, int who, const char *label, pgfan_fault *f);

/* Sends a COPY statement; its answer is read by fan_copy_started(). */
int fan_copy_send(PGconn *conn, const char *sql, int who, const char *label,
                  pgfan_fault *f);

/*
 * Reads the answer to a COPY statement and checks the server entered
 * `want` (PGRES_COPY_OUT or PGRES_COPY_IN).  On success stores the column
 * count and whether the data is binary.  On failure fills `f` (the
 * server's error, or PGFAN_ENOTCOPY) and reads what is left, so the
 * connection is idle again.  Waits within `w` (fan_await_result()).
 */
int fan_copy_started(PGconn *conn, ExecStatusType want, const fan_wait *w, int who,
                     const char *label, int *nfields, int *binary, pgfan_fault *f);
/* The second half of fan_copy_started(), once the answer is ready. */
int fan_copy_result(PGconn *conn, ExecStatusType want, int who, const char *label,
                    int *nfields, int *binary, pgfan_fault *f);

/* The format of a started COPY: the server's word on binary wins over
 * what the statement seemed to ask (text versus CSV only the statement
 * says). */
pgfan_format fan_copy_format(pgfan_format asked, int binary);

/* Reads results until NULL; keeps the first error in `f` (may be NULL).
 * Returns 0, or -1 if there was an error. */
int fan_drain_results(PGconn *conn, int who, const char *label, pgfan_fault *f);

/* Sends a cancel request for what `conn` runs (blocking connect to the
 * server's cancel port). */
void fan_send_cancel(PGconn *conn);

#endif

/*
 * The state of one run of the pgfan command, and the helpers every part of
 * it uses: printing a failure, running SQL with a bound, the connections.
 * One thread (main's) touches all of it; the signal handler only sets
 * cli_interrupted (sql.h).
 */
#ifndef PGFAN_CLI_RUN_H
#define PGFAN_CLI_RUN_H

#include <stdio.h>
#include <time.h>

#include <libpq-fe.h>
#include <pgfan.h>

#include "options.h"
#include "plan.h"
#include "report.h"
#include "sql.h"

enum exit_code {
    EXIT_ALL_COMMITTED = 0,
    EXIT_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_PARTIAL = 3,
    EXIT_UNKNOWN = 4, /* a target's COMMIT went unanswered and could not be settled */
    EXIT_INTERRUPTED = 130
};

typedef struct run {
    cli_options opt;
    PGconn *source;
    PGconn *targets[MAX_TARGETS];
    int in_tx[MAX_TARGETS];    /* BEGIN done, neither COMMIT nor ROLLBACK yet */
    char gid[MAX_TARGETS][80]; /* prepared transaction, when --atomic */
    char xid[MAX_TARGETS][24]; /* each target's transaction, to settle a lost COMMIT */
    int early[MAX_TARGETS];    /* committed as soon as its COPY ended (--on-fault drop) */
    char run_id[40];           /* random, unique across hosts and pid namespaces */
    FILE *report_file;         /* opened before any data moves */
    int stdout_closed;         /* standard output was closed when we started */
    char source_masked[1024];
    char encoding[64]; /* the source database's: every session speaks it */
    plan plan;
    run_report report;
    struct timespec started;
} run;

/* One line per error on stderr: who (password masked), the message, the
 * SQLSTATE.  A target's first error is kept for the report. */
void print_fail(run *r, const cli_fail *f);
/* "source (...)", "target N (...)" or "pgfan". */
const char *who_name(const run *r, int who, char *buf, size_t len);
/* A library fault as a cli_fail. */
void fail_from_fault(cli_fail *f, const pgfan_fault *fault);
/* Records a target's error in the report and marks it failed. */
void note_error(target_report *t, const cli_fail *f);

/* Runs SQL on *c, bounded and interruptible; a connection that answers
 * neither the statement nor its cancel is closed (*c becomes NULL). */
int exec_ok(run *r, PGconn **c, const char *sql, int who, cli_fail *f);
/* The same with $n parameters, returning the result (NULL on failure). */
PGresult *query_ok(run *r, PGconn **c, const char *sql, int nparams,
                   const char *const *params, int who, cli_fail *f);
/* exec_ok() for the statements that end a target's copy (deferred
 * constraint checks, COMMIT), cancelled past --end-timeout; a connection
 * that does not answer the cancel is closed. */
int exec_ending(run *r, PGconn **c, const char *sql, int who, cli_fail *f);
void give_up(run *r, PGconn **c);
/* Rolls back target i's open transaction, or every one (closing
 * connections still busy). */
void rollback_one(run *r, size_t i);
void rollback_all(run *r);
/* Opens a read-only repeatable-read transaction on *c that sees the
 * exported snapshot `id`.  Returns 0, or -1 with the reason in `f`. */
int import_snapshot(run *r, PGconn **c, const char *id, cli_fail *f);
/* Replaces target i's connection with a new pinned one.  Returns 0, or -1
 * (printed; r->targets[i] is NULL). */
int reconnect_target(run *r, size_t i);
/*
 * The same for a server that went away and may be coming back, in steps,
 * so that the caller's loop goes on meanwhile: tried quietly every 250 ms
 * until `window_ms` passed.  reconnect_begin() closes the old connection;
 * each reconnect_step() works for at most `budget_ms` and returns 1 once
 * r->targets[i] is a new pinned connection, 0 while it is not yet, or -1
 * with the last reason in `f` (r->targets[i] is then NULL, or a connection
 * that could not be set up).  Either ends it (`active` turns 0), as does
 * reconnect_abandon(), which may be called on one that is not active.
 */
typedef struct reconnecting {
    sql_connecting attempt;
    int active;                /* begun, and neither done nor abandoned */
    int trying;                /* `attempt` is under way */
    long long next_try, until; /* CLOCK_MONOTONIC milliseconds */
} reconnecting;

void reconnect_begin(run *r, size_t i, long window_ms, reconnecting *rc);
int reconnect_step(run *r, size_t i, reconnecting *rc, long budget_ms, cli_fail *f);
void reconnect_abandon(reconnecting *rc);
/* Connects to the source and every target, pinning their sessions (and,
 * for one table with --snapshot, importing it on the source). */
int connect_all(run *r);

#endif

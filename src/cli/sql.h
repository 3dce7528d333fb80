/*
 * libpq calls of the pgfan command that never wait without a bound: every
 * wait polls the socket, so SIGINT/SIGTERM interrupt it (the statement is
 * then cancelled), and a server that answers neither the statement nor the
 * cancel is given up on instead of waited for.
 */
#ifndef PGFAN_CLI_SQL_H
#define PGFAN_CLI_SQL_H

#include <signal.h>

#include <libpq-fe.h>

/* Set by the SIGINT/SIGTERM handler (to the signal's number). */
extern volatile sig_atomic_t cli_interrupted;

/* Installs the handlers: SIGINT and SIGTERM set cli_interrupted without
 * restarting system calls; SIGPIPE is ignored (a closed stdout is an error
 * to report, not a reason to die with the targets' outcome untold). */
void cli_install_signals(void);

/* A connection being made in steps, by a caller with a loop of its own. */
typedef struct sql_connecting {
    PGconn *conn; /* the caller's, to check with PQstatus once done */
    PostgresPollingStatusType status;
    long until; /* the conninfo's connect_timeout, as a deadline; -1: none */
} sql_connecting;

void sql_connect_begin(sql_connecting *a, const char *conninfo);
/* Advances the connection for at most `budget_ms` (-1: until a signal).
 * Returns 1 once done (OK or failed: see PQstatus), else 0. */
int sql_connect_step(sql_connecting *a, long budget_ms);

/*
 * Connects like PQconnectdb, waiting at most the conninfo's connect_timeout
 * (if any) and never past a signal.  Returns a connection to check with
 * PQstatus, or NULL when interrupted.
 */
PGconn *sql_connect(const char *conninfo);

/*
 * Runs one or more statements like PQexec (with `nparams` > 0, one
 * statement with $1...).  A signal, or `timeout_ms` (0: none), cancels it;
 * if the server then does not answer within a few seconds, the call gives
 * up: it returns NULL with *gave_up = 1, and the connection must be closed.
 * Otherwise returns the last result (the caller clears it).
 */
PGresult *sql_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
                   int timeout_ms, int *gave_up);

#endif

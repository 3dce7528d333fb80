#include "sql.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long a server may take to answer a cancel before it is given up. */
#define CANCEL_ANSWER_MS 5000

volatile sig_atomic_t cli_interrupted;

static void on_signal(int sig)
{
    cli_interrupted = sig;
}

void cli_install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

/* Waits up to `ms` (-1: no limit; at most a second at a time) for the
 * socket; returns early on a signal.  Returns whether it is ready. */
static int wait_socket(PGconn *c, short events, long ms)
{
    struct pollfd pfd = {.fd = PQsocket(c), .events = events};
    if (pfd.fd < 0)
        return 1; /* nothing to wait for: libpq says what is wrong */
    return poll(&pfd, 1, ms < 0 || ms > 1000 ? 1000 : (int)ms) > 0;
}

static long connect_timeout_ms(const char *conninfo)
{
    long ms = -1;
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && atoi(o->val) > 0)
            ms = atoi(o->val) * 1000L;
    PQconninfoFree(opts);
    return ms;
}

void sql_connect_begin(sql_connecting *a, const char *conninfo)
{
    a->conn = PQconnectStart(conninfo);
    a->status = PGRES_POLLING_WRITING;
    long limit = connect_timeout_ms(conninfo);
    a->until = limit > 0 ? now_ms() + limit : -1;
    if (!a->conn || PQstatus(a->conn) == CONNECTION_BAD)
        a->status = PGRES_POLLING_FAILED;
}

int sql_connect_step(sql_connecting *a, long budget_ms)
{
    long stop = budget_ms >= 0 ? now_ms() + budget_ms : -1;
    while (a->status != PGRES_POLLING_OK && a->status != PGRES_POLLING_FAILED) {
        long now = now_ms();
        if (a->until > 0 && now >= a->until) {
            /* A connection that is not OK; the caller reports its error. */
            PQfinish(a->conn);
            a->conn = PQconnectStart("pgfan_connect_timeout_expired=1");
            a->status = PGRES_POLLING_FAILED;
            break;
        }
        if (cli_interrupted || (stop >= 0 && now >= stop))
            return 0;
        long wait = a->until > 0 ? a->until - now : -1;
        if (stop >= 0 && (wait < 0 || stop - now < wait))
            wait = stop - now;
        if (!wait_socket(a->conn, a->status == PGRES_POLLING_READING ? POLLIN : POLLOUT,
                         wait))
            continue; /* nothing yet: the clocks above decide */
        a->status = PQconnectPoll(a->conn);
    }
    return 1;
}

PGconn *sql_connect(const char *conninfo)
{
    sql_connecting a;
    sql_connect_begin(&a, conninfo);
    while (!sql_connect_step(&a, -1)) {
        if (cli_interrupted) {
            PQfinish(a.conn);
            return NULL;
        }
    }
    return a.conn;
}

/* Sends a cancel request; the server answers the statement with 57014. */
static void cancel(PGconn *c)
{
    PGcancel *k = PQgetCancel(c);
    if (k) {
        char err[256];
        PQcancel(k, err, sizeof err);
        PQfreeCancel(k);
    }
}

/* Waits until a result is ready.  Returns 0, or -1 when given up. */
static int wait_result(PGconn *c, int timeout_ms)
{
    long until = timeout_ms > 0 ? now_ms() + timeout_ms : -1;
    long give_up_at = -1;
    while (PQisBusy(c)) {
        if (give_up_at < 0 && (cli_interrupted || (until > 0 && now_ms() >= until))) {
            cancel(c);
            give_up_at = now_ms() + CANCEL_ANSWER_MS;
        }
        if (give_up_at > 0 && now_ms() >= give_up_at)
            return -1;
        wait_socket(c, POLLIN, give_up_at > 0 ? give_up_at - now_ms() : -1);
        if (!PQconsumeInput(c))
            return 0; /* broken: PQgetResult reports it */
    }
    return 0;
}

PGresult *sql_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
                   int timeout_ms, int *gave_up)
{
    *gave_up = 0;
    if (!c)
        return NULL;
    int sent = nparams > 0
                   ? PQsendQueryParams(c, sql, nparams, NULL, params, NULL, NULL, 0)
                   : PQsendQuery(c, sql);
    if (!sent)
        return PQmakeEmptyPGresult(c, PGRES_FATAL_ERROR); /* carries PQerrorMessage */
    PGresult *last = NULL, *res;
    for (;;) {
        if (wait_result(c, timeout_ms) != 0) {
            PQclear(last);
            *gave_up = 1;
            return NULL;
        }
        if (!(res = PQgetResult(c)))
            break;
        ExecStatusType st = PQresultStatus(res);
        /* As PQexec: an error is the answer; otherwise the last result. */
        if (last && PQresultStatus(last) == PGRES_FATAL_ERROR) {
            PQclear(res);
        } else {
            PQclear(last);
            last = res;
        }
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH)
            break; /* not issued by this command */
        if (PQstatus(c) == CONNECTION_BAD)
            break;
    }
    return last ? last : PQmakeEmptyPGresult(c, PGRES_FATAL_ERROR);
}

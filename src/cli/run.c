/* The run's shared helpers: failures, bounded SQL, connections. */
#include "run.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conninfo.h"

/* How often a lost target's server is tried while it comes back. */
#define RECONNECT_STEP_MS 250
/* How long a server may take to answer ROLLBACK before it is cancelled. */
#define ROLLBACK_ANSWER_MS 5000

const char *who_name(const run *r, int who, char *buf, size_t len)
{
    if (who == WHO_SOURCE)
        snprintf(buf, len, "source (%s)", r->source_masked);
    else if (who >= 0)
        snprintf(buf, len, "target %d (%s)", who + 1, r->report.targets[who].masked);
    else
        snprintf(buf, len, "pgfan");
    return buf;
}

/* One line per error: who, the server's message, its SQLSTATE.  The first
 * error of a target, or of the source, is also kept for the report. */
void print_fail(run *r, const cli_fail *f)
{
    char who[1200];
    if (f->who >= 0 && (size_t)f->who < r->report.ntargets &&
        !r->report.targets[f->who].error[0]) {
        target_report *t = &r->report.targets[f->who];
        snprintf(t->sqlstate, sizeof t->sqlstate, "%s", f->sqlstate);
        snprintf(t->error, sizeof t->error, "%s", f->message);
        t->outcome = OUTCOME_FAILED;
    }
    if (f->who == WHO_SOURCE && !r->report.source_error[0]) {
        snprintf(r->report.source_sqlstate, sizeof r->report.source_sqlstate, "%s",
                 f->sqlstate);
        snprintf(r->report.source_error, sizeof r->report.source_error, "%s", f->message);
    }
    fprintf(stderr, "pgfan: %s: %s", who_name(r, f->who, who, sizeof who), f->message);
    if (f->sqlstate[0])
        fprintf(stderr, " (SQLSTATE %s)", f->sqlstate);
    fputc('\n', stderr);
}

/* A library fault as a cli_fail: who it is about (the fault carries its
 * party in `receiver` and `label`; its message names nobody). */
void fail_from_fault(cli_fail *f, const pgfan_fault *fault)
{
    fail_set(f,
             fault->receiver == PGFAN_PRODUCER_INDEX  ? WHO_SOURCE
             : fault->receiver == PGFAN_MANAGER_INDEX ? WHO_NONE
                                                      : fault->receiver,
             fault->sqlstate, "%s", fault->message);
}

void note_error(target_report *t, const cli_fail *f)
{
    snprintf(t->sqlstate, sizeof t->sqlstate, "%s", f->sqlstate);
    snprintf(t->error, sizeof t->error, "%s", f->message);
    t->outcome = OUTCOME_FAILED;
}

/* libpq's complaints about a connection string quote the offending part,
 * which may be the password: everything between double quotes goes. */
static void scrub_quoted(char *msg)
{
    char *w = msg;
    int quoted = 0;
    for (const char *p = msg; *p; p++) {
        if (*p == '"') {
            if (!quoted) {
                memcpy(w, "\"...", 4);
                w += 4;
            } else {
                *w++ = '"';
            }
            quoted = !quoted;
        } else if (!quoted) {
            *w++ = *p;
        }
    }
    *w = '\0';
}

static PGconn *connect_to(run *r, const char *conninfo, int who, cli_fail *f)
{
    char *parse_error = NULL;
    PQconninfoOption *parsed = PQconninfoParse(conninfo, &parse_error);
    PQconninfoFree(parsed);
    if (!parsed) {
        fail_set(f, who, NULL, "invalid connection string: %s",
                 parse_error ? parse_error : "out of memory");
        PQfreemem(parse_error);
        scrub_quoted(f->message);
        print_fail(r, f);
        return NULL;
    }
    PGconn *c = sql_connect(conninfo);
    if (!c)
        return NULL; /* interrupted */
    if (PQstatus(c) != CONNECTION_OK) {
        const char *msg = PQerrorMessage(c);
        fail_set(f, who, NULL, "connection failed: %s", *msg ? msg : "timeout expired");
        size_t n = strlen(f->message);
        while (n > 0 && f->message[n - 1] == '\n')
            f->message[--n] = '\0';
        print_fail(r, f);
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Closes a connection the server stopped answering: waiting on it could
 * take forever, and closing it makes its server roll back. */
void give_up(run *r, PGconn **c)
{
    (void)r;
    PQfinish(*c);
    *c = NULL;
}

/* Runs SQL on *c, interruptible (sql.h) and, past `timeout_ms` (0 = none),
 * cancelled.  A connection that does not answer even a cancel is closed. */
static PGresult *query_within(run *r, PGconn **c, const char *sql, int nparams,
                              const char *const *params, int who, cli_fail *f,
                              int timeout_ms)
{
    int gave_up = 0;
    PGresult *res = *c ? sql_exec(*c, sql, nparams, params, timeout_ms, &gave_up) : NULL;
    ExecStatusType st = PQresultStatus(res);
    if (res && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK))
        return res;
    if (f && gave_up)
        fail_set(f, who, NULL,
                 "no answer to %.200s, nor to its cancel: the connection was closed",
                 sql);
    else if (f && !*c)
        fail_set(f, who, NULL, "the connection was closed earlier");
    else if (f)
        fail_from_result(f, who, res, *c);
    PQclear(res);
    if (gave_up)
        give_up(r, c);
    return NULL;
}

PGresult *query_ok(run *r, PGconn **c, const char *sql, int nparams,
                   const char *const *params, int who, cli_fail *f)
{
    return query_within(r, c, sql, nparams, params, who, f, 0);
}

int exec_ok(run *r, PGconn **c, const char *sql, int who, cli_fail *f)
{
    PGresult *res = query_ok(r, c, sql, 0, NULL, who, f);
    PQclear(res);
    return res ? 0 : -1;
}

int exec_ending(run *r, PGconn **c, const char *sql, int who, cli_fail *f)
{
    unsigned int limit = r->opt.end_timeout_ms;
    PGresult *res = query_within(r, c, sql, 0, NULL, who, f, (int)limit);
    PQclear(res);
    if (!res && limit && !cli_interrupted && strcmp(f->sqlstate, "57014") == 0)
        fail_set(f, who, "57014",
                 "%.200s did not end within %u ms (--end-timeout) and was cancelled", sql,
                 limit);
    return res ? 0 : -1;
}

/*
 * As pg_dump does: every session renders and reads values alike, in the
 * source database's encoding, so no setting of a server, database or role
 * can change a value on its way (a target that cannot hold a character
 * says so with its own conversion error).  Row-level security is off
 * unless asked for, so a table whose policies hide rows from the role
 * fails (42501) instead of arriving in part.  And no timeout a database
 * or role sets for its applications ends a long load, or a session that
 * rightly waits idle in its transaction (the snapshot's holder, a target
 * done before the others) or between tables: pgfan's own bounds
 * (--stall-timeout, --end-timeout) apply instead.  lock_timeout is kept:
 * --stall-timeout never raises a shorter one.
 */
static int pin_session(run *r, PGconn **c, int who)
{
    char sql[768];
    cli_fail f;
    int version = PQserverVersion(*c);
    snprintf(sql, sizeof sql,
             "SET client_encoding = '%s'; SET DateStyle = 'ISO, YMD'; "
             "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "
             "SET TimeZone = 'UTC'; SET bytea_output = 'hex'; SET lc_monetary = 'C'; "
             "SET xmloption = content; SET array_nulls = on; "
             "SET statement_timeout = 0%s%s%s%s",
             r->encoding,
             version < 90500              ? ""
             : r->opt.enable_row_security ? "; SET row_security = on"
                                          : "; SET row_security = off",
             version >= 90600 ? "; SET idle_in_transaction_session_timeout = 0" : "",
             version >= 140000 ? "; SET idle_session_timeout = 0" : "",
             version >= 170000 ? "; SET transaction_timeout = 0" : "");
    if (exec_ok(r, c, sql, who, &f) == 0)
        return 0;
    print_fail(r, &f);
    return -1;
}

/* The source database's encoding, as a server names it (UTF8, LATIN1,
 * SQL_ASCII, ...). */
static int learn_encoding(run *r)
{
    const char *enc = PQparameterStatus(r->source, "server_encoding");
    size_t n = enc ? strspn(enc, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") : 0;
    if (!enc || n == 0 || enc[n] != '\0' || n >= sizeof r->encoding) {
        cli_fail f;
        fail_set(&f, WHO_SOURCE, NULL, "the server reported no usable encoding (%s)",
                 enc ? enc : "none");
        print_fail(r, &f);
        return -1;
    }
    snprintf(r->encoding, sizeof r->encoding, "%s", enc);
    return 0;
}

/* Rolls back every open transaction.  A connection still busy (a COPY the
 * library gave up realigning) is closed instead: ROLLBACK would wait on it
 * forever, and closing it rolls its transaction back.  So is one whose
 * server does not answer ROLLBACK (a stopped backend) within
 * ROLLBACK_ANSWER_MS and then its cancel: nothing is lost by closing. */
void rollback_one(run *r, size_t i)
{
    if (r->in_tx[i] && PQtransactionStatus(r->targets[i]) == PQTRANS_ACTIVE)
        give_up(r, &r->targets[i]);
    else if (r->in_tx[i] && PQstatus(r->targets[i]) == CONNECTION_OK)
        PQclear(query_within(r, &r->targets[i], "ROLLBACK", 0, NULL, (int)i, NULL,
                             ROLLBACK_ANSWER_MS));
    r->in_tx[i] = 0;
}

void rollback_all(run *r)
{
    for (size_t i = 0; i < r->opt.ntargets; i++)
        rollback_one(r, i);
}

int import_snapshot(run *r, PGconn **c, const char *id, cli_fail *f)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SET TRANSACTION SNAPSHOT '%s'", id);
    if (exec_ok(r, c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", WHO_SOURCE, f) ==
            0 &&
        exec_ok(r, c, sql, WHO_SOURCE, f) == 0)
        return 0;
    if (*c)
        exec_ok(r, c, "ROLLBACK", WHO_SOURCE, NULL);
    return -1;
}

static int import_given_snapshot(run *r)
{
    cli_fail f;
    if (import_snapshot(r, &r->source, r->opt.snapshot, &f) == 0)
        return 0;
    print_fail(r, &f);
    return -1;
}

int reconnect_target(run *r, size_t i)
{
    cli_fail f;
    PQfinish(r->targets[i]);
    r->targets[i] = connect_to(r, r->opt.targets[i], (int)i, &f);
    if (r->targets[i] && pin_session(r, &r->targets[i], (int)i) == 0)
        return 0;
    PQfinish(r->targets[i]);
    r->targets[i] = NULL;
    return -1;
}

/* Milliseconds on the monotonic clock. */
static long long clock_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

void reconnect_begin(run *r, size_t i, long window_ms, reconnecting *rc)
{
    PQfinish(r->targets[i]);
    r->targets[i] = NULL;
    memset(rc, 0, sizeof *rc);
    rc->active = 1;
    rc->until = clock_ms() + window_ms;
}

/* One attempt ended without a connection: said in `f`, and the next one
 * comes a step later, within the window. */
static int attempt_failed(reconnecting *rc, size_t i, cli_fail *f)
{
    const char *why =
        rc->attempt.conn ? PQerrorMessage(rc->attempt.conn) : "out of memory";
    fail_set(f, (int)i, NULL, "cannot reconnect: %s", why);
    size_t n = strlen(f->message);
    while (n > 0 && f->message[n - 1] == '\n')
        f->message[--n] = '\0';
    PQfinish(rc->attempt.conn);
    rc->attempt.conn = NULL;
    rc->trying = 0;
    if (clock_ms() >= rc->until) {
        rc->active = 0;
        return -1;
    }
    /* A restarting server refuses connections for a while. */
    rc->next_try = clock_ms() + RECONNECT_STEP_MS;
    return 0;
}

int reconnect_step(run *r, size_t i, reconnecting *rc, long budget_ms, cli_fail *f)
{
    if (!rc->trying) {
        if (clock_ms() < rc->next_try)
            return 0;
        sql_connect_begin(&rc->attempt, r->opt.targets[i]);
        rc->trying = 1;
    }
    if (!sql_connect_step(&rc->attempt, budget_ms)) {
        if (clock_ms() < rc->until)
            return 0;
        reconnect_abandon(rc);
        fail_set(f, (int)i, NULL, "cannot reconnect: the server did not answer in time");
        return -1;
    }
    if (!rc->attempt.conn || PQstatus(rc->attempt.conn) != CONNECTION_OK)
        return attempt_failed(rc, i, f);
    r->targets[i] = rc->attempt.conn;
    rc->attempt.conn = NULL;
    rc->trying = 0;
    rc->active = 0;
    if (pin_session(r, &r->targets[i], (int)i) == 0)
        return 1;
    fail_set(f, (int)i, NULL, "the new connection could not be set up");
    return -1;
}

void reconnect_abandon(reconnecting *rc)
{
    PQfinish(rc->attempt.conn);
    rc->attempt.conn = NULL;
    rc->trying = 0;
    rc->active = 0;
}

int connect_all(run *r)
{
    cli_fail f;
    mask_conninfo(r->opt.source, r->source_masked, sizeof r->source_masked);
    r->report.ntargets = r->opt.ntargets;
    for (size_t i = 0; i < r->opt.ntargets; i++)
        mask_conninfo(r->opt.targets[i], r->report.targets[i].masked,
                      sizeof r->report.targets[i].masked);
    if (!(r->source = connect_to(r, r->opt.source, WHO_SOURCE, &f)) ||
        learn_encoding(r) != 0 || pin_session(r, &r->source, WHO_SOURCE) != 0 ||
        (r->opt.snapshot && !r->opt.set_mode && import_given_snapshot(r) != 0))
        return -1;
    for (size_t i = 0; i < r->opt.ntargets; i++)
        if (!(r->targets[i] = connect_to(r, r->opt.targets[i], (int)i, &f)) ||
            pin_session(r, &r->targets[i], (int)i) != 0)
            return -1;
    return cli_interrupted ? -1 : 0;
}

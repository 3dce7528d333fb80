/* pgfan_transfer(): the whole fan-out in one call, each target in its own
 * transaction unless the caller already opened one.  Built on the public
 * API only, with the library's one commit rule (may_commit). */
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "lockwait.h"
#include "pgfan.h"
#include "pq.h"

/*
 * The waits of our own commands, bounded as the options say: BEGIN as a
 * COPY's start (start_timeout_ms, interrupt); COMMIT as a COPY's end
 * (end_timeout_ms, interrupt), whose cancel may come too late and is then
 * read as committed; ROLLBACK
 * never interrupted (it is how an interrupted copy ends) but given up
 * after realign_timeout_ms, its connection left busy for the caller to
 * close.
 */
enum tx_command { TX_BEGIN, TX_COMMIT, TX_ROLLBACK };

static int exec_tx(PGconn *conn, enum tx_command cmd, const pgfan_options *o, int who,
                   const char *label, pgfan_fault *f)
{
    static const char *const sql[] = {"BEGIN", "COMMIT", "ROLLBACK"};
    fan_wait w = fan_wait_from_options(o);
    if (cmd == TX_COMMIT)
        w.limit_ms = o->end_timeout_ms;
    if (cmd == TX_ROLLBACK) {
        w.interrupt = NULL;
        w.limit_ms = o->realign_timeout_ms;
    }
    return fan_exec_within(conn, sql[cmd], &w, who, label, f) == PGFAN_OK ? 0 : -1;
}

static int build(pgfan_manager **out, PGconn *source, const char *copy_to_sql,
                 size_t ntargets, PGconn *const targets[],
                 const char *const copy_from_sql[], const pgfan_options *user_opts)
{
    pgfan_options opts = *user_opts;
    pgfan_producer *p;
    opts.fault_hold_ms = 0; /* nobody can reconcile inside this call */
    opts.retries = 0;       /* nor reconnect a target */
    int rc = pgfan_producer_new_statement(&p, source, copy_to_sql);
    if (rc != PGFAN_OK)
        return rc;
    rc = pgfan_manager_new(out, p, &opts);
    if (rc != PGFAN_OK) {
        pgfan_producer_free(p);
        return rc;
    }
    for (size_t i = 0; i < ntargets && rc == PGFAN_OK; i++) {
        pgfan_receiver *r;
        rc = pgfan_receiver_new_statement(&r, targets[i], copy_from_sql[i]);
        if (rc == PGFAN_OK &&
            (rc = pgfan_manager_add_receiver(*out, r, NULL)) != PGFAN_OK)
            pgfan_receiver_free(r);
    }
    return rc;
}

/*
 * stall_timeout_ms as our transaction's lock_timeout (never raising a
 * shorter one): a COPY waiting on another session's lock at its end
 * (foreign key checks) looks like work from here; the server cancels it.
 */
static int bound_lock_waits(PGconn *conn, const pgfan_options *o, int who,
                            const char *label, pgfan_fault *f)
{
    char sql[400];
    if (o->stall_timeout_ms == 0)
        return 0;
    fan_lock_timeout_sql(sql, sizeof sql, o->stall_timeout_ms);
    fan_wait w = fan_wait_from_options(o);
    return fan_exec_within(conn, sql, &w, who, label, f) == PGFAN_OK ? 0 : -1;
}

/* Opens a transaction on every idle target (own_tx[i] says which). */
static int begin_all(size_t n, PGconn *const targets[], unsigned char *own_tx,
                     const pgfan_options *o, pgfan_fault *f)
{
    for (size_t i = 0; i < n; i++) {
        if (PQtransactionStatus(targets[i]) != PQTRANS_IDLE)
            continue;
        char label[128];
        fan_conn_label(targets[i], label, sizeof label);
        if (exec_tx(targets[i], TX_BEGIN, o, (int)i, label, f) != 0)
            return -1;
        own_tx[i] = 1;
        if (bound_lock_waits(targets[i], o, (int)i, label, f) != 0)
            return -1;
    }
    return 0;
}

/*
 * Our transaction's id on conn (txid_current(), with its epoch), read
 * before COMMIT so that one whose answer is lost can be looked up
 * (txid_status) by the caller.  Bounded as BEGIN.  Returns 0, or -1 when
 * the transaction may not commit: a failed read aborts it, and a COMMIT
 * then would answer like a success while rolling back.
 */
static int read_txid(PGconn *conn, const pgfan_options *o, int who, const char *label,
                     char *xid, size_t len, pgfan_fault *f)
{
    fan_wait w = fan_wait_from_options(o);
    xid[0] = '\0';
    if (!PQsendQuery(conn, "SELECT txid_current()")) {
        fan_fault_from_conn(f, who, label, conn);
        return -1;
    }
    if (fan_await_result(conn, &w, who, label, f) != PGFAN_OK)
        return -1;
    PGresult *res;
    int rc = 0;
    while ((res = PQgetResult(conn)) != NULL) {
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
            snprintf(xid, len, "%s", PQgetvalue(res, 0, 0));
        else if (rc == 0) {
            fan_fault_from_result(f, who, label, res);
            rc = -1;
        }
        PQclear(res);
    }
    return rc;
}

/* A COMMIT that failed with its connection (broken, or its server answered
 * neither it nor the cancel) may have taken effect: the fault says so and
 * how to find out. */
static void outcome_unknown(pgfan_fault *f, const char *xid)
{
    char was[sizeof f->message];
    snprintf(was, sizeof was, "%s", f->message);
    f->code = PGFAN_EOUTCOME;
    if (xid[0])
        snprintf(f->message, sizeof f->message,
                 "%.300s; whether the COMMIT took effect is unknown: once its backend "
                 "has gone, SELECT txid_status(%s) on that server tells",
                 was, xid);
    else
        snprintf(f->message, sizeof f->message,
                 "%.300s; whether the COMMIT took effect is unknown", was);
}

/* Commits target i's transaction.  Returns 0 when it committed, else the
 * fault's code (PGFAN_EOUTCOME when nobody can tell). */
static int commit_target(PGconn *conn, const pgfan_options *o, int who, const char *label,
                         pgfan_fault *f)
{
    char xid[32];
    if (read_txid(conn, o, who, label, xid, sizeof xid, f) != 0) {
        exec_tx(conn, TX_ROLLBACK, o, who, label, NULL);
        return f->code;
    }
    if (exec_tx(conn, TX_COMMIT, o, who, label, f) == 0)
        return 0;
    if (f->code == PGFAN_ECONN)
        outcome_unknown(f, xid);
    return f->code;
}

/* Ends the transactions we opened: COMMIT where the library says a target
 * may commit (under abort, no COMMIT follows a failed one), ROLLBACK
 * elsewhere.  Returns how many committed (targets in the caller's own
 * transaction count when they may).  The first COMMIT whose outcome is
 * unknown goes to *unknown (its target stays DONE, with that fault). */
static size_t settle(pgfan_manager *m, size_t n, PGconn *const targets[],
                     const unsigned char *own_tx, const pgfan_options *o,
                     pgfan_receiver_result *res, pgfan_fault *first_error,
                     pgfan_fault *unknown)
{
    size_t committed = 0;
    int stop = 0;
    for (size_t i = 0; i < n; i++) {
        int may = m && res[i].may_commit && !stop;
        if (!own_tx[i]) {
            committed += (size_t)may;
            continue;
        }
        if (PQstatus(targets[i]) == CONNECTION_BAD)
            continue;
        if (!may) {
            exec_tx(targets[i], TX_ROLLBACK, o, (int)i, res[i].label, NULL);
            continue;
        }
        pgfan_fault f;
        int rc = commit_target(targets[i], o, (int)i, res[i].label, &f);
        if (rc == 0) {
            committed++;
            continue;
        }
        if (rc == PGFAN_EOUTCOME && !unknown->message[0])
            *unknown = f;
        else if (rc != PGFAN_EOUTCOME)
            res[i].state = PGFAN_RECEIVER_FAILED;
        res[i].may_commit = 0;
        if (!res[i].has_fault || rc == PGFAN_EOUTCOME) {
            res[i].has_fault = 1;
            res[i].fault = f;
        }
        if (!first_error->message[0])
            *first_error = f;
        stop = o->policy == PGFAN_POLICY_ABORT;
    }
    return committed;
}

int pgfan_transfer(PGconn *source, const char *copy_to_sql, size_t ntargets,
                   PGconn *const targets[], const char *const copy_from_sql[],
                   const pgfan_options *opts, pgfan_transfer_result *result,
                   pgfan_receiver_result *target_results)
{
    pgfan_manager *m = NULL;
    unsigned char *own_tx = NULL;
    pgfan_receiver_result *res = NULL;
    pgfan_fault error;
    struct timespec t0;
    int rc = PGFAN_EINVAL;

    fan_now(&t0);
    memset(&error, 0, sizeof error);
    if (result)
        memset(result, 0, sizeof *result);
    if (!source || !copy_to_sql || ntargets == 0 || !targets || !copy_from_sql)
        goto out;
    for (size_t i = 0; i < ntargets; i++)
        if (!targets[i] || !copy_from_sql[i])
            goto out;
    own_tx = calloc(ntargets, 1);
    res = calloc(ntargets, sizeof *res);
    if (!own_tx || !res) {
        rc = PGFAN_ENOMEM;
        goto out;
    }
    pgfan_options o;
    if (opts)
        o = *opts;
    else
        pgfan_options_init(&o);
    rc = build(&m, source, copy_to_sql, ntargets, targets, copy_from_sql, &o);
    if (rc == PGFAN_OK && begin_all(ntargets, targets, own_tx, &o, &error) != 0)
        rc = error.code;
    if (rc == PGFAN_OK)
        rc = pgfan_manager_run(m);
    for (size_t i = 0; m && i < ntargets; i++)
        pgfan_manager_receiver(m, i, &res[i]);
    pgfan_fault unknown = {0};
    size_t committed = settle(m, ntargets, targets, own_tx, &o, res, &error, &unknown);
    if (result)
        result->committed = committed;
    if (unknown.message[0]) {
        rc = PGFAN_EOUTCOME;
        error = unknown;
    } else if (committed > 0 && committed < ntargets)
        rc = PGFAN_EPARTIAL;
    else if (rc == PGFAN_OK && committed < ntargets)
        rc = PGFAN_ERECEIVER;
out:
    if (result && m) {
        pgfan_progress pr;
        pgfan_manager_progress(m, &pr);
        result->rows = pr.producer_rows;
        result->bytes = pr.producer_bytes;
    }
    if (target_results && res)
        memcpy(target_results, res, ntargets * sizeof *res);
    if (result && rc != PGFAN_OK) {
        result->has_error = 1;
        if (rc == PGFAN_EOUTCOME ||
            !(m && pgfan_manager_fault(m, 0, &result->error) == PGFAN_OK)) {
            if (error.message[0])
                result->error = error;
            else
                fan_fault_set(&result->error, PGFAN_MANAGER_INDEX, "pgfan", rc, "%s",
                              pgfan_strerror(rc));
        }
    }
    if (result)
        result->seconds = fan_seconds_since(&t0);
    free(own_tx);
    free(res);
    pgfan_manager_free(m);
    return rc;
}

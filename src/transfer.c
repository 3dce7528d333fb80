/* pgfan_transfer(): the whole fan-out in one call, each target in its own
 * transaction unless the caller already opened one. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int exec_simple(PGconn *conn, const char *sql, pgfan_fault *f, int who,
                       const char *label)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok && f)
        fan_fault_from_result(f, who, res, label);
    PQclear(res);
    return ok ? 0 : -1;
}

static int build(pgfan_manager **out, PGconn *source, const char *copy_to_sql,
                 size_t ntargets, PGconn *const targets[],
                 const char *const copy_from_sql[], const pgfan_options *user_opts)
{
    pgfan_options opts;
    pgfan_producer *p;
    if (user_opts)
        opts = *user_opts;
    else
        pgfan_options_init(&opts);
    opts.fault_hold_ms = 0; /* nobody can reconcile inside this call */
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

/* Commits the targets whose COPY succeeded (when the copy as a whole may
 * commit) and rolls back the others; returns how many committed. */
static size_t settle(pgfan_manager *m, size_t ntargets, PGconn *const targets[],
                     const unsigned char *own_tx, int may_commit)
{
    size_t committed = 0;
    for (size_t i = 0; i < ntargets; i++) {
        pgfan_receiver *r = m->receivers[i];
        int done = atomic_load(&r->state) == PGFAN_RECEIVER_DONE;
        if (!own_tx[i]) {
            committed += done && may_commit;
            continue;
        }
        if (PQstatus(targets[i]) == CONNECTION_BAD)
            continue;
        if (!(done && may_commit)) {
            exec_simple(targets[i], "ROLLBACK", NULL, (int)i, r->label);
            continue;
        }
        pgfan_fault f;
        if (exec_simple(targets[i], "COMMIT", &f, (int)i, r->label) == 0) {
            committed++;
        } else {
            fan_manager_post_fault(m, &f);
            atomic_store(&r->state, PGFAN_RECEIVER_FAILED);
        }
    }
    return committed;
}

static void describe_failure(pgfan_transfer_result *res, int rc, pgfan_manager *m)
{
    if (!res || rc == PGFAN_OK)
        return;
    res->has_error = 1;
    if (m && pgfan_manager_fault(m, 0, &res->error) == PGFAN_OK)
        return;
    fan_fault_set(&res->error, PGFAN_PRODUCER_INDEX, rc, "%s", pgfan_strerror(rc));
}

int pgfan_transfer(PGconn *source, const char *copy_to_sql, size_t ntargets,
                   PGconn *const targets[], const char *const copy_from_sql[],
                   const pgfan_options *opts, pgfan_transfer_result *result,
                   pgfan_receiver_result *target_results)
{
    pgfan_manager *m = NULL;
    unsigned char *own_tx = NULL;
    struct timespec t0;
    int rc = PGFAN_EINVAL;

    fan_now(&t0);
    if (result)
        memset(result, 0, sizeof *result);
    if (!source || !copy_to_sql || ntargets == 0 || !targets || !copy_from_sql)
        goto out;
    for (size_t i = 0; i < ntargets; i++)
        if (!targets[i] || !copy_from_sql[i])
            goto out;
    rc = build(&m, source, copy_to_sql, ntargets, targets, copy_from_sql, opts);
    if (rc != PGFAN_OK)
        goto out;
    own_tx = calloc(ntargets, 1);
    if (!own_tx) {
        rc = PGFAN_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < ntargets; i++) {
        if (PQtransactionStatus(targets[i]) != PQTRANS_IDLE)
            continue;
        pgfan_fault f;
        if (exec_simple(targets[i], "BEGIN", &f, (int)i, m->receivers[i]->label) != 0) {
            fan_manager_post_fault(m, &f);
            rc = f.code;
            settle(m, i, targets, own_tx, 0);
            goto out;
        }
        own_tx[i] = 1;
    }
    rc = pgfan_manager_run(m);
    int policy = opts ? opts->policy : PGFAN_POLICY_ABORT;
    int may_commit = rc == PGFAN_OK || (policy == PGFAN_POLICY_DROP &&
                                        rc != PGFAN_EPRODUCER && rc != PGFAN_EABORTED);
    size_t committed = settle(m, ntargets, targets, own_tx, may_commit);
    if (result)
        result->committed = committed;
    if (committed > 0 && committed < ntargets)
        rc = PGFAN_EPARTIAL;
    else if (rc == PGFAN_OK && committed < ntargets)
        rc = PGFAN_ERECEIVER;
out:
    if (result && m) {
        pgfan_progress pr;
        pgfan_manager_progress(m, &pr);
        result->rows = m->producer->ended ? m->producer->final_rows : pr.producer_rows;
        result->bytes = pr.producer_bytes;
    }
    if (target_results && m)
        for (size_t i = 0; i < ntargets && i < m->nreceivers; i++)
            pgfan_manager_receiver(m, i, &target_results[i]);
    describe_failure(result, rc, m);
    if (result)
        result->seconds = fan_seconds_since(&t0);
    free(own_tx);
    pgfan_manager_free(m);
    return rc;
}

/* The commit protocol of the pgfan command. */
#include "txn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define interrupted cli_interrupted

/* A fresh connection to target i, replacing a lost one, for settling what
 * the lost one left.  Returns 0, or -1 (the old handle is closed either
 * way). */
static int reconnect(run *r, size_t i)
{
    PQfinish(r->targets[i]);
    r->targets[i] = sql_connect(r->opt.targets[i]);
    if (r->targets[i] && PQstatus(r->targets[i]) == CONNECTION_OK)
        return 0;
    PQfinish(r->targets[i]);
    r->targets[i] = NULL;
    return -1;
}

/* One value of a query on target i (with one parameter unless NULL), or ""
 * on any failure. */
static void target_value(run *r, size_t i, const char *sql, const char *param, char *out,
                         size_t len)
{
    int gave_up;
    const char *params[1] = {param};
    PGresult *res = sql_exec(r->targets[i], sql, param ? 1 : 0, params, 10000, &gave_up);
    snprintf(out, len, "%s",
             PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                 ? PQgetvalue(res, 0, 0)
                 : "");
    PQclear(res);
    if (gave_up)
        give_up(r, &r->targets[i]);
}

/* How long the backend of a lost connection may take to leave once told
 * to terminate, and how often it is looked for meanwhile. */
#define OLD_BACKEND_LEAVE_MS 5000
#define OLD_BACKEND_STEP_MS  250

/*
 * The backend that ran target i's transaction on a connection given up may
 * still hold it (a stopped or cut-off server) and could yet prepare it, so
 * what it did is final only once it has left: it is told to terminate
 * (only a backend still holding our transaction id, never another
 * session).  Returns 0 when none holds it, -1 when one still does or
 * nobody can tell.
 */
static int old_backend_gone(run *r, size_t i)
{
    char xid[16], holding[16];
    if (!r->xid[i][0])
        return 0; /* its id was never learned: nothing to look for */
    /* pg_stat_activity shows the 32-bit xid; txid_current() adds the epoch */
    snprintf(xid, sizeof xid, "%llu", strtoull(r->xid[i], NULL, 10) & 0xffffffffULL);
    for (int waited = 0; waited <= OLD_BACKEND_LEAVE_MS; waited += OLD_BACKEND_STEP_MS) {
        target_value(r, i,
                     "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     "WHERE backend_xid::text = $1",
                     xid, holding, sizeof holding);
        if (strcmp(holding, "0") == 0)
            return 0;
        if (!holding[0] || !r->targets[i])
            return -1;
        struct timespec step = {0, OLD_BACKEND_STEP_MS * 1000000L};
        nanosleep(&step, NULL);
    }
    return -1;
}

/* Whether gid i is still prepared on target i, after reconnecting:
 * 1 yes, 0 no, -1 nobody can tell. */
static int still_prepared(run *r, size_t i)
{
    char found[8];
    if (reconnect(r, i) != 0 || old_backend_gone(r, i) != 0)
        return -1;
    target_value(r, i, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1", r->gid[i],
                 found, sizeof found);
    return !found[0] ? -1 : strcmp(found, "0") != 0;
}

/* COMMIT or ROLLBACK PREPARED, reconnecting when the connection was lost.
 * A gid gone after a lost answer was settled by that statement (nobody
 * else knows it).  Says which gid needs attention if it cannot settle. */
static int settle_prepared(run *r, size_t i, const char *verb)
{
    char sql[128];
    cli_fail f;
    snprintf(sql, sizeof sql, "%s PREPARED '%s'", verb, r->gid[i]);
    for (int tries = 0; tries < 3; tries++) {
        int left = r->targets[i] && PQstatus(r->targets[i]) == CONNECTION_OK
                       ? 1
                       : still_prepared(r, i);
        if (left == 0 ||
            (left == 1 && exec_ending(r, &r->targets[i], sql, (int)i, &f) == 0)) {
            r->gid[i][0] = '\0';
            return 0;
        }
        if (left < 0)
            fail_set(&f, (int)i, NULL, "the connection was lost and cannot be regained");
        if (r->targets[i] && PQstatus(r->targets[i]) == CONNECTION_OK)
            break; /* the server refused it: retrying will not help */
    }
    char who[1200];
    fprintf(stderr,
            "pgfan: %s: %s (SQLSTATE %s); prepared transaction '%s' needs attention: run "
            "%s there\n",
            who_name(r, (int)i, who, sizeof who), f.message, f.sqlstate, r->gid[i], sql);
    note_error(&r->report.targets[i], &f);
    r->report.targets[i].outcome = OUTCOME_UNKNOWN;
    return -1;
}

/* A PREPARE whose outcome nobody can tell yet: its backend still holds the
 * transaction and may prepare it later.  The run is not committing (this
 * target did not prepare for it), so what needs doing is said, the target
 * is reported unknown, and nothing more is tried on it. */
static void prepare_unknown(run *r, size_t i, const cli_fail *f)
{
    char who[1200];
    fprintf(stderr,
            "pgfan: %s: whether PREPARE TRANSACTION '%s' took effect is unknown: its "
            "backend still holds the transaction; if pg_prepared_xacts there shows "
            "'%s', run ROLLBACK PREPARED '%s'\n",
            who_name(r, (int)i, who, sizeof who), r->gid[i], r->gid[i], r->gid[i]);
    note_error(&r->report.targets[i], f);
    r->report.targets[i].outcome = OUTCOME_UNKNOWN;
    r->gid[i][0] = '\0';
}

/* Prepares target i's transaction, within --end-timeout: one that waits
 * for a synchronous standby is cancelled and answers that it prepared
 * locally.  A lost answer is settled by looking, once the old backend has
 * left.  Returns 1 when prepared, 0 when not (or unknown). */
static int prepare_one(run *r, size_t i)
{
    char sql[128];
    cli_fail f;
    snprintf(r->gid[i], sizeof r->gid[i], "pgfan_%s_%zu", r->run_id, i + 1);
    snprintf(sql, sizeof sql, "PREPARE TRANSACTION '%s'", r->gid[i]);
    r->in_tx[i] = 0;
    if (exec_ending(r, &r->targets[i], sql, (int)i, &f) == 0)
        return 1;
    int left = r->targets[i] && PQstatus(r->targets[i]) == CONNECTION_OK
                   ? 0 /* a failed PREPARE rolls its transaction back */
                   : still_prepared(r, i);
    if (left == 1)
        return 1; /* the answer was lost, the PREPARE was not */
    print_fail(r, &f);
    note_error(&r->report.targets[i], &f);
    if (left == 0)
        r->gid[i][0] = '\0';
    else
        prepare_unknown(r, i, &f);
    return 0;
}

/* Two-phase commit: every candidate prepares, then all commit; any failed
 * prepare rolls every prepared one back.  The gids are announced first, so
 * a run that dies in between leaves nothing prepared silently. */
static void commit_atomic(run *r, const int *candidate)
{
    int all_prepared = 1;
    if (!r->opt.quiet)
        fprintf(stderr,
                "pgfan: preparing transactions pgfan_%s_N on the targets (N = target "
                "number); if this run dies, settle them with COMMIT PREPARED or ROLLBACK "
                "PREPARED\n",
                r->run_id);
    for (size_t i = 0; i < r->opt.ntargets && all_prepared; i++)
        if (candidate[i])
            all_prepared = prepare_one(r, i) && !interrupted;
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        if (r->gid[i][0]) {
            if (settle_prepared(r, i, all_prepared ? "COMMIT" : "ROLLBACK") == 0)
                r->report.targets[i].outcome =
                    all_prepared ? OUTCOME_COMMITTED : OUTCOME_ROLLED_BACK;
        } else if (r->report.targets[i].outcome == OUTCOME_PENDING) {
            r->report.targets[i].outcome = OUTCOME_ROLLED_BACK;
        }
    }
    rollback_all(r);
}

/* A COMMIT whose answer was lost: what the server did is asked after
 * reconnecting, never guessed. */
static target_outcome settle_lost_commit(run *r, size_t i)
{
    char status[32] = "";
    for (int tries = 0; tries < 10 && r->xid[i][0]; tries++) {
        if (reconnect(r, i) != 0)
            break;
        target_value(r, i, "SELECT txid_status($1::bigint)", r->xid[i], status,
                     sizeof status);
        if (strcmp(status, "in progress") != 0)
            break;
        struct timespec pause = {0, 300 * 1000000L}; /* its backend is still ending */
        nanosleep(&pause, NULL);
    }
    if (strcmp(status, "committed") == 0)
        return OUTCOME_COMMITTED;
    if (strcmp(status, "aborted") == 0)
        return OUTCOME_FAILED;
    return OUTCOME_UNKNOWN;
}

/* COMMIT on target i; a lost answer is settled by asking the server.
 * Returns 0 when it committed. */
static int commit_one(run *r, size_t i)
{
    cli_fail f;
    r->in_tx[i] = 0;
    if (exec_ending(r, &r->targets[i], "COMMIT", (int)i, &f) == 0) {
        r->report.targets[i].outcome = OUTCOME_COMMITTED;
        return 0;
    }
    print_fail(r, &f);
    note_error(&r->report.targets[i], &f);
    if (!r->targets[i] || PQstatus(r->targets[i]) == CONNECTION_BAD) {
        target_outcome o = settle_lost_commit(r, i);
        r->report.targets[i].outcome = o;
        if (o == OUTCOME_COMMITTED)
            return 0;
        fprintf(stderr,
                "pgfan: target %zu: the COMMIT was lost with its connection; "
                "its server says: %s\n",
                i + 1, o == OUTCOME_FAILED ? "rolled back" : "unknown (check it)");
    }
    return -1;
}

/* Commits each candidate.  Under --on-fault abort, once one COMMIT failed
 * nobody else commits. */
static void commit_each(run *r, const int *candidate)
{
    for (size_t i = 0; i < r->opt.ntargets; i++)
        if (candidate[i] && commit_one(r, i) != 0 &&
            r->opt.on_fault == PGFAN_POLICY_ABORT)
            break;
    rollback_all(r);
}

/* Reads a source sequence's state: last_value and is_called.  `seq` is the
 * quoted name pg_get_serial_sequence() gave. */
static int source_sequence(run *r, const char *seq, char *value, size_t len, char *called)
{
    char sql[600];
    int gave_up;
    snprintf(sql, sizeof sql, "SELECT last_value, is_called FROM %s", seq);
    PGresult *res = sql_exec(r->source, sql, 0, NULL, 0, &gave_up);
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (ok) {
        snprintf(value, len, "%s", PQgetvalue(res, 0, 0));
        *called = PQgetvalue(res, 0, 1)[0];
    } else {
        cli_fail f;
        fail_from_result(&f, WHO_SOURCE, res, r->source);
        print_fail(r, &f);
    }
    PQclear(res);
    if (gave_up)
        give_up(r, &r->source);
    return ok ? 0 : -1;
}

/* Sets every copied column's sequence on target i to the source's state. */
static int carry_sequences(run *r, size_t i, cli_fail *f)
{
    for (size_t k = 0; k < r->plan.nsequences; k++) {
        const sequence_pair *s = &r->plan.sequences[k];
        char value[32], called;
        if (!s->target[i])
            continue;
        if (source_sequence(r, s->source, value, sizeof value, &called) != 0) {
            fail_set(f, (int)i, NULL, "cannot read the source's sequence %s", s->source);
            return -1;
        }
        const char *params[3] = {s->target[i], value, called == 't' ? "true" : "false"};
        PGresult *res = query_ok(r, &r->targets[i],
                                 "SELECT setval($1::regclass, $2::bigint, $3::boolean)",
                                 3, params, (int)i, f);
        PQclear(res);
        if (!res)
            return -1;
    }
    return 0;
}

/* For a table set: the pair (table, target) is noted as loaded in the
 * same transaction as its rows, so a resumed run can trust the note after
 * any crash (set.h). */
static int note_loaded(run *r, size_t i, cli_fail *f)
{
    if (!r->opt.set_id)
        return 0;
    char rows[24];
    snprintf(rows, sizeof rows, "%llu", (unsigned long long)r->report.targets[i].rows);
    const char *params[3] = {r->opt.set_id, r->report.targets[i].table, rows};
    PGresult *res = query_ok(r, &r->targets[i],
                             "INSERT INTO pgfan.loaded (set_id, table_name, rows) "
                             "VALUES ($1, $2, $3::bigint)",
                             3, params, (int)i, f);
    PQclear(res);
    return res ? 0 : -1;
}

/*
 * What must happen on target i while it can still roll back: deferred
 * constraints are checked now, not at COMMIT, the sequences of copied
 * serial and identity columns end at the source's values (unless
 * `sequences` is 0), and the transaction's id is noted (to settle a COMMIT
 * whose answer is lost).  Returns 0, or -1 when it must not commit.
 */
static int before_commit_one(run *r, size_t i, int sequences)
{
    cli_fail f;
    if (exec_ending(r, &r->targets[i], "SET CONSTRAINTS ALL IMMEDIATE", (int)i, &f) !=
            0 ||
        (sequences && carry_sequences(r, i, &f) != 0) || note_loaded(r, i, &f) != 0) {
        print_fail(r, &f);
        note_error(&r->report.targets[i], &f);
        return -1;
    }
    target_value(r, i, "SELECT txid_current()::text", NULL, r->xid[i], sizeof r->xid[i]);
    return 0;
}

/* The same for every candidate; under --on-fault abort, one failure and
 * nobody commits, so nothing more is asked of the others. */
static void before_commit(run *r, int *candidate)
{
    int failed = 0;
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        if (failed && r->opt.on_fault == PGFAN_POLICY_ABORT)
            break;
        if (candidate[i] && before_commit_one(r, i, 1) != 0) {
            candidate[i] = 0;
            failed = 1;
        }
    }
    if (failed && r->opt.on_fault == PGFAN_POLICY_ABORT)
        for (size_t i = 0; i < r->opt.ntargets; i++)
            candidate[i] = 0;
}

void commit_early(run *r, size_t i, uint64_t rows)
{
    r->report.targets[i].rows = rows; /* noted with the commit (note_loaded) */
    r->early[i] = 1;
    if (before_commit_one(r, i, 0) != 0 || commit_one(r, i) != 0) {
        if (r->report.targets[i].outcome != OUTCOME_UNKNOWN)
            r->report.targets[i].outcome = OUTCOME_DROPPED;
        rollback_one(r, i);
    }
}

/* Sequences are not transactional: those of targets that committed early
 * are set now, once the source's connection is free again. */
static void carry_early_sequences(run *r)
{
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        cli_fail f;
        if (r->early[i] && r->report.targets[i].outcome == OUTCOME_COMMITTED &&
            carry_sequences(r, i, &f) != 0) {
            print_fail(r, &f);
            note_error(&r->report.targets[i], &f);
        }
    }
}

/* Decides each target's fate and returns the exit code. */
int conclude(run *r)
{
    int candidate[MAX_TARGETS] = {0};
    size_t ncand = 0, committed = 0, unknown = 0;
    for (size_t i = 0; i < r->opt.ntargets; i++)
        candidate[i] = !interrupted && r->report.targets[i].outcome == OUTCOME_PENDING;
    carry_early_sequences(r);
    before_commit(r, candidate);
    for (size_t i = 0; i < r->opt.ntargets; i++)
        ncand += (size_t)candidate[i];
    if (ncand > 0 && r->opt.atomic)
        commit_atomic(r, candidate);
    else if (ncand > 0)
        commit_each(r, candidate);
    rollback_all(r);
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        target_report *t = &r->report.targets[i];
        if (t->outcome == OUTCOME_PENDING)
            t->outcome = OUTCOME_ROLLED_BACK;
        committed += t->outcome == OUTCOME_COMMITTED;
        unknown += t->outcome == OUTCOME_UNKNOWN;
    }
    if (unknown > 0)
        return EXIT_UNKNOWN;
    if (interrupted && committed == 0)
        return EXIT_INTERRUPTED;
    if (committed == r->opt.ntargets)
        return EXIT_ALL_COMMITTED;
    return committed == 0 ? EXIT_FAILED : EXIT_PARTIAL;
}

/* 128 random bits: unique across hosts, containers and pid namespaces. */
void new_run_id(run *r)
{
    unsigned char bytes[16];
    size_t got = 0;
    while (got < sizeof bytes) {
        ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
        if (n > 0)
            got += (size_t)n;
        else if (errno != EINTR)
            break;
    }
    if (got < sizeof bytes) { /* no getrandom: time and pid, mixed */
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        unsigned long long x = (unsigned long long)t.tv_nsec ^
                               ((unsigned long long)t.tv_sec << 20) ^
                               ((unsigned long long)getpid() << 40);
        for (size_t i = got; i < sizeof bytes; i++, x = x * 6364136223846793005ULL + 1)
            bytes[i] = (unsigned char)(x >> 56);
    }
    for (size_t i = 0; i < sizeof bytes; i++)
        snprintf(r->run_id + 2 * i, 3, "%02x", bytes[i]);
}

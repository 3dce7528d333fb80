/*
 * pgfan: fan a table or query out to N PostgreSQL targets, all or nothing,
 * with progress and a report.  Built on libpgfan's public API only.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/random.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pgfan.h>

#include "conninfo.h"
#include "options.h"
#include "plan.h"
#include "progress.h"
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

#define interrupted cli_interrupted

typedef struct run {
    cli_options opt;
    PGconn *source;
    PGconn *targets[MAX_TARGETS];
    int in_tx[MAX_TARGETS];    /* BEGIN done, neither COMMIT nor ROLLBACK yet */
    char gid[MAX_TARGETS][80]; /* prepared transaction, when --atomic */
    char xid[MAX_TARGETS][24]; /* each target's transaction, to settle a lost COMMIT */
    char run_id[40];           /* random, unique across hosts and pid namespaces */
    FILE *report_file;         /* opened before any data moves */
    int stdout_closed;         /* standard output was closed when we started */
    char source_masked[1024];
    char encoding[64]; /* the source database's: every session speaks it */
    plan plan;
    run_report report;
    struct timespec started;
} run;

static double seconds_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

static const char *who_name(const run *r, int who, char *buf, size_t len)
{
    if (who == WHO_SOURCE)
        snprintf(buf, len, "source (%s)", r->source_masked);
    else if (who >= 0)
        snprintf(buf, len, "target %d (%s)", who + 1, r->report.targets[who].masked);
    else
        snprintf(buf, len, "pgfan");
    return buf;
}

/* One line per error: who, the server's message, its SQLSTATE.  A target's
 * error is also kept for the report. */
static void print_fail(run *r, const cli_fail *f)
{
    char who[1200];
    if (f->who >= 0 && (size_t)f->who < r->report.ntargets &&
        !r->report.targets[f->who].error[0]) {
        target_report *t = &r->report.targets[f->who];
        snprintf(t->sqlstate, sizeof t->sqlstate, "%s", f->sqlstate);
        snprintf(t->error, sizeof t->error, "%s", f->message);
        t->outcome = OUTCOME_FAILED;
    }
    fprintf(stderr, "pgfan: %s: %s", who_name(r, f->who, who, sizeof who), f->message);
    if (f->sqlstate[0])
        fprintf(stderr, " (SQLSTATE %s)", f->sqlstate);
    fputc('\n', stderr);
}

/* A library fault as a cli_fail: the "target N: " label prefix dropped. */
static void fail_from_fault(cli_fail *f, const pgfan_fault *fault)
{
    const char *msg = fault->message;
    const char *colon = strstr(msg, ": ");
    if (colon && (strncmp(msg, "target ", 7) == 0 || strncmp(msg, "source", 6) == 0))
        msg = colon + 2;
    fail_set(f,
             fault->receiver == PGFAN_PRODUCER_INDEX  ? WHO_SOURCE
             : fault->receiver == PGFAN_MANAGER_INDEX ? WHO_NONE
                                                      : fault->receiver,
             fault->sqlstate, "%s", msg);
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
static void give_up(run *r, PGconn **c)
{
    (void)r;
    PQfinish(*c);
    *c = NULL;
}

/* Runs SQL on *c, bounded and interruptible (sql.h).  A connection that
 * does not answer even a cancel is closed. */
static int exec_ok(run *r, PGconn **c, const char *sql, int who, cli_fail *f)
{
    int gave_up;
    PGresult *res = sql_exec(*c, sql, 0, NULL, 0, &gave_up);
    int ok =
        PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok && f && gave_up)
        fail_set(f, who, NULL,
                 "no answer to %s, nor to its cancel: the connection was closed", sql);
    else if (!ok && f && !*c)
        fail_set(f, who, NULL, "the connection was closed earlier");
    else if (!ok && f)
        fail_from_result(f, who, res, *c);
    PQclear(res);
    if (gave_up)
        give_up(r, c);
    return ok ? 0 : -1;
}

/*
 * As pg_dump does: every session renders and reads values alike, in the
 * source database's encoding, so no setting of a server, database or role
 * can change a value on its way (a target that cannot hold a character
 * says so with its own conversion error).
 */
static int pin_session(run *r, PGconn **c, int who)
{
    char sql[512];
    cli_fail f;
    snprintf(sql, sizeof sql,
             "SET client_encoding = '%s'; SET DateStyle = 'ISO, YMD'; "
             "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "
             "SET TimeZone = 'UTC'; SET bytea_output = 'hex'; SET lc_monetary = 'C'; "
             "SET xmloption = content",
             r->encoding);
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
 * forever, and closing it rolls its transaction back. */
static void rollback_all(run *r)
{
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        if (r->in_tx[i] && PQtransactionStatus(r->targets[i]) == PQTRANS_ACTIVE)
            give_up(r, &r->targets[i]);
        else if (r->in_tx[i] && PQstatus(r->targets[i]) == CONNECTION_OK)
            exec_ok(r, &r->targets[i], "ROLLBACK", (int)i, NULL);
        r->in_tx[i] = 0;
    }
}

static int connect_all(run *r)
{
    cli_fail f;
    mask_conninfo(r->opt.source, r->source_masked, sizeof r->source_masked);
    r->report.ntargets = r->opt.ntargets;
    for (size_t i = 0; i < r->opt.ntargets; i++)
        mask_conninfo(r->opt.targets[i], r->report.targets[i].masked,
                      sizeof r->report.targets[i].masked);
    if (!(r->source = connect_to(r, r->opt.source, WHO_SOURCE, &f)) ||
        learn_encoding(r) != 0 || pin_session(r, &r->source, WHO_SOURCE) != 0)
        return -1;
    for (size_t i = 0; i < r->opt.ntargets; i++)
        if (!(r->targets[i] = connect_to(r, r->opt.targets[i], (int)i, &f)) ||
            pin_session(r, &r->targets[i], (int)i) != 0)
            return -1;
    return interrupted ? -1 : 0;
}

/* Everything checked before a byte moves. */
static int preflight(run *r)
{
    cli_fail f;
    if (plan_copy(&r->opt, r->source, r->targets, &r->plan, &f) != 0) {
        print_fail(r, &f);
        return -1;
    }
    r->report.format = r->plan.format;
    snprintf(r->report.format_reason, sizeof r->report.format_reason, "%s",
             r->plan.format_reason);
    for (size_t i = 0; i < r->opt.ntargets; i++)
        snprintf(r->report.targets[i].table, sizeof r->report.targets[i].table, "%s",
                 r->plan.target_table[i] ? r->plan.target_table[i] : "");
    if (!r->opt.quiet && r->plan.notes[0])
        fprintf(stderr, "pgfan: note: %s\n", r->plan.notes);
    if (!r->opt.quiet && r->plan.format_reason[0])
        fprintf(stderr, "pgfan: note: --format auto copies as text: %s\n",
                r->plan.format_reason);
    for (size_t i = 0; i < r->opt.ntargets && r->opt.atomic; i++) {
        int gave_up;
        PGresult *res = sql_exec(r->targets[i], "SHOW max_prepared_transactions", 0, NULL,
                                 0, &gave_up);
        int zero =
            PQresultStatus(res) != PGRES_TUPLES_OK || atoi(PQgetvalue(res, 0, 0)) == 0;
        PQclear(res);
        if (zero) {
            fail_set(&f, (int)i, NULL,
                     "max_prepared_transactions is 0; --atomic needs two-phase commit "
                     "(set max_prepared_transactions > 0 and restart that server)");
            print_fail(r, &f);
            return -1;
        }
    }
    return 0;
}

static int begin_all(run *r)
{
    cli_fail f;
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        if (exec_ok(r, &r->targets[i], "BEGIN", (int)i, &f) != 0) {
            print_fail(r, &f);
            return -1;
        }
        r->in_tx[i] = 1;
        if (r->plan.truncate_sql[i] &&
            exec_ok(r, &r->targets[i], r->plan.truncate_sql[i], (int)i, &f) != 0) {
            print_fail(r, &f);
            return -1;
        }
    }
    return 0;
}

static pgfan_manager *build_manager(run *r)
{
    pgfan_options o;
    pgfan_producer *p;
    pgfan_manager *m;
    pgfan_options_init(&o);
    o.policy = r->opt.on_fault;
    o.fault_hold_ms = 0; /* nobody reconciles here: settle faults at once */
    o.stall_timeout_ms = r->opt.stall_timeout_ms;
    o.progress_ms = 250;
    if (r->opt.ring_slots)
        o.ring_slots = r->opt.ring_slots;
    if (r->opt.chunk_size)
        o.chunk_bytes = r->opt.chunk_size;
    if (pgfan_producer_new_statement(&p, r->source, r->plan.copy_out) != PGFAN_OK) {
        fprintf(stderr, "pgfan: source: not a COPY ... TO STDOUT statement: %s\n",
                r->plan.copy_out);
        return NULL;
    }
    if (pgfan_manager_new(&m, p, &o) != PGFAN_OK) {
        pgfan_producer_free(p);
        return NULL;
    }
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        pgfan_receiver *rc;
        char label[32];
        if (pgfan_receiver_new_statement(&rc, r->targets[i], r->plan.copy_in[i]) !=
            PGFAN_OK) {
            fprintf(stderr,
                    "pgfan: target %zu: not a COPY ... FROM STDIN statement: %s\n", i + 1,
                    r->plan.copy_in[i]);
            pgfan_manager_free(m);
            return NULL;
        }
        snprintf(label, sizeof label, "target %zu", i + 1);
        int added = pgfan_receiver_set_label(rc, label);
        if (added == PGFAN_OK)
            added = pgfan_manager_add_receiver(m, rc, NULL);
        if (added != PGFAN_OK) {
            fprintf(stderr, "pgfan: target %zu: cannot be added to the copy: %s\n", i + 1,
                    pgfan_strerror(added));
            pgfan_receiver_free(rc);
            pgfan_manager_free(m);
            return NULL;
        }
    }
    return m;
}

static void print_first_fault(run *r, pgfan_manager *m)
{
    pgfan_fault fault;
    cli_fail f;
    if (pgfan_manager_fault(m, 0, &fault) == PGFAN_OK) {
        fail_from_fault(&f, &fault);
        print_fail(r, &f);
    }
}

/* Drives the copy; returns the library's verdict, or PGFAN_EABORTED when
 * interrupted. */
static int transfer(run *r, pgfan_manager *m)
{
    progress_view view = {.out = stderr,
                          .tty = isatty(STDERR_FILENO),
                          .estimated_rows = r->plan.estimated_rows,
                          .tables = r->plan.target_table};
    int show =
        !r->opt.quiet && (r->opt.progress == 1 || (r->opt.progress == -1 && view.tty));
    pgfan_event ev;
    cli_fail f;
    if (!show)
        view.tty = 0;
    do {
        if (interrupted) {
            progress_clear(&view);
            pgfan_manager_abort(m, "pgfan: interrupted");
            return PGFAN_EABORTED;
        }
        if (pgfan_manager_next(m, &ev) != PGFAN_OK)
            break;
        if (ev.type == PGFAN_EVENT_FAULT) {
            progress_clear(&view);
            fail_from_fault(&f, &ev.fault);
            print_fail(r, &f);
        } else if (show) {
            progress_draw(&view, m);
        }
    } while (ev.type != PGFAN_EVENT_END);
    progress_clear(&view);
    size_t seen = pgfan_manager_fault_count(m);
    int rc = pgfan_manager_finish(m);
    /* Faults of the end itself (CopyDone answered with an error, a row
     * count that differs) come after END. */
    for (size_t k = seen; k < pgfan_manager_fault_count(m); k++) {
        pgfan_fault fault;
        if (pgfan_manager_fault(m, k, &fault) == PGFAN_OK) {
            fail_from_fault(&f, &fault);
            print_fail(r, &f);
        }
    }
    return rc;
}

static void collect(run *r, pgfan_manager *m)
{
    pgfan_progress p;
    pgfan_manager_progress(m, &p);
    r->report.source_rows = p.producer_rows;
    r->report.bytes = p.producer_bytes;
    /* When the source failed, the report says why every target rolled back. */
    for (size_t k = 0; k < pgfan_manager_fault_count(m); k++) {
        pgfan_fault fault;
        cli_fail f;
        if (pgfan_manager_fault(m, k, &fault) != PGFAN_OK ||
            fault.receiver != PGFAN_PRODUCER_INDEX)
            continue;
        fail_from_fault(&f, &fault);
        snprintf(r->report.source_sqlstate, sizeof r->report.source_sqlstate, "%s",
                 f.sqlstate);
        snprintf(r->report.source_error, sizeof r->report.source_error, "%s", f.message);
        break;
    }
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        pgfan_receiver_result res;
        target_report *t = &r->report.targets[i];
        pgfan_manager_receiver(m, i, &res);
        t->rows = res.rows;
        t->bytes = res.bytes;
        t->seconds = res.seconds;
        if (res.has_fault && res.fault.receiver == (int)i) {
            cli_fail f;
            fail_from_fault(&f, &res.fault);
            snprintf(t->sqlstate, sizeof t->sqlstate, "%s", f.sqlstate);
            snprintf(t->error, sizeof t->error, "%s", f.message);
        }
        /* Under --on-fault drop a target that faulted is dropped, whether the
         * fault came mid-stream or only at CopyDone. */
        if (res.state == PGFAN_RECEIVER_DONE)
            t->outcome = OUTCOME_PENDING; /* decided by the commit */
        else if (res.state == PGFAN_RECEIVER_DROPPED ||
                 (t->error[0] && r->opt.on_fault == PGFAN_POLICY_DROP))
            t->outcome = OUTCOME_DROPPED;
        else
            t->outcome = t->error[0] ? OUTCOME_FAILED : OUTCOME_ROLLED_BACK;
    }
}

static void note_error(target_report *t, const cli_fail *f)
{
    snprintf(t->sqlstate, sizeof t->sqlstate, "%s", f->sqlstate);
    snprintf(t->error, sizeof t->error, "%s", f->message);
    t->outcome = OUTCOME_FAILED;
}

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

/* Whether gid i is still prepared on target i, after reconnecting:
 * 1 yes, 0 no, -1 nobody can tell. */
static int still_prepared(run *r, size_t i)
{
    char found[8];
    if (reconnect(r, i) != 0)
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
            (left == 1 && exec_ok(r, &r->targets[i], sql, (int)i, &f) == 0)) {
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

/* The connection broke during PREPARE TRANSACTION: whether it prepared is
 * only known by looking.  Keeps the gid when it did, clears it when not;
 * returns -1 when nobody can tell (the gid is kept, to be reported). */
static int find_lost_prepare(run *r, size_t i)
{
    int left = still_prepared(r, i);
    if (left == 0)
        r->gid[i][0] = '\0'; /* never prepared: rolled back with its session */
    return left < 0 ? -1 : 0;
}

/* Prepares target i's transaction.  Returns 1 when prepared, 0 when not. */
static int prepare_one(run *r, size_t i)
{
    char sql[128];
    cli_fail f;
    snprintf(r->gid[i], sizeof r->gid[i], "pgfan_%s_%zu", r->run_id, i + 1);
    snprintf(sql, sizeof sql, "PREPARE TRANSACTION '%s'", r->gid[i]);
    r->in_tx[i] = 0;
    if (exec_ok(r, &r->targets[i], sql, (int)i, &f) == 0)
        return 1;
    if (!r->targets[i] || PQstatus(r->targets[i]) == CONNECTION_BAD) {
        if (find_lost_prepare(r, i) == 0 && r->gid[i][0])
            return 1; /* the answer was lost, the PREPARE was not */
    } else {
        r->gid[i][0] = '\0'; /* a failed PREPARE rolls its transaction back */
    }
    print_fail(r, &f);
    note_error(&r->report.targets[i], &f);
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

/* Commits each candidate.  Under --on-fault abort, once one COMMIT failed
 * nobody else commits. */
static void commit_each(run *r, const int *candidate)
{
    cli_fail f;
    int stop = 0;
    for (size_t i = 0; i < r->opt.ntargets && !stop; i++) {
        if (!candidate[i])
            continue;
        r->in_tx[i] = 0;
        if (exec_ok(r, &r->targets[i], "COMMIT", (int)i, &f) == 0) {
            r->report.targets[i].outcome = OUTCOME_COMMITTED;
            continue;
        }
        print_fail(r, &f);
        note_error(&r->report.targets[i], &f);
        if (!r->targets[i] || PQstatus(r->targets[i]) == CONNECTION_BAD) {
            target_outcome o = settle_lost_commit(r, i);
            r->report.targets[i].outcome = o;
            if (o == OUTCOME_COMMITTED)
                continue;
            fprintf(stderr,
                    "pgfan: target %zu: the COMMIT was lost with its connection; "
                    "its server says: %s\n",
                    i + 1, o == OUTCOME_FAILED ? "rolled back" : "unknown (check it)");
        }
        stop = r->opt.on_fault == PGFAN_POLICY_ABORT;
    }
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
        int gave_up;
        if (!s->target[i])
            continue;
        if (source_sequence(r, s->source, value, sizeof value, &called) != 0) {
            fail_set(f, (int)i, NULL, "cannot read the source's sequence %s", s->source);
            return -1;
        }
        const char *params[3] = {s->target[i], value, called == 't' ? "true" : "false"};
        PGresult *res = sql_exec(r->targets[i],
                                 "SELECT setval($1::regclass, $2::bigint, $3::boolean)",
                                 3, params, 0, &gave_up);
        int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
        if (!ok)
            fail_from_result(f, (int)i, res, r->targets[i]);
        PQclear(res);
        if (gave_up)
            give_up(r, &r->targets[i]);
        if (!ok)
            return -1;
    }
    return 0;
}

/*
 * What must happen on every target while everything can still roll back:
 * deferred constraints are checked now, not at COMMIT, the sequences of
 * copied serial and identity columns end at the source's values, and the
 * transaction's id is noted (to settle a COMMIT whose answer is lost).  A
 * target that fails here does not commit; under --on-fault abort, nobody
 * does.
 */
static void before_commit(run *r, int *candidate)
{
    cli_fail f;
    int failed = 0;
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        if (!candidate[i])
            continue;
        if (exec_ok(r, &r->targets[i], "SET CONSTRAINTS ALL IMMEDIATE", (int)i, &f) !=
                0 ||
            carry_sequences(r, i, &f) != 0) {
            print_fail(r, &f);
            note_error(&r->report.targets[i], &f);
            candidate[i] = 0;
            failed = 1;
            continue;
        }
        target_value(r, i, "SELECT txid_current()::text", NULL, r->xid[i],
                     sizeof r->xid[i]);
    }
    if (failed && r->opt.on_fault == PGFAN_POLICY_ABORT)
        for (size_t i = 0; i < r->opt.ntargets; i++)
            candidate[i] = 0;
}

/* Decides each target's fate and returns the exit code. */
static int conclude(run *r, int rc)
{
    int candidate[MAX_TARGETS] = {0};
    size_t ncand = 0, committed = 0, unknown = 0;
    int may_commit =
        !interrupted && (rc == PGFAN_OK ||
                         (r->opt.on_fault == PGFAN_POLICY_DROP && rc == PGFAN_ERECEIVER));
    for (size_t i = 0; i < r->opt.ntargets; i++)
        candidate[i] = may_commit && r->report.targets[i].outcome == OUTCOME_PENDING;
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

/* The report file is opened before anything happens, so a path that
 * cannot be written is a usage error, not a failure after the commit. */
static int open_report(run *r)
{
    if (!r->opt.report)
        return 0;
    r->report_file = strcmp(r->opt.report, "-") == 0 ? stdout : fopen(r->opt.report, "w");
    if (r->report_file)
        return 0;
    fprintf(stderr, "pgfan: cannot write the report to %s: %s\n", r->opt.report,
            strerror(errno));
    return -1;
}

/* Writing the report never changes what the servers hold, nor the exit
 * code that says it; a report that could not be written is said. */
static void write_report(run *r)
{
    if (!r->report_file)
        return;
    if (r->report_file == stdout && r->stdout_closed) {
        fprintf(stderr,
                "pgfan: the report could not be written to standard output (it is "
                "closed); the outcome above stands\n");
        return;
    }
    int rc = write_json_report(r->report_file, &r->report);
    if (fflush(r->report_file) != 0)
        rc = -1;
    if (r->report_file != stdout && fclose(r->report_file) != 0)
        rc = -1;
    r->report_file = NULL;
    if (rc != 0)
        fprintf(stderr,
                "pgfan: the report could not be written to %s (%s); the outcome above "
                "stands\n",
                strcmp(r->opt.report, "-") == 0 ? "standard output" : r->opt.report,
                strerror(errno));
}

/* 128 random bits: unique across hosts, containers and pid namespaces. */
static void new_run_id(run *r)
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

static int finish_run(run *r, int code)
{
    rollback_all(r);
    for (size_t i = 0; i < r->report.ntargets; i++)
        if (r->report.targets[i].outcome == OUTCOME_PENDING)
            r->report.targets[i].outcome = OUTCOME_ROLLED_BACK;
    r->report.seconds = seconds_since(&r->started);
    write_report(r);
    if (!r->opt.quiet && code != EXIT_USAGE)
        print_summary(stderr, &r->report);
    if (code == EXIT_INTERRUPTED && !r->opt.quiet)
        fprintf(stderr, "pgfan: interrupted: every target rolled back\n");
    for (size_t i = 0; i < r->opt.ntargets; i++)
        PQfinish(r->targets[i]);
    PQfinish(r->source);
    plan_free(&r->plan);
    return code;
}

/* Keeps connections off closed standard descriptors: a socket that got fd 1
 * would receive the report.  Returns whether stdout was closed. */
static int guard_standard_fds(void)
{
    int stdout_closed = 0;
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;
        stdout_closed |= fd == 1;
        int devnull = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
        if (devnull >= 0 && devnull != fd) {
            dup2(devnull, fd);
            close(devnull);
        }
    }
    return stdout_closed;
}

int main(int argc, char **argv)
{
    static run r;
    r.stdout_closed = guard_standard_fds();
    char err[512];
    clock_gettime(CLOCK_MONOTONIC, &r.started);
    if (parse_options(argc, argv, &r.opt, err, sizeof err) != 0) {
        fprintf(stderr, "pgfan: %s\n", err);
        return EXIT_USAGE;
    }
    if (r.opt.show_help) {
        fputs(cli_usage, stdout);
        return 0;
    }
    if (r.opt.show_version) {
        printf("pgfan %s (libpgfan %s, libpq %d)\n", PGFAN_VERSION_STRING,
               pgfan_version_string(), PQlibVersion());
        return 0;
    }
    cli_install_signals();
    if (open_report(&r) != 0)
        return EXIT_USAGE;
    new_run_id(&r);
    if (connect_all(&r) != 0 || preflight(&r) != 0 || begin_all(&r) != 0)
        return finish_run(&r, interrupted ? EXIT_INTERRUPTED : EXIT_USAGE);
    if (interrupted)
        return finish_run(&r, EXIT_INTERRUPTED);
    pgfan_manager *m = build_manager(&r);
    if (!m)
        return finish_run(&r, EXIT_USAGE);
    int rc = pgfan_manager_start(m);
    if (rc != PGFAN_OK) {
        /* Refused before any data moved: formats, columns, statements. */
        print_first_fault(&r, m);
        pgfan_manager_free(m);
        return finish_run(&r, EXIT_USAGE);
    }
    rc = transfer(&r, m);
    collect(&r, m);
    pgfan_manager_free(m);
    return finish_run(&r, conclude(&r, rc));
}

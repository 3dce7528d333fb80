/*
 * pgfan: fan a table or query out to N PostgreSQL targets, all or nothing,
 * with progress and a report.  Built on libpgfan's public API only.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
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

enum exit_code {
    EXIT_ALL_COMMITTED = 0,
    EXIT_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_PARTIAL = 3,
    EXIT_INTERRUPTED = 130
};

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

typedef struct run {
    cli_options opt;
    PGconn *source;
    PGconn *targets[MAX_TARGETS];
    int in_tx[MAX_TARGETS];    /* BEGIN done, neither COMMIT nor ROLLBACK yet */
    char gid[MAX_TARGETS][64]; /* prepared transaction, when --atomic */
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
    fail_set(f, fault->receiver == PGFAN_PRODUCER_INDEX ? WHO_SOURCE : fault->receiver,
             fault->sqlstate, "%s", msg);
}

static PGconn *connect_to(run *r, const char *conninfo, int who, cli_fail *f)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        const char *msg = PQerrorMessage(c);
        fail_set(f, who, NULL, "connection failed: %s", msg);
        size_t n = strlen(f->message);
        while (n > 0 && f->message[n - 1] == '\n')
            f->message[--n] = '\0';
        print_fail(r, f);
        PQfinish(c);
        return NULL;
    }
    return c;
}

static int exec_ok(PGconn *c, const char *sql, int who, cli_fail *f)
{
    PGresult *res = PQexec(c, sql);
    int ok =
        PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok && f)
        fail_from_result(f, who, res, c);
    PQclear(res);
    return ok ? 0 : -1;
}

/*
 * As pg_dump does: every session renders and reads values alike, in the
 * source database's encoding, so no setting of a server, database or role
 * can change a value on its way (a target that cannot hold a character
 * says so with its own conversion error).
 */
static int pin_session(run *r, PGconn *c, int who)
{
    char sql[512];
    cli_fail f;
    snprintf(sql, sizeof sql,
             "SET client_encoding = '%s'; SET DateStyle = 'ISO, YMD'; "
             "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "
             "SET TimeZone = 'UTC'; SET bytea_output = 'hex'; SET lc_monetary = 'C'; "
             "SET xmloption = content",
             r->encoding);
    if (exec_ok(c, sql, who, &f) == 0)
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

static void rollback_all(run *r)
{
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        if (r->in_tx[i] && PQstatus(r->targets[i]) == CONNECTION_OK)
            exec_ok(r->targets[i], "ROLLBACK", (int)i, NULL);
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
        learn_encoding(r) != 0 || pin_session(r, r->source, WHO_SOURCE) != 0)
        return -1;
    for (size_t i = 0; i < r->opt.ntargets; i++)
        if (!(r->targets[i] = connect_to(r, r->opt.targets[i], (int)i, &f)) ||
            pin_session(r, r->targets[i], (int)i) != 0)
            return -1;
    return 0;
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
        PGresult *res = PQexec(r->targets[i], "SHOW max_prepared_transactions");
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
        if (exec_ok(r->targets[i], "BEGIN", (int)i, &f) != 0) {
            print_fail(r, &f);
            return -1;
        }
        r->in_tx[i] = 1;
        if (r->plan.truncate_sql[i] &&
            exec_ok(r->targets[i], r->plan.truncate_sql[i], (int)i, &f) != 0) {
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
        pgfan_receiver_set_label(rc, label);
        pgfan_manager_add_receiver(m, rc, NULL);
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
    return pgfan_manager_finish(m);
}

static void collect(run *r, pgfan_manager *m)
{
    pgfan_progress p;
    pgfan_manager_progress(m, &p);
    r->report.source_rows = p.producer_rows;
    r->report.bytes = p.producer_bytes;
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

/* Runs a statement about a prepared transaction, reconnecting once when
 * the connection was lost.  Says which gid needs attention if it fails. */
static int settle_prepared(run *r, size_t i, const char *verb)
{
    char sql[128];
    cli_fail f;
    snprintf(sql, sizeof sql, "%s PREPARED '%s'", verb, r->gid[i]);
    if (PQstatus(r->targets[i]) != CONNECTION_OK)
        PQreset(r->targets[i]);
    if (exec_ok(r->targets[i], sql, (int)i, &f) == 0) {
        r->gid[i][0] = '\0';
        return 0;
    }
    char who[1200];
    fprintf(stderr,
            "pgfan: %s: %s (SQLSTATE %s); prepared transaction '%s' needs attention: run "
            "%s there\n",
            who_name(r, (int)i, who, sizeof who), f.message, f.sqlstate, r->gid[i], sql);
    note_error(&r->report.targets[i], &f);
    return -1;
}

/* Two-phase commit: every candidate prepares, then all commit; any failed
 * prepare rolls every prepared one back. */
static void commit_atomic(run *r, const int *candidate)
{
    cli_fail f;
    int all_prepared = 1;
    for (size_t i = 0; i < r->opt.ntargets && all_prepared; i++) {
        if (!candidate[i])
            continue;
        char sql[128];
        snprintf(r->gid[i], sizeof r->gid[i], "pgfan_%ld_%ld_%zu", (long)getpid(),
                 (long)time(NULL), i + 1);
        snprintf(sql, sizeof sql, "PREPARE TRANSACTION '%s'", r->gid[i]);
        if (exec_ok(r->targets[i], sql, (int)i, &f) != 0) {
            /* A failed PREPARE TRANSACTION rolls its transaction back. */
            print_fail(r, &f);
            note_error(&r->report.targets[i], &f);
            r->gid[i][0] = '\0';
            all_prepared = 0;
        } else if (interrupted) {
            all_prepared = 0; /* roll back what is prepared */
        }
        r->in_tx[i] = 0;
    }
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

static void commit_each(run *r, const int *candidate)
{
    cli_fail f;
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        if (!candidate[i])
            continue;
        if (exec_ok(r->targets[i], "COMMIT", (int)i, &f) == 0) {
            r->report.targets[i].outcome = OUTCOME_COMMITTED;
        } else {
            print_fail(r, &f);
            note_error(&r->report.targets[i], &f);
        }
        r->in_tx[i] = 0;
    }
    rollback_all(r);
}

/* Reads a source sequence's state: last_value and is_called.  `seq` is the
 * quoted name pg_get_serial_sequence() gave. */
static int source_sequence(run *r, const char *seq, char *value, size_t len, char *called)
{
    char sql[600];
    snprintf(sql, sizeof sql, "SELECT last_value, is_called FROM %s", seq);
    PGresult *res = PQexec(r->source, sql);
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
        PGresult *res = PQexecParams(
            r->targets[i], "SELECT setval($1::regclass, $2::bigint, $3::boolean)", 3,
            NULL, params, NULL, NULL, 0);
        int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
        if (!ok)
            fail_from_result(f, (int)i, res, r->targets[i]);
        PQclear(res);
        if (!ok)
            return -1;
    }
    return 0;
}

/*
 * What must happen on every target while everything can still roll back:
 * deferred constraints are checked now, not at COMMIT, and the sequences
 * of copied serial and identity columns end at the source's values.  A
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
        if (exec_ok(r->targets[i], "SET CONSTRAINTS ALL IMMEDIATE", (int)i, &f) != 0 ||
            carry_sequences(r, i, &f) != 0) {
            print_fail(r, &f);
            note_error(&r->report.targets[i], &f);
            candidate[i] = 0;
            failed = 1;
        }
    }
    if (failed && r->opt.on_fault == PGFAN_POLICY_ABORT)
        for (size_t i = 0; i < r->opt.ntargets; i++)
            candidate[i] = 0;
}

/* Decides each target's fate and returns the exit code. */
static int conclude(run *r, int rc)
{
    int candidate[MAX_TARGETS] = {0};
    size_t ncand = 0, committed = 0;
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
    }
    if (interrupted && committed == 0)
        return EXIT_INTERRUPTED;
    if (committed == r->opt.ntargets)
        return EXIT_ALL_COMMITTED;
    return committed == 0 ? EXIT_FAILED : EXIT_PARTIAL;
}

static int write_report(run *r)
{
    if (!r->opt.report)
        return 0;
    FILE *out = strcmp(r->opt.report, "-") == 0 ? stdout : fopen(r->opt.report, "w");
    if (!out) {
        fprintf(stderr, "pgfan: cannot write the report to %s: %s\n", r->opt.report,
                strerror(errno));
        return -1;
    }
    int rc = write_json_report(out, &r->report);
    if (out != stdout && fclose(out) != 0)
        rc = -1;
    return rc;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int finish_run(run *r, int code)
{
    rollback_all(r);
    for (size_t i = 0; i < r->report.ntargets; i++)
        if (r->report.targets[i].outcome == OUTCOME_PENDING)
            r->report.targets[i].outcome = OUTCOME_ROLLED_BACK;
    r->report.seconds = seconds_since(&r->started);
    if (write_report(r) != 0 && code == EXIT_ALL_COMMITTED)
        code = EXIT_FAILED;
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

int main(int argc, char **argv)
{
    static run r;
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
    install_signals();
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

/*
 * pgfan: fan a table or query out to N PostgreSQL targets, all or nothing,
 * with progress and a report.  Built on libpgfan's public API only; the
 * run's state and helpers are in run.c, its ending in txn.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pgfan.h>

#include "lockwait.h"
#include "progress.h"
#include "run.h"
#include "set.h"
#include "txn.h"

#define interrupted cli_interrupted

/* How long a target's server that went away may take to accept
 * connections again, per retry (a restart with crash recovery). */
#define RETRY_CONNECT_MS 60000
/* How long a reconnection may hold up transfer()'s loop per cycle. */
#define RETRY_STEP_MS 50
/* Faults are held this long for on_fault() (which settles each at once). */
#define RETRY_HOLD_MS 3600000

static double seconds_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
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

/*
 * --stall-timeout as the transaction's lock_timeout (never raising a
 * shorter one the session has): a target waiting on another session's
 * lock moves nothing, and at the COPY's end (foreign key checks) nothing
 * the client sees tells it from work; the server cancels that wait.
 */
static int bound_lock_waits(run *r, size_t i, cli_fail *f)
{
    char sql[400];
    if (r->opt.stall_timeout_ms == 0)
        return 0;
    fan_lock_timeout_sql(sql, sizeof sql, r->opt.stall_timeout_ms);
    return exec_ok(r, &r->targets[i], sql, (int)i, f);
}

/* The server gave up a lock wait (lock_timeout) or broke a deadlock: the
 * copy failed on a lock held elsewhere, not on what was asked. */
static int lock_gave_up(const char *sqlstate)
{
    return strcmp(sqlstate, "55P03") == 0 || strcmp(sqlstate, "40P01") == 0;
}

#define BEGIN_LOCKED (-2)

/*
 * --load-fresh (a table of a set that --copy-schema created): when the
 * target table is empty and no foreign key references it, it is truncated
 * in the transaction, under the lock that keeps it empty, so the COPY may
 * FREEZE its rows and nothing has to rewrite them later (hint bits, the
 * first vacuum).  A table holding rows, or referenced, is loaded as it is,
 * without FREEZE.  Returns 0, or -1 with `f`.
 */
static int load_fresh(run *r, size_t i, cli_fail *f)
{
    plan *p = &r->plan;
    if (!p->copy_in_freeze[i] && !p->frozen[i])
        return 0;
    const char *table = p->target_table[i], *params[1] = {table};
    char *lock = format_sql("LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE", table);
    char *ask = format_sql("SELECT EXISTS (SELECT FROM ONLY %s) OR EXISTS (SELECT FROM "
                           "pg_catalog.pg_constraint WHERE confrelid = "
                           "$1::pg_catalog.regclass AND contype = 'f')",
                           table);
    char *empty = format_sql("TRUNCATE ONLY %s", table);
    int rc = -1;
    if (!lock || !ask || !empty)
        fail_set(f, (int)i, NULL, "out of memory");
    else if (exec_ok(r, &r->targets[i], lock, (int)i, f) == 0) {
        PGresult *res = query_ok(r, &r->targets[i], ask, 1, params, (int)i, f);
        int fresh = res && strcmp(PQgetvalue(res, 0, 0), "f") == 0;
        rc = !res ? -1 : fresh ? exec_ok(r, &r->targets[i], empty, (int)i, f) : 0;
        if (rc == 0 && fresh && !p->frozen[i]) {
            char *plain = p->copy_in[i];
            p->copy_in[i] = p->copy_in_freeze[i];
            p->copy_in_freeze[i] = plain;
            p->frozen[i] = 1;
        }
        PQclear(res);
    }
    free(lock), free(ask), free(empty);
    return rc;
}

/* Target i's transaction: BEGIN, its lock bound with --stall-timeout, and
 * its TRUNCATE with --truncate (or --load-fresh).  Returns 0, or after saying why
 * BEGIN_LOCKED (a lock held elsewhere) or -1. */
static int begin_one(run *r, size_t i)
{
    cli_fail f;
    if (exec_ok(r, &r->targets[i], "BEGIN", (int)i, &f) != 0) {
        print_fail(r, &f);
        return -1;
    }
    r->in_tx[i] = 1;
    if (bound_lock_waits(r, i, &f) != 0 || load_fresh(r, i, &f) != 0 ||
        (r->plan.truncate_sql[i] &&
         exec_ok(r, &r->targets[i], r->plan.truncate_sql[i], (int)i, &f) != 0)) {
        print_fail(r, &f);
        return lock_gave_up(f.sqlstate) ? BEGIN_LOCKED : -1;
    }
    return 0;
}

static int begin_all(run *r)
{
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        int rc = begin_one(r, i);
        if (rc != 0)
            return rc;
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
    o.retries = r->opt.retries;
    if (o.retries)
        o.fault_hold_ms = RETRY_HOLD_MS; /* on_fault() settles every fault at once */
    o.stall_timeout_ms = r->opt.stall_timeout_ms;
    o.start_timeout_ms = r->opt.stall_timeout_ms; /* a target locked out of its COPY */
    o.end_timeout_ms = r->opt.end_timeout_ms;
    o.spill_limit = r->opt.spill_limit;
    o.spill_dir = r->opt.spill_dir;
    /* Under drop each target stands alone: it commits once it has it all. */
    o.complete_early = r->opt.on_fault == PGFAN_POLICY_DROP && !r->opt.atomic;
    o.interrupt = &cli_interrupted;
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
            added = pgfan_receiver_set_max_rate(rc, target_max_rate(&r->opt, i));
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

/* A COPY that did not start because of the server, not the request: no
 * answer in time, a lost connection, an interrupt, or a lock wait the
 * server gave up (lock_timeout, which --stall-timeout sets, races the
 * start's own limit: either way the table was locked). */
static int start_failed_by_server(pgfan_manager *m, int rc)
{
    pgfan_fault fault;
    if (rc == PGFAN_ESTALL || rc == PGFAN_ECONN || rc == PGFAN_EABORTED)
        return 1;
    return pgfan_manager_fault(m, 0, &fault) == PGFAN_OK && lock_gave_up(fault.sqlstate);
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

/* For a set's coordinator: rows and bytes read so far, rewritten in place
 * at each tick (fixed width, so a reader never sees a torn number). */
static void note_progress(run *r, pgfan_manager *m)
{
    pgfan_progress p;
    char path[4096], line[48];
    if (!r->opt.status_file || pgfan_manager_progress(m, &p) != PGFAN_OK)
        return;
    snprintf(path, sizeof path, "%s.progress", r->opt.status_file);
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    if (fd < 0)
        return;
    int n = snprintf(line, sizeof line, "%20llu %20llu\n",
                     (unsigned long long)p.producer_rows,
                     (unsigned long long)p.producer_bytes);
    ssize_t written = pwrite(fd, line, (size_t)n, 0);
    (void)written; /* progress only: a lost update is harmless */
    close(fd);
}

/* A target whose COPY ended before the others (--on-fault drop) commits
 * now; one whose end failed is settled with the rest. */
static void commit_if_done(run *r, pgfan_manager *m, size_t i)
{
    pgfan_receiver_result res;
    if (pgfan_manager_receiver(m, i, &res) == PGFAN_OK && res.may_commit &&
        !cli_interrupted)
        commit_early(r, i, res.rows);
}

/* Target i has a new connection: its transaction opened as begin_all()
 * did, and the library reloads it from the journal while the others go
 * on.  Returns 0, or -1 (printed). */
static int reload_target(run *r, pgfan_manager *m, size_t i)
{
    cli_fail f;
    if (begin_one(r, i) != 0)
        return -1;
    int rc = pgfan_manager_retry(m, i, r->targets[i]);
    if (rc == PGFAN_OK)
        return 0;
    fail_set(&f, (int)i, NULL, "cannot be loaded again: %s", pgfan_strerror(rc));
    print_fail(r, &f);
    return -1;
}

/* Lost targets being reconnected (--retries), rc[i] for target i: each is
 * advanced for at most RETRY_STEP_MS per cycle of transfer()'s loop, so
 * that the copy, the stall watch, the progress and Ctrl-C go on while its
 * server comes back. */
static void advance_retries(run *r, pgfan_manager *m, reconnecting *rc,
                            progress_view *view)
{
    for (size_t i = 0; i < r->opt.ntargets && !cli_interrupted; i++) {
        cli_fail f;
        int got = rc[i].active ? reconnect_step(r, i, &rc[i], RETRY_STEP_MS, &f) : 0;
        if (got == 0)
            continue;
        progress_clear(view);
        if (got < 0)
            print_fail(r, &f);
        if (got < 0 || reload_target(r, m, i) != 0)
            pgfan_manager_drop(m, i);
    }
}

static void abandon_retries(run *r, reconnecting *rc)
{
    for (size_t i = 0; i < r->opt.ntargets; i++)
        reconnect_abandon(&rc[i]);
}

/* A fault: said, and settled at once, unless a lost target can be
 * reloaded (--retries): then its reconnection begins. */
static void on_fault(run *r, pgfan_manager *m, const pgfan_fault *fault, reconnecting *rc)
{
    cli_fail f;
    char who[1200];
    pgfan_receiver_result res;
    fail_from_fault(&f, fault);
    if (!fault->retryable || cli_interrupted) {
        print_fail(r, &f);
        /* Held only because of --retries: nobody reconciles here. */
        if (r->opt.retries && fault->receiver >= 0)
            pgfan_manager_drop(m, (size_t)fault->receiver);
        return;
    }
    size_t i = (size_t)fault->receiver;
    f.message[strcspn(f.message, "\n")] = '\0'; /* libpq's first line says it */
    pgfan_manager_receiver(m, i, &res);
    if (!r->opt.quiet)
        fprintf(stderr,
                "pgfan: %s: %s%s%s%s; reconnecting to load it again (retry %u of %u)\n",
                who_name(r, (int)i, who, sizeof who), f.message,
                f.sqlstate[0] ? " (SQLSTATE " : "", f.sqlstate, f.sqlstate[0] ? ")" : "",
                res.retries + 1, r->opt.retries);
    r->in_tx[i] = 0; /* gone with the old connection */
    reconnect_begin(r, i, RETRY_CONNECT_MS, &rc[i]);
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
    reconnecting lost[MAX_TARGETS] = {0};
    size_t said = 0; /* faults delivered as events, in the library's order */
    if (!show)
        view.tty = 0;
    do {
        if (interrupted) {
            progress_clear(&view);
            abandon_retries(r, lost);
            pgfan_manager_abort(m, "pgfan: interrupted");
            return PGFAN_EABORTED;
        }
        if (pgfan_manager_next(m, &ev) != PGFAN_OK)
            break;
        if (ev.type == PGFAN_EVENT_FAULT) {
            progress_clear(&view);
            said++;
            on_fault(r, m, &ev.fault, lost);
        } else if (ev.type == PGFAN_EVENT_RECEIVER_DONE) {
            commit_if_done(r, m, ev.receiver);
        } else {
            note_progress(r, m);
            if (show)
                progress_draw(&view, m);
        }
        advance_retries(r, m, lost, &view);
    } while (ev.type != PGFAN_EVENT_END);
    progress_clear(&view);
    abandon_retries(r, lost); /* none is left unless the copy failed anyway */
    int rc = pgfan_manager_finish(m);
    /* Faults of the end itself (CopyDone answered with an error, a row
     * count that differs) come after END, and so may one a receiver posted
     * as END was reported. */
    for (size_t k = said; k < pgfan_manager_fault_count(m); k++) {
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
    r->report.spill_peak_bytes = p.spill_peak_bytes;
    r->report.bytes = p.producer_bytes;
    /* When the source failed, the report says why every target rolled back. */
    for (size_t k = 0; k < pgfan_manager_fault_count(m); k++) {
        pgfan_fault fault;
        cli_fail f;
        if (r->report.source_error[0] || pgfan_manager_fault(m, k, &fault) != PGFAN_OK ||
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
        t->retries = res.retries;
        if (r->early[i])
            continue; /* settled when its COPY ended (commit_early) */
        if (res.has_fault && res.fault.receiver == (int)i) {
            cli_fail f;
            fail_from_fault(&f, &res.fault);
            snprintf(t->sqlstate, sizeof t->sqlstate, "%s", f.sqlstate);
            snprintf(t->error, sizeof t->error, "%s", f.message);
        }
        /* The library's one commit rule says who may commit; the commit
         * itself decides.  Under --on-fault drop a target that faulted is
         * dropped, whether the fault came mid-stream or at CopyDone. */
        if (res.may_commit)
            t->outcome = OUTCOME_PENDING;
        else if (res.state == PGFAN_RECEIVER_DONE)
            t->outcome = OUTCOME_ROLLED_BACK; /* fine, but the copy failed */
        else if (res.state == PGFAN_RECEIVER_DROPPED ||
                 (t->error[0] && r->opt.on_fault == PGFAN_POLICY_DROP))
            t->outcome = OUTCOME_DROPPED;
        else
            t->outcome = t->error[0] ? OUTCOME_FAILED : OUTCOME_ROLLED_BACK;
    }
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

/* For a table set's coordinator: written whole, then renamed into place,
 * so it reads either nothing or everything. */
static void write_status(run *r, int code)
{
    if (!r->opt.status_file)
        return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.part", r->opt.status_file);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    int rc = write_status_lines(f, &r->report, code);
    if (fclose(f) == 0 && rc == 0)
        rename(tmp, r->opt.status_file);
}

static int finish_run(run *r, int code)
{
    rollback_all(r);
    for (size_t i = 0; i < r->report.ntargets; i++)
        if (r->report.targets[i].outcome == OUTCOME_PENDING)
            r->report.targets[i].outcome = OUTCOME_ROLLED_BACK;
    r->report.seconds = seconds_since(&r->started);
    write_report(r);
    write_status(r, code);
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

/* A table's command, run by a set's coordinator, aborts when the
 * coordinator dies (say, killed with SIGKILL). */
static void follow_coordinator(void)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    const char *parent = getenv("PGFAN_COORDINATOR_PID");
    if (parent && atol(parent) != (long)getppid()) /* it died before prctl */
        cli_interrupted = SIGTERM;
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
    if (r.opt.set_id)
        follow_coordinator();
    if (open_report(&r) != 0)
        return EXIT_USAGE;
    new_run_id(&r);
    if (r.opt.set_mode)
        return run_set(&r);
    if (connect_all(&r) != 0 || preflight(&r) != 0)
        return finish_run(&r, interrupted ? EXIT_INTERRUPTED : EXIT_USAGE);
    int begun = begin_all(&r);
    if (begun != 0)
        return finish_run(&r, interrupted             ? EXIT_INTERRUPTED
                              : begun == BEGIN_LOCKED ? EXIT_FAILED
                                                      : EXIT_USAGE);
    if (interrupted)
        return finish_run(&r, EXIT_INTERRUPTED);
    pgfan_manager *m = build_manager(&r);
    if (!m)
        return finish_run(&r, EXIT_USAGE);
    int rc = pgfan_manager_start(m);
    if (rc != PGFAN_OK) {
        /* Nothing moved.  Refusals (formats, columns, statements, settings)
         * are usage errors; a server that would not start is a failure. */
        if (!interrupted)
            print_first_fault(&r, m);
        int code = interrupted                     ? EXIT_INTERRUPTED
                   : start_failed_by_server(m, rc) ? EXIT_FAILED
                                                   : EXIT_USAGE;
        pgfan_manager_free(m);
        return finish_run(&r, code);
    }
    transfer(&r, m); /* its verdict is in each receiver's may_commit */
    collect(&r, m);
    pgfan_manager_free(m);
    return finish_run(&r, conclude(&r));
}

/*
 * manager_loop: drive a copy yourself with the manager API - progress, a
 * receiver fault, reconcile or drop.
 *
 *   manager_loop TABLE SOURCE_CONNINFO TARGET_CONNINFO [TARGET_CONNINFO ...]
 *
 * Copies TABLE from the source into the same table of every target (each
 * COPY commits on its own), plus a call receiver that only counts bytes and
 * fails once on purpose.  Policy "drop": a target whose server rejects the
 * data (a constraint, say) is dropped and rolled back, the others go on.
 * The deliberate callback failure is reconcilable: the loop reconciles it,
 * and the callback receives the failed chunk again - nothing lost, nothing
 * twice.  Exit status 0 when the copy succeeded for every remaining target.
 */
#include <pgfan.h>

#include <stdio.h>
#include <stdlib.h>

typedef struct counter {
    unsigned long long bytes;
    int calls;
} counter;

/* Fails its third call once, to show a reconcilable fault. */
static int count_bytes(void *arg, const char *data, size_t len)
{
    counter *c = arg;
    (void)data;
    if (++c->calls == 3)
        return 1;
    c->bytes += len;
    return 0;
}

static PGconn *connect_or_exit(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "manager_loop: cannot connect: %s", PQerrorMessage(c));
        exit(2);
    }
    return c;
}

/* Builds the manager: the source, one statement receiver per target, and
 * the counting call receiver last. */
static pgfan_manager *build(const char *table, PGconn *source, PGconn **targets, int n,
                            counter *count)
{
    char sql[256];
    pgfan_options opts;
    pgfan_options_init(&opts);
    opts.policy = PGFAN_POLICY_DROP;
    opts.fault_hold_ms = 10000; /* time for us to decide on reconcilable faults */
    opts.progress_ms = 200;

    pgfan_producer *producer;
    pgfan_manager *m;
    snprintf(sql, sizeof sql, "COPY %s TO STDOUT", table);
    if (pgfan_producer_new_statement(&producer, source, sql) != PGFAN_OK)
        return NULL;
    if (pgfan_manager_new(&m, producer, &opts) != PGFAN_OK) {
        pgfan_producer_free(producer); /* not taken over on failure */
        return NULL;
    }
    snprintf(sql, sizeof sql, "COPY %s FROM STDIN", table);
    for (int i = 0; i < n; i++) {
        pgfan_receiver *r;
        if (pgfan_receiver_new_statement(&r, targets[i], sql) != PGFAN_OK ||
            pgfan_manager_add_receiver(m, r, NULL) != PGFAN_OK) {
            pgfan_manager_free(m);
            return NULL;
        }
    }
    pgfan_receiver *call;
    if (pgfan_receiver_new_call(&call, count_bytes, count) != PGFAN_OK ||
        pgfan_manager_add_receiver(m, call, NULL) != PGFAN_OK) {
        pgfan_manager_free(m);
        return NULL;
    }
    pgfan_receiver_set_label(call, "byte counter");
    return m;
}

/* Answers a fault: reconcile what can be, drop the rest. */
static void handle_fault(pgfan_manager *m, const pgfan_fault *f)
{
    if (f->receiver == PGFAN_PRODUCER_INDEX) {
        fprintf(stderr, "source failed: %s %s\n", f->sqlstate, f->message);
        return; /* the copy fails; nothing to steer */
    }
    if (f->receiver == PGFAN_MANAGER_INDEX) {
        fprintf(stderr, "copy failed: %s\n", f->message); /* e.g. no receivers left */
        return;
    }
    fprintf(stderr, "receiver %d: %s%s%s\n", f->receiver, f->sqlstate,
            f->sqlstate[0] ? " " : "", f->message);
    if (f->reconcilable && pgfan_manager_reconcile(m, (size_t)f->receiver) == PGFAN_OK)
        fprintf(stderr, "receiver %d reconciled\n", f->receiver);
    else
        pgfan_manager_drop(m, (size_t)f->receiver); /* may already be dropped */
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: manager_loop TABLE SOURCE TARGET [TARGET ...]\n");
        return 2;
    }
    int n = argc - 3;
    PGconn *source = connect_or_exit(argv[2]);
    PGconn **targets = calloc((size_t)n, sizeof *targets);
    for (int i = 0; i < n; i++)
        targets[i] = connect_or_exit(argv[3 + i]);
    counter count = {0, 0};
    pgfan_manager *m = build(argv[1], source, targets, n, &count);
    if (!m) {
        fprintf(stderr, "manager_loop: cannot set up the copy\n");
        return 2;
    }

    int rc = pgfan_manager_start(m);
    if (rc == PGFAN_OK) {
        pgfan_event ev;
        do {
            if (pgfan_manager_next(m, &ev) != PGFAN_OK)
                break;
            pgfan_progress p;
            pgfan_manager_progress(m, &p);
            if (ev.type == PGFAN_EVENT_FAULT)
                handle_fault(m, &ev.fault);
            else
                printf("%llu rows, %.1f MB, %zu of %zu receivers active, %.1f s\n",
                       (unsigned long long)p.producer_rows, p.producer_bytes / 1e6,
                       p.active, p.receivers, p.seconds);
        } while (ev.type != PGFAN_EVENT_END);
    }
    rc = pgfan_manager_finish(m); /* also after a failed start: it reports why */

    for (size_t i = 0; i < pgfan_manager_receiver_count(m); i++) {
        pgfan_receiver_result r;
        pgfan_manager_receiver(m, i, &r);
        printf("%-24s %-8s %llu rows\n", r.label, pgfan_receiver_state_name(r.state),
               (unsigned long long)r.rows);
    }
    printf("byte counter saw %llu bytes\n", count.bytes);
    printf("result: %s\n", rc == PGFAN_OK ? "ok" : pgfan_strerror(rc));
    pgfan_manager_free(m);
    for (int i = 0; i < n; i++)
        PQfinish(targets[i]);
    free(targets);
    PQfinish(source);
    return rc == PGFAN_OK ? 0 : 1;
}

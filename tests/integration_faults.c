/*
 * Faults against a real server: a failing callback reconciled or dropped, a
 * terminated backend, a constraint violation seen mid-stream, a source that
 * fails mid-stream, slow receivers paused out of the gating set, aborts and
 * early finishes.  Every scenario runs ROUNDS times so a flaky one shows.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pgfan.h>

#include "pgtest.h"
#include "status_check.h"

Suite *faults_suite(void);

/* Rounds of each scenario; PGFAN_FAULT_ROUNDS may lower it (make distcheck
 * re-runs the suite only to prove the tarball builds and passes). */
static int rounds(void)
{
    const char *e = getenv("PGFAN_FAULT_ROUNDS");
    int n = e ? atoi(e) : 20;
    return n > 0 ? n : 20;
}
#define ROUNDS      rounds()
#define SOURCE      "fault_source"
#define SOURCE_ROWS 200000
#define SUBSET_SQL  "COPY (SELECT * FROM " SOURCE " WHERE id <= 40000) TO STDOUT"

/* One shared source table, built by the first test that needs it. */
static void shared_source(PGconn *c)
{
    char *n = pgt_value(c, "SELECT count(*) FROM pg_class WHERE relname = '%s'", SOURCE);
    if (strcmp(n, "0") == 0)
        pgt_mixed_table(c, SOURCE, SOURCE_ROWS);
    free(n);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void assert_same_bytes(const pgt_buffer *got, const pgt_buffer *want)
{
    ck_assert_uint_eq(got->len, want->len);
    ck_assert_int_eq(memcmp(got->data, want->data, want->len), 0);
}

/* A call receiver that fails once, at chunk `fail_at`, and sleeps
 * `first_sleep_ms` in its first call. */
typedef struct flaky {
    pgt_buffer got;
    long calls;
    long fail_at;
    int failed;
    long first_sleep_ms;
} flaky;

static int flaky_chunk(void *arg, const char *d, size_t n)
{
    flaky *f = arg;
    if (f->calls++ == 0 && f->first_sleep_ms)
        sleep_ms(f->first_sleep_ms);
    if (f->calls - 1 == f->fail_at && !f->failed) {
        f->failed = 1;
        return 7;
    }
    pgt_buffer_add(&f->got, d, n);
    return 0;
}

static pgfan_options options(pgfan_policy policy, unsigned hold_ms, unsigned stall_ms)
{
    pgfan_options o;
    pgfan_options_init(&o);
    o.policy = policy;
    o.fault_hold_ms = hold_ms;
    o.stall_timeout_ms = stall_ms;
    o.progress_ms = 10;
    return o;
}

static pgfan_manager *statement_manager(PGconn *source, const char *sql,
                                        const pgfan_options *o)
{
    pgfan_producer *p;
    pgfan_manager *m;
    ck_assert_status(pgfan_producer_new_statement(&p, source, sql), PGFAN_OK);
    ck_assert_status(pgfan_manager_new(&m, p, o), PGFAN_OK);
    return m;
}

static void add_statement_receivers(pgfan_manager *m, fanout *f)
{
    for (size_t i = 0; i < f->n; i++) {
        pgfan_receiver *r;
        ck_assert_status(pgfan_receiver_new_statement(&r, f->targets[i], f->copy_in[i]),
                         PGFAN_OK);
        ck_assert_status(pgfan_manager_add_receiver(m, r, NULL), PGFAN_OK);
    }
}

static void add_call_receiver(pgfan_manager *m, flaky *f)
{
    pgfan_receiver *r;
    ck_assert_status(pgfan_receiver_new_call(&r, flaky_chunk, f), PGFAN_OK);
    ck_assert_status(pgfan_manager_add_receiver(m, r, NULL), PGFAN_OK);
}

static pgfan_progress progress(pgfan_manager *m)
{
    pgfan_progress p;
    ck_assert_status(pgfan_manager_progress(m, &p), PGFAN_OK);
    return p;
}

static pgfan_receiver_state state_of(pgfan_manager *m, size_t i)
{
    pgfan_receiver_result rr;
    ck_assert_status(pgfan_manager_receiver(m, i, &rr), PGFAN_OK);
    return rr.state;
}

/* The whole source in id order, held back from id 100000 on until the test
 * releases advisory lock GATE_KEY, so "mid-stream" never depends on which
 * thread is faster.  OFFSET 0 keeps the planner from flattening the
 * subquery, which would test the gate below the sort, before any row. */
#define GATE_KEY 424242
#define GATED_SQL                                                                        \
    "COPY (SELECT s.* FROM (SELECT * FROM " SOURCE                                       \
    " ORDER BY id OFFSET 0) s WHERE CASE "                                               \
    "WHEN s.id < 100000 THEN true ELSE pg_advisory_xact_lock_shared(424242) IS NOT "     \
    "NULL "                                                                              \
    "END) TO STDOUT"

/* Holds the gated source at id 100000 (the test's own session lock). */
static void gate_close(PGconn *admin)
{
    pgt_exec(admin, "SELECT pg_advisory_lock(%d)", GATE_KEY);
}

static void gate_open(PGconn *admin)
{
    pgt_exec(admin, "SELECT pg_advisory_unlock(%d)", GATE_KEY);
}

/* Starts copying the gated source into `f`, held at id 100000. */
static pgfan_manager *start_gated(PGconn *admin, fanout *f, const pgfan_options *o)
{
    gate_close(admin);
    pgfan_manager *m = statement_manager(f->source, GATED_SQL, o);
    add_statement_receivers(m, f);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    return m;
}

/* Runs cycles until the producer has read `bytes`; no fault may happen. */
static void run_until_bytes(pgfan_manager *m, uint64_t bytes)
{
    pgfan_event ev;
    while (progress(m).producer_bytes < bytes) {
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
        ck_assert_msg(ev.type == PGFAN_EVENT_PROGRESS, "unexpected event %d: %s", ev.type,
                      ev.fault.message);
    }
    /* Callers hold the source back (GATED_SQL), so this is not a race. */
    ck_assert_int_eq(progress(m).producer_done, 0);
}

/* Runs cycles until the next fault and returns it. */
static pgfan_fault next_fault(pgfan_manager *m)
{
    pgfan_event ev;
    do {
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
        ck_assert_int_ne(ev.type, PGFAN_EVENT_END);
    } while (ev.type != PGFAN_EVENT_FAULT);
    return ev.fault;
}

static void run_to_end(pgfan_manager *m)
{
    pgfan_event ev;
    do
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
    while (ev.type != PGFAN_EVENT_END);
}

static void assert_table_count(PGconn *c, const char *table, const char *want)
{
    char *n = pgt_value(c, "SELECT count(*) FROM %s", table);
    ck_assert_msg(strcmp(n, want) == 0, "%s holds %s rows, expected %s", table, n, want);
    free(n);
}

static void assert_no_copy_running(void)
{
    PGconn *admin = pgt_connect();
    pgt_assert_no_copy_running(admin);
    PQfinish(admin);
}

/* ---- a call receiver fails at chunk k ---- */

/* The source subset into two call receivers; the second fails once. */
typedef struct callback_case {
    PGconn *c;
    pgt_buffer want;
    pgfan_manager *m;
    flaky ok, bad;
} callback_case;

static void callback_case_open(callback_case *k, pgfan_policy policy, unsigned hold_ms,
                               long fail_at)
{
    k->c = pgt_connect();
    shared_source(k->c);
    k->want = pgt_direct_copy(k->c, SUBSET_SQL);
    pgfan_options o = options(policy, hold_ms, 0);
    k->m = statement_manager(k->c, SUBSET_SQL, &o);
    k->ok = (flaky){.fail_at = -1};
    k->bad = (flaky){.fail_at = fail_at};
    add_call_receiver(k->m, &k->ok);
    add_call_receiver(k->m, &k->bad);
}

static void callback_case_close(callback_case *k)
{
    pgfan_manager_free(k->m);
    pgt_assert_usable(k->c);
    free(k->want.data), free(k->ok.got.data), free(k->bad.got.data);
    PQfinish(k->c);
}

START_TEST(failed_callback_reconciled_within_hold)
{
    callback_case k;
    callback_case_open(&k, PGFAN_POLICY_ABORT, 10000, 3 + _i % 5);
    pgfan_manager *m = k.m;
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_fault f = next_fault(m);
    ck_assert_int_eq(f.receiver, 1);
    ck_assert_status(f.code, PGFAN_ECALLBACK);
    ck_assert_int_eq(f.reconcilable, 1);
    ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_FAULTED);
    ck_assert_status(pgfan_manager_reconcile(m, 1), PGFAN_OK);
    ck_assert_status(pgfan_manager_reconcile(m, 1), PGFAN_ESTATE); /* only once */
    run_to_end(m);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
    ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_DONE);
    assert_same_bytes(&k.ok.got, &k.want); /* every row exactly once */
    assert_same_bytes(&k.bad.got, &k.want);
    callback_case_close(&k);
}
END_TEST

START_TEST(failed_callback_not_reconciled_is_dropped)
{
    callback_case k;
    callback_case_open(&k, PGFAN_POLICY_DROP, 50, 2 + _i % 5);
    pgfan_manager *m = k.m;
    ck_assert_status(pgfan_manager_run(m), PGFAN_OK);
    ck_assert_int_eq(state_of(m, 0), PGFAN_RECEIVER_DONE);
    ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_DROPPED);
    pgfan_fault f;
    ck_assert_status(pgfan_manager_fault(m, 0, &f), PGFAN_OK);
    ck_assert_int_eq(f.receiver, 1);
    ck_assert_status(f.code, PGFAN_ECALLBACK);
    assert_same_bytes(&k.ok.got, &k.want);
    callback_case_close(&k);
}
END_TEST

/* ---- a target backend is terminated mid-copy ---- */

START_TEST(terminated_backend)
{
    pgfan_policy policy = _i % 2 ? PGFAN_POLICY_DROP : PGFAN_POLICY_ABORT;
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 3, "text");
    pgfan_options o = options(policy, 0, 0);
    pgfan_manager *m = start_gated(admin, &f, &o);
    run_until_bytes(m, 2 << 20);
    pgt_exec(admin, "SELECT pg_terminate_backend(%d)", PQbackendPID(f.targets[1]));
    pgfan_fault fault = next_fault(m);
    gate_open(admin);
    ck_assert_int_eq(fault.receiver, 1);
    ck_assert_msg(fault.code == PGFAN_ECONN || strcmp(fault.sqlstate, "57P01") == 0,
                  "fault: %s %s", fault.sqlstate, fault.message);
    run_to_end(m);
    int rc = pgfan_manager_finish(m);
    ck_assert_int_eq(PQstatus(f.targets[1]), CONNECTION_BAD);
    assert_table_count(admin, f.tables[1], "0");
    if (policy == PGFAN_POLICY_DROP) {
        ck_assert_status(rc, PGFAN_OK);
        ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_DROPPED);
        char *want = pgt_checksum(admin, SOURCE);
        for (size_t i = 0; i < 3; i += 2) {
            char *got = pgt_checksum(f.targets[i], f.tables[i]);
            ck_assert_str_eq(got, want);
            free(got);
            pgt_assert_usable(f.targets[i]);
        }
        free(want);
    } else {
        ck_assert_status(rc, PGFAN_ERECEIVER);
        for (size_t i = 0; i < 3; i += 2) {
            assert_table_count(f.targets[i], f.tables[i], "0");
            pgt_assert_usable(f.targets[i]);
        }
    }
    pgt_assert_usable(f.source);
    pgfan_manager_free(m);
    assert_no_copy_running();
    fanout_close(&f);
    PQfinish(admin);
}
END_TEST

/*
 * pgfan_options.retries: the terminated target's fault is retryable and
 * held; the caller gives it a new connection and it is reloaded from the
 * journal while the source is still held back, so every target, the
 * reloaded one included, ends with the source's rows exactly once.  Misuse
 * of pgfan_manager_retry() is refused.
 */
START_TEST(a_terminated_target_is_retried_from_the_journal)
{
    pgfan_policy policy = _i % 2 ? PGFAN_POLICY_DROP : PGFAN_POLICY_ABORT;
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 3, "text");
    pgfan_options o = options(policy, 600000, 0);
    o.spill_limit = (uint64_t)1 << 30;
    o.retries = 1;
    pgfan_manager *m = start_gated(admin, &f, &o);
    run_until_bytes(m, 2 << 20);
    pgt_exec(admin, "SELECT pg_terminate_backend(%d)", PQbackendPID(f.targets[1]));
    pgfan_fault fault = next_fault(m);
    ck_assert_int_eq(fault.receiver, 1);
    ck_assert_msg(fault.retryable, "fault: %s %s", fault.sqlstate, fault.message);
    ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_FAULTED);
    PGconn *fresh = pgt_connect();
    ck_assert_status(pgfan_manager_retry(m, 1, NULL), PGFAN_EINVAL);
    ck_assert_status(pgfan_manager_retry(m, 1, f.source), PGFAN_EINVAL);
    ck_assert_status(pgfan_manager_retry(m, 1, f.targets[2]), PGFAN_EINVAL);
    ck_assert_status(pgfan_manager_retry(m, 0, fresh), PGFAN_ESTATE);
    ck_assert_status(pgfan_manager_retry(m, 7, fresh), PGFAN_EINVAL);
    /* The library let go of the old connection with the fault. */
    PQfinish(f.targets[1]);
    f.targets[1] = fresh;
    ck_assert_status(pgfan_manager_retry(m, 1, fresh), PGFAN_OK);
    ck_assert_status(pgfan_manager_retry(m, 1, fresh), PGFAN_ESTATE);
    gate_open(admin);
    run_to_end(m);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
    pgfan_receiver_result rr;
    ck_assert_status(pgfan_manager_receiver(m, 1, &rr), PGFAN_OK);
    ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
    ck_assert_uint_eq(rr.retries, 1);
    ck_assert_int_eq(rr.has_fault, 0); /* forgotten with the retry */
    ck_assert(rr.may_commit);
    assert_copies_equal(&f, SOURCE);
    pgfan_manager_free(m);
    assert_no_copy_running();
    fanout_close(&f);
    PQfinish(admin);
}
END_TEST

/* Copies the gated source into `f` (abort policy) until the first fault,
 * which must be target 2's server error, seen while the stream still runs
 * (the source is held at id 100000), not at CopyDone. */
static pgfan_fault server_fault_mid_stream(PGconn *admin, fanout *f, pgfan_manager **mp)
{
    pgfan_options o = options(PGFAN_POLICY_ABORT, 0, 0);
    pgfan_manager *m = start_gated(admin, f, &o);
    pgfan_fault fault = next_fault(m);
    pgfan_progress pr = progress(m);
    gate_open(admin);
    ck_assert_int_eq(fault.receiver, 1);
    ck_assert_status(fault.code, PGFAN_ESERVER);
    ck_assert_int_eq(pr.producer_done, 0);
    ck_assert_uint_lt(fault.bytes, 20u << 20);
    *mp = m;
    return fault;
}

/* ---- a row in the middle violates a CHECK constraint ---- */

START_TEST(constraint_violation_is_seen_mid_stream)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 2, "text");
    pgt_exec(f.targets[1], "ALTER TABLE %s ADD CONSTRAINT no_5000 CHECK (id <> 5000)",
             f.tables[1]);
    pgfan_manager *m;
    pgfan_fault fault = server_fault_mid_stream(admin, &f, &m);
    ck_assert_str_eq(fault.sqlstate, "23514");
    ck_assert_msg(strstr(fault.message, "no_5000"), "message: %s", fault.message);
    run_to_end(m);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_ERECEIVER);
    pgfan_manager_free(m);
    assert_targets_empty(&f);
    assert_no_copy_running();
    fanout_close(&f);
    PQfinish(admin);
}
END_TEST

/* ---- the source query fails mid-stream ---- */

START_TEST(source_fails_mid_stream)
{
    PGconn *c = pgt_connect();
    char shape[64];
    pgt_name(shape, sizeof shape, "shape");
    pgt_exec(c, "CREATE TABLE %s (g int8, q int8)", shape);
    fanout f;
    fanout_open(&f, shape, 2, "text");
    pgfan_transfer_result res;
    pgfan_receiver_result per[2];
    int rc = pgfan_transfer(
        f.source,
        "COPY (SELECT g, 1 / (500000 - g) FROM generate_series(1, 1000000) g) TO STDOUT",
        2, f.targets, f.copy_in_ptr, NULL, &res, per);
    ck_assert_status(rc, PGFAN_EPRODUCER);
    ck_assert_int_eq(res.error.receiver, PGFAN_PRODUCER_INDEX);
    ck_assert_str_eq(res.error.sqlstate, "22012");
    ck_assert_msg(strstr(res.error.message, "division by zero"), "%s", res.error.message);
    ck_assert_uint_eq(res.committed, 0);
    ck_assert_uint_gt(res.rows, 0); /* it failed mid-stream, not at once */
    for (size_t i = 0; i < 2; i++)
        ck_assert_int_eq(per[i].state, PGFAN_RECEIVER_FAILED);
    assert_targets_empty(&f);
    assert_no_copy_running();
    fanout_close(&f);
    pgt_exec(c, "DROP TABLE %s", shape);
    PQfinish(c);
}
END_TEST

/* ---- slow receivers ---- */

#define SLOT_BYTES 4096
#define CHUNKS     40

/* Yields CHUNKS chunks of exactly one slot of 64-byte rows; optionally
 * stops before chunk `gate_at` until released. */
typedef struct gated_rows {
    long next;
    long gate_at;
    atomic_int waiting;
    atomic_int released;
    char buf[SLOT_BYTES];
    pgt_buffer all;
} gated_rows;

static int gated_next(void *arg, const char **data, size_t *len)
{
    gated_rows *g = arg;
    if (g->next == CHUNKS)
        return 0;
    if (g->next == g->gate_at) {
        atomic_store(&g->waiting, 1);
        while (!atomic_load(&g->released))
            sleep_ms(1);
    }
    for (int row = 0; row < SLOT_BYTES / 64; row++) {
        char line[80];
        snprintf(line, sizeof line, "%08ld\t%-54s\n", g->next * 64 + row, "slow-test");
        memcpy(g->buf + row * 64, line, 64);
    }
    pgt_buffer_add(&g->all, g->buf, SLOT_BYTES);
    g->next++;
    *data = g->buf;
    *len = SLOT_BYTES;
    return 1;
}

static pgfan_manager *slow_manager(gated_rows *g, flaky *fast, flaky *slow,
                                   pgfan_policy pol)
{
    pgfan_producer *p;
    pgfan_manager *m;
    pgfan_options o = options(pol, 60000, 100);
    o.ring_slots = 8;
    o.chunk_bytes = SLOT_BYTES;
    ck_assert_status(pgfan_producer_new_iterator(&p, PGFAN_FORMAT_TEXT, gated_next, g),
                     PGFAN_OK);
    ck_assert_status(pgfan_manager_new(&m, p, &o), PGFAN_OK);
    add_call_receiver(m, fast);
    add_call_receiver(m, slow);
    return m;
}

START_TEST(stalled_callback_reconciled_while_data_is_in_the_ring)
{
    gated_rows g = {.gate_at = 9};
    flaky fast = {.fail_at = -1}, slow = {.fail_at = -1, .first_sleep_ms = 800};
    pgfan_manager *m = slow_manager(&g, &fast, &slow, PGFAN_POLICY_ABORT);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_fault f = next_fault(m);
    ck_assert_int_eq(f.receiver, 1);
    ck_assert_status(f.code, PGFAN_ESTALL);
    ck_assert_int_eq(f.reconcilable, 1);
    ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_PAUSED);
    while (!atomic_load(&g.waiting)) /* the source holds still: data stays in the ring */
        sleep_ms(1);
    ck_assert_status(pgfan_manager_reconcile(m, 1), PGFAN_OK);
    atomic_store(&g.released, 1);
    run_to_end(m);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
    assert_same_bytes(&fast.got, &g.all);
    assert_same_bytes(&slow.got, &g.all); /* nothing lost, nothing twice */
    pgfan_manager_free(m);
    free(g.all.data), free(fast.got.data), free(slow.got.data);
}
END_TEST

START_TEST(stalled_callback_reconciled_too_late_is_dropped)
{
    gated_rows g = {.gate_at = -1};
    flaky fast = {.fail_at = -1}, slow = {.fail_at = -1, .first_sleep_ms = 800};
    pgfan_manager *m = slow_manager(&g, &fast, &slow, PGFAN_POLICY_DROP);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_fault f = next_fault(m);
    ck_assert_int_eq(f.receiver, 1);
    ck_assert_status(f.code, PGFAN_ESTALL);
    pgfan_event ev;
    while (!progress(m).producer_done) /* the others go on without it */
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
    ck_assert_status(pgfan_manager_reconcile(m, 1), PGFAN_EGONE);
    ck_assert_status(pgfan_manager_drop(m, 1), PGFAN_OK);
    run_to_end(m);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
    ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_DROPPED);
    assert_same_bytes(&fast.got, &g.all);
    pgfan_manager_free(m);
    free(g.all.data), free(fast.got.data), free(slow.got.data);
}
END_TEST

/* Moves target i to server B: a stopped backend may hold cluster-wide locks
 * (WAL writing) that would stall every target of its cluster. */
static void isolate_target(fanout *f, size_t i)
{
    PQfinish(f->targets[i]);
    f->targets[i] = pgt_connect_b();
    pgt_mixed_table(f->targets[i], f->tables[i], 0);
}

START_TEST(stopped_target_backend_stalls_then_is_dropped)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 3, "text");
    isolate_target(&f, 1);
    /* 5 s: under valgrind on a loaded machine (two test runs at once) a
     * running target paused for over 1 s, and it must not be the one
     * stalled out. */
    pgfan_options o = options(PGFAN_POLICY_DROP, 60000, 5000);
    pgfan_manager *m = start_gated(admin, &f, &o);
    run_until_bytes(m, 1 << 20);
    int pid = PQbackendPID(f.targets[1]);
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
    pgfan_fault fault = next_fault(m);
    gate_open(admin);
    int stopped_ok = fault.receiver == 1 && fault.code == PGFAN_ESTALL;
    /* The others receive everything while target 1 is stopped. */
    pgfan_event ev;
    int drained = 0;
    while (stopped_ok && !drained && pgfan_manager_next(m, &ev) == PGFAN_OK &&
           ev.type == PGFAN_EVENT_PROGRESS) {
        pgfan_progress pr = progress(m);
        pgfan_receiver_result a, b;
        pgfan_manager_receiver(m, 0, &a);
        pgfan_manager_receiver(m, 2, &b);
        drained = pr.producer_done && a.bytes == pr.producer_bytes &&
                  b.bytes == pr.producer_bytes;
    }
    kill(pid, SIGCONT);
    ck_assert_msg(stopped_ok, "expected a stall of target 1, got %d on %d: %s",
                  fault.code, fault.receiver, fault.message);
    ck_assert_msg(drained, "others not drained: event %d, fault %d on %d: %s", ev.type,
                  ev.fault.code, ev.fault.receiver, ev.fault.message);
    ck_assert_status(pgfan_manager_reconcile(m, 1), PGFAN_EGONE);
    ck_assert_status(pgfan_manager_drop(m, 1), PGFAN_OK);
    run_to_end(m);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
    ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_DROPPED);
    pgfan_manager_free(m);
    assert_table_count(f.targets[1], f.tables[1], "0"); /* rolled back */
    pgt_assert_usable(f.targets[1]);
    char *want = pgt_checksum(admin, SOURCE);
    for (size_t i = 0; i < 3; i += 2) {
        char *got = pgt_checksum(f.targets[i], f.tables[i]);
        ck_assert_str_eq(got, want);
        free(got);
    }
    free(want);
    assert_no_copy_running();
    pgt_exec(f.targets[1], "DROP TABLE %s", f.tables[1]);
    fanout_close(&f);
    PQfinish(admin);
}
END_TEST

/* A target whose backend waits for a row lock another session holds reads
 * nothing more: it is stalled out although the ring never fills behind it,
 * and dropping it cancels the wait, so its connection comes back usable. */
START_TEST(lock_blocked_target_is_stalled_and_cancelled)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 3, "text");
    PGconn *blocker = pgt_connect();
    pgt_exec(f.targets[1], "ALTER TABLE %s ADD PRIMARY KEY (id)", f.tables[1]);
    pgt_exec(blocker, "BEGIN");
    pgt_exec(blocker, "INSERT INTO %s (id) VALUES (3000)", f.tables[1]);
    pgfan_options o = options(PGFAN_POLICY_DROP, 0, 5000); /* as above */
    o.realign_timeout_ms = 4000; /* the cancel follows CopyFail after 1 s */
    pgfan_manager *m = statement_manager(f.source, "COPY " SOURCE " TO STDOUT", &o);
    add_statement_receivers(m, &f);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_fault fault = next_fault(m);
    ck_assert_msg(fault.receiver == 1 && fault.code == PGFAN_ESTALL, "fault %d on %d: %s",
                  fault.code, fault.receiver, fault.message);
    run_to_end(m);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
    ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_DROPPED);
    pgfan_manager_free(m);
    /* Cancelled, not left waiting: usable before the blocker lets go. */
    pgt_assert_usable(f.targets[1]);
    pgt_exec(blocker, "ROLLBACK");
    assert_table_count(f.targets[1], f.tables[1], "0");
    char *want = pgt_checksum(admin, SOURCE);
    for (size_t i = 0; i < 3; i += 2) {
        char *got = pgt_checksum(f.targets[i], f.tables[i]);
        ck_assert_str_eq(got, want);
        free(got);
    }
    free(want);
    assert_no_copy_running();
    fanout_close(&f);
    PQfinish(blocker);
    PQfinish(admin);
}
END_TEST

/* Notifications queued on a target before the copy are the caller's: a
 * notice during the copy does not make the receiver take them. */
START_TEST(queued_notifications_stay_with_the_caller)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 2, "text");
    pgt_exec(f.targets[0],
             "CREATE FUNCTION %s_note() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
             "RAISE NOTICE 'row %%', NEW.id; RETURN NEW; END$$",
             f.tables[0]);
    pgt_exec(
        f.targets[0],
        "CREATE TRIGGER note BEFORE INSERT ON %s FOR EACH ROW WHEN (NEW.id %% 5000 = 0) "
        "EXECUTE FUNCTION %s_note()",
        f.tables[0], f.tables[0]);
    pgt_exec(f.targets[0],
             "SET client_min_messages = notice"); /* pgt_connect hides them */
    pgt_exec(f.targets[0], "LISTEN pgfan_test_channel");
    pgt_exec(admin, "NOTIFY pgfan_test_channel, 'before the copy'");
    pgt_exec(f.targets[0], "SELECT 1"); /* delivered before its ReadyForQuery */
    pgfan_options o = options(PGFAN_POLICY_ABORT, 0, 0);
    pgfan_manager *m = statement_manager(f.source, SUBSET_SQL, &o);
    add_statement_receivers(m, &f);
    ck_assert_status(pgfan_manager_run(m), PGFAN_OK);
    pgfan_receiver_result rr;
    pgfan_manager_receiver(m, 0, &rr);
    ck_assert_uint_eq(rr.notices, 8); /* ids 5000, 10000, ... 40000 */
    pgfan_manager_free(m);
    PGnotify *n = PQnotifies(f.targets[0]);
    ck_assert_ptr_nonnull(n);
    ck_assert_str_eq(n->relname, "pgfan_test_channel");
    ck_assert_str_eq(n->extra, "before the copy");
    PQfreemem(n);
    pgt_exec(f.targets[0], "UNLISTEN *");
    assert_table_count(f.targets[0], f.tables[0], "40000");
    pgt_exec(f.targets[0], "DROP TABLE %s; DROP FUNCTION %s_note()", f.tables[0],
             f.tables[0]);
    fanout_close(&f);
    PQfinish(admin);
}
END_TEST

/* A caller's own notice receiver, with its own argument. */
typedef struct heard {
    int count;
    char last[200];
    size_t longest;
} heard;

static void hear_notice(void *arg, const PGresult *res)
{
    heard *h = arg;
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    h->count++;
    snprintf(h->last, sizeof h->last, "%s", msg);
    if (strlen(msg) > h->longest)
        h->longest = strlen(msg);
}

/* A trigger that raises a NOTICE and then an error: both reach the client
 * in one read.  The error is seen while the stream still runs (the source
 * is held at id 100000), with its SQLSTATE, and nothing is committed; the
 * notice still reaches the connection's notice receiver, the caller's own
 * in odd rounds. */
START_TEST(error_right_behind_a_notice_is_seen_mid_stream)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 2, "text");
    pgt_exec(f.targets[1],
             "CREATE FUNCTION %s_trip() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
             "RAISE NOTICE 'about to refuse %%', NEW.id; "
             "RAISE EXCEPTION 'refused %%', NEW.id USING ERRCODE = 'P0001'; END$$",
             f.tables[1]);
    pgt_exec(f.targets[1], "SET client_min_messages = notice");
    pgt_exec(f.targets[1],
             "CREATE TRIGGER trip BEFORE INSERT ON %s FOR EACH ROW WHEN (NEW.id = 7000) "
             "EXECUTE FUNCTION %s_trip()",
             f.tables[1], f.tables[1]);
    heard h = {0};
    PQnoticeReceiver before = NULL;
    if (_i % 2)
        before = PQsetNoticeReceiver(f.targets[1], hear_notice, &h);
    pgfan_manager *m;
    pgfan_fault fault = server_fault_mid_stream(admin, &f, &m);
    ck_assert_str_eq(fault.sqlstate, "P0001");
    ck_assert_msg(strstr(fault.message, "refused 7000"), "%s", fault.message);
    if (_i % 2) {
        ck_assert_int_eq(h.count, 1);
        ck_assert_str_eq(h.last, "about to refuse 7000");
    }
    run_to_end(m);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_ERECEIVER);
    pgfan_receiver_result rr;
    ck_assert_status(pgfan_manager_receiver(m, 1, &rr), PGFAN_OK);
    ck_assert_uint_eq(rr.notices, 1);
    pgfan_manager_free(m);
    if (_i % 2)
        PQsetNoticeReceiver(f.targets[1], before, NULL);
    assert_targets_empty(&f);
    assert_no_copy_running();
    pgt_exec(f.targets[1], "DROP TABLE %s; DROP FUNCTION %s_trip()", f.tables[1],
             f.tables[1]);
    fanout_close(&f);
    PQfinish(admin);
}
END_TEST

/* ---- the source's own messages and its loss ---- */

/* Notices the source raises between its rows (one bigger than the COPY's
 * read buffer) reach the source connection's notice receiver, the
 * caller's own in odd rounds, in order, and every row still arrives. */
START_TEST(source_notices_reach_its_notice_receiver)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    char note[64], sql[512];
    pgt_name(note, sizeof note, "note");
    pgt_exec(admin,
             "CREATE FUNCTION %s(g bigint) RETURNS bigint LANGUAGE plpgsql AS $$BEGIN "
             "IF g %% 20000 = 0 THEN RAISE NOTICE 'at %%', g; END IF; "
             "IF g = 100001 THEN RAISE NOTICE '%%', repeat('n', 300000); END IF; "
             "RETURN g; END$$",
             note);
    fanout f;
    fanout_open(&f, SOURCE, 2, "text");
    pgt_exec(f.source, "SET client_min_messages = notice");
    heard h = {0};
    if (_i % 2)
        PQsetNoticeReceiver(f.source, hear_notice, &h);
    /* OFFSET 0: the notices come between rows, not all before the first. */
    snprintf(sql, sizeof sql,
             "COPY (SELECT s.* FROM (SELECT * FROM " SOURCE
             " ORDER BY id OFFSET 0) s WHERE %s(s.id) IS NOT NULL) TO STDOUT",
             note);
    pgfan_transfer_result res;
    int rc = pgfan_transfer(f.source, sql, 2, f.targets, f.copy_in_ptr, NULL, &res, NULL);
    ck_assert_msg(rc == PGFAN_OK, "%d: %s %s", rc, res.error.sqlstate, res.error.message);
    ck_assert_uint_eq(res.rows, SOURCE_ROWS);
    if (_i % 2) {
        ck_assert_int_eq(h.count, SOURCE_ROWS / 20000 + 1);
        ck_assert_str_eq(h.last, "at 200000");
        ck_assert_uint_eq(h.longest, 300000);
    }
    char *want = pgt_checksum(admin, SOURCE);
    for (size_t i = 0; i < 2; i++) {
        char *got = pgt_checksum(f.targets[i], f.tables[i]);
        ck_assert_str_eq(got, want);
        free(got);
    }
    free(want);
    pgt_assert_usable(f.source);
    fanout_close(&f);
    pgt_exec(admin, "DROP FUNCTION %s(bigint)", note);
    PQfinish(admin);
}
END_TEST

/* The source's backend is terminated while the source is held mid-stream:
 * the fault is the source's, with the server's word on it, and nothing
 * commits; the targets stay usable. */
START_TEST(source_terminated_mid_stream)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 2, "text");
    pgfan_options o = options(_i % 2 ? PGFAN_POLICY_DROP : PGFAN_POLICY_ABORT, 0, 0);
    pgfan_manager *m = start_gated(admin, &f, &o);
    run_until_bytes(m, 2 << 20);
    pgt_exec(admin, "SELECT pg_terminate_backend(%d)", PQbackendPID(f.source));
    pgfan_fault fault = next_fault(m);
    gate_open(admin);
    ck_assert_int_eq(fault.receiver, PGFAN_PRODUCER_INDEX);
    ck_assert_msg(fault.code == PGFAN_ECONN || strcmp(fault.sqlstate, "57P01") == 0,
                  "fault: %d %s %s", fault.code, fault.sqlstate, fault.message);
    ck_assert_msg(fault.message[0] != '\0', "the fault says nothing");
    run_to_end(m);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_EPRODUCER);
    pgfan_manager_free(m);
    ck_assert_int_eq(PQstatus(f.source), CONNECTION_BAD);
    PQfinish(f.source);
    f.source = pgt_connect(); /* the targets are what is checked */
    assert_targets_empty(&f);
    assert_no_copy_running();
    fanout_close(&f);
    PQfinish(admin);
}
END_TEST

/* ---- the caller ends the copy early ---- */

static void end_mid_copy(int use_abort)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 3, "text");
    pgfan_options o = options(PGFAN_POLICY_ABORT, 0, 0);
    pgfan_manager *m = start_gated(admin, &f, &o);
    run_until_bytes(m, 2 << 20);
    if (use_abort)
        ck_assert_status(pgfan_manager_abort(m, "pgfan test: caller abort"), PGFAN_OK);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_EABORTED);
    gate_open(admin); /* the cancelled source no longer waits for it */
    for (size_t i = 0; i < 3; i++)
        ck_assert_int_eq(state_of(m, i), PGFAN_RECEIVER_FAILED);
    pgfan_manager_free(m);
    assert_targets_empty(&f);
    assert_no_copy_running();
    fanout_close(&f);
    PQfinish(admin);
}

START_TEST(abort_from_the_caller_mid_copy)
{
    end_mid_copy(1);
}
END_TEST

START_TEST(breaking_out_early_and_finishing_fails_the_copy)
{
    end_mid_copy(0);
}
END_TEST

START_TEST(abort_returns_while_a_target_is_stopped)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 2, "text");
    isolate_target(&f, 1);
    PGconn *admin_b = pgt_connect_b();
    pgfan_options o = options(PGFAN_POLICY_ABORT, 0, 0);
    o.realign_timeout_ms = 300;
    pgfan_manager *m = start_gated(admin, &f, &o);
    run_until_bytes(m, 1 << 20);
    int pid = PQbackendPID(f.targets[1]);
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
    sleep_ms(100); /* let its socket fill up */
    /* Returns although the stopped server cannot answer CopyFail. */
    int rc = pgfan_manager_abort(m, "pgfan test: abort with a stopped target");
    kill(pid, SIGCONT);
    gate_open(admin);
    ck_assert_status(rc, PGFAN_OK);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_EABORTED);
    ck_assert_int_eq(state_of(m, 0), PGFAN_RECEIVER_FAILED);
    ck_assert_int_eq(state_of(m, 1), PGFAN_RECEIVER_FAILED);
    assert_table_count(f.targets[0], f.tables[0], "0");
    pgt_assert_usable(f.targets[0]);
    pgt_assert_usable(f.source);
    pgfan_manager_free(m);
    /* The stopped target's connection was given up, not waited on: closing
     * it makes its server roll the COPY back. */
    PQfinish(f.targets[1]);
    f.targets[1] = NULL;
    char *left;
    do {
        sleep_ms(10);
        left = pgt_value(admin_b, "SELECT count(*) FROM pg_stat_activity WHERE pid = %d",
                         pid);
    } while (strcmp(left, "0") != 0 && (free(left), 1));
    free(left);
    assert_table_count(admin_b, f.tables[1], "0");
    pgt_exec(admin_b, "DROP TABLE %s", f.tables[1]);
    f.targets[1] = pgt_connect();
    fanout_close(&f);
    PQfinish(admin_b);
    PQfinish(admin);
}
END_TEST

/* ---- every receiver faults ---- */

START_TEST(all_receivers_faulted_means_no_receivers)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 2, "text");
    for (size_t i = 0; i < 2; i++)
        pgt_exec(f.targets[i], "ALTER TABLE %s ADD CHECK (id <> %zu)", f.tables[i],
                 1000 + i * 2000);
    pgfan_options o = options(PGFAN_POLICY_DROP, 0, 0);
    pgfan_manager *m = statement_manager(f.source, SUBSET_SQL, &o);
    add_statement_receivers(m, &f);
    ck_assert_status(pgfan_manager_run(m), PGFAN_ENORECEIVERS);
    size_t n = pgfan_manager_fault_count(m);
    pgfan_fault last;
    ck_assert_status(pgfan_manager_fault(m, n - 1, &last), PGFAN_OK);
    ck_assert_status(last.code, PGFAN_ENORECEIVERS);
    ck_assert_int_eq(last.receiver, PGFAN_MANAGER_INDEX); /* not the source */
    ck_assert_ptr_nonnull(strstr(last.message, "no receivers"));
    pgfan_manager_free(m);
    assert_targets_empty(&f);
    fanout_close(&f);
    PQfinish(admin);
}
END_TEST

START_TEST(transfer_with_drop_policy_reports_each_target)
{
    PGconn *admin = pgt_connect();
    shared_source(admin);
    fanout f;
    fanout_open(&f, SOURCE, 3, "text");
    pgt_exec(f.targets[1], "ALTER TABLE %s ADD CHECK (id <> 20000)", f.tables[1]);
    pgfan_options o = options(PGFAN_POLICY_DROP, 5000, 0);
    pgfan_transfer_result res;
    pgfan_receiver_result per[3];
    int rc =
        pgfan_transfer(f.source, SUBSET_SQL, 3, f.targets, f.copy_in_ptr, &o, &res, per);
    ck_assert_status(rc, PGFAN_EPARTIAL);
    ck_assert_uint_eq(res.committed, 2);
    ck_assert_uint_eq(res.rows, 40000);
    ck_assert_int_eq(per[0].state, PGFAN_RECEIVER_DONE);
    /* The violation is dropped mid-stream, or fails the COPY at CopyDone when the
     * source ends first (a slow machine, valgrind): both commit nothing. */
    ck_assert(per[1].state == PGFAN_RECEIVER_DROPPED ||
              per[1].state == PGFAN_RECEIVER_FAILED);
    ck_assert_int_eq(per[2].state, PGFAN_RECEIVER_DONE);
    ck_assert_int_eq(per[1].has_fault, 1);
    ck_assert_str_eq(per[1].fault.sqlstate, "23514");
    assert_table_count(f.targets[0], f.tables[0], "40000");
    assert_table_count(f.targets[1], f.tables[1], "0");
    assert_table_count(f.targets[2], f.tables[2], "40000");
    for (size_t i = 0; i < 3; i++)
        pgt_assert_usable(f.targets[i]);
    fanout_close(&f);
    PQfinish(admin);
}
END_TEST

Suite *faults_suite(void)
{
    Suite *s = suite_create("faults");
    TCase *tc = tcase_create("faults");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, failed_callback_reconciled_within_hold, 0, ROUNDS);
    tcase_add_loop_test(tc, failed_callback_not_reconciled_is_dropped, 0, ROUNDS);
    tcase_add_loop_test(tc, terminated_backend, 0, ROUNDS);
    tcase_add_loop_test(tc, a_terminated_target_is_retried_from_the_journal, 0, 2);
    tcase_add_loop_test(tc, constraint_violation_is_seen_mid_stream, 0, ROUNDS);
    tcase_add_loop_test(tc, source_fails_mid_stream, 0, ROUNDS);
    tcase_add_loop_test(tc, source_notices_reach_its_notice_receiver, 0, 2);
    tcase_add_loop_test(tc, source_terminated_mid_stream, 0, 2);
    tcase_add_loop_test(tc, stalled_callback_reconciled_while_data_is_in_the_ring, 0,
                        ROUNDS);
    tcase_add_loop_test(tc, stalled_callback_reconciled_too_late_is_dropped, 0, ROUNDS);
    tcase_add_loop_test(tc, stopped_target_backend_stalls_then_is_dropped, 0, ROUNDS);
    tcase_add_loop_test(tc, lock_blocked_target_is_stalled_and_cancelled, 0,
                        ROUNDS / 4 + 1);
    tcase_add_loop_test(tc, queued_notifications_stay_with_the_caller, 0, 2);
    tcase_add_loop_test(tc, error_right_behind_a_notice_is_seen_mid_stream, 0,
                        ROUNDS / 4 + 2);
    tcase_add_loop_test(tc, abort_from_the_caller_mid_copy, 0, ROUNDS);
    tcase_add_loop_test(tc, abort_returns_while_a_target_is_stopped, 0, ROUNDS);
    tcase_add_loop_test(tc, breaking_out_early_and_finishing_fails_the_copy, 0, ROUNDS);
    tcase_add_loop_test(tc, all_receivers_faulted_means_no_receivers, 0, ROUNDS);
    tcase_add_loop_test(tc, transfer_with_drop_policy_reports_each_target, 0, ROUNDS);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * Soak: many transfers in a row in one process, each with a randomly chosen
 * fault at a random point.  After every soak_case, committed targets hold
 * exactly the source's checksum, failed ones hold nothing, no COPY runs on
 * any server; across rounds, the process's descriptors, threads and memory
 * do not grow.  PGFAN_SOAK_ROUNDS (default 200) and PGFAN_SOAK_SEED
 * (default: the time) choose the run; the seed is printed to replay it.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <malloc.h>

#include <pgfan.h>

#include "pgtest.h"
#include "status_check.h"

Suite *soak_suite(void);

/* Under sanitizers and valgrind malloc is replaced (ASan's quarantine keeps
 * freed memory on purpose): memory figures are printed, not judged. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MALLOC_REPLACED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MALLOC_REPLACED 1
#endif
#endif
#ifndef MALLOC_REPLACED
#define MALLOC_REPLACED 0
#endif

static int memory_is_measurable(void)
{
    const char *vg = getenv("PGFAN_VALGRIND");
    return !MALLOC_REPLACED && !(vg && *vg == '1');
}

#define SOAK_SOURCE "soak_source"
#define SOAK_ROWS   30000
#define NTARGETS    3
#define CALLBACK    NTARGETS /* index of the call receiver */

typedef enum fault_kind {
    TERMINATE_TARGET,
    STOP_TARGET,
    CONSTRAINT_VIOLATION,
    SOURCE_ERROR,
    CALLER_ABORT,
    CALLBACK_ERROR,
    NKINDS
} fault_kind;

static const char *const kind_names[NKINDS] = {
    "terminate a target backend", "SIGSTOP a target past the stall timeout",
    "constraint violation",       "source error",
    "abort from the caller",      "callback error, then reconcile"};

static unsigned env_uint(const char *name, unsigned fallback)
{
    const char *e = getenv(name);
    return e && *e ? (unsigned)strtoul(e, NULL, 10) : fallback;
}

/* ---- what the process holds ---- */

typedef struct usage {
    long fds, threads, rss_kb, heap_kb;
} usage;

static long status_field(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0)
            v = strtol(line + n, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

static usage usage_now(void)
{
    struct mallinfo2 mi = mallinfo2(); /* every arena: bytes handed out */
    usage u = {0, status_field("Threads:"), status_field("VmRSS:"),
               (long)((mi.uordblks + mi.hblkhd) / 1024)};
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d));)
        u.fds += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return u;
}

/* ---- one soak_case ---- */

typedef struct failing_sink {
    pgt_buffer got;
    long calls, fail_at;
} failing_sink;

static int failing_chunk(void *arg, const char *d, size_t n)
{
    failing_sink *s = arg;
    if (s->calls++ == s->fail_at)
        return 5;
    pgt_buffer_add(&s->got, d, n);
    return 0;
}

typedef struct soak_case {
    fault_kind kind;
    pgfan_policy policy;
    size_t victim;  /* the target the fault hits */
    uint64_t point; /* producer bytes before the fault is injected */
    long key;       /* the row id a constraint or the source trips on */
    fanout f;
    PGconn *victim_admin; /* admin connection to the victim's server */
    failing_sink sink;
    int stopped_pid;
    int injected, faults;
} soak_case;

static pgfan_manager *round_manager(soak_case *r)
{
    pgfan_options o;
    pgfan_options_init(&o);
    o.policy = r->policy;
    o.ring_slots = 8;
    o.chunk_bytes = 16384;
    o.progress_ms = 5;
    o.realign_timeout_ms = 5000;
    /* Stalls and callback errors wait for our decision; the rest settle the
     * policy at once. */
    o.fault_hold_ms = r->kind == CALLBACK_ERROR || r->kind == STOP_TARGET ? 60000 : 0;
    o.stall_timeout_ms = r->kind == STOP_TARGET ? 200 : 0;
    char sql[200];
    if (r->kind == SOURCE_ERROR)
        snprintf(sql, sizeof sql,
                 "COPY (SELECT s.* FROM " SOAK_SOURCE " s WHERE 1 / (s.id - %ld) <> 0) "
                 "TO STDOUT",
                 r->key);
    else
        snprintf(sql, sizeof sql, "COPY " SOAK_SOURCE " TO STDOUT");
    pgfan_producer *p;
    pgfan_manager *m;
    ck_assert_status(pgfan_producer_new_statement(&p, r->f.source, sql), PGFAN_OK);
    ck_assert_status(pgfan_manager_new(&m, p, &o), PGFAN_OK);
    for (size_t i = 0; i < NTARGETS; i++) {
        pgfan_receiver *rc;
        ck_assert_status(
            pgfan_receiver_new_statement(&rc, r->f.targets[i], r->f.copy_in[i]),
            PGFAN_OK);
        ck_assert_status(pgfan_manager_add_receiver(m, rc, NULL), PGFAN_OK);
    }
    pgfan_receiver *call;
    ck_assert_status(pgfan_receiver_new_call(&call, failing_chunk, &r->sink), PGFAN_OK);
    ck_assert_status(pgfan_manager_add_receiver(m, call, NULL), PGFAN_OK);
    return m;
}

static void inject(soak_case *r, pgfan_manager *m, PGconn *admin)
{
    r->injected = 1;
    switch (r->kind) {
    case TERMINATE_TARGET:
        pgt_exec(admin, "SELECT pg_terminate_backend(%d)",
                 PQbackendPID(r->f.targets[r->victim]));
        break;
    case STOP_TARGET:
        r->stopped_pid = PQbackendPID(r->f.targets[r->victim]);
        ck_assert_int_eq(kill(r->stopped_pid, SIGSTOP), 0);
        break;
    case CALLER_ABORT:
        ck_assert_status(pgfan_manager_abort(m, "soak: caller abort"), PGFAN_OK);
        break;
    default: /* planted before the start */
        break;
    }
}

static void resume_stopped(soak_case *r)
{
    if (r->stopped_pid) {
        kill(r->stopped_pid, SIGCONT);
        r->stopped_pid = 0;
    }
}

static void on_fault(soak_case *r, pgfan_manager *m, const pgfan_fault *f)
{
    r->faults++;
    if (r->kind == CALLBACK_ERROR && f->receiver == CALLBACK && f->reconcilable)
        ck_assert_status(pgfan_manager_reconcile(m, CALLBACK), PGFAN_OK);
    if (r->kind == STOP_TARGET && f->receiver == (int)r->victim &&
        f->code == PGFAN_ESTALL) {
        resume_stopped(r);
        ck_assert_status(pgfan_manager_drop(m, r->victim), PGFAN_OK);
    }
}

/* Runs the copy, injecting the fault at its point; returns finish()'s code. */
static int run_round(soak_case *r, pgfan_manager *m, PGconn *admin)
{
    pgfan_event ev;
    struct timespec stopped_at = {0, 0};
    if (pgfan_manager_start(m) != PGFAN_OK)
        return pgfan_manager_finish(m);
    for (;;) {
        if (pgfan_manager_next(m, &ev) != PGFAN_OK)
            break;
        pgfan_progress pr;
        ck_assert_status(pgfan_manager_progress(m, &pr), PGFAN_OK);
        if (!r->injected && pr.producer_bytes >= r->point) {
            inject(r, m, admin);
            clock_gettime(CLOCK_MONOTONIC, &stopped_at);
            if (r->kind == CALLER_ABORT)
                break;
        }
        if (ev.type == PGFAN_EVENT_FAULT)
            on_fault(r, m, &ev.fault);
        if (ev.type == PGFAN_EVENT_END)
            break;
        /* A target stopped after it had all its data never stalls the
         * ring; it only delays CopyDone.  Let it go after a second. */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (r->stopped_pid && now.tv_sec - stopped_at.tv_sec >= 2)
            resume_stopped(r);
    }
    /* finish() waits for every target's answer to CopyDone, which a
     * stopped backend never gives: let it go first, whenever END came. */
    resume_stopped(r);
    return pgfan_manager_finish(m);
}

static void check_outcome(soak_case *r, pgfan_manager *m, int rc, const char *want_sum,
                          const pgt_buffer *want_bytes)
{
    int committed = 0;
    for (size_t i = 0; i < NTARGETS; i++) {
        pgfan_receiver_result rr;
        ck_assert_status(pgfan_manager_receiver(m, i, &rr), PGFAN_OK);
        PGconn *c = r->f.targets[i];
        int lost = PQstatus(c) != CONNECTION_OK;
        if (lost) { /* terminated: look from the admin side */
            PQfinish(c);
            c = r->f.targets[i] = i == r->victim && r->victim_admin != NULL
                                      ? pgt_connect_b()
                                      : pgt_connect();
        }
        pgt_assert_usable(c);
        if (rr.state == PGFAN_RECEIVER_DONE) {
            char *got = pgt_checksum(c, r->f.tables[i]);
            ck_assert_msg(strcmp(got, want_sum) == 0,
                          "%s: target %zu committed %s, source %s", kind_names[r->kind],
                          i, got, want_sum);
            free(got);
            committed++;
        } else {
            char *n = pgt_value(c, "SELECT count(*) FROM %s", r->f.tables[i]);
            ck_assert_msg(strcmp(n, "0") == 0, "%s: failed target %zu holds %s rows",
                          kind_names[r->kind], i, n);
            free(n);
        }
    }
    pgfan_receiver_result cb;
    ck_assert_status(pgfan_manager_receiver(m, CALLBACK, &cb), PGFAN_OK);
    if (cb.state == PGFAN_RECEIVER_DONE) {
        ck_assert_uint_eq(r->sink.got.len, want_bytes->len);
        ck_assert_int_eq(memcmp(r->sink.got.data, want_bytes->data, want_bytes->len), 0);
    }
    pgt_assert_usable(r->f.source);
    switch (r->kind) {
    case SOURCE_ERROR:
        ck_assert_status(rc, PGFAN_EPRODUCER);
        ck_assert_int_eq(committed, 0);
        break;
    case CONSTRAINT_VIOLATION: {
        pgfan_receiver_result v;
        pgfan_manager_receiver(m, r->victim, &v);
        ck_assert_int_ne(v.state, PGFAN_RECEIVER_DONE);
        break;
    }
    case CALLER_ABORT:
        ck_assert_status(rc, PGFAN_EABORTED);
        ck_assert_int_eq(committed, 0);
        break;
    case CALLBACK_ERROR:
        ck_assert_status(rc, PGFAN_OK);
        ck_assert_int_eq(committed, NTARGETS);
        ck_assert_int_eq(cb.state, PGFAN_RECEIVER_DONE);
        break;
    default:
        break;
    }
    if (rc == PGFAN_OK)
        ck_assert_int_ge(committed, 1);
}

static void soak_round(PGconn *admin, unsigned *seed, const char *want_sum,
                       const pgt_buffer *want_bytes, uint64_t total_bytes, int counts[])
{
    soak_case r;
    memset(&r, 0, sizeof r);
    r.kind = (fault_kind)(rand_r(seed) % NKINDS);
    r.policy = rand_r(seed) % 2 ? PGFAN_POLICY_DROP : PGFAN_POLICY_ABORT;
    r.victim = (size_t)rand_r(seed) % NTARGETS;
    r.point = (uint64_t)rand_r(seed) % (total_bytes * 9 / 10);
    r.key = 1 + rand_r(seed) % SOAK_ROWS;
    r.sink.fail_at = r.kind == CALLBACK_ERROR ? rand_r(seed) % 150 : -1;
    if (r.kind == CALLBACK_ERROR)
        r.policy = PGFAN_POLICY_ABORT; /* reconciled within the hold */
    counts[r.kind]++;

    fanout_open(&r.f, SOAK_SOURCE, NTARGETS, "text");
    if (r.kind == STOP_TARGET) { /* its own cluster: see integration_faults.c */
        PQfinish(r.f.targets[r.victim]);
        r.f.targets[r.victim] = pgt_connect_b();
        pgt_mixed_table(r.f.targets[r.victim], r.f.tables[r.victim], 0);
        r.victim_admin = pgt_connect_b();
    }
    if (r.kind == CONSTRAINT_VIOLATION)
        pgt_exec(r.f.targets[r.victim], "ALTER TABLE %s ADD CHECK (id <> %ld)",
                 r.f.tables[r.victim], r.key);

    pgfan_manager *m = round_manager(&r);
    int rc = run_round(&r, m, admin);
    check_outcome(&r, m, rc, want_sum, want_bytes);
    pgfan_manager_free(m);

    pgt_assert_no_copy_running(admin);
    if (r.victim_admin) {
        pgt_assert_no_copy_running(r.victim_admin);
        pgt_exec(r.f.targets[r.victim], "DROP TABLE %s", r.f.tables[r.victim]);
        PQfinish(r.f.targets[r.victim]);
        r.f.targets[r.victim] = pgt_connect();
        PQfinish(r.victim_admin);
    }
    fanout_close(&r.f);
    free(r.sink.got.data);
}

START_TEST(random_faults_in_a_row)
{
    unsigned rounds = env_uint("PGFAN_SOAK_ROUNDS", 200);
    unsigned seed = env_uint("PGFAN_SOAK_SEED", (unsigned)time(NULL));
    printf("soak: %u rounds, PGFAN_SOAK_SEED=%u\n", rounds, seed);
    fflush(stdout);
    PGconn *admin = pgt_connect();
    char *exists = pgt_value(admin, "SELECT count(*) FROM pg_class WHERE relname = '%s'",
                             SOAK_SOURCE);
    if (strcmp(exists, "0") == 0)
        pgt_mixed_table(admin, SOAK_SOURCE, SOAK_ROWS);
    free(exists);
    char *want_sum = pgt_checksum(admin, SOAK_SOURCE);
    pgt_buffer want_bytes = pgt_direct_copy(admin, "COPY " SOAK_SOURCE " TO STDOUT");
    int counts[NKINDS] = {0};
    usage base = {0, 0, 0, 0};
    unsigned warm = rounds > 20 ? 10 : rounds / 2;
    for (unsigned i = 0; i < rounds; i++) {
        if (i == warm)
            base = usage_now();
        soak_round(admin, &seed, want_sum, &want_bytes, want_bytes.len, counts);
    }
    usage end = usage_now();
    for (int k = 0; k < NKINDS; k++)
        printf("soak: %3d x %s\n", counts[k], kind_names[k]);
    printf("soak: after round %u / at the end: %ld / %ld descriptors, %ld / %ld threads, "
           "%ld / %ld kB heap in use, %ld / %ld kB resident\n",
           warm, base.fds, end.fds, base.threads, end.threads, base.heap_kb, end.heap_kb,
           base.rss_kb, end.rss_kb);
    ck_assert_int_le(end.fds, base.fds);
    ck_assert_int_le(end.threads, base.threads);
    /* Memory handed out by malloc must not grow (a ring or a connection
     * leaked per round would); resident size also counts the allocator's
     * per-thread arenas, so it gets a loose bound. */
    if (memory_is_measurable()) {
        ck_assert_int_le(end.heap_kb, base.heap_kb + 512);
        ck_assert_int_le(end.rss_kb, base.rss_kb + 32768);
    }
    free(want_sum);
    free(want_bytes.data);
    PQfinish(admin);
}
END_TEST

Suite *soak_suite(void)
{
    Suite *s = suite_create("soak");
    TCase *tc = tcase_create("random faults");
    tcase_set_timeout(tc, 3600);
    tcase_add_test(tc, random_faults_in_a_row);
    suite_add_tcase(s, tc);
    return s;
}

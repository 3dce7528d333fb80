/* The public API without a server: argument checks, codes, versions, and
 * whole copies from an iterator producer into call receivers. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pgfan.h>

#include "status_check.h"
#include "suites.h"

START_TEST(version_macros_match_the_library)
{
    ck_assert_uint_eq(pgfan_version(), PGFAN_VERSION_HEX);
    ck_assert_str_eq(pgfan_version_string(), PGFAN_VERSION_STRING);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", PGFAN_VERSION_MAJOR, PGFAN_VERSION_MINOR,
             PGFAN_VERSION_PATCH);
    ck_assert_str_eq(pgfan_version_string(), want);
}
END_TEST

START_TEST(every_status_code_has_a_description)
{
    for (int code = 0; code >= PGFAN_STATUS_LAST; code--) {
        ck_assert_str_ne(pgfan_strerror(code), "unknown error");
        ck_assert_str_ne(pgfan_status_name(code), "PGFAN_UNKNOWN");
    }
    ck_assert_str_eq(pgfan_strerror(-1000), "unknown error");
    ck_assert_str_eq(pgfan_strerror(PGFAN_STATUS_LAST - 1), "unknown error");
    ck_assert_str_eq(pgfan_status_name(PGFAN_EGONE), "PGFAN_EGONE");
    ck_assert_str_eq(pgfan_status_name(PGFAN_OK), "PGFAN_OK");
    ck_assert_str_eq(pgfan_status_name(1), "PGFAN_UNKNOWN");
    ck_assert_str_eq(pgfan_format_name(PGFAN_FORMAT_CSV), "csv");
    ck_assert_str_eq(pgfan_receiver_state_name(PGFAN_RECEIVER_DROPPED), "dropped");
}
END_TEST

static int never_called(void *arg, const char **d, size_t *n)
{
    (void)arg, (void)d, (void)n;
    return 0;
}

START_TEST(null_arguments_are_refused)
{
    pgfan_producer *p;
    pgfan_receiver *r;
    pgfan_manager *m;
    ck_assert_status(pgfan_producer_new_statement(NULL, NULL, "COPY t TO STDOUT"),
                     PGFAN_EINVAL);
    ck_assert_status(pgfan_producer_new_statement(&p, NULL, "COPY t TO STDOUT"),
                     PGFAN_EINVAL);
    ck_assert_status(pgfan_producer_new_iterator(&p, PGFAN_FORMAT_TEXT, NULL, NULL),
                     PGFAN_EINVAL);
    ck_assert_status(pgfan_producer_new_iterator(&p, (pgfan_format)7, never_called, NULL),
                     PGFAN_EINVAL);
    ck_assert_status(pgfan_receiver_new_statement(&r, NULL, "COPY t FROM STDIN"),
                     PGFAN_EINVAL);
    ck_assert_status(pgfan_receiver_new_call(&r, NULL, NULL), PGFAN_EINVAL);
    ck_assert_status(pgfan_receiver_set_max_rate(NULL, 1), PGFAN_EINVAL);
    ck_assert_status(pgfan_manager_new(&m, NULL, NULL), PGFAN_EINVAL);
    ck_assert_status(pgfan_manager_start(NULL), PGFAN_EINVAL);
    ck_assert_status(pgfan_manager_finish(NULL), PGFAN_EINVAL);
    ck_assert_status(pgfan_manager_abort(NULL, NULL), PGFAN_EINVAL);
    ck_assert_status(pgfan_manager_next(NULL, NULL), PGFAN_EINVAL);
    ck_assert_status(pgfan_transfer(NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL),
                     PGFAN_EINVAL);
    pgfan_manager_free(NULL);
    pgfan_producer_free(NULL);
    pgfan_receiver_free(NULL);
}
END_TEST

START_TEST(bad_options_are_refused_and_ownership_stays)
{
    pgfan_producer *p;
    pgfan_manager *m;
    pgfan_options o;
    ck_assert_status(
        pgfan_producer_new_iterator(&p, PGFAN_FORMAT_TEXT, never_called, NULL), PGFAN_OK);
    pgfan_options_init(&o);
    ck_assert_uint_eq(o.ring_slots, 64);
    ck_assert_uint_eq(o.chunk_bytes, 128 * 1024);
    ck_assert_int_eq(o.policy, PGFAN_POLICY_ABORT);
    o.ring_slots = 48;
    ck_assert_status(pgfan_manager_new(&m, p, &o), PGFAN_EINVAL);
    o.ring_slots = 8;
    o.complete_early = 1; /* only under drop */
    ck_assert_status(pgfan_manager_new(&m, p, &o), PGFAN_EINVAL);
    o.complete_early = 0;
    o.retries = 2; /* a reload replays the journal: it needs one */
    ck_assert_status(pgfan_manager_new(&m, p, &o), PGFAN_EINVAL);
    o.retries = 0;
    o.ring_slots = 8;
    o.chunk_bytes = 100;
    ck_assert_status(pgfan_manager_new(&m, p, &o), PGFAN_EINVAL);
    /* Failed calls leave the producer ours: a good call can still take it. */
    ck_assert_status(pgfan_manager_new(&m, p, NULL), PGFAN_OK);
    ck_assert_status(pgfan_manager_start(m), PGFAN_ENORECEIVERS);
    pgfan_manager_free(m);
}
END_TEST

/* ---- whole copies without a server ---- */

typedef struct feed {
    const char *data;
    size_t len, off, piece;
    long fail_after; /* return an error after this many chunks (-1 never) */
    int endless;     /* never end: for finishing early */
    long calls;
    atomic_int hold; /* the producer waits while set */
} feed;

static int feed_next(void *arg, const char **d, size_t *n)
{
    feed *f = arg;
    while (atomic_load(&f->hold))
        sched_yield();
    if (f->fail_after >= 0 && f->calls >= f->fail_after)
        return -5;
    f->calls++;
    if (f->endless) {
        *d = "1\tloop\n";
        *n = 7;
        return 1;
    }
    if (f->off >= f->len)
        return 0;
    *d = f->data + f->off;
    *n = f->len - f->off < f->piece ? f->len - f->off : f->piece;
    f->off += *n;
    return 1;
}

typedef struct collect {
    char *buf;
    size_t len, cap;
    size_t chunks;
    int partial_rows;  /* a chunk did not end at a row boundary */
    long fail_at;      /* fail on this chunk number (-1 never) */
    unsigned sleep_us; /* a slow receiver: sleeps this long per chunk */
} collect;

static int collect_chunk(void *arg, const char *d, size_t n)
{
    collect *c = arg;
    if (c->fail_at >= 0 && (long)c->chunks == c->fail_at)
        return 3;
    if (c->sleep_us)
        usleep(c->sleep_us);
    if (c->len + n > c->cap) {
        c->cap = (c->len + n) * 2;
        c->buf = realloc(c->buf, c->cap);
    }
    memcpy(c->buf + c->len, d, n);
    c->len += n;
    c->chunks++;
    if (n == 0 || d[n - 1] != '\n')
        c->partial_rows = 1;
    return 0;
}

/* Text rows of varying length, some longer than a 4 KiB slot. */
static char *make_rows(size_t nrows, size_t *len)
{
    size_t cap = nrows * 64 + 3 * 20000, n = 0;
    char *p = malloc(cap);
    for (size_t i = 0; i < nrows; i++) {
        size_t pad = i % 1000 == 7 ? 9000 : i % 50;
        n += (size_t)sprintf(p + n, "%zu\t", i);
        memset(p + n, 'a' + (int)(i % 26), pad);
        n += pad;
        p[n++] = '\n';
    }
    *len = n;
    return p;
}

/* Every receiver DONE with exactly `data`; frees what they collected. */
static void assert_all_got_everything(pgfan_manager *m, collect *c, size_t n,
                                      const char *data, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        pgfan_receiver_result rr;
        ck_assert_status(pgfan_manager_receiver(m, i, &rr), PGFAN_OK);
        ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
        ck_assert_uint_eq(c[i].len, len);
        ck_assert_int_eq(memcmp(c[i].buf, data, len), 0);
        free(c[i].buf);
    }
}

static pgfan_manager *make_paced_manager(feed *f, collect *c, size_t nrecv,
                                         pgfan_policy policy, uint64_t spill_limit,
                                         const uint64_t *rates)
{
    pgfan_producer *p;
    pgfan_manager *m;
    pgfan_options o;
    pgfan_options_init(&o);
    o.ring_slots = 8;
    o.chunk_bytes = 4096;
    o.policy = policy;
    o.progress_ms = 20;
    o.spill_limit = spill_limit;
    if (rates)
        o.stall_timeout_ms = 1000; /* far below the paced receiver's time */
    o.complete_early = policy == PGFAN_POLICY_DROP && rates;
    ck_assert_status(pgfan_producer_new_iterator(&p, PGFAN_FORMAT_TEXT, feed_next, f),
                     PGFAN_OK);
    ck_assert_status(pgfan_manager_new(&m, p, &o), PGFAN_OK);
    for (size_t i = 0; i < nrecv; i++) {
        pgfan_receiver *r;
        size_t idx;
        ck_assert_status(pgfan_receiver_new_call(&r, collect_chunk, &c[i]), PGFAN_OK);
        if (rates)
            ck_assert_status(pgfan_receiver_set_max_rate(r, rates[i]), PGFAN_OK);
        ck_assert_status(pgfan_manager_add_receiver(m, r, &idx), PGFAN_OK);
        ck_assert_uint_eq(idx, i);
    }
    return m;
}

static pgfan_manager *make_spilling_manager(feed *f, collect *c, size_t nrecv,
                                            pgfan_policy policy, uint64_t spill_limit)
{
    return make_paced_manager(f, c, nrecv, policy, spill_limit, NULL);
}

static pgfan_manager *make_manager(feed *f, collect *c, size_t nrecv, pgfan_policy policy)
{
    return make_spilling_manager(f, c, nrecv, policy, 0);
}

START_TEST(iterator_to_call_receivers_delivers_every_byte_in_whole_rows)
{
    size_t len;
    char *data = make_rows(20000, &len);
    feed f = {.data = data, .len = len, .piece = 1000 + 37, .fail_after = -1};
    collect c[3] = {{.fail_at = -1}, {.fail_at = -1}, {.fail_at = -1}};
    pgfan_manager *m = make_manager(&f, c, 3, PGFAN_POLICY_ABORT);
    ck_assert_status(pgfan_manager_run(m), PGFAN_OK);
    pgfan_progress pr;
    ck_assert_status(pgfan_manager_progress(m, &pr), PGFAN_OK);
    ck_assert_uint_eq(pr.producer_rows, 20000);
    ck_assert_uint_eq(pr.producer_bytes, len);
    ck_assert_int_eq(pr.producer_done, 1);
    for (size_t i = 0; i < 3; i++) {
        pgfan_receiver_result rr;
        ck_assert_status(pgfan_manager_receiver(m, i, &rr), PGFAN_OK);
        ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
        ck_assert_uint_eq(rr.rows, 20000);
        ck_assert_uint_eq(rr.bytes, len);
        ck_assert_int_eq(rr.has_fault, 0);
        ck_assert_uint_eq(c[i].len, len);
        ck_assert_int_eq(memcmp(c[i].buf, data, len), 0);
        ck_assert_int_eq(c[i].partial_rows, 0);
        ck_assert_uint_gt(c[i].chunks, 100);
        free(c[i].buf);
    }
    ck_assert_uint_eq(pgfan_manager_fault_count(m), 0);
    pgfan_manager_free(m);
    free(data);
}
END_TEST

START_TEST(receiver_callback_failure_aborts_the_copy)
{
    size_t len;
    char *data = make_rows(20000, &len);
    feed f = {.data = data, .len = len, .piece = 4096, .fail_after = -1};
    collect c[2] = {{.fail_at = -1}, {.fail_at = 5}};
    pgfan_manager *m = make_manager(&f, c, 2, PGFAN_POLICY_ABORT);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_event ev;
    int faults = 0;
    do {
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
        if (ev.type == PGFAN_EVENT_FAULT) {
            faults++;
            ck_assert_int_eq(ev.fault.receiver, 1);
            ck_assert_status(ev.fault.code, PGFAN_ECALLBACK);
        }
    } while (ev.type != PGFAN_EVENT_END);
    ck_assert_int_eq(faults, 1);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_ERECEIVER);
    for (size_t i = 0; i < 2; i++) {
        pgfan_receiver_result rr;
        pgfan_manager_receiver(m, i, &rr);
        ck_assert_int_eq(rr.state, PGFAN_RECEIVER_FAILED);
        free(c[i].buf);
    }
    pgfan_manager_free(m);
    free(data);
}
END_TEST

START_TEST(drop_policy_completes_the_others)
{
    size_t len;
    char *data = make_rows(5000, &len);
    feed f = {.data = data, .len = len, .piece = 512, .fail_after = -1};
    collect c[3] = {{.fail_at = -1}, {.fail_at = 2}, {.fail_at = -1}};
    pgfan_manager *m = make_manager(&f, c, 3, PGFAN_POLICY_DROP);
    ck_assert_status(pgfan_manager_run(m), PGFAN_OK);
    pgfan_receiver_result rr;
    pgfan_manager_receiver(m, 1, &rr);
    ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DROPPED);
    ck_assert_int_eq(rr.has_fault, 1);
    ck_assert_status(rr.fault.code, PGFAN_ECALLBACK);
    for (size_t i = 0; i < 3; i += 2) {
        pgfan_manager_receiver(m, i, &rr);
        ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
        ck_assert_uint_eq(c[i].len, len);
        ck_assert_int_eq(memcmp(c[i].buf, data, len), 0);
    }
    for (size_t i = 0; i < 3; i++)
        free(c[i].buf);
    pgfan_manager_free(m);
    free(data);
}
END_TEST

START_TEST(all_receivers_gone_means_no_receivers)
{
    size_t len;
    char *data = make_rows(5000, &len);
    feed f = {.data = data, .len = len, .piece = 512, .fail_after = -1};
    collect c[2] = {{.fail_at = 1}, {.fail_at = 3}};
    pgfan_manager *m = make_manager(&f, c, 2, PGFAN_POLICY_DROP);
    ck_assert_status(pgfan_manager_run(m), PGFAN_ENORECEIVERS);
    size_t n = pgfan_manager_fault_count(m);
    pgfan_fault last;
    ck_assert_status(pgfan_manager_fault(m, n - 1, &last), PGFAN_OK);
    ck_assert_status(last.code, PGFAN_ENORECEIVERS);
    ck_assert_ptr_nonnull(strstr(last.message, "no receivers"));
    for (size_t i = 0; i < 2; i++)
        free(c[i].buf);
    pgfan_manager_free(m);
    free(data);
}
END_TEST

START_TEST(iterator_failure_is_a_producer_fault)
{
    size_t len;
    char *data = make_rows(5000, &len);
    feed f = {.data = data, .len = len, .piece = 512, .fail_after = 10};
    collect c[1] = {{.fail_at = -1}};
    pgfan_manager *m = make_manager(&f, c, 1, PGFAN_POLICY_ABORT);
    ck_assert_status(pgfan_manager_run(m), PGFAN_EPRODUCER);
    pgfan_fault first;
    ck_assert_status(pgfan_manager_fault(m, 0, &first), PGFAN_OK);
    ck_assert_int_eq(first.receiver, PGFAN_PRODUCER_INDEX);
    ck_assert_status(first.code, PGFAN_ECALLBACK);
    pgfan_receiver_result rr;
    pgfan_manager_receiver(m, 0, &rr);
    ck_assert_int_eq(rr.state, PGFAN_RECEIVER_FAILED);
    free(c[0].buf);
    pgfan_manager_free(m);
    free(data);
}
END_TEST

START_TEST(finishing_before_the_end_is_a_failed_copy)
{
    feed f = {.endless = 1, .fail_after = -1};
    collect c[2] = {{.fail_at = -1}, {.fail_at = -1}};
    pgfan_manager *m = make_manager(&f, c, 2, PGFAN_POLICY_ABORT);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_event ev;
    for (int i = 0; i < 3; i++)
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_EABORTED);
    for (size_t i = 0; i < 2; i++) {
        pgfan_receiver_result rr;
        pgfan_manager_receiver(m, i, &rr);
        ck_assert_int_eq(rr.state, PGFAN_RECEIVER_FAILED);
        free(c[i].buf);
    }
    ck_assert_status(pgfan_manager_finish(m), PGFAN_EABORTED); /* idempotent */
    pgfan_manager_free(m);
}
END_TEST

START_TEST(malformed_binary_from_an_iterator_is_refused)
{
    const char junk[] = "this is not binary COPY data";
    feed f = {.data = junk, .len = sizeof junk, .piece = 8, .fail_after = -1};
    collect c = {.fail_at = -1};
    pgfan_producer *p;
    pgfan_manager *m;
    pgfan_receiver *r;
    ck_assert_status(pgfan_producer_new_iterator(&p, PGFAN_FORMAT_BINARY, feed_next, &f),
                     PGFAN_OK);
    ck_assert_status(pgfan_manager_new(&m, p, NULL), PGFAN_OK);
    ck_assert_status(pgfan_receiver_new_call(&r, collect_chunk, &c), PGFAN_OK);
    ck_assert_status(pgfan_manager_add_receiver(m, r, NULL), PGFAN_OK);
    ck_assert_status(pgfan_manager_run(m), PGFAN_EPRODUCER);
    pgfan_fault first;
    pgfan_manager_fault(m, 0, &first);
    ck_assert_status(first.code, PGFAN_EDATA);
    ck_assert_ptr_nonnull(strstr(first.message, "signature"));
    ck_assert_uint_eq(c.len, 0);
    free(c.buf);
    pgfan_manager_free(m);
}
END_TEST

START_TEST(abort_from_the_caller_thread)
{
    feed f = {.endless = 1, .fail_after = -1};
    collect c[3] = {{.fail_at = -1}, {.fail_at = -1}, {.fail_at = -1}};
    pgfan_manager *m = make_manager(&f, c, 3, PGFAN_POLICY_ABORT);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_event ev;
    ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
    ck_assert_status(pgfan_manager_abort(m, "test abort"), PGFAN_OK);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_EABORTED);
    ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_ESTATE);
    ck_assert_status(pgfan_manager_abort(m, NULL), PGFAN_ESTATE); /* nothing left */
    for (size_t i = 0; i < 3; i++)
        free(c[i].buf);
    pgfan_manager_free(m);
}
END_TEST

START_TEST(pause_and_resume_lose_nothing)
{
    size_t len;
    char *data = make_rows(20000, &len);
    feed f = {.data = data, .len = len, .piece = 4096, .fail_after = -1, .hold = 1};
    collect c[2] = {{.fail_at = -1}, {.fail_at = -1}};
    pgfan_manager *m = make_manager(&f, c, 2, PGFAN_POLICY_ABORT);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    /* The source holds still, so the paused receiver's data stays. */
    ck_assert_status(pgfan_manager_pause(m, 1), PGFAN_OK);
    ck_assert_status(pgfan_manager_pause(m, 1), PGFAN_ESTATE); /* already pausing */
    ck_assert_status(pgfan_manager_resume(m, 1), PGFAN_OK);    /* in time */
    ck_assert_status(pgfan_manager_resume(m, 1), PGFAN_ESTATE);
    ck_assert_status(pgfan_manager_reconcile(m, 0), PGFAN_ESTATE); /* no fault */
    ck_assert_status(pgfan_manager_pause(m, 7), PGFAN_EINVAL);
    atomic_store(&f.hold, 0);
    pgfan_event ev;
    do
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
    while (ev.type != PGFAN_EVENT_END);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
    for (size_t i = 0; i < 2; i++) {
        ck_assert_uint_eq(c[i].len, len);
        ck_assert_int_eq(memcmp(c[i].buf, data, len), 0);
        free(c[i].buf);
    }
    pgfan_manager_free(m);
    free(data);
}
END_TEST

/* A receiver that sleeps on every chunk holds the producer back for longer
 * than the spill delay each time the 8-slot ring fills: it is sent to the
 * journal, catches up, re-joins, and is sent again, again and again.  Every
 * receiver still gets every byte exactly once, in order. */
START_TEST(a_slow_receiver_spills_and_rejoins_losing_nothing)
{
    size_t len;
    char *data = make_rows(6000, &len);
    feed f = {.data = data, .len = len, .piece = 3001, .fail_after = -1};
    collect c[3] = {{.fail_at = -1},
                    {.fail_at = -1, .sleep_us = _i ? 0 : 5000},
                    {.fail_at = -1, .sleep_us = 3000}};
    pgfan_manager *m = make_spilling_manager(&f, c, 3, PGFAN_POLICY_ABORT, 64 << 20);
    ck_assert_status(pgfan_manager_run(m), PGFAN_OK);
    pgfan_progress pr;
    ck_assert_status(pgfan_manager_progress(m, &pr), PGFAN_OK);
    ck_assert_uint_gt(pr.spill_peak_bytes, 0);
    ck_assert_uint_eq(pr.spilled, 0);
    for (size_t i = 0; i < 3; i++) {
        pgfan_receiver_result rr;
        ck_assert_status(pgfan_manager_receiver(m, i, &rr), PGFAN_OK);
        ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
        ck_assert_uint_eq(rr.rows, 6000);
        ck_assert_uint_eq(c[i].len, len);
        ck_assert_int_eq(memcmp(c[i].buf, data, len), 0);
        ck_assert_int_eq(c[i].partial_rows, 0);
        free(c[i].buf);
    }
    pgfan_manager_free(m);
    free(data);
}
END_TEST

/* A journal too small for the lag fills up; the writer then waits for the
 * receiver left behind (backpressure again), which re-joins the ring where
 * the journal ends: nothing lost, the disk budget kept. */
START_TEST(a_full_journal_turns_back_into_backpressure)
{
    size_t len;
    char *data = make_rows(6000, &len);
    feed f = {.data = data, .len = len, .piece = 4096, .fail_after = -1};
    collect c[2] = {{.fail_at = -1}, {.fail_at = -1, .sleep_us = 3000}};
    uint64_t limit = 60000; /* a ring's worth and a few slots more */
    pgfan_manager *m = make_spilling_manager(&f, c, 2, PGFAN_POLICY_ABORT, limit);
    ck_assert_status(pgfan_manager_run(m), PGFAN_OK);
    pgfan_progress pr;
    ck_assert_status(pgfan_manager_progress(m, &pr), PGFAN_OK);
    ck_assert_uint_gt(pr.spill_peak_bytes, 0);
    ck_assert_uint_le(pr.spill_peak_bytes, limit);
    assert_all_got_everything(m, c, 2, data, len);
    pgfan_manager_free(m);
    free(data);
}
END_TEST

/* One receiver limited to a third of the stream per second, the other
 * free, with a journal and a stall timeout far below the paced one's time:
 * the paced one takes at least its rate's time (a lower bound, which a busy
 * machine cannot break), is never taken for stalled, and does not hold the
 * other back; both get every byte. */
START_TEST(a_rate_limited_receiver_keeps_its_rate_and_slows_no_other)
{
    size_t len;
    char *data = make_rows(6000, &len);
    feed f = {.data = data, .len = len, .piece = 4096, .fail_after = -1};
    collect c[2] = {{.fail_at = -1}, {.fail_at = -1}};
    uint64_t rates[2] = {0, len / 3};
    pgfan_manager *m = make_paced_manager(&f, c, 2, PGFAN_POLICY_ABORT, 64 << 20, rates);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_receiver_result fast, paced;
    pgfan_event ev;
    uint64_t paced_when_fast_done = UINT64_MAX;
    do {
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
        ck_assert_int_ne(ev.type, PGFAN_EVENT_FAULT);
        pgfan_manager_receiver(m, 0, &fast);
        pgfan_manager_receiver(m, 1, &paced);
        if (fast.bytes == len && paced_when_fast_done == UINT64_MAX)
            paced_when_fast_done = paced.bytes;
    } while (ev.type != PGFAN_EVENT_END);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    ck_assert_double_ge(took, 3.0 * 0.8);
    ck_assert_uint_lt(paced_when_fast_done, len / 2);
    assert_all_got_everything(m, c, 2, data, len);
    ck_assert_uint_eq(pgfan_manager_fault_count(m), 0);
    pgfan_manager_free(m);
    free(data);
}
END_TEST

/* complete_early under drop: the free receiver ends its COPY and is
 * reported while the paced one still trails; the caller may commit it at
 * once, and (loop 1) an abort afterwards rolls back only the one that had
 * not ended. */
START_TEST(a_receiver_with_everything_completes_early_under_drop)
{
    size_t len;
    char *data = make_rows(6000, &len);
    feed f = {.data = data, .len = len, .piece = 4096, .fail_after = -1};
    collect c[2] = {{.fail_at = -1}, {.fail_at = -1}};
    uint64_t rates[2] = {0, len / 3};
    pgfan_manager *m = make_paced_manager(&f, c, 2, PGFAN_POLICY_DROP, 64 << 20, rates);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_event ev;
    pgfan_receiver_result rr;
    do
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
    while (ev.type == PGFAN_EVENT_PROGRESS);
    ck_assert_int_eq(ev.type, PGFAN_EVENT_RECEIVER_DONE);
    ck_assert_uint_eq(ev.receiver, 0);
    ck_assert_status(pgfan_manager_receiver(m, 0, &rr), PGFAN_OK);
    ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
    ck_assert_int_eq(rr.may_commit, 1);
    ck_assert_uint_eq(rr.rows, 6000);
    ck_assert_uint_eq(c[0].len, len);
    ck_assert_status(pgfan_manager_receiver(m, 1, &rr), PGFAN_OK);
    ck_assert_uint_lt(rr.bytes, len / 2); /* a third per second: seconds behind */
    ck_assert_int_eq(rr.may_commit, 0);
    if (_i == 1) {
        ck_assert_status(pgfan_manager_abort(m, "test"), PGFAN_OK);
        ck_assert_status(pgfan_manager_receiver(m, 1, &rr), PGFAN_OK);
        ck_assert_int_ne(rr.state, PGFAN_RECEIVER_DONE);
        ck_assert_int_eq(rr.may_commit, 0);
    } else {
        do
            ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
        while (ev.type == PGFAN_EVENT_PROGRESS);
        ck_assert_int_eq(ev.type, PGFAN_EVENT_RECEIVER_DONE);
        ck_assert_uint_eq(ev.receiver, 1);
        do
            ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
        while (ev.type == PGFAN_EVENT_PROGRESS);
        ck_assert_int_eq(ev.type, PGFAN_EVENT_END);
        ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
        ck_assert_uint_eq(c[1].len, len);
        ck_assert_int_eq(memcmp(c[1].buf, data, len), 0);
    }
    ck_assert_status(pgfan_manager_receiver(m, 0, &rr), PGFAN_OK);
    ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
    ck_assert_int_eq(rr.may_commit, 1);
    ck_assert_int_eq(memcmp(c[0].buf, data, len), 0);
    for (size_t i = 0; i < 2; i++)
        free(c[i].buf);
    pgfan_manager_free(m);
    free(data);
}
END_TEST

START_TEST(paused_until_its_data_left_is_dropped_at_finish)
{
    size_t len;
    char *data = make_rows(20000, &len);
    feed f = {.data = data, .len = len, .piece = 4096, .fail_after = -1};
    collect c[2] = {{.fail_at = -1}, {.fail_at = -1}};
    pgfan_manager *m = make_manager(&f, c, 2, PGFAN_POLICY_DROP);
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    ck_assert_status(pgfan_manager_pause(m, 1), PGFAN_OK);
    pgfan_progress pr;
    pgfan_event ev;
    do {
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
        pgfan_manager_progress(m, &pr);
    } while (ev.type != PGFAN_EVENT_END); /* the paused one does not hold END back */
    ck_assert_int_eq(pr.producer_done, 1);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK); /* the other one completes */
    pgfan_receiver_result rr;
    pgfan_manager_receiver(m, 1, &rr);
    ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DROPPED);
    ck_assert_status(rr.fault.code, PGFAN_EGONE);
    ck_assert_uint_eq(c[0].len, len);
    for (size_t i = 0; i < 2; i++)
        free(c[i].buf);
    pgfan_manager_free(m);
    free(data);
}
END_TEST

Suite *api_suite(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("basics");
    tcase_set_timeout(tc, 120); /* threads under ThreadSanitizer on a busy machine */
    tcase_add_test(tc, version_macros_match_the_library);
    tcase_add_test(tc, every_status_code_has_a_description);
    tcase_add_test(tc, null_arguments_are_refused);
    tcase_add_test(tc, bad_options_are_refused_and_ownership_stays);
    suite_add_tcase(s, tc);
    TCase *copies = tcase_create("copies without a server");
    tcase_set_timeout(copies, 120);
    tcase_add_test(copies, iterator_to_call_receivers_delivers_every_byte_in_whole_rows);
    tcase_add_test(copies, receiver_callback_failure_aborts_the_copy);
    tcase_add_test(copies, drop_policy_completes_the_others);
    tcase_add_test(copies, all_receivers_gone_means_no_receivers);
    tcase_add_test(copies, iterator_failure_is_a_producer_fault);
    tcase_add_test(copies, finishing_before_the_end_is_a_failed_copy);
    tcase_add_test(copies, malformed_binary_from_an_iterator_is_refused);
    tcase_add_test(copies, abort_from_the_caller_thread);
    tcase_add_test(copies, pause_and_resume_lose_nothing);
    tcase_add_test(copies, paused_until_its_data_left_is_dropped_at_finish);
    tcase_add_loop_test(copies, a_slow_receiver_spills_and_rejoins_losing_nothing, 0, 2);
    tcase_add_test(copies, a_full_journal_turns_back_into_backpressure);
    tcase_add_test(copies, a_rate_limited_receiver_keeps_its_rate_and_slows_no_other);
    tcase_add_loop_test(copies, a_receiver_with_everything_completes_early_under_drop, 0,
                        2);
    suite_add_tcase(s, copies);
    return s;
}

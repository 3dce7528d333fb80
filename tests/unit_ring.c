/* The broadcast ring: semantics, wrap-around, gating, and threaded stress
 * tests in which every reader checks every payload, one of them replaying a
 * kept spill journal. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"
#include "suites.h"

#define NEAR_WRAP (UINT64_MAX - 5)

static void put(fan_ring *r, uint64_t value)
{
    ck_assert_int_eq(fan_ring_wait_space(r, 0), 1);
    fan_slot *s = fan_ring_claim(r);
    memcpy(s->data, &value, sizeof value);
    s->len = sizeof value;
    s->rows = 1;
    fan_ring_publish(r);
}

/* Puts the values first .. end - 1, one slot each. */
static void put_range(fan_ring *r, uint64_t first, uint64_t end)
{
    for (uint64_t v = first; v < end; v++)
        put(r, v);
}

static uint64_t get(fan_ring *r, uint64_t seq)
{
    uint64_t v;
    memcpy(&v, fan_ring_slot(r, seq)->data, sizeof v);
    return v;
}

START_TEST(publish_then_read_in_order)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 4, 64, 1, 0), 0);
    ck_assert_uint_eq(fan_ring_head(&r), 0);
    put(&r, 11);
    put(&r, 22);
    ck_assert_uint_eq(fan_ring_head(&r), 2);
    ck_assert_uint_eq(get(&r, 0), 11);
    ck_assert_uint_eq(get(&r, 1), 22);
    ck_assert_int_eq(fan_ring_wait_data(&r, 0, 0, NULL, 0, 0), 1);
    fan_ring_release(&r, 0, 2);
    ck_assert_int_eq(fan_ring_wait_data(&r, 0, 2, NULL, 0, 0), 0); /* nothing new */
    fan_ring_close(&r, FAN_RING_ENDED);
    ck_assert_int_eq(fan_ring_wait_data(&r, 0, 2, NULL, 0, 0), 1);
    ck_assert_int_eq(fan_ring_state(&r), FAN_RING_ENDED);
    fan_ring_destroy(&r);
}
END_TEST

START_TEST(rejects_bad_geometry)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 3, 64, 1, 0), -1);
    ck_assert_int_eq(fan_ring_init(&r, 1, 64, 1, 0), -1);
    ck_assert_int_eq(fan_ring_init(&r, 4, 0, 1, 0), -1);
}
END_TEST

START_TEST(wraps_around_2_to_64)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 4, 64, 1, NEAR_WRAP), 0);
    uint64_t cursor = NEAR_WRAP;
    for (uint64_t i = 0; i < 20; i++) {
        put(&r, i);
        ck_assert_uint_eq(fan_ring_head(&r), NEAR_WRAP + i + 1);
        ck_assert_uint_eq(get(&r, cursor), i);
        cursor++;
        fan_ring_release(&r, 0, cursor);
    }
    ck_assert_uint_lt(fan_ring_head(&r), 20); /* the counter wrapped */
    fan_ring_destroy(&r);
}
END_TEST

START_TEST(writer_never_overwrites_unread_slot)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 4, 64, 2, NEAR_WRAP), 0);
    put_range(&r, 100, 104);
    /* Reader 1 is done with everything, reader 0 with nothing. */
    fan_ring_release(&r, 1, NEAR_WRAP + 4);
    ck_assert_int_eq(fan_ring_wait_space(&r, 20), 0);
    ck_assert_uint_eq(get(&r, NEAR_WRAP), 100);
    /* Reader 0 finishes one slot: exactly one more may be written. */
    fan_ring_release(&r, 0, NEAR_WRAP + 1);
    put(&r, 104);
    ck_assert_int_eq(fan_ring_wait_space(&r, 20), 0);
    ck_assert_uint_eq(get(&r, NEAR_WRAP + 1), 101);
    fan_ring_destroy(&r);
}
END_TEST

START_TEST(leaving_the_gating_set_unblocks_the_writer)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 2, 64, 2, 0), 0);
    put(&r, 1);
    put(&r, 2);
    fan_ring_release(&r, 1, 2);
    ck_assert_int_eq(fan_ring_wait_space(&r, 10), 0);
    fan_ring_leave(&r, 0);
    ck_assert_int_eq(fan_ring_wait_space(&r, 10), 1);
    put(&r, 3);
    fan_ring_destroy(&r);
}
END_TEST

START_TEST(join_resumes_only_while_data_is_intact)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 4, 64, 2, 0), 0);
    fan_ring_leave(&r, 0);
    put(&r, 1);
    put(&r, 2);
    fan_ring_release(&r, 1, 2);
    /* head 2, cursor 0: slots 0 and 1 are intact, join succeeds and gates. */
    ck_assert_int_eq(fan_ring_join(&r, 0), 0);
    ck_assert_int_eq(fan_ring_is_gating(&r, 0), 1);
    put(&r, 3);
    put(&r, 4);
    ck_assert_int_eq(fan_ring_wait_space(&r, 10), 0); /* reader 0 holds slot 0 */
    fan_ring_leave(&r, 0);
    for (int i = 0; i < 2; i++)
        put(&r, 5 + (uint64_t)i);
    fan_ring_release(&r, 1, 6);
    /* head 6, cursor 0: slots 0 and 1 were overwritten, join is refused. */
    ck_assert_int_eq(fan_ring_join(&r, 0), -1);
    ck_assert_int_eq(fan_ring_is_gating(&r, 0), 0);
    fan_ring_destroy(&r);
}
END_TEST

START_TEST(grown_slot_returns_to_chunk_size)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 2, 64, 1, 0), 0);
    ck_assert_int_eq(fan_ring_wait_space(&r, 0), 1);
    fan_slot *s = fan_ring_claim(&r);
    ck_assert_int_eq(fan_ring_reserve(&r, s, 1000), 0);
    ck_assert_uint_ge(s->cap, 1000);
    memset(s->data, 'x', 1000);
    s->len = 1000;
    fan_ring_publish(&r);
    fan_ring_release(&r, 0, 1);
    put(&r, 7);
    fan_ring_release(&r, 0, 2);
    ck_assert_int_eq(fan_ring_wait_space(&r, 0), 1);
    s = fan_ring_claim(&r);
    ck_assert_uint_eq(s->cap, 64);
    fan_ring_destroy(&r);
}
END_TEST

START_TEST(stop_wakes_a_sleeping_writer)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 2, 64, 1, 0), 0);
    put(&r, 1);
    put(&r, 2);
    fan_ring_stop(&r);
    ck_assert_int_eq(fan_ring_wait_space(&r, -1), 0); /* returns instead of blocking */
    ck_assert_int_eq(fan_ring_wait_data(&r, 0, 2, NULL, 0, -1), 1);
    fan_ring_destroy(&r);
}
END_TEST

/* A 64-slot ring stores head once per 8 filled slots, and whenever the
 * writer flushes (before it idles), waits for space or ends. */
START_TEST(head_moves_per_publish_batch_and_on_flush)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 64, 64, 1, NEAR_WRAP), 0);
    put_range(&r, 0, 7);
    ck_assert_uint_eq(fan_ring_head(&r), NEAR_WRAP);
    ck_assert_int_eq(fan_ring_wait_data(&r, 0, NEAR_WRAP, NULL, 0, 0), 0);
    put(&r, 7);
    ck_assert_uint_eq(fan_ring_head(&r), NEAR_WRAP + 8);
    put(&r, 8);
    ck_assert_uint_eq(fan_ring_head(&r), NEAR_WRAP + 8);
    fan_ring_flush(&r); /* the producer is about to wait for its source */
    ck_assert_uint_eq(fan_ring_head(&r), NEAR_WRAP + 9);
    ck_assert_uint_eq(get(&r, NEAR_WRAP + 8), 8);
    put(&r, 9);
    fan_ring_close(&r, FAN_RING_ENDED);
    ck_assert_int_eq(fan_ring_state(&r), FAN_RING_ENDED);
    ck_assert_uint_eq(fan_ring_head(&r), NEAR_WRAP + 10); /* the final head */
    fan_ring_destroy(&r);
}
END_TEST

START_TEST(writer_publishes_before_it_waits_for_space)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 64, 64, 1, 0), 0);
    put_range(&r, 0, 64);
    fan_ring_release(&r, 0, 3);
    put_range(&r, 64, 67);
    ck_assert_uint_eq(fan_ring_head(&r), 64);
    /* Full: the reader must get slots 64..66 or it could never free more. */
    ck_assert_int_eq(fan_ring_wait_space(&r, 0), 0);
    ck_assert_uint_eq(fan_ring_head(&r), 67);
    fan_ring_destroy(&r);
}
END_TEST

START_TEST(join_allows_for_unpublished_slots)
{
    fan_ring r;
    ck_assert_int_eq(fan_ring_init(&r, 64, 64, 2, 0), 0);
    fan_ring_leave(&r, 0);
    put_range(&r, 0, 56);
    /* head 56: a writer that has not seen reader 0 may hold up to 7 filled
     * slots past it and be filling slot 63, so slot 0 is still intact. */
    ck_assert_int_eq(fan_ring_join(&r, 0), 0);
    fan_ring_leave(&r, 0);
    put(&r, 56);
    fan_ring_flush(&r);
    /* head 57: the writer may be filling slot 64, over slot 0. */
    ck_assert_int_eq(fan_ring_join(&r, 0), -1);
    ck_assert_int_eq(fan_ring_is_gating(&r, 0), 0);
    fan_ring_destroy(&r);
}
END_TEST

/* ---- threaded stress ---- */

#define STRESS_SLOTS       1000000ULL
#define STRESS_MAX_READERS 4

typedef struct stress {
    fan_ring ring;
    uint64_t first;
    uint64_t count;
    uint64_t bad[STRESS_MAX_READERS];
    uint64_t seen[STRESS_MAX_READERS];
} stress;

typedef struct reader_arg {
    stress *st;
    size_t id;
} reader_arg;

/* Payload of slot `seq`: the sequence number, a variable-length body and a
 * checksum over both, so torn or stale slots are caught. */
static size_t fill_payload(char *p, uint64_t seq)
{
    size_t body = 8 + (size_t)(seq % 97);
    uint64_t sum = seq * 0x9E3779B97F4A7C15ULL;
    memcpy(p, &seq, 8);
    for (size_t i = 0; i < body; i++) {
        p[8 + i] = (char)(seq >> (i % 8) ^ i);
        sum = sum * 31 + (unsigned char)p[8 + i];
    }
    memcpy(p + 8 + body, &sum, 8);
    return 16 + body;
}

static int payload_ok(const fan_slot *s, uint64_t seq)
{
    char want[16 + 8 + 97];
    size_t n = fill_payload(want, seq);
    return s->len == n && memcmp(s->data, want, n) == 0;
}

static void *stress_reader(void *arg)
{
    reader_arg *a = arg;
    stress *st = a->st;
    uint64_t cursor = st->first, end = st->first + st->count;
    while (cursor != end) {
        if (!fan_ring_wait_data(&st->ring, a->id, cursor, NULL, 0, -1))
            continue;
        uint64_t head = fan_ring_head(&st->ring);
        for (; cursor != head; cursor++) {
            st->bad[a->id] += !payload_ok(fan_ring_slot(&st->ring, cursor), cursor);
            st->seen[a->id]++;
        }
        fan_ring_release(&st->ring, a->id, cursor);
    }
    return NULL;
}

static void run_stress(size_t nreaders, uint64_t nslots, uint64_t first)
{
    stress st = {.first = first, .count = STRESS_SLOTS};
    pthread_t t[STRESS_MAX_READERS];
    reader_arg args[STRESS_MAX_READERS];
    ck_assert_int_eq(fan_ring_init(&st.ring, nslots, 256, nreaders, first), 0);
    for (size_t i = 0; i < nreaders; i++) {
        args[i] = (reader_arg){&st, i};
        ck_assert_int_eq(pthread_create(&t[i], NULL, stress_reader, &args[i]), 0);
    }
    for (uint64_t seq = first; seq != first + st.count; seq++) {
        while (!fan_ring_wait_space(&st.ring, -1))
            ;
        fan_slot *s = fan_ring_claim(&st.ring);
        s->len = fill_payload(s->data, seq);
        fan_ring_publish(&st.ring);
        if (seq % 37 == 0) /* the producer idles now and then */
            fan_ring_flush(&st.ring);
    }
    fan_ring_close(&st.ring, FAN_RING_ENDED);
    for (size_t i = 0; i < nreaders; i++) {
        pthread_join(t[i], NULL);
        ck_assert_uint_eq(st.seen[i], STRESS_SLOTS);
        ck_assert_uint_eq(st.bad[i], 0);
    }
    fan_ring_destroy(&st.ring);
}

START_TEST(stress_every_reader_checks_every_payload)
{
    static const size_t readers[] = {1, 2, 4};
    /* A small ring makes the writer and readers sleep and wake constantly;
     * a 64-slot ring stores head per batch of 8 slots.  Starting near 2^64
     * makes the run cross the wrap-around. */
    run_stress(readers[_i % 3], _i < 3 ? 8 : 64, UINT64_MAX - STRESS_SLOTS / 2);
}
END_TEST

/* ---- threaded stress: a retry replays a kept journal (J4) ---- */

#define REPLAY_SLOTS  100000ULL
#define REPLAY_PASSES 7

typedef struct replay_stress {
    fan_ring ring;
    fan_journal journal;
    uint64_t bad0, seen0;  /* the reader that never fails */
    uint64_t bad1;         /* the retrying reader: slots not as written */
    uint64_t out_of_order; /* a pass that did not read 0, 1, 2, ... */
    int passes_done;       /* passes that read the whole stream */
    int gave_up;           /* a pass found the journal not whole */
    int held_rejoins;      /* re-joins at the end of a full journal */
} replay_stress;

/* The retrying reader in the ring from `seq` until `stop` (it fails there)
 * or the end.  Returns where it stopped. */
static uint64_t replay_read_ring(replay_stress *st, uint64_t seq, uint64_t stop)
{
    fan_ring *r = &st->ring;
    while (seq != REPLAY_SLOTS && seq != stop) {
        if (!fan_ring_wait_data(r, 1, seq, NULL, 0, -1))
            continue;
        uint64_t head = fan_ring_head(r);
        for (; seq != head && seq != stop; seq++)
            st->bad1 += !payload_ok(fan_ring_slot(r, seq), seq);
        fan_ring_release(r, 1, seq);
    }
    if (seq == stop)
        fan_ring_leave(r, 1); /* fails: holds no slot, stops gating */
    return seq;
}

/* One retry as a receiver's reload does it: counted as a journal reader,
 * then the check that the journal is whole (J4); the journal from record
 * 0 until it can re-join the ring (held at a full journal's end, else only
 * if its data is intact), then the ring.  Fails again at `stop`. */
static void replay_pass(replay_stress *st, uint64_t stop)
{
    fan_ring *r = &st->ring;
    fan_slot rec = {0};
    uint64_t seq = 0, offset = 0;
    fan_ring_spill_replay(r, 1);
    if (!fan_journal_whole(&st->journal)) {
        fan_ring_spill_done(r, 1);
        st->gave_up = 1;
        return;
    }
    for (;;) {
        uint64_t head = fan_ring_head(r); /* J1: head before the journal's end */
        if (seq == REPLAY_SLOTS || seq == stop)
            break;
        if (head - seq + r->publish_batch <= r->nslots / 2) {
            fan_ring_set_cursor(r, 1, seq);
            if (fan_ring_join(r, 1) == 0) {
                fan_ring_spill_done(r, 1);
                seq = replay_read_ring(st, seq, stop);
                goto out;
            }
        }
        if (seq != fan_journal_end(&st->journal)) {
            uint64_t at = offset;
            if (fan_journal_read(&st->journal, &offset, seq, &rec, 0) != 0 ||
                offset == at) {
                st->out_of_order++;
                break;
            }
            st->bad1 += !payload_ok(&rec, seq);
            fan_ring_set_cursor(r, 1, ++seq);
        } else if (seq != head) {
            /* Only a full journal ends below head: its end slot is kept. */
            fan_ring_set_cursor(r, 1, seq);
            fan_ring_rejoin_held(r, 1);
            fan_ring_spill_done(r, 1);
            st->held_rejoins++;
            seq = replay_read_ring(st, seq, stop);
            goto out;
        } else {
            fan_ring_wait_data(r, 1, seq, NULL, 0, 1);
        }
    }
    fan_ring_spill_done(r, 1);
out:
    st->passes_done += seq == REPLAY_SLOTS;
    free(rec.data);
}

static void *replay_reader(void *arg)
{
    replay_stress *st = arg;
    /* Fails after an eighth of the stream, then on each retry an eighth
     * later, until the last pass, which reads to the end. */
    replay_read_ring(st, 0, REPLAY_SLOTS / 8);
    for (int k = 2; k <= REPLAY_PASSES + 1 && !st->gave_up; k++)
        replay_pass(st, k <= REPLAY_PASSES ? REPLAY_SLOTS * k / 8 : UINT64_MAX);
    return NULL;
}

static void *steady_reader(void *arg)
{
    replay_stress *st = arg;
    uint64_t cursor = 0;
    while (cursor != REPLAY_SLOTS) {
        if (!fan_ring_wait_data(&st->ring, 0, cursor, NULL, 0, -1))
            continue;
        uint64_t head = fan_ring_head(&st->ring);
        for (; cursor != head; cursor++) {
            st->bad0 += !payload_ok(fan_ring_slot(&st->ring, cursor), cursor);
            st->seen0++;
        }
        fan_ring_release(&st->ring, 0, cursor);
    }
    return NULL;
}

/* A kept journal (retries) with a budget for the whole stream, a third of
 * it, or two thirds: a reader fails and replays from slot 0 again and
 * again while the writer runs on.  Every replay reads every payload in
 * order, or finds at its start that the journal is no longer whole; a
 * replay under way when the journal fills re-joins the ring at its end,
 * where the slot must still be the one the journal ends before. */
START_TEST(stress_replays_of_a_kept_journal)
{
    static const uint64_t budget[] = {64 << 20, 3 << 20, 6 << 20};
    replay_stress *st = calloc(1, sizeof *st);
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(fan_ring_init(&st->ring, _i < 3 ? 8 : 64, 256, 2, 0), 0);
    ck_assert_int_eq(fan_journal_open(&st->journal, NULL, budget[_i % 3]), 0);
    st->journal.keep = 1;
    fan_journal_start(&st->journal, 0);
    st->ring.journal = &st->journal;
    pthread_t t[2];
    ck_assert_int_eq(pthread_create(&t[0], NULL, steady_reader, st), 0);
    ck_assert_int_eq(pthread_create(&t[1], NULL, replay_reader, st), 0);
    for (uint64_t seq = 0; seq != REPLAY_SLOTS; seq++) {
        while (!fan_ring_wait_space(&st->ring, -1))
            ;
        fan_slot *s = fan_ring_claim(&st->ring);
        s->len = fill_payload(s->data, seq);
        fan_ring_publish(&st->ring);
        if (seq % 37 == 0)
            fan_ring_flush(&st->ring);
    }
    fan_ring_close(&st->ring, FAN_RING_ENDED);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    ck_assert_uint_eq(st->seen0, REPLAY_SLOTS);
    ck_assert_uint_eq(st->bad0, 0);
    ck_assert_uint_eq(st->bad1, 0);
    ck_assert_uint_eq(st->out_of_order, 0);
    int overflowed = atomic_load(&st->journal.overflowed);
    if (_i % 3 == 0) /* the whole stream fits: every retry succeeds */
        ck_assert_int_eq(overflowed, 0);
    else
        ck_assert_int_eq(overflowed, 1);
    ck_assert_int_eq(st->gave_up, st->passes_done == 0);
    ck_assert_int_le(st->gave_up, overflowed);
    ck_assert_int_eq(atomic_load(&st->journal.spilled), 0);
    fan_journal_close(&st->journal);
    fan_ring_destroy(&st->ring);
    free(st);
}
END_TEST

Suite *ring_suite(void)
{
    Suite *s = suite_create("ring");
    TCase *tc = tcase_create("semantics");
    tcase_add_test(tc, publish_then_read_in_order);
    tcase_add_test(tc, rejects_bad_geometry);
    tcase_add_test(tc, wraps_around_2_to_64);
    tcase_add_test(tc, writer_never_overwrites_unread_slot);
    tcase_add_test(tc, leaving_the_gating_set_unblocks_the_writer);
    tcase_add_test(tc, join_resumes_only_while_data_is_intact);
    tcase_add_test(tc, grown_slot_returns_to_chunk_size);
    tcase_add_test(tc, stop_wakes_a_sleeping_writer);
    tcase_add_test(tc, head_moves_per_publish_batch_and_on_flush);
    tcase_add_test(tc, writer_publishes_before_it_waits_for_space);
    tcase_add_test(tc, join_allows_for_unpublished_slots);
    suite_add_tcase(s, tc);
    TCase *tc_stress = tcase_create("stress");
    tcase_set_timeout(tc_stress, 600);
    tcase_add_loop_test(tc_stress, stress_every_reader_checks_every_payload, 0, 6);
    tcase_add_loop_test(tc_stress, stress_replays_of_a_kept_journal, 0, 6);
    suite_add_tcase(s, tc_stress);
    return s;
}

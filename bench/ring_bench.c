/*
 * ring_bench: the broadcast ring with a synthetic producer and 1..4 readers,
 * against memcpy bandwidth and a plain mutex + condition-variable queue with
 * the same broadcast semantics, all measured in the same run.
 *
 *   ring_bench [SECONDS_PER_CASE [CHUNK [READERS]]]   (default 0.5, all)
 *
 * For every chunk size and reader count it prints, tab-separated:
 *   chunk  readers  ring_GBps  ring_ns_per_slot  handoff_ns  memcpy_ns
 *   overhead_pct  mutex_GBps  mutex_ns_per_slot  own_cores
 * The producer copies each chunk into a slot and every reader copies it out
 * (as PQputCopyData does), so GB/s counts payload bytes delivered to one
 * reader.  handoff_ns is the ring's cost per slot with empty slots; memcpy_ns
 * the time to copy one chunk out of a ring-sized working set; overhead_pct =
 * handoff_ns / memcpy_ns.  own_cores is 1 when the writer and every reader
 * can each have a core of their own (readers + 1 <= online CPUs).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"

#define SLOTS       64
#define MAX_READERS 4

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---- the ring ---- */

typedef struct ring_case {
    fan_ring ring;
    size_t chunk;
    int copy;
    uint64_t slots;
} ring_case;

typedef struct reader_arg {
    ring_case *rc;
    size_t id;
    char *sink;
} reader_arg;

static void *ring_reader(void *p)
{
    reader_arg *a = p;
    ring_case *rc = a->rc;
    uint64_t cursor = 0;
    while (cursor != rc->slots) {
        if (!fan_ring_wait_data(&rc->ring, a->id, cursor, NULL, 0, -1))
            continue;
        uint64_t head = fan_ring_head(&rc->ring);
        for (; cursor != head; cursor++)
            if (rc->copy)
                memcpy(a->sink, fan_ring_slot(&rc->ring, cursor)->data, rc->chunk);
        fan_ring_release(&rc->ring, a->id, cursor);
    }
    return NULL;
}

/* Seconds to hand `slots` chunks to `readers` readers through the ring. */
static double run_ring(size_t chunk, int readers, uint64_t slots, int copy,
                       const char *src)
{
    ring_case rc = {.chunk = chunk, .copy = copy, .slots = slots};
    pthread_t t[MAX_READERS];
    reader_arg args[MAX_READERS];
    if (fan_ring_init(&rc.ring, SLOTS, chunk, (size_t)readers, 0) != 0)
        abort();
    for (int i = 0; i < readers; i++) {
        args[i] = (reader_arg){&rc, (size_t)i, malloc(chunk)};
        pthread_create(&t[i], NULL, ring_reader, &args[i]);
    }
    double t0 = now();
    for (uint64_t s = 0; s < slots; s++) {
        while (!fan_ring_wait_space(&rc.ring, -1))
            ;
        fan_slot *slot = fan_ring_claim(&rc.ring);
        if (copy)
            memcpy(slot->data, src, chunk);
        slot->len = chunk;
        fan_ring_publish(&rc.ring);
    }
    fan_ring_close(&rc.ring, FAN_RING_ENDED);
    for (int i = 0; i < readers; i++)
        pthread_join(t[i], NULL);
    double elapsed = now() - t0;
    for (int i = 0; i < readers; i++)
        free(args[i].sink);
    fan_ring_destroy(&rc.ring);
    return elapsed;
}

/* ---- the baseline: one mutex, two condition variables ---- */

typedef struct mutex_queue {
    pthread_mutex_t lock;
    pthread_cond_t data, space;
    char *slot[SLOTS];
    uint64_t head, cursor[MAX_READERS];
    int readers;
    size_t chunk;
    uint64_t slots;
} mutex_queue;

typedef struct mq_reader {
    mutex_queue *q;
    int id;
    char *sink;
} mq_reader;

static uint64_t mq_min_cursor(mutex_queue *q)
{
    uint64_t m = q->cursor[0];
    for (int i = 1; i < q->readers; i++)
        if (q->cursor[i] < m)
            m = q->cursor[i];
    return m;
}

static void *mq_read(void *p)
{
    mq_reader *r = p;
    mutex_queue *q = r->q;
    for (uint64_t c = 0; c < q->slots; c++) {
        pthread_mutex_lock(&q->lock);
        while (q->head == c)
            pthread_cond_wait(&q->data, &q->lock);
        pthread_mutex_unlock(&q->lock);
        memcpy(r->sink, q->slot[c % SLOTS], q->chunk);
        pthread_mutex_lock(&q->lock);
        q->cursor[r->id] = c + 1;
        pthread_cond_signal(&q->space);
        pthread_mutex_unlock(&q->lock);
    }
    return NULL;
}

static double run_mutex(size_t chunk, int readers, uint64_t slots, const char *src)
{
    mutex_queue q = {.readers = readers, .chunk = chunk, .slots = slots};
    pthread_t t[MAX_READERS];
    mq_reader args[MAX_READERS];
    pthread_mutex_init(&q.lock, NULL);
    pthread_cond_init(&q.data, NULL);
    pthread_cond_init(&q.space, NULL);
    for (int i = 0; i < SLOTS; i++)
        q.slot[i] = malloc(chunk);
    for (int i = 0; i < readers; i++) {
        args[i] = (mq_reader){&q, i, malloc(chunk)};
        pthread_create(&t[i], NULL, mq_read, &args[i]);
    }
    double t0 = now();
    for (uint64_t s = 0; s < slots; s++) {
        pthread_mutex_lock(&q.lock);
        while (s - mq_min_cursor(&q) >= SLOTS)
            pthread_cond_wait(&q.space, &q.lock);
        pthread_mutex_unlock(&q.lock);
        memcpy(q.slot[s % SLOTS], src, chunk);
        pthread_mutex_lock(&q.lock);
        q.head = s + 1;
        pthread_cond_broadcast(&q.data);
        pthread_mutex_unlock(&q.lock);
    }
    for (int i = 0; i < readers; i++)
        pthread_join(t[i], NULL);
    double elapsed = now() - t0;
    for (int i = 0; i < readers; i++)
        free(args[i].sink);
    for (int i = 0; i < SLOTS; i++)
        free(q.slot[i]);
    return elapsed;
}

/* Nanoseconds to copy one chunk out of a working set as large as the ring's
 * (SLOTS chunks), into one reader's buffer: what each reader does per slot. */
static double memcpy_ns(size_t chunk, double seconds)
{
    char *src = malloc(chunk * SLOTS), *dst = malloc(chunk);
    memset(src, 1, chunk * SLOTS);
    memset(dst, 2, chunk);
    uint64_t n = 0;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 64; i++, n++)
            memcpy(dst, src + (n % SLOTS) * chunk, chunk);
        t = now() - t0;
    } while (t < seconds);
    volatile char keep = dst[chunk - 1];
    (void)keep;
    free(src);
    free(dst);
    return t * 1e9 / (double)n;
}

/* Enough slots to run about `seconds`, estimated from a short trial. */
static uint64_t calibrate(double per_slot_s, double seconds)
{
    uint64_t n = (uint64_t)(seconds / (per_slot_s > 0 ? per_slot_s : 1e-6));
    return n < 2000 ? 2000 : n;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 0.5;
    size_t only_chunk = argc > 2 ? (size_t)atol(argv[2]) : 0; /* for profiling */
    int only_readers = argc > 3 ? atoi(argv[3]) : 0;
    static const size_t chunks[] = {4096, 16384, 65536, 131072, 262144, 1048576};
    char *src = malloc(1 << 20);
    memset(src, 'x', 1 << 20);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    printf("chunk\treaders\tring_GBps\tring_ns_per_slot\thandoff_ns\tmemcpy_ns\t"
           "overhead_pct\tmutex_GBps\tmutex_ns_per_slot\town_cores\n");
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
        size_t chunk = chunks[c];
        if (only_chunk && chunk != only_chunk)
            continue;
        double copy_ns = memcpy_ns(chunk, seconds / 2);
        for (int readers = 1; readers <= MAX_READERS; readers++) {
            if (only_readers && readers != only_readers)
                continue;
            double trial = run_ring(chunk, readers, 500, 1, src) / 500;
            uint64_t slots = calibrate(trial, seconds);
            double ring_s = run_ring(chunk, readers, slots, 1, src);
            double empty_trial = run_ring(chunk, readers, 5000, 0, src) / 5000;
            uint64_t empty_slots = calibrate(empty_trial, seconds / 2);
            double handoff =
                run_ring(chunk, readers, empty_slots, 0, src) * 1e9 / (double)empty_slots;
            double mutex_s = run_mutex(chunk, readers, slots, src);
            printf("%zu\t%d\t%.2f\t%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t%.0f\t%d\n", chunk,
                   readers, (double)slots * (double)chunk / ring_s / 1e9,
                   ring_s * 1e9 / (double)slots, handoff, copy_ns,
                   100.0 * handoff / copy_ns,
                   (double)slots * (double)chunk / mutex_s / 1e9,
                   mutex_s * 1e9 / (double)slots, readers + 1 <= cpus);
            fflush(stdout);
        }
    }
    free(src);
    return 0;
}

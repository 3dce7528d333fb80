#include "shared.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int fan_thread_start(fan_thread *t, void *(*fn)(void *), void *arg)
{
    if (pthread_create(&t->id, NULL, fn, arg) != 0)
        return PGFAN_ESYSTEM;
    t->started = 1;
    return PGFAN_OK;
}

void fan_thread_join(fan_thread *t)
{
    if (t->started)
        pthread_join(t->id, NULL);
    t->started = 0;
}

int fan_shared_init(fan_shared *s, const pgfan_options *opts)
{
    memset(s, 0, sizeof *s);
    s->opts = *opts;
    s->wake.fd = -1;
    atomic_init(&s->verdict, FAN_VERDICT_NONE);
    if (fan_waiter_init(&s->wake) != 0)
        return -1;
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        fan_waiter_destroy(&s->wake);
        return -1;
    }
    return 0;
}

int fan_shared_start(fan_shared *s, size_t nreceivers)
{
    s->first = calloc(nreceivers, sizeof *s->first);
    s->has_first = calloc(nreceivers, 1);
    if (!s->first || !s->has_first)
        return PGFAN_ENOMEM;
    s->nreceivers = nreceivers;
    if (fan_ring_init(&s->ring, s->opts.ring_slots, s->opts.chunk_bytes, nreceivers, 0) !=
        0)
        return errno == ENOMEM ? PGFAN_ENOMEM : PGFAN_ESYSTEM;
    s->ring_ready = 1;
    if (s->opts.spill_limit > 0) {
        if (fan_journal_open(&s->journal, s->opts.spill_dir, s->opts.spill_limit) != 0)
            return errno == ENOMEM ? PGFAN_ENOMEM : PGFAN_ESYSTEM;
        s->journal_ready = 1;
        s->ring.journal = &s->journal;
        if (s->opts.retries > 0) {
            /* Before any thread runs: the journal holds the stream from its
             * first slot, so a receiver can be reloaded from the start. */
            s->journal.keep = 1;
            fan_journal_start(&s->journal, 0);
        }
    }
    s->opts.spill_dir = NULL; /* the caller's string, not needed any more */
    return PGFAN_OK;
}

void fan_shared_destroy(fan_shared *s)
{
    if (s->ring_ready)
        fan_ring_destroy(&s->ring);
    if (s->journal_ready)
        fan_journal_close(&s->journal);
    fan_waiter_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    free(s->faults);
    free(s->first);
    free(s->has_first);
}

void fan_shared_poke(fan_shared *s)
{
    fan_waiter_kick(&s->wake);
}

void fan_shared_post_fault(fan_shared *s, const pgfan_fault *f)
{
    pthread_mutex_lock(&s->lock);
    if (s->nfaults == s->faults_cap) {
        size_t cap = s->faults_cap ? s->faults_cap * 2 : 8;
        pgfan_fault *p = realloc(s->faults, cap * sizeof *p);
        if (p) {
            s->faults = p;
            s->faults_cap = cap;
        }
    }
    if (s->nfaults < s->faults_cap)
        s->faults[s->nfaults++] = *f;
    if (f->receiver >= 0 && (size_t)f->receiver < s->nreceivers &&
        !s->has_first[f->receiver]) {
        s->has_first[f->receiver] = 1;
        s->first[f->receiver] = *f;
    }
    pthread_mutex_unlock(&s->lock);
    fan_shared_poke(s);
}

int fan_shared_decide(fan_shared *s, enum fan_verdict v, const char *reason)
{
    int none = FAN_VERDICT_NONE;
    /* Only the manager's thread decides, so the reason cannot change under
     * a reader: it is written here, before the seq_cst CAS that publishes
     * the verdict, and threads read it after loading ABORT. */
    if (atomic_load_explicit(&s->verdict, memory_order_seq_cst) != FAN_VERDICT_NONE)
        return 0;
    snprintf(s->reason, sizeof s->reason, "%s", reason ? reason : "");
    return atomic_compare_exchange_strong_explicit(
        &s->verdict, &none, (int)v, memory_order_seq_cst, memory_order_seq_cst);
}

int fan_shared_fault(fan_shared *s, size_t k, pgfan_fault *out)
{
    pthread_mutex_lock(&s->lock);
    int got = k < s->nfaults;
    if (got)
        *out = s->faults[k];
    pthread_mutex_unlock(&s->lock);
    return got;
}

int fan_shared_receiver_fault(fan_shared *s, size_t i, pgfan_fault *out)
{
    pthread_mutex_lock(&s->lock);
    int got = i < s->nreceivers && s->has_first[i];
    if (got)
        *out = s->first[i];
    pthread_mutex_unlock(&s->lock);
    return got;
}

void fan_shared_forget_receiver_fault(fan_shared *s, size_t i)
{
    pthread_mutex_lock(&s->lock);
    if (i < s->nreceivers)
        s->has_first[i] = 0;
    pthread_mutex_unlock(&s->lock);
}

size_t fan_shared_fault_count(fan_shared *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->nfaults;
    pthread_mutex_unlock(&s->lock);
    return n;
}

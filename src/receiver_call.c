/* A call receiver: a user callback is given each slot of whole rows. */
#include "pq.h"
#include "receiver.h"

int pgfan_receiver_new_call(pgfan_receiver **out, pgfan_call_fn fn, void *arg)
{
    if (!out || !fn)
        return PGFAN_EINVAL;
    *out = NULL;
    pgfan_receiver *r = fan_receiver_alloc(&fan_call_receiver, "call");
    if (!r)
        return PGFAN_ENOMEM;
    r->call = fn;
    r->call_arg = arg;
    *out = r;
    return PGFAN_OK;
}

static int call_begin(pgfan_receiver *r, pgfan_fault *f)
{
    (void)r, (void)f;
    return PGFAN_OK;
}

/* Takes whatever format the source sends. */
static int call_finish_begin(pgfan_receiver *r, pgfan_format source_format,
                             pgfan_fault *f)
{
    (void)f;
    r->format = source_format;
    return PGFAN_OK;
}

static void call_nothing(pgfan_receiver *r)
{
    (void)r;
}

static void call_nothing_reason(pgfan_receiver *r, const char *reason)
{
    (void)r, (void)reason;
}

static int call_deliver(pgfan_receiver *r, const fan_slot *s)
{
    int rc = r->call(r->call_arg, s->data, s->len);
    if (rc != 0) {
        pgfan_fault f;
        fan_fault_set(&f, (int)r->index, r->label, PGFAN_ECALLBACK,
                      "the receiver callback failed (%d)", rc);
        f.reconcilable = 1; /* the slot is still ours: it can be retried */
        fan_receiver_raise(r, &f);
        return -1;
    }
    fan_receiver_count_add(r, FAN_COUNT_MOVED, s->len);
    return 0;
}

static void call_wait_data(pgfan_receiver *r, uint64_t cursor)
{
    fan_ring_wait_data(fan_receiver_ring(r), r->index, cursor, NULL, 0, -1);
}

static void call_idle(pgfan_receiver *r, int timeout_ms)
{
    fan_waiter_sleep(fan_receiver_waiter(r), NULL, 0, timeout_ms);
}

static int call_complete(pgfan_receiver *r, pgfan_fault *f)
{
    (void)f;
    r->server_rows = r->shared->source_rows; /* nobody else counts */
    return 0;
}

const fan_receiver_ops fan_call_receiver = {
    .send_begin = call_begin,
    .finish_begin = call_finish_begin,
    .enter = call_nothing,
    .leave = call_nothing,
    .deliver = call_deliver,
    .after_slot = call_nothing,
    .wait_data = call_wait_data,
    .idle = call_idle,
    .complete = call_complete,
    .fail = call_nothing_reason,
    .realign = call_nothing_reason,
    .destroy = call_nothing,
};

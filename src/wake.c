#include "wake.h"

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

int fan_waiter_init(fan_waiter *w)
{
    atomic_init(&w->want, 0);
    w->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return w->fd < 0 ? -1 : 0;
}

void fan_waiter_destroy(fan_waiter *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
}

void fan_waiter_prepare(fan_waiter *w, uint64_t want)
{
    /* seq_cst: pairs with the waker's seq_cst store of the condition.
     * 0 means awake, so a counter value of 0 (at the 2^64 wrap) is awaited
     * as 1: at worst one batch later, and a waker's fan_waiter_notify()
     * before it idles still wakes us. */
    atomic_store_explicit(&w->want, want ? want : 1, memory_order_seq_cst);
}

void fan_waiter_cancel(fan_waiter *w)
{
    /* Relaxed: only the owner stores a nonzero want; a waker that still sees
     * the old one at worst kicks once more, which costs a spurious wake. */
    atomic_store_explicit(&w->want, 0, memory_order_relaxed);
}

static void drain(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
}

int fan_waiter_sleep(fan_waiter *w, struct pollfd *extra, int nextra, int timeout_ms)
{
    struct pollfd fds[4];
    int n = 0, rc;

    fds[n++] = (struct pollfd){.fd = w->fd, .events = POLLIN};
    for (int i = 0; i < nextra && n < 4; i++)
        fds[n++] = extra[i];
    do
        rc = poll(fds, (nfds_t)n, timeout_ms);
    while (rc < 0 && errno == EINTR);
    if (rc > 0 && (fds[0].revents & POLLIN))
        drain(w->fd);
    for (int i = 0; i < nextra && i < 3; i++)
        extra[i].revents = fds[i + 1].revents;
    /* Relaxed, as in fan_waiter_cancel(): the next prepare is seq_cst. */
    atomic_store_explicit(&w->want, 0, memory_order_relaxed);
    return rc;
}

void fan_waiter_kick(fan_waiter *w)
{
    uint64_t one = 1;
    while (write(w->fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

void fan_waiter_notify(fan_waiter *w)
{
    /* seq_cst: pairs with fan_waiter_prepare(); the exchange makes only one
     * waker pay for the system call. */
    if (atomic_load_explicit(&w->want, memory_order_seq_cst) &&
        atomic_exchange_explicit(&w->want, 0, memory_order_seq_cst))
        fan_waiter_kick(w);
}

void fan_waiter_notify_at(fan_waiter *w, uint64_t value)
{
    /* seq_cst load: pairs with fan_waiter_prepare() (E3 in ring.h).  The
     * difference is taken as signed so free-running counters compare right. */
    uint64_t want = atomic_load_explicit(&w->want, memory_order_seq_cst);
    if (want && (int64_t)(value - want) >= 0 &&
        atomic_exchange_explicit(&w->want, 0, memory_order_seq_cst))
        fan_waiter_kick(w);
}

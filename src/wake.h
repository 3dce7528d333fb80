/*
 * A waiter: one thread sleeps on it, any thread wakes it.
 *
 * It is an eventfd plus a `want` word, so a sleeper can also poll() sockets
 * and a waker only makes a system call when someone sleeps.  `want` is 0
 * while the owner is awake; a sleeper stores the value of a counter (a ring
 * sequence) it waits for, so a waker advancing that counter one step at a
 * time wakes it once per batch rather than once per step.
 *
 * The sleeper's protocol is: fan_waiter_prepare(); re-check the condition;
 * fan_waiter_sleep() or fan_waiter_cancel().  A waker changes the condition
 * with a seq_cst store, then calls fan_waiter_notify() or _notify_at().
 * Both sides use seq_cst (store want / load condition against store
 * condition / load want), so at least one of them sees the other and no
 * wake-up is lost.  A sleeper whose `want` is not reached yet relies on the
 * waker's fan_waiter_notify() before the waker itself goes idle.
 */
#ifndef FAN_WAKE_H
#define FAN_WAKE_H

#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct fan_waiter {
    _Atomic uint64_t want; /* 0: awake; else the counter value awaited */
    int fd;
} fan_waiter;

int fan_waiter_init(fan_waiter *w);
void fan_waiter_destroy(fan_waiter *w);

/* Announces the intent to sleep until a counter reaches `want` (nonzero);
 * the caller re-checks its condition next. */
void fan_waiter_prepare(fan_waiter *w, uint64_t want);
/* Withdraws the intent when the re-check found the condition already true. */
void fan_waiter_cancel(fan_waiter *w);
/*
 * Sleeps until woken, until one of `extra` is ready, or `timeout_ms` passes
 * (-1: no limit).  Returns poll()'s result; revents of `extra` are filled.
 */
int fan_waiter_sleep(fan_waiter *w, struct pollfd *extra, int nextra, int timeout_ms);

/* Wakes the sleeper if it announced itself (cheap when nobody sleeps). */
void fan_waiter_notify(fan_waiter *w);
/* Wakes the sleeper if the counter it waits for has reached `value`. */
void fan_waiter_notify_at(fan_waiter *w, uint64_t value);
/* Wakes the sleeper unconditionally, also its next sleep if not asleep now. */
void fan_waiter_kick(fan_waiter *w);

#endif

/* Monotonic time for deadlines and durations. */
#ifndef FAN_CLOCK_H
#define FAN_CLOCK_H

#include <time.h>

static inline void fan_now(struct timespec *t)
{
    clock_gettime(CLOCK_MONOTONIC, t);
}

static inline double fan_seconds_between(const struct timespec *a,
                                         const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static inline double fan_seconds_since(const struct timespec *t)
{
    struct timespec now;
    fan_now(&now);
    return fan_seconds_between(t, &now);
}

/* `t` = now + ms. */
static inline void fan_deadline(struct timespec *t, unsigned int ms)
{
    fan_now(t);
    t->tv_sec += ms / 1000;
    t->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

/* Milliseconds from now to `t` (negative when passed). */
static inline long fan_ms_until(const struct timespec *t)
{
    struct timespec now;
    fan_now(&now);
    return (long)(t->tv_sec - now.tv_sec) * 1000L + (t->tv_nsec - now.tv_nsec) / 1000000L;
}

#endif

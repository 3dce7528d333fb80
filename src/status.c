/* Status codes, names, version and option defaults. */
#include "internal.h"

#include <time.h>

unsigned int pgfan_version(void)
{
    return PGFAN_VERSION_HEX;
}

const char *pgfan_version_string(void)
{
    return PGFAN_VERSION_STRING;
}

const char *pgfan_strerror(int code)
{
    switch (code) {
#define STATUS_TEXT(name, value, text)                                                   \
    case value:                                                                          \
        return text;
        PGFAN_STATUS_MAP(STATUS_TEXT)
#undef STATUS_TEXT
    }
    return "unknown error";
}

const char *pgfan_status_name(int code)
{
    switch (code) {
#define STATUS_NAME(name, value, text)                                                   \
    case value:                                                                          \
        return "PGFAN_" #name;
        PGFAN_STATUS_MAP(STATUS_NAME)
#undef STATUS_NAME
    }
    return "PGFAN_UNKNOWN";
}

const char *pgfan_format_name(pgfan_format format)
{
    switch (format) {
    case PGFAN_FORMAT_TEXT:
        return "text";
    case PGFAN_FORMAT_CSV:
        return "csv";
    case PGFAN_FORMAT_BINARY:
        return "binary";
    }
    return "unknown";
}

const char *pgfan_receiver_state_name(pgfan_receiver_state state)
{
    switch (state) {
    case PGFAN_RECEIVER_STARTING:
        return "starting";
    case PGFAN_RECEIVER_ACTIVE:
        return "active";
    case PGFAN_RECEIVER_PAUSED:
        return "paused";
    case PGFAN_RECEIVER_FAULTED:
        return "faulted";
    case PGFAN_RECEIVER_DONE:
        return "done";
    case PGFAN_RECEIVER_FAILED:
        return "failed";
    case PGFAN_RECEIVER_DROPPED:
        return "dropped";
    }
    return "unknown";
}

void pgfan_options_init(pgfan_options *opts)
{
    if (!opts)
        return;
    opts->ring_slots = 64;
    opts->chunk_bytes = 128 * 1024;
    opts->policy = PGFAN_POLICY_ABORT;
    opts->fault_hold_ms = 5000;
    opts->stall_timeout_ms = 0;
    opts->progress_ms = 100;
    opts->realign_timeout_ms = 30000;
    opts->trust_session_settings = 0;
}

void fan_now(struct timespec *t)
{
    clock_gettime(CLOCK_MONOTONIC, t);
}

double fan_seconds_since(const struct timespec *t)
{
    struct timespec now;
    fan_now(&now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

void fan_deadline(struct timespec *t, unsigned int ms)
{
    fan_now(t);
    t->tv_sec += ms / 1000;
    t->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

long fan_ms_until(const struct timespec *t)
{
    struct timespec now;
    fan_now(&now);
    return (long)(t->tv_sec - now.tv_sec) * 1000L + (t->tv_nsec - now.tv_nsec) / 1000000L;
}

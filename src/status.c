/* Status codes, names, version and option defaults. */
#include <string.h>

#include "pgfan.h"

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
    memset(opts, 0, sizeof *opts); /* every field added later starts at 0 */
    opts->ring_slots = 64;
    opts->chunk_bytes = 128 * 1024;
    opts->policy = PGFAN_POLICY_ABORT;
    opts->fault_hold_ms = 5000;
    opts->stall_timeout_ms = 0;
    opts->progress_ms = 100;
    opts->realign_timeout_ms = 30000;
    opts->trust_session_settings = 0;
    opts->interrupt = NULL;
    opts->start_timeout_ms = 0;
    opts->spill_limit = 0;
    opts->spill_dir = NULL;
    opts->complete_early = 0;
}

/* A transaction's bound on lock waits, shared by pgfan_transfer() and the
 * command: both give the transactions they open stall_timeout_ms as their
 * lock_timeout. */
#ifndef FAN_LOCKWAIT_H
#define FAN_LOCKWAIT_H

#include <stdio.h>

/* The SELECT that sets lock_timeout to `ms` for the current transaction
 * (set_config's is_local: it ends with the transaction), unless the
 * session already has a shorter one. */
static inline void fan_lock_timeout_sql(char *buf, size_t len, unsigned int ms)
{
    snprintf(buf, len,
             "SELECT pg_catalog.set_config('lock_timeout', '%u', true) "
             "FROM pg_catalog.pg_settings WHERE name = 'lock_timeout' "
             "AND (setting::bigint = 0 OR setting::bigint > %u)",
             ms, ms);
}

#endif

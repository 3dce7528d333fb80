/* Connection strings as the pgfan command shows them: passwords masked. */
#ifndef PGFAN_CLI_CONNINFO_H
#define PGFAN_CLI_CONNINFO_H

#include <stddef.h>

#define MASKED_PASSWORD "********"

/*
 * Copies `conninfo` (keyword=value pairs or a postgres:// URI) into `out`
 * with every password replaced by MASKED_PASSWORD.  Always NUL-terminates;
 * returns 0, or -1 if `out` was too small (the copy is truncated but still
 * masked up to that point).
 */
int mask_conninfo(const char *conninfo, char *out, size_t outlen);

#endif

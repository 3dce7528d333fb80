/*
 * pg_dump's name patterns (--table 'sales.order_*'): unquoted letters fold
 * to lower case, * and ? are wildcards, "quoted" parts are literal, and a
 * dot separates the schema from the name.
 */
#ifndef PGFAN_CLI_PATTERN_H
#define PGFAN_CLI_PATTERN_H

#include <stddef.h>

/*
 * Writes anchored POSIX regular expressions for the schema and the name
 * of `pattern`; *has_schema tells whether it named a schema.  Returns 0,
 * or -1 when the pattern has more than two dotted parts or does not fit.
 */
int pattern_regex(const char *pattern, char *schema, size_t slen, char *name, size_t nlen,
                  int *has_schema);

#endif

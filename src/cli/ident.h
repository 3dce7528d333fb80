/* SQL identifiers as users type them on the command line. */
#ifndef PGFAN_CLI_IDENT_H
#define PGFAN_CLI_IDENT_H

#include <stddef.h>

/*
 * Splits a comma-separated list of column names written the way SQL writes
 * them: an unquoted name is folded to lower case ("Name" is name), a
 * double-quoted one is taken as is, with "" standing for one quote
 * ("Mixed Case", "a,b", "select").  Returns the number of names stored in
 * names[] (malloc'd, at most `max`), or -1 with a reason in `err` for an
 * empty name, an unterminated quote or too many names.
 */
int split_identifiers(const char *list, char **names, size_t max, char *err,
                      size_t errlen);
void free_identifiers(char **names, size_t n);

#endif

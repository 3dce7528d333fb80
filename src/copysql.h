/*
 * Checks a COPY statement before it is sent, so that a statement that is
 * not a COPY of the right direction (or hides a second statement) never
 * reaches the server, and reads the format it asks for (the protocol only
 * says binary or textual, not text versus CSV).
 */
#ifndef FAN_COPYSQL_H
#define FAN_COPYSQL_H

#include <stddef.h>

#include "pgfan.h"

enum fan_copy_direction { FAN_COPY_TO_STDOUT, FAN_COPY_FROM_STDIN };

/*
 * Returns 0 if `sql` is one COPY ... TO STDOUT (or FROM STDIN) statement and
 * stores its format; otherwise -1 and a reason in `err`.
 */
int fan_copysql_check(const char *sql, enum fan_copy_direction dir, pgfan_format *format,
                      char *err, size_t errlen);

#endif

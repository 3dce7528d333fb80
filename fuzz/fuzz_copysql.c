/*
 * Fuzzes the COPY statement check: any text, both directions.  An accepted
 * statement must be a COPY of the asked direction with a known format; a
 * refused one must say why.
 */
#include <assert.h>
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "copysql.h"

static int mentions(const char *s, const char *word)
{
    size_t n = strlen(word);
    for (; *s; s++)
        if (strncasecmp(s, word, n) == 0)
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    char *sql = malloc(size + 1);
    memcpy(sql, in, size);
    sql[size] = '\0';
    for (int d = 0; d < 2; d++) {
        enum fan_copy_direction dir = d ? FAN_COPY_FROM_STDIN : FAN_COPY_TO_STDOUT;
        pgfan_format f = (pgfan_format)-1;
        char err[256];
        err[0] = '\0';
        if (fan_copysql_check(sql, dir, &f, err, sizeof err) == 0) {
            assert(mentions(sql, "copy"));
            assert(mentions(sql, d ? "stdin" : "stdout"));
            assert(f == PGFAN_FORMAT_TEXT || f == PGFAN_FORMAT_CSV ||
                   f == PGFAN_FORMAT_BINARY);
        } else {
            assert(err[0] != '\0' && memchr(err, '\0', sizeof err));
        }
    }
    /* A tiny error buffer is still NUL-terminated. */
    char small[4];
    pgfan_format f;
    if (fan_copysql_check(sql, FAN_COPY_TO_STDOUT, &f, small, sizeof small) != 0)
        assert(memchr(small, '\0', sizeof small));
    free(sql);
    return 0;
}

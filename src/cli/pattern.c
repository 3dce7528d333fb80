#include "pattern.h"

#include <ctype.h>
#include <string.h>

typedef struct regex_buf {
    char *out;
    size_t len, used;
    int overflow;
} regex_buf;

static void put(regex_buf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->used + n + 2 > b->len) { /* room for "$" and the terminator */
        b->overflow = 1;
        return;
    }
    memcpy(b->out + b->used, s, n);
    b->used += n;
    b->out[b->used] = '\0';
}

/* One literal character: regular-expression operators are escaped. */
static void put_literal(regex_buf *b, char c)
{
    char s[3] = {c, 0, 0};
    if (strchr("\\^$.|?*+()[]{}", c)) {
        s[0] = '\\';
        s[1] = c;
    }
    put(b, s);
}

int pattern_regex(const char *pattern, char *schema, size_t slen, char *name, size_t nlen,
                  int *has_schema)
{
    regex_buf first = {schema, slen, 0, 0}, second = {name, nlen, 0, 0};
    regex_buf *cur = &first;
    int quoted = 0, dots = 0;
    if (slen < 3 || nlen < 3)
        return -1;
    put(&first, "^(");
    for (const char *p = pattern; *p; p++) {
        if (*p == '"') {
            if (quoted && p[1] == '"')
                put_literal(cur, *++p);
            else
                quoted = !quoted;
        } else if (quoted) {
            put_literal(cur, *p);
        } else if (*p == '.') {
            if (++dots > 1)
                return -1;
            put(cur, ")$");
            cur = &second;
            put(cur, "^(");
        } else if (*p == '*') {
            put(cur, ".*");
        } else if (*p == '?') {
            put(cur, ".");
        } else {
            put_literal(cur, (char)tolower((unsigned char)*p));
        }
    }
    put(cur, ")$");
    if (dots == 0) { /* no schema: the pattern was the name */
        if (first.overflow || first.used + 1 > nlen)
            return -1;
        memcpy(name, schema, first.used + 1);
        schema[0] = '\0';
    }
    *has_schema = dots == 1;
    return first.overflow || second.overflow ? -1 : 0;
}

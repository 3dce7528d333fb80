#include "conninfo.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

typedef struct sink {
    char *out;
    size_t len, used;
    int overflow;
} sink;

static void put(sink *s, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s->used + 1 < s->len)
            s->out[s->used++] = p[i];
        else
            s->overflow = 1;
    }
    if (s->len)
        s->out[s->used] = '\0';
}

static void put_mask(sink *s, int quoted)
{
    if (quoted)
        put(s, "'", 1);
    put(s, MASKED_PASSWORD, strlen(MASKED_PASSWORD));
    if (quoted)
        put(s, "'", 1);
}

static int is_uri(const char *c)
{
    return strncmp(c, "postgresql://", 13) == 0 || strncmp(c, "postgres://", 11) == 0;
}

/* True if the percent-encoded URI parameter name [k, end) is `want`. */
static int is_key(const char *k, const char *end, const char *want)
{
    size_t i = 0, wlen = strlen(want);
    while (k < end) {
        int c = (unsigned char)*k++;
        if (c == '%' && end - k >= 2 && isxdigit((unsigned char)k[0]) &&
            isxdigit((unsigned char)k[1])) {
            char hex[3] = {k[0], k[1], '\0'};
            c = (int)strtol(hex, NULL, 16);
            k += 2;
        }
        if (i >= wlen || c != want[i++])
            return 0;
    }
    return i == wlen;
}

static int is_password_key(const char *k, const char *end)
{
    return is_key(k, end, "password") || is_key(k, end, "sslpassword");
}

/*
 * postgres://user:secret@host/db?password=secret&...  Split as libpq does:
 * the user info ends at the first '@' before any '/' (a '?' does not stop
 * it), the query starts at the first '?' after it, its parameters are split
 * at '&' and their names percent-decoded.  A password written with an
 * unencoded '@' makes libpq read its tail as the host; we hide that tail
 * too, up to the host part's last '@'.
 */
static void mask_uri(const char *c, sink *s)
{
    const char *scheme_end = strstr(c, "://") + 3;
    /* libpq's user info ends at the first '@' before any '/' (a '?' does
     * not stop it).  A password may also hold '@' and '/' unencoded: so
     * everything up to the last '@' before the query is hidden (more, at
     * worst, never less). */
    const char *first = scheme_end + strcspn(scheme_end, "@/");
    const char *from = *first == '@' ? first : scheme_end;
    const char *query = from + strcspn(from, "?");
    const char *at = NULL, *p = scheme_end;
    for (const char *q = scheme_end; q < query; q++)
        if (*q == '@')
            at = q;
    put(s, c, (size_t)(scheme_end - c));
    if (at) {
        const char *colon = memchr(scheme_end, ':', (size_t)(at - scheme_end));
        if (colon) {
            put(s, scheme_end, (size_t)(colon - scheme_end) + 1);
            put_mask(s, 0);
        } else {
            put(s, scheme_end, (size_t)(at - scheme_end));
        }
        p = at;
    }
    size_t before_query = strcspn(p, "?");
    put(s, p, before_query);
    p += before_query;
    while (*p) { /* at '?' or '&': one parameter */
        put(s, p, 1);
        p++;
        size_t len = strcspn(p, "&");
        const char *eq = memchr(p, '=', len);
        if (eq && is_password_key(p, eq)) {
            put(s, p, (size_t)(eq - p) + 1);
            put_mask(s, 0);
        } else {
            put(s, p, len);
        }
        p += len;
    }
}

/* keyword = value pairs; values may be single-quoted, and a backslash
 * escapes the next character inside quotes and out (as libpq reads them).
 * libpq lets the next keyword follow a closing quote directly, so a quoted
 * password is masked as a quoted mask. */
static void mask_pairs(const char *c, sink *s)
{
    const char *p = c;
    while (*p) {
        const char *start = p;
        while (isspace((unsigned char)*p))
            p++;
        const char *key = p;
        while (*p && *p != '=' && !isspace((unsigned char)*p))
            p++;
        size_t keylen = (size_t)(p - key);
        while (isspace((unsigned char)*p))
            p++;
        if (*p != '=') { /* malformed: copy the rest as is, minus nothing secret */
            put(s, start, strlen(start));
            return;
        }
        p++;
        while (isspace((unsigned char)*p))
            p++;
        const char *value = p;
        int quoted = *p == '\'';
        if (quoted) {
            p++;
            while (*p && *p != '\'') {
                if (*p == '\\' && p[1])
                    p++;
                p++;
            }
            if (*p == '\'')
                p++;
        } else {
            while (*p && !isspace((unsigned char)*p)) {
                if (*p == '\\' && p[1])
                    p++;
                p++;
            }
        }
        put(s, start, (size_t)(value - start));
        if ((keylen == 8 && strncmp(key, "password", 8) == 0) ||
            (keylen == 11 && strncmp(key, "sslpassword", 11) == 0))
            put_mask(s, quoted);
        else
            put(s, value, (size_t)(p - value));
    }
}

int mask_conninfo(const char *conninfo, char *out, size_t outlen)
{
    sink s = {out, outlen, 0, 0};
    if (outlen)
        out[0] = '\0';
    if (!conninfo)
        return 0;
    if (is_uri(conninfo))
        mask_uri(conninfo, &s);
    else
        mask_pairs(conninfo, &s);
    return s.overflow ? -1 : 0;
}

/*
 * Fuzzes the pgfan command's argument parsing and password masking.  The
 * input, split at NUL bytes, is an argv; every argument is also masked as a
 * connection string.  Whenever libpq finds a password in the original:
 * if libpq can read the masked string, any password it finds there is the
 * mask; if it cannot (hiding the tail of a password with an unencoded '@'
 * may leave a host libpq rejects), the password's text (as libpq decoded
 * it) must occur in it less often than in the original, or not at all.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cli/conninfo.h"
#include "cli/options.h"

/* The password libpq reads from `conninfo`, or NULL; free()d by the caller. */
static char *password_of(const char *conninfo, int *parsed)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    char *pw = NULL;
    PQfreemem(err);
    *parsed = opts != NULL;
    if (!opts)
        return NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val && o->val[0])
            pw = strdup(o->val);
    PQconninfoFree(opts);
    return pw;
}

static size_t occurrences(const char *s, const char *word)
{
    size_t n = 0, len = strlen(word);
    for (const char *p = strstr(s, word); p; p = strstr(p + len, word))
        n++;
    return n;
}

/* `out` with every mask replaced by one byte that `pw` does not contain, so
 * that a password made of '*' or ':' does not count the mask as a leak. */
static char *without_masks(const char *out, const char *pw)
{
    char sentinel = 1, *copy = strdup(out), *w = copy;
    size_t mlen = strlen(MASKED_PASSWORD);
    while (strchr(pw, sentinel) && sentinel < 127)
        sentinel++;
    for (const char *r = out; *r;) {
        if (strncmp(r, MASKED_PASSWORD, mlen) == 0) {
            *w++ = sentinel;
            r += mlen;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    return copy;
}

static void check_mask(const char *conninfo)
{
    size_t cap = strlen(conninfo) * 2 + 64;
    char *out = malloc(cap);
    char small[8];
    assert(mask_conninfo(conninfo, out, cap) == 0);
    assert(strlen(out) < cap);
    mask_conninfo(conninfo, small, sizeof small);
    assert(memchr(small, '\0', sizeof small));
    int parsed, masked_parsed;
    char *pw = password_of(conninfo, &parsed);
    if (pw) {
        char *after = password_of(out, &masked_parsed);
        if (masked_parsed)
            assert(!after || strcmp(after, MASKED_PASSWORD) == 0);
        else {
            char *bare = without_masks(out, pw);
            size_t left = occurrences(bare, pw);
            assert(left == 0 || left < occurrences(conninfo, pw));
            free(bare);
        }
        free(after);
    }
    free(pw);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    char *buf = malloc(size + 1);
    memcpy(buf, in, size);
    buf[size] = '\0';
    char *argv[34] = {"pgfan"};
    int argc = 1;
    for (char *p = buf; p <= buf + size && argc < 33; p += strlen(p) + 1)
        argv[argc++] = p;
    argv[argc] = NULL;
    for (int i = 1; i < argc; i++)
        check_mask(argv[i]);
    cli_options o;
    char err[256];
    err[0] = '\0';
    if (parse_options(argc, argv, &o, err, sizeof err) != 0)
        assert(err[0] != '\0' && memchr(err, '\0', sizeof err));
    else
        assert(o.ntargets <= MAX_TARGETS);
    free(buf);
    return 0;
}

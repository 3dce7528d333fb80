#include "ident.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *skip_spaces(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n')
        p++;
    return p;
}

/* One name at *pp; advances past it.  Returns a malloc'd name or NULL. */
static char *one_identifier(const char **pp, char *err, size_t errlen)
{
    const char *p = skip_spaces(*pp);
    size_t cap = strlen(p) + 1, n = 0;
    char *out = malloc(cap);
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (*p == '"') {
        for (p++;; p++) {
            if (!*p) {
                snprintf(err, errlen, "unterminated quoted name in --columns");
                free(out);
                return NULL;
            }
            if (*p == '"' && p[1] == '"') {
                out[n++] = *p++;
                continue;
            }
            if (*p == '"')
                break;
            out[n++] = *p;
        }
        p++;
    } else {
        /* As PostgreSQL folds unquoted names: ASCII letters only. */
        for (; *p && *p != ',' && *p != ' ' && *p != '\t' && *p != '\n'; p++)
            out[n++] = *p >= 'A' && *p <= 'Z' ? (char)(*p + ('a' - 'A')) : *p;
    }
    out[n] = '\0';
    p = skip_spaces(p);
    if (n == 0 || (*p && *p != ',')) {
        snprintf(err, errlen, "--columns: %s",
                 n == 0 ? "an empty column name" : "a name must be followed by a comma");
        free(out);
        return NULL;
    }
    *pp = p;
    return out;
}

int split_identifiers(const char *list, char **names, size_t max, char *err,
                      size_t errlen)
{
    size_t n = 0;
    const char *p = list;
    for (;;) {
        if (n == max) {
            snprintf(err, errlen, "--columns names more than %zu columns", max);
            free_identifiers(names, n);
            return -1;
        }
        char *name = one_identifier(&p, err, errlen);
        if (!name) {
            free_identifiers(names, n);
            return -1;
        }
        names[n++] = name;
        if (*p != ',')
            return (int)n;
        p++;
    }
}

void free_identifiers(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
}

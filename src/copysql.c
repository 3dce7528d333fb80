#include "copysql.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

enum tok_kind { TOK_END, TOK_WORD, TOK_STRING, TOK_QUOTED_IDENT, TOK_PUNCT, TOK_ERROR };

typedef struct lexer {
    const char *p;
    char word[64]; /* lower-cased word, or the string literal's first bytes */
    char punct;
    int depth;
} lexer;

static void skip_space_and_comments(lexer *lx)
{
    for (;;) {
        while (isspace((unsigned char)*lx->p))
            lx->p++;
        if (lx->p[0] == '-' && lx->p[1] == '-') {
            while (*lx->p && *lx->p != '\n')
                lx->p++;
        } else if (lx->p[0] == '/' && lx->p[1] == '*') {
            int nest = 0;
            do {
                if (lx->p[0] == '/' && lx->p[1] == '*') {
                    nest++;
                    lx->p += 2;
                } else if (lx->p[0] == '*' && lx->p[1] == '/') {
                    nest--;
                    lx->p += 2;
                } else if (*lx->p) {
                    lx->p++;
                }
            } while (nest > 0 && *lx->p);
        } else {
            return;
        }
    }
}

/* Skips a quoted run closed by `q`, where a doubled `q` is literal. */
static int skip_quoted(lexer *lx, char q, int backslash, size_t keep)
{
    size_t n = 0;
    lx->p++;
    for (;;) {
        if (!*lx->p)
            return -1;
        if (backslash && *lx->p == '\\' && lx->p[1]) {
            lx->p += 2;
            continue;
        }
        if (*lx->p == q) {
            if (lx->p[1] == q) {
                lx->p += 2;
                continue;
            }
            lx->p++;
            break;
        }
        if (n + 1 < keep)
            lx->word[n++] = (char)tolower((unsigned char)*lx->p);
        lx->p++;
    }
    lx->word[n] = '\0';
    return 0;
}

/* $tag$ ... $tag$ */
static int skip_dollar_quoted(lexer *lx)
{
    const char *start = lx->p;
    const char *q = lx->p + 1;
    while (isalnum((unsigned char)*q) || *q == '_')
        q++;
    if (*q != '$')
        return 0;
    size_t taglen = (size_t)(q - start) + 1;
    const char *end;
    for (end = q + 1; *end; end++)
        if (strncmp(end, start, taglen) == 0)
            break;
    if (!*end)
        return -1;
    lx->p = end + taglen;
    lx->word[0] = '\0';
    return 1;
}

static enum tok_kind next_token(lexer *lx)
{
    skip_space_and_comments(lx);
    char c = *lx->p;
    if (!c)
        return TOK_END;
    if ((c == 'e' || c == 'E') && lx->p[1] == '\'') {
        lx->p++;
        return skip_quoted(lx, '\'', 1, sizeof lx->word) ? TOK_ERROR : TOK_STRING;
    }
    if (isalpha((unsigned char)c) || c == '_' || (unsigned char)c >= 0x80) {
        size_t n = 0;
        while (isalnum((unsigned char)*lx->p) || *lx->p == '_' || *lx->p == '$' ||
               (unsigned char)*lx->p >= 0x80) {
            if (n + 1 < sizeof lx->word)
                lx->word[n++] = (char)tolower((unsigned char)*lx->p);
            lx->p++;
        }
        lx->word[n] = '\0';
        return TOK_WORD;
    }
    if (c == '\'')
        return skip_quoted(lx, '\'', 0, sizeof lx->word) ? TOK_ERROR : TOK_STRING;
    if (c == '"')
        return skip_quoted(lx, '"', 0, 1) ? TOK_ERROR : TOK_QUOTED_IDENT;
    if (c == '$') {
        int rc = skip_dollar_quoted(lx);
        if (rc < 0)
            return TOK_ERROR;
        if (rc > 0)
            return TOK_STRING;
    }
    lx->punct = c;
    lx->p++;
    if (c == '(')
        lx->depth++;
    else if (c == ')')
        lx->depth--;
    return TOK_PUNCT;
}

static int format_from_word(const char *w, pgfan_format *format)
{
    if (strcmp(w, "csv") == 0)
        *format = PGFAN_FORMAT_CSV;
    else if (strcmp(w, "binary") == 0)
        *format = PGFAN_FORMAT_BINARY;
    else if (strcmp(w, "text") == 0)
        *format = PGFAN_FORMAT_TEXT;
    else
        return -1;
    return 0;
}

int fan_copysql_check(const char *sql, enum fan_copy_direction dir, pgfan_format *format,
                      char *err, size_t errlen)
{
    const char *want_kw = dir == FAN_COPY_TO_STDOUT ? "to" : "from";
    const char *want_target = dir == FAN_COPY_TO_STDOUT ? "stdout" : "stdin";
    const char *want =
        dir == FAN_COPY_TO_STDOUT ? "COPY ... TO STDOUT" : "COPY ... FROM STDIN";
    lexer lx = {.p = sql};
    enum tok_kind k;
    int direction_seen = 0, after_format = 0, ended = 0;
    char prev[64] = "copy";

    *format = PGFAN_FORMAT_TEXT;
    if (!sql) {
        snprintf(err, errlen, "no statement given; expected %s", want);
        return -1;
    }
    k = next_token(&lx);
    if (k != TOK_WORD || strcmp(lx.word, "copy") != 0) {
        snprintf(err, errlen, "not a COPY statement; expected %s", want);
        return -1;
    }
    while ((k = next_token(&lx)) != TOK_END) {
        if (k == TOK_ERROR) {
            snprintf(err, errlen, "unterminated quote or comment in the statement");
            return -1;
        }
        if (ended) {
            snprintf(err, errlen, "more than one statement given; expected only %s",
                     want);
            return -1;
        }
        if (k == TOK_PUNCT && lx.punct == ';' && lx.depth == 0) {
            ended = 1;
            continue;
        }
        if (after_format && (k == TOK_WORD || k == TOK_STRING)) {
            if (format_from_word(lx.word, format) != 0) {
                snprintf(err, errlen, "unknown COPY format \"%s\"", lx.word);
                return -1;
            }
            after_format = 0;
        } else if (k == TOK_WORD && lx.depth == 0 && !direction_seen &&
                   strcmp(prev, want_kw) == 0) {
            if (strcmp(lx.word, want_target) != 0) {
                snprintf(err, errlen, "COPY %s %s is not supported; expected %s", want_kw,
                         lx.word, want);
                return -1;
            }
            direction_seen = 1;
        } else if (k == TOK_WORD && lx.depth <= 1 && direction_seen) {
            if (strcmp(lx.word, "format") == 0)
                after_format = 1;
            else if (strcmp(lx.word, "csv") == 0 || strcmp(lx.word, "binary") == 0)
                format_from_word(lx.word, format);
        } else if (k == TOK_WORD && lx.depth == 0 && !direction_seen &&
                   strcmp(prev, "copy") == 0 && strcmp(lx.word, "binary") == 0) {
            *format = PGFAN_FORMAT_BINARY; /* COPY BINARY table ... */
        }
        if (k == TOK_WORD && lx.depth == 0)
            snprintf(prev, sizeof prev, "%s", lx.word);
        else
            prev[0] = '\0';
    }
    if (!direction_seen) {
        const char *other = dir == FAN_COPY_TO_STDOUT ? "FROM" : "TO";
        snprintf(err, errlen, "COPY statement is not %s (a COPY %s cannot be used here)",
                 want, other);
        return -1;
    }
    return 0;
}

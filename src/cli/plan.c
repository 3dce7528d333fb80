#include "plan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COLUMNS 1600 /* PostgreSQL's own limit */

typedef struct columns {
    size_t n;
    char *name[MAX_COLUMNS];   /* as stored */
    char *quoted[MAX_COLUMNS]; /* quote_ident */
    char *type[MAX_COLUMNS];   /* format_type */
} columns;

typedef struct relation {
    char *qualified; /* schema.name, quoted */
    char *oid;
    double reltuples;
} relation;

void fail_set(cli_fail *f, int who, const char *sqlstate, const char *fmt, ...)
{
    va_list ap;
    memset(f, 0, sizeof *f);
    f->who = who;
    snprintf(f->sqlstate, sizeof f->sqlstate, "%s", sqlstate ? sqlstate : "");
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
}

void fail_from_result(cli_fail *f, int who, const PGresult *res, PGconn *conn)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!msg)
        msg = PQerrorMessage(conn);
    fail_set(f, who, state, "%s", msg);
    size_t n = strlen(f->message);
    while (n > 0 && f->message[n - 1] == '\n')
        f->message[--n] = '\0';
}

static void columns_free(columns *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->name[i]);
        free(c->quoted[i]);
        free(c->type[i]);
    }
    c->n = 0;
}

static int column_index(const columns *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->name[i], name) == 0)
            return (int)i;
    return -1;
}

/* Resolves a table name as SQL would (search_path, quoting) without ever
 * splicing the user's text into a statement. */
static int resolve(PGconn *c, const char *name, int who, relation *rel, cli_fail *f)
{
    const char *params[1] = {name};
    PGresult *res =
        PQexecParams(c,
                     "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
                     "c.oid, c.reltuples "
                     "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE c.oid = to_regclass($1)",
                     1, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fail_from_result(f, who, res, c);
        rc = -1;
    } else if (PQntuples(res) == 0) {
        fail_set(f, who, "42P01", "relation \"%s\" does not exist", name);
        rc = -1;
    } else {
        rel->qualified = strdup(PQgetvalue(res, 0, 0));
        rel->oid = strdup(PQgetvalue(res, 0, 1));
        rel->reltuples = atof(PQgetvalue(res, 0, 2));
    }
    PQclear(res);
    return rc;
}

static int fill_columns(PGresult *res, columns *out)
{
    int n = PQntuples(res);
    if (n > MAX_COLUMNS)
        return -1;
    for (int i = 0; i < n; i++) {
        out->name[i] = strdup(PQgetvalue(res, i, 0));
        out->quoted[i] = strdup(PQgetvalue(res, i, 1));
        out->type[i] = strdup(PQgetvalue(res, i, 2));
        out->n = (size_t)i + 1;
    }
    return 0;
}

/* The table's columns that COPY can read and write, in order. */
static int table_columns(PGconn *c, const relation *rel, int who, columns *out,
                         cli_fail *f)
{
    const char *params[1] = {rel->oid};
    PGresult *res = PQexecParams(
        c,
        "SELECT attname, quote_ident(attname), format_type(atttypid, atttypmod) "
        "FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped "
        "AND attgenerated = '' ORDER BY attnum",
        1, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || fill_columns(res, out) != 0) {
        fail_from_result(f, who, res, c);
        rc = -1;
    }
    PQclear(res);
    return rc;
}

/* The result columns of a query, described without running it. */
static int query_columns(PGconn *c, const char *query, columns *out, cli_fail *f)
{
    PGresult *res = PQprepare(c, "", query, 0, NULL);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        fail_from_result(f, WHO_SOURCE, res, c);
        PQclear(res);
        return -1;
    }
    PQclear(res);
    res = PQdescribePrepared(c, "");
    if (PQresultStatus(res) != PGRES_COMMAND_OK || PQnfields(res) == 0 ||
        PQnfields(res) > MAX_COLUMNS) {
        if (PQresultStatus(res) == PGRES_COMMAND_OK)
            fail_set(f, WHO_SOURCE, NULL, "the query returns no columns");
        else
            fail_from_result(f, WHO_SOURCE, res, c);
        PQclear(res);
        return -1;
    }
    int n = PQnfields(res);
    size_t cap = (size_t)n * 24 + 8;
    char *oids = malloc(cap), *mods = malloc(cap);
    size_t o = 0, m = 0;
    oids[o++] = '{';
    mods[m++] = '{';
    for (int i = 0; i < n; i++) {
        o += (size_t)snprintf(oids + o, cap - o, "%s%u", i ? "," : "", PQftype(res, i));
        m += (size_t)snprintf(mods + m, cap - m, "%s%d", i ? "," : "", PQfmod(res, i));
    }
    snprintf(oids + o, cap - o, "}");
    snprintf(mods + m, cap - m, "}");
    columns names = {0};
    for (int i = 0; i < n; i++) {
        const char *name = PQfname(res, i);
        char *q = PQescapeIdentifier(c, name, strlen(name));
        names.name[i] = strdup(name);
        names.quoted[i] = strdup(q ? q : name);
        PQfreemem(q);
        names.n = (size_t)i + 1;
    }
    PQclear(res);
    const char *params[2] = {oids, mods};
    res = PQexecParams(c,
                       "SELECT format_type(t, m) FROM unnest($1::oid[], $2::int[]) "
                       "WITH ORDINALITY AS x(t, m, i) ORDER BY i",
                       2, NULL, params, NULL, NULL, 0);
    free(oids);
    free(mods);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != n) {
        fail_from_result(f, WHO_SOURCE, res, c);
        PQclear(res);
        columns_free(&names);
        return -1;
    }
    for (int i = 0; i < n; i++)
        names.type[i] = strdup(PQgetvalue(res, i, 0));
    PQclear(res);
    *out = names;
    return 0;
}

/* Keeps only the columns named in --columns, in that order. */
static int select_columns(const char *list, columns *cols, int who, const char *table,
                          cli_fail *f)
{
    columns picked = {0};
    char *copy = strdup(list), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        size_t len = strlen(tok);
        while (len > 0 && tok[len - 1] == ' ')
            tok[--len] = '\0';
        int i = column_index(cols, tok);
        if (i < 0 || picked.n == MAX_COLUMNS) {
            fail_set(f, who, "42703", "column \"%s\" of %s does not exist", tok, table);
            rc = -1;
            break;
        }
        picked.name[picked.n] = strdup(cols->name[i]);
        picked.quoted[picked.n] = strdup(cols->quoted[i]);
        picked.type[picked.n] = strdup(cols->type[i]);
        picked.n++;
    }
    free(copy);
    if (rc == 0 && picked.n == 0) {
        fail_set(f, who, NULL, "--columns names no column");
        rc = -1;
    }
    columns_free(cols);
    *cols = picked;
    return rc;
}

static char *column_list(const columns *c)
{
    size_t len = 3;
    for (size_t i = 0; i < c->n; i++)
        len += strlen(c->quoted[i]) + 2;
    char *s = malloc(len), *p = s;
    *p++ = '(';
    for (size_t i = 0; i < c->n; i++)
        p += sprintf(p, "%s%s", i ? ", " : "", c->quoted[i]);
    strcpy(p, ")");
    return s;
}

static char *format_sql(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format_sql(const char *fmt, ...)
{
    va_list ap, aq;
    va_start(ap, fmt);
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    char *s = malloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Checks one target table against the source's columns; returns whether
 * every column type is the same (so binary COPY is safe). */
static int check_target(PGconn *c, int who, const char *name, const columns *want,
                        relation *rel, int *types_equal, cli_fail *f)
{
    columns have = {0};
    if (resolve(c, name, who, rel, f) != 0 || table_columns(c, rel, who, &have, f) != 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < want->n && rc == 0; i++) {
        int j = column_index(&have, want->name[i]);
        if (j < 0) {
            fail_set(f, who, "42703", "table %s has no column \"%s\"", rel->qualified,
                     want->name[i]);
            rc = -1;
        } else if (!want->type[i] || strcmp(have.type[j], want->type[i]) != 0) {
            *types_equal = 0;
        }
    }
    if (rc == 0 && want->n == 0 && have.n == 0) {
        fail_set(f, who, NULL, "table %s has no columns to copy into", rel->qualified);
        rc = -1;
    }
    columns_free(&have);
    return rc;
}

static const char *format_keyword(pgfan_format f)
{
    return f == PGFAN_FORMAT_BINARY ? "binary" : f == PGFAN_FORMAT_CSV ? "csv" : "text";
}

int plan_copy(const cli_options *o, PGconn *source, PGconn *const targets[], plan *p,
              cli_fail *f)
{
    columns cols = {0};
    relation src = {0};
    int rc = -1, types_equal = 1;
    memset(p, 0, sizeof *p);
    p->estimated_rows = -1;

    if (o->kind == SOURCE_TABLE) {
        if (resolve(source, o->table, WHO_SOURCE, &src, f) != 0 ||
            table_columns(source, &src, WHO_SOURCE, &cols, f) != 0)
            goto out;
        if (o->columns && select_columns(o->columns, &cols, WHO_SOURCE, src.qualified, f))
            goto out;
        p->estimated_rows = src.reltuples;
    } else if (o->kind == SOURCE_QUERY) {
        if (query_columns(source, o->query, &cols, f) != 0)
            goto out;
    } else {
        types_equal = 0; /* unknown: an opaque COPY statement */
    }

    for (size_t i = 0; i < o->ntargets && !o->copy_in; i++) {
        relation rel = {0};
        const char *name = o->into ? o->into : o->table;
        int ok =
            check_target(targets[i], (int)i, name, &cols, &rel, &types_equal, f) == 0;
        p->target_table[i] = rel.qualified;
        free(rel.oid);
        if (!ok)
            goto out;
    }

    switch (o->format) {
    case FORMAT_AUTO:
        p->format = types_equal && !o->copy_in && cols.n > 0 ? PGFAN_FORMAT_BINARY
                                                             : PGFAN_FORMAT_TEXT;
        break;
    case FORMAT_TEXT:
        p->format = PGFAN_FORMAT_TEXT;
        break;
    case FORMAT_CSV:
        p->format = PGFAN_FORMAT_CSV;
        break;
    case FORMAT_BINARY:
        p->format = PGFAN_FORMAT_BINARY;
        break;
    }
    const char *fmt = format_keyword(p->format);
    char *list = cols.n ? column_list(&cols) : strdup("");

    if (o->kind == SOURCE_TABLE)
        p->copy_out =
            format_sql("COPY %s %s TO STDOUT (FORMAT %s)", src.qualified, list, fmt);
    else if (o->kind == SOURCE_QUERY)
        p->copy_out = format_sql("COPY (%s) TO STDOUT (FORMAT %s)", o->query, fmt);
    else
        p->copy_out = strdup(o->copy_out);
    for (size_t i = 0; i < o->ntargets; i++)
        p->copy_in[i] = o->copy_in ? strdup(o->copy_in)
                                   : format_sql("COPY %s %s FROM STDIN (FORMAT %s%s)",
                                                p->target_table[i], list, fmt,
                                                o->truncate ? ", FREEZE" : "");
    free(list);
    rc = 0;
out:
    columns_free(&cols);
    free(src.qualified);
    free(src.oid);
    return rc;
}

void plan_free(plan *p)
{
    free(p->copy_out);
    for (size_t i = 0; i < MAX_TARGETS; i++) {
        free(p->copy_in[i]);
        free(p->target_table[i]);
    }
    memset(p, 0, sizeof *p);
}

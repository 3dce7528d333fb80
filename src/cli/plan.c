#include "plan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ident.h"
#include "typesig.h"

#define MAX_COLUMNS 1600 /* PostgreSQL's own limit */
#define SIG_MAX     4096

typedef struct columns {
    size_t n;
    char *name[MAX_COLUMNS];   /* as stored */
    char *quoted[MAX_COLUMNS]; /* quote_ident */
    char *type[MAX_COLUMNS];   /* format_type */
    Oid typoid[MAX_COLUMNS];
    char generated[MAX_COLUMNS];
} columns;

typedef struct relation {
    char *qualified; /* schema.name, quoted */
    char *oid;
    char relkind;
    double reltuples;
    char *schema; /* as stored */
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

static void relation_free(relation *r)
{
    free(r->qualified);
    free(r->oid);
    free(r->schema);
    memset(r, 0, sizeof *r);
}

static int column_index(const columns *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->name[i], name) == 0)
            return (int)i;
    return -1;
}

static void column_add(columns *c, const char *name, const char *quoted, const char *type,
                       Oid typoid, int generated)
{
    size_t i = c->n++;
    c->name[i] = strdup(name);
    c->quoted[i] = strdup(quoted);
    c->type[i] = strdup(type ? type : "");
    c->typoid[i] = typoid;
    c->generated[i] = (char)generated;
}

/*
 * Resolves a table name as SQL would (double quotes; search_path unless
 * the name is qualified), never splicing the user's text into a statement.
 * An unqualified name is looked up in `schema` when that is not NULL.
 */
static int resolve(PGconn *c, const char *name, const char *schema, int who,
                   relation *rel, cli_fail *f)
{
    const char *params[2] = {name, schema};
    PGresult *res = PQexecParams(
        c,
        "SELECT x.name, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.oid, "
        "c.relkind, c.reltuples, n.nspname "
        "FROM (SELECT CASE WHEN $2::text IS NOT NULL AND "
        "array_length(parse_ident($1), 1) = 1 THEN quote_ident($2) || '.' || $1 "
        "ELSE $1 END AS name) x "
        "LEFT JOIN pg_class c ON c.oid = to_regclass(x.name) "
        "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace",
        2, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        fail_from_result(f, who, res, c);
        rc = -1;
    } else if (PQgetisnull(res, 0, 2)) {
        fail_set(f, who, "42P01", "relation \"%s\" does not exist",
                 PQgetvalue(res, 0, 0));
        rc = -1;
    } else {
        rel->qualified = strdup(PQgetvalue(res, 0, 1));
        rel->oid = strdup(PQgetvalue(res, 0, 2));
        rel->relkind = PQgetvalue(res, 0, 3)[0];
        rel->reltuples = atof(PQgetvalue(res, 0, 4));
        rel->schema = strdup(PQgetvalue(res, 0, 5));
    }
    PQclear(res);
    return rc;
}

/* Every column of a table, generated ones marked, in order. */
static int table_columns(PGconn *c, const relation *rel, int who, columns *out,
                         cli_fail *f)
{
    const char *params[1] = {rel->oid};
    PGresult *res = PQexecParams(
        c,
        PQserverVersion(c) >= 120000
            ? "SELECT attname, quote_ident(attname), format_type(atttypid, atttypmod), "
              "atttypid, attgenerated <> '' FROM pg_attribute WHERE attrelid = $1::oid "
              "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            : "SELECT attname, quote_ident(attname), format_type(atttypid, atttypmod), "
              "atttypid, false FROM pg_attribute WHERE attrelid = $1::oid "
              "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        1, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) > MAX_COLUMNS) {
        fail_from_result(f, who, res, c);
        rc = -1;
    } else {
        for (int i = 0; i < PQntuples(res); i++)
            column_add(out, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                       PQgetvalue(res, i, 2),
                       (Oid)strtoul(PQgetvalue(res, i, 3), NULL, 10),
                       PQgetvalue(res, i, 4)[0] == 't');
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
    int n = PQnfields(res), rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const char *name = PQfname(res, i);
        char *q = PQescapeIdentifier(c, name, strlen(name));
        char oid[16], mod[16];
        snprintf(oid, sizeof oid, "%u", PQftype(res, i));
        snprintf(mod, sizeof mod, "%d", PQfmod(res, i));
        const char *params[2] = {oid, mod};
        PGresult *t = PQexecParams(c, "SELECT format_type($1::oid, $2::int)", 2, NULL,
                                   params, NULL, NULL, 0);
        if (PQresultStatus(t) != PGRES_TUPLES_OK) {
            fail_from_result(f, WHO_SOURCE, t, c);
            rc = -1;
        } else {
            column_add(out, name, q ? q : name, PQgetvalue(t, 0, 0), PQftype(res, i), 0);
        }
        PQclear(t);
        PQfreemem(q);
    }
    PQclear(res);
    return rc;
}

/* Appends ", name" to a note. */
static void note_name(char *note, size_t len, const char *name)
{
    size_t used = strlen(note);
    snprintf(note + used, len - used, "%s\"%s\"", used ? ", " : "", name);
}

/*
 * The source table's columns that are copied: generated columns are left
 * out (each target computes its own), --columns picks and orders them.
 */
static int source_table_columns(const cli_options *o, PGconn *c, const relation *rel,
                                columns *out, plan *p, cli_fail *f)
{
    columns all = {0};
    char generated[400] = "";
    if (table_columns(c, rel, WHO_SOURCE, &all, f) != 0)
        return -1;
    int rc = 0;
    if (o->columns) {
        char *names[MAX_COLUMNS], err[200];
        int n = split_identifiers(o->columns, names, MAX_COLUMNS, err, sizeof err);
        if (n < 0) {
            fail_set(f, WHO_NONE, NULL, "%s", err);
            rc = -1;
        }
        for (int k = 0; k < n && rc == 0; k++) {
            int i = column_index(&all, names[k]);
            if (i < 0) {
                fail_set(f, WHO_SOURCE, "42703", "column \"%s\" of %s does not exist",
                         names[k], rel->qualified);
                rc = -1;
            } else if (all.generated[i]) {
                fail_set(
                    f, WHO_SOURCE, "42P10",
                    "column \"%s\" of %s is a generated column: each target computes "
                    "its own value, so it cannot be copied",
                    names[k], rel->qualified);
                rc = -1;
            } else if (column_index(out, names[k]) >= 0) {
                fail_set(f, WHO_NONE, "42701", "--columns names \"%s\" twice", names[k]);
                rc = -1;
            } else {
                column_add(out, all.name[i], all.quoted[i], all.type[i], all.typoid[i],
                           0);
            }
        }
        if (n > 0)
            free_identifiers(names, (size_t)n);
    } else {
        for (size_t i = 0; i < all.n; i++) {
            if (all.generated[i])
                note_name(generated, sizeof generated, all.name[i]);
            else
                column_add(out, all.name[i], all.quoted[i], all.type[i], all.typoid[i],
                           0);
        }
        if (generated[0])
            snprintf(p->notes, sizeof p->notes,
                     "generated columns of %s are not copied (each target computes "
                     "them): %s",
                     rel->qualified, generated);
    }
    columns_free(&all);
    return rc;
}

/*
 * With --query the result columns go to the target columns of the same
 * name, or, with --columns, to the listed target columns in order.
 */
static int destination_names(const cli_options *o, const columns *src, columns *dest,
                             cli_fail *f)
{
    if (o->kind != SOURCE_QUERY || !o->columns) {
        for (size_t i = 0; i < src->n; i++)
            column_add(dest, src->name[i], src->quoted[i], src->type[i], 0, 0);
        return 0;
    }
    char *names[MAX_COLUMNS], err[200];
    int n = split_identifiers(o->columns, names, MAX_COLUMNS, err, sizeof err);
    if (n < 0) {
        fail_set(f, WHO_NONE, NULL, "%s", err);
        return -1;
    }
    int rc = 0;
    if ((size_t)n != src->n) {
        fail_set(f, WHO_NONE, NULL,
                 "--columns names %d columns but the query returns %zu: give one target "
                 "column for each result column, in order",
                 n, src->n);
        rc = -1;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        char quoted[300];
        snprintf(quoted, sizeof quoted, "\"");
        size_t q = 1;
        for (const char *s = names[i]; *s && q < sizeof quoted - 3; s++) {
            if (*s == '"')
                quoted[q++] = '"';
            quoted[q++] = *s;
        }
        quoted[q++] = '"';
        quoted[q] = '\0';
        column_add(dest, names[i], quoted, NULL, 0, 0);
    }
    free_identifiers(names, (size_t)n);
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

char *format_sql(const char *fmt, ...)
{
    va_list ap, aq;
    va_start(ap, fmt);
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s)
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* What binary needs and why it cannot be had: the first column whose
 * binary form is not provably the same everywhere. */
typedef struct binary_check {
    int wanted;       /* auto or binary: compare types at all */
    int safe;         /* so far every column is the same everywhere */
    char reason[640]; /* the first reason it is not */
    char *src_sig[MAX_COLUMNS];
} binary_check;

static int source_signatures(PGconn *c, const columns *src, binary_check *b, cli_fail *f)
{
    char why[400];
    for (size_t i = 0; i < src->n && b->wanted; i++) {
        b->src_sig[i] = malloc(SIG_MAX);
        int rc =
            type_signature(c, src->typoid[i], b->src_sig[i], SIG_MAX, why, sizeof why);
        if (rc < 0) {
            fail_set(f, WHO_SOURCE, NULL, "%s", why);
            return -1;
        }
        if (rc > 0 && b->safe) {
            b->safe = 0;
            snprintf(b->reason, sizeof b->reason, "column \"%s\": %s", src->name[i], why);
        }
    }
    return 0;
}

/* Compares target column j's binary form with source column i's. */
static int compare_binary(PGconn *c, int who, const columns *src, size_t i,
                          const columns *have, int j, binary_check *b, cli_fail *f)
{
    char sig[SIG_MAX], why[400];
    if (!b->wanted || !b->safe)
        return 0;
    int rc = type_signature(c, have->typoid[j], sig, sizeof sig, why, sizeof why);
    if (rc < 0) {
        fail_set(f, who, NULL, "%s", why);
        return -1;
    }
    if (rc > 0) {
        b->safe = 0;
        snprintf(b->reason, sizeof b->reason, "column \"%s\" on target %d: %s",
                 have->name[j], who + 1, why);
    } else if (strcmp(sig, b->src_sig[i]) != 0) {
        b->safe = 0;
        snprintf(b->reason, sizeof b->reason,
                 "column \"%s\" is %s on the source but %s on target %d, whose binary "
                 "forms differ",
                 src->name[i], src->type[i], have->type[j], who + 1);
    }
    return 0;
}

/* Checks one target table against the columns copied into it. */
static int check_target(const cli_options *o, PGconn *c, int who, const relation *rel,
                        const columns *src, const columns *dest, binary_check *b,
                        cli_fail *f)
{
    columns have = {0};
    if (table_columns(c, rel, who, &have, f) != 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < dest->n && rc == 0; i++) {
        int j = column_index(&have, dest->name[i]);
        if (j < 0 && o->kind == SOURCE_QUERY) {
            fail_set(
                f, who, "42703",
                "table %s has no column \"%s\" (the query's columns go to the target "
                "columns of the same name: alias them in the query, name the target "
                "columns with --columns, or use --copy-in)",
                rel->qualified, dest->name[i]);
            rc = -1;
        } else if (j < 0) {
            fail_set(f, who, "42703", "table %s has no column \"%s\"", rel->qualified,
                     dest->name[i]);
            rc = -1;
        } else if (have.generated[j]) {
            fail_set(
                f, who, "42P10",
                "column \"%s\" of %s is a generated column on this target: it computes "
                "its own values (leave the column out with --columns)",
                dest->name[i], rel->qualified);
            rc = -1;
        } else {
            rc = compare_binary(c, who, src, i, &have, j, b, f);
        }
    }
    if (rc == 0 && dest->n == 0) {
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

/* Chooses the format; an explicit binary that cannot work is refused. */
static int choose_format(const cli_options *o, const binary_check *b, plan *p,
                         cli_fail *f)
{
    switch (o->format) {
    case FORMAT_AUTO:
        p->format = b->safe && !o->copy_in && o->kind != SOURCE_COPY ? PGFAN_FORMAT_BINARY
                                                                     : PGFAN_FORMAT_TEXT;
        if (p->format == PGFAN_FORMAT_TEXT && b->reason[0])
            snprintf(p->format_reason, sizeof p->format_reason, "%s", b->reason);
        return 0;
    case FORMAT_TEXT:
        p->format = PGFAN_FORMAT_TEXT;
        return 0;
    case FORMAT_CSV:
        p->format = PGFAN_FORMAT_CSV;
        return 0;
    case FORMAT_BINARY:
        p->format = PGFAN_FORMAT_BINARY;
        if (!b->safe) {
            fail_set(f, WHO_NONE, NULL, "--format binary cannot copy faithfully: %s",
                     b->reason);
            return -1;
        }
        return 0;
    }
    return 0;
}

/* The rows of a partitioned table live in its partitions. */
static double estimate_rows(PGconn *c, const relation *rel)
{
    if (rel->relkind != 'p' || PQserverVersion(c) < 120000)
        return rel->reltuples;
    const char *params[1] = {rel->oid};
    PGresult *res =
        PQexecParams(c,
                     "SELECT sum(greatest(c.reltuples, 0)) FROM "
                     "pg_partition_tree($1::oid) t JOIN pg_class c ON c.oid = "
                     "t.relid WHERE t.isleaf",
                     1, NULL, params, NULL, NULL, 0);
    double n = PQresultStatus(res) == PGRES_TUPLES_OK && !PQgetisnull(res, 0, 0)
                   ? atof(PQgetvalue(res, 0, 0))
                   : -1;
    PQclear(res);
    return n;
}

static char *one_value(PGconn *c, const char *sql, int nparams, const char *const *params)
{
    PGresult *res = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    char *v = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                      !PQgetisnull(res, 0, 0)
                  ? strdup(PQgetvalue(res, 0, 0))
                  : NULL;
    PQclear(res);
    return v;
}

/* The sequences owned by copied columns (serial, identity), matched with
 * the ones the same columns own on each target. */
static void plan_sequences(const cli_options *o, PGconn *source, PGconn *const targets[],
                           const relation *src, const columns *cols, plan *p)
{
    if (o->kind != SOURCE_TABLE || o->no_sequences || o->copy_in)
        return;
    for (size_t i = 0; i < cols->n && p->nsequences < MAX_SEQUENCES; i++) {
        const char *params[2] = {src->qualified, cols->name[i]};
        char *seq = one_value(source, "SELECT pg_get_serial_sequence($1, $2)", 2, params);
        if (!seq)
            continue;
        sequence_pair *s = &p->sequences[p->nsequences++];
        s->column = strdup(cols->name[i]);
        s->source = seq;
        for (size_t t = 0; t < o->ntargets; t++) {
            const char *tp[2] = {p->target_table[t], cols->name[i]};
            s->target[t] =
                one_value(targets[t], "SELECT pg_get_serial_sequence($1, $2)", 2, tp);
        }
    }
}

/* The statements for one target: COPY FROM, and TRUNCATE with --truncate.
 * A partitioned table is truncated whole (its partitions are what the copy
 * refills) and cannot be frozen; an inheritance parent is truncated ONLY,
 * as its own rows are all the copy refills.  With --load-fresh, COPY FROM
 * with FREEZE too, for the transaction to choose (main.c). */
static void target_statements(const cli_options *o, size_t i, char relkind,
                              const char *list, plan *p)
{
    const char *fmt = format_keyword(p->format);
    int freeze = o->truncate && relkind == 'r';
    if (o->copy_in) {
        p->copy_in[i] = strdup(o->copy_in);
        return;
    }
    p->copy_in[i] = format_sql("COPY %s %s FROM STDIN (FORMAT %s%s)", p->target_table[i],
                               list, fmt, freeze ? ", FREEZE" : "");
    if (o->truncate)
        p->truncate_sql[i] = format_sql("TRUNCATE %s%s", relkind == 'p' ? "" : "ONLY ",
                                        p->target_table[i]);
    else if (o->load_fresh && relkind == 'r')
        p->copy_in_freeze[i] = format_sql("COPY %s %s FROM STDIN (FORMAT %s, FREEZE)",
                                          p->target_table[i], list, fmt);
}

/* Which server and database a session is in: the postmaster's start time
 * (to the microsecond) and the database's OID. */
static char *database_identity(PGconn *c)
{
    return one_value(c,
                     "SELECT pg_postmaster_start_time()::text || '/' || oid FROM "
                     "pg_database WHERE datname = current_database()",
                     0, NULL);
}

/* A target that is the source table itself would double it (or, with
 * --truncate, empty it and deadlock against its own read). */
static int refuse_self_copy(PGconn *source, PGconn *target, int who, const relation *src,
                            const relation *rel, cli_fail *f)
{
    if (!src->oid || strcmp(src->oid, rel->oid) != 0)
        return 0;
    char *a = database_identity(source), *b = database_identity(target);
    int same = a && b && strcmp(a, b) == 0;
    free(a);
    free(b);
    if (same)
        fail_set(f, who, NULL,
                 "%s on this target is the source table itself (same server and "
                 "database): copying it into itself would double it",
                 rel->qualified);
    return same ? -1 : 0;
}

/* The target table's name: --into, else the source table's own
 * schema-qualified name, whatever the target's search_path.  An
 * unqualified --into is taken in the source table's schema (with --table)
 * or looked up in each target's search_path (with --query). */
static int target_relation(const cli_options *o, PGconn *c, int who, const relation *src,
                           relation *rel, cli_fail *f)
{
    if (!o->into)
        return resolve(c, src->qualified, NULL, who, rel, f);
    return resolve(c, o->into, o->kind == SOURCE_TABLE ? src->schema : NULL, who, rel, f);
}

int plan_copy(const cli_options *o, PGconn *source, PGconn *const targets[], plan *p,
              cli_fail *f)
{
    columns cols = {0}, dest = {0};
    relation src = {0};
    binary_check b = {.wanted = o->format == FORMAT_AUTO || o->format == FORMAT_BINARY,
                      .safe = 1};
    char relkind[MAX_TARGETS] = {0};
    int rc = -1;
    memset(p, 0, sizeof *p);
    p->estimated_rows = -1;

    if (o->kind == SOURCE_TABLE) {
        if (resolve(source, o->table, NULL, WHO_SOURCE, &src, f) != 0 ||
            source_table_columns(o, source, &src, &cols, p, f) != 0)
            goto out;
        p->estimated_rows = estimate_rows(source, &src);
    } else if (o->kind == SOURCE_QUERY) {
        if (query_columns(source, o->query, &cols, f) != 0)
            goto out;
    } else {
        b.safe = 0; /* unknown: an opaque COPY statement */
    }
    if (destination_names(o, &cols, &dest, f) != 0 ||
        source_signatures(source, &cols, &b, f) != 0)
        goto out;

    for (size_t i = 0; i < o->ntargets && !o->copy_in; i++) {
        relation rel = {0};
        int ok = target_relation(o, targets[i], (int)i, &src, &rel, f) == 0 &&
                 refuse_self_copy(source, targets[i], (int)i, &src, &rel, f) == 0 &&
                 check_target(o, targets[i], (int)i, &rel, &cols, &dest, &b, f) == 0;
        p->target_table[i] = rel.qualified;
        relkind[i] = rel.relkind;
        rel.qualified = NULL;
        relation_free(&rel);
        if (!ok)
            goto out;
    }
    if (choose_format(o, &b, p, f) != 0)
        goto out;

    const char *fmt = format_keyword(p->format);
    char *list = cols.n ? column_list(&cols) : strdup("");
    if (o->kind == SOURCE_TABLE && src.relkind == 'r')
        p->copy_out =
            format_sql("COPY %s %s TO STDOUT (FORMAT %s)", src.qualified, list, fmt);
    else if (o->kind == SOURCE_TABLE) /* partitioned, views, foreign tables */
        p->copy_out = format_sql("COPY (SELECT %.*s FROM %s) TO STDOUT (FORMAT %s)",
                                 (int)strlen(list) - 2, list + 1, src.qualified, fmt);
    else if (o->kind == SOURCE_QUERY)
        p->copy_out = format_sql("COPY (%s) TO STDOUT (FORMAT %s)", o->query, fmt);
    else
        p->copy_out = strdup(o->copy_out);
    free(list);
    list = dest.n ? column_list(&dest) : strdup("");
    for (size_t i = 0; i < o->ntargets; i++)
        target_statements(o, i, relkind[i], list, p);
    free(list);
    plan_sequences(o, source, targets, &src, &cols, p);
    rc = 0;
out:
    for (size_t i = 0; i < cols.n; i++)
        free(b.src_sig[i]);
    columns_free(&cols);
    columns_free(&dest);
    relation_free(&src);
    return rc;
}

void plan_free(plan *p)
{
    free(p->copy_out);
    for (size_t i = 0; i < MAX_TARGETS; i++) {
        free(p->copy_in[i]);
        free(p->target_table[i]);
        free(p->truncate_sql[i]);
        free(p->copy_in_freeze[i]);
    }
    for (size_t k = 0; k < p->nsequences; k++) {
        free(p->sequences[k].column);
        free(p->sequences[k].source);
        for (size_t i = 0; i < MAX_TARGETS; i++)
            free(p->sequences[k].target[i]);
    }
    memset(p, 0, sizeof *p);
}

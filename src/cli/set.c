/* Table sets: selection, one snapshot, K tables at a time (set.h). */
#include "set.h"

#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pattern.h"
#include "set_internal.h"

#define interrupted cli_interrupted

/* ---- small helpers ---- */

void say(set_run *s, const char *fmt, ...)
{
    if (s->r->opt.quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("pgfan: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- which tables ---- */

/* One condition on pg_class c / pg_namespace n for a pg_dump pattern:
 * `on_schema` matches the pattern against schema names (--schema). */
static char *pattern_condition(PGconn *c, const char *pattern, int on_schema)
{
    char schema[1024], name[1024];
    int has_schema;
    if (pattern_regex(pattern, schema, sizeof schema, name, sizeof name, &has_schema) !=
        0)
        return NULL;
    char *lit_name = PQescapeLiteral(c, name, strlen(name));
    char *lit_schema = has_schema ? PQescapeLiteral(c, schema, strlen(schema)) : NULL;
    char *out = NULL;
    if (lit_name && on_schema && !has_schema)
        out = format_sql("n.nspname ~ %s", lit_name);
    else if (lit_name && lit_schema && !on_schema)
        out = format_sql("(n.nspname ~ %s AND c.relname ~ %s)", lit_schema, lit_name);
    else if (lit_name && !on_schema)
        out = format_sql("(pg_catalog.pg_table_is_visible(c.oid) AND c.relname ~ %s)",
                         lit_name);
    PQfreemem(lit_name);
    PQfreemem(lit_schema);
    return out;
}

/* The OR of the patterns' conditions, or `none` when there are none. */
static char *conditions(PGconn *c, const char *const *patterns, size_t n, int on_schema,
                        const char *none, cli_fail *f)
{
    char *all = strdup(n ? "(false" : none);
    for (size_t i = 0; all && i < n; i++) {
        char *one = pattern_condition(c, patterns[i], on_schema);
        if (!one) {
            fail_set(f, WHO_NONE, NULL, "not a pattern pg_dump would take: \"%s\"",
                     patterns[i]);
            free(all);
            return NULL;
        }
        char *next = format_sql("%s OR %s", all, one);
        free(all);
        free(one);
        all = next;
    }
    if (all && n) {
        char *closed = format_sql("%s)", all);
        free(all);
        all = closed;
    }
    return all;
}

#define USER_TABLES                                                                      \
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = "              \
    "c.relnamespace "                                                                    \
    "WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' "                         \
    "AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "                     \
    "AND n.nspname <> 'pgfan' "

/* A --table without wildcards that matches nothing is a typo: say so. */
static int check_each_table_matches(set_run *s, cli_fail *f)
{
    const cli_options *o = &s->r->opt;
    for (size_t i = 0; i < o->ntables; i++) {
        char *cond = pattern_condition(s->r->source, o->tables[i], 0);
        char *sql =
            cond ? format_sql("SELECT count(*) " USER_TABLES "AND %s", cond) : NULL;
        free(cond);
        if (!sql) {
            fail_set(f, WHO_NONE, NULL, "not a pattern pg_dump would take: \"%s\"",
                     o->tables[i]);
            return -1;
        }
        PGresult *res = set_query(s, &s->r->source, WHO_SOURCE, sql, 0, NULL, f);
        free(sql);
        if (!res)
            return -1;
        int none = strcmp(PQgetvalue(res, 0, 0), "0") == 0;
        PQclear(res);
        if (none) {
            fail_set(f, WHO_SOURCE, NULL, "no table matches --table \"%s\"",
                     o->tables[i]);
            return -1;
        }
    }
    return 0;
}

/*
 * The selected tables, biggest first.  A partition whose partitioned
 * ancestor is selected is read through that ancestor (the targets route
 * its rows), never on its own: each row is loaded once.
 */
static int select_tables(set_run *s, cli_fail *f)
{
    const cli_options *o = &s->r->opt;
    PGconn *c = s->r->source;
    char *inc_t = conditions(c, o->tables, o->ntables, 0, "false", f);
    char *inc_s = inc_t ? conditions(c, o->schemas, o->nschemas, 1, "false", f) : NULL;
    char *exc = inc_s ? conditions(c, o->excludes, o->nexcludes, 0, "false", f) : NULL;
    char *sql = NULL;
    if (exc)
        sql = format_sql(
            "WITH sel AS (SELECT c.oid " USER_TABLES "AND (%s OR %s OR %s) AND NOT %s) "
            "SELECT c.oid, pg_catalog.quote_ident(n.nspname) || '.' || "
            "pg_catalog.quote_ident(c.relname), n.nspname || '.' || c.relname, "
            "c.relkind, CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(greatest("
            "p.reltuples, 0)), 0) FROM pg_catalog.pg_partition_tree(c.oid) t JOIN "
            "pg_catalog.pg_class p ON p.oid = t.relid) ELSE greatest(c.reltuples, 0) "
            "END, "
            "CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum("
            "pg_catalog.pg_total_relation_size(t.relid)), 0) FROM "
            "pg_catalog.pg_partition_tree(c.oid) t) ELSE "
            "pg_catalog.pg_total_relation_size(c.oid) END "
            "FROM sel JOIN pg_catalog.pg_class c ON c.oid = sel.oid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE NOT (c.relispartition AND EXISTS (SELECT 1 FROM "
            "pg_catalog.pg_partition_ancestors(c.oid) a WHERE a.relid <> c.oid AND "
            "a.relid IN (SELECT oid FROM sel))) ORDER BY 6 DESC, 2",
            o->all_tables ? "true" : "false", inc_t, inc_s, exc);
    free(inc_t);
    free(inc_s);
    free(exc);
    if (!sql)
        return -1;
    PGresult *res = set_query(s, &s->r->source, WHO_SOURCE, sql, 0, NULL, f);
    free(sql);
    if (!res)
        return -1;
    int n = PQntuples(res);
    s->tables = calloc(n ? (size_t)n : 1, sizeof *s->tables);
    for (int i = 0; s->tables && i < n; i++) {
        set_table *t = &s->tables[s->ntables++];
        snprintf(t->oid, sizeof t->oid, "%s", PQgetvalue(res, i, 0));
        t->qualified = strdup(PQgetvalue(res, i, 1));
        t->display = strdup(PQgetvalue(res, i, 2));
        t->kind = PQgetvalue(res, i, 3)[0];
        t->rows_estimate = strtod(PQgetvalue(res, i, 4), NULL);
        t->size = strtod(PQgetvalue(res, i, 5), NULL);
        for (size_t k = 0; k < MAX_TARGETS; k++)
            t->pairs[k].verified = -1;
    }
    PQclear(res);
    if (s->ntables == 0) {
        fail_set(f, WHO_SOURCE, NULL, "the selection matches no table");
        return -1;
    }
    return 0;
}

char *name_array(const set_run *s)
{
    size_t len = 3;
    for (size_t i = 0; i < s->ntables; i++)
        len += 2 * strlen(s->tables[i].qualified) + 3;
    char *a = malloc(len), *w = a;
    if (!a)
        return NULL;
    *w++ = '{';
    for (size_t i = 0; i < s->ntables; i++) {
        if (i)
            *w++ = ',';
        *w++ = '"';
        for (const char *c = s->tables[i].qualified; *c; c++) {
            if (*c == '"' || *c == '\\')
                *w++ = '\\';
            *w++ = *c;
        }
        *w++ = '"';
    }
    *w++ = '}';
    *w = '\0';
    return a;
}

char *oid_array(const set_run *s)
{
    size_t len = 3 + s->ntables * 12;
    char *a = malloc(len), *w = a;
    if (!a)
        return NULL;
    *w++ = '{';
    for (size_t i = 0; i < s->ntables; i++)
        w += snprintf(w, len - (size_t)(w - a), "%s%s", i ? "," : "", s->tables[i].oid);
    snprintf(w, len - (size_t)(w - a), "}");
    return a;
}

/*
 * A foreign key from a selected table to one left out: warned (the
 * targets check it themselves when rows arrive), refused with
 * --copy-schema (its definition could not be created).
 */
static int check_foreign_keys(set_run *s, cli_fail *f)
{
    char *oids = oid_array(s);
    const char *params[1] = {oids};
    PGresult *res =
        oids
            ? set_query(s, &s->r->source, WHO_SOURCE,
                        "SELECT conrelid::regclass::text, conname, "
                        "confrelid::regclass::text FROM pg_catalog.pg_constraint "
                        "WHERE contype = 'f' AND conparentid = 0 AND conrelid = "
                        "ANY($1::oid[]) AND NOT confrelid = ANY($1::oid[]) ORDER BY 1, 2",
                        1, params, f)
            : NULL;
    free(oids);
    if (!res)
        return -1;
    int n = PQntuples(res);
    for (int i = 0; i < n; i++)
        say(s, "%s: foreign key %s references %s, which is not in the selection",
            PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2));
    if (n > 0 && s->r->opt.copy_schema) {
        fail_set(f, WHO_SOURCE, NULL,
                 "--copy-schema cannot create a foreign key to a table it does not copy: "
                 "add %s to the selection",
                 PQgetvalue(res, 0, 2));
        PQclear(res);
        return -1;
    }
    PQclear(res);
    return 0;
}

/* ---- the snapshot ---- */

static int export_snapshot(set_run *s, cli_fail *f)
{
    PGresult *res =
        set_query(s, &s->r->source, WHO_SOURCE,
                  "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, f);
    PQclear(res);
    if (!res)
        return -1;
    res = set_query(s, &s->r->source, WHO_SOURCE,
                    "SELECT pg_catalog.pg_export_snapshot()", 0, NULL, f);
    if (!res)
        return -1;
    snprintf(s->snapshot, sizeof s->snapshot, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

/*
 * Every table is read through one snapshot, held by this session until
 * the end.  A resumed run imports its first run's; when that is gone, the
 * rest comes from a new snapshot only with --not-consistent.
 */
static int take_snapshot(set_run *s, cli_fail *f)
{
    const char *wanted = s->r->opt.snapshot ? s->r->opt.snapshot : s->prior_snapshot;
    s->consistent = 1;
    if (!wanted || !*wanted)
        return export_snapshot(s, f);
    if (import_snapshot(s->r, &s->r->source, wanted, f) == 0) {
        snprintf(s->snapshot, sizeof s->snapshot, "%s", wanted);
        return 0;
    }
    if (!s->r->opt.resume || !s->r->opt.not_consistent) {
        char why[sizeof f->message];
        snprintf(why, sizeof why, "%s", f->message);
        fail_set(f, WHO_SOURCE, f->sqlstate, "the snapshot %s cannot be imported (%s)%s",
                 wanted, why,
                 s->r->opt.resume ? "; --not-consistent loads the rest from a new "
                                    "snapshot, so the set is no longer one moment"
                                  : "");
        return -1;
    }
    say(s,
        "the snapshot %s is gone: the rest is read from a new one "
        "(--not-consistent); the set is not one moment of the source",
        wanted);
    s->consistent = 0;
    return export_snapshot(s, f);
}

/* ---- the run ---- */

static int source_identity(set_run *s, cli_fail *f)
{
    PGresult *res = set_query(s, &s->r->source, WHO_SOURCE,
                              "SELECT current_database() || '@' || "
                              "coalesce(host(inet_server_addr()), 'local') || "
                              "':' || current_setting('port') || '/' || (SELECT oid FROM "
                              "pg_catalog.pg_database "
                              "WHERE datname = current_database())",
                              0, NULL, f);
    if (!res)
        return -1;
    snprintf(s->source_id, sizeof s->source_id, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

/*
 * pg_dump carries a whole database's large objects; pgfan copies tables
 * only.  So --all-tables on a database that has some is refused before
 * anything moves, unless --no-large-objects says to leave them behind:
 * none is lost unnoticed.
 */
static int check_large_objects(set_run *s, cli_fail *f)
{
    if (!s->r->opt.all_tables || s->r->opt.no_large_objects)
        return 0;
    PGresult *res =
        set_query(s, &s->r->source, WHO_SOURCE,
                  "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata", 0, NULL, f);
    if (!res)
        return -1;
    int some = strcmp(PQgetvalue(res, 0, 0), "0") != 0;
    if (some)
        fail_set(f, WHO_SOURCE, NULL,
                 "the database holds %s large objects, which pgfan does not copy; "
                 "--no-large-objects copies its tables without them",
                 PQgetvalue(res, 0, 0));
    PQclear(res);
    return some ? -1 : 0;
}

static int plan_set(set_run *s)
{
    cli_fail f;
    f.who = WHO_NONE;
    if (source_identity(s, &f) != 0 || (s->r->opt.resume && find_prior_run(s, &f) != 0) ||
        take_snapshot(s, &f) != 0 || check_each_table_matches(s, &f) != 0 ||
        select_tables(s, &f) != 0 || check_foreign_keys(s, &f) != 0 ||
        check_large_objects(s, &f) != 0 || prepare_targets(s, &f) != 0) {
        if (!interrupted)
            print_fail(s->r, &f);
        return -1;
    }
    return 0;
}

/* Schema before and after the data, with --copy-schema; --verify last. */
static int load_set(set_run *s)
{
    const cli_options *o = &s->r->opt;
    if (o->copy_schema && apply_schema(s, PRE_DATA) != 0)
        return interrupted ? EXIT_INTERRUPTED : EXIT_FAILED;
    if (copy_set(s) != 0)
        return EXIT_FAILED;
    if (o->copy_schema && !interrupted && apply_schema(s, POST_DATA) != 0)
        s->schema_failed = 1;
    if (o->copy_schema && !interrupted && refresh_materialized_views(s) != 0)
        s->schema_failed = 1;
    if (o->verify && !interrupted)
        verify_set(s);
    return EXIT_ALL_COMMITTED; /* end_set() tells from the pairs */
}

int run_set(run *r)
{
    static set_run s;
    s.r = r;
    int code;
    if (connect_all(r) != 0 || plan_set(&s) != 0) {
        code = interrupted ? EXIT_INTERRUPTED : EXIT_USAGE;
    } else {
        say(&s, "%zu tables, snapshot %s, set %s%s", s.ntables, s.snapshot, s.set_id,
            s.resumed ? " (resumed)" : "");
        code = load_set(&s);
    }
    return end_set(&s, code);
}

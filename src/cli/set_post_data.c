/*
 * A resumed --copy-schema run and a half-applied post-data: pg_restore
 * commits each index, constraint and trigger on its own, so a run killed
 * during the post-data leaves some of them on a target.  Redoing them
 * would fail ("already exists"), and dropping them first cannot work for
 * every object (a partition's inherited key cannot be dropped).  So each
 * such target gets a pg_restore list (-L) without the entries it has.
 *
 * An entry is matched to its object by identity, never by the list's
 * text (names may hold spaces): the list gives the source catalog row of
 * each object, the source (in the set's snapshot) tells that object's
 * identity, and the target's catalogs tell whether it is there.  Entries
 * without an identity here (comments, row security) are idempotent and
 * kept.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "set_internal.h"

/*
 * Each post-data object as (how pg_restore -l names it, its identity):
 * "tableoid oid" for objects with a catalog row, the list's own text for
 * an attached partition index (which has none).  The identity names the
 * table an object belongs to, so an unrelated object that happens to
 * share a name never counts.
 */
static const char object_keys_sql[] =
    "SELECT c.tableoid::text || ' ' || c.oid::text, pg_catalog.format('index %I.%I on "
    "%I.%I', n.nspname, c.relname, tn.nspname, t.relname) FROM pg_catalog.pg_index x "
    "JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid JOIN pg_catalog.pg_namespace n "
    "ON n.oid = c.relnamespace JOIN pg_catalog.pg_class t ON t.oid = x.indrelid JOIN "
    "pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace "
    "UNION ALL SELECT k.tableoid::text || ' ' || k.oid::text, pg_catalog.format("
    "'constraint %I on %I.%I', k.conname, n.nspname, t.relname) FROM "
    "pg_catalog.pg_constraint k JOIN pg_catalog.pg_class t ON t.oid = k.conrelid JOIN "
    "pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
    "UNION ALL SELECT g.tableoid::text || ' ' || g.oid::text, pg_catalog.format("
    "'trigger %I on %I.%I', g.tgname, n.nspname, t.relname) FROM pg_catalog.pg_trigger "
    "g JOIN pg_catalog.pg_class t ON t.oid = g.tgrelid JOIN pg_catalog.pg_namespace n ON "
    "n.oid = t.relnamespace WHERE NOT g.tgisinternal "
    "UNION ALL SELECT w.tableoid::text || ' ' || w.oid::text, pg_catalog.format("
    "'rule %I on %I.%I', w.rulename, n.nspname, t.relname) FROM pg_catalog.pg_rewrite w "
    "JOIN pg_catalog.pg_class t ON t.oid = w.ev_class JOIN pg_catalog.pg_namespace n ON "
    "n.oid = t.relnamespace "
    "UNION ALL SELECT p.tableoid::text || ' ' || p.oid::text, pg_catalog.format("
    "'policy %I on %I.%I', p.polname, n.nspname, t.relname) FROM pg_catalog.pg_policy p "
    "JOIN pg_catalog.pg_class t ON t.oid = p.polrelid JOIN pg_catalog.pg_namespace n ON "
    "n.oid = t.relnamespace "
    "UNION ALL SELECT x.tableoid::text || ' ' || x.oid::text, pg_catalog.format("
    "'statistics %I.%I', n.nspname, x.stxname) FROM pg_catalog.pg_statistic_ext x JOIN "
    "pg_catalog.pg_namespace n ON n.oid = x.stxnamespace "
    "UNION ALL SELECT 'INDEX ATTACH ' || n.nspname || ' ' || c.relname || ' ' || "
    "pg_catalog.pg_get_userbyid(c.relowner), pg_catalog.format('attach %I.%I to %I.%I', "
    "n.nspname, c.relname, pn.nspname, p.relname) FROM pg_catalog.pg_inherits h JOIN "
    "pg_catalog.pg_class c ON c.oid = h.inhrelid JOIN pg_catalog.pg_namespace n ON "
    "n.oid = c.relnamespace JOIN pg_catalog.pg_class p ON p.oid = h.inhparent JOIN "
    "pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace WHERE c.relkind IN ('i', 'I')";

typedef struct keyed {
    const char *id, *key;
} keyed;

static int by_id(const void *a, const void *b)
{
    return strcmp(((const keyed *)a)->id, ((const keyed *)b)->id);
}

static int by_string(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The source's objects, sorted by how the list names them. */
static keyed *source_objects(set_run *s, PGresult **res, size_t *n)
{
    cli_fail f;
    *res = set_query(s, &s->r->source, WHO_SOURCE, object_keys_sql, 0, NULL, &f);
    if (!*res) {
        print_fail(s->r, &f);
        return NULL;
    }
    *n = (size_t)PQntuples(*res);
    keyed *k = calloc(*n + 1, sizeof *k);
    for (size_t i = 0; k && i < *n; i++)
        k[i] = (keyed){PQgetvalue(*res, (int)i, 0), PQgetvalue(*res, (int)i, 1)};
    if (k)
        qsort(k, *n, sizeof *k, by_id);
    return k;
}

/* The identities of the objects target i has, sorted. */
static const char **target_objects(set_run *s, size_t i, PGresult **res, size_t *n)
{
    cli_fail f;
    *res = set_query(s, &s->r->targets[i], (int)i, object_keys_sql, 0, NULL, &f);
    if (!*res) {
        print_fail(s->r, &f);
        return NULL;
    }
    *n = (size_t)PQntuples(*res);
    const char **k = calloc(*n + 1, sizeof *k);
    for (size_t j = 0; k && j < *n; j++)
        k[j] = PQgetvalue(*res, (int)j, 1);
    if (k)
        qsort(k, *n, sizeof *k, by_string);
    return k;
}

/* How the list names the object of one of its lines ("" when it does not). */
static void list_id(const char *line, char *id, size_t len)
{
    unsigned int tableoid, oid;
    int at = 0;
    id[0] = '\0';
    if (line[0] == ';' || sscanf(line, "%*d; %u %u %n", &tableoid, &oid, &at) != 2 || !at)
        return;
    if (tableoid != 0)
        snprintf(id, len, "%u %u", tableoid, oid);
    else if (strncmp(line + at, "INDEX ATTACH ", 13) == 0)
        snprintf(id, len, "%.*s", (int)strcspn(line + at, "\n"), line + at);
}

/* Whether target i has the object a list line names. */
static int target_has(const char *line, const keyed *src, size_t nsrc,
                      const char *const *have, size_t nhave)
{
    char id[2048];
    list_id(line, id, sizeof id);
    if (!id[0])
        return 0;
    keyed probe = {.id = id};
    const keyed *k = bsearch(&probe, src, nsrc, sizeof *src, by_id);
    return k && bsearch(&k->key, have, nhave, sizeof *have, by_string) != NULL;
}

/* Writes `out`: the list `toc` with the entries target i has commented out. */
static int write_list(set_run *s, size_t i, const char *toc, const char *out,
                      const keyed *src, size_t nsrc)
{
    PGresult *res;
    size_t nhave = 0, entries = 0, there = 0;
    const char **have = target_objects(s, i, &res, &nhave);
    FILE *in = have ? fopen(toc, "r") : NULL, *w = in ? fopen(out, "w") : NULL;
    char line[4096];
    int rc = w ? 0 : -1;
    while (w && fgets(line, sizeof line, in)) {
        int skip = line[0] != ';' && target_has(line, src, nsrc, have, nhave);
        entries += line[0] != ';' && line[0] != '\n';
        there += skip;
        fprintf(w, "%s%s", skip ? ";" : "", line);
    }
    if (w && (ferror(in) || fclose(w) != 0))
        rc = -1;
    if (in)
        fclose(in);
    free(have);
    PQclear(res);
    if (rc == 0 && there > 0)
        say(s,
            "target %zu: %zu of %zu post-data entries applied by the run being resumed",
            i + 1, there, entries);
    return rc;
}

int post_data_lists(set_run *s, const char *toc, const char *dir,
                    char lists[][POST_DATA_LIST_MAX])
{
    PGresult *res;
    size_t nsrc = 0;
    keyed *src = source_objects(s, &res, &nsrc);
    int rc = src ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < s->r->opt.ntargets; i++) {
        if (s->schema[POST_DATA][i] != SCHEMA_PENDING)
            continue;
        snprintf(lists[i], POST_DATA_LIST_MAX, "%s/post-data-%zu.list", dir, i);
        rc = write_list(s, i, toc, lists[i], src, nsrc);
        if (rc != 0)
            fprintf(stderr, "pgfan: target %zu: cannot list the post-data it lacks\n",
                    i + 1);
    }
    free(src);
    PQclear(res);
    return rc;
}

/* The materialized views the snapshot has populated, as a JSON array of
 * quoted qualified names. */
static const char populated_sql[] =
    "SELECT pg_catalog.json_agg(pg_catalog.format('%I.%I', n.nspname, c.relname)) FROM "
    "pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind = 'm' AND c.relispopulated";

/* Those of them a target has, not populated. */
static const char unpopulated_sql[] =
    "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'm' AND "
    "NOT c.relispopulated AND pg_catalog.format('%I.%I', n.nspname, c.relname) IN "
    "(SELECT pg_catalog.json_array_elements_text($1::pg_catalog.json))";

/*
 * REFRESHes target i's views in `names` (a view may read another, so
 * those that fail go again as long as a round brings one more).  Returns
 * 0, or -1 with the last failure in `f`.
 */
static int refresh_all(set_run *s, size_t i, PGresult *names, cli_fail *f)
{
    int n = PQntuples(names), left = n, progress = 1;
    unsigned char *done = calloc((size_t)n + 1, 1);
    fail_set(f, (int)i, NULL,
             done ? "interrupted before its materialized views were refreshed"
                  : "out of memory");
    while (done && left > 0 && progress && !cli_interrupted) {
        progress = 0;
        for (int k = 0; k < n; k++) {
            if (done[k])
                continue;
            char sql[700];
            snprintf(sql, sizeof sql, "REFRESH MATERIALIZED VIEW %s",
                     PQgetvalue(names, k, 0));
            PGresult *res = set_query(s, &s->r->targets[i], (int)i, sql, 0, NULL, f);
            if (res) {
                done[k] = 1, left--, progress = 1;
            } else {
                cli_fail server = *f;
                fail_set(f, (int)i, server.sqlstate, "%.200s: %.300s", sql,
                         server.message);
            }
            PQclear(res);
        }
    }
    free(done);
    if (n - left > 0)
        say(s, "target %zu: %d of %d materialized views refreshed", i + 1, n - left, n);
    return left > 0 ? -1 : 0;
}

int refresh_materialized_views(set_run *s)
{
    cli_fail f;
    PGresult *src = set_query(s, &s->r->source, WHO_SOURCE, populated_sql, 0, NULL, &f);
    if (!src) {
        print_fail(s->r, &f);
        return -1;
    }
    int rc = 0;
    const char *params[1] = {PQgetvalue(src, 0, 0)};
    for (size_t i = 0; params[0][0] && i < s->r->opt.ntargets && !cli_interrupted; i++) {
        schema_state at = s->schema[POST_DATA][i];
        if (at != SCHEMA_APPLIED && at != SCHEMA_SKIPPED)
            continue;
        PGresult *names =
            set_query(s, &s->r->targets[i], (int)i, unpopulated_sql, 1, params, &f);
        if (!names || refresh_all(s, i, names, &f) != 0) {
            print_fail(s->r, &f);
            s->schema[POST_DATA][i] = SCHEMA_FAILED;
            rc = -1;
        }
        PQclear(names);
    }
    PQclear(src);
    return rc;
}

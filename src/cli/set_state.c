/*
 * What a table set keeps on each target, in schema pgfan: pgfan.runs (one
 * row per set: its id, snapshot and source, and when --copy-schema's
 * sections were applied, set in the same transaction as the schema) and
 * pgfan.loaded (one row per table loaded, inserted in the table's own
 * transaction, so it commits exactly when the rows do).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "set_internal.h"

static const char state_ddl[] =
    "SET client_min_messages = warning; CREATE SCHEMA IF NOT EXISTS pgfan; "
    "CREATE TABLE IF NOT EXISTS pgfan.runs (set_id text PRIMARY KEY, snapshot text NOT "
    "NULL, source text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), "
    "pre_data_at timestamptz, post_data_at timestamptz); "
    /* a pgfan.runs made before the schema columns */
    "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = "
    "'pgfan.runs'::regclass AND attname = 'post_data_at') THEN ALTER TABLE pgfan.runs "
    "ADD COLUMN pre_data_at timestamptz, ADD COLUMN post_data_at timestamptz; END IF; "
    "END$$; "
    "CREATE TABLE IF NOT EXISTS pgfan.loaded (set_id text NOT NULL, table_name text NOT "
    "NULL, rows bigint, loaded_at timestamptz NOT NULL DEFAULT now(), "
    "PRIMARY KEY (set_id, table_name))";

/*
 * The newest earlier run of this source (with --snapshot, of that
 * snapshot) that any target knows of: its set id and snapshot.
 */
int find_prior_run(set_run *s, cli_fail *f)
{
    run *r = s->r;
    double newest = -1;
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        const char *params[2] = {s->source_id, r->opt.snapshot};
        int gave_up;
        PGresult *res = sql_exec(
            r->targets[i],
            r->opt.snapshot
                ? "SELECT set_id, snapshot, extract(epoch FROM started_at) FROM "
                  "pgfan.runs "
                  "WHERE source = $1 AND snapshot = $2 ORDER BY started_at DESC LIMIT 1"
                : "SELECT set_id, snapshot, extract(epoch FROM started_at) FROM "
                  "pgfan.runs "
                  "WHERE source = $1 ORDER BY started_at DESC LIMIT 1",
            r->opt.snapshot ? 2 : 1, params, 0, &gave_up);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
            strtod(PQgetvalue(res, 0, 2), NULL) > newest) {
            newest = strtod(PQgetvalue(res, 0, 2), NULL);
            snprintf(s->set_id, sizeof s->set_id, "%s", PQgetvalue(res, 0, 0));
            snprintf(s->prior_snapshot, sizeof s->prior_snapshot, "%s",
                     PQgetvalue(res, 0, 1));
        }
        PQclear(res);
        if (gave_up)
            give_up(r, &r->targets[i]);
    }
    if (newest >= 0) {
        s->resumed = 1;
        return 0;
    }
    fail_set(
        f, WHO_NONE, NULL,
        "--resume: no target knows of an earlier run from this source%s%s (pgfan.runs)",
        r->opt.snapshot ? " with snapshot " : "", r->opt.snapshot ? r->opt.snapshot : "");
    return -1;
}

/* The schema sections target i already has from the run being resumed. */
static int read_schema_applied(set_run *s, size_t i, cli_fail *f)
{
    const char *params[1] = {s->set_id};
    PGresult *res = set_query(s, &s->r->targets[i], (int)i,
                              "SELECT pre_data_at IS NOT NULL, post_data_at IS NOT NULL "
                              "FROM pgfan.runs WHERE set_id = $1",
                              1, params, f);
    if (!res)
        return -1;
    for (int k = 0; k < 2 && PQntuples(res) == 1; k++)
        if (PQgetvalue(res, 0, k)[0] == 't')
            s->schema[k][i] = SCHEMA_SKIPPED;
    PQclear(res);
    return 0;
}

/* Marks the pairs target i already holds (a resumed run's). */
static int read_loaded(set_run *s, size_t i, cli_fail *f)
{
    const char *params[1] = {s->set_id};
    PGresult *res = set_query(
        s, &s->r->targets[i], (int)i,
        "SELECT table_name, rows FROM pgfan.loaded WHERE set_id = $1", 1, params, f);
    if (!res)
        return -1;
    for (int k = 0; k < PQntuples(res); k++)
        for (size_t t = 0; t < s->ntables; t++)
            if (strcmp(s->tables[t].qualified, PQgetvalue(res, k, 0)) == 0) {
                pair *p = &s->tables[t].pairs[i];
                snprintf(p->state, sizeof p->state, "skipped");
                p->rows = strtoull(PQgetvalue(res, k, 1), NULL, 10);
            }
    PQclear(res);
    return 0;
}

/* Without --copy-schema every table must exist on every target before
 * any data moves. */
static int check_tables_exist(set_run *s, size_t i, cli_fail *f)
{
    char *all = name_array(s);
    const char *params[1] = {all};
    PGresult *res = all ? set_query(s, &s->r->targets[i], (int)i,
                                    "SELECT t FROM unnest($1::text[]) t WHERE "
                                    "pg_catalog.to_regclass(t) IS NULL",
                                    1, params, f)
                        : NULL;
    free(all);
    if (!res)
        return -1;
    int missing = PQntuples(res);
    if (missing)
        fail_set(f, (int)i, NULL,
                 "%d of the selected tables do not exist here, first %s (create them, or "
                 "use --copy-schema)",
                 missing, PQgetvalue(res, 0, 0));
    PQclear(res);
    return missing ? -1 : 0;
}

int prepare_targets(set_run *s, cli_fail *f)
{
    run *r = s->r;
    for (size_t i = 0; i < r->opt.ntargets && !r->opt.copy_schema; i++)
        if (check_tables_exist(s, i, f) != 0)
            return -1;
    if (!s->resumed)
        snprintf(s->set_id, sizeof s->set_id, "%s", r->run_id);
    for (size_t i = 0; i < r->opt.ntargets; i++) {
        PGresult *res = set_query(s, &r->targets[i], (int)i, state_ddl, 0, NULL, f);
        PQclear(res);
        if (!res)
            return -1;
        if (s->resumed) {
            if (read_schema_applied(s, i, f) != 0 || read_loaded(s, i, f) != 0)
                return -1;
            continue;
        }
        const char *params[3] = {s->set_id, s->snapshot, s->source_id};
        res =
            set_query(s, &r->targets[i], (int)i,
                      "INSERT INTO pgfan.runs (set_id, snapshot, source) VALUES ($1, $2, "
                      "$3)",
                      3, params, f);
        PQclear(res);
        if (!res)
            return -1;
    }
    return 0;
}

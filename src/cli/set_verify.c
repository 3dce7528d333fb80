/*
 * --verify: every loaded table on every target against the snapshot, by
 * row count and an order-independent sum of row hashes.  Every session is
 * pinned alike (run.c), so a row renders to the same text on every side;
 * the rows are rendered column by column in the source's order, so a
 * target whose columns lie in another order still compares.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "set_internal.h"

/* The checksum query for table t: "count sum". */
static char *checksum_sql(set_run *s, const set_table *t, cli_fail *f)
{
    const char *params[1] = {t->oid};
    PGresult *res = set_query(s, &s->r->source, WHO_SOURCE,
                              "SELECT string_agg(pg_catalog.quote_ident(attname), ', ' "
                              "ORDER BY attnum) FROM pg_catalog.pg_attribute WHERE "
                              "attrelid = $1::oid AND attnum > 0 AND NOT attisdropped",
                              1, params, f);
    if (!res)
        return NULL;
    char *sql =
        format_sql("SELECT count(*)::text || ' ' || coalesce(sum(('x' || "
                   "substr(md5(convert_to(ROW(%s)::text, 'UTF8')), 1, "
                   "15))::bit(60)::bigint), 0)::text FROM %s%s",
                   PQgetvalue(res, 0, 0), t->kind == 'p' ? "" : "ONLY ", t->qualified);
    PQclear(res);
    return sql;
}

static int checksum(set_run *s, PGconn **c, int who, const char *sql, char *out,
                    size_t len, cli_fail *f)
{
    PGresult *res = set_query(s, c, who, sql, 0, NULL, f);
    if (!res)
        return -1;
    snprintf(out, len, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

static void verify_table(set_run *s, set_table *t)
{
    cli_fail f;
    char want[128], got[128];
    char *sql = checksum_sql(s, t, &f);
    if (!sql || checksum(s, &s->r->source, WHO_SOURCE, sql, want, sizeof want, &f) != 0) {
        print_fail(s->r, &f);
        free(sql);
        return;
    }
    for (size_t i = 0; i < s->r->opt.ntargets; i++) {
        pair *p = &t->pairs[i];
        if (!pair_done(p))
            continue;
        PGconn **c = &s->r->targets[i];
        if ((!*c || PQstatus(*c) != CONNECTION_OK) && reconnect_target(s->r, i) != 0)
            continue;
        if (checksum(s, c, (int)i, sql, got, sizeof got, &f) != 0) {
            print_fail(s->r, &f);
            continue;
        }
        p->verified = strcmp(want, got) == 0;
        if (!p->verified) {
            snprintf(p->verify_note, sizeof p->verify_note,
                     "source: %s; target: %s (rows, sum of row hashes)", want, got);
            fprintf(stderr, "pgfan: %s: target %zu differs from the source: %s\n",
                    t->display, i + 1, p->verify_note);
        }
    }
    free(sql);
}

void verify_set(set_run *s)
{
    for (size_t t = 0; t < s->ntables && !cli_interrupted; t++)
        verify_table(s, &s->tables[t]);
}

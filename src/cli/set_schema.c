/*
 * --copy-schema: the definitions of the selected tables, from the set's
 * snapshot, by the pg_dump matching the source server (pre-data before the
 * data: types, functions, sequences, tables; post-data after it: indexes,
 * constraints, triggers), applied to every target at once with psql.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "set_internal.h"

#define MAX_DUMP_ARGS (3 * MAX_PATTERNS + 64)

typedef struct argv_list {
    const char *v[MAX_DUMP_ARGS + 1];
    char *owned[MAX_DUMP_ARGS];
    size_t n, nowned;
} argv_list;

static void arg(argv_list *a, const char *s)
{
    if (a->n < MAX_DUMP_ARGS)
        a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

static void arg_owned(argv_list *a, char *s)
{
    if (!s)
        return;
    if (a->nowned < MAX_DUMP_ARGS)
        a->owned[a->nowned++] = s;
    arg(a, s);
}

static void free_args(argv_list *a)
{
    for (size_t i = 0; i < a->nowned; i++)
        free(a->owned[i]);
}

/* A PostgreSQL program of at least the source's major version. */
static int find_tool(set_run *s, const char *tool, char *path, size_t len)
{
    int major = PQserverVersion(s->r->source) / 10000;
    const char *bindir = getenv("PGFAN_PG_BINDIR");
    char candidates[3][512];
    snprintf(candidates[0], sizeof candidates[0], "%s/%s", bindir ? bindir : "", tool);
    snprintf(candidates[1], sizeof candidates[1], "/usr/lib/postgresql/%d/bin/%s", major,
             tool);
    snprintf(candidates[2], sizeof candidates[2], "/usr/pgsql-%d/bin/%s", major, tool);
    for (int i = bindir ? 0 : 1; i < 3; i++)
        if (access(candidates[i], X_OK) == 0) {
            snprintf(path, len, "%s", candidates[i]);
            return 0;
        }
    fprintf(
        stderr,
        "pgfan: --copy-schema needs %s %d or later (the source's version): install it "
        "(Debian: postgresql-client-%d) or set PGFAN_PG_BINDIR to its directory\n",
        tool, major, major);
    return -1;
}

/* "schema"."name" (or "schema") as a pg_dump pattern matching only it. */
static char *exact_pattern(const char *schema, const char *name)
{
    size_t len = 2 * (strlen(schema) + (name ? strlen(name) : 0)) + 8;
    char *out = malloc(len), *w = out;
    if (!out)
        return NULL;
    const char *parts[2] = {schema, name};
    for (int k = 0; k < 2 && parts[k]; k++) {
        if (k)
            *w++ = '.';
        *w++ = '"';
        for (const char *p = parts[k]; *p; p++) {
            if (*p == '"')
                *w++ = '"';
            *w++ = *p;
        }
        *w++ = '"';
    }
    *w = '\0';
    return out;
}

/*
 * Without --all-tables: the schemas of the selected tables, of their
 * partitions and of their columns' types (so types, domains, functions
 * and sequences there come along), minus every other relation in them.
 */
static int add_selection_args(set_run *s, argv_list *a)
{
    cli_fail f;
    char *arr = oid_array(s);
    const char *params[1] = {arr};
    PGresult *res =
        arr ? set_query(
                  s, &s->r->source, WHO_SOURCE,
                  "WITH tree AS (SELECT unnest($1::oid[]) AS relid UNION SELECT t.relid "
                  "FROM "
                  "unnest($1::oid[]) o, pg_catalog.pg_partition_tree(o) t), "
                  "nsp AS (SELECT c.relnamespace AS n FROM pg_catalog.pg_class c WHERE "
                  "c.oid IN "
                  "(SELECT relid FROM tree) UNION SELECT coalesce(e.typnamespace, "
                  "t.typnamespace) "
                  "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = "
                  "a.atttypid "
                  "LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typcategory "
                  "= 'A' "
                  "WHERE a.attrelid IN (SELECT relid FROM tree) AND a.attnum > 0) "
                  "SELECT 'n', nspname, NULL FROM pg_catalog.pg_namespace WHERE oid IN "
                  "(SELECT n "
                  "FROM nsp) AND nspname NOT IN ('pg_catalog', 'information_schema') "
                  "UNION ALL SELECT 'T', n.nspname, c.relname FROM pg_catalog.pg_class c "
                  "JOIN "
                  "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE "
                  "c.relnamespace IN "
                  "(SELECT n FROM nsp) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND "
                  "c.oid NOT IN "
                  "(SELECT relid FROM tree) ORDER BY 1 DESC, 2, 3",
                  1, params, &f)
            : NULL;
    free(arr);
    if (!res) {
        print_fail(s->r, &f);
        return -1;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        int schema = PQgetvalue(res, i, 0)[0] == 'n';
        arg(a, schema ? "-n" : "-T");
        arg_owned(a, exact_pattern(PQgetvalue(res, i, 1),
                                   schema ? NULL : PQgetvalue(res, i, 2)));
    }
    PQclear(res);
    return 0;
}

/* pg_dump's own words for the selection. */
static int dump_args(set_run *s, argv_list *a, const char *section, const char *file)
{
    const cli_options *o = &s->r->opt;
    arg(a, "pg_dump");
    arg(a, "--schema-only");
    arg_owned(a, format_sql("--section=%s", section));
    arg_owned(a, format_sql("--snapshot=%s", s->snapshot));
    arg(a, "--no-owner");
    arg(a, "--no-privileges");
    arg(a, "-f");
    arg(a, file);
    arg(a, "-d");
    arg(a, o->source);
    if (!o->all_tables)
        return add_selection_args(s, a);
    arg(a, "-N");
    arg(a, "pgfan");
    for (size_t i = 0; i < o->nexcludes; i++) {
        arg(a, "-T");
        arg(a, o->excludes[i]);
    }
    return 0;
}

pid_t spawn_logged(const char *path, const char *const *argv, const char *errlog)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int fd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int devnull = open("/dev/null", O_WRONLY);
    if (fd >= 0)
        dup2(fd, STDERR_FILENO);
    if (devnull >= 0)
        dup2(devnull, STDOUT_FILENO);
    execv(path, (char *const *)argv);
    _exit(127);
}

static int wait_ok(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return 0;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void relay(const char *who, const char *errlog)
{
    FILE *f = fopen(errlog, "r");
    char line[2048];
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        fprintf(stderr, "pgfan: %s: %s", who, line);
    fclose(f);
    unlink(errlog);
}

/* A target database already has schemas (public, say): pg_dump's
 * "CREATE SCHEMA x;" lines become "CREATE SCHEMA IF NOT EXISTS x;". */
static int tolerate_existing_schemas(const char *file)
{
    char tmp[400], line[8192];
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    FILE *in = fopen(file, "r"), *out = in ? fopen(tmp, "w") : NULL;
    if (!out) {
        if (in)
            fclose(in);
        return -1;
    }
    while (fgets(line, sizeof line, in)) {
        if (strncmp(line, "CREATE SCHEMA ", 14) == 0 &&
            strncmp(line + 14, "IF NOT EXISTS ", 14) != 0)
            fprintf(out, "CREATE SCHEMA IF NOT EXISTS %s", line + 14);
        else
            fputs(line, out);
    }
    int rc = ferror(in) || fclose(out) != 0 ? -1 : 0;
    fclose(in);
    return rc == 0 ? rename(tmp, file) : -1;
}

const char *const schema_section_name[2] = {"pre-data", "post-data"};

/* The file ends by noting on the target, in the schema's own transaction,
 * that this section is there: a resumed run then skips it. */
static int note_applied(const set_run *s, const char *file, schema_section section)
{
    FILE *out = fopen(file, "a");
    if (!out)
        return -1;
    fprintf(out, "\nUPDATE pgfan.runs SET %s_data_at = now() WHERE set_id = '",
            section == PRE_DATA ? "pre" : "post");
    for (const char *p = s->set_id; *p; p++) {
        if (*p == '\'')
            fputc('\'', out); /* a quote in a literal is doubled */
        fputc(*p, out);
    }
    fputs("';\n", out);
    return fclose(out) == 0 ? 0 : -1;
}

/* psql applies the file to every target that lacks the section, all at
 * once, each in one transaction. */
static int apply_everywhere(set_run *s, const char *psql, const char *file,
                            schema_section section, const char *dir)
{
    pid_t pids[MAX_TARGETS];
    char logs[MAX_TARGETS][600];
    int ok = 1;
    for (size_t i = 0; i < s->r->opt.ntargets; i++) {
        if (s->schema[section][i] != SCHEMA_PENDING)
            continue;
        const char *argv[] = {"psql",
                              "-X",
                              "-q",
                              "-v",
                              "ON_ERROR_STOP=1",
                              "--single-transaction",
                              "-f",
                              file,
                              "-d",
                              s->r->opt.targets[i],
                              NULL};
        snprintf(logs[i], sizeof logs[i], "%s/psql-%zu.log", dir, i);
        pids[i] = spawn_logged(psql, argv, logs[i]);
    }
    for (size_t i = 0; i < s->r->opt.ntargets; i++) {
        if (s->schema[section][i] != SCHEMA_PENDING)
            continue;
        char who[64];
        int one = pids[i] > 0 && wait_ok(pids[i]);
        snprintf(who, sizeof who, "target %zu: %s", i + 1, schema_section_name[section]);
        s->schema[section][i] = one ? SCHEMA_APPLIED : SCHEMA_FAILED;
        if (!one) {
            fprintf(stderr, "pgfan: target %zu: the %s schema could not be applied:\n",
                    i + 1, schema_section_name[section]);
            ok = 0;
        }
        relay(who, logs[i]);
    }
    return ok ? 0 : -1;
}

/* How many targets still lack the section; says which have it already. */
static size_t targets_lacking(set_run *s, schema_section section)
{
    size_t lacking = 0;
    for (size_t i = 0; i < s->r->opt.ntargets; i++) {
        if (s->schema[section][i] == SCHEMA_PENDING)
            lacking++;
        else
            say(s, "target %zu: %s schema applied by the run being resumed", i + 1,
                schema_section_name[section]);
    }
    return lacking;
}

int apply_schema(set_run *s, schema_section section_id)
{
    char pg_dump[600], psql[600], dir[256], file[320], log[320];
    const char *tmp = getenv("TMPDIR"), *section = schema_section_name[section_id];
    if (targets_lacking(s, section_id) == 0)
        return 0;
    if (find_tool(s, "pg_dump", pg_dump, sizeof pg_dump) != 0 ||
        find_tool(s, "psql", psql, sizeof psql) != 0)
        return -1;
    snprintf(dir, sizeof dir, "%s/pgfan-schema.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "pgfan: cannot make a directory for the schema: %s\n",
                strerror(errno));
        return -1;
    }
    snprintf(file, sizeof file, "%s/%s.sql", dir, section);
    snprintf(log, sizeof log, "%s/pg_dump.log", dir);
    argv_list a = {.n = 0};
    int rc = dump_args(s, &a, section, file);
    if (rc == 0) {
        pid_t pid = spawn_logged(pg_dump, a.v, log);
        rc = pid > 0 && wait_ok(pid) ? 0 : -1;
        if (rc != 0)
            fprintf(stderr, "pgfan: pg_dump could not dump the %s schema:\n", section);
        relay("pg_dump", log);
    }
    if (rc == 0 && (tolerate_existing_schemas(file) != 0 ||
                    note_applied(s, file, section_id) != 0)) {
        fprintf(stderr, "pgfan: cannot rewrite the dumped schema: %s\n", strerror(errno));
        rc = -1;
    }
    free_args(&a);
    if (rc == 0)
        rc = apply_everywhere(s, psql, file, section_id, dir);
    unlink(file);
    unlink(log);
    rmdir(dir);
    return rc;
}

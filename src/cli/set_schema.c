/*
 * --copy-schema: the definitions of the selected tables, from the set's
 * snapshot, by the pg_dump matching the source server (pre-data before the
 * data: types, functions, sequences, tables; post-data after it: indexes,
 * constraints, triggers), applied to every target at once: pre-data with
 * psql in one transaction, post-data with pg_restore --jobs at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
    arg(a, strcmp(section, "pre-data") == 0 ? "-Fp" : "-Fc");
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
    pid_t parent = getpid(), pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* no schema goes on after pgfan died */
    if (getppid() != parent)          /* it died before prctl */
        _exit(127);
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

/* The pre-data file ends by noting on the target, in the schema's own
 * transaction, that it is there: a resumed run then skips it. */
static int note_pre_data(const set_run *s, const char *file)
{
    FILE *out = fopen(file, "a");
    if (!out)
        return -1;
    fputs("\nUPDATE pgfan.runs SET pre_data_at = now() WHERE set_id = '", out);
    for (const char *p = s->set_id; *p; p++) {
        if (*p == '\'')
            fputc('\'', out); /* a quote in a literal is doubled */
        fputc(*p, out);
    }
    fputs("';\n", out);
    return fclose(out) == 0 ? 0 : -1;
}

/* The post-data a target has is noted after pg_restore ends (it runs no
 * single transaction); were the note lost, a resumed run would find every
 * entry there and apply none again. */
static void note_post_data(set_run *s, size_t i)
{
    cli_fail f;
    const char *params[1] = {s->set_id};
    PGresult *res = set_query(
        s, &s->r->targets[i], (int)i,
        "UPDATE pgfan.runs SET post_data_at = now() WHERE set_id = $1", 1, params, &f);
    if (!res)
        print_fail(s->r, &f);
    PQclear(res);
}

static size_t running(const set_run *s, schema_section section)
{
    size_t n = 0;
    for (size_t i = 0; i < s->r->opt.ntargets; i++)
        n += s->schema[section][i] == SCHEMA_PENDING;
    return n;
}

/* The target whose tool ended (MAX_TARGETS: none can be waited for); an
 * interrupt is passed on to the tools. */
static size_t wait_any(set_run *s, schema_section section, pid_t pids[], int *status)
{
    int passed_on = 0;
    for (;;) {
        pid_t pid = waitpid(-1, status, 0);
        if (pid < 0 && errno != EINTR)
            return MAX_TARGETS;
        for (size_t i = 0; pid > 0 && i < s->r->opt.ntargets; i++)
            if (pids[i] == pid && s->schema[section][i] == SCHEMA_PENDING)
                return i;
        for (size_t i = 0; cli_interrupted && !passed_on && i < s->r->opt.ntargets; i++)
            if (pids[i] > 0 && s->schema[section][i] == SCHEMA_PENDING)
                kill(pids[i], SIGTERM);
        passed_on |= cli_interrupted != 0;
    }
}

/*
 * Runs `tool` for every target that lacks the section, all at once: its
 * arguments `args`, then -L and the target's list if it has one, then -d
 * and the target, then `tail` if any.
 */
static int apply_everywhere(set_run *s, const char *tool, const char *const *args,
                            char lists[][POST_DATA_LIST_MAX], const char *tail,
                            schema_section section, const char *dir)
{
    pid_t pids[MAX_TARGETS];
    char logs[MAX_TARGETS][600];
    int ok = 1;
    for (size_t i = 0; i < s->r->opt.ntargets; i++) {
        if (s->schema[section][i] != SCHEMA_PENDING)
            continue;
        argv_list a = {.n = 0};
        for (size_t k = 0; args[k]; k++)
            arg(&a, args[k]);
        if (lists && lists[i][0]) {
            arg(&a, "-L");
            arg(&a, lists[i]);
        }
        arg(&a, "-d");
        arg(&a, s->r->opt.targets[i]);
        if (tail)
            arg(&a, tail);
        snprintf(logs[i], sizeof logs[i], "%s/target-%zu.log", dir, i);
        pids[i] = spawn_logged(tool, a.v, logs[i]);
        if (pids[i] < 0) {
            fprintf(stderr, "pgfan: target %zu: cannot start %s: %s\n", i + 1, tool,
                    strerror(errno));
            s->schema[section][i] = SCHEMA_FAILED;
            ok = 0;
        }
    }
    /* each target as its tool ends, so a target done is noted as done even
     * while another one still works */
    for (size_t left = running(s, section); left > 0; left--) {
        int status;
        size_t i = wait_any(s, section, pids, &status);
        char who[64];
        if (i >= MAX_TARGETS)
            return -1;
        int one = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        snprintf(who, sizeof who, "target %zu: %s", i + 1, schema_section_name[section]);
        s->schema[section][i] = one ? SCHEMA_APPLIED : SCHEMA_FAILED;
        if (!one) {
            fprintf(stderr, "pgfan: target %zu: the %s schema could not be applied:\n",
                    i + 1, schema_section_name[section]);
            ok = 0;
        } else if (section == POST_DATA) {
            note_post_data(s, i);
        }
        relay(who, logs[i]);
    }
    return ok ? 0 : -1;
}

/* pg_restore -l: the archive's entries, for a resumed run's lists. */
static int list_entries(const char *pg_restore, const char *file, const char *toc,
                        const char *dir)
{
    char log[320];
    const char *argv[] = {"pg_restore", "-l", "-f", toc, file, NULL};
    snprintf(log, sizeof log, "%s/list.log", dir);
    pid_t pid = spawn_logged(pg_restore, argv, log);
    int ok = pid > 0 && wait_ok(pid);
    if (!ok)
        fprintf(stderr, "pgfan: pg_restore could not list the post-data schema:\n");
    relay("pg_restore", log);
    return ok ? 0 : -1;
}

/*
 * Post-data (indexes, constraints, triggers) with pg_restore, --jobs
 * entries at a time on each target, each committed on its own; a resumed
 * run applies only the entries a target lacks.
 */
static int apply_post_data(set_run *s, const char *file, const char *dir)
{
    static char lists[MAX_TARGETS][POST_DATA_LIST_MAX];
    char tool[600], jobs[16], toc[320];
    memset(lists, 0, sizeof lists);
    if (find_tool(s, "pg_restore", tool, sizeof tool) != 0)
        return -1;
    snprintf(toc, sizeof toc, "%s/post-data.list", dir);
    int rc = 0;
    if (s->resumed && (list_entries(tool, file, toc, dir) != 0 ||
                       post_data_lists(s, toc, dir, lists) != 0)) {
        for (size_t i = 0; i < s->r->opt.ntargets; i++)
            if (s->schema[POST_DATA][i] == SCHEMA_PENDING)
                s->schema[POST_DATA][i] = SCHEMA_FAILED;
        rc = -1;
    }
    snprintf(jobs, sizeof jobs, "%u", s->jobs ? s->jobs : 1);
    const char *args[] = {
        "pg_restore", "--exit-on-error", "--no-owner", "--no-privileges", "-j", jobs,
        NULL};
    if (rc == 0)
        rc = apply_everywhere(s, tool, args, lists, file, POST_DATA, dir);
    unlink(toc);
    for (size_t i = 0; i < MAX_TARGETS; i++)
        if (lists[i][0])
            unlink(lists[i]);
    return rc;
}

/* Pre-data goes in with psql, in one transaction per target that also
 * notes it; post-data with pg_restore. */
static int apply_dumped(set_run *s, schema_section section, const char *file,
                        const char *dir)
{
    char tool[600];
    if (section == POST_DATA)
        return apply_post_data(s, file, dir);
    const char *args[] = {
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
        "-f",   file, NULL};
    return find_tool(s, "psql", tool, sizeof tool) != 0
               ? -1
               : apply_everywhere(s, tool, args, NULL, NULL, PRE_DATA, dir);
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
    char pg_dump[600], dir[256], file[320], log[320];
    const char *tmp = getenv("TMPDIR"), *section = schema_section_name[section_id];
    if (targets_lacking(s, section_id) == 0)
        return 0;
    if (find_tool(s, "pg_dump", pg_dump, sizeof pg_dump) != 0)
        return -1;
    snprintf(dir, sizeof dir, "%s/pgfan-schema.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "pgfan: cannot make a directory for the schema: %s\n",
                strerror(errno));
        return -1;
    }
    snprintf(file, sizeof file, "%s/%s.%s", dir, section,
             section_id == PRE_DATA ? "sql" : "dump");
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
    if (rc == 0 && section_id == PRE_DATA &&
        (tolerate_existing_schemas(file) != 0 || note_pre_data(s, file) != 0)) {
        fprintf(stderr, "pgfan: cannot rewrite the dumped schema: %s\n", strerror(errno));
        rc = -1;
    }
    free_args(&a);
    if (rc == 0)
        rc = apply_dumped(s, section_id, file, dir);
    unlink(file);
    unlink(log);
    rmdir(dir);
    return rc;
}

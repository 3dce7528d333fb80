#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char cli_usage[] =
    "Usage: pgfan --source CONNINFO --target CONNINFO [--target CONNINFO ...]\n"
    "             (--table [SCHEMA.]NAME | --query 'SELECT ...' | --copy-out 'COPY ... "
    "TO STDOUT')\n"
    "             [--into [SCHEMA.]NAME | --copy-in 'COPY ... FROM STDIN'] [--columns "
    "a,b,c]\n"
    "             [OPTIONS]\n"
    "\n"
    "Read a table or query once from the source and load it into every target,\n"
    "each target in its own transaction.\n"
    "\n"
    "Connections (any libpq connection string or URI; PG* variables, .pgpass\n"
    "and service files apply as in psql):\n"
    "  -s, --source CONNINFO       where to read from\n"
    "  -t, --target CONNINFO       where to write to (repeat for each target)\n"
    "What to copy:\n"
    "      --table [SCHEMA.]NAME   a whole table, into the same-named table on every "
    "target\n"
    "      --query 'SELECT ...'    the result of a query (needs --into or --copy-in)\n"
    "      --copy-out 'COPY ...'   a COPY ... TO STDOUT statement, used as given\n"
    "      --into [SCHEMA.]NAME    the target table, when its name differs\n"
    "      --copy-in 'COPY ...'    a COPY ... FROM STDIN statement run on every target\n"
    "      --columns a,b,c         copy only these columns (SQL names: \"Mixed Case\");\n"
    "                              with --query, the target columns in result order\n"
    "Table sets (one snapshot, each table read once for every target):\n"
    "      --table PATTERN         repeatable; pg_dump patterns ('public.*', "
    "'s.order_?')\n"
    "      --schema PATTERN        every table of these schemas (repeatable)\n"
    "      --exclude-table PATTERN leave these tables out (repeatable)\n"
    "      --all-tables            every user table of the source database\n"
    "      --no-large-objects      with --all-tables: leave the source's large objects\n"
    "                              behind (without it, a database that has some is\n"
    "                              refused: pgfan copies tables only)\n"
    "  -j, --jobs N                tables copied at a time (default: from the cores)\n"
    "      --snapshot ID           read through this exported snapshot\n"
    "      --copy-schema           create the tables (pg_dump) before, indexes and\n"
    "                              constraints after the data\n"
    "      --retries N             a target whose server was lost mid-copy is\n"
    "                              reconnected and reloaded from the spill journal,\n"
    "                              up to N times (for sets: the table is loaded again)\n"
    "      --resume                load only the pairs an interrupted run left\n"
    "      --not-consistent        resume even when its snapshot is gone\n"
    "      --verify                compare every table with the source after loading\n"
    "How:\n"
    "      --format FORMAT         auto (default: binary when every column type matches\n"
    "                              on all sides, else text), text, csv or binary\n"
    "      --on-fault POLICY       abort (default: any fault rolls back every target)\n"
    "                              or drop (faulted targets roll back, the others "
    "commit)\n"
    "      --atomic                two-phase commit: all targets commit, or none\n"
    "      --truncate              truncate each target table first (same transaction;\n"
    "                              ONLY for inheritance parents), then load it (FREEZE\n"
    "                              where the server allows it)\n"
    "      --no-sequences          leave the targets' sequences alone (by default those\n"
    "                              of copied serial/identity columns end at the "
    "source's)\n"
    "      --enable-row-security   copy only the rows row-level security lets the\n"
    "                              source role see (default: such a table fails)\n"
    "      --stall-timeout SECONDS a target holding everyone back this long is faulted\n"
    "                              (default: wait)\n"
    "      --end-timeout SECONDS   a target that takes longer to end its COPY once it\n"
    "                              has all the data (triggers, foreign key checks, a\n"
    "                              server that stopped answering) is cancelled and\n"
    "                              faulted (default: wait)\n"
    "      --spill-limit SIZE      disk a target that falls behind may use to read on\n"
    "                              from a journal while the others go on (default 1GB;\n"
    "                              0: the slowest target sets the pace)\n"
    "      --spill-dir DIR         where that journal goes (default: $TMPDIR or /tmp)\n"
    "      --max-rate [N=]RATE     send at most RATE bytes/s (20MB, 1GB) to every\n"
    "                              target, or with N= to the N-th --target only\n"
    "                              (repeatable; 0: no limit)\n"
    "      --ring-slots N          slots in the ring buffer (power of two, default 64)\n"
    "      --chunk-size BYTES      bytes per slot (default 131072)\n"
    "Output:\n"
    "      --progress              progress on stderr even when it is not a terminal\n"
    "      --no-progress           no progress display\n"
    "      --report FILE|-         write a JSON report to FILE, or to stdout with -\n"
    "  -q, --quiet                 print nothing but errors\n"
    "  -V, --version               print the version and exit\n"
    "  -h, --help                  print this help and exit\n"
    "\n"
    "Exit status: 0 every target committed; 1 the copy failed and no target\n"
    "committed; 2 usage error or an error found before any data moved;\n"
    "3 some targets committed and some did not; 4 the outcome of a target is\n"
    "unknown (its COMMIT went unanswered); 130 interrupted, nothing committed.\n";

enum {
    OPT_TABLE = 256,
    OPT_QUERY,
    OPT_COPY_OUT,
    OPT_INTO,
    OPT_COPY_IN,
    OPT_COLUMNS,
    OPT_FORMAT,
    OPT_ON_FAULT,
    OPT_ATOMIC,
    OPT_TRUNCATE,
    OPT_STALL,
    OPT_END_TIMEOUT,
    OPT_SPILL_LIMIT,
    OPT_SPILL_DIR,
    OPT_MAX_RATE,
    OPT_SLOTS,
    OPT_CHUNK,
    OPT_PROGRESS,
    OPT_NO_PROGRESS,
    OPT_REPORT,
    OPT_NO_SEQUENCES,
    OPT_SCHEMA,
    OPT_EXCLUDE,
    OPT_ALL_TABLES,
    OPT_JOBS,
    OPT_SNAPSHOT,
    OPT_RESUME,
    OPT_NOT_CONSISTENT,
    OPT_RETRIES,
    OPT_VERIFY,
    OPT_COPY_SCHEMA,
    OPT_SET_ID,
    OPT_STATUS_FILE,
    OPT_LOAD_FRESH,
    OPT_ENABLE_ROW_SECURITY,
    OPT_NO_LARGE_OBJECTS
};

static const struct option long_options[] = {
    {"source", required_argument, NULL, 's'},
    {"target", required_argument, NULL, 't'},
    {"table", required_argument, NULL, OPT_TABLE},
    {"query", required_argument, NULL, OPT_QUERY},
    {"copy-out", required_argument, NULL, OPT_COPY_OUT},
    {"into", required_argument, NULL, OPT_INTO},
    {"copy-in", required_argument, NULL, OPT_COPY_IN},
    {"columns", required_argument, NULL, OPT_COLUMNS},
    {"format", required_argument, NULL, OPT_FORMAT},
    {"on-fault", required_argument, NULL, OPT_ON_FAULT},
    {"atomic", no_argument, NULL, OPT_ATOMIC},
    {"truncate", no_argument, NULL, OPT_TRUNCATE},
    {"stall-timeout", required_argument, NULL, OPT_STALL},
    {"end-timeout", required_argument, NULL, OPT_END_TIMEOUT},
    {"spill-limit", required_argument, NULL, OPT_SPILL_LIMIT},
    {"spill-dir", required_argument, NULL, OPT_SPILL_DIR},
    {"max-rate", required_argument, NULL, OPT_MAX_RATE},
    {"ring-slots", required_argument, NULL, OPT_SLOTS},
    {"chunk-size", required_argument, NULL, OPT_CHUNK},
    {"progress", no_argument, NULL, OPT_PROGRESS},
    {"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
    {"report", required_argument, NULL, OPT_REPORT},
    {"no-sequences", no_argument, NULL, OPT_NO_SEQUENCES},
    {"schema", required_argument, NULL, OPT_SCHEMA},
    {"exclude-table", required_argument, NULL, OPT_EXCLUDE},
    {"all-tables", no_argument, NULL, OPT_ALL_TABLES},
    {"jobs", required_argument, NULL, 'j'},
    {"snapshot", required_argument, NULL, OPT_SNAPSHOT},
    {"resume", no_argument, NULL, OPT_RESUME},
    {"not-consistent", no_argument, NULL, OPT_NOT_CONSISTENT},
    {"retries", required_argument, NULL, OPT_RETRIES},
    {"verify", no_argument, NULL, OPT_VERIFY},
    {"copy-schema", no_argument, NULL, OPT_COPY_SCHEMA},
    {"set-id", required_argument, NULL, OPT_SET_ID},
    {"status-file", required_argument, NULL, OPT_STATUS_FILE},
    {"load-fresh", no_argument, NULL, OPT_LOAD_FRESH},
    {"enable-row-security", no_argument, NULL, OPT_ENABLE_ROW_SECURITY},
    {"no-large-objects", no_argument, NULL, OPT_NO_LARGE_OBJECTS},
    {"quiet", no_argument, NULL, 'q'},
    {"version", no_argument, NULL, 'V'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0}};

#define FAIL(...)                                                                        \
    do {                                                                                 \
        snprintf(err, errlen, __VA_ARGS__);                                              \
        return -1;                                                                       \
    } while (0)

static int parse_count(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v == 0 || v > max)
        return -1;
    *out = v;
    return 0;
}

/* A size in bytes: a number with an optional unit, as PostgreSQL writes
 * them (B, kB, MB, GB, TB; units of 1024; case and a space ignored). */
int parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        unsigned shift;
    } units[] = {{"", 0},    {"b", 0},  {"k", 10},  {"kb", 10}, {"m", 20},
                 {"mb", 20}, {"g", 30}, {"gb", 30}, {"t", 40},  {"tb", 40}};
    char *end;
    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0.0))
        return -1;
    while (*end == ' ')
        end++;
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (strcasecmp(end, units[i].unit) == 0) {
            double bytes = v * (double)(1ULL << units[i].shift);
            if (bytes >= 18446744073709551615.0)
                return -1;
            *out = (uint64_t)bytes;
            return 0;
        }
    return -1;
}

/* --max-rate RATE or N=RATE: bytes per second, "/s" allowed. */
static int parse_max_rate(const char *arg, cli_options *o, char *err, size_t errlen)
{
    char rate[64];
    const char *eq = strchr(arg, '=');
    unsigned long long n = 0;
    if (eq) {
        char num[16];
        size_t k = (size_t)(eq - arg);
        if (k == 0 || k >= sizeof num)
            FAIL("--max-rate takes RATE or N=RATE (N counts --target from 1), not \"%s\"",
                 arg);
        memcpy(num, arg, k);
        num[k] = '\0';
        if (parse_count(num, MAX_TARGETS, &n) != 0)
            FAIL("--max-rate N=RATE: N counts --target from 1 to %d, not \"%s\"",
                 MAX_TARGETS, num);
        arg = eq + 1;
    }
    size_t len = strlen(arg);
    if (len >= 2 && strcmp(arg + len - 2, "/s") == 0)
        len -= 2;
    if (len >= sizeof rate)
        len = sizeof rate - 1;
    memcpy(rate, arg, len);
    rate[len] = '\0';
    uint64_t v;
    if (parse_size(rate, &v) != 0)
        FAIL("--max-rate takes bytes per second such as 20MB or 1GB, not \"%s\"", arg);
    if (n) {
        o->target_rate[n - 1] = v;
        o->target_rate_set[n - 1] = 1;
    } else {
        o->max_rate = v;
    }
    return 0;
}

uint64_t target_max_rate(const cli_options *o, size_t i)
{
    return o->target_rate_set[i] ? o->target_rate[i] : o->max_rate;
}

static int parse_seconds(const char *s, unsigned int *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0.0) || v > 86400.0 * 7)
        return -1;
    *ms = (unsigned int)(v * 1000.0 + 0.5);
    if (v > 0 && *ms == 0)
        *ms = 1;
    return 0;
}

static int set_source(cli_options *o, source_kind kind, const char *value, char *err,
                      size_t errlen)
{
    if (o->kind != SOURCE_NONE)
        FAIL("give only one of --table, --query and --copy-out");
    if (!*value)
        FAIL("an empty --table, --query or --copy-out");
    o->kind = kind;
    if (kind == SOURCE_TABLE)
        o->table = value;
    else if (kind == SOURCE_QUERY)
        o->query = value;
    else
        o->copy_out = value;
    return 0;
}

static int parse_one(int c, const char *arg, cli_options *o, char *err, size_t errlen)
{
    unsigned long long n;
    switch (c) {
    case 's':
        if (o->source)
            FAIL("--source given twice");
        o->source = arg;
        return 0;
    case 't':
        if (o->ntargets == MAX_TARGETS)
            FAIL("at most %d targets", MAX_TARGETS);
        o->targets[o->ntargets++] = arg;
        return 0;
    case OPT_TABLE:
        if (o->ntables == MAX_PATTERNS)
            FAIL("at most %d --table patterns", MAX_PATTERNS);
        if (!*arg)
            FAIL("an empty --table");
        o->tables[o->ntables++] = arg;
        return o->ntables > 1 ? 0 : set_source(o, SOURCE_TABLE, arg, err, errlen);
    case OPT_SCHEMA:
    case OPT_EXCLUDE:
        if ((c == OPT_SCHEMA ? o->nschemas : o->nexcludes) == MAX_PATTERNS)
            FAIL("at most %d --schema and --exclude-table patterns", MAX_PATTERNS);
        if (!*arg)
            FAIL("an empty --schema or --exclude-table");
        if (c == OPT_SCHEMA)
            o->schemas[o->nschemas++] = arg;
        else
            o->excludes[o->nexcludes++] = arg;
        return 0;
    case OPT_ALL_TABLES:
        o->all_tables = 1;
        return 0;
    case 'j':
        if (parse_count(arg, 256, &n) != 0)
            FAIL("--jobs takes a number from 1 to 256, not \"%s\"", arg);
        o->jobs = (unsigned int)n;
        return 0;
    case OPT_RETRIES:
        if (strcmp(arg, "0") != 0 && parse_count(arg, 100, &n) != 0)
            FAIL("--retries takes a number from 0 to 100, not \"%s\"", arg);
        o->retries = strcmp(arg, "0") == 0 ? 0 : (unsigned int)n;
        return 0;
    case OPT_SNAPSHOT:
        if (!*arg || strspn(arg, "0123456789ABCDEFabcdef-") != strlen(arg))
            FAIL("--snapshot takes an exported snapshot id such as 00000003-0000001B-1, "
                 "not \"%s\"",
                 arg);
        o->snapshot = arg;
        return 0;
    case OPT_RESUME:
        o->resume = 1;
        return 0;
    case OPT_NOT_CONSISTENT:
        o->not_consistent = 1;
        return 0;
    case OPT_VERIFY:
        o->verify = 1;
        return 0;
    case OPT_COPY_SCHEMA:
        o->copy_schema = 1;
        return 0;
    case OPT_SET_ID:
        o->set_id = arg;
        return 0;
    case OPT_STATUS_FILE:
        o->status_file = arg;
        return 0;
    case OPT_LOAD_FRESH:
        o->load_fresh = 1;
        return 0;
    case OPT_QUERY:
        return set_source(o, SOURCE_QUERY, arg, err, errlen);
    case OPT_COPY_OUT:
        return set_source(o, SOURCE_COPY, arg, err, errlen);
    case OPT_INTO:
        o->into = arg;
        return 0;
    case OPT_COPY_IN:
        o->copy_in = arg;
        return 0;
    case OPT_COLUMNS:
        o->columns = arg;
        return 0;
    case OPT_FORMAT:
        if (strcmp(arg, "auto") == 0)
            o->format = FORMAT_AUTO;
        else if (strcmp(arg, "text") == 0)
            o->format = FORMAT_TEXT;
        else if (strcmp(arg, "csv") == 0)
            o->format = FORMAT_CSV;
        else if (strcmp(arg, "binary") == 0)
            o->format = FORMAT_BINARY;
        else
            FAIL("--format must be auto, text, csv or binary, not \"%s\"", arg);
        return 0;
    case OPT_ON_FAULT:
        if (strcmp(arg, "abort") == 0)
            o->on_fault = PGFAN_POLICY_ABORT;
        else if (strcmp(arg, "drop") == 0)
            o->on_fault = PGFAN_POLICY_DROP;
        else
            FAIL("--on-fault must be abort or drop, not \"%s\"", arg);
        return 0;
    case OPT_ATOMIC:
        o->atomic = 1;
        return 0;
    case OPT_TRUNCATE:
        o->truncate = 1;
        return 0;
    case OPT_STALL:
        if (parse_seconds(arg, &o->stall_timeout_ms) != 0)
            FAIL("--stall-timeout takes seconds, not \"%s\"", arg);
        return 0;
    case OPT_END_TIMEOUT:
        if (parse_seconds(arg, &o->end_timeout_ms) != 0)
            FAIL("--end-timeout takes seconds, not \"%s\"", arg);
        return 0;
    case OPT_SPILL_LIMIT:
        if (parse_size(arg, &o->spill_limit) != 0)
            FAIL("--spill-limit takes a size such as 0, 500MB or 2GB, not \"%s\"", arg);
        return 0;
    case OPT_MAX_RATE:
        return parse_max_rate(arg, o, err, errlen);
    case OPT_SPILL_DIR:
        if (!*arg)
            FAIL("an empty --spill-dir");
        o->spill_dir = arg;
        return 0;
    case OPT_SLOTS:
        if (parse_count(arg, 1 << 20, &n) != 0 || (n & (n - 1)) != 0 || n < 2)
            FAIL("--ring-slots takes a power of two from 2 to 1048576, not \"%s\"", arg);
        o->ring_slots = (unsigned int)n;
        return 0;
    case OPT_CHUNK:
        if (parse_count(arg, 1ULL << 30, &n) != 0 || n < 4096)
            FAIL("--chunk-size takes bytes from 4096 to 1073741824, not \"%s\"", arg);
        o->chunk_size = (size_t)n;
        return 0;
    case OPT_PROGRESS:
        o->progress = 1;
        return 0;
    case OPT_NO_PROGRESS:
        o->progress = 0;
        return 0;
    case OPT_REPORT:
        o->report = arg;
        return 0;
    case OPT_NO_SEQUENCES:
        o->no_sequences = 1;
        return 0;
    case OPT_ENABLE_ROW_SECURITY:
        o->enable_row_security = 1;
        return 0;
    case OPT_NO_LARGE_OBJECTS:
        o->no_large_objects = 1;
        return 0;
    case 'q':
        o->quiet = 1;
        return 0;
    case 'V':
        o->show_version = 1;
        return 0;
    case 'h':
        o->show_help = 1;
        return 0;
    }
    FAIL("unknown option (see pgfan --help)");
}

/* A pg_dump pattern, not one table's name: unquoted * or ?. */
static int is_pattern(const char *s)
{
    int quoted = 0;
    for (; *s; s++) {
        if (*s == '"')
            quoted = !quoted;
        else if (!quoted && (*s == '*' || *s == '?'))
            return 1;
    }
    return 0;
}

/* Several tables, patterns, or what only sets have, make a table set. */
static int check_set(cli_options *o, char *err, size_t errlen)
{
    o->set_mode = o->ntables > 1 || o->nschemas || o->nexcludes || o->all_tables ||
                  o->jobs || o->resume || o->verify || o->copy_schema ||
                  (o->ntables == 1 && is_pattern(o->tables[0]));
    if (!o->set_mode) {
        if (o->not_consistent)
            FAIL("--not-consistent goes with --resume");
        if (o->load_fresh && (!o->set_id || o->kind != SOURCE_TABLE))
            FAIL("--load-fresh is for the tables of a set");
        return 0;
    }
    if (o->kind == SOURCE_QUERY || o->kind == SOURCE_COPY || o->into || o->copy_in ||
        o->columns)
        FAIL("a table set (several --table, patterns, --schema, --all-tables, --jobs, "
             "--resume, --verify, --copy-schema) copies whole tables by "
             "name: not with --query, --copy-out, --into, --copy-in or --columns");
    if (!o->ntables && !o->nschemas && !o->all_tables)
        FAIL("say which tables: --table PATTERN, --schema NAME or --all-tables");
    if (o->all_tables && (o->ntables || o->nschemas))
        FAIL("--all-tables selects every table: not with --table or --schema");
    if (o->not_consistent && !o->resume)
        FAIL("--not-consistent goes with --resume");
    if (o->set_id || o->status_file || o->load_fresh)
        FAIL("--set-id, --status-file and --load-fresh are for one table");
    o->kind = SOURCE_TABLE;
    return 0;
}

static int check_combination(cli_options *o, char *err, size_t errlen)
{
    if (o->show_help || o->show_version)
        return 0;
    if (!o->source)
        FAIL("--source is required");
    if (o->ntargets == 0)
        FAIL("at least one --target is required");
    for (size_t i = o->ntargets; i < MAX_TARGETS; i++)
        if (o->target_rate_set[i])
            FAIL("--max-rate %zu=...: there is no target %zu (%zu --target given)", i + 1,
                 i + 1, o->ntargets);
    if (check_set(o, err, errlen) != 0)
        return -1;
    if (o->set_mode)
        return 0;
    if (o->kind == SOURCE_NONE)
        FAIL("one of --table, --query, --copy-out, --schema or --all-tables is required");
    if (o->into && o->copy_in)
        FAIL("give --into or --copy-in, not both");
    if (o->kind != SOURCE_TABLE && !o->into && !o->copy_in)
        FAIL("--query and --copy-out need --into or --copy-in");
    if (o->truncate && ((!o->into && o->kind != SOURCE_TABLE) || o->copy_in))
        FAIL("--truncate needs a target table (--table or --into, not --copy-in)");
    if (o->columns && (o->copy_in || o->kind == SOURCE_COPY))
        FAIL("--columns goes with --table or --query (and not with --copy-in)");
    if (o->copy_in && o->format != FORMAT_AUTO)
        FAIL("--format cannot be used with --copy-in (the statement says its format)");
    if (o->retries && o->spill_limit == 0)
        FAIL("--retries reloads a target from the spill journal: not with --spill-limit "
             "0");
    return 0;
}

int parse_options(int argc, char **argv, cli_options *o, char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    o->progress = -1;
    o->on_fault = PGFAN_POLICY_ABORT;
    o->spill_limit = (uint64_t)1 << 30;
    optind = 0; /* full re-initialisation (GNU): parse_options may run again */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":s:t:j:qVh", long_options, NULL)) != -1) {
        if (c == '?' || c == ':') {
            const char *bad = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
            FAIL("%s option: %s (see pgfan --help)",
                 c == ':' ? "missing value for" : "unknown or incomplete", bad);
        }
        if (parse_one(c, optarg, o, err, errlen) != 0)
            return -1;
    }
    if (optind < argc)
        FAIL("unexpected argument \"%s\" (see pgfan --help)", argv[optind]);
    return check_combination(o, err, errlen);
}

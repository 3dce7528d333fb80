/* The pgfan command's pure parts: password masking and option parsing. */
#include <stdlib.h>
#include <string.h>

#include "../src/cli/conninfo.h"
#include "../src/cli/ident.h"
#include "../src/cli/options.h"
#include "../src/cli/pattern.h"
#include "suites.h"

static const char *masked(const char *in)
{
    static char out[512];
    ck_assert_int_eq(mask_conninfo(in, out, sizeof out), 0);
    return out;
}

START_TEST(masks_keyword_passwords)
{
    ck_assert_str_eq(masked("host=db password=s3cret dbname=x"),
                     "host=db password=******** dbname=x");
    ck_assert_str_eq(masked("password = 'it\\'s secret' user=u"),
                     "password = '********' user=u");
    ck_assert_str_eq(masked("dbname=password host=h"), "dbname=password host=h");
    ck_assert_str_eq(masked("passwordx=1 password=2"), "passwordx=1 password=********");
    ck_assert_str_eq(masked(""), "");
    /* Found by fuzz/fuzz_cli.c: an escaped space does not end a value. */
    ck_assert_str_eq(masked("password=a\\ b host=h"), "password=******** host=h");
    /* Found by fuzz/fuzz_cli.c: a keyword may follow a closing quote directly,
     * so the mask keeps the quotes. */
    ck_assert_str_eq(masked("password='a b'password='c'"),
                     "password='********'password='********'");
}
END_TEST

START_TEST(masks_uri_passwords)
{
    ck_assert_str_eq(masked("postgresql://u:pw@h:5432/db"),
                     "postgresql://u:********@h:5432/db");
    ck_assert_str_eq(masked("postgres://u@h/db?password=pw&sslmode=require"),
                     "postgres://u@h/db?password=********&sslmode=require");
    ck_assert_str_eq(masked("postgresql://u:p@ss@h/db"), "postgresql://u:********@h/db");
    ck_assert_str_eq(masked("postgresql:///db?host=/tmp"), "postgresql:///db?host=/tmp");
    /* Found by fuzz/fuzz_cli.c: libpq reads user info past a '?', and
     * percent-decodes parameter names. */
    ck_assert_str_eq(masked("postgres://h?u:pw@x"), "postgres://h?u:********@x");
    ck_assert_str_eq(masked("postgres://h/db?pass%77ord=pw&a=b"),
                     "postgres://h/db?pass%77ord=********&a=b");
    /* An unencoded '/' in the password, and the TLS key's password. */
    ck_assert_str_eq(masked("postgresql://u:pa/ss@h/db"), "postgresql://u:********@h/db");
    ck_assert_str_eq(masked("postgres://u@h/db?sslpassword=pw"),
                     "postgres://u@h/db?sslpassword=********");
    ck_assert_str_eq(masked("host=h sslpassword=pw dbname=d"),
                     "host=h sslpassword=******** dbname=d");
}
END_TEST

START_TEST(masking_truncates_safely)
{
    char small[12];
    ck_assert_int_eq(mask_conninfo("password=abcdefghijklmnop", small, sizeof small), -1);
    ck_assert_ptr_null(strstr(small, "abc"));
    ck_assert_uint_eq(strlen(small), sizeof small - 1);
}
END_TEST

static int parse(cli_options *o, char *err, int argc, char **argv)
{
    return parse_options(argc, argv, o, err, 256);
}

START_TEST(parses_a_full_command_line)
{
    char *argv[] = {"pgfan",      "-s",
                    "S",          "-t",
                    "T1",         "--target",
                    "T2",         "--table",
                    "s.t",        "--into",
                    "u",          "--columns",
                    "a,b",        "--format",
                    "binary",     "--on-fault",
                    "drop",       "--atomic",
                    "--truncate", "--stall-timeout",
                    "1.5",        "--ring-slots",
                    "16",         "--chunk-size",
                    "65536",      "--no-progress",
                    "--report",   "-",
                    "-q",         "--end-timeout",
                    "0.25"};
    cli_options o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, sizeof argv / sizeof *argv, argv), 0);
    ck_assert_str_eq(o.source, "S");
    ck_assert_uint_eq(o.ntargets, 2);
    ck_assert_str_eq(o.targets[1], "T2");
    ck_assert_int_eq(o.kind, SOURCE_TABLE);
    ck_assert_str_eq(o.into, "u");
    ck_assert_int_eq(o.format, FORMAT_BINARY);
    ck_assert_int_eq(o.on_fault, PGFAN_POLICY_DROP);
    ck_assert(o.atomic && o.truncate && o.quiet);
    ck_assert_uint_eq(o.stall_timeout_ms, 1500);
    ck_assert_uint_eq(o.end_timeout_ms, 250);
    ck_assert_uint_eq(o.ring_slots, 16);
    ck_assert_uint_eq(o.chunk_size, 65536);
    ck_assert_int_eq(o.progress, 0);
    ck_assert_str_eq(o.report, "-");
}
END_TEST

START_TEST(max_rate_applies_to_every_target_or_the_one_named)
{
    char *argv[] = {"pgfan", "-s",         "S",         "-t",         "T1", "-t",
                    "T2",    "-t",         "T3",        "--table",    "t",  "--max-rate",
                    "20MB",  "--max-rate", "2=1.5GB/s", "--max-rate", "3=0"};
    cli_options o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, sizeof argv / sizeof *argv, argv), 0);
    ck_assert_uint_eq(target_max_rate(&o, 0), 20u << 20);
    ck_assert_uint_eq(target_max_rate(&o, 1), 1536ull << 20);
    ck_assert_uint_eq(target_max_rate(&o, 2), 0); /* no limit for this one */
    char *none[] = {"pgfan", "-s", "S", "-t", "T", "--table", "t"};
    ck_assert_int_eq(parse(&o, err, 7, none), 0);
    ck_assert_uint_eq(target_max_rate(&o, 0), 0);
    const char *bad[][2] = {{"4=1MB", "no target 4 (1 --target given)"},
                            {"0=1MB", "counts --target from 1"},
                            {"x=1MB", "counts --target from 1"},
                            {"=1MB", "RATE or N=RATE"},
                            {"fast", "bytes per second"},
                            {"1=-5", "bytes per second"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *args[] = {"pgfan", "-s",         "S",
                        "-t",    "T",          "--table",
                        "t",     "--max-rate", (char *)bad[i][0]};
        ck_assert_int_eq(parse(&o, err, 9, args), -1);
        ck_assert_msg(strstr(err, bad[i][1]), "%s: %s", bad[i][0], err);
    }
}
END_TEST

START_TEST(refuses_bad_command_lines)
{
    struct {
        int argc;
        char *argv[8];
        const char *says;
    } cases[] = {
        {3, {"pgfan", "--table", "t"}, "--source is required"},
        {5, {"pgfan", "-s", "S", "--table", "t"}, "at least one --target"},
        {5, {"pgfan", "-s", "S", "-t", "T"}, "one of --table"},
        {7, {"pgfan", "-s", "S", "-t", "T", "--query", "select 1"}, "need --into"},
        {8,
         {"pgfan", "-s", "S", "-t", "T", "--table", "t", "--ring-slots"},
         "missing value"},
        {8, {"pgfan", "-s", "S", "-t", "T", "--table", "t", "--bogus"}, "unknown"},
        {8,
         {"pgfan", "-s", "S", "-t", "T", "--table", "t", "extra"},
         "unexpected argument"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cli_options o;
        char err[256];
        ck_assert_int_eq(parse(&o, err, cases[i].argc, cases[i].argv), -1);
        ck_assert_msg(strstr(err, cases[i].says), "case %zu: %s", i, err);
    }
    char *slots[] = {"pgfan", "-s", "S", "-t", "T", "--table", "t", "--ring-slots", "48"};
    cli_options o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, 9, slots), -1);
    ck_assert_ptr_nonnull(strstr(err, "power of two"));
    char *stall[] = {"pgfan",           "-s", "S", "-t", "T", "--table", "t",
                     "--stall-timeout", "-1"};
    ck_assert_int_eq(parse(&o, err, 9, stall), -1);
    char *fresh[] = {"pgfan", "-s", "S", "-t", "T", "--table", "t", "--load-fresh"};
    ck_assert_int_eq(parse(&o, err, 8, fresh), -1);
    ck_assert_ptr_nonnull(strstr(err, "--load-fresh is for the tables of a set"));
    char *end[] = {"pgfan",         "-s",  "S", "-t", "T", "--table", "t",
                   "--end-timeout", "soon"};
    ck_assert_int_eq(parse(&o, err, 9, end), -1);
    ck_assert_ptr_nonnull(strstr(err, "--end-timeout takes seconds"));
    char *both[] = {"pgfan", "-s", "S", "-t", "T", "--table", "t", "--query", "q"};
    ck_assert_int_eq(parse(&o, err, 9, both), -1);
    ck_assert_ptr_nonnull(strstr(err, "only one of"));
}
END_TEST

START_TEST(column_names_are_read_as_sql_writes_them)
{
    char *names[8], err[200];
    int n =
        split_identifiers(" id , \"Mixed Case\",\"a,b\", \"select\" ,Upper,\"q\"\"t\"",
                          names, 8, err, sizeof err);
    ck_assert_int_eq(n, 6);
    ck_assert_str_eq(names[0], "id");
    ck_assert_str_eq(names[1], "Mixed Case");
    ck_assert_str_eq(names[2], "a,b");
    ck_assert_str_eq(names[3], "select");
    ck_assert_str_eq(names[4], "upper"); /* unquoted names fold to lower case */
    ck_assert_str_eq(names[5], "q\"t");
    free_identifiers(names, (size_t)n);
    static const char *const bad[] = {"a,,b", "\"open", "a b", "", ","};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(split_identifiers(bad[i], names, 8, err, sizeof err) == -1,
                      "accepted \"%s\"", bad[i]);
    ck_assert_int_eq(split_identifiers("a,b,c", names, 2, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "more than 2"));
}
END_TEST

START_TEST(truncate_and_columns_need_a_known_table)
{
    char *copy_in[] = {"pgfan",     "-s",        "S",
                       "-t",        "T",         "--table",
                       "t",         "--copy-in", "COPY x FROM STDIN",
                       "--truncate"};
    cli_options o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, 10, copy_in), -1);
    ck_assert_ptr_nonnull(strstr(err, "--truncate needs a target table"));
    char *query_cols[] = {
        "pgfan",         "-s",     "S", "-t",        "T", "--query",
        "SELECT 1 AS a", "--into", "x", "--columns", "b", "--no-sequences"};
    ck_assert_int_eq(parse(&o, err, 12, query_cols), 0);
    ck_assert_int_eq(o.no_sequences, 1);
    ck_assert_int_eq(o.enable_row_security, 0);
    ck_assert_str_eq(o.columns, "b");
    char *rls[] = {"pgfan", "-s",      "S", "-t",
                   "T",     "--table", "t", "--enable-row-security"};
    ck_assert_int_eq(parse(&o, err, 8, rls), 0);
    ck_assert_int_eq(o.enable_row_security, 1);
    ck_assert_int_eq(o.no_large_objects, 0);
    char *lo[] = {"pgfan", "-s", "S", "-t", "T", "--all-tables", "--no-large-objects"};
    ck_assert_int_eq(parse(&o, err, 7, lo), 0);
    ck_assert_int_eq(o.no_large_objects, 1);
}
END_TEST

static void assert_pattern(const char *pattern, const char *schema, const char *name)
{
    char s[256], n[256];
    int has;
    ck_assert_int_eq(pattern_regex(pattern, s, sizeof s, n, sizeof n, &has), 0);
    ck_assert_str_eq(s, schema);
    ck_assert_str_eq(n, name);
    ck_assert_int_eq(has, schema[0] != '\0');
}

/* pg_dump's pattern rules: folding, wildcards, quotes, the schema dot. */
START_TEST(table_patterns_read_as_pg_dump_reads_them)
{
    assert_pattern("Orders", "", "^(orders)$");
    assert_pattern("public.*", "^(public)$", "^(.*)$");
    assert_pattern("sales.order_?", "^(sales)$", "^(order_.)$");
    assert_pattern("\"Sales\".\"Order Lines\"", "^(Sales)$", "^(Order Lines)$");
    assert_pattern("\"a.b*\"", "", "^(a\\.b\\*)$");
    assert_pattern("\"say \"\"hi\"\"\"", "", "^(say \"hi\")$");
    assert_pattern("x$+", "", "^(x\\$\\+)$");
    char s[256], n[256];
    int has;
    ck_assert_int_eq(pattern_regex("a.b.c", s, sizeof s, n, sizeof n, &has), -1);
    ck_assert_int_eq(pattern_regex("averyveryverylongname", s, 8, n, 8, &has), -1);
    cli_options o;
    char err[256];
    char *set[] = {"pgfan", "-s", "x", "-t", "y", "--table", "public.*", NULL};
    ck_assert_int_eq(parse_options(7, set, &o, err, sizeof err), 0);
    ck_assert_int_eq(o.set_mode, 1);
    char *one[] = {"pgfan", "-s", "x", "-t", "y", "--table", "\"odd*name\"", NULL};
    ck_assert_int_eq(parse_options(7, one, &o, err, sizeof err), 0);
    ck_assert_int_eq(o.set_mode, 0);
    char *bad[] = {"pgfan", "-s", "x", "-t", "y", "--all-tables", "--into", "z", NULL};
    ck_assert_int_eq(parse_options(8, bad, &o, err, sizeof err), -1);
    char *nc[] = {"pgfan", "-s", "x", "-t", "y", "--table", "a", "--not-consistent",
                  NULL};
    ck_assert_int_eq(parse_options(8, nc, &o, err, sizeof err), -1);
}
END_TEST

Suite *cli_unit_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("parsing");
    tcase_add_test(tc, masks_keyword_passwords);
    tcase_add_test(tc, masks_uri_passwords);
    tcase_add_test(tc, masking_truncates_safely);
    tcase_add_test(tc, parses_a_full_command_line);
    tcase_add_test(tc, refuses_bad_command_lines);
    tcase_add_test(tc, max_rate_applies_to_every_target_or_the_one_named);
    tcase_add_test(tc, column_names_are_read_as_sql_writes_them);
    tcase_add_test(tc, truncate_and_columns_need_a_known_table);
    tcase_add_test(tc, table_patterns_read_as_pg_dump_reads_them);
    suite_add_tcase(s, tc);
    return s;
}

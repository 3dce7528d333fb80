/* The COPY statement check: direction, single statement, format option. */
#include <string.h>
#include "copysql.h"
#include "suites.h"

static int check(const char *sql, enum fan_copy_direction dir, pgfan_format *f)
{
    char err[256];
    return fan_copysql_check(sql, dir, f, err, sizeof err);
}

START_TEST(accepts_copy_to_stdout_forms)
{
    pgfan_format f;
    ck_assert_int_eq(check("COPY t TO STDOUT", FAN_COPY_TO_STDOUT, &f), 0);
    ck_assert_int_eq(f, PGFAN_FORMAT_TEXT);
    ck_assert_int_eq(check("copy s.t (a, b) to stdout with (format csv, header)",
                           FAN_COPY_TO_STDOUT, &f),
                     0);
    ck_assert_int_eq(f, PGFAN_FORMAT_CSV);
    ck_assert_int_eq(
        check("COPY (SELECT 'to stdin', x FROM y WHERE z = 'from') TO STDOUT "
              "(FORMAT 'binary');",
              FAN_COPY_TO_STDOUT, &f),
        0);
    ck_assert_int_eq(f, PGFAN_FORMAT_BINARY);
    ck_assert_int_eq(check("  -- comment\n/* a /* nested */ one */ COPY t TO STDOUT CSV",
                           FAN_COPY_TO_STDOUT, &f),
                     0);
    ck_assert_int_eq(f, PGFAN_FORMAT_CSV);
    ck_assert_int_eq(check("COPY BINARY t TO STDOUT", FAN_COPY_TO_STDOUT, &f), 0);
    ck_assert_int_eq(f, PGFAN_FORMAT_BINARY);
    ck_assert_int_eq(check("COPY (SELECT $$;x$$) TO STDOUT (DELIMITER 'binary')",
                           FAN_COPY_TO_STDOUT, &f),
                     0);
    ck_assert_int_eq(f, PGFAN_FORMAT_TEXT);
}
END_TEST

START_TEST(accepts_copy_from_stdin_forms)
{
    pgfan_format f;
    ck_assert_int_eq(check("COPY t FROM STDIN", FAN_COPY_FROM_STDIN, &f), 0);
    ck_assert_int_eq(
        check("COPY \"to\" (\"from\") FROM STDIN WITH (FORMAT binary, FREEZE)",
              FAN_COPY_FROM_STDIN, &f),
        0);
    ck_assert_int_eq(f, PGFAN_FORMAT_BINARY);
}
END_TEST

START_TEST(refuses_other_statements_and_directions)
{
    pgfan_format f;
    ck_assert_int_eq(check("SELECT 1", FAN_COPY_TO_STDOUT, &f), -1);
    ck_assert_int_eq(check("DELETE FROM t", FAN_COPY_FROM_STDIN, &f), -1);
    ck_assert_int_eq(check("COPY t FROM STDIN", FAN_COPY_TO_STDOUT, &f), -1);
    ck_assert_int_eq(check("COPY t TO STDOUT", FAN_COPY_FROM_STDIN, &f), -1);
    ck_assert_int_eq(check("COPY t TO '/tmp/file'", FAN_COPY_TO_STDOUT, &f), -1);
    ck_assert_int_eq(check("COPY t TO PROGRAM 'cat'", FAN_COPY_TO_STDOUT, &f), -1);
    ck_assert_int_eq(check("COPY t FROM STDIN; DROP TABLE t", FAN_COPY_FROM_STDIN, &f),
                     -1);
    ck_assert_int_eq(check("COPY t TO STDOUT (FORMAT xml)", FAN_COPY_TO_STDOUT, &f), -1);
    ck_assert_int_eq(
        check("COPY (SELECT 'unterminated) TO STDOUT", FAN_COPY_TO_STDOUT, &f), -1);
    ck_assert_int_eq(check("", FAN_COPY_TO_STDOUT, &f), -1);
    ck_assert_int_eq(check(NULL, FAN_COPY_TO_STDOUT, &f), -1);
}
END_TEST

START_TEST(explains_why)
{
    pgfan_format f;
    char err[256];
    ck_assert_int_eq(
        fan_copysql_check("COPY t FROM STDIN", FAN_COPY_TO_STDOUT, &f, err, sizeof err),
        -1);
    ck_assert_ptr_nonnull(strstr(err, "TO STDOUT"));
    ck_assert_int_eq(fan_copysql_check("INSERT INTO t VALUES (1)", FAN_COPY_FROM_STDIN,
                                       &f, err, sizeof err),
                     -1);
    ck_assert_ptr_nonnull(strstr(err, "not a COPY"));
}
END_TEST

Suite *copysql_suite(void)
{
    Suite *s = suite_create("copysql");
    TCase *tc = tcase_create("statements");
    tcase_add_test(tc, accepts_copy_to_stdout_forms);
    tcase_add_test(tc, accepts_copy_from_stdin_forms);
    tcase_add_test(tc, refuses_other_statements_and_directions);
    tcase_add_test(tc, explains_why);
    suite_add_tcase(s, tc);
    return s;
}

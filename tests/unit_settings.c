/* Which differences in session settings change data on the way: the pure
 * comparison behind pgfan_manager_start()'s check. */
#include <string.h>

#include "../src/settings.h"
#include "suites.h"

static fan_session_settings session(const char *enc, const char *datestyle,
                                    const char *intervalstyle, int efd,
                                    const char *monetary, const char *tz)
{
    fan_session_settings s;
    memset(&s, 0, sizeof s);
    strcpy(s.client_encoding, enc);
    strcpy(s.datestyle, datestyle);
    strcpy(s.intervalstyle, intervalstyle);
    strcpy(s.lc_monetary, monetary);
    strcpy(s.timezone, tz);
    s.extra_float_digits = efd;
    s.array_nulls = 1;
    s.server_version = 150000;
    return s;
}

#define PLAIN(ds) session("UTF8", ds, "postgres", 1, "C", "UTC")

static int mismatch(fan_session_settings a, fan_session_settings b, int textual,
                    const char *says)
{
    char why[400] = "";
    int rc = fan_settings_compare(&a, &b, textual, why, sizeof why);
    if (rc != 0)
        ck_assert_msg(strstr(why, says), "reason \"%s\" lacks \"%s\"", why, says);
    return rc != 0;
}

START_TEST(date_order_matters_only_outside_iso)
{
    ck_assert(!mismatch(PLAIN("ISO, DMY"), PLAIN("ISO, MDY"), 1, ""));
    ck_assert(!mismatch(PLAIN("ISO, DMY"), PLAIN("SQL, MDY"), 1, ""));
    ck_assert(mismatch(PLAIN("SQL, DMY"), PLAIN("SQL, MDY"), 1, "\"SQL, DMY\""));
    ck_assert(mismatch(PLAIN("SQL, DMY"), PLAIN("ISO, MDY"), 1, "DateStyle"));
    ck_assert(!mismatch(PLAIN("SQL, DMY"), PLAIN("Postgres, DMY"), 1, ""));
    /* German writes the day first whatever its order says. */
    ck_assert(mismatch(PLAIN("German, MDY"), PLAIN("ISO, MDY"), 1, "DateStyle"));
    ck_assert(!mismatch(PLAIN("German, DMY"), PLAIN("ISO, DMY"), 1, ""));
    /* Binary carries no dates as text. */
    ck_assert(!mismatch(PLAIN("SQL, DMY"), PLAIN("SQL, MDY"), 0, ""));
}
END_TEST

START_TEST(sql_standard_intervals_are_refused_across_styles)
{
    fan_session_settings std = session("UTF8", "ISO, MDY", "sql_standard", 1, "C", "UTC");
    fan_session_settings iso = session("UTF8", "ISO, MDY", "iso_8601", 1, "C", "UTC");
    ck_assert(mismatch(std, PLAIN("ISO, MDY"), 1, "IntervalStyle"));
    ck_assert(mismatch(PLAIN("ISO, MDY"), std, 1, "sql_standard"));
    ck_assert(!mismatch(iso, PLAIN("ISO, MDY"), 1, ""));
    ck_assert(!mismatch(std, std, 1, ""));
}
END_TEST

START_TEST(encoding_matters_in_every_format)
{
    fan_session_settings latin = session("LATIN1", "ISO, MDY", "postgres", 1, "C", "UTC");
    ck_assert(mismatch(PLAIN("ISO, MDY"), latin, 0, "client_encoding differs"));
    ck_assert(mismatch(PLAIN("ISO, MDY"), latin, 1, "LATIN1"));
}
END_TEST

START_TEST(money_and_zone_abbreviations)
{
    fan_session_settings de =
        session("UTF8", "ISO, MDY", "postgres", 1, "de_DE.UTF-8", "UTC");
    ck_assert(mismatch(PLAIN("ISO, MDY"), de, 1, "lc_monetary"));
    ck_assert(!mismatch(PLAIN("ISO, MDY"), de, 0, ""));
    fan_session_settings ny =
        session("UTF8", "SQL, MDY", "postgres", 1, "C", "America/New_York");
    ck_assert(mismatch(PLAIN("SQL, MDY"), ny, 1, "TimeZone"));
    fan_session_settings ny_iso =
        session("UTF8", "ISO, MDY", "postgres", 1, "C", "America/New_York");
    ck_assert(!mismatch(PLAIN("ISO, MDY"), ny_iso, 1, ""));
}
END_TEST

/* A target that reads an unquoted NULL array element as text is refused in
 * text and CSV; binary carries nulls as nulls. */
START_TEST(array_nulls_off_on_a_target_is_refused)
{
    fan_session_settings off = PLAIN("ISO, MDY");
    off.array_nulls = 0;
    ck_assert(mismatch(PLAIN("ISO, MDY"), off, 1, "array_nulls is off"));
    ck_assert(!mismatch(PLAIN("ISO, MDY"), off, 0, ""));
    ck_assert(!mismatch(off, PLAIN("ISO, MDY"), 1, "")); /* output ignores it */
}
END_TEST

START_TEST(a_source_that_rounds_floats_is_refused)
{
    char why[400];
    fan_session_settings s = session("UTF8", "ISO, MDY", "postgres", 0, "C", "UTC");
    ck_assert_int_eq(fan_settings_check_source(&s, 1, why, sizeof why), -1);
    ck_assert_ptr_nonnull(strstr(why, "extra_float_digits is 0"));
    ck_assert_int_eq(fan_settings_check_source(&s, 0, why, sizeof why), 0);
    s.extra_float_digits = 1;
    ck_assert_int_eq(fan_settings_check_source(&s, 1, why, sizeof why), 0);
    s.server_version = 110000; /* before 12, only 3 printed every digit */
    ck_assert_int_eq(fan_settings_check_source(&s, 1, why, sizeof why), -1);
    s.extra_float_digits = 3;
    ck_assert_int_eq(fan_settings_check_source(&s, 1, why, sizeof why), 0);
}
END_TEST

Suite *settings_suite(void)
{
    Suite *s = suite_create("settings");
    TCase *tc = tcase_create("compare");
    tcase_add_test(tc, date_order_matters_only_outside_iso);
    tcase_add_test(tc, sql_standard_intervals_are_refused_across_styles);
    tcase_add_test(tc, encoding_matters_in_every_format);
    tcase_add_test(tc, money_and_zone_abbreviations);
    tcase_add_test(tc, array_nulls_off_on_a_target_is_refused);
    tcase_add_test(tc, a_source_that_rounds_floats_is_refused);
    suite_add_tcase(s, tc);
    return s;
}

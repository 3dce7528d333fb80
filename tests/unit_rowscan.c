/* The row scanner: row counts and row boundaries for every format, fed in
 * pieces of every size, and clear errors for malformed data. */
#include <stdint.h>
#include <string.h>

#include "rowscan.h"
#include "suites.h"

/* Feeds `data` in pieces of `piece` bytes; returns rows or -1. */
static long scan_in_pieces(pgfan_format f, const char *data, size_t len, size_t piece,
                           size_t *last_boundary)
{
    fan_rowscan s;
    fan_rowscan_init(&s, f);
    *last_boundary = SIZE_MAX;
    for (size_t off = 0; off < len; off += piece) {
        size_t n = len - off < piece ? len - off : piece, b;
        if (fan_rowscan_feed(&s, data + off, n, &b) != 0)
            return -1;
        if (b != SIZE_MAX)
            *last_boundary = off + b;
    }
    if (fan_rowscan_finish(&s) != 0)
        return -1;
    return (long)s.rows;
}

static void expect_rows(pgfan_format f, const char *data, size_t len, long rows,
                        size_t boundary)
{
    for (size_t piece = 1; piece <= len + 1; piece++) {
        size_t b;
        ck_assert_int_eq(scan_in_pieces(f, data, len, piece, &b), rows);
        ck_assert_uint_eq(b, boundary);
    }
}

START_TEST(text_counts_lines)
{
    const char d[] = "1\tone\n2\t\\N\n3\ta\\nb\\\\\n";
    expect_rows(PGFAN_FORMAT_TEXT, d, strlen(d), 3, strlen(d));
}
END_TEST

START_TEST(text_last_line_without_newline_is_a_row)
{
    const char d[] = "1\n2";
    expect_rows(PGFAN_FORMAT_TEXT, d, strlen(d), 2, 2);
}
END_TEST

START_TEST(text_end_marker_is_not_a_row)
{
    const char d[] = "1\n2\n\\.\n";
    expect_rows(PGFAN_FORMAT_TEXT, d, strlen(d), 2, strlen(d));
    const char crlf[] = "1\r\n\\.\r\n";
    expect_rows(PGFAN_FORMAT_TEXT, crlf, strlen(crlf), 1, strlen(crlf));
}
END_TEST

START_TEST(csv_quoted_newlines_stay_in_the_row)
{
    const char d[] = "1,\"a\nb\"\n2,\"say \"\"hi\"\"\n\"\n3,\n";
    expect_rows(PGFAN_FORMAT_CSV, d, strlen(d), 3, strlen(d));
}
END_TEST

START_TEST(csv_unterminated_quote_is_an_error)
{
    const char d[] = "1,\"open\n";
    size_t b;
    ck_assert_int_eq(scan_in_pieces(PGFAN_FORMAT_CSV, d, strlen(d), 3, &b), -1);
}
END_TEST

/* Binary COPY: header, two tuples (one with a NULL), trailer. */
static size_t binary_sample(unsigned char *out, int with_trailer)
{
    static const unsigned char head[] = {
        'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0377, '\r', '\n', 0, 0, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char t1[] = {0, 2, 0, 0, 0, 4,   0,   0,  0,
                                       7, 0, 0, 0, 3, 'a', 'b', 'c'};
    static const unsigned char t2[] = {0, 2, 0, 0,    0,    4,    0,
                                       0, 0, 8, 0xff, 0xff, 0xff, 0xff};
    size_t n = 0;
    memcpy(out + n, head, sizeof head), n += sizeof head;
    memcpy(out + n, t1, sizeof t1), n += sizeof t1;
    memcpy(out + n, t2, sizeof t2), n += sizeof t2;
    if (with_trailer)
        out[n++] = 0xff, out[n++] = 0xff;
    return n;
}

START_TEST(binary_counts_tuples_across_any_split)
{
    unsigned char d[64];
    size_t n = binary_sample(d, 1);
    expect_rows(PGFAN_FORMAT_BINARY, (const char *)d, n, 2, n);
}
END_TEST

START_TEST(binary_without_trailer_is_an_error)
{
    unsigned char d[64];
    size_t n = binary_sample(d, 0), b;
    ck_assert_int_eq(scan_in_pieces(PGFAN_FORMAT_BINARY, (const char *)d, n, 5, &b), -1);
}
END_TEST

START_TEST(binary_bad_signature_and_lengths_are_errors)
{
    unsigned char d[64];
    size_t n = binary_sample(d, 1), b;
    d[0] = 'X';
    ck_assert_int_eq(scan_in_pieces(PGFAN_FORMAT_BINARY, (const char *)d, n, 64, &b), -1);
    n = binary_sample(d, 1);
    d[19 + 2] = 0x80; /* first field length becomes negative, not -1 */
    ck_assert_int_eq(scan_in_pieces(PGFAN_FORMAT_BINARY, (const char *)d, n, 64, &b), -1);
    n = binary_sample(d, 1);
    d[n++] = 0; /* data after the trailer */
    ck_assert_int_eq(scan_in_pieces(PGFAN_FORMAT_BINARY, (const char *)d, n, 64, &b), -1);
}
END_TEST

START_TEST(empty_stream_has_zero_rows)
{
    size_t b;
    ck_assert_int_eq(scan_in_pieces(PGFAN_FORMAT_BINARY, "", 0, 1, &b), 0);
    ck_assert_int_eq(scan_in_pieces(PGFAN_FORMAT_TEXT, "", 0, 1, &b), 0);
}
END_TEST

Suite *rowscan_suite(void)
{
    Suite *s = suite_create("rowscan");
    TCase *tc = tcase_create("formats");
    tcase_add_test(tc, text_counts_lines);
    tcase_add_test(tc, text_last_line_without_newline_is_a_row);
    tcase_add_test(tc, text_end_marker_is_not_a_row);
    tcase_add_test(tc, csv_quoted_newlines_stay_in_the_row);
    tcase_add_test(tc, csv_unterminated_quote_is_an_error);
    tcase_add_test(tc, binary_counts_tuples_across_any_split);
    tcase_add_test(tc, binary_without_trailer_is_an_error);
    tcase_add_test(tc, binary_bad_signature_and_lengths_are_errors);
    tcase_add_test(tc, empty_stream_has_zero_rows);
    suite_add_tcase(s, tc);
    return s;
}

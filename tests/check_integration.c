/*
 * Integration tests against a real PostgreSQL server.  Each test builds its
 * own source table, fans it out over separate connections, and asserts row
 * counts, content checksums and that every connection is usable afterwards.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pgfan.h>

#include "pgtest.h"
#include "status_check.h"

Suite *faults_suite(void);
Suite *soak_suite(void);

static const char *const format_option[] = {"text", "csv", "binary"};

/* Copies source_table into n fresh targets in `format` and checks them. */
static void transfer_and_verify(const char *source_table, size_t n, const char *format,
                                long expect_rows)
{
    fanout f;
    char copy_out[160];
    pgfan_transfer_result res;
    pgfan_receiver_result per[MAX_TARGETS];
    fanout_open(&f, source_table, n, format);
    snprintf(copy_out, sizeof copy_out, "COPY %s TO STDOUT (FORMAT %s)", source_table,
             format);
    int rc =
        pgfan_transfer(f.source, copy_out, n, f.targets, f.copy_in_ptr, NULL, &res, per);
    ck_assert_msg(rc == PGFAN_OK, "transfer failed: %s: %s", pgfan_strerror(rc),
                  res.error.message);
    ck_assert_int_eq(res.rows, expect_rows);
    ck_assert_uint_eq(res.committed, n);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(per[i].state, PGFAN_RECEIVER_DONE);
        ck_assert_uint_eq(per[i].rows, (uint64_t)expect_rows);
        ck_assert_uint_eq(per[i].bytes, res.bytes);
    }
    assert_copies_equal(&f, source_table);
    fanout_close(&f);
}

/* ---- the matrix: 1, 3 and 8 receivers in every format ---- */

START_TEST(fan_out_matrix)
{
    static const size_t counts[] = {1, 3, 8};
    const char *format = format_option[_i % 3];
    size_t n = counts[_i / 3];
    char src[64];
    PGconn *c = pgt_connect();
    pgt_name(src, sizeof src, "src");
    pgt_mixed_table(c, src, 20000);
    transfer_and_verify(src, n, format, 20000);
    PQfinish(c);
}
END_TEST

START_TEST(zero_and_one_row)
{
    const char *format = format_option[_i];
    char src[64];
    PGconn *c = pgt_connect();
    pgt_name(src, sizeof src, "src");
    pgt_mixed_table(c, src, 0);
    transfer_and_verify(src, 2, format, 0);
    pgt_exec(c, "INSERT INTO %s VALUES (1, 'one', now(), 1.5, true, '\\x00ff')", src);
    transfer_and_verify(src, 2, format, 1);
    PQfinish(c);
}
END_TEST

START_TEST(awkward_values_survive)
{
    const char *format = format_option[_i];
    char src[64];
    PGconn *c = pgt_connect();
    pgt_name(src, sizeof src, "src");
    pgt_exec(c, "CREATE TABLE %s (id int, t text, b bytea)", src);
    pgt_exec(c,
             "INSERT INTO %s VALUES "
             "(1, E'tab\\tnewline\\ncr\\rbackslash\\\\end', NULL), "
             "(2, '\"double\" ''single'' ,comma; semi', ''), "
             "(3, NULL, NULL), "
             "(4, 'non-ASCII: ü ß 日本語 😀', NULL), "
             "(5, E'\\\\.', NULL), "
             "(6, '', '\\x'), "
             "(7, '\\N', NULL)",
             src);
    /* bytea with every byte value, alone and all together */
    pgt_exec(c,
             "INSERT INTO %s SELECT 100 + g, 'byte ' || g, set_byte('\\x00', 0, g) "
             "FROM generate_series(0, 255) g",
             src);
    pgt_exec(c,
             "INSERT INTO %s SELECT 1000, 'all bytes', "
             "decode(string_agg(lpad(to_hex(g), 2, '0'), ''), 'hex') "
             "FROM generate_series(0, 255) g",
             src);
    transfer_and_verify(src, 3, format, 7 + 256 + 1);
    PQfinish(c);
}
END_TEST

START_TEST(one_fifty_megabyte_value)
{
    const char *format = _i == 0 ? "text" : "binary";
    char src[64];
    PGconn *c = pgt_connect();
    pgt_name(src, sizeof src, "src");
    pgt_exec(c, "CREATE TABLE %s (id int, big text)", src);
    pgt_exec(c, "ALTER TABLE %s ALTER big SET STORAGE EXTERNAL", src);
    pgt_exec(c, "INSERT INTO %s SELECT 1, repeat(md5('x'), 50 * 1024 * 1024 / 32)", src);
    pgt_exec(c, "INSERT INTO %s VALUES (2, 'small'), (3, NULL)", src);
    transfer_and_verify(src, 2, format, 3);
    PQfinish(c);
}
END_TEST

START_TEST(five_million_small_rows)
{
    char src[64];
    PGconn *c = pgt_connect();
    pgt_name(src, sizeof src, "src");
    pgt_exec(c, "CREATE TABLE %s (a int4, b int4)", src);
    pgt_exec(c, "INSERT INTO %s SELECT g, g %% 1000 FROM generate_series(1, 5000000) g",
             src);
    transfer_and_verify(src, 2, "text", 5000000);
    PQfinish(c);
}
END_TEST

/* ---- other producer and receiver kinds ---- */

/* Rows "i<TAB>name i", in chunks that split rows. */
typedef struct row_source {
    long next, last;
    char carry[64];
    size_t carry_len;
    char buf[8192];
} row_source;

static int yield_split_rows(void *arg, const char **data, size_t *len)
{
    row_source *s = arg;
    size_t n = s->carry_len;
    memcpy(s->buf, s->carry, n);
    s->carry_len = 0;
    while (s->next <= s->last && n < sizeof s->buf - 64) {
        n += (size_t)snprintf(s->buf + n, sizeof s->buf - n, "%ld\tname %ld\n", s->next,
                              s->next);
        s->next++;
    }
    if (n == 0)
        return 0;
    if (s->next <= s->last) { /* hold back 5 bytes: the next chunk starts mid-row */
        memcpy(s->carry, s->buf + n - 5, 5);
        s->carry_len = 5;
        n -= 5;
    }
    *data = s->buf;
    *len = n;
    return 1;
}

START_TEST(iterator_producer_to_statement_receivers)
{
    PGconn *c = pgt_connect();
    char ref[64];
    pgt_name(ref, sizeof ref, "ref");
    pgt_exec(c, "CREATE TABLE %s (id int8, name text)", ref);
    pgt_exec(c, "INSERT INTO %s SELECT g, 'name ' || g FROM generate_series(1, 200000) g",
             ref);
    fanout f;
    fanout_open(&f, ref, 3, "text");
    row_source src = {.next = 1, .last = 200000};
    pgfan_producer *p;
    pgfan_manager *m;
    ck_assert_status(
        pgfan_producer_new_iterator(&p, PGFAN_FORMAT_TEXT, yield_split_rows, &src),
        PGFAN_OK);
    ck_assert_status(pgfan_manager_new(&m, p, NULL), PGFAN_OK);
    for (size_t i = 0; i < f.n; i++) {
        pgfan_receiver *r;
        ck_assert_status(pgfan_receiver_new_statement(&r, f.targets[i], f.copy_in[i]),
                         PGFAN_OK);
        ck_assert_status(pgfan_manager_add_receiver(m, r, NULL), PGFAN_OK);
    }
    ck_assert_status(pgfan_manager_run(m), PGFAN_OK);
    for (size_t i = 0; i < f.n; i++) {
        pgfan_receiver_result rr;
        pgfan_manager_receiver(m, i, &rr);
        ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
        ck_assert_uint_eq(rr.rows, 200000);
    }
    pgfan_manager_free(m);
    PQfinish(f.source);
    f.source = c; /* compare against the reference table */
    assert_copies_equal(&f, ref);
    fanout_close(&f);
}
END_TEST

START_TEST(statement_producer_to_call_receivers)
{
    const char *format = format_option[_i];
    PGconn *c = pgt_connect();
    char src[64], sql[160];
    pgt_name(src, sizeof src, "src");
    pgt_mixed_table(c, src, 30000);
    snprintf(sql, sizeof sql, "COPY %s TO STDOUT (FORMAT %s)", src, format);
    pgt_buffer want = pgt_direct_copy(c, sql);

    pgt_buffer got[3] = {{0}};
    pgfan_producer *p;
    pgfan_manager *m;
    ck_assert_status(pgfan_producer_new_statement(&p, c, sql), PGFAN_OK);
    ck_assert_status(pgfan_manager_new(&m, p, NULL), PGFAN_OK);
    for (size_t i = 0; i < 3; i++) {
        pgfan_receiver *r;
        ck_assert_status(pgfan_receiver_new_call(&r, pgt_buffer_chunk, &got[i]),
                         PGFAN_OK);
        ck_assert_status(pgfan_manager_add_receiver(m, r, NULL), PGFAN_OK);
    }
    ck_assert_status(pgfan_manager_run(m), PGFAN_OK);
    pgfan_progress pr;
    pgfan_manager_progress(m, &pr);
    ck_assert_uint_eq(pr.producer_rows, 30000);
    ck_assert_uint_eq(pr.producer_bytes, want.len);
    for (size_t i = 0; i < 3; i++) {
        pgfan_receiver_result rr;
        pgfan_manager_receiver(m, i, &rr);
        ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
        ck_assert_uint_eq(rr.rows, 30000);
        ck_assert_uint_eq(got[i].len, want.len);
        ck_assert_int_eq(memcmp(got[i].data, want.data, want.len), 0);
        free(got[i].data);
    }
    pgfan_manager_free(m);
    pgt_assert_usable(c);
    free(want.data);
    PQfinish(c);
}
END_TEST

START_TEST(manager_reports_progress)
{
    PGconn *c = pgt_connect();
    char src[64], sql[160];
    pgt_name(src, sizeof src, "src");
    pgt_mixed_table(c, src, 300000);
    fanout f;
    fanout_open(&f, src, 2, "binary");
    snprintf(sql, sizeof sql, "COPY %s TO STDOUT (FORMAT binary)", src);
    pgfan_producer *p;
    pgfan_manager *m;
    pgfan_options o;
    pgfan_options_init(&o);
    o.progress_ms = 10;
    ck_assert_status(pgfan_producer_new_statement(&p, f.source, sql), PGFAN_OK);
    ck_assert_status(pgfan_manager_new(&m, p, &o), PGFAN_OK);
    for (size_t i = 0; i < f.n; i++) {
        pgfan_receiver *r;
        ck_assert_status(pgfan_receiver_new_statement(&r, f.targets[i], f.copy_in[i]),
                         PGFAN_OK);
        ck_assert_status(pgfan_receiver_set_label(r, i ? "second" : "first"), PGFAN_OK);
        ck_assert_status(pgfan_manager_add_receiver(m, r, NULL), PGFAN_OK);
    }
    ck_assert_status(pgfan_manager_start(m), PGFAN_OK);
    pgfan_event ev;
    uint64_t last_bytes = 0;
    int ticks = 0;
    do {
        ck_assert_status(pgfan_manager_next(m, &ev), PGFAN_OK);
        ck_assert_int_ne(ev.type, PGFAN_EVENT_FAULT);
        pgfan_progress pr;
        pgfan_manager_progress(m, &pr);
        ck_assert_uint_ge(pr.producer_bytes, last_bytes);
        last_bytes = pr.producer_bytes;
        for (size_t i = 0; i < f.n; i++) {
            pgfan_receiver_result rr;
            pgfan_manager_receiver(m, i, &rr);
            ck_assert_uint_le(rr.bytes, pr.producer_bytes);
            ck_assert_uint_le(rr.lag, o.ring_slots);
        }
        ticks += ev.type == PGFAN_EVENT_PROGRESS;
    } while (ev.type != PGFAN_EVENT_END);
    ck_assert_int_gt(ticks, 0);
    ck_assert_status(pgfan_manager_finish(m), PGFAN_OK);
    pgfan_receiver_result rr;
    pgfan_manager_receiver(m, 1, &rr);
    ck_assert_str_eq(rr.label, "second");
    ck_assert_int_eq(rr.state, PGFAN_RECEIVER_DONE);
    ck_assert_uint_eq(rr.rows, 300000);
    ck_assert(rr.seconds > 0.0);
    pgfan_manager_free(m);
    /* The library does not wrap manager copies in transactions. */
    assert_copies_equal(&f, src);
    fanout_close(&f);
    PQfinish(c);
}
END_TEST

/* ---- refusals: nothing moves, every connection stays usable ---- */

START_TEST(non_copy_statements_are_refused)
{
    PGconn *c = pgt_connect();
    pgfan_producer *p;
    pgfan_receiver *r;
    ck_assert_status(pgfan_producer_new_statement(&p, c, "SELECT 1"), PGFAN_ENOTCOPY);
    ck_assert_status(pgfan_producer_new_statement(&p, c, "COPY t FROM STDIN"),
                     PGFAN_ENOTCOPY);
    ck_assert_status(pgfan_receiver_new_statement(&r, c, "DELETE FROM pg_class"),
                     PGFAN_ENOTCOPY);
    ck_assert_status(pgfan_receiver_new_statement(&r, c, "COPY t TO STDOUT"),
                     PGFAN_ENOTCOPY);
    ck_assert_int_eq(
        pgfan_receiver_new_statement(&r, c, "COPY t FROM STDIN; DROP TABLE t"),
        PGFAN_ENOTCOPY);
    pgt_assert_usable(c);
    PQfinish(c);
}
END_TEST

static void expect_start_failure(const char *copy_out, const char *good_in,
                                 const char *copy_in_fmt, int code, const char *sqlstate,
                                 const char *message_part, int failing_target)
{
    PGconn *c = pgt_connect();
    char src[64];
    pgt_name(src, sizeof src, "src");
    pgt_mixed_table(c, src, 1000);
    fanout f;
    fanout_open(&f, src, 2, "text");
    char out_sql[200], in_sql[2][200];
    const char *in_ptr[2];
    snprintf(out_sql, sizeof out_sql, copy_out, src);
    for (size_t i = 0; i < 2; i++) {
        snprintf(in_sql[i], sizeof in_sql[i],
                 i == (size_t)failing_target ? copy_in_fmt : good_in, f.tables[i]);
        in_ptr[i] = in_sql[i];
    }
    pgfan_transfer_result res;
    int rc = pgfan_transfer(f.source, out_sql, 2, f.targets, in_ptr, NULL, &res, NULL);
    ck_assert_msg(rc == code, "got %s (%s)", pgfan_strerror(rc), res.error.message);
    ck_assert_int_eq(res.has_error, 1);
    ck_assert_int_eq(res.error.receiver, failing_target);
    ck_assert_str_eq(res.error.sqlstate, sqlstate);
    ck_assert_msg(strstr(res.error.message, message_part), "message: %s",
                  res.error.message);
    ck_assert_uint_eq(res.committed, 0);
    assert_targets_empty(&f);
    fanout_close(&f);
    PQfinish(c);
}

START_TEST(format_mismatch_is_refused_before_data_moves)
{
    expect_start_failure("COPY %s TO STDOUT (FORMAT binary)", "COPY %s FROM STDIN BINARY",
                         "COPY %s FROM STDIN (FORMAT text)", PGFAN_EFORMAT, "",
                         "the source sends binary but this target expects text", 0);
    expect_start_failure("COPY %s TO STDOUT (FORMAT csv)", "COPY %s FROM STDIN CSV",
                         "COPY %s FROM STDIN", PGFAN_EFORMAT, "",
                         "the source sends csv but this target expects text", 1);
    expect_start_failure("COPY %s TO STDOUT", "COPY %s FROM STDIN",
                         "COPY %s FROM STDIN (FORMAT binary)", PGFAN_EFORMAT, "",
                         "the source sends text but this target expects binary", 1);
}
END_TEST

START_TEST(column_count_mismatch_is_refused)
{
    expect_start_failure("COPY %s TO STDOUT", "COPY %s FROM STDIN",
                         "COPY %s (id, name) FROM STDIN", PGFAN_EFORMAT, "",
                         "the source sends 6 columns but this target expects 2", 1);
}
END_TEST

START_TEST(missing_target_table_reports_the_server_error)
{
    expect_start_failure("COPY %s TO STDOUT", "COPY %s FROM STDIN",
                         "COPY no_such_table_%s FROM STDIN", PGFAN_ESERVER, "42P01",
                         "no_such_table", 1);
}
END_TEST

START_TEST(failing_source_statement_reports_the_server_error)
{
    expect_start_failure("COPY (SELECT * FROM %s_missing) TO STDOUT",
                         "COPY %s FROM STDIN", "COPY %s FROM STDIN", PGFAN_ESERVER,
                         "42P01", "_missing", PGFAN_PRODUCER_INDEX);
}
END_TEST

START_TEST(caller_transaction_is_left_to_the_caller)
{
    PGconn *c = pgt_connect();
    char src[64], sql[160];
    pgt_name(src, sizeof src, "src");
    pgt_mixed_table(c, src, 5000);
    fanout f;
    fanout_open(&f, src, 2, "text");
    pgt_exec(f.targets[0], "BEGIN");
    snprintf(sql, sizeof sql, "COPY %s TO STDOUT", src);
    pgfan_transfer_result res;
    ck_assert_status(
        pgfan_transfer(f.source, sql, 2, f.targets, f.copy_in_ptr, NULL, &res, NULL),
        PGFAN_OK);
    ck_assert_int_eq(PQtransactionStatus(f.targets[0]), PQTRANS_INTRANS);
    char *n = pgt_value(f.targets[0], "SELECT count(*) FROM %s", f.tables[0]);
    ck_assert_str_eq(n, "5000");
    free(n);
    pgt_exec(f.targets[0], "ROLLBACK");
    n = pgt_value(f.targets[0], "SELECT count(*) FROM %s", f.tables[0]);
    ck_assert_str_eq(n, "0");
    free(n);
    n = pgt_value(f.targets[1], "SELECT count(*) FROM %s", f.tables[1]);
    ck_assert_str_eq(n, "5000");
    free(n);
    fanout_close(&f);
    PQfinish(c);
}
END_TEST

START_TEST(same_connection_twice_is_refused)
{
    PGconn *c = pgt_connect();
    pgfan_producer *p;
    pgfan_receiver *r1, *r2;
    pgfan_manager *m;
    ck_assert_status(pgfan_producer_new_statement(&p, c, "COPY a TO STDOUT"), PGFAN_OK);
    ck_assert_status(pgfan_manager_new(&m, p, NULL), PGFAN_OK);
    ck_assert_status(pgfan_receiver_new_statement(&r1, c, "COPY b FROM STDIN"), PGFAN_OK);
    ck_assert_status(pgfan_manager_add_receiver(m, r1, NULL), PGFAN_EINVAL);
    PGconn *d = pgt_connect();
    ck_assert_status(pgfan_receiver_new_statement(&r2, d, "COPY b FROM STDIN"), PGFAN_OK);
    ck_assert_status(pgfan_manager_add_receiver(m, r2, NULL), PGFAN_OK);
    pgfan_receiver *r3;
    ck_assert_status(pgfan_receiver_new_statement(&r3, d, "COPY c FROM STDIN"), PGFAN_OK);
    ck_assert_status(pgfan_manager_add_receiver(m, r3, NULL), PGFAN_EINVAL);
    pgfan_receiver_free(r1);
    pgfan_receiver_free(r3);
    pgfan_manager_free(m);
    pgt_assert_usable(c);
    pgt_assert_usable(d);
    PQfinish(c);
    PQfinish(d);
}
END_TEST

/* ---- session settings that would change data ---- */

/* Copies a small table of dates from a source session to two targets
 * after `setup` SETs run on each (source first); returns the status. */
static int transfer_with_settings(const char *const setup[3], const char *format,
                                  int trust, pgfan_transfer_result *res)
{
    PGconn *c = pgt_connect();
    char src[64], sql[160];
    pgt_name(src, sizeof src, "dates");
    pgt_exec(c, "CREATE TABLE %s (id int, d date, f float8)", src);
    pgt_exec(c,
             "INSERT INTO %s SELECT g, date '2001-02-08' + g, 0.1 * g "
             "FROM generate_series(1, 100) g",
             src);
    fanout f;
    fanout_open(&f, src, 2, format);
    pgt_exec(f.source, "%s", setup[0]);
    for (size_t i = 0; i < 2; i++)
        pgt_exec(f.targets[i], "%s", setup[i + 1]);
    pgfan_options o;
    pgfan_options_init(&o);
    o.trust_session_settings = trust;
    snprintf(sql, sizeof sql, "COPY %s TO STDOUT (FORMAT %s)", src, format);
    int rc = pgfan_transfer(f.source, sql, 2, f.targets, f.copy_in_ptr, &o, res, NULL);
    if (rc == PGFAN_ESETTINGS)
        assert_targets_empty(&f); /* refused before a byte moved; all usable */
    fanout_close(&f);
    pgt_exec(c, "DROP TABLE %s", src);
    PQfinish(c);
    return rc;
}

START_TEST(settings_that_change_data_are_refused_at_start)
{
    static const struct {
        const char *setup[3];
        const char *format;
        int who;
        const char *says[3];
    } cases[] = {
        {{"SET DateStyle = 'SQL, DMY'", "SET DateStyle = 'SQL, DMY'",
          "SET DateStyle = 'SQL, MDY'"},
         "text",
         1,
         {"DateStyle differs", "\"SQL, DMY\"", "\"SQL, MDY\""}},
        {{"SET IntervalStyle = 'sql_standard'", "SET IntervalStyle = 'sql_standard'",
          "SET IntervalStyle = 'postgres'"},
         "csv",
         1,
         {"IntervalStyle differs", "sql_standard", "postgres"}},
        {{"SET extra_float_digits = 0", "SELECT 1", "SELECT 1"},
         "text",
         PGFAN_PRODUCER_INDEX,
         {"extra_float_digits is 0", "rounded", ""}},
        {{"SET lc_monetary = 'C'", "SET lc_monetary = 'de_DE.UTF-8'", "SELECT 1"},
         "text",
         0,
         {"lc_monetary differs", "\"C\"", "de_DE.UTF-8"}},
        {{"SELECT 1", "SELECT 1", "SET array_nulls = off"},
         "csv",
         1,
         {"array_nulls is off", "\"NULL\"", ""}},
        /* Binary converts text values through client_encoding too. */
        {{"SELECT 1", "SET client_encoding = 'LATIN1'", "SELECT 1"},
         "binary",
         0,
         {"client_encoding differs", "UTF8", "LATIN1"}},
    };
    pgfan_transfer_result res;
    int rc = transfer_with_settings(cases[_i].setup, cases[_i].format, 0, &res);
    ck_assert_msg(rc == PGFAN_ESETTINGS, "case %d: got %s: %s", _i, pgfan_strerror(rc),
                  res.error.message);
    ck_assert_status(res.error.code, PGFAN_ESETTINGS);
    ck_assert_int_eq(res.error.receiver, cases[_i].who);
    /* The party is in the label, not in the message. */
    if (cases[_i].who == PGFAN_PRODUCER_INDEX)
        ck_assert_str_eq(res.error.label, "source");
    else
        ck_assert_msg(strchr(res.error.label, '/'), "label %s", res.error.label);
    ck_assert_msg(strncmp(res.error.message, res.error.label, strlen(res.error.label)) !=
                      0,
                  "the message repeats the label: %s", res.error.message);
    for (int k = 0; k < 3; k++)
        ck_assert_msg(strstr(res.error.message, cases[_i].says[k]), "case %d: %s", _i,
                      res.error.message);
    ck_assert_uint_eq(res.rows, 0);
    /* The caller who knows better opts out: the copy goes on (and, for the
     * dates, shows what the check prevents: the target misreads them). */
    rc = transfer_with_settings(cases[_i].setup, cases[_i].format, 1, &res);
    ck_assert_msg(rc != PGFAN_ESETTINGS && res.rows > 0, "case %d, trusted: %s: %s", _i,
                  pgfan_strerror(rc), res.error.message);
}
END_TEST

START_TEST(settings_that_do_not_change_data_are_accepted)
{
    /* ISO dates read alike in any order; binary carries no dates as text. */
    static const char *const iso[3] = {"SET DateStyle = 'ISO, DMY'",
                                       "SET DateStyle = 'ISO, MDY'",
                                       "SET DateStyle = 'SQL, MDY'"};
    static const char *const sql_dmy[3] = {"SET DateStyle = 'SQL, DMY'",
                                           "SET DateStyle = 'SQL, MDY'", "SELECT 1"};
    pgfan_transfer_result res;
    ck_assert_status(transfer_with_settings(iso, "text", 0, &res), PGFAN_OK);
    ck_assert_status(transfer_with_settings(sql_dmy, "binary", 0, &res), PGFAN_OK);
    ck_assert_uint_eq(res.rows, 100);
}
END_TEST

/* ---- TLS ---- */

/* The test server over TCP with sslmode=require (the harness gives it a
 * self-signed certificate). */
static PGconn *connect_tls(void)
{
    PGconn *plain = pgt_connect();
    char ci[256];
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%s user=%s dbname=%s sslmode=require",
             PQport(plain), PQuser(plain), PQdb(plain));
    PQfinish(plain);
    PGconn *c = PQconnectdb(ci);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "sslmode=require: %s", PQerrorMessage(c));
    ck_assert_int_eq(PQsslInUse(c), 1);
    return c;
}

START_TEST(transfer_over_tls)
{
    PGconn *admin = pgt_connect();
    char src[64], dst[2][64]; /* names from pgt_name() are short */
    pgt_name(src, sizeof src, "tls_src");
    pgt_mixed_table(admin, src, 20000);
    PGconn *source = connect_tls(), *targets[2];
    char copy_in[2][160];
    const char *copy_in_ptr[2];
    for (int i = 0; i < 2; i++) {
        pgt_name(dst[i], sizeof dst[i], "tls_dst");
        pgt_mixed_table(admin, dst[i], 0);
        targets[i] = connect_tls();
        snprintf(copy_in[i], sizeof copy_in[i], "COPY %s FROM STDIN", dst[i]);
        copy_in_ptr[i] = copy_in[i];
    }
    char copy_out[256];
    snprintf(copy_out, sizeof copy_out, "COPY %s TO STDOUT", src);
    pgfan_transfer_result res;
    ck_assert_status(
        pgfan_transfer(source, copy_out, 2, targets, copy_in_ptr, NULL, &res, NULL),
        PGFAN_OK);
    ck_assert_uint_eq(res.rows, 20000);
    char *want = pgt_checksum(admin, src);
    for (int i = 0; i < 2; i++) {
        char *got = pgt_checksum(admin, dst[i]);
        ck_assert_str_eq(got, want);
        free(got);
        ck_assert_int_eq(PQsslInUse(targets[i]), 1);
        pgt_assert_usable(targets[i]);
        PQfinish(targets[i]);
        pgt_exec(admin, "DROP TABLE %s", dst[i]);
    }
    free(want);
    PQfinish(source);
    pgt_exec(admin, "DROP TABLE %s", src);
    PQfinish(admin);
}
END_TEST

/* ---- endings ---- */

typedef struct commit_watch {
    pthread_t caller;    /* the thread inside pgfan_transfer */
    const char *waiting; /* counts the backends in the awaited wait */
    int seen;            /* that wait was seen */
    int stop;            /* `waiting` gives a backend's pid: stop it (SIGSTOP)
                            before the interrupt */
    int stopped;         /* the pid stopped, or 0 */
} commit_watch;

/* Set the way the interrupt is meant to be set: by a signal handler. */
static volatile sig_atomic_t commit_interrupt;

static void on_commit_signal(int sig)
{
    commit_interrupt = sig;
}

/* Signals the caller once a backend is in the wait w->waiting counts
 * (bounded: about a minute). */
static void *interrupt_the_wait(void *arg)
{
    commit_watch *w = arg;
    PGconn *admin = pgt_connect();
    for (int tries = 0; tries < 6000 && !w->seen; tries++) {
        char *n = pgt_value(admin, "%s", w->waiting);
        w->seen = strcmp(n, "0") != 0;
        if (w->seen && w->stop && kill(atoi(n), SIGSTOP) == 0)
            w->stopped = atoi(n);
        free(n);
        struct timespec ts = {0, 10 * 1000000L}; /* polls a state; no timing bet */
        nanosleep(&ts, NULL);
    }
    pthread_kill(w->caller, SIGUSR1);
    PQfinish(admin);
    return NULL;
}

/* pgfan_transfer of table `src` into `targets` with options `o` (NULL: the
 * defaults) and a SIGUSR1 handler setting its interrupt once a backend is
 * in the wait w->waiting counts (stopping it first when w->stop); w->seen
 * says whether it was.  `tr` may be NULL. */
static int transfer_interrupted_in(commit_watch *w, const char *src, int n,
                                   PGconn **targets, const char *const *in_sql,
                                   const pgfan_options *opts, pgfan_transfer_result *res,
                                   pgfan_receiver_result *tr)
{
    struct sigaction sa = {0}, was;
    sa.sa_handler = on_commit_signal;
    sigemptyset(&sa.sa_mask);
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, &was), 0);
    commit_interrupt = 0;
    w->caller = pthread_self();
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, interrupt_the_wait, w), 0);
    pgfan_options o;
    if (opts)
        o = *opts;
    else
        pgfan_options_init(&o);
    o.interrupt = &commit_interrupt;
    char out_sql[128];
    snprintf(out_sql, sizeof out_sql, "COPY %s TO STDOUT", src);
    PGconn *source = pgt_connect();
    int rc = pgfan_transfer(source, out_sql, n, targets, in_sql, &o, res, tr);
    pthread_join(th, NULL);
    sigaction(SIGUSR1, &was, NULL);
    PQfinish(source);
    return rc;
}

/* Keeps the text of the last notice or warning a connection got. */
static void keep_notice(void *arg, const PGresult *res)
{
    snprintf((char *)arg, 512, "%s", PQresultErrorMessage(res));
}

/* A 5000-row source table `src` and a target connection to the database
 * lib_sync (its conninfo in `sync`) holding an empty table of that name,
 * whose commits wait for a synchronous standby that does not exist (until
 * pgt_missing_standby(admin, 0)); the target's session already has that
 * setting when this returns. */
static PGconn *target_waiting_for_a_standby(PGconn *admin, char *src, size_t len,
                                            char *sync, size_t sync_len)
{
    pgt_name(src, len, "sync");
    pgt_exec(admin, "CREATE TABLE %s (id int, t text)", src);
    pgt_exec(admin,
             "INSERT INTO %s SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
             src);
    pgt_sync_database(admin, "lib_sync");
    snprintf(sync, sync_len, "%s dbname=lib_sync", getenv("PGFAN_TEST_CONNINFO"));
    PGconn *target = PQconnectdb(sync);
    ck_assert_int_eq(PQstatus(target), CONNECTION_OK);
    pgt_exec(target, "SET synchronous_commit = local");
    pgt_exec(target, "DROP TABLE IF EXISTS %s", src);
    pgt_exec(target, "CREATE TABLE %s (id int, t text)", src);
    pgt_exec(target, "SET synchronous_commit = on");
    pgt_missing_standby(admin, 1);
    for (int tries = 0; tries < 1000; tries++) { /* the reload reached it */
        char *names = pgt_value(target, "SHOW synchronous_standby_names");
        int set = strcmp(names, "pgfan_nobody") == 0;
        free(names);
        if (set)
            break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL); /* a bounded poll for a state */
    }
    return target;
}

/* pgfan_transfer's own COMMIT yields to the caller's interrupt (loop 0) and
 * to end_timeout_ms (loop 1): one that waits (here for a synchronous
 * standby that does not exist) is cancelled and its answer read.  The
 * server had committed locally, so the call says committed, and the target
 * holds every row. */
START_TEST(a_waiting_commit_says_what_the_server_did)
{
    PGconn *admin = pgt_connect();
    char src[64], sync[1200];
    PGconn *target =
        target_waiting_for_a_standby(admin, src, sizeof src, sync, sizeof sync);
    char in_sql[128];
    snprintf(in_sql, sizeof in_sql, "COPY %s FROM STDIN", src);
    const char *in_ptr[1] = {in_sql};
    pgfan_transfer_result res;
    int rc, seen;
    if (_i == 0) {
        /* inside COMMIT: waiting for the synchronous standby */
        commit_watch w = {.waiting = "SELECT count(*) FROM pg_stat_activity WHERE "
                                     "datname = 'lib_sync' AND wait_event = 'SyncRep'"};
        rc = transfer_interrupted_in(&w, src, 1, &target, in_ptr, NULL, &res, NULL);
        seen = w.seen;
    } else {
        char notice[512] = "", out_sql[128];
        PQsetNoticeReceiver(target, keep_notice, notice);
        pgfan_options o;
        pgfan_options_init(&o);
        o.end_timeout_ms = 1000;
        snprintf(out_sql, sizeof out_sql, "COPY %s TO STDOUT", src);
        PGconn *source = pgt_connect();
        rc = pgfan_transfer(source, out_sql, 1, &target, in_ptr, &o, &res, NULL);
        PQfinish(source);
        seen = strstr(notice, "canceling wait for synchronous replication") != NULL;
    }
    pgt_missing_standby(admin, 0);
    ck_assert_msg(seen, "the COMMIT never waited");
    ck_assert_status(rc, PGFAN_OK);
    ck_assert_uint_eq(res.committed, 1);
    pgt_assert_usable(target);
    char *want = pgt_checksum(admin, src);
    char *got = pgt_checksum(target, src);
    ck_assert_str_eq(got, want);
    free(got), free(want);
    pgt_exec(target, "DROP TABLE %s", src);
    PQfinish(target);
    pgt_exec(admin, "DROP TABLE %s", src);
    PQfinish(admin);
}
END_TEST

/*
 * A COMMIT that pgfan_transfer cannot know the outcome of: the target's
 * backend stops (SIGSTOP) while its COMMIT waits for a synchronous standby
 * that does not exist, and only then is the call interrupted, so neither
 * the COMMIT nor its cancel (past realign_timeout_ms) is answered.  The call says the
 * outcome is unknown (PGFAN_EOUTCOME, the target still DONE and not counted as committed)
 * and names the transaction; continued, the backend ends its COMMIT, and txid_status() of
 * that transaction says committed, as the message promised it would tell.
 */
START_TEST(a_commit_nobody_answers_is_reported_unknown)
{
    PGconn *admin = pgt_connect();
    char src[64], sync[1200], in_sql[128];
    PGconn *target =
        target_waiting_for_a_standby(admin, src, sizeof src, sync, sizeof sync);
    snprintf(in_sql, sizeof in_sql, "COPY %s FROM STDIN", src);
    const char *in_ptr[1] = {in_sql};
    commit_watch w = {.waiting = "SELECT coalesce(max(pid), 0) FROM pg_stat_activity "
                                 "WHERE datname = 'lib_sync' AND wait_event = 'SyncRep'",
                      .stop = 1};
    pgfan_options o;
    pgfan_options_init(&o);
    o.realign_timeout_ms = 1000;
    pgfan_transfer_result res;
    pgfan_receiver_result tr[1];
    int rc = transfer_interrupted_in(&w, src, 1, &target, in_ptr, &o, &res, tr);
    if (w.stopped)
        kill(w.stopped, SIGCONT);
    pgt_missing_standby(admin, 0);
    PQfinish(target); /* still busy, as the fault says */
    ck_assert_msg(w.stopped, "the COMMIT never waited");
    ck_assert_status(rc, PGFAN_EOUTCOME);
    ck_assert_uint_eq(res.committed, 0);
    ck_assert_int_eq(res.error.code, PGFAN_EOUTCOME);
    ck_assert_int_eq(tr[0].state, PGFAN_RECEIVER_DONE);
    ck_assert_int_eq(tr[0].fault.code, PGFAN_EOUTCOME);
    const char *ask = strstr(res.error.message, "txid_status(");
    ck_assert_msg(ask, "%s", res.error.message);
    long long xid = atoll(ask + strlen("txid_status("));
    PGconn *look = PQconnectdb(sync);
    char *status = NULL;
    for (int tries = 0; tries < 6000; tries++) { /* until its backend has gone */
        free(status);
        status = pgt_value(look, "SELECT txid_status(%lld)", xid);
        if (strcmp(status, "in progress") != 0)
            break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL); /* a bounded poll for a state */
    }
    ck_assert_str_eq(status, "committed");
    char *want = pgt_checksum(admin, src);
    char *got = pgt_checksum(look, src);
    ck_assert_str_eq(got, want);
    free(got), free(want), free(status);
    pgt_exec(look, "DROP TABLE %s", src);
    PQfinish(look);
    pgt_exec(admin, "DROP TABLE %s", src);
    PQfinish(admin);
}
END_TEST

/* Two targets of a 5000-row source table, each on its own connection;
 * target 2's COPY end waits on advisory lock `key` (an AFTER STATEMENT
 * trigger) while the test holds it. */
typedef struct gated_end {
    char src[64], dst[2][64], in_sql[2][200];
    const char *in_ptr[2];
    PGconn *targets[2];
    int key;
} gated_end;

static void gated_end_create(PGconn *admin, gated_end *g, int key)
{
    g->key = key;
    pgt_name(g->src, sizeof g->src, "end_src");
    pgt_exec(admin, "CREATE TABLE %s (id int, t text)", g->src);
    pgt_exec(admin,
             "INSERT INTO %s SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
             g->src);
    for (int i = 0; i < 2; i++) {
        pgt_name(g->dst[i], sizeof g->dst[i], "end_dst");
        pgt_exec(admin, "CREATE TABLE %s (id int, t text)", g->dst[i]);
        g->targets[i] = pgt_connect();
        snprintf(g->in_sql[i], sizeof g->in_sql[i], "COPY %s FROM STDIN", g->dst[i]);
        g->in_ptr[i] = g->in_sql[i];
    }
    pgt_exec(admin,
             "CREATE FUNCTION %s_gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             "PERFORM pg_advisory_xact_lock_shared(%d); RETURN NULL; END $$",
             g->dst[1], key);
    pgt_exec(admin,
             "CREATE TRIGGER gate AFTER INSERT ON %s FOR EACH STATEMENT EXECUTE "
             "FUNCTION %s_gate()",
             g->dst[1], g->dst[1]);
    pgt_exec(admin, "SELECT pg_advisory_lock(%d)", key);
}

/* After the call: no COPY is left running while the lock is still held,
 * then the lock is let go. */
static void gated_end_released(PGconn *admin, gated_end *g)
{
    pgt_assert_no_copy_running(admin);
    pgt_exec(admin, "SELECT pg_advisory_unlock(%d)", g->key);
}

static void gated_end_drop(PGconn *admin, gated_end *g)
{
    for (int i = 0; i < 2; i++) {
        pgt_assert_usable(g->targets[i]);
        PQfinish(g->targets[i]);
    }
    pgt_exec(admin, "DROP TABLE %s, %s, %s", g->src, g->dst[0], g->dst[1]);
    pgt_exec(admin, "DROP FUNCTION %s_gate()", g->dst[1]);
}

static void assert_empty(PGconn *admin, const char *table)
{
    char *n = pgt_value(admin, "SELECT count(*) FROM %s", table);
    ck_assert_str_eq(n, "0");
    free(n);
}

/* The interrupt also reaches a COPY that has all its data and whose end
 * waits (an AFTER STATEMENT trigger on target 2 waits on an advisory lock
 * held here): the statement is cancelled, the call fails with
 * PGFAN_EABORTED, and both targets are usable and empty. */
START_TEST(an_interrupt_cancels_the_wait_for_a_copys_end)
{
    PGconn *admin = pgt_connect();
    gated_end g;
    gated_end_create(admin, &g, 4244);
    pgfan_transfer_result res;
    commit_watch w = {.waiting = "SELECT count(*) FROM pg_stat_activity WHERE "
                                 "wait_event = 'advisory' AND query ILIKE 'copy%'"};
    int rc = transfer_interrupted_in(&w, g.src, 2, g.targets, g.in_ptr, NULL, &res, NULL);
    gated_end_released(admin, &g);
    ck_assert_msg(w.seen, "the end of the COPY never waited");
    ck_assert_status(rc, PGFAN_EABORTED);
    ck_assert_uint_eq(res.committed, 0);
    assert_empty(admin, g.dst[0]);
    assert_empty(admin, g.dst[1]);
    gated_end_drop(admin, &g);
    PQfinish(admin);
}
END_TEST

/* pgfan_transfer bounds the wait for a COPY's end: target 2's COPY end
 * waits on an advisory lock held here.  Loop 0: stall_timeout_ms is the
 * lock_timeout of the transactions it opens, and the server cancels the
 * wait after 1 s with 55P03.  Loop 1: no lock_timeout, end_timeout_ms
 * cancels the COPY after 1 s (57014, PGFAN_ESTALL).  Either happens while
 * the lock is still held; under drop target 1 commits.  Both connections
 * come back idle with lock_timeout as it was. */
START_TEST(a_bound_ends_the_wait_for_a_copys_end)
{
    const int end_timeout = _i == 1;
    PGconn *admin = pgt_connect();
    gated_end g;
    gated_end_create(admin, &g, 4245 + _i);
    pgfan_options o;
    pgfan_options_init(&o);
    ck_assert_uint_eq(o.end_timeout_ms, 0);
    o.policy = PGFAN_POLICY_DROP;
    if (end_timeout)
        o.end_timeout_ms = 1000;
    else
        o.stall_timeout_ms = 1000;
    char out_sql[128];
    snprintf(out_sql, sizeof out_sql, "COPY %s TO STDOUT", g.src);
    PGconn *source = pgt_connect();
    pgfan_transfer_result res;
    pgfan_receiver_result per[2];
    int rc = pgfan_transfer(source, out_sql, 2, g.targets, g.in_ptr, &o, &res, per);
    gated_end_released(admin, &g);
    ck_assert_status(rc, PGFAN_EPARTIAL);
    ck_assert_uint_eq(res.committed, 1);
    ck_assert(per[0].may_commit && !per[0].has_fault);
    ck_assert(per[1].has_fault);
    ck_assert_str_eq(per[1].fault.sqlstate, end_timeout ? "57014" : "55P03");
    if (end_timeout) {
        ck_assert_int_eq(per[1].fault.code, PGFAN_ESTALL);
        ck_assert_msg(strstr(per[1].fault.message, "within 1000 ms (the end timeout)"),
                      "%s", per[1].fault.message);
    }
    char *want = pgt_checksum(admin, g.src);
    char *got = pgt_checksum(admin, g.dst[0]);
    ck_assert_str_eq(got, want);
    free(got), free(want);
    assert_empty(admin, g.dst[1]);
    for (int i = 0; i < 2; i++) {
        char *timeout = pgt_value(g.targets[i], "SHOW lock_timeout");
        ck_assert_str_eq(timeout, "0");
        free(timeout);
    }
    PQfinish(source);
    gated_end_drop(admin, &g);
    PQfinish(admin);
}
END_TEST

static Suite *integration_suite(void)
{
    Suite *s = suite_create("integration");
    TCase *tc = tcase_create("fan-out");
    tcase_set_timeout(tc, 1800);
    tcase_add_loop_test(tc, fan_out_matrix, 0, 9);
    tcase_add_loop_test(tc, zero_and_one_row, 0, 3);
    tcase_add_loop_test(tc, awkward_values_survive, 0, 3);
    tcase_add_loop_test(tc, one_fifty_megabyte_value, 0, 2);
    tcase_add_test(tc, five_million_small_rows);
    tcase_add_test(tc, iterator_producer_to_statement_receivers);
    tcase_add_loop_test(tc, statement_producer_to_call_receivers, 0, 3);
    tcase_add_test(tc, manager_reports_progress);
    suite_add_tcase(s, tc);
    TCase *settings = tcase_create("settings");
    tcase_set_timeout(settings, 300);
    tcase_add_loop_test(settings, settings_that_change_data_are_refused_at_start, 0, 6);
    tcase_add_test(settings, settings_that_do_not_change_data_are_accepted);
    suite_add_tcase(s, settings);
    TCase *tls = tcase_create("tls");
    tcase_set_timeout(tls, 300); /* TLS handshakes under valgrind on a busy machine */
    tcase_add_test(tls, transfer_over_tls);
    suite_add_tcase(s, tls);
    TCase *refuse = tcase_create("refusals");
    tcase_set_timeout(refuse, 300);
    tcase_add_test(refuse, non_copy_statements_are_refused);
    tcase_add_test(refuse, format_mismatch_is_refused_before_data_moves);
    tcase_add_test(refuse, column_count_mismatch_is_refused);
    tcase_add_test(refuse, missing_target_table_reports_the_server_error);
    tcase_add_test(refuse, failing_source_statement_reports_the_server_error);
    tcase_add_test(refuse, caller_transaction_is_left_to_the_caller);
    tcase_add_test(refuse, same_connection_twice_is_refused);
    suite_add_tcase(s, refuse);
    TCase *endings = tcase_create("endings");
    tcase_set_timeout(endings, 300);
    tcase_add_loop_test(endings, a_waiting_commit_says_what_the_server_did, 0, 2);
    tcase_add_test(endings, a_commit_nobody_answers_is_reported_unknown);
    tcase_add_test(endings, an_interrupt_cancels_the_wait_for_a_copys_end);
    tcase_add_loop_test(endings, a_bound_ends_the_wait_for_a_copys_end, 0, 2);
    suite_add_tcase(s, endings);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(integration_suite());
    srunner_add_suite(sr, faults_suite());
    srunner_add_suite(sr, soak_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

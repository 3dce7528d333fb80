/* COPY on the wire: framing, classifying and reading, over socketpairs. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "suites.h"
#include "wire.h"

static void make_pair(int sv[2], int sndbuf)
{
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    if (sndbuf)
        ck_assert_int_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf),
                         0);
}

/* Reads everything queued on fd, appending to *buf. */
static void drain(int fd, char **buf, size_t *len, size_t *cap)
{
    for (;;) {
        if (*cap - *len < 65536) {
            *cap = *cap * 2 + 65536;
            *buf = realloc(*buf, *cap);
        }
        ssize_t n = recv(fd, *buf + *len, *cap - *len, MSG_DONTWAIT);
        if (n <= 0) {
            ck_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
            return;
        }
        *len += (size_t)n;
    }
}

static uint32_t be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* Parses CopyData messages and checks their payload is `data`. */
static void assert_frames(const char *wire, size_t wire_len, const char *data, size_t len)
{
    size_t pos = 0, got = 0;
    while (pos < wire_len) {
        ck_assert_int_eq(wire[pos], 'd');
        uint32_t size = be32(wire + pos + 1) - 4;
        ck_assert_uint_le(size, FAN_WIRE_MESSAGE_MAX);
        ck_assert_uint_gt(size, 0);
        ck_assert_int_eq(memcmp(wire + pos + 5, data + got, size), 0);
        got += size;
        pos += 5 + size;
    }
    ck_assert_uint_eq(pos, wire_len);
    ck_assert_uint_eq(got, len);
}

static char *pattern(size_t len)
{
    char *d = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        d[i] = (char)(i * 131 + i / 7);
    return d;
}

/* Sends the rest of a slot through sv[0], reading sv[1] whenever the
 * socket is full, and reads what is left. */
static void send_draining(int sv[2], const char *data, size_t len, size_t *sent,
                          char **wire, size_t *wlen, size_t *wcap)
{
    int rc;
    while ((rc = fan_wire_send(sv[0], data, len, sent, fan_wire_length(len))) == 1) {
        ck_assert_uint_le(fan_wire_data_sent(len, *sent), len);
        drain(sv[1], wire, wlen, wcap);
    }
    ck_assert_int_eq(rc, 0);
    drain(sv[1], wire, wlen, wcap);
}

/* A slot goes out whole, in messages of at most FAN_WIRE_MESSAGE_MAX,
 * through a socket that takes a few KiB at a time. */
START_TEST(a_slot_is_framed_as_copydata_messages)
{
    static const size_t lens[] = {0, 1, 65535, 65536, 65537, 3 * 65536 + 17, 1 << 20};
    size_t len = lens[_i];
    char *data = pattern(len);
    int sv[2];
    make_pair(sv, 4096);
    size_t sent = 0, total = fan_wire_length(len), wlen = 0, wcap = 0;
    char *wire = NULL;
    send_draining(sv, data, len, &sent, &wire, &wlen, &wcap);
    ck_assert_uint_eq(sent, total);
    ck_assert_uint_eq(fan_wire_data_sent(len, sent), len);
    ck_assert_uint_eq(wlen, total);
    assert_frames(wire, wlen, data, len);
    free(wire);
    free(data);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

/* Sending stops inside a message; the rest of that message, kept apart,
 * goes first, and the slot's own bytes follow from the next message on. */
START_TEST(a_message_half_sent_is_finished_from_its_kept_rest)
{
    size_t len = 3 * 65536 + 999;
    char *data = pattern(len);
    int sv[2];
    make_pair(sv, 4096);
    size_t sent = 0, total = fan_wire_length(len), wlen = 0, wcap = 0;
    char *wire = NULL;
    fan_wire w;
    fan_wire_start(&w);
    ck_assert_int_eq(fan_wire_send(sv[0], data, len, &sent, total), 1);
    ck_assert_uint_gt(sent, 0);
    ck_assert_uint_ne(fan_wire_message_end(len, sent), sent);
    ck_assert_int_eq(fan_wire_keep_rest(&w, data, len, sent), 0);
    memset(data, 'x', len); /* the slot is reused meanwhile */
    while (fan_wire_send_rest(&w, sv[0], &sent) == 1)
        drain(sv[1], &wire, &wlen, &wcap);
    ck_assert_uint_eq(fan_wire_message_end(len, sent), sent);
    drain(sv[1], &wire, &wlen, &wcap);
    ck_assert_uint_eq(wlen, sent);
    char *want = pattern(len);
    assert_frames(wire, wlen, want, fan_wire_data_sent(len, sent));
    /* The rest of the slot, from a message boundary. */
    memcpy(data, want, len);
    send_draining(sv, data, len, &sent, &wire, &wlen, &wcap);
    ck_assert_uint_eq(sent, total);
    assert_frames(wire, wlen, want, len);
    fan_wire_stop(&w);
    free(wire);
    free(want);
    free(data);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

/* A message: type, length word, body of n bytes. */
static size_t message(char *out, char type, size_t n)
{
    uint32_t v = (uint32_t)n + 4;
    out[0] = type;
    out[1] = (char)(v >> 24);
    out[2] = (char)(v >> 16);
    out[3] = (char)(v >> 8);
    out[4] = (char)v;
    memset(out + 5, 'm', n);
    return 5 + n;
}

START_TEST(notices_and_reports_mean_the_copy_runs)
{
    char buf[512];
    size_t len = message(buf, 'N', 40);
    len += message(buf + len, 'S', 20);
    len += message(buf + len, 'A', 12);
    len += message(buf + len, 'N', 0);
    int left = 0;
    uint64_t notices = 0;
    ck_assert_uint_eq(fan_wire_scan(buf, len, &left, &notices), len);
    ck_assert_int_eq(left, 0);
    ck_assert_uint_eq(notices, 2);
    /* A message cut short waits for the rest, whatever its type: the scan
     * takes the whole messages before it. */
    const size_t bounds[] = {0, 45, 70, 87, 92};
    ck_assert_uint_eq(bounds[4], len);
    for (size_t cut = 0; cut <= len; cut++) {
        size_t want = 0;
        for (int b = 0; b < 5; b++)
            if (bounds[b] <= cut)
                want = bounds[b];
        left = 0;
        notices = 0;
        ck_assert_uint_eq(fan_wire_scan(buf, cut, &left, &notices), want);
        ck_assert_int_eq(left, 0);
        ck_assert_uint_eq(notices, (want >= 45) + (want >= 92));
    }
}
END_TEST

/* An error right behind a notice, in one read: the notice counts, the scan
 * stops at the error and flags it, whatever follows. */
START_TEST(an_error_behind_a_notice_is_flagged)
{
    char buf[512];
    size_t n1 = message(buf, 'N', 30);
    size_t len = n1 + message(buf + n1, 'E', 50);
    len += message(buf + len, 'Z', 1);
    int left = 0;
    uint64_t notices = 0;
    ck_assert_uint_eq(fan_wire_scan(buf, len, &left, &notices), n1);
    ck_assert_int_eq(left, 1);
    ck_assert_uint_eq(notices, 1);
    /* Its header alone is enough. */
    left = 0;
    ck_assert_uint_eq(fan_wire_scan(buf, n1 + 5, &left, &notices), n1);
    ck_assert_int_eq(left, 1);
    /* A malformed length is not taken for a notice. */
    buf[1] = buf[2] = buf[3] = 0;
    buf[4] = 3;
    left = 0;
    ck_assert_uint_eq(fan_wire_scan(buf, len, &left, &notices), 0);
    ck_assert_int_eq(left, 1);
}
END_TEST

/* Reading classifies across reads: a notice split in two counts once, and
 * an error that follows is flagged with nothing lost. */
START_TEST(reading_keeps_every_byte_in_order)
{
    int sv[2];
    make_pair(sv, 0);
    char buf[512];
    size_t n1 = message(buf, 'N', 100);
    size_t len = n1 + message(buf + n1, 'E', 60);
    fan_wire w;
    fan_wire_start(&w);
    uint64_t notices = 0;
    ck_assert_int_eq(send(sv[1], buf, 50, 0), 50);
    ck_assert_int_eq(fan_wire_read(&w, sv[0], &notices), 0);
    ck_assert_uint_eq(notices, 0);
    ck_assert_uint_eq(w.whole, 0);
    ck_assert_int_eq(send(sv[1], buf + 50, len - 50, 0), (ssize_t)(len - 50));
    ck_assert_int_eq(fan_wire_read(&w, sv[0], &notices), 0);
    ck_assert_uint_eq(notices, 1);
    ck_assert_uint_eq(w.whole, n1);
    ck_assert_int_eq(w.left_copy, 1);
    ck_assert_uint_eq(w.in_len, len);
    ck_assert_int_eq(memcmp(w.in, buf, len), 0);
    close(sv[1]);
    errno = EINVAL;
    ck_assert_int_eq(fan_wire_read(&w, sv[0], &notices), -1);
    ck_assert_int_eq(errno, 0); /* closed, not broken */
    fan_wire_stop(&w);
    close(sv[0]);
}
END_TEST

/* ---- COPY OUT ---- */

#define OUT_INLINE 8192

/* A COPY OUT stream: data messages of the sizes in `sizes` (a negative
 * size is a notice of that many bytes), then CopyDone and a
 * CommandComplete.  Payload byte i of message k is k * 31 + i * 7. */
static char *copy_out_stream(const long *sizes, size_t n, size_t *len, size_t *end_at,
                             size_t *data_at)
{
    size_t total = 32;
    for (size_t k = 0; k < n; k++)
        total += 5 + (size_t)labs(sizes[k]);
    char *w = malloc(total), *p = w;
    for (size_t k = 0; k < n; k++) {
        size_t size = (size_t)labs(sizes[k]);
        p += message(p, sizes[k] < 0 ? 'N' : 'd', size);
        data_at[k] = (size_t)(p - w) - size;
        for (size_t i = 0; sizes[k] >= 0 && i < size; i++)
            p[-(long)size + (long)i] = (char)(k * 31 + i * 7);
    }
    *end_at = (size_t)(p - w);
    p += message(p, 'c', 0);
    p += message(p, 'C', 8);
    *len = (size_t)(p - w);
    return w;
}

static size_t pump(int fd, const char *wire, size_t len, size_t off)
{
    while (off < len) {
        ssize_t n = send(fd, wire + off, len - off, MSG_DONTWAIT);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    return off;
}

/* Reads the stream through a socket taking 4 KiB at a time; with
 * `discard_after` >= 0, discards from the moment that many data messages
 * came out.  Checks every message and the bytes left at the end. */
static void read_copy_out(const long *sizes, size_t n, long discard_after)
{
    size_t len, end_at, off = 0, k = 0, data_seen = 0;
    size_t data_at[32];
    ck_assert_uint_le(n, 32);
    char *wire = copy_out_stream(sizes, n, &len, &end_at, data_at);
    int sv[2];
    make_pair(sv, 4096);
    fan_wire_out r;
    ck_assert_int_eq(fan_wire_out_open(&r, OUT_INLINE), 0);
    for (;;) {
        off = pump(sv[0], wire, len, off);
        fan_wire_message m;
        int next = fan_wire_out_next(&r, &m);
        if (next == FAN_WIRE_END)
            break;
        ck_assert_int_ne(next, FAN_WIRE_NOMEM);
        if (next == FAN_WIRE_NEED) {
            int got = fan_wire_out_fill(&r, sv[1]);
            ck_assert_int_ge(got, 0);
            ck_assert(got > 0 || off < len); /* never stuck with all bytes sent */
            if (discard_after >= 0 && data_seen == (size_t)discard_after && !r.discarding)
                fan_wire_out_discard(&r);
            continue;
        }
        while (k < n && r.discarding && sizes[k] > OUT_INLINE)
            k++; /* forgotten without coming out */
        ck_assert_uint_lt(k, n);
        size_t size = (size_t)labs(sizes[k]);
        if (sizes[k] < 0) {
            ck_assert_int_eq(next, FAN_WIRE_ASIDE);
            ck_assert_uint_eq(m.len, 5 + size);
            ck_assert_int_eq(m.data[0], 'N');
        } else {
            ck_assert_int_eq(next, FAN_WIRE_DATA);
            ck_assert_uint_eq(m.len, size);
            ck_assert_int_eq(m.owned != NULL, size > OUT_INLINE);
            ck_assert_int_eq(memcmp(m.data, wire + data_at[k], size), 0);
            data_seen++;
        }
        free(m.owned);
        k++;
    }
    while (k < n && r.discarding && sizes[k] > OUT_INLINE)
        k++;
    ck_assert_uint_eq(k, n);
    /* What is left for libpq starts exactly at CopyDone. */
    off = pump(sv[0], wire, len, off);
    while (fan_wire_out_fill(&r, sv[1]) > 0)
        ;
    ck_assert_uint_eq(r.len - r.start, len - end_at);
    ck_assert_int_eq(memcmp(r.buf + r.start, wire + end_at, len - end_at), 0);
    fan_wire_out_close(&r);
    free(wire);
    close(sv[0]);
    close(sv[1]);
}

static const long out_sizes[] = {0,
                                 1,
                                 100,
                                 OUT_INLINE - 1,
                                 OUT_INLINE,
                                 OUT_INLINE + 1,
                                 -50,
                                 3,
                                 300000,
                                 7,
                                 -300000,
                                 70000,
                                 10,
                                 200,
                                 OUT_INLINE * 2,
                                 0,
                                 1 << 20,
                                 5};

/* Every message comes out whole and in order: small ones in place, ones
 * bigger than inline_max in a buffer of their own, notices aside (one
 * bigger than the read buffer too), and the end is left untouched. */
START_TEST(copy_out_messages_come_out_whole_and_in_order)
{
    read_copy_out(out_sizes, sizeof out_sizes / sizeof *out_sizes, -1);
}
END_TEST

/* After a cancel the data is read and forgotten, a big message half read
 * included, without keeping it; notices still come out, and the end is
 * found at the right byte. */
START_TEST(a_cancelled_copy_out_is_read_to_its_end)
{
    static const long discard_at[] = {0, 2, 6, 7, 9, 10};
    read_copy_out(out_sizes, sizeof out_sizes / sizeof *out_sizes, discard_at[_i]);
}
END_TEST

Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("wire");
    tcase_add_loop_test(tc, a_slot_is_framed_as_copydata_messages, 0, 7);
    tcase_add_test(tc, a_message_half_sent_is_finished_from_its_kept_rest);
    tcase_add_test(tc, notices_and_reports_mean_the_copy_runs);
    tcase_add_test(tc, an_error_behind_a_notice_is_flagged);
    tcase_add_test(tc, reading_keeps_every_byte_in_order);
    tcase_add_test(tc, copy_out_messages_come_out_whole_and_in_order);
    tcase_add_loop_test(tc, a_cancelled_copy_out_is_read_to_its_end, 0, 6);
    suite_add_tcase(s, tc);
    return s;
}

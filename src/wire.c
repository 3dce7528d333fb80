/*
 * COPY on the wire: see wire.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "wire.h"

#define HEADER          5 /* type byte and length word */
#define SPAN            (FAN_WIRE_MESSAGE_MAX + HEADER)
#define FRAMES_PER_SEND 16
#define READ_MIN        8192
#define OUT_BUFFER      (256 * 1024)

int fan_wire_usable(PGconn *conn)
{
    return PQstatus(conn) == CONNECTION_OK && !PQsslInUse(conn) && !PQgssEncInUse(conn) &&
           PQflush(conn) == 0;
}

void fan_wire_start(fan_wire *w)
{
    memset(w, 0, sizeof *w);
    w->pair[0] = w->pair[1] = -1;
    w->on = 1;
}

static void close_pair(int pair[2]);

void fan_wire_stop(fan_wire *w)
{
    if (!w->on)
        return;
    close_pair(w->pair);
    free(w->in);
    free(w->rest);
    memset(w, 0, sizeof *w);
    w->pair[0] = w->pair[1] = -1;
}

/* ---- sending ---- */

size_t fan_wire_length(size_t len)
{
    return len + HEADER * ((len + FAN_WIRE_MESSAGE_MAX - 1) / FAN_WIRE_MESSAGE_MAX);
}

size_t fan_wire_data_sent(size_t len, size_t sent)
{
    size_t off = sent % SPAN;
    size_t data = sent / SPAN * FAN_WIRE_MESSAGE_MAX + (off > HEADER ? off - HEADER : 0);
    return data < len ? data : len;
}

size_t fan_wire_message_end(size_t len, size_t sent)
{
    if (sent % SPAN == 0)
        return sent;
    size_t end = (sent / SPAN + 1) * SPAN, total = fan_wire_length(len);
    return end < total ? end : total;
}

static void put_header(unsigned char *h, size_t n)
{
    uint32_t v = (uint32_t)n + 4;
    h[0] = 'd';
    h[1] = (unsigned char)(v >> 24);
    h[2] = (unsigned char)(v >> 16);
    h[3] = (unsigned char)(v >> 8);
    h[4] = (unsigned char)v;
}

/* Lays out wire bytes [pos, upto) of up to FRAMES_PER_SEND messages. */
static int layout(const char *data, size_t len, size_t pos, size_t upto,
                  unsigned char (*hdr)[HEADER], struct iovec *iov)
{
    int n = 0;
    for (int k = 0; k < FRAMES_PER_SEND && pos < upto; k++) {
        size_t frame = pos / SPAN, off = pos % SPAN;
        size_t start = frame * FAN_WIRE_MESSAGE_MAX;
        size_t size =
            len - start < FAN_WIRE_MESSAGE_MAX ? len - start : FAN_WIRE_MESSAGE_MAX;
        size_t end = frame * SPAN + HEADER + size;
        if (end > upto)
            end = upto;
        if (off < HEADER) {
            size_t h = HEADER - off < end - pos ? HEADER - off : end - pos;
            put_header(hdr[k], size);
            iov[n++] = (struct iovec){.iov_base = hdr[k] + off, .iov_len = h};
            pos += h;
            off = HEADER;
        }
        if (pos < end) {
            iov[n++] = (struct iovec){.iov_base = (char *)data + start + (off - HEADER),
                                      .iov_len = end - pos};
            pos = end;
        }
    }
    return n;
}

int fan_wire_send(int fd, const char *data, size_t len, size_t *sent, size_t upto)
{
    while (*sent < upto) {
        unsigned char hdr[FRAMES_PER_SEND][HEADER];
        struct iovec iov[2 * FRAMES_PER_SEND];
        struct msghdr msg = {.msg_iov = iov};
        msg.msg_iovlen = (size_t)layout(data, len, *sent, upto, hdr, iov);
        /* MSG_NOSIGNAL: a closed connection is an error here, never SIGPIPE. */
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
        }
        *sent += (size_t)n;
    }
    return 0;
}

int fan_wire_keep_rest(fan_wire *w, const char *data, size_t len, size_t sent)
{
    unsigned char hdr[FRAMES_PER_SEND][HEADER];
    struct iovec iov[2 * FRAMES_PER_SEND];
    if (!w->rest && !(w->rest = malloc(SPAN)))
        return -1;
    int n = layout(data, len, sent, fan_wire_message_end(len, sent), hdr, iov);
    w->rest_len = w->rest_off = 0;
    for (int i = 0; i < n; i++) {
        memcpy(w->rest + w->rest_len, iov[i].iov_base, iov[i].iov_len);
        w->rest_len += iov[i].iov_len;
    }
    return 0;
}

int fan_wire_send_rest(fan_wire *w, int fd, size_t *sent)
{
    while (w->rest_off < w->rest_len) {
        ssize_t n = send(fd, w->rest + w->rest_off, w->rest_len - w->rest_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
        }
        w->rest_off += (size_t)n;
        *sent += (size_t)n;
    }
    w->rest_len = w->rest_off = 0;
    return 0;
}

/* ---- reading ---- */

static uint32_t get_u32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

size_t fan_wire_scan(const char *buf, size_t len, int *left_copy, uint64_t *notices)
{
    size_t pos = 0;
    while (len - pos >= HEADER) {
        char type = buf[pos];
        uint32_t size = get_u32(buf + pos + 1);
        /* During COPY IN a server sends notices, and (before PostgreSQL 14)
         * parameter reports; a notification is harmless too.  A malformed
         * length is left for libpq to judge. */
        if ((type != 'N' && type != 'S' && type != 'A') || size < 4) {
            *left_copy = 1;
            return pos;
        }
        if (len - pos - 1 < size)
            break; /* the rest of it has not arrived */
        if (type == 'N')
            ++*notices;
        pos += 1 + (size_t)size;
    }
    return pos;
}

static int grow(fan_wire *w)
{
    if (w->in_cap - w->in_len >= READ_MIN)
        return 0;
    size_t cap = w->in_cap ? w->in_cap * 2 : 4 * READ_MIN;
    char *p = realloc(w->in, cap);
    if (!p)
        return -1;
    w->in = p;
    w->in_cap = cap;
    return 0;
}

int fan_wire_read(fan_wire *w, int fd, uint64_t *notices)
{
    for (;;) {
        if (grow(w) != 0) {
            errno = ENOMEM;
            return -1;
        }
        ssize_t n = recv(fd, w->in + w->in_len, w->in_cap - w->in_len, MSG_DONTWAIT);
        if (n == 0) {
            errno = 0;
            return -1;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        w->in_len += (size_t)n;
        if (!w->left_copy)
            w->whole += fan_wire_scan(w->in + w->whole, w->in_len - w->whole,
                                      &w->left_copy, notices);
    }
}

/* ---- handing bytes to libpq ---- */

/* libpq reads what the stand-in holds until it is empty.  In COPY OUT a
 * parameter report is parsed only by PQgetCopyData (no data is handed
 * over, so it returns 0); PQisBusy parses notices in any state. */
static int libpq_reads(PGconn *conn, int fd, int copy_out)
{
    int queued;
    do {
        if (!PQconsumeInput(conn))
            return -1;
        PQisBusy(conn); /* parses: processes notices, queues notifications */
        if (copy_out) {
            char *none = NULL;
            if (PQgetCopyData(conn, &none, 1) > 0)
                PQfreemem(none);
        }
        if (ioctl(fd, FIONREAD, &queued) != 0)
            return -1;
    } while (queued > 0);
    return 0;
}

static int feed(const int pair[2], PGconn *conn, int fd, const char *bytes, size_t n,
                int copy_out)
{
    size_t off = 0;
    while (off < n) {
        ssize_t k = send(pair[1], bytes + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        if (k > 0)
            off += (size_t)k;
        if (libpq_reads(conn, fd, copy_out) != 0)
            return -1;
    }
    return 0;
}

/* Gives libpq `n` bytes through the stand-in `pair` (made on first use). */
static int give(int pair[2], PGconn *conn, const char *bytes, size_t n, int copy_out)
{
    if (n == 0)
        return 0;
    if (pair[0] < 0 &&
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
        pair[0] = pair[1] = -1;
        return -1;
    }
    int fd = PQsocket(conn);
    int server = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (server < 0)
        return -1;
    int rc = -1;
    /* dup3 replaces the descriptor in one step: its number is never free,
     * so no other thread's open() can take it meanwhile. */
    if (dup3(pair[0], fd, O_CLOEXEC) == fd) {
        rc = feed(pair, conn, fd, bytes, n, copy_out);
        if (dup3(server, fd, O_CLOEXEC) != fd)
            rc = -1;
    }
    close(server);
    return rc;
}

static void close_pair(int pair[2])
{
    for (int i = 0; i < 2; i++)
        if (pair[i] >= 0)
            close(pair[i]);
    pair[0] = pair[1] = -1;
}

int fan_wire_hand_over(fan_wire *w, PGconn *conn, int all)
{
    size_t n = all ? w->in_len : w->whole;
    if (n == 0)
        return 0;
    int rc = give(w->pair, conn, w->in, n, 0);
    memmove(w->in, w->in + n, w->in_len - n);
    w->in_len -= n;
    w->whole = w->whole > n ? w->whole - n : 0;
    return rc;
}

/* ---- COPY OUT ---- */

int fan_wire_out_open(fan_wire_out *r, size_t inline_max)
{
    memset(r, 0, sizeof *r);
    r->pair[0] = r->pair[1] = -1;
    r->inline_max = inline_max;
    r->cap = inline_max + HEADER > OUT_BUFFER ? inline_max + HEADER : OUT_BUFFER;
    if (!(r->buf = malloc(r->cap)))
        return -1;
    r->on = 1;
    return 0;
}

void fan_wire_out_close(fan_wire_out *r)
{
    if (!r->on)
        return;
    close_pair(r->pair);
    free(r->buf);
    free(r->big);
    memset(r, 0, sizeof *r);
    r->pair[0] = r->pair[1] = -1;
}

/* Makes room for a whole message of `size` bytes at the front. */
static int out_room_for(fan_wire_out *r, size_t size)
{
    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->len - r->start);
        r->len -= r->start;
        r->start = 0;
    }
    if (size <= r->cap)
        return 0;
    char *p = realloc(r->buf, size);
    if (!p)
        return -1;
    r->buf = p;
    r->cap = size;
    return 0;
}

/* Where the next read goes, and how much it may take. */
static char *out_target(fan_wire_out *r, size_t *room)
{
    if (r->start == r->len)
        r->start = r->len = 0;
    if (r->big) {
        *room = r->big_len - r->big_have;
        return r->big + r->big_have;
    }
    if (r->skip) {
        *room = r->skip < r->cap - r->len ? r->skip : r->cap - r->len;
        return r->buf + r->len;
    }
    if (r->len == r->cap)
        out_room_for(r, 0);
    *room = r->cap - r->len;
    return r->buf + r->len;
}

int fan_wire_out_fill(fan_wire_out *r, int fd)
{
    size_t room;
    char *to = out_target(r, &room);
    if (room == 0)
        return 1; /* a whole message is waiting */
    for (;;) {
        ssize_t n = recv(fd, to, room, MSG_DONTWAIT);
        if (n > 0) {
            if (r->big)
                r->big_have += (size_t)n;
            else if (r->skip)
                r->skip -= (size_t)n; /* read into free space, then forgotten */
            else
                r->len += (size_t)n;
            return 1;
        }
        if (n == 0) {
            errno = 0;
            return -1;
        }
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
}

/* A data message bigger than inline_max: read into a buffer of its own
 * (or skipped while discarding). */
static int out_begin_big(fan_wire_out *r, size_t payload)
{
    size_t have = r->len - r->start - HEADER;
    if (have > payload)
        have = payload;
    if (r->discarding) {
        r->skip = payload - have;
    } else {
        if (!(r->big = malloc(payload ? payload : 1)))
            return -1;
        memcpy(r->big, r->buf + r->start + HEADER, have);
        r->big_len = payload;
        r->big_have = have;
    }
    r->start += HEADER + have;
    return 0;
}

int fan_wire_out_next(fan_wire_out *r, fan_wire_message *m)
{
    memset(m, 0, sizeof *m);
    if (r->big) {
        if (r->big_have < r->big_len)
            return FAN_WIRE_NEED;
        m->data = m->owned = r->big;
        m->len = r->big_len;
        r->big = NULL;
        return FAN_WIRE_DATA;
    }
    if (r->skip)
        return FAN_WIRE_NEED;
    size_t avail = r->len - r->start;
    if (avail < HEADER) {
        if (r->len == r->cap)
            out_room_for(r, 0);
        return FAN_WIRE_NEED;
    }
    const char *h = r->buf + r->start;
    uint32_t size = get_u32(h + 1);
    if ((h[0] != 'd' && h[0] != 'N' && h[0] != 'A' && h[0] != 'S') || size < 4)
        return FAN_WIRE_END; /* CopyDone, an error, or bytes for libpq to judge */
    if (h[0] == 'd' && size - 4 > r->inline_max)
        return out_begin_big(r, size - 4) == 0 ? FAN_WIRE_NEED : FAN_WIRE_NOMEM;
    if (avail - 1 < size)
        return out_room_for(r, 1 + (size_t)size) == 0 ? FAN_WIRE_NEED : FAN_WIRE_NOMEM;
    r->start += 1 + (size_t)size;
    if (h[0] != 'd') {
        m->data = h;
        m->len = 1 + (size_t)size;
        return FAN_WIRE_ASIDE;
    }
    m->data = h + HEADER;
    m->len = size - 4;
    return FAN_WIRE_DATA;
}

int fan_wire_out_begin(fan_wire_out *r, PGconn *conn)
{
    for (;;) {
        size_t avail = r->len - r->start;
        if (avail < HEADER)
            return FAN_WIRE_NEED;
        const char *h = r->buf + r->start;
        uint32_t size = get_u32(h + 1);
        if ((h[0] != 'H' && h[0] != 'N' && h[0] != 'A' && h[0] != 'S') || size < 4)
            return fan_wire_out_give_rest(r, conn) == 0 ? FAN_WIRE_END : FAN_WIRE_FAILED;
        if (avail - 1 < size)
            return out_room_for(r, 1 + (size_t)size) == 0 ? FAN_WIRE_NEED
                                                          : FAN_WIRE_FAILED;
        /* libpq is waiting for the answer: PQisBusy parses all of these. */
        if (give(r->pair, conn, h, 1 + (size_t)size, 0) != 0)
            return FAN_WIRE_FAILED;
        r->start += 1 + (size_t)size;
        if (h[0] == 'H')
            return FAN_WIRE_STARTED;
    }
}

int fan_wire_out_give(fan_wire_out *r, PGconn *conn, const fan_wire_message *aside)
{
    return give(r->pair, conn, aside->data, aside->len, 1);
}

int fan_wire_out_give_rest(fan_wire_out *r, PGconn *conn)
{
    int rc = give(r->pair, conn, r->buf + r->start, r->len - r->start, 0);
    r->start = r->len = 0;
    return rc;
}

void fan_wire_out_discard(fan_wire_out *r)
{
    r->discarding = 1;
    if (r->big) {
        r->skip = r->big_len - r->big_have;
        free(r->big);
        r->big = NULL;
    }
}

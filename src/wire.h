/*
 * COPY on the wire.
 *
 * COPY IN, for a statement receiver on a plain connection
 * (neither TLS nor GSS encryption).
 *
 * While in COPY IN, libpq parses nothing but notices: an ErrorResponse it
 * has read stays in its buffer, unseen, until the COPY ends.  And libpq
 * reads the socket on its own whenever a write would block.  So the
 * receiver does the COPY's socket work itself: CopyData messages go out
 * with sendmsg straight from the ring slot, and every byte the server sends
 * is read here first.  Each message is classified as it arrives: notices,
 * notifications and parameter reports mean the COPY still runs; anything
 * else means the server left COPY mode (its error is behind it).
 *
 * libpq must still see every byte, in order, to deliver notices to the
 * connection's own notice receiver and to parse the server's answer at the
 * end.  A hand-over gives it what was read: for its duration a socketpair
 * holding those bytes stands in for the connection's socket (same
 * descriptor number), and libpq reads them from it.  libpq is only called
 * from the receiver's thread, so nothing else reads the socket meanwhile.
 */
#ifndef FAN_WIRE_H
#define FAN_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

/*
 * The largest CopyData message sent; a slot goes out in pieces of at most
 * this (COPY data is a byte stream, messages need not end at rows).  The
 * server reads a whole message before it parses any of it, into a 64 KiB
 * COPY input buffer: bigger messages make it wait longer and copy more.
 * Measured against 128 KiB messages (3 targets, text): the servers used
 * less CPU and the copy finished sooner in 7 of 7 paired runs.
 */
#define FAN_WIRE_MESSAGE_MAX 65536

typedef struct fan_wire {
    int on;   /* this receiver does the socket work */
    char *in; /* read from the server, not yet handed to libpq */
    size_t in_len, in_cap;
    size_t whole;  /* in[0, whole) are whole messages, classified */
    int left_copy; /* a message other than N/A/S was read */
    int pair[2];   /* the stand-in socketpair, made at the first hand-over */
    /* the rest of a message half sent when sending stopped: the server
     * reads messages whole, and the slot may be reused before it goes */
    char *rest;
    size_t rest_len, rest_off;
    const char *cur; /* the slot being sent, while the receiver sends it */
    size_t cur_len;
} fan_wire;

/* Whether the connection is plain and libpq holds no unsent output. */
int fan_wire_usable(PGconn *conn);
void fan_wire_start(fan_wire *w);
/* Frees what start and hand-overs made (nothing unless on); the bytes not
 * handed over are dropped (call fan_wire_hand_over with all set first). */
void fan_wire_stop(fan_wire *w);

/* Bytes on the wire for `len` bytes of COPY data, and how many of those
 * bytes are data among the first `sent` wire bytes. */
size_t fan_wire_length(size_t len);
size_t fan_wire_data_sent(size_t len, size_t sent);
/* The wire offset at which the message holding wire byte `sent` ends;
 * `sent` itself at a message boundary. */
size_t fan_wire_message_end(size_t len, size_t sent);
/* Keeps a copy of wire bytes [sent, message end) of `data`.  Returns 0, or
 * -1 without memory. */
int fan_wire_keep_rest(fan_wire *w, const char *data, size_t len, size_t sent);
/* Sends the kept rest, advancing *sent.  Returns as fan_wire_send. */
int fan_wire_send_rest(fan_wire *w, int fd, size_t *sent);

/*
 * Sends wire bytes [*sent, upto) of `data` framed as CopyData messages,
 * without blocking.  Returns 0 when all are sent, 1 when the socket is
 * full, -1 on a socket error (errno set).
 */
int fan_wire_send(int fd, const char *data, size_t len, size_t *sent, size_t upto);

/*
 * Reads what the server sent, without blocking, and classifies the whole
 * messages among it (w->left_copy; *notices grows by the notices).
 * Returns 0, or -1 when the server closed the connection (errno 0) or on a
 * socket error.
 */
int fan_wire_read(fan_wire *w, int fd, uint64_t *notices);

/*
 * Classifies the whole messages in buf[0, len): returns the length of the
 * longest prefix made of whole messages that mean the COPY still runs,
 * stopping at (and flagging in *left_copy) the first that does not.
 */
size_t fan_wire_scan(const char *buf, size_t len, int *left_copy, uint64_t *notices);

/*
 * Gives libpq the whole messages read (all bytes read, with `all`), and
 * lets it process the notices among them.  Returns 0, or -1 when the
 * stand-in could not be set up or libpq failed to read it.
 */
int fan_wire_hand_over(fan_wire *w, PGconn *conn, int all);

/*
 * COPY OUT on the wire, for a statement producer on a plain connection.
 *
 * libpq holds a whole CopyData message in its input buffer and
 * PQgetCopyData returns a copy of it: a huge row costs twice its size, and
 * every row a malloc and two copies.  So the producer reads the COPY's
 * bytes itself: a message up to inline_max is read in place, one bigger
 * into a buffer of its own that the ring then keeps as a slot.  libpq gets
 * (through the same stand-in as above) the messages before the
 * CopyOutResponse, every notice, notification and parameter report, and
 * everything from the first other message on (CopyDone, an error), so it
 * delivers notices and parses the COPY's end as always.  Only whole
 * messages are handed over before that, so libpq is never in the middle of
 * one.
 */
typedef struct fan_wire_out {
    int on;
    char *buf; /* buf[start, len) read and not yet taken */
    size_t cap, start, len;
    size_t inline_max;
    char *big; /* a data message bigger than inline_max, being read */
    size_t big_len, big_have;
    int discarding; /* after a cancel: data is read and forgotten */
    size_t skip;    /* bytes of a big message still to be forgotten */
    int pair[2];
} fan_wire_out;

enum fan_wire_next {
    FAN_WIRE_NEED,    /* read more (fan_wire_out_fill) */
    FAN_WIRE_DATA,    /* a CopyData payload */
    FAN_WIRE_ASIDE,   /* a message for libpq (fan_wire_out_give) */
    FAN_WIRE_END,     /* the server left COPY OUT: give libpq the rest */
    FAN_WIRE_NOMEM,   /* no memory for the next message */
    FAN_WIRE_STARTED, /* fan_wire_out_begin: libpq has the CopyOutResponse */
    FAN_WIRE_FAILED   /* fan_wire_out_begin: the stand-in failed, or no memory */
};

typedef struct fan_wire_message {
    const char *data; /* valid until the next call on the reader */
    size_t len;
    char *owned; /* when not NULL, data is this malloc'd buffer, the caller's */
} fan_wire_message;

/* Returns 0, or -1 without memory. */
int fan_wire_out_open(fan_wire_out *r, size_t inline_max);
void fan_wire_out_close(fan_wire_out *r);
/* Reads once, without blocking.  Returns 1 when bytes came (or a whole
 * message waits), 0 when none were there, -1 when the server closed the
 * connection (errno 0) or on a socket error. */
int fan_wire_out_fill(fan_wire_out *r, int fd);
/* The next message read, or what to do. */
int fan_wire_out_next(fan_wire_out *r, fan_wire_message *m);
/* While the COPY starts: gives libpq the whole messages read, up to the
 * CopyOutResponse.  Returns FAN_WIRE_STARTED when that was handed over
 * (the COPY runs), FAN_WIRE_END when another answer came (all of it handed
 * over: libpq reads on), FAN_WIRE_NEED or FAN_WIRE_FAILED. */
int fan_wire_out_begin(fan_wire_out *r, PGconn *conn);
/* Gives libpq a message FAN_WIRE_ASIDE returned (libpq is in COPY OUT). */
int fan_wire_out_give(fan_wire_out *r, PGconn *conn, const fan_wire_message *aside);
/* Gives libpq every byte read and not taken.  Returns 0, or -1 when the
 * stand-in failed. */
int fan_wire_out_give_rest(fan_wire_out *r, PGconn *conn);
/* From now on data messages are read and forgotten (a cancelled COPY). */
void fan_wire_out_discard(fan_wire_out *r);

#endif

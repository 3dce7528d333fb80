#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ring.h"

typedef struct record_header {
    uint64_t seq;
    uint64_t len;
    uint64_t rows;
} record_header;

int fan_journal_open(fan_journal *j, const char *dir, uint64_t limit)
{
    memset(j, 0, sizeof *j);
    j->fd = -1;
    j->limit = limit;
    if (!dir || !*dir)
        dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    /* An unnamed file where the kernel offers one; else a named one that
     * is unlinked at once.  Either way nothing is left behind. */
    j->fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (j->fd < 0) {
        size_t n = strlen(dir) + sizeof "/pgfan-journal-XXXXXX";
        char *path = malloc(n);
        if (!path)
            return -1;
        snprintf(path, n, "%s/pgfan-journal-XXXXXX", dir);
        j->fd = mkostemp(path, O_CLOEXEC);
        if (j->fd >= 0)
            unlink(path);
        free(path);
        if (j->fd < 0)
            return -1;
    }
    return 0;
}

void fan_journal_close(fan_journal *j)
{
    if (j->fd >= 0)
        close(j->fd);
    free(j->offsets);
    j->fd = -1;
    j->offsets = NULL;
}

void fan_journal_start(fan_journal *j, uint64_t seq)
{
    j->active = 1;
    j->full = 0;
    j->first = seq;
    j->size = 0;
    j->noffsets = 0;
    /* Relaxed: no reader reads the journal while none is spilled (J3). */
    atomic_store_explicit(&j->end, seq, memory_order_relaxed);
}

static int write_all(int fd, const void *buf, size_t n, uint64_t at)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
        at += (uint64_t)w;
    }
    return 0;
}

/* The budget (or the disk) ran out: no more appends until a reset. */
static int overflow(fan_journal *j)
{
    j->full = 1;
    /* J4: seq_cst, before the writer's next scan_min() loads `spilled`. */
    if (j->keep)
        atomic_store_explicit(&j->overflowed, 1, memory_order_seq_cst);
    return -1;
}

int fan_journal_append(fan_journal *j, const fan_slot *s)
{
    if (j->full)
        return -1;
    uint64_t need = sizeof(record_header) + s->len;
    if (j->size + need > j->limit)
        return overflow(j);
    if (j->noffsets == j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 1024;
        uint64_t *p = realloc(j->offsets, cap * sizeof *p);
        if (!p)
            return overflow(j);
        j->offsets = p;
        j->cap = cap;
    }
    uint64_t seq = atomic_load_explicit(&j->end, memory_order_relaxed);
    record_header h = {.seq = seq, .len = s->len, .rows = s->rows};
    if (write_all(j->fd, &h, sizeof h, j->size) != 0 ||
        write_all(j->fd, s->data, s->len, j->size + sizeof h) != 0) {
        return overflow(j); /* ENOSPC or an I/O error: as if the budget ran out */
    }
    j->offsets[j->noffsets++] = j->size;
    j->size += need;
    atomic_store_explicit(&j->bytes, j->size, memory_order_relaxed);
    if (j->size > atomic_load_explicit(&j->peak_bytes, memory_order_relaxed))
        atomic_store_explicit(&j->peak_bytes, j->size, memory_order_relaxed);
    /* J1: release after the record's write(). */
    atomic_store_explicit(&j->end, seq + 1, memory_order_release);
    return 0;
}

uint64_t fan_journal_offset(const fan_journal *j, uint64_t seq)
{
    return j->offsets[seq - j->first];
}

void fan_journal_reset(fan_journal *j)
{
    if (j->keep)
        return; /* retries may replay it from the start */
    j->active = 0;
    j->full = 0;
    j->size = 0;
    j->noffsets = 0;
    atomic_store_explicit(&j->bytes, 0, memory_order_relaxed);
    /* Gives the disk space back.  Failing only leaves it allocated: the
     * next records overwrite the file from offset 0 all the same. */
    if (ftruncate(j->fd, 0) != 0) {
    }
}

static int read_all(int fd, void *buf, size_t n, uint64_t at)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)at);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        at += (uint64_t)r;
    }
    return 0;
}

int fan_journal_read(fan_journal *j, uint64_t *offset, uint64_t seq, fan_slot *into,
                     int skip)
{
    record_header h;
    if (read_all(j->fd, &h, sizeof h, *offset) != 0)
        return -1;
    if (h.seq != seq) {
        errno = EIO;
        return -1;
    }
    if (!skip) {
        if (h.len > into->cap) {
            char *p = realloc(into->data, h.len);
            if (!p)
                return -1;
            into->data = p;
            into->cap = h.len;
        }
        if (read_all(j->fd, into->data, h.len, *offset + sizeof h) != 0)
            return -1;
        into->len = h.len;
        into->rows = h.rows;
    }
    *offset += sizeof h + h.len;
    return 0;
}

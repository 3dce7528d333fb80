/*
 * csv_loader: load one CSV file into the same table of several databases,
 * reading the file once.
 *
 *   csv_loader FILE.csv TABLE TARGET_CONNINFO [TARGET_CONNINFO ...]
 *
 * An iterator producer hands the file to the library in 64 KiB pieces,
 * cut anywhere: the library re-cuts the stream at row boundaries (quoted
 * newlines included) and counts rows.  Malformed CSV (an unterminated
 * quote) fails the copy with PGFAN_EDATA and nothing is committed.
 * pgfan_transfer() wraps each target in its own transaction and, with the
 * default policy, commits none unless every target succeeded.
 */
#include <pgfan.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct file_chunks {
    FILE *f;
    char buf[65536];
    int error;
} file_chunks;

/* The iterator: the next piece of the file, 0 at its end, -1 on error. */
static int next_piece(void *arg, const char **data, size_t *len)
{
    file_chunks *fc = arg;
    size_t n = fread(fc->buf, 1, sizeof fc->buf, fc->f);
    if (n == 0) {
        if (ferror(fc->f)) {
            fc->error = errno;
            return -1;
        }
        return 0;
    }
    *data = fc->buf;
    *len = n;
    return 1;
}

static PGconn *connect_or_exit(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "csv_loader: cannot connect: %s", PQerrorMessage(c));
        exit(2);
    }
    return c;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: csv_loader FILE.csv TABLE TARGET [TARGET ...]\n");
        return 2;
    }
    file_chunks fc = {.f = fopen(argv[1], "rb")};
    if (!fc.f) {
        fprintf(stderr, "csv_loader: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    size_t n = (size_t)argc - 3;
    PGconn **targets = calloc(n, sizeof *targets);
    char sql[256];
    snprintf(sql, sizeof sql, "COPY %s FROM STDIN (FORMAT csv)", argv[2]);
    for (size_t i = 0; i < n; i++)
        targets[i] = connect_or_exit(argv[3 + i]);

    /* The manager API with an iterator producer; each target in its own
     * transaction so that a failure leaves every table as it was. */
    pgfan_producer *producer;
    pgfan_manager *m = NULL;
    int rc = pgfan_producer_new_iterator(&producer, PGFAN_FORMAT_CSV, next_piece, &fc);
    if (rc == PGFAN_OK && (rc = pgfan_manager_new(&m, producer, NULL)) != PGFAN_OK)
        pgfan_producer_free(producer);
    for (size_t i = 0; rc == PGFAN_OK && i < n; i++) {
        pgfan_receiver *r;
        PQclear(PQexec(targets[i], "BEGIN"));
        rc = pgfan_receiver_new_statement(&r, targets[i], sql);
        if (rc == PGFAN_OK && (rc = pgfan_manager_add_receiver(m, r, NULL)) != PGFAN_OK)
            pgfan_receiver_free(r);
    }
    if (rc == PGFAN_OK)
        rc = pgfan_manager_run(m);

    if (rc == PGFAN_OK) {
        pgfan_progress p;
        pgfan_manager_progress(m, &p);
        printf("loaded %llu rows (%llu bytes) into %zu targets\n",
               (unsigned long long)p.producer_rows, (unsigned long long)p.producer_bytes,
               n);
    } else {
        pgfan_fault f;
        size_t nf = m ? pgfan_manager_fault_count(m) : 0;
        fprintf(stderr, "csv_loader: %s\n", pgfan_strerror(rc));
        for (size_t i = 0; i < nf && pgfan_manager_fault(m, i, &f) == PGFAN_OK; i++)
            fprintf(stderr, "  %s %s\n", f.sqlstate, f.message);
    }
    /* All or nothing: commit only when every target succeeded. */
    for (size_t i = 0; i < n; i++) {
        PQclear(PQexec(targets[i], rc == PGFAN_OK ? "COMMIT" : "ROLLBACK"));
        PQfinish(targets[i]);
    }
    pgfan_manager_free(m);
    free(targets);
    fclose(fc.f);
    return rc == PGFAN_OK ? 0 : 1;
}

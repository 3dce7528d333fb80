/*
 * copy_to_file: write the output of a COPY ... TO STDOUT to a file with a
 * call receiver, and optionally load it into target databases in the same
 * pass.
 *
 *   copy_to_file SOURCE_CONNINFO "COPY ... TO STDOUT" FILE [TARGET_CONNINFO "COPY ...
 * FROM STDIN"]...
 *
 * The call receiver runs in its own thread and gets whole rows in order; a
 * write error faults it (PGFAN_ECALLBACK) and, with the default policy,
 * fails the whole copy, so the targets are rolled back too.
 */
#include <pgfan.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_rows(void *arg, const char *data, size_t len)
{
    FILE *f = arg;
    return fwrite(data, 1, len, f) == len ? 0 : -1;
}

static PGconn *connect_or_exit(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "copy_to_file: cannot connect: %s", PQerrorMessage(c));
        exit(2);
    }
    return c;
}

int main(int argc, char **argv)
{
    if (argc < 4 || (argc - 4) % 2 != 0) {
        fprintf(stderr, "usage: copy_to_file SOURCE SQL FILE [TARGET SQL]...\n");
        return 2;
    }
    FILE *out = fopen(argv[3], "wb");
    if (!out) {
        fprintf(stderr, "copy_to_file: %s: %s\n", argv[3], strerror(errno));
        return 2;
    }
    PGconn *source = connect_or_exit(argv[1]);
    int ntargets = (argc - 4) / 2;
    PGconn **targets = calloc((size_t)ntargets + 1, sizeof *targets);

    pgfan_producer *p;
    pgfan_manager *m = NULL;
    int rc = pgfan_producer_new_statement(&p, source, argv[2]);
    if (rc == PGFAN_OK && (rc = pgfan_manager_new(&m, p, NULL)) != PGFAN_OK)
        pgfan_producer_free(p);
    pgfan_receiver *file;
    if (rc == PGFAN_OK &&
        (rc = pgfan_receiver_new_call(&file, write_rows, out)) == PGFAN_OK) {
        pgfan_receiver_set_label(file, argv[3]);
        if ((rc = pgfan_manager_add_receiver(m, file, NULL)) != PGFAN_OK)
            pgfan_receiver_free(file);
    }
    for (int i = 0; rc == PGFAN_OK && i < ntargets; i++) {
        pgfan_receiver *r;
        targets[i] = connect_or_exit(argv[4 + 2 * i]);
        rc = pgfan_receiver_new_statement(&r, targets[i], argv[5 + 2 * i]);
        if (rc == PGFAN_OK && (rc = pgfan_manager_add_receiver(m, r, NULL)) != PGFAN_OK)
            pgfan_receiver_free(r);
    }
    if (rc == PGFAN_OK)
        rc = pgfan_manager_run(m);
    if (fclose(out) != 0 && rc == PGFAN_OK) {
        fprintf(stderr, "copy_to_file: %s: %s\n", argv[3], strerror(errno));
        rc = PGFAN_ESYSTEM;
    }

    if (rc == PGFAN_OK) {
        pgfan_progress pr;
        pgfan_manager_progress(m, &pr);
        printf("%llu rows to %s and %d targets\n", (unsigned long long)pr.producer_rows,
               argv[3], ntargets);
    } else {
        pgfan_fault f;
        fprintf(stderr, "copy_to_file: %s\n", pgfan_strerror(rc));
        if (m && pgfan_manager_fault_count(m) > 0 &&
            pgfan_manager_fault(m, 0, &f) == PGFAN_OK)
            fprintf(stderr, "  %s %s\n", f.sqlstate, f.message);
    }
    pgfan_manager_free(m);
    for (int i = 0; i < ntargets; i++)
        PQfinish(targets[i]);
    free(targets);
    PQfinish(source);
    return rc == PGFAN_OK ? 0 : 1;
}

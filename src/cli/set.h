/*
 * Table sets: many tables from one snapshot of the source, each read once
 * for every target, K at a time.
 *
 * A coordinating source session exports a snapshot (or imports the one
 * given with --snapshot) and holds it until the end.  Each table is copied
 * by the pgfan command itself, run as a child process on that one table
 * (--table, --snapshot, and the hidden --set-id and --status-file), so a
 * table set gets every check, commit rule and fault handling one table
 * gets.  Each table commits on each target in its own transaction, and
 * notes itself in pgfan.loaded on that target in the same transaction:
 * what a resumed run skips is exactly what committed, whatever killed the
 * run.
 */
#ifndef PGFAN_CLI_SET_H
#define PGFAN_CLI_SET_H

#include "run.h"

/* Copies the table set the options select; returns the exit code. */
int run_set(run *r);

#endif

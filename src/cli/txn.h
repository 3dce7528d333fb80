/*
 * The ending of a run: what happens on every target while everything can
 * still roll back, the COMMIT or two-phase commit, and settling what a
 * lost connection left.  Returns the exit code; what it says is what the
 * servers hold.
 */
#ifndef PGFAN_CLI_TXN_H
#define PGFAN_CLI_TXN_H

#include "run.h"

/* 128 random bits for the prepared transactions' ids. */
void new_run_id(run *r);
/* Under --on-fault drop: target i's COPY ended (with `rows`) while others
 * still load; it commits now, on its own. */
void commit_early(run *r, size_t i, uint64_t rows);
/* Decides each target's fate after the copy (the targets the library says
 * may commit are pending) and returns the exit code. */
int conclude(run *r);

#endif

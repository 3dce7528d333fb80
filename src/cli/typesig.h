/*
 * When binary COPY is safe: the binary form of a column must be the same on
 * the source and on every target.  Types are compared by structure, never
 * by name alone: domains by their base type, arrays by their element type,
 * composites attribute by attribute, ranges by their subtype, recursively.
 * Binary arrays and composites embed the type OIDs of their elements, so
 * those OIDs take part in the comparison.  reg* types (raw OIDs), money
 * (its units follow lc_monetary), pseudo-types (anonymous records) and
 * types without binary send/receive functions are copied as text.
 */
#ifndef PGFAN_CLI_TYPESIG_H
#define PGFAN_CLI_TYPESIG_H

#include <stddef.h>

#include <libpq-fe.h>

/*
 * Writes the binary signature of type `oid` on `conn` into `sig`: two types
 * with equal signatures have the same binary COPY form.  Returns 0, 1 when
 * the type must be copied as text (the reason in `why`), or -1 when a
 * catalog query failed (its message in `why`).
 */
int type_signature(PGconn *conn, Oid oid, char *sig, size_t siglen, char *why,
                   size_t whylen);

#endif

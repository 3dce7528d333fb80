#include "typesig.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH      12
#define FIRST_USER_OID 16384 /* built-in types have the same OID everywhere */

typedef struct sigbuf {
    char *p;
    size_t len, used;
    int overflow;
} sigbuf;

static void put(sigbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sigbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->used, b->len - b->used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= b->len - b->used) {
        b->overflow = 1;
        b->used = b->len - 1;
    } else {
        b->used += (size_t)n;
    }
}

typedef struct type_row {
    char typtype;
    Oid elem, base, relid, subtype;
    int typlen, has_binary;
    char nspname[128], typname[128], display[256];
    char *labels; /* enum labels, malloc'd */
} type_row;

static int fetch_type(PGconn *conn, Oid oid, type_row *t, char *why, size_t whylen)
{
    char id[16];
    snprintf(id, sizeof id, "%u", oid);
    const char *params[1] = {id};
    PGresult *res = PQexecParams(
        conn,
        "SELECT t.typtype, t.typelem, t.typbasetype, t.typrelid, t.typlen, "
        "t.typsend::oid <> 0 AND t.typreceive::oid <> 0, n.nspname, t.typname, "
        "format_type(t.oid, NULL), "
        "(SELECT string_agg(quote_literal(e.enumlabel), ',' ORDER BY e.enumsortorder) "
        " FROM pg_enum e WHERE e.enumtypid = t.oid), "
        "(SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid) "
        "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = "
        "$1::oid",
        1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        snprintf(why, whylen, "cannot read type %u: %s", oid,
                 PQresultStatus(res) == PGRES_TUPLES_OK ? "not found"
                                                        : PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    memset(t, 0, sizeof *t);
    t->typtype = PQgetvalue(res, 0, 0)[0];
    t->elem = (Oid)strtoul(PQgetvalue(res, 0, 1), NULL, 10);
    t->base = (Oid)strtoul(PQgetvalue(res, 0, 2), NULL, 10);
    t->relid = (Oid)strtoul(PQgetvalue(res, 0, 3), NULL, 10);
    t->typlen = atoi(PQgetvalue(res, 0, 4));
    t->has_binary = PQgetvalue(res, 0, 5)[0] == 't';
    snprintf(t->nspname, sizeof t->nspname, "%s", PQgetvalue(res, 0, 6));
    snprintf(t->typname, sizeof t->typname, "%s", PQgetvalue(res, 0, 7));
    snprintf(t->display, sizeof t->display, "%s", PQgetvalue(res, 0, 8));
    t->labels = strdup(PQgetvalue(res, 0, 9));
    t->subtype = (Oid)strtoul(PQgetvalue(res, 0, 10), NULL, 10);
    PQclear(res);
    return 0;
}

/* The attribute types of a composite, in order; -1 on error. */
static int composite_attributes(PGconn *conn, Oid relid, Oid **out, char *why,
                                size_t whylen)
{
    char id[16];
    snprintf(id, sizeof id, "%u", relid);
    const char *params[1] = {id};
    PGresult *res =
        PQexecParams(conn,
                     "SELECT atttypid FROM pg_attribute WHERE attrelid = "
                     "$1::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                     1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        snprintf(why, whylen, "cannot read composite type %u: %s", relid,
                 PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    int n = PQntuples(res);
    *out = calloc((size_t)n + 1, sizeof **out);
    for (int i = 0; i < n && *out; i++)
        (*out)[i] = (Oid)strtoul(PQgetvalue(res, i, 0), NULL, 10);
    PQclear(res);
    return *out ? n : -1;
}

static Oid multirange_range(PGconn *conn, Oid oid)
{
    char id[16];
    snprintf(id, sizeof id, "%u", oid);
    const char *params[1] = {id};
    PGresult *res =
        PQexecParams(conn, "SELECT rngtypid FROM pg_range WHERE rngmultitypid = $1::oid",
                     1, NULL, params, NULL, NULL, 0);
    Oid r = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                ? (Oid)strtoul(PQgetvalue(res, 0, 0), NULL, 10)
                : 0;
    PQclear(res);
    return r;
}

static int sign(PGconn *conn, Oid oid, sigbuf *b, char *why, size_t whylen, int depth);

/* Why a type cannot travel in binary, or NULL when it can. */
static const char *text_only(const type_row *t)
{
    int catalog = strcmp(t->nspname, "pg_catalog") == 0;
    if (catalog && strncmp(t->typname, "reg", 3) == 0)
        return "reg* types travel as raw OIDs, which name other objects (or none) on "
               "another server";
    if (catalog && strcmp(t->typname, "money") == 0)
        return "money's binary form is a count of the currency's smallest unit, which "
               "follows lc_monetary";
    if (t->typtype == 'p')
        return "pseudo-types (anonymous records) carry type OIDs of their own server";
    if (!t->has_binary)
        return "it has no binary send/receive functions";
    return NULL;
}

static int sign_composite(PGconn *conn, const type_row *t, sigbuf *b, char *why,
                          size_t whylen, int depth)
{
    Oid *attrs;
    int n = composite_attributes(conn, t->relid, &attrs, why, whylen);
    if (n < 0)
        return -1;
    int rc = 0;
    put(b, "C(");
    for (int i = 0; i < n && rc == 0; i++) {
        put(b, "%u:", attrs[i]); /* binary records carry each attribute's OID */
        rc = sign(conn, attrs[i], b, why, whylen, depth + 1);
        put(b, ";");
    }
    put(b, ")");
    free(attrs);
    return rc;
}

static int sign(PGconn *conn, Oid oid, sigbuf *b, char *why, size_t whylen, int depth)
{
    type_row t;
    if (depth > MAX_DEPTH) {
        snprintf(why, whylen, "its type is nested more than %d levels deep", MAX_DEPTH);
        return 1;
    }
    if (fetch_type(conn, oid, &t, why, whylen) != 0)
        return -1;
    const char *reason = text_only(&t);
    int rc = 0;
    if (reason) {
        snprintf(why, whylen, "type %s: %s", t.display, reason);
        rc = 1;
    } else if (t.typtype == 'd') {
        rc = sign(conn, t.base, b, why, whylen, depth + 1);
    } else if (t.typtype == 'c') {
        rc = sign_composite(conn, &t, b, why, whylen, depth);
    } else if (t.typtype == 'e') {
        put(b, "E{%s}", t.labels);
    } else if (t.typtype == 'r') {
        put(b, "R(");
        rc = sign(conn, t.subtype, b, why, whylen, depth + 1);
        put(b, ")");
    } else if (t.typtype == 'm') {
        put(b, "M(");
        rc = sign(conn, multirange_range(conn, oid), b, why, whylen, depth + 1);
        put(b, ")");
    } else if (t.elem != 0 && t.typlen == -1) {
        put(b, "A%u(", t.elem); /* binary arrays carry their element's OID */
        rc = sign(conn, t.elem, b, why, whylen, depth + 1);
        put(b, ")");
    } else if (oid < FIRST_USER_OID) {
        put(b, "B%u", oid);
    } else {
        put(b, "B\"%s\".\"%s\"", t.nspname, t.typname);
    }
    free(t.labels);
    if (rc == 0 && b->overflow) {
        snprintf(why, whylen, "type %u is too complex to compare", oid);
        rc = 1;
    }
    return rc;
}

int type_signature(PGconn *conn, Oid oid, char *sig, size_t siglen, char *why,
                   size_t whylen)
{
    sigbuf b = {sig, siglen, 0, 0};
    sig[0] = '\0';
    return sign(conn, oid, &b, why, whylen, 0);
}

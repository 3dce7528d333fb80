#include "settings.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void copy_status(PGconn *conn, const char *name, char *out, size_t len)
{
    const char *v = PQparameterStatus(conn, name);
    snprintf(out, len, "%s", v ? v : "");
}

int fan_settings_read(PGconn *conn, int textual, const fan_wait *w, int who,
                      const char *label, fan_session_settings *s, pgfan_fault *f)
{
    memset(s, 0, sizeof *s);
    s->server_version = PQserverVersion(conn);
    copy_status(conn, "client_encoding", s->client_encoding, sizeof s->client_encoding);
    copy_status(conn, "DateStyle", s->datestyle, sizeof s->datestyle);
    copy_status(conn, "IntervalStyle", s->intervalstyle, sizeof s->intervalstyle);
    copy_status(conn, "TimeZone", s->timezone, sizeof s->timezone);
    if (!textual)
        return PGFAN_OK;
    if (!PQsendQuery(conn, "SELECT current_setting('extra_float_digits'), "
                           "current_setting('lc_monetary'), "
                           "current_setting('array_nulls')")) {
        fan_fault_from_conn(f, who, label, conn);
        return PGFAN_ECONN;
    }
    int rc = fan_await_result(conn, w, who, label, f);
    if (rc != PGFAN_OK)
        return rc;
    PGresult *res = PQgetResult(conn);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        fan_fault_from_result(f, who, label, res);
        PQclear(res);
        fan_drain_results(conn, who, label, NULL);
        return f->code;
    }
    s->extra_float_digits = atoi(PQgetvalue(res, 0, 0));
    snprintf(s->lc_monetary, sizeof s->lc_monetary, "%s", PQgetvalue(res, 0, 1));
    s->array_nulls = strcmp(PQgetvalue(res, 0, 2), "on") == 0;
    PQclear(res);
    fan_drain_results(conn, who, label, NULL);
    return PGFAN_OK;
}

int fan_settings_check_source(const fan_session_settings *src, int textual, char *why,
                              size_t len)
{
    /* From PostgreSQL 12 on, 1 or more means the shortest exact form;
     * before, only 3 printed every digit. */
    int needed = src->server_version >= 120000 ? 1 : 3;
    if (!textual || src->extra_float_digits >= needed)
        return 0;
    snprintf(why, len,
             "extra_float_digits is %d on the source session: float4 and float8 values "
             "would be rounded (set it to %d or more)",
             src->extra_float_digits, needed);
    return -1;
}

/* "SQL, DMY" -> style "SQL", order "DMY". */
static void split_datestyle(const char *v, char *style, char *order, size_t len)
{
    const char *comma = strchr(v, ',');
    size_t n = comma ? (size_t)(comma - v) : strlen(v);
    snprintf(style, len, "%.*s", (int)(n < len ? n : len - 1), v);
    const char *o = comma ? comma + 1 : "";
    while (*o == ' ')
        o++;
    snprintf(order, len, "%s", o);
}

/*
 * ISO dates are read alike everywhere; the other styles are read with the
 * reader's field order (German always writes day first).
 */
static int datestyle_mismatch(const fan_session_settings *src,
                              const fan_session_settings *dst, char *why, size_t len)
{
    char sstyle[32], sorder[32], dstyle[32], dorder[32];
    split_datestyle(src->datestyle, sstyle, sorder, sizeof sstyle);
    split_datestyle(dst->datestyle, dstyle, dorder, sizeof dstyle);
    if (strcasecmp(sstyle, "ISO") == 0)
        return 0;
    const char *written = strcasecmp(sstyle, "German") == 0 ? "DMY" : sorder;
    if (strcasecmp(written, dorder) == 0)
        return 0;
    snprintf(why, len,
             "DateStyle differs: the source writes \"%s\" but this target reads \"%s\": "
             "dates would be read with their fields in another order",
             src->datestyle, dst->datestyle);
    return -1;
}

static int differ(const char *a, const char *b)
{
    return strcasecmp(a, b) != 0;
}

int fan_settings_compare(const fan_session_settings *src, const fan_session_settings *dst,
                         int textual, char *why, size_t len)
{
    if (differ(src->client_encoding, dst->client_encoding)) {
        snprintf(why, len,
                 "client_encoding differs: the source sends %s but this target reads %s: "
                 "every non-ASCII character would change",
                 src->client_encoding, dst->client_encoding);
        return -1;
    }
    if (!textual)
        return 0;
    if (datestyle_mismatch(src, dst, why, len) != 0)
        return -1;
    if (differ(src->intervalstyle, dst->intervalstyle) &&
        (strcasecmp(src->intervalstyle, "sql_standard") == 0 ||
         strcasecmp(dst->intervalstyle, "sql_standard") == 0)) {
        snprintf(why, len,
                 "IntervalStyle differs: the source writes %s but this target reads %s: "
                 "the signs of mixed-sign intervals would change",
                 src->intervalstyle, dst->intervalstyle);
        return -1;
    }
    if (!dst->array_nulls) {
        snprintf(why, len,
                 "array_nulls is off on this target: an array's NULL element would be "
                 "read as the string \"NULL\"");
        return -1;
    }
    if (differ(src->lc_monetary, dst->lc_monetary)) {
        snprintf(why, len,
                 "lc_monetary differs: the source writes money as \"%s\" but this target "
                 "reads it as \"%s\"",
                 src->lc_monetary, dst->lc_monetary);
        return -1;
    }
    char sstyle[32], sorder[32];
    split_datestyle(src->datestyle, sstyle, sorder, sizeof sstyle);
    if (strcasecmp(sstyle, "ISO") != 0 && differ(src->timezone, dst->timezone)) {
        snprintf(why, len,
                 "TimeZone differs: the source writes %s times with zone abbreviations "
                 "of %s but this target reads them in %s",
                 src->datestyle, src->timezone, dst->timezone);
        return -1;
    }
    return 0;
}

/*
 * Session settings that change values on their way through COPY.
 *
 * Text and CSV values are rendered by the source session and parsed by each
 * target session, so some settings change data unless the two agree:
 * client_encoding (in binary too: text values are converted through it),
 * DateStyle (DMY vs MDY swaps days and months), IntervalStyle
 * (sql_standard signs), extra_float_digits (below 1 rounds floats),
 * lc_monetary (money's text form), array_nulls off on a target (an
 * unquoted NULL array element read as the string "NULL") and, for the
 * non-ISO date styles, TimeZone (zone abbreviations).  bytea_output is not among them:
 * every session reads both bytea forms.
 *
 * Reading is done in the caller's thread before the copy starts; the
 * comparison is pure and needs no server.
 */
#ifndef FAN_SETTINGS_H
#define FAN_SETTINGS_H

#include <stddef.h>

#include <libpq-fe.h>

#include "pq.h"

typedef struct fan_session_settings {
    char client_encoding[64];
    char datestyle[64];
    char intervalstyle[64];
    char timezone[128];
    char lc_monetary[128];
    int extra_float_digits;
    int array_nulls;    /* 1: an unquoted NULL array element is a null */
    int server_version; /* PQserverVersion */
} fan_session_settings;

/*
 * Reads the settings of `conn` (reported ones from libpq; the others with
 * one query, only when `textual`, waiting within `w`).  Returns a status;
 * on failure `f` says why, as party `who` named `label`.
 */
int fan_settings_read(PGconn *conn, int textual, const fan_wait *w, int who,
                      const char *label, fan_session_settings *s, pgfan_fault *f);

/*
 * Checks that the source renders values without loss (extra_float_digits).
 * Returns 0, or -1 with the reason in `why`.
 */
int fan_settings_check_source(const fan_session_settings *src, int textual, char *why,
                              size_t len);

/*
 * Checks that a target session reads what the source session renders.
 * `textual`: the copy is in text or CSV (else only client_encoding
 * matters).  Returns 0, or -1 with the setting, both values and what would
 * go wrong in `why`.
 */
int fan_settings_compare(const fan_session_settings *src, const fan_session_settings *dst,
                         int textual, char *why, size_t len);

#endif

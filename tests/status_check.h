/* Check assertions on pgfan status codes that print names, not numbers:
 * "expected PGFAN_EGONE, got PGFAN_ESTATE", not "-14 != -3". */
#ifndef PGFAN_STATUS_CHECK_H
#define PGFAN_STATUS_CHECK_H

#include <check.h>

#include <pgfan.h>

#define ck_assert_status(got, want)                                                      \
    do {                                                                                 \
        int got_ = (got), want_ = (want);                                                \
        ck_assert_msg(got_ == want_, "expected %s, got %s (%s)",                         \
                      pgfan_status_name(want_), pgfan_status_name(got_),                 \
                      pgfan_strerror(got_));                                             \
    } while (0)

#endif

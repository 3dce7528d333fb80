/* Check suites of the unit test program (no server needed). */
#ifndef PGFAN_TEST_SUITES_H
#define PGFAN_TEST_SUITES_H

#include <check.h>

Suite *ring_suite(void);
Suite *rowscan_suite(void);
Suite *copysql_suite(void);
Suite *api_suite(void);
Suite *cli_unit_suite(void);
Suite *settings_suite(void);
Suite *wire_suite(void);

#endif

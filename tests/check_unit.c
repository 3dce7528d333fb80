/* Unit tests: every suite that runs without a PostgreSQL server. */
#include <stdlib.h>

#include "suites.h"

int main(void)
{
    SRunner *sr = srunner_create(ring_suite());
    srunner_add_suite(sr, rowscan_suite());
    srunner_add_suite(sr, copysql_suite());
    srunner_add_suite(sr, api_suite());
    srunner_add_suite(sr, cli_unit_suite());
    srunner_add_suite(sr, settings_suite());
    srunner_add_suite(sr, wire_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

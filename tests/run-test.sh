#!/bin/sh
# Test driver wrapper (automake LOG_COMPILER): integration tests get a
# throwaway PostgreSQL server unless PGFAN_TEST_CONNINFO names one.  The
# server is always stopped afterwards, also on failure or interruption.
set -u
test_program=$1
shift
case "$test_program" in
*integration*) ;;
*) exec "$test_program" "$@" ;;
esac
if [ -n "${PGFAN_TEST_CONNINFO:-}" ]; then
    exec "$test_program" "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/pgfan-test.XXXXXX")
cleanup() { sh "$here/pg-harness.sh" stop "$dir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
conninfo=$(sh "$here/pg-harness.sh" start "$dir") || {
    echo "run-test: could not start a PostgreSQL server for $test_program" >&2
    exit 1
}
PGFAN_TEST_CONNINFO=$conninfo "$test_program" "$@"

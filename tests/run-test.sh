#!/bin/sh
# Test driver wrapper (automake LOG_COMPILER): integration tests get two
# throwaway PostgreSQL servers (A, and B for targets that must not share a
# cluster with the others; B has no prepared transactions) unless
# PGFAN_TEST_CONNINFO names a server (and PGFAN_TEST_CONNINFO_B another).  Servers are always stopped afterwards, also on
# failure or interruption.
set -u
test_program=$1
shift
case "$test_program" in
*integration*) ;;
*) exec ${PGFAN_TEST_WRAPPER:-} "$test_program" "$@" ;;
esac
# $PGFAN_TEST_WRAPPER (say, valgrind and its options) runs each program.
if [ -n "${PGFAN_TEST_CONNINFO:-}" ]; then
    exec ${PGFAN_TEST_WRAPPER:-} "$test_program" "$@"
fi
# Each program gets its own servers: test programs may run in parallel.
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/pgfan-test.XXXXXX")
dir_b=$(mktemp -d "${TMPDIR:-/tmp}/pgfan-test-b.XXXXXX")
cleanup() {
    sh "$here/pg-harness.sh" stop "$dir"
    sh "$here/pg-harness.sh" stop "$dir_b"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
conninfo=$(sh "$here/pg-harness.sh" start "$dir") &&
    conninfo_b=$(PGFAN_PG_OPTIONS="-c max_prepared_transactions=0" \
        sh "$here/pg-harness.sh" start "$dir_b") || {
    echo "run-test: could not start PostgreSQL servers for $test_program" >&2
    exit 1
}
PGFAN_TEST_CONNINFO=$conninfo PGFAN_TEST_CONNINFO_B=$conninfo_b ${PGFAN_TEST_WRAPPER:-} \
    "$test_program" "$@"

#!/bin/sh
# Runs every program in examples/ against the test server and checks what
# it did to the databases (run-test.sh provides the server).
set -eu
ci=${PGFAN_TEST_CONNINFO:?run through tests/run-test.sh or set PGFAN_TEST_CONNINFO}
ex=./examples
work=$(mktemp -d "${TMPDIR:-/tmp}/pgfan-examples.XXXXXX")
trap 'rm -rf "$work"' EXIT
base=$(printf '%s' "$ci" | sed 's/dbname=[^ ]*//')
src="$base dbname=pgfan_ex_src" t1="$base dbname=pgfan_ex_t1" t2="$base dbname=pgfan_ex_t2"
q() { psql "$1" -XAtq -v ON_ERROR_STOP=1 -c "$2"; }
sum() { q "$1" "SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::bigint), 0) FROM items t"; }
expect_same() { # what, got, want
    [ "$2" = "$3" ] || { echo "FAIL: $1: got $2, want $3"; exit 1; }
    echo "ok: $1"
}

for d in pgfan_ex_src pgfan_ex_t1 pgfan_ex_t2; do
    q "$ci" "DROP DATABASE IF EXISTS $d"
    q "$ci" "CREATE DATABASE $d"
    q "$base dbname=$d" "CREATE TABLE items (id int8 PRIMARY KEY, label text, price numeric(12,2))"
done
# Labels with commas, quotes, tabs and newlines, and NULLs.
q "$src" "INSERT INTO items SELECT g, CASE WHEN g % 10 = 0 THEN NULL
    ELSE 'item ' || g || ', \"q\"' || E'\\t' || CASE WHEN g % 7 = 0 THEN E'\\nnext line' ELSE '' END END,
    g * 1.25 FROM generate_series(1, 20000) g"
want=$(sum "$src")

# One call: pgfan_transfer.
"$ex/fanout_demo" items "$src" "$t1" "$t2" >"$work/demo.out"
expect_same "fanout_demo target 1" "$(sum "$t1")" "$want"
expect_same "fanout_demo target 2" "$(sum "$t2")" "$want"

# The manager loop: a target rejecting a row is dropped, the failing
# callback is reconciled and sees every byte exactly once.
q "$t1" "TRUNCATE items"
q "$t2" "TRUNCATE items"
q "$t2" "ALTER TABLE items ADD CONSTRAINT no_777 CHECK (id <> 777)"
"$ex/manager_loop" items "$src" "$t1" "$t2" >"$work/loop.out" 2>"$work/loop.err"
cat "$work/loop.err"
grep -q "receiver 2 reconciled" "$work/loop.err" || { echo "FAIL: no reconcile"; exit 1; }
grep -q "23514" "$work/loop.err" || { echo "FAIL: the constraint violation was not reported"; exit 1; }
expect_same "manager_loop target 1" "$(sum "$t1")" "$want"
expect_same "manager_loop dropped target 2" "$(sum "$t2")" "0:0"
bytes=$(psql "$src" -Xq -c "COPY items TO STDOUT" | wc -c)
expect_same "manager_loop byte counter" "$(sed -n 's/^byte counter saw \([0-9]*\) bytes$/\1/p' "$work/loop.out")" "$bytes"
q "$t2" "ALTER TABLE items DROP CONSTRAINT no_777"

# An iterator producer loading a CSV file; malformed CSV loads nothing.
q "$t1" "TRUNCATE items"
psql "$src" -Xq -c "COPY items TO STDOUT (FORMAT csv)" >"$work/items.csv"
"$ex/csv_loader" "$work/items.csv" items "$t1" "$t2" >"$work/csv.out"
expect_same "csv_loader target 1" "$(sum "$t1")" "$want"
expect_same "csv_loader target 2" "$(sum "$t2")" "$want"
q "$t1" "TRUNCATE items"
q "$t2" "TRUNCATE items"
{ cat "$work/items.csv"; printf '20001,"unterminated,1.00\n'; } >"$work/bad.csv"
if "$ex/csv_loader" "$work/bad.csv" items "$t1" "$t2" >/dev/null 2>"$work/bad.err"; then
    echo "FAIL: csv_loader accepted malformed CSV"; exit 1
fi
grep -qi "malformed\|quote" "$work/bad.err" || { cat "$work/bad.err"; echo "FAIL: no reason given"; exit 1; }
expect_same "csv_loader malformed: target 1 untouched" "$(sum "$t1")" "0:0"
expect_same "csv_loader malformed: target 2 untouched" "$(sum "$t2")" "0:0"

# A call receiver writing a file, and a target in the same pass.
"$ex/copy_to_file" "$src" "COPY items TO STDOUT" "$work/items.txt" \
    "$t1" "COPY items FROM STDIN" >"$work/file.out"
psql "$src" -Xq -c "COPY items TO STDOUT" >"$work/direct.txt"
cmp -s "$work/items.txt" "$work/direct.txt" || { echo "FAIL: the file differs from COPY"; exit 1; }
echo "ok: copy_to_file file equals COPY TO STDOUT"
expect_same "copy_to_file target" "$(sum "$t1")" "$want"

for d in pgfan_ex_src pgfan_ex_t1 pgfan_ex_t2; do q "$ci" "DROP DATABASE $d"; done
echo "examples: all passed"

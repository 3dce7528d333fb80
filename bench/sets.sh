#!/usr/bin/env bash
# The whole-database benchmark: seed 3 empty databases from one multi-table
# source, schema included, and write the "Whole database" section of
# bench/RESULTS.md and bench/whole-database.png.
#
#   bench/sets.sh        (BENCH_SETS_SCALE, default 1.1 = about 2.2 GB of COPY
#                         text; BENCH_SETS_REPEAT, default 3; BENCH_SETS_JOBS,
#                         default 2)
#
# Strategies, each given the same parallelism (JOBS):
#   pgfan            pgfan --all-tables --copy-schema -j JOBS, 3 targets
#   pgcopydb-seq     pgcopydb clone --table-jobs JOBS --index-jobs JOBS, one
#                    target after another
#   pgcopydb-par     the same, the 3 clones at once
#   dump-restore     pg_dump -Fd -j JOBS -Z 0 once, then pg_restore -j JOBS
#                    into the 3 targets at once
# Before every run each target's database is dropped and created empty.
# Measured: wall, client CPU (every client process), largest client RSS,
# server CPU, cores busy, and source reads = rows the source's sequential
# scans returned during the run / rows in the source.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
scale=${BENCH_SETS_SCALE:-1.1}
repeat=${BENCH_SETS_REPEAT:-3}
jobs=${BENCH_SETS_JOBS:-2}
raw=$top/bench/whole-database-raw.txt
: >"$raw"
. bench/lib.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/pgfan-bench-sets.XXXXXX")
trap 'stop_servers; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
export PATH="$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin):$PATH"

say "starting 4 throwaway servers"
start_server conninfo
src=${conninfo/dbname=postgres/dbname=seed}
tgt=()
for i in 1 2 3; do
    start_server conninfo
    tgt+=("${conninfo/dbname=postgres/dbname=seed}")
done
psql "${src/dbname=seed/dbname=postgres}" -qX -c "CREATE DATABASE seed"

# pgbench's four tables with their keys and foreign keys, a table of mixed
# scalar types with a secondary index, and one of jsonb, arrays and bytea.
say "creating the source (scale $scale)"
pgscale=$(awk -v s="$scale" 'BEGIN { v = int(100 * s); print (v < 1 ? 1 : v) }')
events=$(awk -v s="$scale" 'BEGIN { printf "%d", 8000000 * s }')
docs=$(awk -v s="$scale" 'BEGIN { printf "%d", 1000000 * s }')
pgbench -q -i -s "$pgscale" -I dtGvpf "$src" 2>/dev/null
psql "$src" -qX -v ON_ERROR_STOP=1 <<SQL
CREATE SCHEMA app;
CREATE TABLE app.events (id int8 PRIMARY KEY, label text, created timestamptz,
    amount numeric(12,2), ok bool);
INSERT INTO app.events SELECT g, left(md5(g::text) || md5((g * 7)::text), 60),
    timestamptz '2024-01-01 UTC' + g * interval '1 second', (g % 100000) * 1.37, g % 3 = 0
    FROM generate_series(1, $events) g;
CREATE INDEX ON app.events (created);
CREATE TABLE app.docs (id int PRIMARY KEY, body jsonb, tags text[], digest bytea, day date);
INSERT INTO app.docs SELECT g,
    jsonb_build_object('n', g, 'name', md5(g::text), 'pair', jsonb_build_array(g, g * 2)),
    ARRAY[md5(g::text), 'tag' || g % 10], decode(md5(g::text), 'hex'), date '2020-01-01' + g % 1000
    FROM generate_series(1, $docs) g;
VACUUM (FREEZE, ANALYZE);
SQL
tables=$(psql "$src" -XAtc "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1")
text_bytes=0
total_rows=0
declare -A want
for t in $tables; do
    b=$(psql "$src" -qX -c "COPY $t TO STDOUT" | wc -c)
    want[$t]=$(psql "$src" -XAtc "SELECT count(*) FROM $t")
    text_bytes=$((text_bytes + b))
    total_rows=$((total_rows + ${want[$t]}))
done
indexes=$(psql "$src" -XAtc "SELECT count(*) FROM pg_indexes WHERE schemaname IN ('public', 'app')")
say "source: $(wc -w <<<"$tables") tables, $indexes indexes, $total_rows rows, $text_bytes bytes of COPY text"

# Rows returned by sequential scans of the source's tables so far.  A
# backend reports its counts when it ends (and at most once a second while it
# lives); every tool's sessions have ended when this is read.
seq_rows() {
    sleep 1
    psql "$src" -XAtc "SELECT sum(seq_tup_read) FROM pg_stat_user_tables"
}

pgfan=$top/src/cli/pgfan
script_for() {
    local s="" i
    case $1 in
    pgfan)
        s="'$pgfan' --source '$src'"
        for i in 0 1 2; do s+=" --target '${tgt[$i]}'"; done
        s+=" --all-tables --copy-schema -j $jobs --quiet --no-progress"
        ;;
    pgcopydb-seq | pgcopydb-par)
        for i in 0 1 2; do
            s+="pgcopydb clone --source '$src' --target '${tgt[$i]}' --dir '$work/copydb$i'"
            s+=" --table-jobs $jobs --index-jobs $jobs"
            if [ "$1" = pgcopydb-par ]; then s+=" & "; else s+=" && "; fi
        done
        if [ "$1" = pgcopydb-par ]; then
            s+="for p in \$(jobs -p); do wait \$p || exit 1; done"
        else s+="true"; fi
        ;;
    dump-restore)
        s="pg_dump -Fd -j $jobs -Z 0 -f '$work/dump' '$src' && { "
        for i in 0 1 2; do s+="pg_restore -j $jobs --exit-on-error -d '${tgt[$i]}' '$work/dump' & "; done
        s+="for p in \$(jobs -p); do wait \$p || exit 1; done; }"
        ;;
    esac
    printf '%s' "$s"
}

reset_targets() {
    local t
    rm -rf "$work"/copydb* "$work/dump"
    for t in "${tgt[@]}"; do
        psql "${t/dbname=seed/dbname=postgres}" -qX -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS seed" -c "CREATE DATABASE seed" -c CHECKPOINT
    done
}

verify() {
    local t i got
    for i in 0 1 2; do
        for t in $tables; do
            got=$(psql "${tgt[$i]}" -XAtc "SELECT count(*) FROM $t")
            [ "$got" = "${want[$t]}" ] || { echo "bench: $1: target $((i + 1)) $t has $got rows, want ${want[$t]}" >&2; exit 1; }
        done
        got=$(psql "${tgt[$i]}" -XAtc "SELECT count(*) FROM pg_indexes WHERE schemaname IN ('public', 'app')")
        [ "$got" = "$indexes" ] || { echo "bench: $1: target $((i + 1)) has $got indexes, want $indexes" >&2; exit 1; }
    done
}

measure() {
    local strategy=$1 m r0 r1 reads
    reset_targets
    r0=$(seq_rows)
    m=$(timed_run "$(script_for "$strategy")")
    r1=$(seq_rows)
    verify "$strategy"
    reads=$(awk -v d=$((r1 - r0)) -v n="$total_rows" 'BEGIN { printf "%.2f", d / n }')
    echo "$strategy $m $reads" >>"$raw"
    say "$strategy: wall user sys rss busy% server_s = $m, source reads $reads"
}

strategies=(pgfan pgcopydb-seq pgcopydb-par dump-restore)
for ((r = 1; r <= repeat; r++)); do
    say "round $r of $repeat"
    for ((i = 0; i < ${#strategies[@]}; i++)); do
        measure "${strategies[$(((i + r - 1) % ${#strategies[@]}))]}"
    done
done

# One more pgfan run, untimed, to keep its progress lines and JSON report.
say "one pgfan run with --progress --verify --report"
reset_targets
run_log=$top/bench/whole-database-run.txt
"$pgfan" --source "$src" --target "${tgt[0]}" --target "${tgt[1]}" --target "${tgt[2]}" \
    --all-tables --copy-schema -j "$jobs" --verify --progress \
    --report "$top/bench/whole-database-report.json" 2>"$run_log"
verify "pgfan --verify"
sed -i -e "s|$work|WORK|g" -e 's|host=[^ ]* port=[0-9]* |host=... port=... |g' \
    "$run_log" "$top/bench/whole-database-report.json"

TEXT_BYTES=$text_bytes TOTAL_ROWS=$total_rows TABLES=$(wc -w <<<"$tables") INDEXES=$indexes \
    REPEAT=$repeat JOBS=$jobs bash bench/sets-report.sh "$raw"

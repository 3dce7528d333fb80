#!/usr/bin/env bash
# The throttled-target benchmark: one table to 3 targets, one of them
# limited to a third of the speed the others reach, and the "Throttled
# target" section of bench/RESULTS.md.
#
#   bench/throttle.sh    (BENCH_THROTTLE_ROWS, default 2000000;
#                         BENCH_THROTTLE_REPEAT, default 3)
#
# Runs, each round, every target on its own throwaway server:
#   fast alone     pgfan to targets 1 and 2 only: their time with no slow one
#   slow alone     pgfan to target 3 only, limited to RATE
#   journal        pgfan to all 3, target 3 limited (--max-rate 3=RATE),
#                  --on-fault drop, spill journal on (the default)
#   backpressure   the same with --spill-limit 0: the slow one sets the pace
#   tee            psql COPY TO STDOUT | tee into 2 psql COPY FROM STDIN, the
#                  third behind pv -L RATE
# and the peak RSS of pgfan (and of psql reading it) for one 200 MiB row.
# RATE is a third of the bytes per second the fast targets reach alone in a
# calibration run.  A target's time runs from the start of the run to the
# end of its COPY (pgfan's report; for tee, when its psql exits).  Every
# run uses text COPY, so each side moves the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
rows=${BENCH_THROTTLE_ROWS:-2000000}
repeat=${BENCH_THROTTLE_REPEAT:-3}
raw=$top/bench/throttle-raw.txt
: >"$raw"
. bench/lib.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/pgfan-bench-throttle.XXXXXX")
trap 'stop_servers; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
export PATH="$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin):$PATH"
pgfan=$top/src/cli/pgfan

if ! command -v pv >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "the throttled-target benchmark needs: sudo apt-get install -y pv" >&2
        exit 1
    fi
    say "installing: pv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pv >/dev/null
fi

say "starting 4 throwaway servers"
start_server src
tgt=()
for i in 1 2 3; do
    start_server conninfo
    tgt+=("$conninfo")
done
table="CREATE TABLE load (id int8, label text, amount numeric(12,2), created timestamptz, ok bool)"
say "creating the source ($rows rows)"
psql "$src" -qX -v ON_ERROR_STOP=1 <<SQL
$table;
INSERT INTO load SELECT g, md5(g::text) || md5((g * 7)::text), (g % 100000) * 1.37,
    timestamptz '2024-01-01 UTC' + g * interval '1 second', g % 3 = 0
    FROM generate_series(1, $rows) g;
VACUUM ANALYZE load;
SQL
for t in "${tgt[@]}"; do psql "$t" -qX -c "$table"; done

# pgfan with the given targets and options; prints each target's seconds
# (in --target order) from the report, then the bytes.
run_pgfan() {
    local report=$work/report.json
    "$pgfan" -s "$src" --table load --format text --truncate --no-progress --quiet \
        --report "$report" "$@"
    # One line per target in the report: "state": "...", ... "seconds": N
    awk -F'"state": "|", "rows"|"seconds": |, "sqlstate"' '
        /"target": / { if ($2 != "committed") bad = 1; secs = secs sprintf("%.3f ", $4) }
        /"totals": / { match($0, /"bytes": [0-9]+/); bytes = substr($0, RSTART + 9, RLENGTH - 9) }
        END { if (bad) { print "a target did not commit" > "/dev/stderr"; exit 1 }
              print secs bytes }' "$report"
}

# The tee pipeline; prints the three targets' seconds.
run_tee() {
    local rate=$1 t0 i
    for t in "${tgt[@]}"; do psql "$t" -qX -c "TRUNCATE load"; done
    rm -f "$work"/done.*
    t0=$(date +%s.%N)
    psql "$src" -qX -c "COPY load TO STDOUT" |
        tee >(psql "${tgt[0]}" -qX -c "COPY load FROM STDIN" && date +%s.%N >"$work/done.1") \
            >(psql "${tgt[1]}" -qX -c "COPY load FROM STDIN" && date +%s.%N >"$work/done.2") |
        pv -q -L "$rate" | psql "${tgt[2]}" -qX -c "COPY load FROM STDIN"
    date +%s.%N >"$work/done.3"
    for i in 1 2 3; do
        while [ ! -s "$work/done.$i" ]; do sleep 0.1; done
    done
    for i in 1 2 3; do awk -v a="$t0" '{ printf "%.3f ", $1 - a }' "$work/done.$i"; done
    echo
}

say "calibrating: the two fast targets alone"
read -r c1 c2 bytes < <(run_pgfan -t "${tgt[0]}" -t "${tgt[1]}")
rate=$(awk -v b="$bytes" -v a="$c1" -v c="$c2" 'BEGIN { m = a > c ? a : c; printf "%d", b / m / 3 }')
say "fast targets alone: $c1 s, $c2 s for $bytes bytes; the slow target gets $rate bytes/s"
echo "bytes $bytes rate $rate rows $rows" >>"$raw"

for round in $(seq 1 "$repeat"); do
    say "round $round of $repeat"
    read -r a1 a2 _ < <(run_pgfan -t "${tgt[0]}" -t "${tgt[1]}")
    echo "$round fast-alone $a1 $a2 -" >>"$raw"
    read -r s3 _ < <(run_pgfan -t "${tgt[2]}" --max-rate "$rate")
    echo "$round slow-alone - - $s3" >>"$raw"
    read -r j1 j2 j3 _ < <(run_pgfan -t "${tgt[0]}" -t "${tgt[1]}" -t "${tgt[2]}" \
        --max-rate "3=$rate" --on-fault drop)
    echo "$round journal $j1 $j2 $j3" >>"$raw"
    read -r b1 b2 b3 _ < <(run_pgfan -t "${tgt[0]}" -t "${tgt[1]}" -t "${tgt[2]}" \
        --max-rate "3=$rate" --on-fault drop --spill-limit 0)
    echo "$round backpressure $b1 $b2 $b3" >>"$raw"
    read -r e1 e2 e3 < <(run_tee "$rate")
    echo "$round tee $e1 $e2 $e3" >>"$raw"
    # --retries keeps the whole stream in the journal (to reload a lost
    # target from its start): its cost with no target lagging or lost.
    read -r r1 r2 _ < <(run_pgfan -t "${tgt[0]}" -t "${tgt[1]}" --retries 1)
    echo "$round retries $r1 $r2 -" >>"$raw"
done

# Peak RSS of pgfan while the journal carries the slow target's lag.
say "peak RSS of the journal run (GNU time)"
/usr/bin/time -o "$work/rss" -f '%M' "$pgfan" -s "$src" --table load --format text --truncate \
    --no-progress --quiet -t "${tgt[0]}" -t "${tgt[1]}" -t "${tgt[2]}" \
    --max-rate "3=$rate" --on-fault drop --report "$work/rss.json"
peak=$(grep -o '"spill_peak_bytes": [0-9]*' "$work/rss.json" | grep -o '[0-9]*$')
echo "rss_kb $(cat "$work/rss") spill_peak $peak" >>"$raw"

# Peak RSS for one 200 MiB bytea row: 200 MiB in binary, 400 MiB in text.
say "peak RSS for a 200 MiB row (GNU time)"
psql "$src" -qX -c "CREATE TABLE huge (id int, b bytea)" \
    -c "INSERT INTO huge SELECT 1, convert_to(repeat('x', 200 * 1024 * 1024), 'UTF8')"
psql "${tgt[0]}" -qX -c "CREATE TABLE huge (id int, b bytea)"
for f in binary text; do
    /usr/bin/time -o "$work/rss" -f '%M' "$pgfan" -s "$src" -t "${tgt[0]}" --table huge \
        --format "$f" --truncate --no-progress --quiet
    echo "huge_$f $(cat "$work/rss")" >>"$raw"
done
/usr/bin/time -o "$work/rss" -f '%M' psql "$src" -qX -c "COPY huge TO STDOUT" >/dev/null
echo "huge_psql $(cat "$work/rss")" >>"$raw"

bash bench/throttle-report.sh

#!/usr/bin/env bash
# Runs every benchmark and regenerates bench/RESULTS.md and bench/throughput.png.
#
#   bench/run.sh [ROWS]        (default 2000000; also BENCH_ROWS, BENCH_REPEAT)
#
# Starts throwaway servers (one source, four targets, each its own cluster),
# creates a reproducible data set, and measures, interleaved and repeated,
# for N = 1..4 targets:
#   pgfan-text / pgfan-auto   the pgfan command (auto picks binary here)
#   tee                       psql COPY TO | tee fifo... | psql COPY FROM (one read)
#   independent               N parallel psql | psql pipelines (N reads)
#   sequential                N psql | psql pipelines one after another (N reads)
# Wall seconds, client CPU seconds (user+sys of every client process, from
# wait4 through GNU time) and client peak RSS.  Then the ring micro-benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
rows=${1:-${BENCH_ROWS:-2000000}}
repeat=${BENCH_REPEAT:-5}
big_rows=${BENCH_BIG_ROWS:-8000000}
out=bench
raw=$top/bench/raw.txt # every measurement, kept next to the report
: >"$raw"
. bench/lib.sh
trap stop_servers EXIT
trap 'exit 130' INT TERM

say "starting 5 throwaway servers"
start_server src
tgt=()
for i in 1 2 3 4; do
    start_server conninfo
    tgt+=("$conninfo")
done

ddl="CREATE TABLE bench (id int8, label text, created timestamptz, amount numeric(12,2), ok bool)"
fill() {
    psql "$1" -qX -c "INSERT INTO bench SELECT g, left(md5(g::text) || md5((g * 7)::text), 60),
        timestamptz '2024-01-01 UTC' + g * interval '1 second', (g % 100000) * 1.37, g % 3 = 0
        FROM generate_series(1, $2) g"
}
say "creating the data set: $rows rows"
psql "$src" -qX -c "$ddl"
fill "$src" "$rows"
# Settle the table first: the first reader of freshly loaded rows would pay
# for setting hint bits, which would penalise whichever strategy ran first.
psql "$src" -qX -c "VACUUM (FREEZE, ANALYZE) bench"
for t in "${tgt[@]}"; do psql "$t" -qX -c "$ddl"; done
text_bytes=$(psql "$src" -qX -c "COPY bench TO STDOUT" | wc -c)
say "COPY text size: $text_bytes bytes"

pgfan=$top/src/cli/pgfan
copy_out="COPY bench TO STDOUT"
copy_in="COPY bench FROM STDIN"

# One untimed load into every target first: a fresh cluster's first large
# load also creates its WAL segment files, which cost its server about 3 s
# of CPU more than any later load, and would penalise whichever strategy
# touched that target first (pgfan at 3 and 4 targets).
say "warming up the targets"
for t in "${tgt[@]}"; do psql "$src" -qX -c "$copy_out" | psql "$t" -qX -c "$copy_in"; done

# The command line of each strategy for n targets.
script_for() {
    local strategy=$1 n=$2 i s=""
    case $strategy in
    pgfan-text | pgfan-auto)
        s="'$pgfan' --source '$src'"
        for ((i = 0; i < n; i++)); do s+=" --target '${tgt[$i]}'"; done
        s+=" --table bench --format ${strategy#pgfan-} --quiet --no-progress"
        ;;
    tee)
        local fifos=""
        s="d=\$(mktemp -d); "
        for ((i = 0; i < n - 1; i++)); do
            s+="mkfifo \$d/f$i; psql '${tgt[$i]}' -qX -c '$copy_in' < \$d/f$i & "
            fifos+=" \$d/f$i"
        done
        s+="psql '$src' -qX -c '$copy_out' | tee$fifos | psql '${tgt[$((n - 1))]}' -qX -c '$copy_in'; wait; rm -rf \$d"
        ;;
    independent)
        for ((i = 0; i < n; i++)); do
            s+="psql '$src' -qX -c '$copy_out' | psql '${tgt[$i]}' -qX -c '$copy_in' & "
        done
        s+="wait"
        ;;
    sequential)
        for ((i = 0; i < n; i++)); do
            s+="psql '$src' -qX -c '$copy_out' | psql '${tgt[$i]}' -qX -c '$copy_in'; "
        done
        ;;
    esac
    printf '%s' "$s"
}

reads_for() {
    case $1 in pgfan-* | tee) echo 1 ;; *) echo "$2" ;; esac
}

verify() {
    local n=$1 i want got
    want=$(psql "$src" -XAtc "SELECT count(*) FROM bench")
    for ((i = 0; i < n; i++)); do
        got=$(psql "${tgt[$i]}" -XAtc "SELECT count(*) FROM bench")
        [ "$got" = "$want" ] || { echo "bench: target $i has $got rows, want $want" >&2; exit 1; }
    done
}

# Measures one run: wall, user, sys, maxrss(KB) of the whole client process
# tree, how busy the machine's cores were meanwhile (servers included), and
# the servers' CPU seconds.
measure() {
    local strategy=$1 n=$2 i m
    for ((i = 0; i < 4; i++)); do psql "${tgt[$i]}" -qX -c "TRUNCATE bench; CHECKPOINT"; done
    m=$(timed_run "$(script_for "$strategy" "$n")")
    verify "$n"
    read -r w u sy rss busy server <<<"$m"
    echo "$strategy $n $w $u $sy $rss $(reads_for "$strategy" "$n") $busy $server" >>"$raw"
    say "$strategy n=$n: $w $u $sy $rss, cores ${busy}% busy, servers ${server} s CPU"
}

# Each round starts the order one strategy later, so that no strategy always
# follows the same one (what ran before leaves the servers and the page
# cache in different states).
strategies=(pgfan-text pgfan-auto tee independent sequential)
for ((r = 1; r <= repeat; r++)); do
    say "round $r of $repeat"
    for n in 1 2 3 4; do
        for ((i = 0; i < ${#strategies[@]}; i++)); do
            measure "${strategies[$(((i + r - 1) % ${#strategies[@]}))]}" "$n"
        done
    done
done

say "peak RSS with $big_rows rows (3 targets, pgfan --format auto)"
psql "$src" -qX -c "TRUNCATE bench"
fill "$src" "$big_rows"
psql "$src" -qX -c "VACUUM (FREEZE, ANALYZE) bench"
for t in "${tgt[@]}"; do psql "$t" -qX -c "TRUNCATE bench"; done
big=$(timed_run "$(script_for pgfan-auto 3)" | cut -d' ' -f1-4)
verify 3
big_bytes=$(psql "$src" -qX -c "COPY bench TO STDOUT" | wc -c)

say "ring micro-benchmark"
ring=$(./bench/ring_bench 0.4)

say "writing bench/RESULTS.md and bench/throughput.png"
ROWS=$rows REPEAT=$repeat TEXT_BYTES=$text_bytes BIG_ROWS=$big_rows BIG_BYTES=$big_bytes \
    BIG="$big" RING="$ring" bash bench/report.sh "$raw"

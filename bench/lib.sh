# Shared by the benchmark scripts: throwaway servers and CPU accounting.
# Source it after `cd` to the top of the tree.

dirs=()

say() { printf '==> %s\n' "$*" >&2; }

stop_servers() {
    local d
    for d in "${dirs[@]}"; do sh tests/pg-harness.sh stop "$d"; done
}

# Starts a server and stores its conninfo in the variable named $1.  The
# directory is recorded here, not in a $(...) subshell, so the exit trap
# sees it and stops the server.
start_server() {
    local d
    d=$(mktemp -d "${TMPDIR:-/tmp}/pgfan-bench.XXXXXX")
    dirs+=("$d")
    printf -v "$1" '%s' "$(sh tests/pg-harness.sh start "$d")"
}

# Busy and total CPU ticks of the whole machine (all processes, all cores).
cpu_ticks() {
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# CPU ticks used so far by the servers: each postmaster, its exited children
# (backends of finished runs) and its live children.
server_ticks() {
    local d pm pids
    pids=""
    for d in "${dirs[@]}"; do
        pm=$(head -1 "$d/data/postmaster.pid")
        pids+=" $pm $(pgrep -P "$pm" | tr '\n' ' ')"
    done
    # shellcheck disable=SC2086
    for pm in $pids; do cat "/proc/$pm/stat" 2>/dev/null || true; done |
        awk '{ sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { print t }'
}

# Runs the bash script $1 under GNU time and prints "wall user sys maxrss_kb
# busy% server_cpu_s": the client process tree's times and largest process,
# how busy the machine's cores were meanwhile (servers included), and the
# servers' CPU seconds.  Fails when the script fails.
timed_run() {
    local m b0 t0 b1 t1 s0 s1 log rc=0
    log=$(mktemp)
    read -r b0 t0 < <(cpu_ticks)
    s0=$(server_ticks)
    /usr/bin/time -o "$log.time" -f '%e %U %S %M' bash -c "$1" >"$log" 2>&1 || rc=$?
    s1=$(server_ticks)
    read -r b1 t1 < <(cpu_ticks)
    if [ $rc != 0 ]; then
        echo "bench: this run failed (exit $rc):" >&2
        tail -20 "$log" >&2
        rm -f "$log" "$log.time"
        return 1
    fi
    m=$(tail -1 "$log.time")
    rm -f "$log" "$log.time"
    awk -v m="$m" -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v d=$((s1 - s0)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%s %.0f %.2f\n", m, (t > 0 ? 100 * b / t : 0), d / hz }'
}

#!/bin/sh
# Throwaway PostgreSQL servers for tests, the demo and benchmarks.
#
#   pg-harness.sh start DIR [PID]
#                             initdb + start a server whose data and socket
#                             live in DIR; prints a libpq conninfo for it.
#                             With PID, a watchdog stops it and removes DIR
#                             once process PID is gone (a test that failed
#                             before stopping its own server)
#   pg-harness.sh stop DIR    stop that server and remove DIR
#   pg-harness.sh restart DIR restart it in immediate mode (a crash, to its
#                             clients)
#   pg-harness.sh down DIR    stop it in immediate mode, keeping DIR
#   pg-harness.sh up DIR      start it again after down, on the same port
#
# initdb refuses to run as root, so as root the server runs as the
# unprivileged user $PGFAN_PG_USER (default: postgres).  $PGFAN_PG_OPTIONS
# adds server options ("-c name=value ...").
set -eu

pg_bindir() {
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
        return
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && { echo "$d"; return; }
    done
    command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return; }
    echo "pg-harness: no PostgreSQL server binaries found (install postgresql)" >&2
    exit 1
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "${PGFAN_PG_USER:-postgres}" -- "$@"
    else
        "$@"
    fi
}

start() {
    dir=$1
    bin=$(pg_bindir)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown "${PGFAN_PG_USER:-postgres}" "$dir"
        chmod 700 "$dir"
    fi
    user=$(as_owner id -un)
    as_owner "$bin/initdb" -D "$dir/data" -U "$user" -A trust -E UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || {
        echo "pg-harness: initdb failed:" >&2
        cat "$dir/initdb.log" >&2
        exit 1
    }
    # TLS with a throwaway self-signed certificate, for sslmode=require tests
    # (TCP on 127.0.0.1; the Unix socket stays plain).
    ssl_opts=""
    if command -v openssl >/dev/null 2>&1 &&
        as_owner openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -days 2 -subj /CN=localhost -keyout "$dir/data/server.key" \
            -out "$dir/data/server.crt" >/dev/null 2>&1; then
        ssl_opts="-c ssl=on"
    fi
    tries=0
    while :; do
        port=$(( 20000 + ($$ * 7 + tries * 131 + $(date +%N | sed 's/^0*//;s/^$/0/') ) % 30000 ))
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
            "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 \
             -c shared_buffers=128MB -c max_prepared_transactions=20 -c max_wal_size=4GB \
             -c checkpoint_timeout=30min -c log_min_messages=warning $ssl_opts \
             ${PGFAN_PG_OPTIONS:-}" >/dev/null 2>&1; then
            break
        fi
        tries=$((tries + 1))
        if [ $tries -ge 5 ]; then
            echo "pg-harness: the server did not start:" >&2
            tail -20 "$dir/server.log" >&2 || true
            exit 1
        fi
    done
    echo "$port" >"$dir/port"
    [ -z "${2:-}" ] || watch_owner "$dir" "$2"
    echo "host=$dir port=$port user=$user dbname=postgres"
}

# Stops the server in $1 once process $2 has ended, unless it was stopped
# (and $1 removed) before.  Detached from the caller's output, so a caller
# reading it to its end does not wait for the watchdog.
watch_owner() {
    (
        trap '' HUP
        while kill -0 "$2" 2>/dev/null && [ -d "$1" ]; do sleep 1; done
        stop "$1"
    ) </dev/null >/dev/null 2>&1 &
}

down() {
    bin=$(pg_bindir)
    as_owner "$bin/pg_ctl" -D "$1/data" -m immediate -w -t 30 stop >/dev/null 2>&1
}

stop() {
    dir=$1
    [ -d "$dir" ] || return 0
    if [ -f "$dir/data/postmaster.pid" ]; then
        down "$dir" || true
    fi
    rm -rf "$dir"
}

# An immediate restart: every backend is killed without a word to its
# client, then the server recovers and comes back on the same port.
restart() {
    bin=$(pg_bindir)
    as_owner "$bin/pg_ctl" -D "$1/data" -l "$1/server.log" -m immediate -w -t 60 restart \
        >/dev/null 2>&1 || {
        echo "pg-harness: the server did not restart:" >&2
        tail -20 "$1/server.log" >&2 || true
        exit 1
    }
}

case "${1:-}" in
start) start "$2" "${3:-}" ;;
stop) stop "$2" ;;
restart) restart "$2" ;;
down) down "$2" ;;
up) restart "$2" ;; # pg_ctl restart starts a stopped server with its last options
*) echo "usage: pg-harness.sh start|stop|restart|down|up DIR" >&2; exit 2 ;;
esac

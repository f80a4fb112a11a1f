#!/usr/bin/env bash
# Starts (or stops) a throwaway PostgreSQL and Redis for the `todo` and `counter` sample apps:
# PostgreSQL on 127.0.0.1:15432 (user `berth`, trust authentication, database `postgres`) and
# Redis on 127.0.0.1:16379, with their data and logs in target/data-services. They are Debian's
# `postgresql` and `redis-server` packages (apt-get install postgresql redis-server). PostgreSQL
# refuses to run as root, so as root its programs run as the `postgres` user the package creates.
# The ports are below the kernel's ephemeral range (32768 and up), where a client connection of
# the moment could already hold them.
#
#   sample-apps/data-services.sh start     # `make services`
#   sample-apps/data-services.sh stop      # `make services-stop`
#
# sample-apps/berth.toml (which `make run` uses) points `todo` and `counter` at these ports.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_PORT=15432
REDIS_PORT=16379
DIR="$PWD/target/data-services"
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    if [ -z "$PG_BIN" ] || ! command -v redis-server >/dev/null; then
        echo "needs Debian's postgresql and redis-server: apt-get install postgresql redis-server" >&2
        exit 1
    fi
    mkdir -p "$DIR"
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$DIR"; fi
    if [ ! -d "$DIR/pg" ]; then
        as_postgres "$PG_BIN/initdb" --no-sync --auth=trust --username=berth --encoding=UTF8 \
            --locale=C --pgdata="$DIR/pg" >/dev/null
    fi
    if ! as_postgres "$PG_BIN/pg_ctl" status --pgdata="$DIR/pg" >/dev/null 2>&1; then
        if ! as_postgres "$PG_BIN/pg_ctl" start --wait --pgdata="$DIR/pg" --log="$DIR/postgres.log" \
            --options="-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$DIR" >/dev/null; then
            echo "PostgreSQL did not start on 127.0.0.1:$PG_PORT; its log ($DIR/postgres.log) ends:" >&2
            tail -n 5 "$DIR/postgres.log" >&2
            exit 1
        fi
    fi
    if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" --dir "$DIR"
    fi
    echo "PostgreSQL: postgres://berth@127.0.0.1:$PG_PORT/postgres"
    echo "Redis:      redis://127.0.0.1:$REDIS_PORT/"
}

stop() {
    if [ -n "$PG_BIN" ] && [ -d "$DIR/pg" ]; then
        as_postgres "$PG_BIN/pg_ctl" stop --mode=fast --wait --pgdata="$DIR/pg" >/dev/null 2>&1 || true
    fi
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    echo "stopped"
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

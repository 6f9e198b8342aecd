#!/usr/bin/env bash
# A real Redis for the shared-store tests (`[store] kind = "redis"`, tests/store.rs): Debian's redis-server, bound
# to 127.0.0.1 only, no persistence, its state under $SLUICE_STATE_DIR/redis.
#
#   integration/redis.sh up       install redis-server if missing (apt-get), start it unless one answers at the port;
#                                 waits until it answers PING, then prints its URL. Idempotent.
#   integration/redis.sh down     stop the Redis this script started (nothing else)
#   integration/redis.sh status   exit 0 if Redis answers at the port, 1 otherwise
#   integration/redis.sh url      print the URL the tests use (redis://127.0.0.1:PORT/0)
#
# Environment: SLUICE_TEST_REDIS_PORT (default 6379), SLUICE_CACHE_DIR / SLUICE_STATE_DIR as for brokers.sh.
set -euo pipefail

PORT=${SLUICE_TEST_REDIS_PORT:-6379}
CACHE_DIR=${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}
STATE=${SLUICE_STATE_DIR:-$CACHE_DIR/state}/redis
PIDFILE=$STATE/redis.pid

log() { echo "redis.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

answers() { command -v redis-cli >/dev/null && [[ $(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null) == PONG ]]; }

install() {
    command -v redis-server >/dev/null && return
    log "installing redis-server"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q redis-server >/dev/null \
        || { "${sudo[@]}" apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q redis-server >/dev/null; } \
        || die "could not install redis-server"
}

up() {
    install
    if answers; then
        log "already running at 127.0.0.1:$PORT"
    else
        mkdir -p "$STATE"
        redis-server --bind 127.0.0.1 --port "$PORT" --protected-mode yes --save "" --appendonly no \
            --dir "$STATE" --daemonize yes --pidfile "$PIDFILE" --logfile "$STATE/redis.log" \
            || die "redis-server did not start (see $STATE/redis.log)"
        for _ in $(seq 1 100); do
            answers && break
            sleep 0.1
        done
        answers || die "redis-server does not answer at 127.0.0.1:$PORT (see $STATE/redis.log)"
        log "started at 127.0.0.1:$PORT"
    fi
    url
}

down() {
    [[ -f $PIDFILE ]] || { log "nothing started by this script"; return; }
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
    log "stopped"
}

url() { echo "redis://127.0.0.1:$PORT/0"; }

case ${1:-} in
    up) up ;;
    down) down ;;
    status) answers ;;
    url) url ;;
    *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac

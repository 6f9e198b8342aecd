#!/usr/bin/env bash
# Toxiproxy (github.com/Shopify/toxiproxy/v2) for Sluice's fault suite (integration/faults.sh): a TCP proxy put
# between the gateway and a broker or upstream, whose "toxics" (latency, reset_peer, bandwidth, ...) are switched on
# and off mid-load. Only on 127.0.0.1: both the API and every proxy the fault suite creates.
#
#   integration/toxiproxy.sh install   go install cmd/server and cmd/cli (version $SLUICE_TOXIPROXY_VERSION) from the
#                                      Go module proxy into $SLUICE_CACHE_DIR/toxiproxy/VERSION/bin (once; cached)
#   integration/toxiproxy.sh up        install if needed, then reuse the server answering at 127.0.0.1:PORT or start
#                                      one; waits until its API answers. Idempotent.
#   integration/toxiproxy.sh down      stop the server `up` started (nothing else); its proxies go with it
#   integration/toxiproxy.sh status    say whether the API answers; exit 0 if it does, 1 otherwise
#   integration/toxiproxy.sh cli ARGS  toxiproxy-cli against that server, e.g.
#                                        cli create -l 127.0.0.1:25672 -u 127.0.0.1:5672 rabbit
#                                        cli toxic add -n slow -t latency -a latency=500 rabbit
#                                        cli toxic remove -n slow rabbit
#                                        cli delete rabbit
#   integration/toxiproxy.sh api       print the API's base URL (http://127.0.0.1:PORT)
#
# Needs Go (on PATH, or at /usr/local/go/bin or /usr/lib/go/bin) the first time only; the module and build caches
# go to $SLUICE_CACHE_DIR/go unless GOMODCACHE / GOCACHE are set, as for integration/otel.sh.
#
# Environment:
#   SLUICE_CACHE_DIR            default ${XDG_CACHE_HOME:-$HOME/.cache}/sluice
#   SLUICE_STATE_DIR            pid file and log, default $SLUICE_CACHE_DIR/state (in its toxiproxy/ directory)
#   SLUICE_TOXIPROXY_VERSION    default v2.12.0
#   SLUICE_TOXIPROXY_PORT       the API's port on 127.0.0.1, default 8474
set -euo pipefail

CACHE_DIR=${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}
STATE_DIR=${SLUICE_STATE_DIR:-$CACHE_DIR/state}
VERSION=${SLUICE_TOXIPROXY_VERSION:-v2.12.0}
PORT=${SLUICE_TOXIPROXY_PORT:-8474}
HOST=127.0.0.1
MODULE=github.com/Shopify/toxiproxy/v2

BIN_DIR=$CACHE_DIR/toxiproxy/$VERSION/bin
SERVER=$BIN_DIR/toxiproxy-server
CLI=$BIN_DIR/toxiproxy-cli
RUN_DIR=$STATE_DIR/toxiproxy
PIDFILE=$RUN_DIR/toxiproxy.pid
LOGFILE=$RUN_DIR/toxiproxy.log
API=http://$HOST:$PORT

log() { printf 'toxiproxy.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() { [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# GET /version answers a JSON object with the server's version (plain text before v2.6).
api_ping() { curl -sf --max-time 2 "$API/version" >/dev/null 2>&1; }
# shellcheck disable=SC2016 # $0 and $1 are the inner bash's arguments
port_in_use() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$PORT" 2>/dev/null; }

# The first Go among the one on PATH, /usr/local/go (the official tarball) and /usr/lib/go (Debian's golang-go).
setup_go() {
    local g found=
    for g in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go /usr/lib/go/bin/go; do
        [[ -n $g && -x $g ]] || continue
        GOTOOLCHAIN=local "$g" env GOVERSION >/dev/null 2>&1 || continue
        found=$g
        break
    done
    [[ -n $found ]] || die "Go is needed to install Toxiproxy and none was found (PATH, /usr/local/go/bin, /usr/lib/go/bin)"
    PATH=$(dirname "$found"):$PATH
    export PATH
    export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
    export GOMODCACHE=${GOMODCACHE:-$CACHE_DIR/go/mod}
    export GOCACHE=${GOCACHE:-$CACHE_DIR/go/build}
    export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"
}

cmd_install() {
    [[ -x $SERVER && -x $CLI ]] && return 0
    mkdir -p "$(dirname "$BIN_DIR")"
    exec 8>"$(dirname "$BIN_DIR")/install.lock"
    flock 8 # a concurrent `up` may be installing the same version
    if [[ -x $SERVER && -x $CLI ]]; then
        exec 8>&-
        return 0
    fi
    setup_go
    local tmp=$BIN_DIR.tmp t0=$SECONDS
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "installing Toxiproxy $VERSION (go install $MODULE/cmd/server and cmd/cli, $(go version | cut -d' ' -f3)) into $BIN_DIR"
    # `go install` names each binary after its package directory: server, cli.
    GOBIN=$tmp go install "$MODULE/cmd/server@$VERSION" "$MODULE/cmd/cli@$VERSION" >&2 ||
        die "go install $MODULE/cmd/server@$VERSION $MODULE/cmd/cli@$VERSION failed"
    mv "$tmp/server" "$tmp/toxiproxy-server"
    mv "$tmp/cli" "$tmp/toxiproxy-cli"
    rm -rf "$BIN_DIR"
    mv "$tmp" "$BIN_DIR"
    exec 8>&-
    log "installed Toxiproxy $VERSION ($((SECONDS - t0))s)"
}

cmd_up() {
    cmd_install
    if api_ping; then
        if pid_alive; then
            log "already running (pid $(cat "$PIDFILE")) at $API"
        else
            log "reusing the Toxiproxy server answering at $API"
        fi
        return 0
    fi
    if ! pid_alive; then
        port_in_use && die "$HOST:$PORT is in use but does not answer Toxiproxy's API (set SLUICE_TOXIPROXY_PORT)"
        mkdir -p "$RUN_DIR"
        [[ -s $LOGFILE ]] && mv -f "$LOGFILE" "$LOGFILE.1"
        (
            cd "$RUN_DIR"
            setsid nohup "$SERVER" -host "$HOST" -port "$PORT" </dev/null >"$LOGFILE" 2>&1 &
            echo $! >"$PIDFILE"
        )
        log "starting Toxiproxy $VERSION on $API (pid $(cat "$PIDFILE"), log $LOGFILE)"
    fi
    local i
    for ((i = 0; i < 120; i++)); do
        api_ping && { log "up at $API"; return 0; }
        pid_alive || break
        sleep 0.25
    done
    [[ -s $LOGFILE ]] && tail -n 20 "$LOGFILE" >&2
    die "Toxiproxy did not answer at $API"
}

cmd_down() {
    if ! pid_alive; then
        rm -f "$PIDFILE"
        api_ping && log "the server at $API was not started by toxiproxy.sh; leaving it alone"
        return 0
    fi
    local pid i
    pid=$(cat "$PIDFILE")
    log "stopping Toxiproxy (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

cmd_status() {
    if api_ping; then
        echo "toxiproxy: up at $API$(pid_alive && echo " (started by toxiproxy.sh, pid $(cat "$PIDFILE"), log $LOGFILE)")"
        return 0
    fi
    echo "toxiproxy: DOWN at $API"
    return 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        install) cmd_install ;;
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        cli)
            cmd_install
            exec "$CLI" --host "$API" "$@"
            ;;
        api) echo "$API" ;;
        *) usage ;;
    esac
}

main "$@"

#!/usr/bin/env bash
# A real OpenTelemetry Collector for Sluice's tracing tests: receives OTLP and writes every span it gets to a
# JSON lines file that the tests read (tests/otel_support/mod.rs).
#
#   integration/otel.sh up          reuse an OTLP receiver already answering at SLUICE_TEST_OTLP, otherwise build
#                                   the collector (first time only: 2-4 min on 2 cores) and start it; waits until
#                                   its gRPC port answers, then prints where the spans go. Idempotent; a collector
#                                   this script started with other settings (ports, spans file, manifest) is
#                                   restarted.
#   integration/otel.sh down        stop what `up` started (nothing else); leaves nothing running
#   integration/otel.sh status      print whether the OTLP gRPC port answers; exit 0 if it does, 1 otherwise
#   integration/otel.sh spans-file  print the path of the spans file (the same default as tests/otel_support)
#   integration/otel.sh clean       down, then delete the collector's state (config, log, spans file); the build
#                                   cache stays
#   integration/otel.sh build       only build (or find) the collector binary and print its path
#
# The collector: built from integration/otel/builder.yaml (OTLP receiver and the contrib file exporter, v0.161.0)
# with the official OpenTelemetry Collector Builder, itself installed with `go install
# go.opentelemetry.io/collector/cmd/builder@v0.161.0`; everything comes from the Go module proxy. The binary is
# cached under $SLUICE_CACHE_DIR/otelcol/, keyed by the manifest's content and the builder's version, so a changed
# manifest builds a new one. Needs Go >= 1.26 (on PATH, or at /usr/local/go/bin or /usr/lib/go/bin).
# Its config ($SLUICE_STATE_DIR/otel/config.yaml, written by `up`): only an OTLP receiver, gRPC on
# 127.0.0.1:<port of SLUICE_TEST_OTLP> and HTTP on 127.0.0.1:SLUICE_TEST_OTLP_HTTP_PORT, one traces pipeline to
# the file exporter (format json, flush_interval 100ms, no rotation, file truncated when the collector starts),
# and no telemetry server of its own (service.telemetry.metrics.level none): nothing listens beyond 127.0.0.1
# (`up` checks that with ss and refuses a collector that does).
#
# The spans file: one line per OTLP export request the collector received (each line a complete
# ExportTraceServiceRequest in OTLP JSON as pdata's JSON marshaler writes it; a line may hold many spans, of
# many traces). As captured from the Python SDK's OTLP/gRPC exporter (see tests/otel_support_selftest.rs):
#   {"resourceSpans":[{
#      "resource":{"attributes":[{"key":"service.name","value":{"stringValue":"sluice-selftest"}}, ...]},
#      "scopeSpans":[{
#        "scope":{"name":"otel-selftest","version":"0.1.0"},
#        "spans":[{
#          "traceId":"79d81e0def20b9691e4088b66da3e277",    32 lowercase hex digits
#          "spanId":"92453b8e428ffd05",                     16 lowercase hex digits
#          "parentSpanId":"cc67f405ebded72b",               absent on a root span
#          "traceState":"a=b",                              only when set
#          "flags":256,                                     SpanFlags: 0x100 = parent is-remote known, 0x200 =
#                                                           remote; low byte W3C trace flags (if the SDK sets them)
#          "name":"orders.acme publish",
#          "kind":4,                                        integer: 1 internal, 2 server, 3 client, 4 producer,
#                                                           5 consumer; absent when 0 (unspecified)
#          "startTimeUnixNano":"1795999778509756547",       64-bit integers as strings
#          "endTimeUnixNano":"1795999778509769391",
#          "attributes":[{"key":"messaging.system","value":{"stringValue":"kafka"}},
#                        {"key":"messaging.kafka.offset","value":{"intValue":"1234"}},   an int is a string
#                        {"key":"sluice.retry","value":{"boolValue":true}},
#                        {"key":"sluice.ratio","value":{"doubleValue":0.5}},
#                        {"key":"sluice.tags","value":{"arrayValue":{"values":[{"stringValue":"a"}]}}},
#                        {"key":"kv","value":{"kvlistValue":{"values":[{"key":"x","value":{"intValue":"5"}}]}}},
#                        {"key":"bytes","value":{"bytesValue":"AQI="}},                  base64
#                        {"key":"empty","value":{}}],
#          "events":[{"timeUnixNano":"...","name":"exception","attributes":[...]}],
#          "links":[...],
#          "status":{"message":"upstream timed out","code":2}  always there: {} when unset; code 1 ok, 2 error
#        }]}]}]}
# Other empty fields are left out (no "attributes":[], no "events":[]). Each line ends with a newline; a reader
# may see a torn last line while the exporter flushes (it writes through a 4 KiB buffer); complete lines never
# change.
#
# Environment:
#   SLUICE_TEST_OTLP              OTLP gRPC endpoint, default http://127.0.0.1:$SLUICE_TEST_OTLP_PORT
#   SLUICE_TEST_OTLP_PORT         its port when SLUICE_TEST_OTLP is unset, default 4317
#   SLUICE_TEST_OTLP_HTTP_PORT    OTLP/HTTP receiver port on 127.0.0.1, default 4318; `off` leaves it out
#   SLUICE_TEST_OTLP_SPANS        the spans file, default $SLUICE_STATE_DIR/otel/spans.jsonl
#   SLUICE_CACHE_DIR              downloads and builds, default ${XDG_CACHE_HOME:-$HOME/.cache}/sluice; Go's module
#                                 and build caches go to $SLUICE_CACHE_DIR/go unless GOMODCACHE / GOCACHE are set
#   SLUICE_STATE_DIR              config, log, pid file and spans, default $SLUICE_CACHE_DIR/state
#   SLUICE_OTELCOL_BUILDER_VERSION   default v0.161.0 (must match the versions in integration/otel/builder.yaml)
#   SLUICE_OTEL_TIMEOUT           seconds to wait for the collector to answer, default 60
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

OTLP_PORT_DEFAULT=${SLUICE_TEST_OTLP_PORT:-4317}
OTLP_URL=${SLUICE_TEST_OTLP:-http://127.0.0.1:$OTLP_PORT_DEFAULT}
OTLP_HTTP_PORT=${SLUICE_TEST_OTLP_HTTP_PORT:-4318}
CACHE_DIR=${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}
STATE_DIR=${SLUICE_STATE_DIR:-$CACHE_DIR/state}
BUILDER_VERSION=${SLUICE_OTELCOL_BUILDER_VERSION:-v0.161.0}
TIMEOUT=${SLUICE_OTEL_TIMEOUT:-60}
GO_MIN=1.26 # the v0.161.0 modules (builder, receiver, exporter) declare `go 1.26.0`

MANIFEST=$SCRIPT_DIR/otel/builder.yaml
OTEL_CACHE=$CACHE_DIR/otelcol
OTEL_STATE=$STATE_DIR/otel
CONFIG=$OTEL_STATE/config.yaml
PIDFILE=$OTEL_STATE/otelcol.pid
LOGFILE=$OTEL_STATE/otelcol.log
SPANS=${SLUICE_TEST_OTLP_SPANS:-$OTEL_STATE/spans.jsonl}
[[ $SPANS == /* ]] || SPANS=$PWD/$SPANS

log() { printf 'otel.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------- addresses
# http://host:port/path -> host and port
otlp_host_port() {
    local rest=${OTLP_URL#*://}
    rest=${rest%%/*}
    local host=${rest%:*} port=4317
    [[ $rest == *:* ]] && port=${rest##*:}
    [[ -n $host ]] || host=127.0.0.1
    printf '%s %s\n' "$host" "$port"
}
read -r OTLP_HOST OTLP_PORT < <(otlp_host_port)

is_local_host() { [[ $1 == 127.0.0.1 || $1 == localhost ]]; }

# ---------------------------------------------------------------------------------------------- probes
# OTLP/gRPC is HTTP/2 without TLS: send the client connection preface and an empty SETTINGS frame; a live gRPC
# server answers with its own SETTINGS frame (type 4, flags 0) first. Plain bash, so `status` needs nothing else.
otlp_ping() {
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00" >&3
        b=$(head -c 9 <&3 | od -An -tu1 | tr -s " " | sed "s/^ //")
        set -- $b
        [[ $# -eq 9 && $4 == 4 && $5 == 0 ]]' "$OTLP_HOST" "$OTLP_PORT" 2>/dev/null
}

port_in_use() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

# The collector `up` started is alive (and the pid was not reused by something else since).
pid_alive() {
    [[ -s $PIDFILE ]] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "/otelcol --config"
}
pid_gone() { ! kill -0 "$1" 2>/dev/null; }

wait_until() { # wait_until SECONDS COMMAND...
    local secs=$1 i
    shift
    for ((i = 0; i < secs * 4; i++)); do
        "$@" && return 0
        sleep 0.25
    done
    return 1
}

tail_log() {
    [[ -s $LOGFILE ]] || return 0
    log "last lines of $LOGFILE:"
    tail -n 30 "$LOGFILE" >&2
}

# ---------------------------------------------------------------------------------------------- go
# The first Go >= GO_MIN among the one on PATH, /usr/local/go (the official tarball) and /usr/lib/go (Debian's
# golang-go); put first on PATH, since the builder runs `go` itself. Toolchain switching stays off: a Go too old
# for the modules fails here, with this message, instead of downloading another toolchain.
setup_go() {
    local g v found=
    for g in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go /usr/lib/go/bin/go; do
        [[ -n $g && -x $g ]] || continue
        v=$(GOTOOLCHAIN=local "$g" env GOVERSION 2>/dev/null) || continue
        v=${v#go}
        if [[ $(printf '%s\n' "$GO_MIN" "$v" | sort -V | head -n 1) == "$GO_MIN" ]]; then
            found=$g
            break
        fi
        log "ignoring $g: Go $v is older than $GO_MIN"
    done
    [[ -n $found ]] || die "Go >= $GO_MIN is needed to build the OpenTelemetry Collector and none was found (PATH,
/usr/local/go/bin, /usr/lib/go/bin): install Go $GO_MIN or newer (Debian's golang-go only if it is that new)"
    PATH=$(dirname "$found"):$PATH
    export PATH
    export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
    export GOMODCACHE=${GOMODCACHE:-$CACHE_DIR/go/mod}
    export GOCACHE=${GOCACHE:-$CACHE_DIR/go/build}
    export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw" # a module cache that rm -rf can delete
}

# ---------------------------------------------------------------------------------------------- build
# The cache key: the manifest's content and the builder's version.
build_key() { { cat "$MANIFEST"; echo "builder $BUILDER_VERSION"; } | sha256sum | cut -c1-16; }
BUILD_DIR=$OTEL_CACHE/otelcol-$(build_key)
COLLECTOR=$BUILD_DIR/otelcol

builder_install() { # prints the builder's path
    local dir=$OTEL_CACHE/builder-$BUILDER_VERSION
    if [[ ! -x $dir/bin/builder ]]; then
        log "installing the OpenTelemetry Collector Builder $BUILDER_VERSION (go install) into $dir/bin"
        rm -rf "$dir/bin.tmp"
        mkdir -p "$dir"
        GOBIN=$dir/bin.tmp go install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION" >&2 ||
            die "go install go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION failed"
        rm -rf "$dir/bin"
        mv "$dir/bin.tmp" "$dir/bin"
    fi
    echo "$dir/bin/builder"
}

collector_build() {
    [[ -x $COLLECTOR ]] && return 0
    mkdir -p "$OTEL_CACHE"
    exec 8>"$OTEL_CACHE/build.lock"
    flock 8 # another `up` or `build` may be building the same binary
    if [[ -x $COLLECTOR ]]; then
        exec 8>&-
        return 0
    fi
    setup_go
    local builder t0=$SECONDS tmp=$BUILD_DIR.tmp blog=$BUILD_DIR.build.log bin
    builder=$(builder_install)
    rm -rf "$tmp"
    mkdir -p "$tmp"
    cp "$MANIFEST" "$tmp/builder.yaml"
    log "building the OpenTelemetry Collector from $MANIFEST with $("$builder" version 2>&1 | tail -n 1)"
    log "  and $(go version | cut -d' ' -f3): 2-4 min with empty Go caches on 2 cores, seconds with warm ones"
    log "  (log: $blog)"
    if ! (cd "$tmp" && "$builder" --config builder.yaml) >"$blog" 2>&1; then
        tail -n 40 "$blog" >&2
        die "the OpenTelemetry Collector Builder failed (log: $blog)"
    fi
    # dist/ holds the generated sources (main.go, components.go, go.mod, go.sum) and the one executable
    bin=$(find "$tmp/dist" -maxdepth 1 -type f -perm -u+x | head -n 1)
    [[ -n $bin ]] || die "no collector binary in $tmp/dist after the build (log: $blog)"
    mv "$bin" "$tmp/otelcol"
    rm -rf "$BUILD_DIR"
    mv "$tmp" "$BUILD_DIR"
    log "built $COLLECTOR in $((SECONDS - t0))s"
    exec 8>&-
}

# ---------------------------------------------------------------------------------------------- collector
yaml_quote() { printf "'%s'" "${1//\'/\'\'}"; }

# The config `up` starts the collector with; also how `up` tells whether a running one is current (the first
# line names the binary).
collector_config() {
    cat <<EOF
# binary: $COLLECTOR
# Written by integration/otel.sh up: OTLP in (127.0.0.1 only), every span to a JSON lines file.
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$OTLP_PORT
EOF
    if [[ $OTLP_HTTP_PORT != off ]]; then
        cat <<EOF
      http:
        endpoint: 127.0.0.1:$OTLP_HTTP_PORT
EOF
    fi
    cat <<EOF
exporters:
  file:
    path: $(yaml_quote "$SPANS")
    format: json
    flush_interval: 100ms
    # no rotation key: rotation off; append false: the file is truncated when the collector starts
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: info
      encoding: console
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
EOF
}

config_current() { [[ -s $CONFIG ]] && cmp -s "$CONFIG" <(collector_config); }

# Every socket the collector listens on must be on loopback.
check_bindings() {
    command -v ss >/dev/null || return 0
    local pid=$1 bad
    bad=$({ ss -Hltnp; ss -Hlunp; } 2>/dev/null | grep -F "pid=$pid," | awk '{print $4}' |
        grep -Ev '^(127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\]):[0-9]+$' || true)
    [[ -z $bad ]] && return 0
    log "the collector (pid $pid) listens beyond loopback: $(echo $bad)"
    return 1
}

collector_start() {
    mkdir -p "$OTEL_STATE" "$(dirname "$SPANS")"
    collector_config >"$CONFIG"
    [[ -s $LOGFILE ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    log "starting the OpenTelemetry Collector: OTLP gRPC 127.0.0.1:$OTLP_PORT$([[ $OTLP_HTTP_PORT != off ]] &&
        echo ", HTTP 127.0.0.1:$OTLP_HTTP_PORT") (state in $OTEL_STATE)"
    (
        cd "$OTEL_STATE"
        setsid nohup "$COLLECTOR" --config "file:$CONFIG" </dev/null >"$LOGFILE" 2>&1 8>&- 9>&- &
        echo $! >"$PIDFILE"
    )
}

collector_wait() {
    local i
    for ((i = 0; i < TIMEOUT * 4; i++)); do
        otlp_ping && break
        # Only whether the process is there: just after the fork its command line may still be the shell's (the
        # exec has not happened yet), which `pid_alive` would take for a dead collector.
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            tail_log
            die "the collector exited during start-up"
        fi
        sleep 0.25
    done
    otlp_ping || { tail_log; die "the collector did not answer on $OTLP_HOST:$OTLP_PORT within ${TIMEOUT}s"; }
    if ! check_bindings "$(cat "$PIDFILE")"; then
        collector_stop
        die "stopped it: everything must be bound to 127.0.0.1 (see $CONFIG)"
    fi
}

collector_stop() {
    if ! pid_alive; then
        rm -f "$PIDFILE"
        return 0
    fi
    local pid
    pid=$(cat "$PIDFILE")
    log "stopping the collector (pid $pid)"
    kill "$pid" 2>/dev/null || true
    if ! wait_until 30 pid_gone "$pid"; then
        log "still running after 30s; killing it"
        kill -9 "$pid" 2>/dev/null || true
        wait_until 10 pid_gone "$pid" || true
    fi
    rm -f "$PIDFILE"
}

# ---------------------------------------------------------------------------------------------- commands
cmd_up() {
    local t0=$SECONDS
    mkdir -p "$OTEL_STATE"
    exec 9>"$OTEL_STATE/up.lock"
    flock 9 # one `up` at a time; the collector does not inherit the lock (9>&- when it starts)
    # the collector otel.sh started only matters for a local address (a remote one can only be reused)
    if is_local_host "$OTLP_HOST" && pid_alive; then
        if config_current; then
            if otlp_ping; then
                log "already running (started by otel.sh, pid $(cat "$PIDFILE")) at $OTLP_HOST:$OTLP_PORT"
            else
                log "the collector otel.sh started (pid $(cat "$PIDFILE")) is still starting; waiting"
                collector_wait
                log "up at $OTLP_HOST:$OTLP_PORT"
            fi
            log "spans file: $SPANS"
            return 0
        fi
        log "the collector otel.sh started has other settings (ports, spans file) or another build; restarting it"
        collector_stop
    fi
    if otlp_ping; then
        log "reusing the OTLP receiver answering at $OTLP_HOST:$OTLP_PORT (not started by otel.sh): spans go"
        log "wherever it writes them; set SLUICE_TEST_OTLP_SPANS to its file (default $SPANS)"
        return 0
    fi
    is_local_host "$OTLP_HOST" ||
        die "no OTLP receiver answers at $OTLP_HOST:$OTLP_PORT (only a local one can be started)"
    port_in_use 127.0.0.1 "$OTLP_PORT" && die "127.0.0.1:$OTLP_PORT is in use but does not answer OTLP/gRPC"
    if [[ $OTLP_HTTP_PORT != off ]] && port_in_use 127.0.0.1 "$OTLP_HTTP_PORT"; then
        die "127.0.0.1:$OTLP_HTTP_PORT (OTLP/HTTP) is in use; set SLUICE_TEST_OTLP_HTTP_PORT (or to off)"
    fi
    collector_build
    collector_start
    collector_wait
    log "up at $OTLP_HOST:$OTLP_PORT ($((SECONDS - t0))s, pid $(cat "$PIDFILE"), log $LOGFILE)"
    log "spans file: $SPANS"
}

cmd_status() {
    if otlp_ping; then
        if is_local_host "$OTLP_HOST" && pid_alive && config_current; then
            echo "otel collector: up at $OTLP_HOST:$OTLP_PORT (started by otel.sh, pid $(cat "$PIDFILE"), log $LOGFILE; spans to $SPANS)"
        else
            echo "otel collector: up at $OTLP_HOST:$OTLP_PORT (not started by otel.sh)"
        fi
        return 0
    fi
    echo "otel collector: DOWN at $OTLP_HOST:$OTLP_PORT$(pid_alive && echo " (pid $(cat "$PIDFILE") running, still starting?)")"
    return 1
}

cmd_down() {
    if ! pid_alive; then
        rm -f "$PIDFILE"
        otlp_ping && log "the OTLP receiver at $OTLP_HOST:$OTLP_PORT was not started by otel.sh; leaving it alone"
        return 0
    fi
    collector_stop
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

main() {
    case ${1:-} in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        spans-file) echo "$SPANS" ;;
        clean)
            cmd_down
            rm -rf "$OTEL_STATE"
            [[ $SPANS == "$OTEL_STATE"/* ]] || rm -f "$SPANS"
            log "removed $OTEL_STATE$([[ $SPANS == "$OTEL_STATE"/* ]] || echo " and $SPANS")"
            ;;
        build)
            collector_build
            echo "$COLLECTOR"
            ;;
        *) usage ;;
    esac
}

main "$@"

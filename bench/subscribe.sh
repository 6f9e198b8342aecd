#!/usr/bin/env bash
# RabbitMQ → HTTP delivery throughput: Sluice's `[[subscriptions]]` vs a minimal consumer that POSTs
# (bench/peers/consumer: lapin + hyper, ~100 lines, no retries beyond nack + requeue). With --kafka: Kafka → HTTP,
# a subscription `from = { broker, topic, group }` vs the same peer's `kafka` mode (rdkafka + hyper), see below.
#
#   bench/subscribe.sh            3 interleaved repetitions per system, 50,000 messages each
#   bench/subscribe.sh --quick    1 repetition, 5,000 messages (smoke check)
#   bench/subscribe.sh --kafka    Kafka instead of RabbitMQ (combines with --quick)
#
# Systems under test, both delivering to the same upstream (an nginx instance, 1 worker, answering `return 200`
# with a 2-byte body, keep-alive) from the real RabbitMQ at $AMQP_URL:
#   sluice  target/release/sluice, TOKIO_WORKER_THREADS=1, one `[[subscriptions]]` (concurrency = $PREFETCH, so
#           prefetch $PREFETCH, manual acks) POSTing to `[upstreams.bench]`, `[telemetry] access_log = false`
#   peer    bench/peers/consumer, TOKIO_WORKER_THREADS=1, prefetch $PREFETCH, manual acks, hyper's keep-alive pool
#
# Each repetition, for each system (the order alternates: sluice peer, peer sluice, ...): declare a fresh queue
# (transient, classic), fill it with MESSAGES messages of SIZE bytes (the peer binary's `fill` mode, publisher
# confirms, on CPU $LOAD_CPU), start the system under test, and measure the time from the first drop of the queue's
# ready count (the system's first basic.consume took its prefetch: process start-up and connecting are not counted)
# until the count is 0 (the peer binary's `wait` mode: a passive queue.declare every 2 ms, on CPU $LOAD_CPU). At that
# point up to PREFETCH messages may still be in flight (<= 0.13% of 50,000), the same for both systems. Then the
# system is stopped and the queue deleted. messages/s = MESSAGES / that time.
#
# CPU placement (2 cores): the system under test on CPU $SUT_CPU (default 0); the upstream, the filler and the
# poller on CPU $LOAD_CPU (default 1). RabbitMQ is not ours and is left where it is (it floats over both CPUs); its
# CPU % during each run is printed when its process can be found (the listener of the AMQP port). Also printed: the
# CPU time of the system under test per message (its whole life: start-up included) and the share of CPU $SUT_CPU
# that other processes used meanwhile.
#
# --kafka: the source is a fresh topic of $PARTITIONS (default 3) partitions per run (`consumer kafka-fill`: acks=all,
# records round robin over the partitions) read in a fresh consumer group, on the Kafka at $KAFKA_BOOTSTRAP (default
# 127.0.0.1:9092). Sluice: `from = { broker = "events", topic, group }`, concurrency = $PREFETCH (each partition
# is delivered in order, one record at a time, so at most $PARTITIONS are in flight). The peer: `consumer kafka`,
# one task per partition POSTing in order, offsets stored once delivered and auto-committed every second (Sluice's
# consumer settings). A group's committed offsets move only once a second, so the time is measured at the upstream
# instead: from the first delivery until MESSAGES requests have reached it (`consumer http-wait`, reading the
# upstream nginx's stub_status every 2 ms, its own polls subtracted); then the group's committed lag must reach 0
# within 10 s (`consumer kafka-lag`), which checks that every record was also committed. Topic and group are deleted
# after each run. The broker process whose CPU is reported is the Kafka listener's (a JVM).
#
# KAFKA_OPTIONS="key=value,key=value": librdkafka properties given to both consumers (Sluice: [brokers.events.options]).
# With the defaults Sluice's subscription is slow here (see bench/README.md): KAFKA_OPTIONS="fetch.wait.max.ms=10".
#
# Environment knobs: REPS, MESSAGES, SIZE (bytes), PREFETCH, PARTITIONS, KAFKA_BOOTSTRAP, KAFKA_OPTIONS, AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
# PORT_BASE (default 18100, with --kafka 18200; uses PORT_BASE..PORT_BASE+2), SUT_CPU, LOAD_CPU, SLUICE_BIN (skip the build), PEER_BIN
# (skip the peer's build), PEER_TARGET_DIR (its CARGO_TARGET_DIR, default /tmp/sluice-bench-consumer-target),
# KEEP_TMP=1 (keep the temp dir with configs and logs).
#
# Everything binds on 127.0.0.1; everything started here is stopped, and every queue (topic, group) made here
# deleted, on exit.
set -euo pipefail

REPS=${REPS:-3}
MESSAGES=${MESSAGES:-50000}
KAFKA=0
for arg in "$@"; do
    case "$arg" in
        --quick) REPS=1; MESSAGES=5000 ;;
        --kafka) KAFKA=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument: $arg (use --quick, --kafka)" >&2; exit 2 ;;
    esac
done
SIZE=${SIZE:-256}
PREFETCH=${PREFETCH:-64}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP:-127.0.0.1:9092}
PARTITIONS=${PARTITIONS:-3}
export KAFKA_OPTIONS=${KAFKA_OPTIONS:-}   # read by the peer's `kafka` mode too
if [ "$KAFKA" = 1 ]; then BROKER_NAME=Kafka; else BROKER_NAME=RabbitMQ; fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$KAFKA" = 1 ]; then PORT_BASE=${PORT_BASE:-18200}; else PORT_BASE=${PORT_BASE:-18100}; fi
UPSTREAM_PORT=$PORT_BASE
SLUICE_PORT=$((PORT_BASE + 1))     # Sluice's public listener (unused: a subscription needs no route)
SLUICE_ADMIN=$((PORT_BASE + 2))    # its /metrics, read after each run for retried deliveries
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

# log, apt_install and the /proc measuring helpers shared with bench/run.sh and bench/forward.sh.
. "$ROOT/bench/lib/common.sh"

# ---------------------------------------------------------------------------------------------- tools
NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
    log "installing nginx-light"
    apt_install nginx-light || apt_install nginx
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi

if [ -z "${SLUICE_BIN:-}" ]; then
    log "cargo build --release (waits for the cargo lock if someone else is building)"
    (cd "$ROOT" && nice cargo build --release --quiet)
    SLUICE_BIN=$ROOT/target/release/sluice
fi
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN" >&2; exit 1; }
if [ -z "${PEER_BIN:-}" ]; then
    # Its own target dir (outside the tree), so that it never touches the main build's.
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
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-subscribe.XXXXXX")
chmod 755 "$TMP"
PIDS=()        # long-lived: the upstream
SUT_PID=""     # the system under test of the current run
QUEUE=""       # the queue (with --kafka: the topic) of the current run
GROUP=""       # with --kafka: the consumer group of the current run
delete_source() {   # the current queue, or topic and group
    if [ "$KAFKA" = 1 ]; then
        timeout 30 "$PEER_BIN" kafka-delete "$KAFKA_BOOTSTRAP" "$QUEUE" $GROUP
    else
        "$PEER_BIN" delete "$AMQP_URL" "$QUEUE"
    fi
}
stop_pid() {   # $1 = pid: TERM, up to 5 s, then KILL
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    local pid
    [ -n "$SUT_PID" ] && stop_pid "$SUT_PID"
    [ -n "${WAIT_PID:-}" ] && stop_pid "$WAIT_PID"
    [ -n "$QUEUE" ] && delete_source >/dev/null 2>&1 || true
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Private copies, so that a concurrent `cargo build` cannot swap a binary during the run.
cp "$SLUICE_BIN" "$TMP/sluice"; SLUICE_BIN=$TMP/sluice
cp "$PEER_BIN" "$TMP/consumer"; PEER_BIN=$TMP/consumer

# ---------------------------------------------------------------------------------------------- configs
NGINX_USER=""
[ "$(id -u)" -eq 0 ] && NGINX_USER="user root;"   # the default user/group (nobody:nobody) is missing on Debian
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
        location = /nginx-status { stub_status; }   # --kafka: its request counter times the runs
    }
}
EOF

kafka_options_toml() {   # KAFKA_OPTIONS="k=v,k=v" as [brokers.events.options]
    [ -n "$KAFKA_OPTIONS" ] || return 0
    echo "[brokers.events.options]"
    tr ',' '\n' <<<"$KAFKA_OPTIONS" | awk -F= 'NF >= 2 {k = $1; sub(/^[^=]*=/, ""); printf "\"%s\" = \"%s\"\n", k, $0}'
}
sluice_config() {   # $1 = queue
    cat <<EOF
[server]
listen = "127.0.0.1:$SLUICE_PORT"
admin_listen = "127.0.0.1:$SLUICE_ADMIN"
shutdown_grace = "2s"

[telemetry]
access_log = false

[upstreams.bench]
endpoints = ["http://127.0.0.1:$UPSTREAM_PORT"]

EOF
    if [ "$KAFKA" = 1 ]; then
        cat <<EOF
[brokers.events]
kind = "kafka"
bootstrap = "$KAFKA_BOOTSTRAP"
$(kafka_options_toml)

[[subscriptions]]
name = "bench"
from = { broker = "events", topic = "$1", group = "$2" }
to = { upstream = "bench", path = "/deliver", method = "POST" }
concurrency = $PREFETCH
EOF
    else
        cat <<EOF
[brokers.rabbit]
kind = "amqp"
url = "$AMQP_URL"

[[subscriptions]]
name = "bench"
from = { broker = "rabbit", queue = "$1" }
to = { upstream = "bench", path = "/deliver", method = "POST" }
concurrency = $PREFETCH
EOF
    fi
}
sluice_config sluice-bench-check sluice-bench-check > "$TMP/sluice.toml"
"$SLUICE_BIN" check "$TMP/sluice.toml" >/dev/null

# ---------------------------------------------------------------------------------------------- start
"${PIN_LOAD[@]}" "$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" \
    >"$TMP/upstream/stdout.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -d x "http://127.0.0.1:$UPSTREAM_PORT/deliver" || true)" = 200 ] && break
    sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -d x "http://127.0.0.1:$UPSTREAM_PORT/deliver" || true)" = 200 ] ||
    { echo "the upstream nginx did not answer 200 (see $TMP/upstream/error.log; KEEP_TMP=1)" >&2; exit 1; }

QUEUE="sluice-bench-probe-$$"
if [ "$KAFKA" = 1 ]; then
    if ! timeout 30 "$PEER_BIN" kafka-fill "$KAFKA_BOOTSTRAP" "$QUEUE" 1 2>"$TMP/probe.err"; then
        echo "Kafka at $KAFKA_BOOTSTRAP did not take a record: $(cat "$TMP/probe.err") (integration/brokers.sh up?)" >&2
        exit 1
    fi
    BROKER_PORT=${KAFKA_BOOTSTRAP##*:}
elif ! timeout 20 "$PEER_BIN" fill "$AMQP_URL" "$QUEUE" 1 2>"$TMP/probe.err"; then
    echo "RabbitMQ at $AMQP_URL did not take a message: $(cat "$TMP/probe.err") (integration/brokers.sh up?)" >&2
    exit 1
else
    BROKER_PORT=$(sed -E 's|^[a-z]+://([^@/]*@)?[^:/]*:?([0-9]*).*|\2|' <<<"$AMQP_URL"); BROKER_PORT=${BROKER_PORT:-5672}
fi
delete_source; QUEUE=""

# The broker's process (the listener of its port), for its CPU % during the runs; not pinned, not touched.
BROKER_PID=$(ss -ltnpH "sport = :$BROKER_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true)

# ---------------------------------------------------------------------------------------------- measure
declare -A RATE CPU USPM OTHER BROKER FILL RETRIED
NAMES=(sluice peer)

deliveries() {   # $1 = outcome: Sluice's sluice_deliveries_total for the bench subscription
    curl -s "http://127.0.0.1:$SLUICE_ADMIN/metrics" |
        awk -v o="outcome=\"$1\"" '/^sluice_deliveries_total/ && index($0, o) {n += $NF} END {printf "%.0f\n", n}'
}

run_one() {   # $1 = name, $2 = rep; sets LAST_RATE and records the figures
    local name=$1 rep=$2 f0 f1 w0 w1 el b0 b1 k0 k1 t1 secs lag retried=0
    QUEUE="sluice-bench-sub-$$-$rep-$name"
    f0=$(date +%s%N)
    if [ "$KAFKA" = 1 ]; then
        GROUP="sluice-bench-group-$$-$rep-$name"
        # Checks itself that the topic's high watermarks add up to MESSAGES.
        "${PIN_LOAD[@]}" "$PEER_BIN" kafka-fill "$KAFKA_BOOTSTRAP" "$QUEUE" "$MESSAGES" "$SIZE" "$PARTITIONS"
    else
        "${PIN_LOAD[@]}" "$PEER_BIN" fill "$AMQP_URL" "$QUEUE" "$MESSAGES" "$SIZE"
    fi
    f1=$(date +%s%N)
    FILL[$name]+="$(awk -v n="$MESSAGES" -v a="$f0" -v b="$f1" 'BEGIN {printf "%.0f", n / ((b - a) / 1e9)}') "
    if [ "$KAFKA" = 0 ]; then
        [ "$("$PEER_BIN" count "$AMQP_URL" "$QUEUE")" = "$MESSAGES" ] ||
            { echo "queue $QUEUE does not hold $MESSAGES messages after the fill" >&2; exit 1; }
    fi

    # The poller takes its first reading (MESSAGES ready / the upstream's request count) before the system under
    # test starts.
    if [ "$KAFKA" = 1 ]; then
        "${PIN_LOAD[@]}" "$PEER_BIN" http-wait "http://127.0.0.1:$UPSTREAM_PORT/nginx-status" "$MESSAGES" \
            >"$TMP/wait.out" 2>"$TMP/wait.err" &
    else
        "${PIN_LOAD[@]}" "$PEER_BIN" wait "$AMQP_URL" "$QUEUE" "$MESSAGES" >"$TMP/wait.out" 2>"$TMP/wait.err" &
    fi
    WAIT_PID=$!
    sleep 0.5

    b0=$(cpu_busy "$SUT_CPU"); w0=$(date +%s%N)
    k0=0; [ -n "$BROKER_PID" ] && k0=$(cpu_ticks "$BROKER_PID")
    if [ "$name" = sluice ]; then
        sluice_config "$QUEUE" "$GROUP" > "$TMP/sluice.toml"
        TOKIO_WORKER_THREADS=1 "${PIN_SUT[@]}" "$SLUICE_BIN" run --config "$TMP/sluice.toml" \
            >"$TMP/sluice-$rep.log" 2>&1 &
    elif [ "$KAFKA" = 1 ]; then
        TOKIO_WORKER_THREADS=1 "${PIN_SUT[@]}" "$PEER_BIN" kafka "$KAFKA_BOOTSTRAP" "$QUEUE" "$GROUP" \
            "http://127.0.0.1:$UPSTREAM_PORT/deliver" "$PREFETCH" >"$TMP/peer-$rep.log" 2>&1 &
    else
        TOKIO_WORKER_THREADS=1 "${PIN_SUT[@]}" "$PEER_BIN" "$AMQP_URL" "$QUEUE" \
            "http://127.0.0.1:$UPSTREAM_PORT/deliver" "$PREFETCH" >"$TMP/peer-$rep.log" 2>&1 &
    fi
    SUT_PID=$!
    if ! wait "$WAIT_PID"; then
        WAIT_PID=""
        echo "$name did not empty $QUEUE: $(cat "$TMP/wait.err"); its log:" >&2
        tail -n 20 "$TMP/$name-$rep.log" >&2
        exit 1
    fi
    WAIT_PID=""
    # CPU time of the whole process so far (it started at w0; start-up is included).
    t1=$(cpu_ticks "$SUT_PID"); b1=$(cpu_busy "$SUT_CPU"); w1=$(date +%s%N)
    k1=0; [ -n "$BROKER_PID" ] && k1=$(cpu_ticks "$BROKER_PID")
    [ "$name" = sluice ] && retried=$(deliveries retried)
    if [ "$KAFKA" = 1 ]; then
        # Every record also committed by the group (auto commit every second), before the system is stopped.
        lag=$("$PEER_BIN" kafka-lag "$KAFKA_BOOTSTRAP" "$QUEUE" "$GROUP" 10) ||
            { echo "$name: group $GROUP still lags by $lag records 10 s after the last delivery" >&2; exit 1; }
    fi
    stop_pid "$SUT_PID"; SUT_PID=""
    delete_source; QUEUE=""; GROUP=""

    secs=$(cat "$TMP/wait.out")
    el=$(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
    LAST_RATE=$(awk -v n="$MESSAGES" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')
    RATE[$name]+="$LAST_RATE "
    # CPU %, other load and RabbitMQ CPU % over the delivery time (the CPU time read includes the start-up's).
    CPU[$name]+="$(awk -v d="$t1" -v hz="$CLK_TCK" -v s="$secs" 'BEGIN {printf "%.0f", 100 * d / hz / s}') "
    USPM[$name]+="$(awk -v d="$t1" -v hz="$CLK_TCK" -v n="$MESSAGES" 'BEGIN {printf "%.2f", 1e6 * d / hz / n}') "
    OTHER[$name]+="$(awk -v b=$((b1 - b0)) -v d="$t1" -v hz="$CLK_TCK" -v s="$secs" \
        'BEGIN {o = b - d; if (o < 0) o = 0; printf "%.0f", 100 * o / hz / s}') "
    if [ -n "$BROKER_PID" ]; then
        BROKER[$name]+="$(awk -v d=$((k1 - k0)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN {printf "%.0f", 100 * d / hz / s}') "
    fi
    RETRIED[$name]=$(( ${RETRIED[$name]:-0} + retried ))
    LAST_SECS=$secs LAST_EL=$el
}

log "machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
log "pinning: system under test on CPU ${PIN_SUT[2]:-any}, upstream + filler + poller on CPU ${PIN_LOAD[2]:-any};" \
    "$BROKER_NAME ${BROKER_PID:+(pid $BROKER_PID) }not pinned"
log "$BROKER_NAME → HTTP: $REPS repetitions x $MESSAGES messages of $SIZE bytes, prefetch/concurrency $PREFETCH" \
    "$([ "$KAFKA" = 1 ] && echo "($PARTITIONS partitions${KAFKA_OPTIONS:+, KAFKA_OPTIONS=$KAFKA_OPTIONS})"), upstream 127.0.0.1:$UPSTREAM_PORT"
for rep in $(seq "$REPS"); do
    for k in 0 1; do
        name=${NAMES[$(( (rep - 1 + k) % 2 ))]}
        run_one "$name" "$rep"
        log "rep $rep/$REPS  $(printf '%-7s' "$name") $(printf '%7.0f' "$LAST_RATE") msg/s  (${LAST_SECS}s after" \
            "$(awk -v a="$LAST_EL" -v b="$LAST_SECS" 'BEGIN {printf "%.2f", a - b}')s of start-up;" \
            "filled at $(tail_word "${FILL[$name]}") msg/s)  CPU $(tail_word "${CPU[$name]}")%" \
            " $(tail_word "${USPM[$name]}") µs/msg  other load on CPU $SUT_CPU: $(tail_word "${OTHER[$name]}")%" \
            "${BROKER_PID:+ $BROKER_NAME CPU $(tail_word "${BROKER[$name]}")%}"
    done
done

# ---------------------------------------------------------------------------------------------- report
declare -A MED MEDUS
echo
echo "| system | median msg/s | min–max msg/s | per rep msg/s | CPU % of the process (median) | CPU µs/message (median) | $BROKER_NAME CPU % (median) | other load on CPU $SUT_CPU % (median) |"
echo "|---|---:|---:|---|---:|---:|---:|---:|"
for name in "${NAMES[@]}"; do
    MED[$name]=$(median <<<"${RATE[$name]}")
    MEDUS[$name]=$(median <<<"${USPM[$name]}")
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$name" "${MED[$name]}" "$(minmax <<<"${RATE[$name]}")" \
        "$(echo ${RATE[$name]} | sed 's/ /, /g')" "$(median <<<"${CPU[$name]}")" "${MEDUS[$name]}" \
        "$(median <<<"${BROKER[$name]:-}")" "$(median <<<"${OTHER[$name]}")"
done
busy=$(for name in "${NAMES[@]}"; do echo "${OTHER[$name]}"; done | median)
if awk -v b="$busy" 'BEGIN {exit !(b > 10)}'; then
    echo
    echo "WARNING: other processes ($BROKER_NAME included) used a median ${busy}% of CPU $SUT_CPU during the runs."
fi
[ "${RETRIED[sluice]:-0}" -gt 0 ] && echo "note: Sluice retried ${RETRIED[sluice]} deliveries (counted once delivered)."
echo
awk -v s="${MED[sluice]}" -v p="${MED[peer]}" -v us="${MEDUS[sluice]}" -v up="${MEDUS[peer]}" 'BEGIN {
    r = s / p
    printf "throughput ratio sluice/peer:                              %.3f   (target >= 0.8: %s)\n", r,
        (r >= 0.8) ? "met" : "NOT met"
    printf "CPU-efficiency ratio sluice/peer (peer µs/msg / sluice µs/msg): %.3f\n", up / us
}'
echo
echo "($BROKER_NAME → HTTP, $REPS repetitions x $MESSAGES messages of $SIZE bytes, prefetch $PREFETCH$([ "$KAFKA" = 1 ] &&
    echo ", $PARTITIONS partitions${KAFKA_OPTIONS:+, KAFKA_OPTIONS=$KAFKA_OPTIONS}"); fill median" \
    "$(for name in "${NAMES[@]}"; do echo "${FILL[$name]}"; done | median) msg/s; $(date -u '+%Y-%m-%d %H:%M UTC'))"

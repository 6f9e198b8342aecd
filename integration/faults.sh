#!/usr/bin/env bash
# Sluice's fault suite: the gateway under bounded load while its brokers, its upstreams or the gateway itself fail,
# checking the delivery promise end to end: every request answered 202 must be in the broker, as read by an
# independent consumer (pika for RabbitMQ, confluent-kafka for Kafka, from integration/pyenv.sh's venv).
#
#   integration/faults.sh [--full] [--only NAME[,NAME...]] [--bin SLUICE] [--release] [--keep]
#
#   (default)  short mode, for integration/test.sh: 1,000 requests per scenario, the scenarios marked * below
#   --full     every scenario with 5,000 requests at concurrency 32; writes the table to integration/FAULTS.md
#   --only     run only these scenarios (names as in the table, without the +spool suffix)
#   --bin      the sluice binary to run (default: $SLUICE_BIN, else target/debug/sluice in short mode -- the one
#              `cargo test` built, as integration/walkthrough.sh does; built with `cargo build` if missing -- and
#              `cargo build --release`'s target/release/sluice with --full or --release; CARGO_TARGET_DIR honoured)
#   --keep     keep the work directory (configs, gateway logs, every response, every consumed message)
#
# Scenarios (each one a fresh gateway, fresh queue/topic names, its own Toxiproxy proxies):
#   rabbit-stop*    RabbitMQ's application stopped mid-load and started again (brokers.sh rabbit-stop/rabbit-start)
#   kafka-kill*     the Kafka broker killed with SIGKILL mid-load and started again (brokers.sh kafka-kill/kafka-start)
#   rabbit-toxics*  on the gateway->RabbitMQ link: a latency toxic (300 ms +- 100), then a reset_peer toxic (every
#                   connection reset, new ones too) until the fault is lifted
#   rabbit-bandwidth  a bandwidth toxic (1 KB/s each way) on the gateway->RabbitMQ link: publisher confirms then
#                   take longer than confirm_timeout, and the broker stores messages whose request was answered 503
#   upstream-kill*  forwarding (GET, retry = { max_retries = 2, on = [connect-failure, reset, 5xx] }) to an upstream
#                   of 3 endpoints, one of which is killed with SIGKILL mid-load: >= 99.9 % must be answered 200
#   gateway-kill*   the gateway, publishing to both brokers, SIGTERM'd mid-load, restarted, later SIGKILL'd, restarted
# Broker faults are injected after 30 % of the requests (20 % for the toxics); the load generator then stops at 60 %
# until the fault is over and the gateway reports the broker up again (/readyz?verbose), so that the rest of the
# load exercises the recovery (gateway-kill: SIGTERM at 20 %, restart at 35 %, SIGKILL at 60 %, restart at 75 %). The load is paced (100 req/s short, 150 full), so an outage answered with fast 503s
# does not use up the requests at once; nothing asserts on timings.
#
# Toxiproxy (integration/toxiproxy.sh, installed with `go install` and cached outside the repo) sits between the
# gateway and RabbitMQ in every scenario, and between the gateway and each upstream endpoint; all on 127.0.0.1.
# Kafka is reached directly: a Kafka client reconnects to the *advertised* listener after bootstrap, so proxying it
# would need a listener advertising the proxy's port; the toxics are therefore RabbitMQ-only, and Kafka gets the
# crash (SIGKILL) scenario against the real broker. The consumers always talk to the brokers directly.
#
# The spool (`[brokers.NAME.spool]`, DESIGN.md section 4): FAULTS_SPOOL=1 runs every broker scenario (and
# gateway-kill) a second time with a spool for each broker (fsync = "always"), named NAME+spool. A spooled 202
# ("spooled": true) counts exactly like any 202: it must reach the consumer once the broker is back (the drain waits
# for it, up to a timeout). With a spool, the broker-outage scenarios must also answer no 503 at all.
#
# Pass criteria: 0 lost (every id answered 202 is consumed), no 202 without an id, no id answered twice, every consumed
# message's body is the request its 202 answered; 503s, duplicates (at-least-once) and messages stored although their
# request was answered 503 or not at all are reported, not failures; upstream-kill: >= 99.9 % answered 200. After each
# fault the gateway must answer at least one request successfully again, and it must exit 0 on every SIGTERM (DESIGN.md
# section 7). A panic in a gateway log is noted in the table. Exit 1 if any scenario failed.
#
# The brokers are shared with the Rust end-to-end tests (which hold /tmp/sluice-e2e-rabbitmq.lock and
# /tmp/sluice-e2e-kafka.lock shared): a scenario holds the lock of each broker it uses for its whole length, exclusive
# when it stops or kills that broker, shared otherwise, and restarts a broker it stopped whatever happens.
#
# Needs the brokers (started here with integration/brokers.sh up when they do not answer), curl, Go for the first
# Toxiproxy install. Environment: SLUICE_TEST_AMQP_URL, SLUICE_TEST_KAFKA (as brokers.sh), SLUICE_BIN,
# FAULTS_SPOOL=1, FAULTS_REQUESTS / FAULTS_CONCURRENCY / FAULTS_RATE (override the mode's load),
# SLUICE_TOXIPROXY_PORT (toxiproxy.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE=short
ONLY=
BIN=${SLUICE_BIN:-}
RELEASE=0
KEEP=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --full) MODE=full ;;
        --short) MODE=short ;;
        --only) ONLY=$2; shift ;;
        --bin) BIN=$2; shift ;;
        --release) RELEASE=1 ;;
        --keep) KEEP=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "faults.sh: unknown argument $1 (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done

AMQP_URL=${SLUICE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
KAFKA=${SLUICE_TEST_KAFKA:-127.0.0.1:9092}
SPOOL=${FAULTS_SPOOL:-0}
if [[ $MODE == full ]]; then
    TOTAL=${FAULTS_REQUESTS:-5000}
    RATE=${FAULTS_RATE:-150}
    SCENARIOS=(rabbit-stop kafka-kill rabbit-toxics rabbit-bandwidth upstream-kill gateway-kill)
else
    TOTAL=${FAULTS_REQUESTS:-1000}
    RATE=${FAULTS_RATE:-100}
    SCENARIOS=(rabbit-stop kafka-kill rabbit-toxics upstream-kill gateway-kill)
fi
CONCURRENCY=${FAULTS_CONCURRENCY:-32}
if [[ -n $ONLY ]]; then
    IFS=, read -r -a SCENARIOS <<<"$ONLY"
fi

# amqp://user:pass@host:port/vhost -> the broker's host:port (a proxy's upstream); amqp_url_via PORT: the same URL
# pointing at 127.0.0.1:PORT (the proxy)
AMQP_SCHEME=${AMQP_URL%%://*}
AMQP_REST=${AMQP_URL#*://}
AMQP_AUTHORITY=${AMQP_REST%%/*}
AMQP_PATH=
[[ $AMQP_REST == */* ]] && AMQP_PATH=/${AMQP_REST#*/}
AMQP_AUTH=
AMQP_HOSTPORT=$AMQP_AUTHORITY
if [[ $AMQP_AUTHORITY == *@* ]]; then
    AMQP_AUTH=${AMQP_AUTHORITY%@*}@
    AMQP_HOSTPORT=${AMQP_AUTHORITY##*@}
fi
[[ $AMQP_HOSTPORT == *:* ]] || AMQP_HOSTPORT=$AMQP_HOSTPORT:5672
amqp_url_via() { echo "$AMQP_SCHEME://${AMQP_AUTH}127.0.0.1:$1$AMQP_PATH"; }

log() { printf "faults.sh [%s]: %s\n" "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

T_START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-faults.XXXXXX")
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
TOXI_STARTED=0

main_cleanup() {
    local rc=$?
    if [[ $TOXI_STARTED == 1 ]]; then integration/toxiproxy.sh down 2>/dev/null || true; fi
    if [[ $KEEP == 1 || $rc != 0 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap main_cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------- set-up
# Under both locks, shared: a broker an end-to-end test has stopped (holding its lock exclusively) is not "missing".
(
    if ! flock -s -w 1800 8 || ! flock -s -w 1800 9; then
        die "could not lock /tmp/sluice-e2e-{rabbitmq,kafka}.lock within 30 min"
    fi
    integration/brokers.sh status >/dev/null 2>&1 || integration/brokers.sh up 8>&- 9>&-
) 8>/tmp/sluice-e2e-rabbitmq.lock 9>/tmp/sluice-e2e-kafka.lock
PY=$(integration/pyenv.sh)
if ! integration/toxiproxy.sh status >/dev/null 2>&1; then
    integration/toxiproxy.sh up
    TOXI_STARTED=1
fi
TOXI() { integration/toxiproxy.sh cli "$@" >/dev/null; }

if [[ -z $BIN ]]; then
    TARGET_DIR=${CARGO_TARGET_DIR:-target}
    if [[ $MODE == full || $RELEASE == 1 ]]; then
        log "building the release binary (cargo build --release)"
        nice -n 19 cargo build --release --locked --bin sluice >&2
        BIN=$TARGET_DIR/release/sluice
    else
        BIN=$TARGET_DIR/debug/sluice
        if [[ ! -x $BIN ]]; then
            log "no $BIN yet: building it (cargo build)"
            nice -n 19 cargo build --locked --bin sluice >&2
        fi
    fi
fi
[[ -x $BIN ]] || die "no sluice binary at $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
T_SCENARIOS=$SECONDS
log "mode $MODE: $TOTAL requests per scenario, concurrency $CONCURRENCY, at most $RATE req/s; binary $BIN"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# A port free now, below the kernel's ephemeral range: a port from bind(0) is released before the gateway or the
# proxy binds it, and a later bind(0) (an upstream, a client's outgoing connection) could be handed the same one.
# Never one handed out before in this run ($WORK/ports): the gateway's, its admin's and the proxies' ports are all
# picked before any of them is bound.
free_port() {
    "$PY" - "$WORK/ports" <<'PY'
import os, random, socket, sys
taken_file = sys.argv[1]
taken = set(open(taken_file).read().split()) if os.path.exists(taken_file) else set()
low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
# Below the range when it leaves room there, else above it; bind(0) when neither does.
span = range(max(1024, low - 12000), low) if low - 1024 >= 1000 else range(high + 1, 65536)
for _ in range(1000):
    port = random.choice(span) if len(span) >= 1000 else 0
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
    except OSError:
        continue
    finally:
        s.close()
    if str(port) not in taken:
        break
else:
    sys.exit("no free port found")
with open(taken_file, "a") as f:
    f.write(f"{port}\n")
print(port)
PY
}

# ---------------------------------------------------------------------------------------------- per scenario
# These run in the scenario's subshell; scenario_cleanup (its EXIT trap) undoes whatever was left.
GW_PID=
LOAD_PID=
UPSTREAM_PIDS=()
PROXIES=()
QUEUES=()
TOPICS=()
LOCK_FDS=()
RABBIT_STOPPED=0
KAFKA_DOWN=0

# The brokers are shared with the Rust end-to-end tests, which hold /tmp/sluice-e2e-{rabbitmq,kafka}.lock shared, and
# exclusively while they stop a broker. A scenario holds the lock of each broker it uses for its whole length:
# exclusive when it stops that broker, shared otherwise (so that no test stops it under the scenario's feet).
# Always rabbitmq before kafka.
lock_broker() { # lock_broker -s|-x rabbitmq|kafka
    local fd
    exec {fd}>"/tmp/sluice-e2e-$2.lock"
    if ! flock -n "$1" "$fd"; then
        log "waiting for the lock /tmp/sluice-e2e-$2.lock ($([[ $1 == -x ]] && echo exclusive || echo shared))"
        flock -w 1800 "$1" "$fd" || die "could not lock /tmp/sluice-e2e-$2.lock within 30 min"
    fi
    LOCK_FDS+=("$fd")
}
# unlocked CMD...: runs CMD without the locks' file descriptors, so that nothing it leaves running (Kafka's JVM)
# holds a lock after the scenario.
unlocked() {
    (
        for fd in "${LOCK_FDS[@]}"; do exec {fd}>&-; done
        exec "$@"
    )
}
# spawn CMD... &: the same for a background process; exec in the background job itself, so that $! is CMD's pid
spawn() {
    for fd in "${LOCK_FDS[@]}"; do exec {fd}>&-; done
    exec "$@"
}

scenario_cleanup() {
    local rc=$? p
    set +e
    [[ -n $LOAD_PID ]] && kill "$LOAD_PID" 2>/dev/null
    [[ -n $GW_PID ]] && kill -9 "$GW_PID" 2>/dev/null
    for p in "${UPSTREAM_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [[ $RABBIT_STOPPED == 1 ]]; then
        log "restarting RabbitMQ"
        unlocked integration/brokers.sh rabbit-start || log "could not restart RabbitMQ!"
    fi
    if [[ $KAFKA_DOWN == 1 ]]; then
        log "restarting Kafka"
        unlocked integration/brokers.sh kafka-start || log "could not restart Kafka!"
    fi
    for p in "${PROXIES[@]}"; do TOXI delete "$p" 2>/dev/null; done
    for p in "${QUEUES[@]}"; do "$PY" integration/faults/broker.py rabbit-delete "$AMQP_URL" "$p" 2>/dev/null; done
    for p in "${TOPICS[@]}"; do "$PY" integration/faults/broker.py kafka-delete "$KAFKA" "$p" 2>/dev/null; done
    return "$rc"
}

# new_scenario NAME: its directory, a run id for its queue/topic names, the gateway's ports
new_scenario() {
    NAME=$1
    S=$WORK/$NAME
    mkdir -p "$S"
    RUN=faults-$(date +%s)-$RANDOM
    PORT=$(free_port)
    ADMIN=$(free_port)
    BROKERS_TOML=
    ROUTES_TOML=
    TARGETS=()
    DRAINS=()
    READY_BROKERS=()
    NOTES=()
    JUDGE_ARGS=()
    log "=== $NAME ($TOTAL requests)"
}

proxy() { # proxy NAME UPSTREAM_HOST:PORT -> PROXY_PORT, the port it listens on
    local name=$RUN-$1
    PROXY_PORT=$(free_port)
    TOXI create -l "127.0.0.1:$PROXY_PORT" -u "$2" "$name"
    PROXIES+=("$name")
}

spool_toml() { # spool_toml BROKER (when the scenario runs with a spool)
    [[ $WITH_SPOOL == 1 ]] || return 0
    cat <<EOF
[brokers.$1.spool]
dir = "$S/spool-$1"
max_bytes = "1GiB"
fsync = "always"
EOF
}

# add_rabbit: broker "rabbit" through a Toxiproxy proxy named rabbit, a durable queue bound to amq.topic, a route
add_rabbit() {
    RABBIT_PROXY=$RUN-rabbit
    local key=$RUN.rabbit queue=$RUN-rabbit
    proxy rabbit "$AMQP_HOSTPORT"
    "$PY" integration/faults/broker.py rabbit-setup "$AMQP_URL" "$queue" "$key"
    QUEUES+=("$queue")
    BROKERS_TOML+="[brokers.rabbit]
kind = \"amqp\"
url = \"$(amqp_url_via "$PROXY_PORT")\"
confirm_timeout = \"5s\"
$(spool_toml rabbit)
"
    ROUTES_TOML+="[[routes]]
name = \"faults-rabbit\"
match = { path = \"/faults/rabbit\", methods = [\"POST\"] }
publish = { broker = \"rabbit\", exchange = \"amq.topic\", routing_key = \"$key\" }
"
    DRAINS+=("rabbit-drain $AMQP_URL $queue $((${#TARGETS[@]} / 2))")
    TARGETS+=(--target POST:/faults/rabbit)
    READY_BROKERS+=(rabbit)
}

# add_kafka: broker "kafka" (direct), a topic of 3 partitions, a route
add_kafka() {
    local topic=$RUN.kafka
    "$PY" integration/faults/broker.py kafka-setup "$KAFKA" "$topic" 3
    TOPICS+=("$topic")
    BROKERS_TOML+="[brokers.kafka]
kind = \"kafka\"
bootstrap = \"$KAFKA\"
delivery_timeout = \"5s\"
$(spool_toml kafka)
"
    ROUTES_TOML+="[[routes]]
name = \"faults-kafka\"
match = { path = \"/faults/kafka\", methods = [\"POST\"] }
publish = { broker = \"kafka\", topic = \"$topic\" }
"
    DRAINS+=("kafka-drain $KAFKA $topic $((${#TARGETS[@]} / 2))")
    TARGETS+=(--target POST:/faults/kafka)
    READY_BROKERS+=(kafka)
}

write_config() {
    CONFIG=$S/sluice.toml
    cat >"$CONFIG" <<EOF
# written by integration/faults.sh for scenario $NAME
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$ADMIN"
shutdown_grace = "10s"

[telemetry]
access_log = false

$UPSTREAMS_TOML
$BROKERS_TOML
$ROUTES_TOML
EOF
    local out
    out=$("$BIN" check "$CONFIG" 2>&1) || die "sluice check refused $CONFIG:"$'\n'"$out"
}

start_gateway() {
    spawn "$BIN" run --config "$CONFIG" >>"$S/sluice.log" 2>&1 &
    GW_PID=$!
    wait_ready
}

# The admin listener answers, and /readyz?verbose reports every broker of the scenario up.
gateway_ready() {
    local body b
    body=$(curl -s --max-time 2 "http://127.0.0.1:$ADMIN/readyz?verbose" 2>/dev/null) || return 1
    [[ $body == *'"ready":true'* ]] || return 1
    for b in "${READY_BROKERS[@]}"; do
        [[ $body == *"\"$b\":\"up\""* ]] || return 1
    done
}
wait_ready() {
    local i
    for ((i = 0; i < 1200; i++)); do
        gateway_ready && return 0
        kill -0 "$GW_PID" 2>/dev/null || { tail -n 20 "$S/sluice.log" >&2; die "the gateway exited during start-up"; }
        sleep 0.1
    done
    tail -n 20 "$S/sluice.log" >&2
    die "the gateway did not report ready with brokers ${READY_BROKERS[*]} up within 120s"
}

# stop_gateway SIGNAL: signal it, wait for it to exit, note the exit status (SIGTERM must exit 0)
stop_gateway() {
    local sig=$1 rc=0
    log "gateway: $sig"
    kill -"$sig" "$GW_PID" 2>/dev/null || NOTES+=("gateway had exited before SIG$sig")
    wait "$GW_PID" 2>/dev/null || rc=$?
    GW_PID=
    # DESIGN.md section 7: on SIGTERM the gateway drains, flushes its producers and exits 0
    if [[ $sig == TERM && $rc != 0 ]]; then JUDGE_ARGS+=(--fail "gateway exited $rc on SIGTERM"); fi
    return 0
}

# start_load PAUSE_SEQ...: the load generator in the background, stopping at each PAUSE_SEQ until resume N
start_load() {
    local args=() k n=0
    for k in "$@"; do
        n=$((n + 1))
        args+=(--pause-at "$k" --resume-file "$S/resume.$n")
    done
    spawn "$PY" integration/faults/loadgen.py --url "http://127.0.0.1:$PORT" "${TARGETS[@]}" --total "$TOTAL" \
        --concurrency "$CONCURRENCY" --rate "$RATE" --out "$S/responses.jsonl" --progress "$S/progress" \
        --run "$RUN" "${args[@]}" &
    LOAD_PID=$!
}
resume() { touch "$S/resume.$1"; }
pct() { echo $((TOTAL * $1 / 100)); }
progress() { cat "$S/progress" 2>/dev/null || echo 0; }

# wait_progress N MAX_SECONDS: until N requests are answered (or the load is over, or MAX_SECONDS passed: the
# fault's duration is bounded in time too when a toxic slows the gateway down; not an assertion)
wait_progress() {
    local n=$1 max=$2 t0=$SECONDS
    while (($(progress) < n)); do
        kill -0 "$LOAD_PID" 2>/dev/null || return 0
        ((SECONDS - t0 < max)) || { log "  (after ${max}s: $(progress) of $n requests answered; going on)"; return 0; }
        sleep 0.1
    done
}

# metric_sum TEXT NAME: the sum of a Prometheus counter's samples
metric_sum() { awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { print s + 0 }' <<<"$1"; }

wait_load() {
    wait "$LOAD_PID" || die "the load generator failed"
    LOAD_PID=
}

# drain_and_judge [JUDGE ARGS...]: every consumer drains its queue/topic, report.py judges, the gateway stops
drain_and_judge() {
    local d kind where name target n=0 drained=() timeout=60
    [[ $WITH_SPOOL == 1 ]] && timeout=300
    for d in "${DRAINS[@]}"; do
        n=$((n + 1))
        read -r kind where name target <<<"$d"
        "$PY" integration/faults/broker.py "$kind" "$where" "$name" "$S/responses.jsonl" "$target" \
            "$S/drained.$n.jsonl" --timeout "$timeout" --idle 2
        drained+=(--drained "$target:$S/drained.$n.jsonl")
    done
    stop_gateway TERM
    local panics
    panics=$(grep -c 'panicked' "$S/sluice.log" || true)
    [[ $panics == 0 ]] || NOTES+=("gateway log: $panics panic(s)")
    local notes=() x
    for x in "${NOTES[@]}"; do notes+=(--note "$x"); done
    [[ $WITH_SPOOL == 1 ]] && JUDGE_ARGS+=(--spool)
    "$PY" integration/faults/report.py judge "$RESULTS" "$NAME" "$S/responses.jsonl" "${drained[@]}" \
        "${JUDGE_ARGS[@]}" "${notes[@]}" "$@" >&2
}

# ---------------------------------------------------------------------------------------------- scenarios
scenario_rabbit_stop() {
    lock_broker -x rabbitmq
    add_rabbit
    write_config
    start_gateway
    start_load "$(pct 60)"
    wait_progress "$(pct 30)" 600
    RABBIT_STOPPED=1
    log "RabbitMQ: stop (after $(progress) requests)"
    unlocked integration/brokers.sh rabbit-stop
    wait_progress "$(pct 50)" 15
    log "RabbitMQ: start (after $(progress) requests)"
    unlocked integration/brokers.sh rabbit-start
    RABBIT_STOPPED=0
    wait_ready
    resume 1
    wait_load
    [[ $WITH_SPOOL == 1 ]] && JUDGE_ARGS+=(--no-503)
    drain_and_judge --recovery-from "$(pct 60)"
}

scenario_kafka_kill() {
    lock_broker -x kafka
    add_kafka
    write_config
    start_gateway
    start_load "$(pct 60)"
    wait_progress "$(pct 30)" 600
    KAFKA_DOWN=1
    log "Kafka: SIGKILL (after $(progress) requests)"
    unlocked integration/brokers.sh kafka-kill
    wait_progress "$(pct 50)" 15
    log "Kafka: start (after $(progress) requests)"
    unlocked integration/brokers.sh kafka-start
    KAFKA_DOWN=0
    wait_ready
    resume 1
    wait_load
    [[ $WITH_SPOOL == 1 ]] && JUDGE_ARGS+=(--no-503)
    drain_and_judge --recovery-from "$(pct 60)"
}

scenario_rabbit_toxics() {
    lock_broker -s rabbitmq
    add_rabbit
    write_config
    start_gateway
    start_load "$(pct 60)"
    wait_progress "$(pct 20)" 600
    log "toxic: latency 300ms +- 100 (after $(progress) requests)"
    TOXI toxic add -n latency -t latency -a latency=300 -a jitter=100 "$RABBIT_PROXY"
    wait_progress "$(pct 40)" 60
    TOXI toxic remove -n latency "$RABBIT_PROXY"
    log "toxic: reset_peer (after $(progress) requests)"
    TOXI toxic add -n reset -t reset_peer -a timeout=0 "$RABBIT_PROXY"
    wait_progress "$(pct 60)" 60
    TOXI toxic remove -n reset "$RABBIT_PROXY"
    log "toxics removed (after $(progress) requests)"
    wait_ready
    resume 1
    wait_load
    [[ $WITH_SPOOL == 1 ]] && JUDGE_ARGS+=(--no-503)
    drain_and_judge --recovery-from "$(pct 60)"
}

scenario_rabbit_bandwidth() {
    lock_broker -s rabbitmq
    add_rabbit
    write_config
    start_gateway
    start_load "$(pct 60)"
    wait_progress "$(pct 20)" 600
    log "toxic: bandwidth 1 KB/s each way (after $(progress) requests)"
    TOXI toxic add -n bw-down -t bandwidth -a rate=1 "$RABBIT_PROXY"
    TOXI toxic add -n bw-up -u -t bandwidth -a rate=1 "$RABBIT_PROXY"
    wait_progress "$(pct 50)" 30
    TOXI toxic remove -n bw-down "$RABBIT_PROXY"
    TOXI toxic remove -n bw-up "$RABBIT_PROXY"
    log "toxics removed (after $(progress) requests)"
    wait_ready
    resume 1
    wait_load
    drain_and_judge --recovery-from "$(pct 60)"
}

scenario_upstream_kill() {
    local i endpoints=()
    for i in 1 2 3; do
        spawn "$PY" integration/faults/upstream.py "u$i" "$S/upstream-$i.port" 2 >"$S/upstream-$i.log" 2>&1 &
        UPSTREAM_PIDS+=($!)
    done
    for i in 1 2 3; do
        for _ in $(seq 100); do [[ -s $S/upstream-$i.port ]] && break; sleep 0.1; done
        [[ -s $S/upstream-$i.port ]] || die "upstream $i did not start"
        proxy "upstream-$i" "127.0.0.1:$(cat "$S/upstream-$i.port")"
        endpoints+=("\"http://127.0.0.1:$PROXY_PORT\"")
    done
    UPSTREAMS_TOML="[upstreams.faults]
endpoints = [$(IFS=,; echo "${endpoints[*]}")]
"
    ROUTES_TOML+="[[routes]]
name = \"faults-forward\"
match = { path_prefix = \"/faults/fwd\", methods = [\"GET\"] }
forward = { upstream = \"faults\", timeout = \"10s\" }
retry = { max_retries = 2, on = [\"connect-failure\", \"reset\", \"5xx\"] }
"
    TARGETS+=(--target GET:/faults/fwd)
    write_config
    start_gateway
    start_load
    wait_progress "$(pct 30)" 600
    log "upstream u1: SIGKILL (after $(progress) requests)"
    kill -9 "${UPSTREAM_PIDS[0]}"
    wait "${UPSTREAM_PIDS[0]}" 2>/dev/null || true
    wait_load
    local m
    m=$(curl -s "http://127.0.0.1:$ADMIN/metrics")
    NOTES+=("retries: $(metric_sum "$m" sluice_retries_total), ejections: $(metric_sum "$m" sluice_ejections_total)")
    drain_and_judge --forward
}

scenario_gateway_kill() {
    lock_broker -s rabbitmq
    lock_broker -s kafka
    add_rabbit
    add_kafka
    write_config
    start_gateway
    start_load "$(pct 35)" "$(pct 75)"
    wait_progress "$(pct 20)" 600
    log "(after $(progress) requests)"
    stop_gateway TERM
    wait_progress "$(pct 35)" 60
    log "gateway: restart (after $(progress) requests)"
    start_gateway
    resume 1
    wait_progress "$(pct 60)" 600
    log "(after $(progress) requests)"
    stop_gateway KILL
    wait_progress "$(pct 75)" 60
    log "gateway: restart (after $(progress) requests)"
    start_gateway
    resume 2
    wait_load
    drain_and_judge --recovery-from "$(pct 75)"
}

# run_scenario NAME SPOOL: the scenario in a subshell (its own cleanup); a scenario that aborts is a FAIL row
run_scenario() {
    local base=$1 name=$1
    [[ $2 == 1 ]] && name=$1+spool
    local fn=scenario_${base//-/_}
    declare -F "$fn" >/dev/null || die "unknown scenario $base"
    local t0=$SECONDS rc=0
    # errexit does not work inside a subshell that is an `if` condition: run it as a plain command
    set +e
    (
        set -e
        trap scenario_cleanup EXIT
        trap 'exit 130' INT TERM
        WITH_SPOOL=$2
        UPSTREAMS_TOML=
        new_scenario "$name"
        "$fn"
    )
    rc=$?
    set -e
    if [[ $rc != 0 ]]; then
        "$PY" - "$RESULTS" "$name" "$WORK/$name" <<'EOF'
import json, sys
row = {"scenario": sys.argv[2], "result": "FAIL", "notes": f"scenario aborted (see the log above; files in {sys.argv[3]})"}
open(sys.argv[1], "a").write(json.dumps(row) + "\n")
EOF
        KEEP=1
    fi
    log "=== $name done ($((SECONDS - t0))s)"
}

for sc in "${SCENARIOS[@]}"; do
    run_scenario "$sc" 0
    if [[ $SPOOL == 1 && $sc != upstream-kill ]]; then run_scenario "$sc" 1; fi
done

# ---------------------------------------------------------------------------------------------- table
ELAPSED=$((SECONDS - T_START))
rc=0
echo
echo "Sluice fault suite ($MODE mode: $TOTAL requests per scenario, concurrency $CONCURRENCY; ${ELAPSED}s)"
"$PY" integration/faults/report.py table "$RESULTS" || rc=1
if [[ $MODE == full ]]; then
    {
        echo "# Fault suite results"
        echo
        echo "Written by \`integration/faults.sh --full\` on $(date -u +%Y-%m-%dT%H:%MZ) at commit" \
            "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (with local changes)'):" \
            "$TOTAL requests per scenario, concurrency $CONCURRENCY, at most $RATE req/s, spool variants" \
            "$([[ $SPOOL == 1 ]] && echo on || echo "off (FAULTS_SPOOL=1 turns them on)");" \
            "$((SECONDS - T_SCENARIOS))s for the scenarios (${ELAPSED}s in all, set-up and build included)."
        echo "See the header of integration/faults.sh for what each scenario does and what passes."
        echo "Columns: \`202\` answered 202 (spooled or not); \`consumed\` distinct ids the independent consumer read;"
        echo "\`lost\` ids answered 202 and never consumed (must be 0); \`duplicated\` extra copies consumed;"
        echo "\`extra\` ids consumed whose request was not answered 202 (a 503 after the broker stored it, or no answer)."
        echo
        "$PY" integration/faults/report.py table "$RESULTS" --markdown || true
    } >integration/FAULTS.md
    log "wrote integration/FAULTS.md"
fi
if [[ $rc != 0 ]]; then
    log "FAILED: at least one scenario lost a message or missed its criterion (see the table)"
    exit 1
fi
log "every scenario passed (${ELAPSED}s)"

#!/usr/bin/env bash
# Sluice's async path: HTTP→Kafka and HTTP→RabbitMQ (confirmed) vs raw producers with the same settings and vs
# outside peers doing the same job (Benthos) or the broker's own load tool (RabbitMQ PerfTest, Kafka's
# kafka-producer-perf-test).
#
#   bench/brokers.sh            5 interleaved repetitions of 10 s per system (about 15 minutes plus builds)
#   bench/brokers.sh --quick    1 repetition of 3 s per system (smoke check)
#   --no-benthos, --no-perftest, --no-kafka-perf, --no-peers (all three): skip a peer (else a peer that cannot be
#   built or fetched stops the script with an error)
#
# Systems (each run gets a fresh 3-partition topic or a fresh durable queue, deleted afterwards):
#   sluice-kafka      wrk -t1 -c$CONNS POSTs 1 KiB bodies to a Sluice publish route (Kafka, ack = "confirm":
#                     202 after the delivery report; acks=all, idempotent producer, linger.ms=2)
#   raw-kafka         bench/clients raw-kafka: rdkafka FutureProducer with Sluice's settings, $CONNS concurrent
#                     sends each awaiting its delivery report
#   benthos-kafka     the same wrk load on Benthos v4.27.0 (bench/peers/benthos/kafka.yaml: http_server input →
#                     kafka output, acks=all, max_in_flight $CONNS; answers once the output acked), GOMAXPROCS =
#                     Sluice's worker count
#   kafka-perf        Kafka's kafka-producer-perf-test (ProducerPerformance, same version as the broker):
#                     --num-records $KAFKA_PERF_RECORDS --throughput -1 --record-size $SIZE, acks=all
#                     enable.idempotence=true linger.ms=2 (no in-flight cap: its buffer.memory is the limit)
#   sluice-amqp       the same wrk load on a Sluice route publishing to RabbitMQ (persistent, mandatory, publisher
#                     confirms on Sluice's channel pool, default exchange → the queue)
#   raw-amqp          bench/clients raw-amqp: lapin, $CONNS confirm-mode channels, one publish in flight each
#   benthos-amqp      the wrk load on Benthos (bench/peers/benthos/amqp.yaml: http_server → amqp_0_9, persistent,
#                     mandatory, confirms on one channel, max_in_flight $CONNS)
#   perftest-amqp     RabbitMQ PerfTest: one producer, no consumer (-x 1 -y 0), --confirm $CONNS, persistent,
#                     mandatory, $SIZE-byte bodies, time-limited (-z), to the run's queue
#   sluice-kafka-1t   sluice-kafka with TOKIO_WORKER_THREADS=1 (and sluice-amqp-1t); ONE_THREAD=0 skips them
#   sluice-base-kafka only when SLUICE_BASE_BIN is set: sluice-kafka (and sluice-base-amqp: sluice-amqp) run by that
#                     binary, e.g. a build from before a change, interleaved with the others
# Sluice otherwise runs with its default multi-thread runtime (one worker per CPU). Nothing is pinned: the
# brokers need the same 2 CPUs. How the peers are obtained: bench/lib/brokers_peers.sh and bench/README.md.
#
# Per run it prints msgs/s (Sluice, Benthos: 2xx responses/s; raw: confirmed sends/s; PerfTest: its confirmed
# msgs/s; kafka-perf: its records/s), and from /proc the CPU time per message of the process under test (all its
# threads, librdkafka's included), of the broker (the process listening on 9092 / 5672), of wrk, and the share of
# the machine that other processes used meanwhile. It also checks that the number of messages in the topic/queue
# matches the acknowledged count.
#
# Environment knobs: REPS, DURATION, WARMUP (seconds), CONNS, SIZE (body bytes), ONE_THREAD (1/0),
# PORT_BASE (default 18090: uses PORT_BASE, PORT_BASE+2, +3 and PORT_BASE+1900), KAFKA (default 127.0.0.1:9092),
# AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f), SLUICE_BIN (skip the build), SLUICE_BASE_BIN, KEEP_TMP=1,
# KAFKA_PERF_RECORDS (default 20000 x (WARMUP + DURATION + 1)), PEER_BENTHOS / PEER_PERFTEST / PEER_KAFKA_PERF (1/0, as the flags),
# PERFTEST_VERSION (default 2.22.1), BENTHOS_BIN (skip the Benthos build), LINGER_MS (Kafka's linger.ms for
# sluice-kafka and raw-kafka alike; default: Sluice's own, 2; the README's latency-against-broker-CPU table),
# ONLY (kafka or amqp: run that broker's systems alone).
#
# Everything binds on 127.0.0.1; everything started here is stopped on exit, topics/queues are deleted.
set -euo pipefail

REPS=${REPS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
SIZE=${SIZE:-1024}
ONE_THREAD=${ONE_THREAD:-1}
PEER_BENTHOS=${PEER_BENTHOS:-1}
PEER_PERFTEST=${PEER_PERFTEST:-1}
PEER_KAFKA_PERF=${PEER_KAFKA_PERF:-1}
for arg in "$@"; do
    case "$arg" in
        --quick) REPS=1; DURATION=3; WARMUP=1 ;;
        --no-benthos) PEER_BENTHOS=0 ;;
        --no-perftest) PEER_PERFTEST=0 ;;
        --no-kafka-perf) PEER_KAFKA_PERF=0 ;;
        --no-peers) PEER_BENTHOS=0; PEER_PERFTEST=0; PEER_KAFKA_PERF=0 ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (use --quick, --no-benthos, --no-perftest, --no-kafka-perf, --no-peers)" >&2; exit 2 ;;
    esac
done
KAFKA_PERF_RECORDS=${KAFKA_PERF_RECORDS:-$((20000 * (WARMUP + DURATION + 1)))}
# raw-kafka reads it (its default is Sluice's, 2).
[ -n "${LINGER_MS:-}" ] && export RAW_LINGER_MS=$LINGER_MS

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT_BASE=${PORT_BASE:-18090}
SLUICE_PORT=$PORT_BASE
SLUICE_ADMIN=$((PORT_BASE + 1900))
BENTHOS_PORT=$((PORT_BASE + 2))   # Benthos' http_server input
BENTHOS_API=$((PORT_BASE + 3))    # Benthos' own HTTP API (/ready, /metrics)
KAFKA=${KAFKA:-127.0.0.1:9092}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
for p in $SLUICE_PORT $SLUICE_ADMIN $BENTHOS_PORT $BENTHOS_API; do
    case $p in 4317|5671|5672|6379|9092|9093|9094|9095|9324)
        echo "port $p is reserved for the brokers and the test services; pick another PORT_BASE" >&2; exit 2 ;;
    esac
done

# log, apt_install and the /proc measuring helpers shared with bench/run.sh.
. "$ROOT/bench/lib/common.sh"
# How Benthos, PerfTest and kafka-producer-perf-test are obtained (benthos_bin, perftest_cp, kafka_tools_cp).
. "$ROOT/bench/lib/brokers_peers.sh"

# ---------------------------------------------------------------------------------------------- tools
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt_install wrk
fi

log "brokers: integration/brokers.sh up"
"$ROOT/integration/brokers.sh" up >&2

log "cargo build --release of bench/clients (standalone crate; waits for its cargo lock if needed)"
cargo build --release --quiet --manifest-path "$ROOT/bench/clients/Cargo.toml"
if [ -z "${SLUICE_BIN:-}" ]; then
    log "cargo build --release (waits for the cargo lock if someone else is building)"
    (cd "$ROOT" && cargo build --release --quiet)
    SLUICE_BIN=$ROOT/target/release/sluice
fi
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN" >&2; exit 1; }

peer_failed() {   # $1 = peer, $2 = its flag
    echo "bench/brokers.sh: could not obtain $1 (see above); pass $2 to run without it" >&2
    exit 1
}
if [ "$PEER_BENTHOS" = 1 ]; then
    if [ -n "${BENTHOS_BIN:-}" ]; then [ -x "$BENTHOS_BIN" ] || { echo "no Benthos binary at $BENTHOS_BIN" >&2; exit 1; }
    else BENTHOS_BIN=$(benthos_bin) || peer_failed "Benthos v$BENTHOS_VERSION" --no-benthos; fi
fi
if [ "$PEER_PERFTEST" = 1 ]; then
    PERFTEST_CP=$(perftest_cp) || peer_failed "RabbitMQ PerfTest $PERFTEST_VERSION" --no-perftest
fi
if [ "$PEER_KAFKA_PERF" = 1 ]; then
    KAFKA_TOOLS_CP=$(kafka_tools_cp) || peer_failed "kafka-producer-perf-test (kafka-tools $KAFKA_VERSION)" --no-kafka-perf
fi

for p in $SLUICE_PORT $SLUICE_ADMIN $([ "$PEER_BENTHOS" = 1 ] && echo "$BENTHOS_PORT $BENTHOS_API"); do
    if ss -ltnH "sport = :$p" | grep -q .; then
        echo "port $p is already in use; set PORT_BASE to a free range" >&2; exit 1
    fi
done

# ---------------------------------------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-brokers-bench.XXXXXX")
PIDS=()
TOPICS=()
QUEUES=()
cleanup() {
    local pid t q
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    for t in "${TOPICS[@]}"; do "$RAW_KAFKA" delete-topic --bootstrap "$KAFKA" --topic "$t" >/dev/null 2>&1 || true; done
    for q in "${QUEUES[@]}"; do "$RAW_AMQP" delete --url "$AMQP_URL" --queue "$q" >/dev/null 2>&1 || true; done
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Private copies, so that a concurrent `cargo build` cannot swap the binaries during the run.
cp "$SLUICE_BIN" "$TMP/sluice"; SLUICE_BIN=$TMP/sluice
if [ -n "${SLUICE_BASE_BIN:-}" ]; then cp "$SLUICE_BASE_BIN" "$TMP/sluice-base"; SLUICE_BASE_BIN=$TMP/sluice-base; fi
cp "$ROOT/bench/clients/target/release/raw-kafka" "$ROOT/bench/clients/target/release/raw-amqp" "$TMP/"
RAW_KAFKA=$TMP/raw-kafka
RAW_AMQP=$TMP/raw-amqp
if [ "$PEER_BENTHOS" = 1 ]; then
    cp "$BENTHOS_BIN" "$TMP/benthos"; BENTHOS_BIN=$TMP/benthos
    cp "$ROOT/bench/peers/benthos/kafka.yaml" "$ROOT/bench/peers/benthos/amqp.yaml" "$TMP/"
fi

cat > "$TMP/post.lua" <<EOF
wrk.method = "POST"
wrk.body = string.rep("x", $SIZE)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

# ---------------------------------------------------------------------------------------------- measuring
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
listener_pid() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
broker_pid() {   # $1 = kafka|amqp; looked up per run (a test elsewhere may have restarted the broker)
    if [ "$1" = kafka ]; then listener_pid "${KAFKA##*:}" || true; else listener_pid "$AMQP_PORT" || true; fi
}
AMQP_PORT=${AMQP_URL#*://}; AMQP_PORT=${AMQP_PORT##*@}; AMQP_PORT=${AMQP_PORT%%/*}
[[ $AMQP_PORT == *:* ]] && AMQP_PORT=${AMQP_PORT##*:} || AMQP_PORT=5672
KAFKA_PID=$(broker_pid kafka)
RABBIT_PID=$(broker_pid amqp)
proc_ticks() {   # utime+stime of a process (all threads); 0 when unknown
    local f
    [ -n "${1:-}" ] && f=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null) && { echo "$f"; return; }
    echo 0
}
machine_busy() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
us_per() { [ "$1" = - ] && { echo -; return; }; awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN {if (n > 0) printf "%.1f", 1e6 * t / hz / n; else print "-"}'; }

declare -A MPS SUT BROKER LOADGEN OTHER ERRS SANITY
RUN=0

new_dest() {   # $1 = kafka|amqp; sets DEST (a fresh topic or queue)
    RUN=$((RUN + 1))
    DEST="sluice-bench-$$-$RUN"
    if [ "$1" = kafka ]; then
        "$RAW_KAFKA" create-topic --bootstrap "$KAFKA" --topic "$DEST" --partitions 3
        TOPICS+=("$DEST")
    else
        "$RAW_AMQP" declare --url "$AMQP_URL" --queue "$DEST"
        QUEUES+=("$DEST")
    fi
}
count_dest() {   # $1 = kafka|amqp
    if [ "$1" = kafka ]; then "$RAW_KAFKA" count --bootstrap "$KAFKA" --topic "$DEST"
    else "$RAW_AMQP" count --url "$AMQP_URL" --queue "$DEST"; fi
}
drop_dest() {
    if [ "$1" = kafka ]; then
        "$RAW_KAFKA" delete-topic --bootstrap "$KAFKA" --topic "$DEST"; unset 'TOPICS[-1]'
    else
        "$RAW_AMQP" delete --url "$AMQP_URL" --queue "$DEST"; unset 'QUEUES[-1]'
    fi
}
record() {   # name msgs/s sut_ticks broker_ticks loadgen_ticks other_ticks msgs errors sanity [window seconds]
    local name=$1 window=${10:-$DURATION}
    MPS[$name]+="$2 "
    SUT[$name]+="$(us_per "$3" "$7") "
    BROKER[$name]+="$(us_per "$4" "$7") "
    LOADGEN[$name]+="$(us_per "$5" "$7") "
    OTHER[$name]+="$(awk -v o="$6" -v hz="$CLK_TCK" -v s="$window" -v n="$NCPU" 'BEGIN {if (o < 0) o = 0; printf "%.0f", 100 * o / hz / s / n}') "
    ERRS[$name]=$(( ${ERRS[$name]:-0} + $8 ))
    SANITY[$name]+="$9 "
    log "rep $REP/$REPS  $(printf '%-16s' "$name") $(printf '%8.0f' "$2") msgs/s  CPU µs/msg: $(tail_word "${SUT[$name]}") (broker $(tail_word "${BROKER[$name]}"), load gen $(tail_word "${LOADGEN[$name]}"))  other load $(tail_word "${OTHER[$name]}")%  errors $8  count $9"
}
tail_word() { local w=($1); echo "${w[-1]}"; }

wrk_run() {   # $1 = seconds, $2 = URL; prints wrk's output followed by "CHILD_TICKS n" (wrk's CPU time)
    ( wrk -t1 -c"$CONNS" -d"${1}s" -s "$TMP/post.lua" "$2" 2>&1
      # cutime + cstime of this subshell: the CPU time of wrk, its only waited-for child.
      awk '{sub(/^.*\) /, ""); print "CHILD_TICKS", $14 + $15}' "/proc/$BASHPID/stat" )
}
wrk_ok() {   # 2xx responses in wrk's output
    awk '/requests in/ {r = $1} /Non-2xx/ {n = $NF} END {print r - n}' <<<"$1"
}
wrk_errs() {
    awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$1"
}

write_sluice_toml() {   # $1 = file, $2 = kafka|amqp
    {
        cat <<EOF
[server]
listen = "127.0.0.1:$SLUICE_PORT"
admin_listen = "127.0.0.1:$SLUICE_ADMIN"

[telemetry]
access_log = false

EOF
        if [ "$2" = kafka ]; then
            cat <<EOF
[brokers.events]
kind = "kafka"
bootstrap = "$KAFKA"
$([ -n "${LINGER_MS:-}" ] && echo "options = { \"linger.ms\" = $LINGER_MS }")

[[routes]]
name = "k"
match = { path = "/k", methods = ["POST"] }
publish = { broker = "events", topic = "$DEST" }
EOF
        else
            cat <<EOF
[brokers.rabbit]
kind = "amqp"
url = "$AMQP_URL"

[[routes]]
name = "a"
match = { path = "/a", methods = ["POST"] }
publish = { broker = "rabbit", exchange = "", routing_key = "$DEST" }
EOF
        fi
    } > "$1"
}

# The wrk-driven systems: Sluice or Benthos, started fresh per run on a fresh topic/queue.
run_http() {   # $1 = name, $2 = kafka|amqp, $3 = sluice|benthos, $4 = Sluice worker threads ("" = default)
    local name=$1 kind=$2 impl=$3 threads=$4 out warm t0 t1 k0 k1 m0 m1 ok errs rps wrk_cpu broker_pid count acked pid
    local path=/k ready url
    [ "$kind" = amqp ] && path=/a
    new_dest "$kind"
    if [ "$impl" = sluice ]; then
        write_sluice_toml "$TMP/$name.toml" "$kind"
        local bin=$SLUICE_BIN
        [[ $name == sluice-base-* ]] && bin=$SLUICE_BASE_BIN
        if [ -n "$threads" ]; then
            TOKIO_WORKER_THREADS=$threads "$bin" run --config "$TMP/$name.toml" >>"$TMP/$name.log" 2>&1 &
        else
            env -u TOKIO_WORKER_THREADS "$bin" run --config "$TMP/$name.toml" >>"$TMP/$name.log" 2>&1 &
        fi
        ready=http://127.0.0.1:$SLUICE_ADMIN/readyz
        url=http://127.0.0.1:$SLUICE_PORT$path
    else
        # Benthos' config reads these through its own ${VAR} interpolation. GOMAXPROCS = Sluice's default
        # worker count (one per CPU).
        GOMAXPROCS=$NCPU BENCH_LISTEN=127.0.0.1:$BENTHOS_PORT BENCH_HTTP_API=127.0.0.1:$BENTHOS_API \
            BENCH_KAFKA=$KAFKA BENCH_TOPIC=$DEST BENCH_AMQP_URL=$AMQP_URL BENCH_QUEUE=$DEST BENCH_CONNS=$CONNS \
            "$BENTHOS_BIN" -c "$TMP/$kind.yaml" >>"$TMP/$name.log" 2>&1 &
        ready=http://127.0.0.1:$BENTHOS_API/ready
        url=http://127.0.0.1:$BENTHOS_PORT$path
    fi
    pid=$!; PIDS+=("$pid")
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$ready" 2>/dev/null)" = 200 ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$ready" 2>/dev/null)" = 200 ] ||
        { echo "$name did not get ready ($ready):" >&2; tail -20 "$TMP/$name.log" >&2; exit 1; }
    warm=$(wrk_run "$WARMUP" "$url")
    broker_pid=$(broker_pid "$kind")
    t0=$(proc_ticks "$pid"); k0=$(proc_ticks "$broker_pid"); m0=$(machine_busy)
    out=$(wrk_run "$DURATION" "$url")
    t1=$(proc_ticks "$pid"); k1=$(proc_ticks "$broker_pid"); m1=$(machine_busy)
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    [ -n "$rps" ] || { echo "wrk failed for $name:" >&2; echo "$out" >&2; tail -20 "$TMP/$name.log" >&2; exit 1; }
    ok=$(wrk_ok "$out"); errs=$(wrk_errs "$out")
    wrk_cpu=$(awk '/^CHILD_TICKS/ {print $2}' <<<"$out")
    # Stop it (SIGTERM: drain, flush the producer), then compare the topic/queue with the 2xx responses.
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    PIDS=("${PIDS[@]/$pid}")
    count=$(count_dest "$kind")
    acked=$(( $(wrk_ok "$warm") + ok ))
    drop_dest "$kind"
    # 2xx rate: the measured window's 2xx responses per second (wrk's requests/s counts every response).
    rps=$(awk -v ok="$ok" -v s="$DURATION" 'BEGIN {printf "%.1f", ok / s}')
    record "$name" "$rps" $((t1 - t0)) $((k1 - k0)) "$wrk_cpu" $((m1 - m0 - (t1 - t0) - (k1 - k0) - wrk_cpu)) "$ok" "$errs" \
        "$count/$acked"
}

run_raw() {   # $1 = name, $2 = kafka|amqp
    local name=$1 kind=$2 out pid k0 k1 m0 m1 count broker_pid t
    new_dest "$kind"
    local cmd=("$RAW_KAFKA" run --bootstrap "$KAFKA" --topic "$DEST")
    [ "$kind" = amqp ] && cmd=("$RAW_AMQP" run --url "$AMQP_URL" --queue "$DEST")
    broker_pid=$(broker_pid "$kind")
    "${cmd[@]}" --duration "$DURATION" --warmup "$WARMUP" --concurrency "$CONNS" --size "$SIZE" >"$TMP/$name.out" 2>&1 &
    pid=$!; PIDS+=("$pid")
    # The client reports its own msgs/s and CPU over its measured window; the broker's CPU and the machine's
    # load are sampled here over about the same window (after the client's warm-up).
    sleep "$WARMUP"; sleep 0.1
    k0=$(proc_ticks "$broker_pid"); m0=$(machine_busy)
    sleep "$DURATION"
    k1=$(proc_ticks "$broker_pid"); m1=$(machine_busy)
    wait "$pid" || { echo "$name failed:" >&2; cat "$TMP/$name.out" >&2; exit 1; }
    PIDS=("${PIDS[@]/$pid}")
    out=$(grep "^$name:" "$TMP/$name.out")
    field() { grep -o " $1=[^ ]*" <<<"$out" | cut -d= -f2; }
    count=$(count_dest "$kind")
    drop_dest "$kind"
    t=$(awk -v c="$(field cpu_s)" -v hz="$CLK_TCK" 'BEGIN {printf "%d", c * hz}')
    record "$name" "$(field msgs_per_s)" "$t" $((k1 - k0)) - $((m1 - m0 - t - (k1 - k0))) "$(field msgs)" "$(field errors)" \
        "$count/$(field total_ok)"
}

wait_for_line() {   # $1 = pid, $2 = file, $3 = regex: waits (60 s at most) until the process printed such a line
    for _ in $(seq 600); do
        grep -qE "$3" "$2" && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# RabbitMQ PerfTest: one producer (-x 1 -y 0) with $CONNS unconfirmed publishes at most (--confirm), persistent and
# mandatory, to the run's queue (declared above, bound by PerfTest to amq.direct with the queue's name as key:
# -p = predeclared, so it neither redeclares nor deletes it). It runs WARMUP + DURATION + 1 s (-z) from its own
# start and prints a line per second; msgs/s = the mean confirmed rate of the lines of the measured window
# (WARMUP < its time <= WARMUP + DURATION). The JVM's CPU and the broker's are sampled over the same window,
# counted from the moment it started its producer (a JVM can take seconds to start on a busy machine).
run_perftest() {   # $1 = name
    local name=$1 pid k0 k1 m0 m1 t0 t1 broker_pid rate count confirmed errs
    new_dest amqp
    broker_pid=$(broker_pid amqp)
    java -Xmx512m -cp "$PERFTEST_CP" com.rabbitmq.perf.PerfTest -h "$AMQP_URL" -x 1 -y 0 -u "$DEST" -p \
        -e amq.direct -k "$DEST" --confirm "$CONNS" -f persistent -f mandatory -s "$SIZE" \
        -z $((WARMUP + DURATION + 1)) -i 1 >"$TMP/$name.out" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_for_line "$pid" "$TMP/$name.out" 'starting producer #0, channel' ||
        { echo "$name did not start:" >&2; tail -30 "$TMP/$name.out" >&2; exit 1; }
    sleep "$WARMUP"
    t0=$(proc_ticks "$pid"); k0=$(proc_ticks "$broker_pid"); m0=$(machine_busy)
    sleep "$DURATION"
    t1=$(proc_ticks "$pid"); k1=$(proc_ticks "$broker_pid"); m1=$(machine_busy)
    wait "$pid" || { echo "$name failed:" >&2; tail -30 "$TMP/$name.out" >&2; exit 1; }
    PIDS=("${PIDS[@]/$pid}")
    # "id: ..., time 3.001 s, sent: 9000 msg/s, returned: 0 msg/s, confirmed: 8990 msg/s, nacked: 0 msg/s, ..."
    rate=$(awk -v w="$WARMUP" -v d="$DURATION" '/, time [0-9.]+ s, sent:/ {
            for (i = 1; i <= NF; i++) { if ($i == "time") t = $(i + 1); if ($i == "confirmed:") c = $(i + 1) }
            if (t > w && t <= w + d + 0.5) { sum += c; n++ } }
        END {if (n) printf "%.1f", sum / n}' "$TMP/$name.out")
    confirmed=$(awk '/, time [0-9.]+ s, sent:/ {
            for (i = 1; i <= NF; i++) { if ($i == "time") t = $(i + 1); if ($i == "confirmed:") c = $(i + 1) }
            sum += c * (t - prev); prev = t } END {printf "%.0f", sum}' "$TMP/$name.out")
    errs=$(awk '/, time [0-9.]+ s, sent:/ {for (i = 1; i <= NF; i++) if ($i == "nacked:" || $i == "returned:") n += $(i + 1)}
        END {print n + 0}' "$TMP/$name.out")
    [ -n "$rate" ] || { echo "$name printed no rates:" >&2; tail -30 "$TMP/$name.out" >&2; exit 1; }
    count=$(count_dest amqp)
    drop_dest amqp
    record "$name" "$rate" $((t1 - t0)) $((k1 - k0)) - $((m1 - m0 - (t1 - t0) - (k1 - k0))) \
        "$(awk -v r="$rate" -v d="$DURATION" 'BEGIN {printf "%.0f", r * d}')" "$errs" "$count/~$confirmed"
}

# kafka-producer-perf-test (ProducerPerformance): KAFKA_PERF_RECORDS records of SIZE bytes, as fast as it goes
# (--throughput -1), acks=all, idempotent, linger.ms=2, on the run's 3-partition topic, a line per second
# (--reporting-interval 1000). msgs/s = its own final records/sec (its whole run). CPU µs/msg: the JVM's CPU from
# WARMUP s after its first line to DURATION s later or its exit, whichever comes first (sampled every 0.25 s), over
# the records of the per-second lines printed in between; "-" when the run was too short for that.
run_kafka_perf() {   # $1 = name
    local name=$1 out pid broker_pid rate sent count t0 t1 k0 k1 m0 m1 w0 w1 l0 l1 t msgs end
    new_dest kafka
    broker_pid=$(broker_pid kafka)
    out=$TMP/$name.out
    java -Xmx512m -cp "$KAFKA_TOOLS_CP" org.apache.kafka.tools.ProducerPerformance --topic "$DEST" \
        --num-records "$KAFKA_PERF_RECORDS" --throughput -1 --record-size "$SIZE" --reporting-interval 1000 \
        --producer-props bootstrap.servers="$KAFKA" acks=all enable.idempotence=true linger.ms=2 \
        client.id=sluice-bench-perf >"$out" 2>&1 &
    pid=$!; PIDS+=("$pid")
    interval_lines() { grep -c 'max latency\.$' "$out" || true; }
    wait_for_line "$pid" "$out" 'records/sec' || true
    sleep "$WARMUP"
    t0=$(proc_ticks "$pid"); k0=$(proc_ticks "$broker_pid"); m0=$(machine_busy); w0=$EPOCHREALTIME; l0=$(interval_lines)
    t1=$t0 k1=$k0 m1=$m0 w1=$w0 l1=$l0
    end=$(awk -v w="$w0" -v d="$DURATION" 'BEGIN {printf "%.6f", w + d}')
    while kill -0 "$pid" 2>/dev/null && awk -v n="$EPOCHREALTIME" -v e="$end" 'BEGIN {exit !(n < e)}'; do
        sleep 0.25
        t=$(proc_ticks "$pid")
        [ "$t" -ge "$t1" ] 2>/dev/null && kill -0 "$pid" 2>/dev/null || continue
        t1=$t; k1=$(proc_ticks "$broker_pid"); m1=$(machine_busy); w1=$EPOCHREALTIME; l1=$(interval_lines)
    done
    wait "$pid" || { echo "$name failed:" >&2; tail -30 "$out" >&2; exit 1; }
    PIDS=("${PIDS[@]/$pid}")
    # the last line: "N records sent, R records/sec (M MB/sec), ... avg latency, ..., P ms 50th, ..."
    rate=$(awk '/records sent, .* records\/sec .*50th/ {print $4}' "$out")
    sent=$(awk '/records sent, .* records\/sec .*50th/ {print $1}' "$out")
    [ -n "$rate" ] || { echo "$name printed no summary:" >&2; tail -30 "$out" >&2; exit 1; }
    msgs=$(awk -v a="$l0" -v b="$l1" '/max latency\.$/ {n++; if (n > a && n <= b) s += $1} END {print s + 0}' "$out")
    count=$(count_dest kafka)
    drop_dest kafka
    [ "$msgs" -gt 0 ] || t1=$t0   # too short a run for a window: no CPU figure
    record "$name" "$rate" "$([ "$msgs" -gt 0 ] && echo $((t1 - t0)) || echo -)" "$([ "$msgs" -gt 0 ] && echo $((k1 - k0)) || echo -)" - \
        $((m1 - m0 - (t1 - t0) - (k1 - k0))) "$msgs" $((KAFKA_PERF_RECORDS - sent)) "$count/$sent" \
        "$(awk -v a="$w0" -v b="$w1" 'BEGIN {d = b - a; printf "%.3f", (d > 0.5 ? d : 1)}')"
}

run_system() {
    case $1 in
        sluice-kafka) run_http "$1" kafka sluice "" ;;
        sluice-amqp) run_http "$1" amqp sluice "" ;;
        sluice-kafka-1t) run_http "$1" kafka sluice 1 ;;
        sluice-amqp-1t) run_http "$1" amqp sluice 1 ;;
        sluice-base-kafka) run_http "$1" kafka sluice "" ;;
        sluice-base-amqp) run_http "$1" amqp sluice "" ;;
        benthos-kafka) run_http "$1" kafka benthos "" ;;
        benthos-amqp) run_http "$1" amqp benthos "" ;;
        raw-kafka) run_raw "$1" kafka ;;
        raw-amqp) run_raw "$1" amqp ;;
        perftest-amqp) run_perftest "$1" ;;
        kafka-perf) run_kafka_perf "$1" ;;
    esac
}

median() { tr ' ' '\n' | grep -v '^-\?$' | sort -g | awk '{a[NR] = $1} END {if (!NR) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
minmax() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f–%.0f", lo, hi}'; }

# ---------------------------------------------------------------------------------------------- run
GROUPS_K=(sluice-kafka raw-kafka)
GROUPS_A=(sluice-amqp raw-amqp)
[ "$PEER_BENTHOS" = 1 ] && GROUPS_K+=(benthos-kafka) && GROUPS_A+=(benthos-amqp)
[ "$PEER_KAFKA_PERF" = 1 ] && GROUPS_K+=(kafka-perf)
[ "$PEER_PERFTEST" = 1 ] && GROUPS_A+=(perftest-amqp)
[ "$ONE_THREAD" = 1 ] && GROUPS_K+=(sluice-kafka-1t) && GROUPS_A+=(sluice-amqp-1t)
[ -n "${SLUICE_BASE_BIN:-}" ] && GROUPS_K+=(sluice-base-kafka) && GROUPS_A+=(sluice-base-amqp)
case "${ONLY:-}" in
    kafka) GROUPS_A=() ;;
    amqp) GROUPS_K=() ;;
    "") ;;
    *) echo "ONLY must be kafka or amqp" >&2; exit 2 ;;
esac
SYSTEMS=("${GROUPS_K[@]}" "${GROUPS_A[@]}")

log "machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); kafka pid ${KAFKA_PID:-?}, rabbitmq pid ${RABBIT_PID:-?}"
log "load: wrk -t1 -c$CONNS POST ${SIZE}-byte bodies (keep-alive) / raw clients with --concurrency $CONNS; ${REPS} x ${DURATION}s after ${WARMUP}s warm-up each"
log "peers: $([ "$PEER_BENTHOS" = 1 ] && echo "Benthos v$BENTHOS_VERSION (GOMAXPROCS=$NCPU); ")$([ "$PEER_PERFTEST" = 1 ] && echo "RabbitMQ PerfTest $PERFTEST_VERSION; ")$([ "$PEER_KAFKA_PERF" = 1 ] && echo "kafka-producer-perf-test $KAFKA_VERSION ($KAFKA_PERF_RECORDS records); ")systems: ${SYSTEMS[*]}"
for REP in $(seq "$REPS"); do
    # Interleaved; within each broker the order rotates per repetition (A B C, B C A, ...).
    for group in K A; do
        declare -n G="GROUPS_$group"
        n=${#G[@]}
        for k in $(seq 0 $((n - 1))); do
            run_system "${G[$(( (REP - 1 + k) % n ))]}"
        done
        unset -n G
    done
done

# ---------------------------------------------------------------------------------------------- report
declare -A MED MEDUS
per_cpu_s() { awk -v u="$1" 'BEGIN {if (u == "-" || u + 0 == 0) print "-"; else printf "%.0f", 1e6 / u}'; }
echo
echo "| system | median msgs/s | min–max msgs/s | CPU µs/msg, process under test (median) | msgs per CPU-s of that process | broker CPU µs/msg | wrk CPU µs/msg | other load % of machine (median) | errors | in topic/queue vs acked (per run) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for name in "${SYSTEMS[@]}"; do
    MED[$name]=$(median <<<"${MPS[$name]}" || true)   # (grep in median fails on an all-"-" column)
    MEDUS[$name]=$(median <<<"${SUT[$name]}" || true)
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "${MED[$name]}" "$(minmax <<<"${MPS[$name]}")" \
        "${MEDUS[$name]}" "$(per_cpu_s "${MEDUS[$name]}")" "$(median <<<"${BROKER[$name]}")" "$(median <<<"${LOADGEN[$name]}")" \
        "$(median <<<"${OTHER[$name]}")" "${ERRS[$name]}" "${SANITY[$name]% }"
done
echo
# label, sluice system, other system, throughput target, msgs-per-CPU-s target ("" = none). The CPU figure is
# (other's µs/msg) / (Sluice's µs/msg) = Sluice's msgs per CPU-second / the other's.
ratio() {
    [ -n "${MED[$2]:-}" ] && [ -n "${MED[$3]:-}" ] || return 0
    awk -v a="${MED[$2]}" -v b="${MED[$3]}" -v ua="${MEDUS[$2]}" -v ub="${MEDUS[$3]}" -v l="$1" -v t="$4" -v c="$5" 'BEGIN {
        th = (b > 0) ? sprintf("%.3f", a / b) : "-"
        ef = (ua + 0 > 0 && ub + 0 > 0) ? sprintf("%.3f", ub / ua) : "-"
        printf "%-29s throughput %s%s   msgs per CPU-s (sluice/other) %s%s\n", l, th, (t != "" ? " (target >= " t ")" : ""),
            ef, (c != "" ? " (target >= " c ")" : "") }'
}
ratio "sluice-kafka/raw-kafka:" sluice-kafka raw-kafka 0.5 ""
[ "$ONE_THREAD" = 1 ] && ratio "sluice-kafka-1t/raw-kafka:" sluice-kafka-1t raw-kafka 0.5 ""
ratio "sluice-kafka/benthos-kafka:" sluice-kafka benthos-kafka "" 2
ratio "sluice-kafka/kafka-perf:" sluice-kafka kafka-perf "" ""
ratio "sluice-amqp/raw-amqp:" sluice-amqp raw-amqp 0.6 ""
[ "$ONE_THREAD" = 1 ] && ratio "sluice-amqp-1t/raw-amqp:" sluice-amqp-1t raw-amqp 0.6 ""
ratio "sluice-amqp/benthos-amqp:" sluice-amqp benthos-amqp "" ""
ratio "sluice-amqp/perftest-amqp:" sluice-amqp perftest-amqp "" ""
ratio "sluice-kafka/sluice-base-kafka:" sluice-kafka sluice-base-kafka "" ""
ratio "sluice-amqp/sluice-base-amqp:" sluice-amqp sluice-base-amqp "" ""
busy=$(median <<<"${OTHER[*]}")
if awk -v b="$busy" 'BEGIN {exit !(b > 10)}'; then
    echo
    echo "WARNING: other processes used a median ${busy}% of the machine during the runs: msgs/s are skewed by"
    echo "contention; the CPU µs/msg figures are the steadier comparison."
fi
echo
echo "($REPS repetitions x ${DURATION}s after ${WARMUP}s warm-up, concurrency $CONNS, ${SIZE}-byte bodies; \"in topic/queue vs acked\": messages"
echo " found after the run / 2xx responses (Sluice 202, Benthos 200; warm-up included) or confirmed sends (raw, kafka-perf);"
echo " perftest-amqp: / its confirmed count summed from its per-second rates (~). kafka-perf: $KAFKA_PERF_RECORDS records, msgs/s over"
echo " its whole run, CPU over the window after its warm-up; $(date -u '+%Y-%m-%d %H:%M UTC'))"

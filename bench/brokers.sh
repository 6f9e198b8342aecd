#!/usr/bin/env bash
# Sluice's async path: HTTP→Kafka and HTTP→RabbitMQ (confirmed) vs raw producers with the same settings.
#
#   bench/brokers.sh            5 interleaved repetitions of 10 s per system (about 10 minutes plus builds)
#   bench/brokers.sh --quick    1 repetition of 3 s per system (smoke check)
#
# Systems (each run gets a fresh 3-partition topic or a fresh durable queue, deleted afterwards):
#   sluice-kafka      wrk -t1 -c$CONNS POSTs 1 KiB bodies to a Sluice publish route (Kafka, ack = "confirm":
#                     202 after the delivery report; acks=all, idempotent producer, linger.ms=2)
#   raw-kafka         bench/clients raw-kafka: rdkafka FutureProducer with Sluice's settings, $CONNS concurrent
#                     sends each awaiting its delivery report
#   sluice-amqp       the same wrk load on a Sluice route publishing to RabbitMQ (persistent, mandatory, publisher
#                     confirms on Sluice's channel pool, default exchange → the queue)
#   raw-amqp          bench/clients raw-amqp: lapin, $CONNS confirm-mode channels, one publish in flight each
#   sluice-kafka-1t   sluice-kafka with TOKIO_WORKER_THREADS=1 (and sluice-amqp-1t); ONE_THREAD=0 skips them
# Sluice otherwise runs with its default multi-thread runtime (one worker per CPU). Nothing is pinned: the
# brokers need the same 2 CPUs.
#
# Per run it prints msgs/s (Sluice: 202 responses/s; raw: confirmed sends/s), and from /proc the CPU time per
# message of the process under test (Sluice: all its threads, librdkafka's included; raw: the client), of the
# broker (the process listening on 9092 / 5672), of wrk, and the share of the machine that other processes used
# meanwhile. It also checks that the number of messages in the topic/queue matches the acknowledged count.
#
# Environment knobs: REPS, DURATION, WARMUP (seconds), CONNS, SIZE (body bytes), ONE_THREAD (1/0),
# PORT_BASE (default 18090: uses PORT_BASE and PORT_BASE+1900), KAFKA (default 127.0.0.1:9092),
# AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f), SLUICE_BIN (skip the build), KEEP_TMP=1.
#
# Everything binds on 127.0.0.1; everything started here is stopped on exit, topics/queues are deleted.
set -euo pipefail

REPS=${REPS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
SIZE=${SIZE:-1024}
ONE_THREAD=${ONE_THREAD:-1}
for arg in "$@"; do
    case "$arg" in
        --quick) REPS=1; DURATION=3; WARMUP=1 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (use --quick)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT_BASE=${PORT_BASE:-18090}
SLUICE_PORT=$PORT_BASE
SLUICE_ADMIN=$((PORT_BASE + 1900))
KAFKA=${KAFKA:-127.0.0.1:9092}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
for p in $SLUICE_PORT $SLUICE_ADMIN; do
    case $p in 5672|9092|9093) echo "port $p is reserved for the brokers; pick another PORT_BASE" >&2; exit 2 ;; esac
done

# log, apt_install and the /proc measuring helpers shared with bench/run.sh.
. "$ROOT/bench/lib/common.sh"

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

for p in $SLUICE_PORT $SLUICE_ADMIN; do
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
cp "$ROOT/bench/clients/target/release/raw-kafka" "$ROOT/bench/clients/target/release/raw-amqp" "$TMP/"
RAW_KAFKA=$TMP/raw-kafka
RAW_AMQP=$TMP/raw-amqp

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
record() {   # name msgs/s sut_ticks broker_ticks loadgen_ticks other_ticks msgs errors sanity
    local name=$1
    MPS[$name]+="$2 "
    SUT[$name]+="$(us_per "$3" "$7") "
    BROKER[$name]+="$(us_per "$4" "$7") "
    LOADGEN[$name]+="$(us_per "$5" "$7") "
    OTHER[$name]+="$(awk -v o="$6" -v hz="$CLK_TCK" -v s="$DURATION" -v n="$NCPU" 'BEGIN {if (o < 0) o = 0; printf "%.0f", 100 * o / hz / s / n}') "
    ERRS[$name]=$(( ${ERRS[$name]:-0} + $8 ))
    SANITY[$name]+="$9 "
    log "rep $REP/$REPS  $(printf '%-16s' "$name") $(printf '%8.0f' "$2") msgs/s  CPU µs/msg: $(tail_word "${SUT[$name]}") (broker $(tail_word "${BROKER[$name]}"), load gen $(tail_word "${LOADGEN[$name]}"))  other load $(tail_word "${OTHER[$name]}")%  errors $8  count $9"
}
tail_word() { local w=($1); echo "${w[-1]}"; }

wrk_run() {   # $1 = seconds, $2 = path; prints wrk's output followed by "CHILD_TICKS n" (wrk's CPU time)
    ( wrk -t1 -c"$CONNS" -d"${1}s" -s "$TMP/post.lua" "http://127.0.0.1:$SLUICE_PORT$2" 2>&1
      # cutime + cstime of this subshell: the CPU time of wrk, its only waited-for child.
      awk '{sub(/^.*\) /, ""); print "CHILD_TICKS", $14 + $15}' "/proc/$BASHPID/stat" )
}
wrk_ok() {   # 2xx responses in wrk's output
    awk '/requests in/ {r = $1} /Non-2xx/ {n = $NF} END {print r - n}' <<<"$1"
}
wrk_errs() {
    awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$1"
}

run_sluice() {   # $1 = name, $2 = kafka|amqp, $3 = worker threads ("" = default)
    local name=$1 kind=$2 threads=$3 out warm t0 t1 k0 k1 m0 m1 ok errs rps wrk_cpu broker_pid count acked pid
    new_dest "$kind"
    {
        cat <<EOF
[server]
listen = "127.0.0.1:$SLUICE_PORT"
admin_listen = "127.0.0.1:$SLUICE_ADMIN"

[telemetry]
access_log = false

EOF
        if [ "$kind" = kafka ]; then
            cat <<EOF
[brokers.events]
kind = "kafka"
bootstrap = "$KAFKA"

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
    } > "$TMP/$name.toml"
    if [ -n "$threads" ]; then
        TOKIO_WORKER_THREADS=$threads "$SLUICE_BIN" run --config "$TMP/$name.toml" >>"$TMP/$name.log" 2>&1 &
    else
        env -u TOKIO_WORKER_THREADS "$SLUICE_BIN" run --config "$TMP/$name.toml" >>"$TMP/$name.log" 2>&1 &
    fi
    pid=$!; PIDS+=("$pid")
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SLUICE_ADMIN/readyz" 2>/dev/null)" = 200 ] && break
        sleep 0.1
    done
    local path=/k; [ "$kind" = amqp ] && path=/a
    warm=$(wrk_run "$WARMUP" "$path")
    broker_pid=$(broker_pid "$kind")
    t0=$(proc_ticks "$pid"); k0=$(proc_ticks "$broker_pid"); m0=$(machine_busy)
    out=$(wrk_run "$DURATION" "$path")
    t1=$(proc_ticks "$pid"); k1=$(proc_ticks "$broker_pid"); m1=$(machine_busy)
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    [ -n "$rps" ] || { echo "wrk failed for $name:" >&2; echo "$out" >&2; tail -20 "$TMP/$name.log" >&2; exit 1; }
    ok=$(wrk_ok "$out"); errs=$(wrk_errs "$out")
    wrk_cpu=$(awk '/^CHILD_TICKS/ {print $2}' <<<"$out")
    # Stop Sluice (SIGTERM: drain, flush the producer), then compare the topic/queue with the 202s.
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    PIDS=("${PIDS[@]/$pid}")
    count=$(count_dest "$kind")
    acked=$(( $(wrk_ok "$warm") + ok ))
    drop_dest "$kind"
    # 202 rate: the measured window's 2xx responses per second (wrk's requests/s counts every response).
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

run_system() {
    case $1 in
        sluice-kafka) run_sluice "$1" kafka "" ;;
        sluice-amqp) run_sluice "$1" amqp "" ;;
        sluice-kafka-1t) run_sluice "$1" kafka 1 ;;
        sluice-amqp-1t) run_sluice "$1" amqp 1 ;;
        raw-kafka) run_raw "$1" kafka ;;
        raw-amqp) run_raw "$1" amqp ;;
    esac
}

median() { tr ' ' '\n' | grep -v '^-\?$' | sort -g | awk '{a[NR] = $1} END {if (!NR) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
minmax() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f–%.0f", lo, hi}'; }

# ---------------------------------------------------------------------------------------------- run
GROUPS_K=(sluice-kafka raw-kafka)
GROUPS_A=(sluice-amqp raw-amqp)
[ "$ONE_THREAD" = 1 ] && GROUPS_K+=(sluice-kafka-1t) && GROUPS_A+=(sluice-amqp-1t)
SYSTEMS=("${GROUPS_K[@]}" "${GROUPS_A[@]}")

log "machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); kafka pid ${KAFKA_PID:-?}, rabbitmq pid ${RABBIT_PID:-?}"
log "load: wrk -t1 -c$CONNS POST ${SIZE}-byte bodies (keep-alive) / raw clients with --concurrency $CONNS; ${REPS} x ${DURATION}s after ${WARMUP}s warm-up each"
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
echo
echo "| system | median msgs/s | min–max msgs/s | CPU µs/msg, process under test (median) | broker CPU µs/msg | wrk CPU µs/msg | other load % of machine (median) | errors | in topic/queue vs acked (per run) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
for name in "${SYSTEMS[@]}"; do
    MED[$name]=$(median <<<"${MPS[$name]}")
    MEDUS[$name]=$(median <<<"${SUT[$name]}")
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "${MED[$name]}" "$(minmax <<<"${MPS[$name]}")" \
        "${MEDUS[$name]}" "$(median <<<"${BROKER[$name]}")" "$(median <<<"${LOADGEN[$name]}")" \
        "$(median <<<"${OTHER[$name]}")" "${ERRS[$name]}" "${SANITY[$name]% }"
done
echo
ratio() {   # label, sluice, raw, target
    awk -v a="${MED[$2]}" -v b="${MED[$3]}" -v ua="${MEDUS[$2]}" -v ub="${MEDUS[$3]}" -v l="$1" -v t="$4" 'BEGIN {
        printf "%-28s throughput %.3f (target >= %s)   CPU efficiency (raw µs/msg / sluice µs/msg) %.3f\n", l, a / b, t, ub / ua }'
}
ratio "sluice-kafka/raw-kafka:" sluice-kafka raw-kafka 0.5
[ "$ONE_THREAD" = 1 ] && ratio "sluice-kafka-1t/raw-kafka:" sluice-kafka-1t raw-kafka 0.5
ratio "sluice-amqp/raw-amqp:" sluice-amqp raw-amqp 0.6
[ "$ONE_THREAD" = 1 ] && ratio "sluice-amqp-1t/raw-amqp:" sluice-amqp-1t raw-amqp 0.6
busy=$(median <<<"${OTHER[*]}")
if awk -v b="$busy" 'BEGIN {exit !(b > 10)}'; then
    echo
    echo "WARNING: other processes used a median ${busy}% of the machine during the runs: msgs/s are skewed by"
    echo "contention; the CPU µs/msg figures are the steadier comparison."
fi
echo
echo "($REPS repetitions x ${DURATION}s after ${WARMUP}s warm-up, concurrency $CONNS, ${SIZE}-byte bodies; \"in topic/queue vs acked\": messages"
echo " found after the run / 202s (Sluice, warm-up included) or confirmed sends (raw); $(date -u '+%Y-%m-%d %H:%M UTC'))"

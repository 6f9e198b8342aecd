#!/usr/bin/env bash
# Spooled publish throughput (fsync = "always" vs "interval:10ms") next to the confirmed path, HTTP→RabbitMQ.
#
#   bench/spool.sh            5 interleaved repetitions of 10 s per system (about 4 minutes plus the builds)
#   bench/spool.sh --quick    1 repetition of 3 s per system (smoke check)
#
# Systems (each run: a fresh Sluice process, and a fresh durable queue or a fresh spool directory, deleted after):
#   confirmed        wrk -t1 -c$CONNS POSTs $SIZE-byte bodies to a Sluice publish route to RabbitMQ (persistent,
#                    mandatory, publisher confirms; default exchange → the queue): 202 once the broker confirmed
#   spool-always     the same route, but the broker's URL points at a port where nothing listens, so every publish
#                    goes to [brokers.rabbit.spool] (max_bytes = "4GiB", fsync = "always") and is answered 202
#                    "spooled": true once an fsync covers it
#   spool-interval   the same with fsync = "interval:10ms" (at most one fsync per 10 ms)
# Sluice runs with its default multi-thread runtime; nothing is pinned (RabbitMQ needs the same 2 CPUs).
#
# Per run it prints the 202s/s, wrk's p50/p99 latency, from /proc the CPU time per message of Sluice (all its
# threads), RabbitMQ (the process listening on the AMQP port) and wrk, the share of the machine that other processes
# used meanwhile, and a check of what was stored against the 202s counted (wrk's, warm-up included, plus one probe
# request by curl first, which must get `"spooled": true` exactly on the spool runs): the queue's message count
# (confirmed), or the spool's depth from GET /readyz on the admin port, `spools.rabbit.messages` (spool-*).
# A request in flight when wrk stops is not counted by wrk but may still be stored, so up to 2 x CONNS more is normal.
# It also prints `df -h` of the disk the spool directories live on (the fsync cost is the disk's), and per run the
# flushes that disk completed per second and their mean time (/proc/diskstats: every process's, RabbitMQ's included).
#
# Environment knobs: REPS, DURATION, WARMUP (seconds), CONNS, SIZE (body bytes), PORT_BASE (default 18290: Sluice on
# PORT_BASE, the dead broker port PORT_BASE+1, admin PORT_BASE+1900), AMQP_URL (default
# amqp://guest:guest@127.0.0.1:5672/%2f), SPOOL_PARENT (where the spool directories are made; default the run's
# temporary directory under ${TMPDIR:-/tmp}), SLUICE_BIN (skip the build), KEEP_TMP=1.
#
# Everything binds on 127.0.0.1; everything started here is stopped on exit, queues and spools are deleted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# log, apt_install, cpu_ticks, cpu_busy, median, minmax, tail_word, ratio, port_in_use, sluice_toml_head,
# warn_contention; wrk_knobs: REPS DURATION WARMUP CONNS SIZE and --quick / -h.
. "$ROOT/bench/lib/common.sh"
wrk_knobs "$@"

PORT_BASE=${PORT_BASE:-18290}
SLUICE_PORT=$PORT_BASE
DEAD_PORT=$((PORT_BASE + 1))
SLUICE_ADMIN=$((PORT_BASE + 1900))
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
AMQP_PORT=${AMQP_URL#*://}; AMQP_PORT=${AMQP_PORT##*@}; AMQP_PORT=${AMQP_PORT%%/*}
[[ $AMQP_PORT == *:* ]] && AMQP_PORT=${AMQP_PORT##*:} || AMQP_PORT=5672
# The same URL (credentials, vhost) with the port swapped for one where nothing listens.
DEAD_URL=${AMQP_URL/:$AMQP_PORT\//:$DEAD_PORT/}
[ "$DEAD_URL" != "$AMQP_URL" ] || { echo "cannot put port $DEAD_PORT into AMQP_URL $AMQP_URL (give it an explicit port)" >&2; exit 2; }

for p in $SLUICE_PORT $DEAD_PORT $SLUICE_ADMIN; do
    case $p in "$AMQP_PORT"|9092|9093) echo "port $p is reserved for the brokers; pick another PORT_BASE" >&2; exit 2 ;; esac
    if port_in_use "$p"; then echo "port $p is already in use; set PORT_BASE to a free range" >&2; exit 1; fi
done

# ---------------------------------------------------------------------------------------------- tools
command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; }
command -v jq >/dev/null || { log "installing jq"; apt_install jq; }

log "brokers: integration/brokers.sh up"
"$ROOT/integration/brokers.sh" up >&2

log "cargo build --release --bin raw-amqp of bench/clients (queue declare/count/delete)"
nice -n 19 cargo build --release --quiet --manifest-path "$ROOT/bench/clients/Cargo.toml" --bin raw-amqp
if [ -z "${SLUICE_BIN:-}" ]; then
    log "cargo build --release (waits for the cargo lock if someone else is building)"
    (cd "$ROOT" && nice -n 19 cargo build --release --quiet)
    SLUICE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice
fi
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-spool-bench.XXXXXX")
SPOOL_PARENT=${SPOOL_PARENT:-$TMP}
PID=""      # the running Sluice
QUEUE=""    # the confirmed run's queue
SPOOL=""    # the spool run's directory
cleanup() {
    stop_sluice
    [ -z "$QUEUE" ] || "$RAW_AMQP" delete --url "$AMQP_URL" --queue "$QUEUE" >/dev/null 2>&1 || true
    [ -z "$SPOOL" ] || rm -rf "$SPOOL"
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
stop_sluice() {   # SIGTERM (drain; the spool settles its writes), SIGKILL after 15 s
    [ -n "$PID" ] || return 0
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Private copies, so that a concurrent `cargo build` cannot swap the binaries during the run.
cp "$SLUICE_BIN" "$TMP/sluice"; SLUICE_BIN=$TMP/sluice
cp "$ROOT/bench/clients/target/release/raw-amqp" "$TMP/"; RAW_AMQP=$TMP/raw-amqp

cat > "$TMP/post.lua" <<EOF
wrk.method = "POST"
wrk.body = string.rep("x", $SIZE)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

# ---------------------------------------------------------------------------------------------- measuring
NCPU=$(nproc)
rabbit_pid() { ss -ltnpH "sport = :$AMQP_PORT" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true; }
readyz() { curl -s "http://127.0.0.1:$SLUICE_ADMIN/readyz?verbose"; }
# Flushes (cache flush requests: what an fsync asks the disk for) completed by the spool's disk and the ms they took,
# from /proc/diskstats (fields 19 and 20); every process's flushes, RabbitMQ's included.
DISK=$(basename "$(df --output=source "$SPOOL_PARENT" | tail -1)")
disk_flushes() { awk -v d="$DISK" '$3 == d && NF >= 20 {f = $19 " " $20} END {print (f == "" ? "0 0" : f)}' /proc/diskstats; }
us_per() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN {if (n > 0) printf "%.1f", 1e6 * t / hz / n; else print "-"}'; }

# wrk's output, then "CHILD_TICKS n": the CPU time of wrk (cutime + cstime of this subshell, its only child).
wrk_run() {
    ( wrk -t1 -c"$CONNS" -d"${1}s" --latency -s "$TMP/post.lua" "http://127.0.0.1:$SLUICE_PORT/a" 2>&1
      awk '{sub(/^.*\) /, ""); print "CHILD_TICKS", $14 + $15}' "/proc/$BASHPID/stat" )
}
wrk_field() {   # $1 = ok|errs|ticks|p50|p99 (ms), $2 = wrk_run's output
    awk -v f="$1" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /requests in/ {r = $1}  /Non-2xx/ {n = $NF}  /^CHILD_TICKS/ {t = $2}
        /Socket errors/ {gsub(/,/, ""); e = $4 + $6 + $8 + $10}
        $1 == "50%" {p50 = ms($2)}  $1 == "99%" {p99 = ms($2)}
        END {
            if (f == "ok") print r - n; else if (f == "errs") print n + e; else if (f == "ticks") print t + 0
            else if (f == "p50") printf "%.2f\n", p50; else printf "%.2f\n", p99
        }' <<<"$2"
}

declare -A MPS P50 P99 SUT BROKER LOADGEN OTHER ERRS STORED FLUSHES FLUSH_MS
RUN=0

start_sluice() {   # $1 = name, $2 = broker URL, $3 = the spool table's fsync ("" = no spool); sets PID
    local name=$1 url=$2 fsync=$3
    {
        sluice_toml_head "$SLUICE_PORT" "$SLUICE_ADMIN"
        printf '[brokers.rabbit]\nkind = "amqp"\nurl = "%s"\n\n' "$url"
        [ -z "$fsync" ] || printf '[brokers.rabbit.spool]\ndir = "%s"\nmax_bytes = "4GiB"\nfsync = "%s"\n\n' "$SPOOL" "$fsync"
        # The route of bench/brokers.sh's sluice-amqp: default exchange, routing key = the queue.
        printf '[[routes]]\nname = "a"\nmatch = { path = "/a", methods = ["POST"] }\n'
        printf 'publish = { broker = "rabbit", exchange = "", routing_key = "%s" }\n' "$QUEUE"
    } > "$TMP/$name.toml"
    env -u TOKIO_WORKER_THREADS "$SLUICE_BIN" run --config "$TMP/$name.toml" >>"$TMP/$name.log" 2>&1 &
    PID=$!
    # Ready, and the broker in the state the system wants: up for confirmed, down (spooling) for the spool runs.
    local want=up; [ -z "$fsync" ] || want=down
    for _ in $(seq 100); do
        [ "$(readyz | jq -r '.brokers.rabbit // empty' 2>/dev/null)" = "$want" ] && return 0
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name: Sluice did not report broker rabbit $want within 10 s:" >&2; readyz >&2 || true; tail -20 "$TMP/$name.log" >&2
    exit 1
}

spool_depth() {   # spools.rabbit.messages, once it stopped growing (writes of requests wrk gave up on settle)
    local prev=-1 cur
    for _ in $(seq 50); do
        cur=$(readyz | jq -r '.spools.rabbit.messages')
        [ "$cur" = "$prev" ] && break
        prev=$cur; sleep 0.2
    done
    echo "$cur"
}

run_system() {   # $1 = confirmed|spool-always|spool-interval
    local name=$1 fsync="" url=$AMQP_URL warm out rpid t0 t1 k0 k1 m0 m1 ok stored wrk_cpu
    RUN=$((RUN + 1))
    QUEUE="sluice-bench-spool-$$-$RUN"
    case $name in
        confirmed) "$RAW_AMQP" declare --url "$AMQP_URL" --queue "$QUEUE" ;;
        spool-always) fsync=always ;;
        spool-interval) fsync=interval:10ms ;;
    esac
    if [ -n "$fsync" ]; then
        url=$DEAD_URL
        port_in_use "$DEAD_PORT" && { echo "something listens on $DEAD_PORT now; pick another PORT_BASE" >&2; exit 1; }
        SPOOL="$SPOOL_PARENT/spool-$$-$RUN"   # created by Sluice
    fi
    start_sluice "$name" "$url" "$fsync"
    # One request by hand first: a 202, with "spooled": true exactly when the run is a spool run.
    local probe spooled
    probe=$(curl -s -w ' %{http_code}' -X POST --data-binary x "http://127.0.0.1:$SLUICE_PORT/a")
    spooled=$(jq -r '.spooled // false' <<<"${probe% *}" 2>/dev/null || echo "?")
    if [ "${probe##* }" != 202 ] || [ "$spooled" != "$([ -n "$fsync" ] && echo true || echo false)" ]; then
        log "WARNING: $name: the first request was answered $probe"
    fi
    warm=$(wrk_run "$WARMUP")
    rpid=$(rabbit_pid)
    local f0 f1
    t0=$(cpu_ticks "$PID"); k0=$(cpu_ticks "$rpid"); m0=$(cpu_busy ""); f0=$(disk_flushes)   # cpu_busy "": all CPUs
    out=$(wrk_run "$DURATION")
    t1=$(cpu_ticks "$PID"); k1=$(cpu_ticks "$rpid"); m1=$(cpu_busy ""); f1=$(disk_flushes)
    grep -q '^Requests/sec:' <<<"$out" || { echo "wrk failed for $name:" >&2; echo "$out" >&2; tail -20 "$TMP/$name.log" >&2; exit 1; }
    ok=$(wrk_field ok "$out")
    local acked=$(( $(wrk_field ok "$warm") + ok + (${probe##* } == 202) ))
    if [ -n "$fsync" ]; then
        stored=$(spool_depth)
        [ "$(readyz | jq -r '.routes.a')" = "broker rabbit down: spooling" ] || log "WARNING: $name: route a is not spooling: $(readyz)"
        stop_sluice
        du -sh "$SPOOL" >>"$TMP/$name.du" 2>/dev/null || true
        rm -rf "$SPOOL"; SPOOL=""
    else
        stop_sluice   # SIGTERM: drain, then count the queue
        stored=$("$RAW_AMQP" count --url "$AMQP_URL" --queue "$QUEUE")
        "$RAW_AMQP" delete --url "$AMQP_URL" --queue "$QUEUE"
    fi
    QUEUE=""
    wrk_cpu=$(wrk_field ticks "$out")
    MPS[$name]+="$(awk -v ok="$ok" -v s="$DURATION" 'BEGIN {printf "%.1f", ok / s}') "
    P50[$name]+="$(wrk_field p50 "$out") "
    P99[$name]+="$(wrk_field p99 "$out") "
    SUT[$name]+="$(us_per $((t1 - t0)) "$ok") "
    BROKER[$name]+="$(us_per $((k1 - k0)) "$ok") "
    LOADGEN[$name]+="$(us_per "$wrk_cpu" "$ok") "
    OTHER[$name]+="$(awk -v o=$((m1 - m0 - (t1 - t0) - (k1 - k0) - wrk_cpu)) -v hz="$CLK_TCK" -v s="$DURATION" -v n="$NCPU" \
        'BEGIN {if (o < 0) o = 0; printf "%.0f", 100 * o / hz / s / n}') "
    FLUSHES[$name]+="$(awk -v a="$f0" -v b="$f1" -v s="$DURATION" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", (y[1] - x[1]) / s}') "
    FLUSH_MS[$name]+="$(awk -v a="$f0" -v b="$f1" 'BEGIN {split(a, x, " "); split(b, y, " "); n = y[1] - x[1]; if (n > 0) printf "%.3f", (y[2] - x[2]) / n; else print "-"}') "
    ERRS[$name]=$(( ${ERRS[$name]:-0} + $(wrk_field errs "$warm") + $(wrk_field errs "$out") ))
    STORED[$name]+="$stored/$acked "
    log "rep $REP/$REPS  $(printf '%-15s' "$name") $(printf '%8.0f' "$(tail_word "${MPS[$name]}")") msgs/s  p50/p99" \
        "$(tail_word "${P50[$name]}")/$(tail_word "${P99[$name]}") ms  Sluice CPU µs/msg $(tail_word "${SUT[$name]}")" \
        "(rabbitmq $(tail_word "${BROKER[$name]}"), wrk $(tail_word "${LOADGEN[$name]}"))  other load" \
        "$(tail_word "${OTHER[$name]}")%  $DISK flushes/s $(tail_word "${FLUSHES[$name]}") ($(tail_word "${FLUSH_MS[$name]}") ms each)  non-2xx/socket errors ${ERRS[$name]}  stored/202s $stored/$acked"
}

# ---------------------------------------------------------------------------------------------- run
SYSTEMS=(confirmed spool-always spool-interval)
log "machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); rabbitmq pid $(rabbit_pid); load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "load: wrk -t1 -c$CONNS POST ${SIZE}-byte bodies (keep-alive); ${REPS} x ${DURATION}s after ${WARMUP}s warm-up each; dead broker port $DEAD_PORT"
for REP in $(seq "$REPS"); do
    n=${#SYSTEMS[@]}   # interleaved, the order rotating per repetition (A B C, B C A, ...)
    for k in $(seq 0 $((n - 1))); do run_system "${SYSTEMS[$(( (REP - 1 + k) % n ))]}"; done
done

# ---------------------------------------------------------------------------------------------- report
declare -A MED MEDUS
echo
echo "| system | median msgs/s | min–max msgs/s | p50 / p99 latency ms (median) | Sluice CPU µs/msg (median) | RabbitMQ CPU µs/msg | wrk CPU µs/msg | other load % of machine (median) | disk flushes/s (ms each) | non-2xx + socket errors | stored vs 202s (per run) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for name in "${SYSTEMS[@]}"; do
    MED[$name]=$(median <<<"${MPS[$name]}")
    MEDUS[$name]=$(median <<<"${SUT[$name]}")
    printf '| %s | %.0f | %s | %s / %s | %s | %s | %s | %s | %s (%s) | %s | %s |\n' "$name" "${MED[$name]}" \
        "$(minmax %.0f <<<"${MPS[$name]}")" "$(median <<<"${P50[$name]}")" "$(median <<<"${P99[$name]}")" \
        "${MEDUS[$name]}" "$(median <<<"${BROKER[$name]}")" "$(median <<<"${LOADGEN[$name]}")" \
        "$(median <<<"${OTHER[$name]}")" "$(median <<<"${FLUSHES[$name]}")" "$(median <<<"${FLUSH_MS[$name]}")" "${ERRS[$name]}" "${STORED[$name]% }"
done
echo
for name in spool-always spool-interval; do
    printf '%-26s throughput %s   Sluice CPU µs/msg %s\n' "$name/confirmed:" \
        "$(ratio "${MED[$name]}" "${MED[confirmed]}")" "$(ratio "${MEDUS[$name]}" "${MEDUS[confirmed]}")"
done
echo
echo "Spool disk (df -h $SPOOL_PARENT; flushes counted on $DISK, write cache: $(cat "/sys/block/$DISK/queue/write_cache" 2>/dev/null || echo ?)):"
df -h "$SPOOL_PARENT" | sed 's/^/    /'
for name in spool-always spool-interval; do
    echo "    $name spool size per run (du -sh, after Sluice stopped): $(awk '{printf "%s ", $1}' "$TMP/$name.du" 2>/dev/null)"
done
warn_contention "$(median <<<"${OTHER[*]}")" "the machine" msgs/s
echo
echo "($REPS repetitions x ${DURATION}s after ${WARMUP}s warm-up, concurrency $CONNS, ${SIZE}-byte bodies; \"stored vs 202s\":"
echo " messages in the queue after Sluice stopped (confirmed) or readyz spools.rabbit.messages (spool-*) / 202s wrk"
echo " counted, warm-up and one probe request included; $(date -u '+%Y-%m-%d %H:%M UTC'))"

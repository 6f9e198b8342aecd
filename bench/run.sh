#!/usr/bin/env bash
# How does Sluice compare, on this machine, right now: one command (issue 4).
#
#   bench/run.sh                5 interleaved repetitions of everything, writes the results into bench/README.md
#                               between `<!-- run.sh:begin -->` and `<!-- run.sh:end -->`
#   bench/run.sh --quick        1 short repetition of everything (smoke check); prints, does not touch the README
#   options: --readme / --no-readme (force writing or not writing the README section), --no-async, --no-sync
#
# Sync path (HTTP forwarding, keep-alive, 1 KiB responses from one upstream nginx with 1 worker):
#   direct   wrk/oha straight to the upstream (no proxy: the load side's ceiling)
#   nginx    1 worker, keep-alive to the upstream (`keepalive 64`)
#   haproxy  nbthread 1, `http-reuse always`, keep-alive
#   sluice   TOKIO_WORKER_THREADS=1, `[telemetry] access_log = false`
# each in three variants (see bench/lib/configs.sh): plain; res (retries + passive outlier ejection + active
# health checks + a rate limit, 3 healthy endpoints, nothing failing); fail (the same, 1 of 3 endpoints refuses
# connections). Pinned with taskset: the proxy on CPU $PROXY_CPU, the upstream and the load tools on $LOAD_CPU.
#   1. closed loop: wrk -t1 -c$CONNS for $DURATION s: max requests/s and CPU µs/request of the proxy (/proc)
#   2. open loop at a fixed rate of half of nginx's median max (plain): oha -q RATE --latency-correction
#      (no coordinated omission): p50/p99/p99.9, success rate (2xx / sent), CPU µs/request
#   3. memory: RSS idle (fresh) and with 1,000 open keep-alive client connections (bench/lib/hold_conns.py)
# Async path: bench/brokers.sh (Sluice HTTP→Kafka ack=confirm vs raw rdkafka; HTTP→RabbitMQ confirmed vs raw
# lapin), and Strimzi Kafka Bridge if `io.strimzi:kafka-bridge` resolves from Maven Central.
# Systems are interleaved (the order rotates every repetition: A B C, B C A, ...).
#
# Knobs (environment): REPS, DURATION, WARMUP (seconds), CONNS, RATE (fixed rate; default nginx max / 2),
# ASYNC_DURATION, ASYNC_CONNS, ONE_THREAD (passed to brokers.sh; default 0), PORT_BASE (default 28000: uses
# PORT_BASE..+32, +130..+132; brokers.sh gets PORT_BASE+90 and +1990), PROXY_CPU, LOAD_CPU, SLUICE_BIN (skip
# the build), KEEP_TMP=1. Binds only 127.0.0.1; stops everything it started on exit.
set -euo pipefail

REPS=${REPS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
QUICK=0
WRITE_README=""
DO_SYNC=1
DO_ASYNC=1
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1; REPS=1; DURATION=2; WARMUP=1 ;;
        --readme) WRITE_README=1 ;;
        --no-readme) WRITE_README=0 ;;
        --no-async) DO_ASYNC=0 ;;
        --no-sync) DO_SYNC=0 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done
[ -z "$WRITE_README" ] && { [ $QUICK = 1 ] && WRITE_README=0 || WRITE_README=1; }
ASYNC_DURATION=${ASYNC_DURATION:-$DURATION}
ASYNC_CONNS=${ASYNC_CONNS:-$CONNS}
START_TS=$(date +%s)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIB=$ROOT/bench/lib
# shellcheck source=bench/lib/common.sh
. "$LIB/common.sh"
# shellcheck source=bench/lib/configs.sh
. "$LIB/configs.sh"

PORT_BASE=${PORT_BASE:-28000}
UP1=$PORT_BASE; UP2=$((PORT_BASE + 1)); UP3=$((PORT_BASE + 2)); DEAD=$((PORT_BASE + 9))
NGINX_PLAIN=$((PORT_BASE + 10)); NGINX_RES=$((PORT_BASE + 11)); NGINX_FAIL=$((PORT_BASE + 12))
HAPROXY_PLAIN=$((PORT_BASE + 20)); HAPROXY_RES=$((PORT_BASE + 21)); HAPROXY_FAIL=$((PORT_BASE + 22))
SLUICE_PLAIN=$((PORT_BASE + 30)); SLUICE_RES=$((PORT_BASE + 31)); SLUICE_FAIL=$((PORT_BASE + 32))
SLUICE_PLAIN_ADMIN=$((PORT_BASE + 130)); SLUICE_RES_ADMIN=$((PORT_BASE + 131)); SLUICE_FAIL_ADMIN=$((PORT_BASE + 132))
ASYNC_PORT_BASE=$((PORT_BASE + 90))   # brokers.sh uses it and +1900
ALL_PORTS="$UP1 $UP2 $UP3 $DEAD $NGINX_PLAIN $NGINX_RES $NGINX_FAIL $HAPROXY_PLAIN $HAPROXY_RES $HAPROXY_FAIL
    $SLUICE_PLAIN $SLUICE_RES $SLUICE_FAIL $SLUICE_PLAIN_ADMIN $SLUICE_RES_ADMIN $SLUICE_FAIL_ADMIN
    $ASYNC_PORT_BASE $((ASYNC_PORT_BASE + 1900))"
for p in $ALL_PORTS; do
    case $p in 5672|9092|9093|1800[0-3]|1990[12]|18090|19990)
        echo "port $p is reserved (brokers / other benchmarks); pick another PORT_BASE" >&2; exit 2 ;;
    esac
done

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
SLUICE_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || SLUICE_REV="$SLUICE_REV + uncommitted changes"

MD=$TMP/section.md
: > "$MD"
md() { printf '%s\n' "$*" >> "$MD"; }

# ---------------------------------------------------------------------------------------------- machine
MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MEM=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
VERSIONS="$("$NGINX" -v 2>&1 | sed 's/.*: //'), $("$HAPROXY" -v | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $OHA_VERSION, $(rustc --version | awk '{print $1, $2}')"
log "machine: nproc $NCPU, $MODEL, $MEM; $VERSIONS"

SYNC_SYSTEMS=(nginx haproxy sluice)
VARIANTS=(plain res fail)
declare -A URL PROC
declare -A RPS USPR OTHER ERRS                 # closed loop, keyed "system/variant"
declare -A P50 P99 P999 SUCC RUSPR ROTHER      # fixed rate
declare -A RSS_IDLE RSS_1K CONN_OK

start_sync() {
    write_configs
    for s in plain res fail; do "$SLUICE_BIN" check "$TMP/sluice-$s.toml" >/dev/null; done
    "$HAPROXY" -c -q -f "$TMP/haproxy/haproxy.cfg"
    "${PIN_LOAD[@]}" "$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" \
        >"$TMP/upstream/stdout.log" 2>&1 &
    PIDS+=($!); PROC[direct]=$!
    "${PIN_PROXY[@]}" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
        >"$TMP/nginx/stdout.log" 2>&1 &
    PIDS+=($!); PROC[nginx]=$!
    "${PIN_PROXY[@]}" "$HAPROXY" -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/stdout.log" 2>&1 &
    PIDS+=($!); PROC[haproxy]=$!
    for s in plain res fail; do
        TOKIO_WORKER_THREADS=1 "${PIN_PROXY[@]}" "$SLUICE_BIN" run --config "$TMP/sluice-$s.toml" \
            >"$TMP/sluice-$s.log" 2>&1 &
        PIDS+=($!); PROC[sluice/$s]=$!
    done
    PROC[nginx/plain]=${PROC[nginx]}; PROC[nginx/res]=${PROC[nginx]}; PROC[nginx/fail]=${PROC[nginx]}
    PROC[haproxy/plain]=${PROC[haproxy]}; PROC[haproxy/res]=${PROC[haproxy]}; PROC[haproxy/fail]=${PROC[haproxy]}
    PROC[direct/plain]=${PROC[direct]}
    URL[direct/plain]="http://127.0.0.1:$UP1/"
    URL[nginx/plain]="http://127.0.0.1:$NGINX_PLAIN/";     URL[nginx/res]="http://127.0.0.1:$NGINX_RES/"
    URL[nginx/fail]="http://127.0.0.1:$NGINX_FAIL/"
    URL[haproxy/plain]="http://127.0.0.1:$HAPROXY_PLAIN/"; URL[haproxy/res]="http://127.0.0.1:$HAPROXY_RES/"
    URL[haproxy/fail]="http://127.0.0.1:$HAPROXY_FAIL/"
    URL[sluice/plain]="http://127.0.0.1:$SLUICE_PLAIN/";   URL[sluice/res]="http://127.0.0.1:$SLUICE_RES/"
    URL[sluice/fail]="http://127.0.0.1:$SLUICE_FAIL/"
    local k
    for k in direct/plain nginx/plain nginx/res haproxy/plain haproxy/res sluice/plain sluice/res; do
        wait_http "${URL[$k]}"
    done
}

# Closed loop: wrk; records requests/s, CPU µs/request of the proxy, other load on the proxy's CPU, errors.
run_closed() {   # $1 = system/variant
    local k=$1 out t0 t1 b0 b1 rps reqs errs own
    t0=$(cpu_ticks "${PROC[$k]}"); b0=$(cpu_busy "$PROXY_CPU")
    out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${URL[$k]}" 2>&1)
    t1=$(cpu_ticks "${PROC[$k]}"); b1=$(cpu_busy "$PROXY_CPU")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
    [ -n "$rps" ] && [ -n "$reqs" ] || { echo "wrk failed for $k:" >&2; echo "$out" >&2; exit 1; }
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

# RSS idle and with 1,000 keep-alive client connections (each sent one request and stays open).
measure_memory() {
    local s k pid holder line port
    for s in nginx haproxy sluice; do
        k=$s/plain; pid=${PROC[$k]}
        port=${URL[$k]#http://127.0.0.1:}; port=${port%/}
        RSS_IDLE[$s]=$(rss_kib "$pid")
        "${PIN_LOAD[@]}" python3 "$LIB/hold_conns.py" 127.0.0.1 "$port" 1000 >"$TMP/hold.out" 2>&1 &
        holder=$!; PIDS+=("$holder")
        line=""
        for _ in $(seq 300); do line=$(grep -m1 '^ready' "$TMP/hold.out" || true); [ -n "$line" ] && break; sleep 0.1; done
        sleep 0.5
        RSS_1K[$s]=$(rss_kib "$pid"); CONN_OK[$s]=$(awk '{print $2}' <<<"${line:-ready 0 0}")
        kill -TERM "$holder" 2>/dev/null || true; wait "$holder" 2>/dev/null || true
        PIDS=("${PIDS[@]/$holder}")
        log "memory  $(printf '%-8s' "$s") idle $(fmt %.1f "$(awk -v r="${RSS_IDLE[$s]}" 'BEGIN {print r / 1024}')") MiB, 1000 conns ($(tail_word "${CONN_OK[$s]}") answered) $(awk -v r="${RSS_1K[$s]}" 'BEGIN {printf "%.1f", r / 1024}') MiB"
        sleep 0.5
    done
}

rotate() {   # $1 = repetition (1-based), rest = items: prints them rotated by rep-1
    local rep=$1; shift
    local items=("$@") n=$# i
    for i in $(seq 0 $((n - 1))); do echo "${items[$(( (rep - 1 + i) % n ))]}"; done
}

# ---------------------------------------------------------------------------------------------- sync path
if [ $DO_SYNC = 1 ]; then
    start_sync
    log "pinning: proxies on CPU ${PIN_PROXY[2]:-any}, upstream + load tools on CPU ${PIN_LOAD[2]:-any}"
    measure_memory
    log "warm-up ${WARMUP}s each (also lets the 'fail' variants notice the dead endpoint)"
    for k in direct/plain nginx/plain nginx/res nginx/fail haproxy/plain haproxy/res haproxy/fail \
             sluice/plain sluice/res sluice/fail; do
        "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${URL[$k]}" >/dev/null 2>&1
    done
    CLOSED_KEYS=(nginx/plain haproxy/plain sluice/plain nginx/res haproxy/res sluice/res)
    log "closed loop: wrk -t1 -c$CONNS -d${DURATION}s, $REPS repetitions"
    for rep in $(seq "$REPS"); do
        log "-- repetition $rep/$REPS"
        run_closed direct/plain
        for v in plain res; do
            for s in $(rotate "$rep" "${SYNC_SYSTEMS[@]}"); do run_closed "$s/$v"; done
        done
    done
    NGINX_MAX=$(median <<<"${RPS[nginx/plain]}")
    RATE=${RATE:-$(awk -v m="$NGINX_MAX" 'BEGIN {printf "%d", m / 2}')}
    log "open loop: oha -q $RATE (half of nginx's median max $NGINX_MAX) -c$CONNS -z ${DURATION}s --latency-correction"
    for rep in $(seq "$REPS"); do
        log "-- repetition $rep/$REPS"
        run_rate direct/plain
        for v in plain res fail; do
            for s in $(rotate "$rep" "${SYNC_SYSTEMS[@]}"); do run_rate "$s/$v"; done
        done
    done

    # ------------------------------------------------------------------------------------------ sync report
    label() { case $1 in plain) echo plain ;; res) echo "retry+outlier+health+rate limit" ;; fail) echo "1 of 3 endpoints refusing" ;; esac; }
    md "### Sync path: closed loop, maximum requests/s (wrk -t1 -c$CONNS, ${DURATION} s, $REPS repetitions)"
    md ""
    md "| system | variant | req/s median | req/s min–max | CPU µs/request median | CPU µs/request min–max | other load on CPU $PROXY_CPU % (median) | errors |"
    md "|---|---|---:|---:|---:|---:|---:|---:|"
    for k in direct/plain "${CLOSED_KEYS[@]}"; do
        s=${k%%/*}; v=${k#*/}
        [ $s = direct ] && sl="direct (no proxy; µs = the upstream's CPU)" || sl=$s
        md "| $sl | $(label "$v") | $(fmt %.0f "$(median <<<"${RPS[$k]}")") | $(minmax %.0f <<<"${RPS[$k]}") | $(median <<<"${USPR[$k]}") | $(minmax %.2f <<<"${USPR[$k]}") | $(median <<<"${OTHER[$k]}") | ${ERRS[$k]} |"
    done
    md ""
    md "### Sync path: open loop at a fixed $RATE req/s (half of nginx's median max), oha --latency-correction -c$CONNS, ${DURATION} s, $REPS repetitions"
    md ""
    md "Latencies in ms, median over the repetitions with the min–max in brackets; success = 2xx / requests sent."
    md ""
    md "| system | variant | p50 | p99 | p99.9 | success % (median, min) | CPU µs/request median | other load on CPU $PROXY_CPU % |"
    md "|---|---|---:|---:|---:|---:|---:|---:|"
    for k in direct/plain nginx/plain haproxy/plain sluice/plain nginx/res haproxy/res sluice/res nginx/fail haproxy/fail sluice/fail; do
        s=${k%%/*}; v=${k#*/}
        [ $s = direct ] && sl="direct (no proxy)" || sl=$s
        md "| $sl | $(label "$v") | $(median <<<"${P50[$k]}") [$(minmax <<<"${P50[$k]}")] | $(median <<<"${P99[$k]}") [$(minmax <<<"${P99[$k]}")] | $(median <<<"${P999[$k]}") [$(minmax <<<"${P999[$k]}")] | $(median <<<"${SUCC[$k]}"), $(tr ' ' '\n' <<<"${SUCC[$k]}" | grep . | sort -g | head -1) | $(median <<<"${RUSPR[$k]}") | $(median <<<"${ROTHER[$k]}") |"
    done
    md ""
    md "### Memory (RSS; nginx = master + worker)"
    md ""
    md "| system | RSS idle (fresh start) MiB | RSS with 1,000 open keep-alive connections MiB | connections answered |"
    md "|---|---:|---:|---:|"
    for s in nginx haproxy sluice; do
        md "| $s | $(awk -v r="${RSS_IDLE[$s]}" 'BEGIN {printf "%.1f", r / 1024}') | $(awk -v r="${RSS_1K[$s]}" 'BEGIN {printf "%.1f", r / 1024}') | ${CONN_OK[$s]}/1000 |"
    done
    md ""
    md "### Ratios Sluice/peer (medians)"
    md ""
    md '```'
    for v in plain res; do
        for peer in nginx haproxy; do
            md "$(printf '%-6s sluice/%-8s max req/s %s   CPU µs/request %s (lower is better; efficiency %s)' "$v" "$peer" \
                "$(ratio "$(median <<<"${RPS[sluice/$v]}")" "$(median <<<"${RPS[$peer/$v]}")")" \
                "$(ratio "$(median <<<"${USPR[sluice/$v]}")" "$(median <<<"${USPR[$peer/$v]}")")" \
                "$(ratio "$(median <<<"${USPR[$peer/$v]}")" "$(median <<<"${USPR[sluice/$v]}")")")"
        done
    done
    for v in plain res fail; do
        for peer in nginx haproxy; do
            md "$(printf '%-6s sluice/%-8s at %s req/s: p50 %s  p99 %s  p99.9 %s  CPU µs/request %s' "$v" "$peer" "$RATE" \
                "$(ratio "$(median <<<"${P50[sluice/$v]}")" "$(median <<<"${P50[$peer/$v]}")")" \
                "$(ratio "$(median <<<"${P99[sluice/$v]}")" "$(median <<<"${P99[$peer/$v]}")")" \
                "$(ratio "$(median <<<"${P999[sluice/$v]}")" "$(median <<<"${P999[$peer/$v]}")")" \
                "$(ratio "$(median <<<"${RUSPR[sluice/$v]}")" "$(median <<<"${RUSPR[$peer/$v]}")")")"
        done
    done
    md "res/plain sluice: max req/s $(ratio "$(median <<<"${RPS[sluice/res]}")" "$(median <<<"${RPS[sluice/plain]}")")   CPU µs/request $(ratio "$(median <<<"${USPR[sluice/res]}")" "$(median <<<"${USPR[sluice/plain]}")")"
    md "RSS sluice/nginx: idle $(ratio "${RSS_IDLE[sluice]}" "${RSS_IDLE[nginx]}")   1,000 connections $(ratio "${RSS_1K[sluice]}" "${RSS_1K[nginx]}")"
    md '```'
    md ""
    busy=$(median <<<"${OTHER[nginx/plain]} ${OTHER[haproxy/plain]} ${OTHER[sluice/plain]} ${OTHER[nginx/res]} ${OTHER[haproxy/res]} ${OTHER[sluice/res]}")
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
    STRIMZI_NOTE="skipped: \`mvn dependency:get -Dartifact=io.strimzi:kafka-bridge:RELEASE\` (and :LATEST, and pinned versions 0.28.0–0.33.1 tried by hand) does not resolve from Maven Central ($(grep -o 'Could not find[^:]*\|Failed to resolve version[^:]*' <<<"$out" | head -1)); Strimzi publishes the bridge as a container image and a GitHub release archive, not as a Maven artifact"
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
{
    echo "## \`bench/run.sh\`: Sluice vs nginx vs HAProxy, and vs raw Kafka/RabbitMQ producers"
    echo
    echo "Generated by \`bench/run.sh\` (everything between the \`run.sh\` markers is rewritten on each full run)."
    echo
    echo "### \`bench/run.sh$( [ $QUICK = 1 ] && echo ' --quick')\` — $(date -u '+%Y-%m-%d %H:%M UTC'), Sluice at $SLUICE_REV"
    echo
    echo "Machine: nproc $NCPU, $MODEL, $MEM RAM, Linux $(uname -r); $VERSIONS. Shared with other engineers'"
    echo "builds and tests, so requests/s and latencies move with their load; **CPU µs/request is the steadier figure**."
    echo
    echo "Exact command, from the repository root: \`bench/run.sh$( [ $QUICK = 1 ] && echo ' --quick')\` ($ELAPSED s in all, of which $BUILD_S s tool"
    echo "checks and \`cargo build --release\`). It ran:"
    echo
    echo '```sh'
    echo "taskset -c $PROXY_CPU nginx (1 worker) / haproxy -db (nbthread 1) / TOKIO_WORKER_THREADS=1 sluice run --config sluice-{plain,res,fail}.toml"
    echo "taskset -c $LOAD_CPU nginx (upstream, 1 worker, return 200 + 1 KiB, ports $UP1-$UP3; $DEAD refuses connections)"
    echo "taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d${DURATION}s URL                                  # closed loop"
    echo "taskset -c $LOAD_CPU oha --no-tui ${OHA_JSON[*]} ${OHA_EXTRA[*]} -z ${DURATION}s -q ${RATE:-RATE} --latency-correction -c $CONNS URL   # open loop"
    echo "taskset -c $LOAD_CPU python3 bench/lib/hold_conns.py 127.0.0.1 PORT 1000                        # memory"
    [ $DO_ASYNC = 1 ] && echo "${ASYNC_CMD:-}"
    echo '```'
    echo
    echo "The configurations of all three proxies are generated by \`bench/lib/configs.sh\`. CPU µs/request = the proxy"
    echo "process's utime+stime (/proc/PID/stat, all threads; nginx master + worker) over the run / requests."
    echo
    cat "$MD"
} > "$TMP/report.md"

echo
cat "$TMP/report.md"
if [ "$WRITE_README" = 1 ]; then
    python3 "$LIB/readme_section.py" "$ROOT/bench/README.md" "$TMP/report.md"
    log "wrote the results into bench/README.md (between <!-- run.sh:begin --> and <!-- run.sh:end -->)"
fi
log "done in ${ELAPSED}s"

#!/usr/bin/env bash
# Sluice vs nginx: plain HTTP/1.1 forwarding of 1 KiB responses over keep-alive connections.
#
#   bench/forward.sh            5 interleaved repetitions of 10 s per system (about 3 minutes)
#   bench/forward.sh --quick    1 repetition of 3 s per system (smoke check)
#
# Systems under test, all in front of the same upstream (an nginx instance answering `return 200` with a
# fixed 1 KiB body):
#   nginx              nginx as reverse proxy, 1 worker, HTTP/1.1 + `keepalive 64` to the upstream
#   sluice             target/release/sluice, TOKIO_WORKER_THREADS=1, plain forward route
#   sluice-resilience  the same with retry (max_retries 2 on connect-failure,5xx) and outlier ejection set
#                      explicitly (rate limit off)
#
# CPU placement (2 cores): the proxy under test on CPU $PROXY_CPU (default 0), the upstream and the load
# generator (wrk, 1 thread) on CPU $LOAD_CPU (default 1). A "direct" run (wrk straight to the upstream, both on
# CPU $LOAD_CPU) shows the ceiling of that side: a proxy figure close to it means the load side, not the proxy,
# was the bottleneck. The proxy's CPU use during each run (from /proc) is printed too.
#
# Environment knobs: REPS, DURATION (seconds), WARMUP (seconds), CONNS (wrk -c), PORT_BASE (default 18000;
# uses PORT_BASE..PORT_BASE+3 and PORT_BASE+1901..+1902), PROXY_CPU, LOAD_CPU, SLUICE_BIN (skip the build),
# KEEP_TMP=1 (keep the temp dir with configs and logs).
#
# Everything binds on 127.0.0.1; everything started here is stopped on exit.
set -euo pipefail

REPS=${REPS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-64}
for arg in "$@"; do
    case "$arg" in
        --quick) REPS=1; DURATION=3; WARMUP=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (use --quick)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT_BASE=${PORT_BASE:-18000}
UPSTREAM_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
SLUICE_PORT=$((PORT_BASE + 2))
SLUICE_RES_PORT=$((PORT_BASE + 3))
SLUICE_ADMIN=$((PORT_BASE + 1901))
SLUICE_RES_ADMIN=$((PORT_BASE + 1902))
for p in $UPSTREAM_PORT $NGINX_PORT $SLUICE_PORT $SLUICE_RES_PORT $SLUICE_ADMIN $SLUICE_RES_ADMIN; do
    case $p in 5672|9092|9093) echo "port $p is reserved for the brokers; pick another PORT_BASE" >&2; exit 2 ;; esac
done

NCPU=$(nproc)
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_PROXY=(taskset -c "$PROXY_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
else
    echo "note: fewer than 2 CPUs or no taskset: not pinning" >&2
    PIN_PROXY=(); PIN_LOAD=()
fi

# log, apt_install and the /proc measuring helpers shared with bench/run.sh.
. "$ROOT/bench/lib/common.sh"

# ---------------------------------------------------------------------------------------------- tools
NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
    log "installing nginx-light"
    apt_install nginx-light || apt_install nginx
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    # The Debian package may have started the system nginx (port 80); it is not ours and does not matter here.
fi
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt_install wrk
fi

if [ -z "${SLUICE_BIN:-}" ]; then
    log "cargo build --release (waits for the cargo lock if someone else is building)"
    (cd "$ROOT" && cargo build --release --quiet)
    SLUICE_BIN=$ROOT/target/release/sluice
fi
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN" >&2; exit 1; }

for p in $UPSTREAM_PORT $NGINX_PORT $SLUICE_PORT $SLUICE_RES_PORT $SLUICE_ADMIN $SLUICE_RES_ADMIN; do
    if ss -ltnH "sport = :$p" | grep -q .; then
        echo "port $p is already in use; set PORT_BASE to a free range" >&2; exit 1
    fi
done

# ---------------------------------------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
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

# ---------------------------------------------------------------------------------------------- configs
NGINX_USER=""
[ "$(id -u)" -eq 0 ] && NGINX_USER="user root;"   # the default user/group (nobody:nobody) is missing on Debian

nginx_common() {   # $1 = prefix dir
    cat <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; multi_accept on; }
EOF
}
nginx_http_common() {
    cat <<EOF
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}

BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
mkdir -p "$TMP/upstream" "$TMP/nginx"
{
    nginx_common "$TMP/upstream"
    echo "http {"
    nginx_http_common "$TMP/upstream"
    cat <<EOF
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location / { default_type text/plain; return 200 "$BODY"; }
    }
}
EOF
} > "$TMP/upstream/nginx.conf"
{
    nginx_common "$TMP/nginx"
    echo "http {"
    nginx_http_common "$TMP/nginx"
    cat <<EOF
    upstream bench { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} > "$TMP/nginx/nginx.conf"

cat > "$TMP/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:$SLUICE_PORT"
admin_listen = "127.0.0.1:$SLUICE_ADMIN"

[telemetry]
access_log = false

[upstreams.bench]
endpoints = ["http://127.0.0.1:$UPSTREAM_PORT"]

[[routes]]
name = "bench"
match = { path_prefix = "/" }
forward = { upstream = "bench" }
EOF
cat > "$TMP/sluice-resilience.toml" <<EOF
[server]
listen = "127.0.0.1:$SLUICE_RES_PORT"
admin_listen = "127.0.0.1:$SLUICE_RES_ADMIN"

[telemetry]
access_log = false

[upstreams.bench]
endpoints = ["http://127.0.0.1:$UPSTREAM_PORT"]

[upstreams.bench.outlier]
consecutive_failures = 5

[[routes]]
name = "bench"
match = { path_prefix = "/" }
forward = { upstream = "bench" }
retry = { max_retries = 2, on = ["connect-failure", "5xx"] }
EOF
"$SLUICE_BIN" check "$TMP/sluice.toml" >/dev/null
"$SLUICE_BIN" check "$TMP/sluice-resilience.toml" >/dev/null

# ---------------------------------------------------------------------------------------------- start

"${PIN_LOAD[@]}" "$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" \
    >"$TMP/upstream/stdout.log" 2>&1 &
PIDS+=($!); UPSTREAM_PID=$!
"${PIN_PROXY[@]}" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
    >"$TMP/nginx/stdout.log" 2>&1 &
PIDS+=($!); NGINX_PID=$!
TOKIO_WORKER_THREADS=1 "${PIN_PROXY[@]}" "$SLUICE_BIN" run --config "$TMP/sluice.toml" >"$TMP/sluice.log" 2>&1 &
PIDS+=($!); SLUICE_PID=$!
TOKIO_WORKER_THREADS=1 "${PIN_PROXY[@]}" "$SLUICE_BIN" run --config "$TMP/sluice-resilience.toml" \
    >"$TMP/sluice-resilience.log" 2>&1 &
PIDS+=($!); SLUICE_RES_PID=$!

wait_http "http://127.0.0.1:$UPSTREAM_PORT/"
wait_http "http://127.0.0.1:$NGINX_PORT/"
wait_http "http://127.0.0.1:$SLUICE_PORT/"
wait_http "http://127.0.0.1:$SLUICE_RES_PORT/"

# ---------------------------------------------------------------------------------------------- measure
NAMES=(direct nginx sluice sluice-resilience)
declare -A URL=(
    [direct]="http://127.0.0.1:$UPSTREAM_PORT/"
    [nginx]="http://127.0.0.1:$NGINX_PORT/"
    [sluice]="http://127.0.0.1:$SLUICE_PORT/"
    [sluice-resilience]="http://127.0.0.1:$SLUICE_RES_PORT/"
)
declare -A PROC=([direct]=$UPSTREAM_PID [nginx]=$NGINX_PID [sluice]=$SLUICE_PID [sluice-resilience]=$SLUICE_RES_PID)
declare -A RPS CPU USPR OTHER ERRS
CLK_TCK=$(getconf CLK_TCK)



run_wrk() {   # $1 = name, $2 = seconds; sets LAST_RPS, records requests/s, CPU figures and errors
    local name=$1 secs=$2 out t0 t1 b0 b1 rps reqs errs
    t0=$(cpu_ticks "${PROC[$name]}"); b0=$(cpu_busy "$PROXY_CPU")
    out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${secs}s" "${URL[$name]}" 2>&1)
    t1=$(cpu_ticks "${PROC[$name]}"); b1=$(cpu_busy "$PROXY_CPU")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
    [ -n "$rps" ] && [ -n "$reqs" ] || { echo "wrk failed for $name:" >&2; echo "$out" >&2; exit 1; }
    RPS[$name]+="$rps "
    # CPU % of the process under test (100 = one full CPU), its CPU time per request in microseconds, and the
    # share of the proxy's CPU that something else (other processes on the machine) used meanwhile.
    CPU[$name]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN {printf "%.0f", 100 * d / hz / s}') "
    USPR[$name]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", 1e6 * d / hz / n}') "
    OTHER[$name]+="$(awk -v b=$((b1 - b0)) -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$secs" -v own="$name" \
        'BEGIN {o = (own == "direct") ? b : b - d; if (o < 0) o = 0; printf "%.0f", 100 * o / hz / s}') "
    ERRS[$name]=$(( ${ERRS[$name]:-0} + errs ))
    LAST_RPS=$rps
}

tail_word() { local w=($1); echo "${w[-1]}"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
minmax() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s–%s", lo, hi}'; }

log "machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
log "pinning: proxy on CPU ${PIN_PROXY[2]:-any}, upstream + wrk on CPU ${PIN_LOAD[2]:-any}; wrk -t1 -c$CONNS -d${DURATION}s"
log "warm-up ${WARMUP}s each"
for name in "${NAMES[@]}"; do
    "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${URL[$name]}" >/dev/null
done
# The direct baseline is measured once: it only shows the load side's ceiling.
run_wrk direct "$DURATION"
log "       $(printf '%-18s' direct) $(printf '%9.0f' "$LAST_RPS") req/s  upstream CPU $(tail_word "${CPU[direct]}")%  other load on CPU $PROXY_CPU: $(tail_word "${OTHER[direct]}")%"
PROXIES=(nginx sluice sluice-resilience)
for rep in $(seq "$REPS"); do
    # Interleaved, and the order rotates each repetition (A B C, B C A, C A B, ...) so no system always
    # follows the same neighbour.
    for k in 0 1 2; do
        name=${PROXIES[$(( (rep - 1 + k) % 3 ))]}
        run_wrk "$name" "$DURATION"
        log "rep $rep/$REPS  $(printf '%-18s' "$name") $(printf '%9.0f' "$LAST_RPS") req/s  CPU $(tail_word "${CPU[$name]}")%  $(tail_word "${USPR[$name]}") µs/req  other load on CPU $PROXY_CPU: $(tail_word "${OTHER[$name]}")%"
    done
done

# ---------------------------------------------------------------------------------------------- report
declare -A MED MEDUS
echo
echo "| system | median req/s | min–max req/s | CPU % of the process (median) | CPU µs/request (median) | other load on CPU $PROXY_CPU % (median) | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for name in "${NAMES[@]}"; do
    MED[$name]=$(median <<<"${RPS[$name]}")
    MEDUS[$name]=$(median <<<"${USPR[$name]}")
    [ "$name" = direct ] && label="direct (no proxy; the upstream's CPU)" || label=$name
    printf '| %s | %.0f | %s | %s | %s | %s | %s |\n' "$label" "${MED[$name]}" "$(minmax <<<"${RPS[$name]}")" \
        "$(median <<<"${CPU[$name]}")" "${MEDUS[$name]}" "$(median <<<"${OTHER[$name]}")" "${ERRS[$name]}"
done
busy=$(median <<<"${OTHER[nginx]} ${OTHER[sluice]} ${OTHER[sluice-resilience]}")
if awk -v b="$busy" 'BEGIN {exit !(b > 10)}'; then
    echo
    echo "WARNING: other processes used a median ${busy}% of CPU $PROXY_CPU during the runs: requests/s are skewed by"
    echo "contention; the CPU µs/request figures (and their ratios) are the more reliable comparison."
fi
echo
awk -v s="${MED[sluice]}" -v n="${MED[nginx]}" -v r="${MED[sluice-resilience]}" \
    -v us="${MEDUS[sluice]}" -v un="${MEDUS[nginx]}" -v ur="${MEDUS[sluice-resilience]}" 'BEGIN {
    printf "throughput ratio sluice/nginx:             %.3f   (target >= 1.0)\n", s / n
    printf "throughput ratio sluice-resilience/sluice: %.3f   (target >= 0.95)\n", r / s
    printf "throughput ratio sluice-resilience/nginx:  %.3f\n", r / n
    printf "CPU-efficiency ratio sluice/nginx (nginx µs/req / sluice µs/req):             %.3f\n", un / us
    printf "CPU-efficiency ratio sluice-resilience/sluice (sluice µs/req / resilience µs/req): %.3f\n", us / ur
}'
echo
echo "($REPS repetitions x ${DURATION}s, wrk -t1 -c$CONNS, keep-alive, 1 KiB responses; $(date -u '+%Y-%m-%d %H:%M UTC'))"

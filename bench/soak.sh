#!/usr/bin/env bash
# Does Sluice's memory stay flat under hours-like traffic? A soak run (issue 11: "no growth over a 10-minute soak").
#
#   bench/soak.sh              10 minutes
#   bench/soak.sh --quick      1 minute (smoke check)
#
# Sluice (TOKIO_WORKER_THREADS=$WORKERS, default 1; one plain forward route, access log off) in front of an nginx upstream answering
# 1 KiB, for $MINUTES minutes, under three kinds of traffic at once:
#   - steady keep-alive load at a fixed rate: oha -q $RATE -c 32 (the connections stay busy, never parked);
#   - churn: $CHURN clients that each open a connection, GET, idle 0.6 s (parked after 250 ms), GET again on it,
#     close, and start over (bench/lib/churn_conns.py): hyper connections are taken apart and rebuilt all along;
#   - $IDLE connections held idle (parked) for the whole run (bench/lib/hold_conns.py; `idle_timeout = "1h"`).
# Sluice's RSS (/proc/PID/status) is sampled every 10 s. Printed: RSS after the first minute (warm: the allocator
# has its working set), at the end, the largest sample, and the growth from the first minute to the end, with the
# requests answered and failed. No pass/fail: the figures are the measure.
#
# Knobs: MINUTES, RATE (default 5000 req/s), CHURN (default 200), IDLE (default 2000), WORKERS, PORT_BASE (default 29000:
# uses PORT_BASE..+2), SLUICE_BIN (skip the build). Binds only 127.0.0.1; stops everything it started on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIB=$ROOT/bench/lib
# shellcheck source=bench/lib/common.sh
. "$LIB/common.sh"
MINUTES=${MINUTES:-10}
for arg in "$@"; do
    case "$arg" in
        --quick) MINUTES=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument: $arg (use --quick)" >&2; exit 2 ;;
    esac
done
RATE=${RATE:-5000}
CHURN=${CHURN:-200}
IDLE=${IDLE:-2000}
PORT_BASE=${PORT_BASE:-29000}
UP_PORT=$PORT_BASE; PORT=$((PORT_BASE + 1)); ADMIN_PORT=$((PORT_BASE + 2))
SECONDS_TOTAL=$((MINUTES * 60))

NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
[ -z "$NGINX" ] && { log "installing nginx-light"; apt_install nginx-light || apt_install nginx; NGINX=$(command -v nginx || echo /usr/sbin/nginx); }
OHA=$(command -v oha || true)
[ -z "$OHA" ] && [ -x "$HOME/.cargo/bin/oha" ] && OHA=$HOME/.cargo/bin/oha
[ -z "$OHA" ] && { log "installing oha (cargo install oha --locked; a few minutes, once)"; cargo install oha --locked --quiet; OHA=$HOME/.cargo/bin/oha; }
OHA_JSON=(-j)
OHA_EXTRA=()
"$OHA" --help | grep -q -- '--output-format' && OHA_JSON=(--output-format json)
"$OHA" --help | grep -q -- '--wait-ongoing-requests-after-deadline' && OHA_EXTRA=(--wait-ongoing-requests-after-deadline)
if [ -z "${SLUICE_BIN:-}" ]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
    SLUICE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice
fi
NOFILE=$(ulimit -Hn); [ "$NOFILE" = unlimited ] && NOFILE=65536
ulimit -n "$NOFILE"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "${KEEP_TMP:-0}" = 1 ] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/upstream"
BODY=$(head -c 1024 /dev/zero | tr '\0' a)
cat > "$TMP/upstream/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/upstream/nginx.pid;
daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
       server { listen 127.0.0.1:$UP_PORT; location / { return 200 "$BODY"; } } }
EOF
"$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" &
PIDS+=($!)
{
    # idle_timeout: the idle set is held for the whole run (the default 60 s would close it after a minute).
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nidle_timeout = "1h"\n\n' "$PORT" "$ADMIN_PORT"
    printf '[telemetry]\naccess_log = false\n\n'
    printf '[upstreams.bench]\nendpoints = ["http://127.0.0.1:%s"]\n' "$UP_PORT"
    printf '[[routes]]\nname = "all"\nmatch = { path_prefix = "/" }\nforward = { upstream = "bench" }\n'
} > "$TMP/sluice.toml"
TOKIO_WORKER_THREADS=${WORKERS:-1} "$SLUICE_BIN" run --config "$TMP/sluice.toml" > "$TMP/sluice.log" 2>&1 &
SLUICE=$!; PIDS+=($SLUICE)
wait_http "http://127.0.0.1:$UP_PORT/"
wait_http "http://127.0.0.1:$PORT/"

log "soak: $MINUTES min; oha -q $RATE -c 32 keep-alive, $CHURN churning clients, $IDLE idle connections; Sluice pid $SLUICE"
python3 "$LIB/hold_conns.py" 127.0.0.1 "$PORT" "$IDLE" > "$TMP/hold.out" 2>&1 &
PIDS+=($!)
"$OHA" -z "${SECONDS_TOTAL}s" -q "$RATE" -c 32 --no-tui "${OHA_JSON[@]}" "${OHA_EXTRA[@]}" "http://127.0.0.1:$PORT/" > "$TMP/oha.json" 2>"$TMP/oha.err" &
OHA_PID=$!; PIDS+=($OHA_PID)
python3 "$LIB/churn_conns.py" 127.0.0.1 "$PORT" "$CHURN" "$SECONDS_TOTAL" > "$TMP/churn.out" 2>&1 &
CHURN_PID=$!; PIDS+=($CHURN_PID)

samples=()
for ((t = 10; t <= SECONDS_TOTAL; t += 10)); do
    sleep 10
    r=$(rss_kib "$SLUICE")
    samples+=("$r")
    log "t=${t}s RSS $r KiB, open connections $(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^sluice_open_connections / {print $2}'), parked $(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^sluice_parked_connections / {print $2}')"
done
wait "$OHA_PID" || true
wait "$CHURN_PID" || true
warm=${samples[$(( ${#samples[@]} >= 6 ? 5 : 0 ))]}
end=${samples[-1]}
max=$(printf '%s\n' "${samples[@]}" | sort -n | tail -1)
oha_ok=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sum(v for k, v in d.get('statusCodeDistribution', {}).items() if k.startswith('2')))" "$TMP/oha.json" 2>/dev/null || echo "?")
oha_err=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); e=d.get('errorDistribution', {}); print(sum(e.values()), dict(e) if e else '')" "$TMP/oha.json" 2>/dev/null || echo "?")
echo
echo "soak of $MINUTES min ($(date -u '+%Y-%m-%d %H:%M UTC')): Sluice RSS after 1 min $warm KiB, at the end $end KiB, largest $max KiB;" \
    "growth from minute 1 to the end $((end - warm)) KiB"
echo "steady load: $oha_ok answered 2xx, $oha_err errors (oha -q $RATE -c 32); churn: $(cat "$TMP/churn.out");" \
    "idle holders: $(head -1 "$TMP/hold.out")"

#!/usr/bin/env bash
# Profile Sluice under load with perf (software cpu-clock event: this VM has no hardware counters).
#
#   bench/lib/profile.sh sync  [SECONDS]   forward route, TOKIO_WORKER_THREADS=1 on CPU 0; upstream nginx + wrk on CPU 1
#   bench/lib/profile.sh kafka [SECONDS]   publish route to Kafka (ack = "confirm"), wrk POSTs 1 KiB bodies
#
# Prints `perf report` by module (dso) and by symbol, self time (--no-children). Needs perf and a release build
# (the release profile has line-tables debuginfo). SLUICE_BIN, PORT_BASE (default 28200) and KEEP_TMP=1 as in run.sh.
set -euo pipefail
MODE=${1:-sync}
SECS=${2:-10}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/bench/lib/common.sh"
PORT_BASE=${PORT_BASE:-28200}
UP=$PORT_BASE; LISTEN=$((PORT_BASE + 1)); ADMIN=$((PORT_BASE + 2))
SLUICE_BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-profile.XXXXXX"); chmod 755 "$TMP"
PIDS=()
TOPIC=""
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "$TOPIC" ] && [ -x "$ROOT/bench/clients/target/release/raw-kafka" ] &&
        "$ROOT/bench/clients/target/release/raw-kafka" delete-topic --topic "$TOPIC" >/dev/null 2>&1 || true
    [ "${KEEP_TMP:-0}" = 1 ] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT
cp "$SLUICE_BIN" "$TMP/sluice"

cat > "$TMP/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:$LISTEN"
admin_listen = "127.0.0.1:$ADMIN"

[telemetry]
access_log = false
EOF
if [ "$MODE" = sync ]; then
    body=$(head -c 1024 /dev/zero | tr '\0' 'x')
    mkdir -p "$TMP/up"
    cat > "$TMP/up/nginx.conf" <<EOF
$([ "$(id -u)" -eq 0 ] && echo "user root;")
worker_processes 1; daemon off; pid $TMP/up/nginx.pid; error_log $TMP/up/error.log crit;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $TMP/up/b; proxy_temp_path $TMP/up/p; fastcgi_temp_path $TMP/up/f;
  uwsgi_temp_path $TMP/up/u; scgi_temp_path $TMP/up/s; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { default_type text/plain; return 200 "$body"; } } }
EOF
    taskset -c 1 nginx -p "$TMP/up" -e "$TMP/up/error.log" -c "$TMP/up/nginx.conf" & PIDS+=($!)
    cat >> "$TMP/sluice.toml" <<EOF

[upstreams.bench]
endpoints = ["http://127.0.0.1:$UP"]

[[routes]]
name = "bench"
match = { path_prefix = "/" }
forward = { upstream = "bench" }
EOF
    TOKIO_WORKER_THREADS=1 taskset -c 0 "$TMP/sluice" run --config "$TMP/sluice.toml" >"$TMP/sluice.log" 2>&1 &
    PIDS+=($!); SPID=$!
    wait_http "http://127.0.0.1:$LISTEN/"
    taskset -c 1 wrk -t1 -c64 -d$((SECS + 4))s "http://127.0.0.1:$LISTEN/" > "$TMP/wrk.out" & PIDS+=($!); WRK=$!
else
    TOPIC="sluice-profile-$$"
    "$ROOT/integration/brokers.sh" kafka-topic "$TOPIC" 3 >&2
    cat >> "$TMP/sluice.toml" <<EOF

[brokers.events]
kind = "kafka"
bootstrap = "127.0.0.1:9092"

[[routes]]
name = "k"
match = { path = "/k", methods = ["POST"] }
publish = { broker = "events", topic = "$TOPIC" }
EOF
    printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 1024)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' > "$TMP/post.lua"
    "$TMP/sluice" run --config "$TMP/sluice.toml" >"$TMP/sluice.log" 2>&1 &
    PIDS+=($!); SPID=$!
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/readyz")" = 200 ] && break; sleep 0.1
    done
    wrk -t1 -c64 -d$((SECS + 4))s -s "$TMP/post.lua" "http://127.0.0.1:$LISTEN/k" > "$TMP/wrk.out" & PIDS+=($!); WRK=$!
fi
sleep 2
perf record -q -e cpu-clock -F 1999 -g -p "$SPID" -o "$TMP/perf.data" -- sleep "$SECS" 2>/dev/null
wait "$WRK" || true
grep -E 'Requests/sec|Non-2xx' "$TMP/wrk.out" >&2 || true
echo "== $MODE: self time by module (dso)"
perf report -i "$TMP/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12 || true
echo "== $MODE: self time by symbol"
perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 || true
cp "$TMP/perf.data" "${TMPDIR:-/tmp}/sluice-$MODE.perf.data" && log "perf data: ${TMPDIR:-/tmp}/sluice-$MODE.perf.data"

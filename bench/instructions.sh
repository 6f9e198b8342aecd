#!/usr/bin/env bash
# Instructions per forwarded request, counted by valgrind's callgrind: a measure of the CPU cost of the request
# path that, unlike CPU time, does not move with the machine's load (the quiet-machine figures of forward.sh stay
# the reference; this one lets a change be compared with another build while other work runs).
#
#   bench/instructions.sh BIN [BIN...]    one line per binary: requests counted, instructions, instructions/request
#
# Each binary runs a plain forward route (TOKIO_WORKER_THREADS=1, access log off) in front of an nginx upstream
# answering 100 bytes; wrk -c8 warms it up for 3 s, then callgrind counts for 5 s of load. Batching of wake-ups
# varies a little with timing, so differences under ~2% are noise; compare builds in the same run.
# With OTLP_ENDPOINT=http://host:port set, the route is traced at sample ratio 1.0 and spans go to that collector
# (e.g. one with a `nop` exporter, as bench/forward.sh starts): the cost of tracing, compared with a run without.
# With KAFKA=host:port and TOPIC=name set, the route publishes instead (`ack = "confirm"`: 202 after the delivery
# report) and wrk POSTs 1 KiB bodies: instructions per published message, librdkafka's threads included.
# With KEEP_PROFILES=DIR set, each binary's callgrind output is kept there (DIR/<n>.callgrind, n = its position)
# for callgrind_annotate.
# Needs valgrind, nginx, wrk (installed with apt-get when missing). Ports: PORT_BASE (default 19100)..+2.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,16p' "$0"; exit 2; }
PORT_BASE=${PORT_BASE:-19100}
for tool in valgrind nginx wrk; do
    command -v "$tool" >/dev/null || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tool" >&2; }
done
TMP=$(mktemp -d)
cleanup() { [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
cat >"$TMP/nginx.conf" <<CONF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$PORT_BASE; location / { return 200 "$(printf 'x%.0s' $(seq 100))"; } } }
CONF
nginx -c "$TMP/nginx.conf" -p "$TMP"
TRACE_CONF=""
[ -n "${OTLP_ENDPOINT:-}" ] && TRACE_CONF=$(printf 'otlp_endpoint = "%s"\nsample_ratio = 1.0' "$OTLP_ENDPOINT")
cat >"$TMP/sluice.toml" <<CONF
[server]
listen = "127.0.0.1:$((PORT_BASE + 1))"
admin_listen = "127.0.0.1:$((PORT_BASE + 2))"
[telemetry]
access_log = false
$TRACE_CONF
CONF
WRK_SCRIPT=()
if [ -n "${KAFKA:-}" ]; then
    [ -n "${TOPIC:-}" ] || { echo "KAFKA needs TOPIC (an existing topic)" >&2; exit 2; }
    cat >>"$TMP/sluice.toml" <<CONF
[brokers.bench]
kind = "kafka"
bootstrap = "$KAFKA"
[[routes]]
name = "all"
match = { path_prefix = "/" }
publish = { broker = "bench", topic = "$TOPIC" }
CONF
    printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 1024)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' \
        >"$TMP/post.lua"
    WRK_SCRIPT=(-s "$TMP/post.lua")
else
    cat >>"$TMP/sluice.toml" <<CONF
[upstreams.bench]
endpoints = ["http://127.0.0.1:$PORT_BASE"]
[[routes]]
name = "all"
match = { path_prefix = "/" }
forward = { upstream = "bench" }
CONF
fi
URL=http://127.0.0.1:$((PORT_BASE + 1))/
n=0
for bin in "$@"; do
    n=$((n + 1))
    out=$TMP/callgrind.out
    TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$bin" run --config "$TMP/sluice.toml" >"$TMP/vg.log" 2>&1 &
    vg=$!
    for _ in $(seq 1 100); do curl -s -o /dev/null "$URL" && break; sleep 0.3; done
    wrk -t1 -c8 -d3s "${WRK_SCRIPT[@]}" "$URL" >/dev/null
    callgrind_control -i on "$vg" >/dev/null 2>&1
    requests=$(wrk -t1 -c8 -d5s "${WRK_SCRIPT[@]}" "$URL" | awk '/requests in/ {print $1}')
    callgrind_control -i off "$vg" >/dev/null 2>&1
    callgrind_control -d "$vg" >/dev/null 2>&1
    sleep 1
    kill "$vg"; wait "$vg" 2>/dev/null || true
    ir=$(cat "$out"* | awk '/^(summary|totals):/ {s += $2} END {print s}')
    printf '%s  requests=%s  instructions=%s  per request=%d\n' "$bin" "$requests" "$ir" $((ir / requests))
    [ -n "${KEEP_PROFILES:-}" ] && mkdir -p "$KEEP_PROFILES" && cat "$out"* >"$KEEP_PROFILES/$n.callgrind"
    rm -f "$out"*
done

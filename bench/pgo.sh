#!/usr/bin/env bash
# A profile-guided (PGO) release build of Sluice: an instrumented build is trained on the request path, then the
# binary is built again with the branch and call counts the training recorded (rustc's `-Cprofile-generate` /
# `-Cprofile-use`, the way rustc itself is built).
#
#   bench/pgo.sh [OUT]    writes the trained binary to OUT (default: $CARGO_TARGET_DIR or target, then pgo/sluice)
#
# Training (20 s, 25 s with Kafka): an nginx upstream answering 1 KiB; Sluice with one worker forwards plain HTTP/1.1 GETs
# (wrk -c64, 10 s), 1 KiB POSTs (wrk -c64, 5 s) and HTTP/2 over cleartext (h2load, 5 s); with KAFKA=host:port and
# TOPIC=name (an existing topic) it also publishes 1 KiB POSTs there (`ack = "confirm"`, 5 s). Code the training
# does not run (TLS, RabbitMQ, subscriptions, publishing without KAFKA) is compiled as cold: it may be slower than
# in the plain release build. The plain `cargo build --release` stays the reference build everywhere else.
# Needs nginx, wrk, h2load and curl (installed with apt-get, as root, when missing) and rustup's llvm-tools (added
# when missing). RUSTFLAGS already set are kept. Two release builds: about 11 minutes on 2 cores. Ports: PORT_BASE (default 19200)..+2.
set -euo pipefail
# OUT relative to where the script was called from.
OUT=${1:-}
[ -n "$OUT" ] && OUT=$(realpath -m "$OUT")
cd "$(dirname "$0")/.."
PORT_BASE=${PORT_BASE:-19200}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/pgo/sluice}
HOST=$(rustc -vV | sed -n 's/^host: //p')
for tool in nginx wrk h2load curl; do
    pkg=$tool; [ "$tool" = h2load ] && pkg=nghttp2-client
    command -v "$tool" >/dev/null || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >&2; }
done
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
[ -x "$PROFDATA" ] || rustup component add llvm-tools >&2
TMP=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
log() { echo "[pgo] $*" >&2; }

# --target: build scripts and proc macros stay uninstrumented (they run at build time, not in the gateway).
build() {
    RUSTFLAGS="${RUSTFLAGS:-} $1" cargo build --release --locked --target "$HOST" --bin sluice >&2
}

log "instrumented build"
build "-Cprofile-generate=$TMP/profiles"
cp "$TARGET_DIR/$HOST/release/sluice" "$TMP/sluice-instrumented"

cat >"$TMP/nginx.conf" <<CONF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$PORT_BASE; location / { return 200 "$(head -c 1024 /dev/zero | tr '\0' x)"; } } }
CONF
nginx -c "$TMP/nginx.conf" -p "$TMP"
cat >"$TMP/sluice.toml" <<CONF
[server]
listen = "127.0.0.1:$((PORT_BASE + 1))"
admin_listen = "127.0.0.1:$((PORT_BASE + 2))"
[telemetry]
access_log = false
CONF
if [ -n "${KAFKA:-}" ]; then
    [ -n "${TOPIC:-}" ] || { echo "KAFKA needs TOPIC (an existing topic)" >&2; exit 2; }
    # Before the forward route, which takes every path.
    cat >>"$TMP/sluice.toml" <<CONF
[brokers.bench]
kind = "kafka"
bootstrap = "$KAFKA"
[[routes]]
name = "publish"
match = { path_prefix = "/publish" }
publish = { broker = "bench", topic = "$TOPIC" }
CONF
fi
cat >>"$TMP/sluice.toml" <<CONF
[upstreams.bench]
endpoints = ["http://127.0.0.1:$PORT_BASE"]
[[routes]]
name = "forward"
match = { path_prefix = "/" }
forward = { upstream = "bench" }
CONF
printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 1024)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' \
    >"$TMP/post.lua"
URL=http://127.0.0.1:$((PORT_BASE + 1))
log "training"
TOKIO_WORKER_THREADS=1 "$TMP/sluice-instrumented" run --config "$TMP/sluice.toml" >"$TMP/sluice.log" 2>&1 &
pid=$!
ready=0
for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    curl -s -o /dev/null "$URL/" && { ready=1; break; }
    sleep 0.2
done
[ "$ready" = 1 ] || { cat "$TMP/sluice.log" >&2; echo "the instrumented build did not start (port in use?)" >&2; exit 1; }
wrk -t1 -c64 -d10s "$URL/" >/dev/null
wrk -t1 -c64 -d5s -s "$TMP/post.lua" "$URL/" >/dev/null
h2load -c16 -m8 -D5 "$URL/" >/dev/null
[ -n "${KAFKA:-}" ] && wrk -t1 -c64 -d5s -s "$TMP/post.lua" "$URL/publish" >/dev/null
# The profile is written when the process exits: SIGTERM, then its drain.
kill -TERM "$pid"
wait "$pid" || true
pid=
ls "$TMP"/profiles/*.profraw >/dev/null 2>&1 || { cat "$TMP/sluice.log" >&2; echo "no profile written" >&2; exit 1; }
"$PROFDATA" merge -o "$TMP/merged.profdata" "$TMP"/profiles

log "optimised build"
build "-Cprofile-use=$TMP/merged.profdata"
mkdir -p "$(dirname "$OUT")"
cp "$TARGET_DIR/$HOST/release/sluice" "$OUT"
log "done: $OUT"

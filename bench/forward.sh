#!/usr/bin/env bash
# Sluice vs nginx: plain HTTP/1.1 forwarding of 1 KiB responses over keep-alive connections.
#
#   bench/forward.sh            5 interleaved repetitions of 10 s per system (about 3 minutes)
#   bench/forward.sh --quick    1 repetition of 3 s per system (smoke check)
#   bench/forward.sh --traced   also sluice-traced (below); combines with --quick
#   bench/forward.sh --auth     also sluice-jwt, sluice-post and sluice-verify (below); combines with the others
#
# Systems under test, all in front of the same upstream (an nginx instance answering `return 200` with a
# fixed 1 KiB body):
#   nginx              nginx as reverse proxy, 1 worker, HTTP/1.1 + `keepalive 64` to the upstream
#   sluice             target/release/sluice, TOKIO_WORKER_THREADS=1, plain forward route
#   sluice-resilience  the same with retry (max_retries 2 on connect-failure,5xx) and outlier ejection set
#                      explicitly (rate limit off)
#   sluice-base        only when SLUICE_BASE_BIN is set: the same plain route and config as `sluice`, run by that
#                      (older) binary, e.g. a build from before a change, to compare CPU µs/request
#   sluice-traced      only with --traced or OTLP_ENDPOINT: the plain route with `[telemetry] otlp_endpoint` and
#                      `sample_ratio = 1.0`, every span exported over OTLP/gRPC to a real OpenTelemetry Collector:
#                      by default a private one this script starts (the binary `integration/otel.sh build` prints,
#                      or OTELCOL_BIN), pinned to CPU $OTEL_CPU, that decodes every span, counts it in its own
#                      metrics (read before and after each run) and discards it; with OTLP_ENDPOINT=http://host:port, that
#                      collector instead (a local one is pinned to CPU $OTEL_CPU for the run, and its affinity
#                      restored on exit; set OTLP_SPANS to its spans file to have spans counted)
#                      With --traced, sluice and sluice-traced are also run side by side at one fixed rate (oha -q,
#                      open loop; EQUAL_RATE, default EQUAL_FRACTION (0.6) of sluice-traced's median rate), so that
#                      their CPU µs/request compare at the same load: as fast as it goes, sluice-traced shares the
#                      load CPU with the collector and runs unsaturated (fewer requests per wake-up), which costs CPU
#                      per request that is not tracing's. Both figures are printed. OTEL_CPU (default $LOAD_CPU) places
#                      the collector: OTEL_CPU=$PROXY_CPU puts it beside the proxy instead, so that the load side keeps
#                      every proxy saturated and the collector's work (and its wake-ups, which interrupt Sluice)
#                      lands on the proxy's CPU, not counted in its CPU time but costing it cache and preemptions.
#   sluice-jwt         only with --auth: the plain route with `auth = { jwt = { secret_env } }` (HS256; AUTH_ALG=RS256
#                      or ES256: a jwks_file and a key pair made with the tests' Python venv), every
#                      request carrying a valid bearer token (wrk -H); compared with `sluice` (no token)
#   sluice-post        only with --auth: `sluice` itself, loaded with POSTs of a 1 KiB JSON body signed the way
#                      GitHub signs webhooks (X-Hub-Signature-256), which its plain route forwards unchecked
#   sluice-verify      only with --auth: the plain route with `verify = { scheme = "github" }`, the same POSTs:
#                      each signature is checked over the raw body; compared with sluice-post
#
# CPU placement (2 cores): the proxy under test on CPU $PROXY_CPU (default 0), the upstream and the load
# generator (wrk, 1 thread) on CPU $LOAD_CPU (default 1). A "direct" run (wrk straight to the upstream, both on
# CPU $LOAD_CPU) shows the ceiling of that side: a proxy figure close to it means the load side, not the proxy,
# was the bottleneck. The proxy's CPU use during each run (from /proc) is printed too.
#
# Environment knobs: REPS, DURATION (seconds), WARMUP (seconds), CONNS (wrk -c), PORT_BASE (default 18000;
# uses PORT_BASE..PORT_BASE+7 and PORT_BASE+1901..+1904), PROXY_CPU, LOAD_CPU, OTEL_CPU, SLUICE_BIN (skip the build),
# SLUICE_BASE_BIN, OTLP_ENDPOINT, OTLP_SPANS, OTELCOL_BIN, KEEP_TMP=1 (keep the temp dir with configs and logs).
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
        --traced) TRACED=1 ;;
        --auth) AUTH=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument: $arg (use --quick, --traced, --auth)" >&2; exit 2 ;;
    esac
done
[ -n "${OTLP_ENDPOINT:-}" ] && TRACED=1
TRACED=${TRACED:-0}
EQUAL_REPS=${EQUAL_REPS:-$REPS}
EQUAL_FRACTION=${EQUAL_FRACTION:-0.6}
AUTH=${AUTH:-0}
AUTH_ALG=${AUTH_ALG:-HS256}
case $AUTH_ALG in HS256|RS256|ES256) ;; *) echo "AUTH_ALG must be HS256, RS256 or ES256" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT_BASE=${PORT_BASE:-18000}
UPSTREAM_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
SLUICE_PORT=$((PORT_BASE + 2))
SLUICE_RES_PORT=$((PORT_BASE + 3))
SLUICE_BASE_PORT=$((PORT_BASE + 4))
SLUICE_TRACED_PORT=$((PORT_BASE + 5))
OTEL_PORT=$((PORT_BASE + 6))   # the private collector's OTLP/gRPC receiver
OTEL_METRICS_PORT=$((PORT_BASE + 7))   # its own metrics (Prometheus), where the spans it accepted are counted
SLUICE_ADMIN=$((PORT_BASE + 1901))
SLUICE_RES_ADMIN=$((PORT_BASE + 1902))
SLUICE_BASE_ADMIN=$((PORT_BASE + 1903))
SLUICE_TRACED_ADMIN=$((PORT_BASE + 1904))
SLUICE_JWT_PORT=$((PORT_BASE + 8))
SLUICE_VERIFY_PORT=$((PORT_BASE + 9))
SLUICE_JWT_ADMIN=$((PORT_BASE + 1905))
SLUICE_VERIFY_ADMIN=$((PORT_BASE + 1906))
PORTS=($UPSTREAM_PORT $NGINX_PORT $SLUICE_PORT $SLUICE_RES_PORT $SLUICE_ADMIN $SLUICE_RES_ADMIN)
[ -n "${SLUICE_BASE_BIN:-}" ] && PORTS+=($SLUICE_BASE_PORT $SLUICE_BASE_ADMIN)
[ "$TRACED" = 1 ] && PORTS+=($SLUICE_TRACED_PORT $SLUICE_TRACED_ADMIN)
[ "$TRACED" = 1 ] && [ -z "${OTLP_ENDPOINT:-}" ] && PORTS+=($OTEL_PORT $OTEL_METRICS_PORT)
[ "$AUTH" = 1 ] && PORTS+=($SLUICE_JWT_PORT $SLUICE_VERIFY_PORT $SLUICE_JWT_ADMIN $SLUICE_VERIFY_ADMIN)
for p in "${PORTS[@]}"; do
    case $p in 5672|9092|9093) echo "port $p is reserved for the brokers; pick another PORT_BASE" >&2; exit 2 ;; esac
done

NCPU=$(nproc)
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OTEL_CPU=${OTEL_CPU:-$LOAD_CPU}
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_PROXY=(taskset -c "$PROXY_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
    PIN_OTEL=(taskset -c "$OTEL_CPU")
else
    echo "note: fewer than 2 CPUs or no taskset: not pinning" >&2
    PIN_PROXY=(); PIN_LOAD=(); PIN_OTEL=()
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
OHA=$(command -v oha || true)
[ -z "$OHA" ] && [ -x "$HOME/.cargo/bin/oha" ] && OHA=$HOME/.cargo/bin/oha
if [ -z "$OHA" ] && [ "$TRACED" = 1 ]; then
    log "installing oha (cargo install oha --locked; a few minutes, once)"
    cargo install oha --locked --quiet
    OHA=$HOME/.cargo/bin/oha
fi

if [ -z "${SLUICE_BIN:-}" ]; then
    log "cargo build --release (waits for the cargo lock if someone else is building)"
    (cd "$ROOT" && cargo build --release --quiet)
    SLUICE_BIN=$ROOT/target/release/sluice
fi
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN" >&2; exit 1; }
if [ -n "${SLUICE_BASE_BIN:-}" ]; then
    [ -x "$SLUICE_BASE_BIN" ] || { echo "no sluice binary at SLUICE_BASE_BIN=$SLUICE_BASE_BIN" >&2; exit 1; }
fi
if [ "$TRACED" = 1 ] && [ -z "${OTLP_ENDPOINT:-}" ] && [ -z "${OTELCOL_BIN:-}" ]; then
    log "finding (or building) the OpenTelemetry Collector: integration/otel.sh build"
    OTELCOL_BIN=$("$ROOT/integration/otel.sh" build)
fi

for p in "${PORTS[@]}"; do
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
    # An external collector pinned for the run gets its CPU affinity back.
    [ -n "${OTEL_AFFINITY:-}" ] && taskset -apc "$OTEL_AFFINITY" "$OTEL_PID" >/dev/null 2>&1 || true
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
if [ -n "${SLUICE_BASE_BIN:-}" ]; then cp "$SLUICE_BASE_BIN" "$TMP/sluice-base"; SLUICE_BASE_BIN=$TMP/sluice-base; fi

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
# sluice-base: the plain config on its own ports (it must stay valid for an older binary: no newer keys).
sed -e "s/:$SLUICE_PORT\"/:$SLUICE_BASE_PORT\"/; s/:$SLUICE_ADMIN\"/:$SLUICE_BASE_ADMIN\"/" "$TMP/sluice.toml" \
    > "$TMP/sluice-base.toml"
# sluice-traced: the plain config plus OTLP export of every span.
OTLP_URL=${OTLP_ENDPOINT:-http://127.0.0.1:$OTEL_PORT}
sed -e "s/:$SLUICE_PORT\"/:$SLUICE_TRACED_PORT\"/; s/:$SLUICE_ADMIN\"/:$SLUICE_TRACED_ADMIN\"/" \
    -e "s|^access_log = false\$|access_log = false\notlp_endpoint = \"$OTLP_URL\"\nsample_ratio = 1.0|" \
    "$TMP/sluice.toml" > "$TMP/sluice-traced.toml"
grep -q '^sample_ratio = 1.0$' "$TMP/sluice-traced.toml" || { echo "could not write sluice-traced.toml" >&2; exit 1; }
"$SLUICE_BIN" check "$TMP/sluice.toml" >/dev/null
"$SLUICE_BIN" check "$TMP/sluice-resilience.toml" >/dev/null
[ -n "${SLUICE_BASE_BIN:-}" ] && "$SLUICE_BASE_BIN" check "$TMP/sluice-base.toml" >/dev/null
[ "$TRACED" = 1 ] && "$SLUICE_BIN" check "$TMP/sluice-traced.toml" >/dev/null
if [ "$AUTH" = 1 ]; then
    # sluice-jwt and sluice-verify: the plain config plus the route's `auth` / `verify`; a token and signed POSTs
    # made here with the same secrets (HS256 and HMAC-SHA256, Python's standard library).
    export BENCH_JWT_SECRET=bench-jwt-secret-of-at-least-32-bytes BENCH_WEBHOOK_SECRET=bench-webhook-secret
    if [ "$AUTH_ALG" = HS256 ]; then
        JWT_KEYS='secret_env = "BENCH_JWT_SECRET"'
    else
        # A public-key algorithm: a key pair and its JWKS made with the `cryptography` and PyJWT of the tests' venv.
        JWT_KEYS="jwks_file = \"$TMP/jwks.json\""
    fi
    sed -e "s/:$SLUICE_PORT\"/:$SLUICE_JWT_PORT\"/; s/:$SLUICE_ADMIN\"/:$SLUICE_JWT_ADMIN\"/" \
        -e "s|^forward = { upstream = \"bench\" }\$|&\nauth = { jwt = { $JWT_KEYS } }|" \
        "$TMP/sluice.toml" > "$TMP/sluice-jwt.toml"
    sed -e "s/:$SLUICE_PORT\"/:$SLUICE_VERIFY_PORT\"/; s/:$SLUICE_ADMIN\"/:$SLUICE_VERIFY_ADMIN\"/" \
        -e 's/^forward = { upstream = "bench" }$/&\nverify = { scheme = "github", secret_env = "BENCH_WEBHOOK_SECRET" }/' \
        "$TMP/sluice.toml" > "$TMP/sluice-verify.toml"
    grep -q '^auth = ' "$TMP/sluice-jwt.toml" && grep -q '^verify = ' "$TMP/sluice-verify.toml" ||
        { echo "could not write sluice-jwt.toml / sluice-verify.toml" >&2; exit 1; }
    "$SLUICE_BIN" check "$TMP/sluice-verify.toml" >/dev/null
    if [ "$AUTH_ALG" != HS256 ]; then
        PY_BIN=$("$ROOT/integration/pyenv.sh" | tail -n1)
        JWT=$("$PY_BIN" - "$AUTH_ALG" "$TMP/jwks.json" <<'PY'
import json, sys, time
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
alg, path = sys.argv[1], sys.argv[2]
key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg.startswith("RS") else ec.generate_private_key(ec.SECP256R1())
public = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
public.update(kid="bench", alg=alg, use="sig")
json.dump({"keys": [public]}, open(path, "w"))
now = int(time.time())
print(jwt.encode({"sub": "bench-client", "iss": "https://issuer.example", "scope": "orders:write", "iat": now,
                  "exp": now + 86400}, key, algorithm=alg, headers={"kid": "bench"}))
PY
)
    fi
    "$SLUICE_BIN" check "$TMP/sluice-jwt.toml" >/dev/null
    [ "$AUTH_ALG" = HS256 ] && JWT=$(python3 -c 'import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "bench-client", "iss": "https://issuer.example", "scope": "orders:write",
                         "iat": int(time.time()), "exp": int(time.time()) + 86400}).encode())
signed = head + b"." + claims
sig = hmac.new(os.environ["BENCH_JWT_SECRET"].encode(), signed, hashlib.sha256).digest()
print((signed + b"." + b64(sig)).decode())')
    python3 - "$TMP/post.lua" <<'PY'
import hashlib, hmac, json, os, sys
body = json.dumps({"event": "push", "data": "x" * 1000}).encode()
sig = hmac.new(os.environ["BENCH_WEBHOOK_SECRET"].encode(), body, hashlib.sha256).hexdigest()
open(sys.argv[1].replace(".lua", ".body"), "wb").write(body)
open(sys.argv[1].replace(".lua", ".sig"), "w").write(sig)
with open(sys.argv[1], "w") as f:
    f.write('wrk.method = "POST"\nwrk.body = %s\n' % json.dumps(body.decode()))
    f.write('wrk.headers["Content-Type"] = "application/json"\n')
    f.write('wrk.headers["X-Hub-Signature-256"] = "sha256=%s"\n' % sig)
PY
fi

# The private collector: OTLP/gRPC in (127.0.0.1 only), every span appended to a JSON lines file (append, so that
# truncating it between runs is safe), no telemetry server of its own.
OTEL_SPANS=${OTLP_SPANS:-}
PRIVATE_OTEL=0
if [ "$TRACED" = 1 ] && [ -z "${OTLP_ENDPOINT:-}" ]; then
    # The private collector decodes every span (OTLP/gRPC in) and counts it in its own metrics, then discards it
    # (the nop exporter): marshalling ~90k spans/s to JSON lines took so much of the load CPU that the load
    # generator, not Sluice, set the traced run's pace (Sluice then idled ~25% of the time, which inflates its
    # µs/request).
    PRIVATE_OTEL=1
    mkdir -p "$TMP/otel"
    cat > "$TMP/otel/config.yaml" <<EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$OTEL_PORT
exporters:
  nop:
service:
  telemetry:
    metrics:
      level: basic
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: $OTEL_METRICS_PORT
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [nop]
EOF
fi

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
if [ -n "${SLUICE_BASE_BIN:-}" ]; then
    TOKIO_WORKER_THREADS=1 "${PIN_PROXY[@]}" "$SLUICE_BASE_BIN" run --config "$TMP/sluice-base.toml" \
        >"$TMP/sluice-base.log" 2>&1 &
    PIDS+=($!); SLUICE_BASE_PID=$!
fi
if [ "$TRACED" = 1 ]; then
    if [ -z "${OTLP_ENDPOINT:-}" ]; then
        # The collector works on the load side's CPU unless OTEL_CPU says otherwise.
        "${PIN_OTEL[@]}" "$OTELCOL_BIN" --config "file:$TMP/otel/config.yaml" >"$TMP/otel/otelcol.log" 2>&1 &
        PIDS+=($!); OTEL_PID=$!
    else
        # An external collector: pin it (all threads) to the load CPU for the run when its process can be found.
        otel_port=${OTLP_ENDPOINT##*:}; otel_port=${otel_port%%/*}
        OTEL_PID=$(ss -ltnpH "sport = :$otel_port" | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true)
        if [ -n "$OTEL_PID" ] && [ ${#PIN_OTEL[@]} -gt 0 ]; then
            OTEL_AFFINITY=$(taskset -pc "$OTEL_PID" | awk -F': ' '{print $2}')
            taskset -apc "$OTEL_CPU" "$OTEL_PID" >/dev/null
            log "collector at $OTLP_ENDPOINT (pid $OTEL_PID): pinned to CPU $OTEL_CPU for the run (was $OTEL_AFFINITY)"
        else
            log "WARNING: could not find the process of the collector at $OTLP_ENDPOINT: not pinned"
        fi
    fi
    for _ in $(seq 100); do ss -ltnH "sport = :${OTLP_URL##*:}" | grep -q . && break; sleep 0.1; done
    ss -ltnH "sport = :${OTLP_URL##*:}" | grep -q . || { echo "no collector listening at $OTLP_URL" >&2; exit 1; }
    TOKIO_WORKER_THREADS=1 "${PIN_PROXY[@]}" "$SLUICE_BIN" run --config "$TMP/sluice-traced.toml" \
        >"$TMP/sluice-traced.log" 2>&1 &
    PIDS+=($!); SLUICE_TRACED_PID=$!
fi

if [ "$AUTH" = 1 ]; then
    TOKIO_WORKER_THREADS=1 "${PIN_PROXY[@]}" "$SLUICE_BIN" run --config "$TMP/sluice-jwt.toml" >"$TMP/sluice-jwt.log" 2>&1 &
    PIDS+=($!); SLUICE_JWT_PID=$!
    TOKIO_WORKER_THREADS=1 "${PIN_PROXY[@]}" "$SLUICE_BIN" run --config "$TMP/sluice-verify.toml" \
        >"$TMP/sluice-verify.log" 2>&1 &
    PIDS+=($!); SLUICE_VERIFY_PID=$!
fi

wait_http "http://127.0.0.1:$UPSTREAM_PORT/"
wait_http "http://127.0.0.1:$NGINX_PORT/"
wait_http "http://127.0.0.1:$SLUICE_PORT/"
wait_http "http://127.0.0.1:$SLUICE_RES_PORT/"
[ -n "${SLUICE_BASE_BIN:-}" ] && wait_http "http://127.0.0.1:$SLUICE_BASE_PORT/"
[ "$TRACED" = 1 ] && wait_http "http://127.0.0.1:$SLUICE_TRACED_PORT/"
if [ "$AUTH" = 1 ]; then
    # Only requests with the token (the signature) are answered 200; without them, 401.
    wait_http "http://127.0.0.1:$SLUICE_JWT_PORT/" -H "Authorization: Bearer $JWT"
    wait_http "http://127.0.0.1:$SLUICE_VERIFY_PORT/" --data-binary "@$TMP/post.body" -H "Content-Type: application/json" \
        -H "X-Hub-Signature-256: sha256=$(cat "$TMP/post.sig")"
fi

# ---------------------------------------------------------------------------------------------- measure
PROXIES=(nginx sluice sluice-resilience)
declare -A URL=(
    [direct]="http://127.0.0.1:$UPSTREAM_PORT/"
    [nginx]="http://127.0.0.1:$NGINX_PORT/"
    [sluice]="http://127.0.0.1:$SLUICE_PORT/"
    [sluice-resilience]="http://127.0.0.1:$SLUICE_RES_PORT/"
)
declare -A PROC=([direct]=$UPSTREAM_PID [nginx]=$NGINX_PID [sluice]=$SLUICE_PID [sluice-resilience]=$SLUICE_RES_PID)
declare -A WRK_ARGS=()   # extra wrk arguments of a system (headers, a Lua script)
if [ -n "${SLUICE_BASE_BIN:-}" ]; then
    PROXIES+=(sluice-base); URL[sluice-base]="http://127.0.0.1:$SLUICE_BASE_PORT/"; PROC[sluice-base]=$SLUICE_BASE_PID
fi
if [ "$TRACED" = 1 ]; then
    PROXIES+=(sluice-traced); URL[sluice-traced]="http://127.0.0.1:$SLUICE_TRACED_PORT/"
    PROC[sluice-traced]=$SLUICE_TRACED_PID
fi
if [ "$AUTH" = 1 ]; then
    PROXIES+=(sluice-jwt sluice-post sluice-verify)
    URL[sluice-jwt]="http://127.0.0.1:$SLUICE_JWT_PORT/"; PROC[sluice-jwt]=$SLUICE_JWT_PID
    WRK_ARGS[sluice-jwt]="-H|Authorization: Bearer $JWT"
    URL[sluice-post]=${URL[sluice]}; PROC[sluice-post]=$SLUICE_PID; WRK_ARGS[sluice-post]="-s|$TMP/post.lua"
    URL[sluice-verify]="http://127.0.0.1:$SLUICE_VERIFY_PORT/"; PROC[sluice-verify]=$SLUICE_VERIFY_PID
    WRK_ARGS[sluice-verify]="-s|$TMP/post.lua"
fi
NAMES=(direct "${PROXIES[@]}")
wrk_args() {   # the extra wrk arguments of system $1, one per line
    [ -n "${WRK_ARGS[$1]:-}" ] && tr '|' '\n' <<<"${WRK_ARGS[$1]}" || true
}
declare -A RPS CPU USPR OTHER ERRS
SPANS_GOT="" SPANS_DROPPED="" SPANS_REQS=""
CLK_TCK=$(getconf CLK_TCK)

spans_dropped() {   # sluice-traced's count of spans its export queue dropped
    curl -s "http://127.0.0.1:$SLUICE_TRACED_ADMIN/metrics" | awk '/^sluice_trace_spans_dropped_total / {print $2}'
}
collector_spans() {   # spans the private collector accepted so far (its own metric), or the size of OTLP_SPANS
    if [ "$PRIVATE_OTEL" = 1 ]; then
        curl -s "http://127.0.0.1:$OTEL_METRICS_PORT/metrics" |
            awk '/^otelcol_receiver_accepted_spans/ {n += $NF} END {printf "%.0f\n", n}'
    elif [ -n "$OTEL_SPANS" ]; then
        stat -c %s "$OTEL_SPANS" 2>/dev/null || echo 0
    else
        echo 0
    fi
}
spans_settle() {    # waits until the collector's count stops growing (Sluice's export queue and the collector drained)
    local before after
    [ "$PRIVATE_OTEL" = 1 ] || [ -n "$OTEL_SPANS" ] || { sleep 1; return; }
    after=$(collector_spans)
    for _ in $(seq 60); do
        sleep 0.5
        before=$after; after=$(collector_spans)
        [ "$after" = "$before" ] && return 0
    done
    return 0
}

run_wrk() {   # $1 = name, $2 = seconds[, $3 = a fixed rate, req/s]; sets LAST_RPS, records requests/s, CPU figures
    # and errors (under the key `name`, or `name@rate` at a fixed rate: oha -q, open loop, instead of wrk)
    local name=$1 secs=$2 rate=${3:-} key=$1${3:+@rate} out t0 t1 t2 b0 b1 w0 w1 el rps reqs errs d0 d1 got off=0 extra
    if [ "$name" = sluice-traced ]; then
        # Nothing of the warm-up (or of the previous run) still queued; the private collector's file starts empty
        # (an external collector's file is not ours to truncate: only what is appended after `off` is counted).
        spans_settle
        off=$(collector_spans)
        d0=$(spans_dropped)
    fi
    t0=$(cpu_ticks "${PROC[$name]}"); b0=$(cpu_busy "$PROXY_CPU"); w0=$(date +%s%N)
    if [ -n "$rate" ]; then
        out=$("${PIN_LOAD[@]}" "$OHA" --no-tui --output-format json -z "${secs}s" -c "$CONNS" -q "$rate" "${URL[$name]}" 2>&1 |
            python3 -c 'import json, sys
d = json.load(sys.stdin); codes = d["statusCodeDistribution"]; ok = codes.get("200", 0)
errs = sum(codes.values()) - ok + sum(n for e, n in d["errorDistribution"].items() if "deadline" not in e)
print("Requests/sec: %.2f" % d["summary"]["requestsPerSec"]); print("%d requests in" % ok); print("Non-2xx %d" % errs)')
    else
        mapfile -t extra < <(wrk_args "$name")
        out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${secs}s" "${extra[@]}" "${URL[$name]}" 2>&1)
    fi
    t1=$(cpu_ticks "${PROC[$name]}"); b1=$(cpu_busy "$PROXY_CPU"); w1=$(date +%s%N)
    el=$(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')   # seconds between the readings
    # sluice-traced: the CPU time per request is read once its export queue has drained, so that exporting the
    # spans of the run's last requests is counted too (CPU % and other load stay those of the load period).
    t2=$t1
    if [ "$name" = sluice-traced ]; then spans_settle; t2=$(cpu_ticks "${PROC[$name]}"); fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
    [ -n "$rps" ] && [ -n "$reqs" ] || { echo "wrk failed for $name:" >&2; echo "$out" >&2; exit 1; }
    RPS[$key]+="$rps "
    # CPU % of the process under test (100 = one full CPU), its CPU time per request in microseconds, and the
    # share of the proxy's CPU that something else (other processes on the machine) used meanwhile.
    CPU[$key]+="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$el" 'BEGIN {printf "%.0f", 100 * d / hz / s}') "
    USPR[$key]+="$(awk -v d=$((t2 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", 1e6 * d / hz / n}') "
    OTHER[$key]+="$(awk -v b=$((b1 - b0)) -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$el" -v own="$name" \
        'BEGIN {o = (own == "direct") ? b : b - d; if (o < 0) o = 0; printf "%.0f", 100 * o / hz / s}') "
    ERRS[$key]=$(( ${ERRS[$key]:-0} + errs ))
    if [ "$key" = sluice-traced ]; then
        # What reached the collector: spans in its file (SERVER + CLIENT per request, so about 2 per request),
        # and what Sluice dropped because its export queue was full (a dropped span costs less than an exported one).
        d1=$(spans_dropped)
        got=-
        if [ "$PRIVATE_OTEL" = 1 ]; then
            got=$(( $(collector_spans) - off ))
        elif [ -n "$OTEL_SPANS" ]; then
            got=$(tail -c +$((off + 1)) "$OTEL_SPANS" | { grep -ao '"spanId"' || true; } | wc -l)
        fi
        SPANS_GOT+="$got "; SPANS_DROPPED+="$(( ${d1:-0} - ${d0:-0} )) "; SPANS_REQS+="$reqs "
        LAST_SPANS="spans at the collector $got, dropped by Sluice $(( ${d1:-0} - ${d0:-0} )) ($reqs requests)"
    fi
    LAST_RPS=$rps
}

tail_word() { local w=($1); echo "${w[-1]}"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
minmax() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s–%s", lo, hi}'; }

log "machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
log "pinning: proxy on CPU ${PIN_PROXY[2]:-any}, upstream + wrk on CPU ${PIN_LOAD[2]:-any}$([ "$TRACED" = 1 ] && echo ", collector on CPU ${PIN_OTEL[2]:-any}"); wrk -t1 -c$CONNS -d${DURATION}s"
log "warm-up ${WARMUP}s each"
for name in "${NAMES[@]}"; do
    mapfile -t extra < <(wrk_args "$name")
    "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${extra[@]}" "${URL[$name]}" >/dev/null
done
# The direct baseline is measured once: it only shows the load side's ceiling.
run_wrk direct "$DURATION"
log "       $(printf '%-18s' direct) $(printf '%9.0f' "$LAST_RPS") req/s  upstream CPU $(tail_word "${CPU[direct]}")%  other load on CPU $PROXY_CPU: $(tail_word "${OTHER[direct]}")%"
NP=${#PROXIES[@]}
for rep in $(seq "$REPS"); do
    # Interleaved, and the order rotates each repetition (A B C, B C A, C A B, ...) so no system always
    # follows the same neighbour.
    for k in $(seq 0 $((NP - 1))); do
        name=${PROXIES[$(( (rep - 1 + k) % NP ))]}
        run_wrk "$name" "$DURATION"
        log "rep $rep/$REPS  $(printf '%-18s' "$name") $(printf '%9.0f' "$LAST_RPS") req/s  CPU $(tail_word "${CPU[$name]}")%  $(tail_word "${USPR[$name]}") µs/req  other load on CPU $PROXY_CPU: $(tail_word "${OTHER[$name]}")%"
        [ "$name" = sluice-traced ] && log "                                $LAST_SPANS"
    done
done

if [ "$TRACED" = 1 ]; then
    # The same load for both: a fixed rate below what sluice-traced reached as fast as it goes.
    # 60%: at 80% the load CPU (oha, heavier than wrk, beside the upstream and the collector) sometimes could not
    # send the rate during sluice-traced's runs, which then ran at a lower rate than its pair.
    EQUAL_RATE=${EQUAL_RATE:-$(median <<<"${RPS[sluice-traced]}" | awk -v f="$EQUAL_FRACTION" '{printf "%.0f", $1 * f}')}
    log "equal rate: sluice and sluice-traced at $EQUAL_RATE req/s (oha -q, open loop), $EQUAL_REPS pairs"
    for rep in $(seq "$EQUAL_REPS"); do
        for name in sluice sluice-traced; do
            [ $((rep % 2)) = 0 ] && name=$([ "$name" = sluice ] && echo sluice-traced || echo sluice)
            run_wrk "$name" "$DURATION" "$EQUAL_RATE"
            log "rep $rep/$EQUAL_REPS  $(printf '%-18s' "$name@rate") $(printf '%9.0f' "$LAST_RPS") req/s  CPU $(tail_word "${CPU[$name@rate]}")%  $(tail_word "${USPR[$name@rate]}") µs/req  other load on CPU $PROXY_CPU: $(tail_word "${OTHER[$name@rate]}")%"
        done
    done
    NAMES+=(sluice@rate sluice-traced@rate)
fi

# ---------------------------------------------------------------------------------------------- report
declare -A MED MEDUS
echo
echo "| system | median req/s | min–max req/s | CPU % of the process (median) | CPU µs/request (median) | other load on CPU $PROXY_CPU % (median) | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for name in "${NAMES[@]}"; do
    MED[$name]=$(median <<<"${RPS[$name]}")
    MEDUS[$name]=$(median <<<"${USPR[$name]}")
    case $name in
        direct) label="direct (no proxy; the upstream's CPU)" ;;
        *@rate) label="${name%@rate} at $EQUAL_RATE req/s" ;;
        *) label=$name ;;
    esac
    printf '| %s | %.0f | %s | %s | %s | %s | %s |\n' "$label" "${MED[$name]}" "$(minmax <<<"${RPS[$name]}")" \
        "$(median <<<"${CPU[$name]}")" "${MEDUS[$name]}" "$(median <<<"${OTHER[$name]}")" "${ERRS[$name]}"
done
busy=$(for name in "${PROXIES[@]}"; do echo "${OTHER[$name]}"; done | median)
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
if [ -n "${SLUICE_BASE_BIN:-}" ]; then
    awk -v s="${MED[sluice]}" -v b="${MED[sluice-base]}" -v us="${MEDUS[sluice]}" -v ub="${MEDUS[sluice-base]}" 'BEGIN {
        r = us / ub
        printf "throughput ratio sluice/sluice-base:       %.3f\n", s / b
        printf "CPU µs/request ratio sluice/sluice-base:   %.3f   (target 0.98–1.02: %s)\n", r,
            (r >= 0.98 && r <= 1.02) ? "met" : "NOT met"
    }'
fi
if [ "$TRACED" = 1 ]; then
    awk -v s="${MED[sluice]}" -v t="${MED[sluice-traced]}" -v us="${MEDUS[sluice]}" -v ut="${MEDUS[sluice-traced]}" 'BEGIN {
        r = ut / us
        printf "throughput ratio sluice-traced/sluice:     %.3f\n", t / s
        printf "CPU µs/request ratio sluice-traced/sluice: %.3f   (target <= 1.10: %s)\n", r, (r <= 1.10) ? "met" : "NOT met"
    }'
    awk -v us="${MEDUS[sluice@rate]}" -v ut="${MEDUS[sluice-traced@rate]}" -v rate="$EQUAL_RATE" 'BEGIN {
        r = ut / us
        printf "CPU µs/request ratio sluice-traced/sluice at the same %s req/s: %.3f   (target <= 1.10: %s)\n", rate, r,
            (r <= 1.10) ? "met" : "NOT met"
    }'
    # The pairs run back to back, so a slow spell of the machine weighs on both runs of a pair: the median of the
    # ratios within pairs moves less than the ratio of two medians.
    # A pair counts only when both of its runs reached the rate (within 2%): a run the load side could not drive
    # at the rate is not at the same load as its pair.
    paired=$(awk -v a="${USPR[sluice@rate]}" -v b="${USPR[sluice-traced@rate]}" -v ra="${RPS[sluice@rate]}" \
        -v rb="${RPS[sluice-traced@rate]}" -v rate="$EQUAL_RATE" 'BEGIN {
        n = split(a, A, " "); split(b, B, " "); split(ra, RA, " "); split(rb, RB, " ")
        for (i = 1; i <= n; i++) printf "%.4f%s ", B[i] / A[i], (RA[i] < 0.98 * rate || RB[i] < 0.98 * rate) ? "(short)" : "" }')
    echo "  per pair (sluice-traced/sluice, in run order; (short): a run below the rate, not counted): $paired"
    kept=$(tr ' ' '\n' <<<"$paired" | { grep -v short || true; } | tr '\n' ' ')
    if [ -n "${kept// /}" ]; then
        awk -v r="$(median <<<"$kept")" -v n="$(wc -w <<<"$kept")" 'BEGIN {
            printf "  median of the per-pair ratios (%d pairs): %.3f   (target <= 1.10: %s)\n", n, r, (r <= 1.10) ? "met" : "NOT met" }'
    else
        echo "  no pair reached the rate in both runs: set a lower EQUAL_RATE"
    fi
    read -r got dropped reqs < <(awk -v g="$SPANS_GOT" -v d="$SPANS_DROPPED" -v q="$SPANS_REQS" 'BEGIN {
        n = split(g, G, " "); split(d, D, " "); split(q, Q, " ")
        for (i = 1; i <= n; i++) { tg += G[i]; td += D[i]; tq += Q[i] }
        print (g ~ /-/ ? "-" : tg), td, tq }')
    echo "sluice-traced: $got spans reached the collector and $dropped were dropped by Sluice's export queue, for" \
        "$reqs requests ($(awk -v g="$got" -v q="$reqs" 'BEGIN {if (g == "-") print "-"; else printf "%.2f", g / q}')" \
        "spans per request at the collector; SERVER + CLIENT = 2 expected)"
    if awk -v d="$dropped" -v q="$reqs" 'BEGIN {exit !(d > 0.01 * 2 * q)}'; then
        echo "WARNING: more than 1% of the spans were dropped: the traced figure understates the cost of exporting all."
    fi
fi
if [ "$AUTH" = 1 ]; then
    awk -v s="${MEDUS[sluice]}" -v j="${MEDUS[sluice-jwt]}" -v p="${MEDUS[sluice-post]}" -v v="${MEDUS[sluice-verify]}" 'BEGIN {
        printf "CPU µs/request ratio sluice-jwt/sluice:         %.3f   (target <= 1.15: %s)\n", j / s, (j / s <= 1.15) ? "met" : "NOT met"
        printf "CPU µs/request ratio sluice-verify/sluice-post: %.3f   (target <= 1.15: %s)\n", v / p, (v / p <= 1.15) ? "met" : "NOT met"
    }'
fi
echo
echo "($REPS repetitions x ${DURATION}s, wrk -t1 -c$CONNS, keep-alive, 1 KiB responses; $(date -u '+%Y-%m-%d %H:%M UTC'))"

#!/usr/bin/env bash
# The README's "First five minutes", run as a test: the sample routes.toml, the real brokers, a demo upstream, and
# every command the README shows there, in its order, each checked (status and a piece of the answer). A command
# run here that the README does not show word for word fails the script, so the two cannot drift apart.
#
#   integration/walkthrough.sh [SLUICE_BINARY]     default: target/debug/sluice (integration/test.sh builds it)
#
# Needs the brokers (`integration/brokers.sh up`), python3 and curl, and the ports the README uses: 8080 and 9901
# (the sample config's listeners), 9001 (the demo upstream), and for the tour 8081, 9902 and 9004 (examples/).
# Leaves nothing running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SLUICE=${1:-${CARGO_TARGET_DIR:-target}/debug/sluice}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    echo "walkthrough: FAILED: $*" >&2
    [[ -s $WORK/sluice.log ]] && { echo "--- sluice log (last lines):" >&2; tail -n 20 "$WORK/sluice.log" >&2; }
    exit 1
}

[[ -x $SLUICE ]] || fail "no sluice binary at $SLUICE (cargo build first)"
for port in 8080 9901 9001 8081 9902 9004; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "port $port is in use; the walkthrough needs it"; fi
done

# Runs one README command (it must appear in README.md as written) and checks that its output has every `want`.
step() {
    local cmd=$1
    shift
    grep -qF -- "$cmd" README.md || fail "README.md does not show this command: $cmd"
    local out
    out=$(timeout 60 bash -c "$cmd" 2>&1) || fail "command failed (or took over 60 s): $cmd"$'\n'"$out"
    local want
    for want in "$@"; do
        [[ $out == *"$want"* ]] || fail "$cmd"$'\n'"expected: $want"$'\n'"got:"$'\n'"$out"
    done
    echo "ok: $cmd"
}

# Checks that the README shows `line` word for word (for the commands run here with a tracked process id).
shown() {
    grep -qF -- "$1" README.md || fail "README.md does not show this command: $1"
}

# --- start: the gateway on the sample config, and the README's demo upstream for the forward route.
# The README starts the gateway with `cargo run --release -- --config routes.toml`: the same arguments are given to
# the binary under test (a release build would not fit CI's time).
"$SLUICE" check routes.toml >/dev/null || fail "the sample routes.toml does not pass sluice check"
shown "integration/brokers.sh up && cargo run --release -- --config routes.toml"
demo="mkdir -p /tmp/sluice-demo/orders && echo ok > /tmp/sluice-demo/healthz && echo '{\"id\":\"o-1\",\"status\":\"shipped\"}' > /tmp/sluice-demo/orders/o-1"
shown "$demo"
bash -c "$demo" || fail "$demo"
shown "python3 -m http.server 9001 --bind 127.0.0.1 --directory /tmp/sluice-demo &"
python3 -m http.server 9001 --bind 127.0.0.1 --directory /tmp/sluice-demo >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
"$SLUICE" --config routes.toml >"$WORK/sluice.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    curl -sf localhost:9901/readyz >/dev/null 2>&1 && curl -sf localhost:9001/orders/o-1 >/dev/null 2>&1 && break
    sleep 0.2
done
curl -sf localhost:9901/readyz >/dev/null || fail "sluice is not ready"
# The sample's active health check asks each endpoint for /healthz: the demo must answer it, or the forward route
# turns to 503 after three checks (10 s).
curl -sf localhost:9001/healthz >/dev/null || fail "the demo upstream does not answer the health check's /healthz"
for _ in $(seq 100); do
    [[ $(curl -s 'localhost:9901/readyz?verbose') == *'"events":"up"'*'"rabbit":"up"'* ]] && break
    sleep 0.2
done

# --- the README's commands, in order
step "curl -si localhost:8080/api/orders/o-1" "HTTP/1.1 200" "x-request-id:" '{"id":"o-1","status":"shipped"}'
step "curl -si -X POST localhost:8080/events/acme/orders -H 'x-order-id: o-1' -H 'content-type: application/json' -d '{\"id\":\"o-1\"}'" \
    "HTTP/1.1 202" '"broker":"events"' '"topic":"orders.acme"' '"offset":'
step "integration/brokers.sh kafka-tail orders.acme 1" "key=o-1" "ce_type=com.example.order.acme" 'value={"id":"o-1"}'
step "curl -si -X POST localhost:8080/webhooks/github -H 'x-github-event: push' -H 'content-type: application/json' -d '{\"ref\":\"main\"}'" \
    "HTTP/1.1 202" '"broker":"rabbit"' '"exchange":"amq.topic"' '"routing_key":"github.push"'
step "integration/brokers.sh rabbit-get github-webhooks 1" "routing_key=github.push" 'body={"ref":"main"}'
step "curl -si localhost:8080/nope" "HTTP/1.1 404" "application/problem+json" '"status":404'
step "curl -si -X DELETE localhost:8080/webhooks/github" "HTTP/1.1 405" "allow: POST" '"status":405'
step "curl -si -X POST localhost:8080/webhooks/github -d '{}'" "HTTP/1.1 400" "x-github-event" '"status":400'
step "head -c 2000000 /dev/zero | curl -si -X POST localhost:8080/webhooks/github -H 'x-github-event: push' --data-binary @-" \
    "HTTP/1.1 413" '"status":413'
step "curl -si localhost:8080/users/7/profile -H 'host: shop.example.com' -H 'x-env: prod' -H 'x-user-id: u-7'" "HTTP/1.1 502" '"status":502'
step "curl -s 'localhost:9901/readyz?verbose'" '"ready":true' '"events":"up"' '"rabbit":"up"'
step "curl -s localhost:9901/metrics | grep 'sluice_requests_total{route=\"order-events\"'" 'code="202"'

# --- "A tour of the rest": examples/tour.toml beside the sample gateway, examples/echo.py as its upstream
echo_cmd="python3 examples/echo.py 9004 > /tmp/sluice-echo.log &"
shown "$echo_cmd"
python3 examples/echo.py 9004 >/tmp/sluice-echo.log 2>&1 &
PIDS+=($!)
shown "TOUR_GITHUB_SECRET=tour-secret TOUR_API_KEYS=key-1,key-2 cargo run --release -- --config examples/tour.toml &"
TOUR_GITHUB_SECRET=tour-secret TOUR_API_KEYS=key-1,key-2 "$SLUICE" --config examples/tour.toml >"$WORK/tour.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    [[ $(curl -s 'localhost:9902/readyz?verbose') == *'"rabbit":"up"'*'"webhooks-to-echo":"consuming"'* ]] && break
    sleep 0.2
done
[[ $(curl -s 'localhost:9902/readyz?verbose') == *'"webhooks-to-echo":"consuming"'* ]] ||
    fail "the tour gateway is not consuming: $(tail -n 20 "$WORK/tour.log")"
step "curl -si -X POST localhost:8081/tour/github -H 'x-github-event: push' -d '{\"ref\":\"tour\"}'" \
    "HTTP/1.1 401" '"type":"urn:sluice:problem:bad-signature"'
step "body='{\"ref\":\"tour\"}'; sig=\$(printf '%s' \"\$body\" | openssl dgst -sha256 -hmac tour-secret | sed 's/^.* //'); curl -si -X POST localhost:8081/tour/github -H 'x-github-event: push' -H \"x-hub-signature-256: sha256=\$sig\" -d \"\$body\"" \
    "HTTP/1.1 202" '"routing_key":"github.push"'
for _ in $(seq 50); do
    grep -qF '"body": "{\"ref\":\"tour\"}"' /tmp/sluice-echo.log && break
    sleep 0.2
done
step "grep /internal/webhooks /tmp/sluice-echo.log" '"sluice-route": "signed-webhook"' '"body": "{\"ref\":\"tour\"}"'
step "curl -si localhost:8081/tour/echo/hello" "HTTP/1.1 401" 'www-authenticate: ApiKey header="x-api-key"'
step "for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code} ' -H 'x-api-key: key-2' localhost:8081/tour/echo/hello; done" \
    "200 200 429"
step "for i in 1 2; do curl -si -X POST localhost:8080/events/acme/orders -H 'Idempotency-Key: tour-order-7' -H 'x-order-id: o-7' -d '{\"id\":\"o-7\"}'; echo; done" \
    "HTTP/1.1 202" "idempotent-replayed: true"
step "curl -s -X POST localhost:8081/topics/orders.acme -H 'content-type: application/vnd.kafka.json.v2+json' -d '{\"records\":[{\"key\":\"o-3\",\"value\":{\"id\":\"o-3\"}}]}'" \
    '{"offsets":[{"offset":'
# --- the README's tracing walk-through ("Tracing"): the same gateway exporting to the test collector
# (integration/otel.sh up, which integration/test.sh runs first).
spans=$(integration/otel.sh spans-file) || fail "integration/otel.sh spans-file failed"
[[ -f $spans ]] || fail "no collector spans file at $spans: run integration/otel.sh up first"
kill "${PIDS[1]}"
wait "${PIDS[1]}" 2>/dev/null || true
for _ in $(seq 50); do curl -s localhost:9901/healthz >/dev/null 2>&1 || break; sleep 0.1; done
shown "SLUICE__TELEMETRY__OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run --release -- --config routes.toml &"
before=$(stat -c %s "$spans")
SLUICE__TELEMETRY__OTLP_ENDPOINT=http://127.0.0.1:4317 "$SLUICE" --config routes.toml >"$WORK/sluice.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    [[ $(curl -s 'localhost:9901/readyz?verbose') == *'"events":"up"'* ]] && break
    sleep 0.2
done
trace=4bf92f3577b34da6a3ce929d0e0e4736
step "curl -s -X POST localhost:8080/events/acme/orders -H 'x-order-id: o-1' -d '{\"a\":1}' -H 'traceparent: 00-$trace-00f067aa0ba902b7-01'" \
    '"topic":"orders.acme"'
# The spans of this run: the SERVER span and the PRODUCER span, in the request's trace, after `before`.
new_spans() { tail -c +"$((before + 1))" "$spans" | grep -F "$trace" || true; }
for _ in $(seq 50); do
    [[ $(new_spans) == *'"kind":2'*'"kind":4'* || $(new_spans) == *'"kind":4'*'"kind":2'* ]] && break
    sleep 0.2
done
got=$(new_spans)
for want in '"name":"POST /events/{tenant}/orders"' '"kind":2' '"kind":4' '"parentSpanId":"00f067aa0ba902b7"'; do
    [[ $got == *"$want"* ]] || fail "the collector got no span with $want in trace $trace (new spans: ${got:0:2000})"
done
step "grep $trace \"\$(integration/otel.sh spans-file)\" | head -c 2000" "$trace"

echo "walkthrough: every command of the README's first five minutes, its tracing walk-through and its tour works"

#!/usr/bin/env bash
# Runs every test: starts (or reuses) the real brokers and the OpenTelemetry Collector, checks formatting and lints,
# then runs the unit and end-to-end tests. Works from nothing on a fresh Debian machine with Rust, Java 17, Maven
# and Go >= 1.26 (see .ci/run for the system packages).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TERM_COLOR=never
# A clean checkout builds once: incremental state would only add to the disk a CI machine may be short of.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
export SLUICE_TEST_AMQP_URL=${SLUICE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export SLUICE_TEST_KAFKA=${SLUICE_TEST_KAFKA:-127.0.0.1:9092}
export SLUICE_TEST_OTLP=${SLUICE_TEST_OTLP:-http://127.0.0.1:4317}

integration/brokers.sh up
# The brokers' TLS listeners (amqps, Kafka SSL and SASL_SSL) are signed by a CA brokers.sh made: tests/broker_tls.rs.
SLUICE_TEST_BROKER_CA=${SLUICE_TEST_BROKER_CA:-$(integration/brokers.sh ca-file)}
export SLUICE_TEST_BROKER_CA
integration/otel.sh up
# The SQS-compatible server brokers.sh started (tests/sqs.rs).
SLUICE_TEST_SQS=${SLUICE_TEST_SQS:-$(integration/sqs.sh url)}
export SLUICE_TEST_SQS
# Redis for the shared store (tests/store.rs).
SLUICE_TEST_REDIS=${SLUICE_TEST_REDIS:-$(integration/redis.sh up)}
export SLUICE_TEST_REDIS
SLUICE_TEST_OTLP_SPANS=${SLUICE_TEST_OTLP_SPANS:-$(integration/otel.sh spans-file)}
export SLUICE_TEST_OTLP_SPANS
# Independent Python clients (webhook providers' libraries, PyJWT, pika, confluent-kafka) in a cached venv.
SLUICE_TEST_PYTHON=${SLUICE_TEST_PYTHON:-$(integration/pyenv.sh)}
export SLUICE_TEST_PYTHON

# tests/hostile.rs holds a thousand client connections open at once (and the gateway as many): lift the soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
# The README's "First five minutes", command by command, against the real brokers (the binary cargo test built).
integration/walkthrough.sh
# deploy/: kustomize base and overlays rendered and validated offline, each ConfigMap's routes.toml checked.
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/debug/sluice} integration/deploy-check.sh
# The fault suite's short mode (a few minutes): brokers stopped, killed and degraded (Toxiproxy), an upstream killed,
# the gateway SIGTERM'd and SIGKILL'd under load, with and without a spool; every 202 must reach an independent
# consumer. The full run (`integration/faults.sh --full`, about 10 minutes) writes integration/FAULTS.md.
FAULTS_SPOOL=${FAULTS_SPOOL:-1} integration/faults.sh

# Fuzzing is a long suite, off by default: SLUICE_FUZZ_SECONDS=N runs every target of fuzz/ for N seconds after
# the tests (fuzz/run.sh installs the nightly toolchain and cargo-fuzz when missing).
if [ "${SLUICE_FUZZ_SECONDS:-0}" -gt 0 ]; then
    fuzz/run.sh "$SLUICE_FUZZ_SECONDS"
fi

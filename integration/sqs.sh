#!/usr/bin/env bash
# A real SQS-compatible server for the SQS tests (tests/sqs.rs): ElasticMQ (org.elasticmq:elasticmq-server_2.13,
# main class org.elasticmq.server.Main) from Maven Central, run with the machine's Java 17, bound to 127.0.0.1 only,
# in memory (queues are created by the tests). integration/brokers.sh `up` calls `sqs.sh up` too.
#
#   integration/sqs.sh up       fetch ElasticMQ (first time: mvn dependency:copy-dependencies into the cache), start it
#                               unless one answers at the port; waits until it answers, then prints its endpoint
#   integration/sqs.sh down     stop the ElasticMQ this script started (nothing else)
#   integration/sqs.sh status   exit 0 if the SQS endpoint answers, 1 otherwise
#   integration/sqs.sh url      print the endpoint the tests use (http://127.0.0.1:PORT)
#
# Environment: SLUICE_TEST_SQS_PORT (default 9324), SLUICE_CACHE_DIR / SLUICE_STATE_DIR as for brokers.sh.
set -euo pipefail

ELASTICMQ_VERSION=1.6.11
PORT=${SLUICE_TEST_SQS_PORT:-9324}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}
HOME_DIR=$CACHE_DIR/elasticmq-$ELASTICMQ_VERSION
STATE=${SLUICE_STATE_DIR:-$CACHE_DIR/state}/elasticmq
PIDFILE=$STATE/elasticmq.pid

log() { echo "sqs.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ListQueues with the query protocol: any answer from ElasticMQ (it does not check signatures) is "up".
answers() { curl -fsS -m 2 "http://127.0.0.1:$PORT/?Action=ListQueues" >/dev/null 2>&1; }

fetch() {
    [[ -e $HOME_DIR/.complete ]] && return 0
    command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch ElasticMQ $ELASTICMQ_VERSION from Maven Central"
    log "fetching ElasticMQ $ELASTICMQ_VERSION and its runtime dependencies from Maven Central into $HOME_DIR"
    local tmp=$HOME_DIR/libs.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    mvn -q -B -Dstyle.color=never -f "$SCRIPT_DIR/sqs/pom.xml" -Delasticmq.version="$ELASTICMQ_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2 \
        || die "mvn could not fetch ElasticMQ $ELASTICMQ_VERSION"
    ls "$tmp"/elasticmq-server_2.13-"$ELASTICMQ_VERSION".jar >/dev/null || die "elasticmq-server jar missing after mvn"
    rm -rf "$HOME_DIR/libs"
    mv "$tmp" "$HOME_DIR/libs"
    touch "$HOME_DIR/.complete"
}

up() {
    if answers; then
        log "already running at 127.0.0.1:$PORT"
        url
        return
    fi
    command -v java >/dev/null || die "Java is needed to run ElasticMQ"
    fetch
    mkdir -p "$STATE"
    cat >"$STATE/elasticmq.conf" <<EOF
include classpath("application.conf")
node-address { protocol = http, host = "127.0.0.1", port = $PORT, context-path = "" }
rest-sqs { enabled = true, bind-port = $PORT, bind-hostname = "127.0.0.1", sqs-limits = strict }
rest-stats { enabled = false }
EOF
    nohup java -Xmx256m -Dconfig.file="$STATE/elasticmq.conf" -cp "$HOME_DIR/libs/*" org.elasticmq.server.Main \
        >"$STATE/elasticmq.log" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 300); do
        answers && break
        kill -0 "$(cat "$PIDFILE")" 2>/dev/null || die "ElasticMQ exited at start-up (see $STATE/elasticmq.log)"
        sleep 0.1
    done
    answers || die "ElasticMQ does not answer at 127.0.0.1:$PORT (see $STATE/elasticmq.log)"
    log "started at 127.0.0.1:$PORT"
    url
}

down() {
    [[ -f $PIDFILE ]] || { log "nothing started by this script"; return; }
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
    log "stopped"
}

url() { echo "http://127.0.0.1:$PORT"; }

case ${1:-} in
    up) up ;;
    down) down ;;
    status) answers ;;
    url) url ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac

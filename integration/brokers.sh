#!/usr/bin/env bash
# Real brokers for Sluice's integration tests and for running the gateway locally (DESIGN.md section 9).
#
#   integration/brokers.sh up        reuse brokers already reachable at SLUICE_TEST_AMQP_URL / SLUICE_TEST_KAFKA,
#                                    otherwise start them; waits until both answer (Kafka: a real
#                                    produce/consume round trip), then provisions what the sample routes.toml
#                                    publishes to (as `sample` does). Idempotent.
#                                    Also starts the SQS-compatible server (integration/sqs.sh up).
#   integration/brokers.sh down      stop what `up` started (nothing else); leaves nothing running
#   integration/brokers.sh status    print whether each broker is reachable; exit 0 if both are, 1 otherwise
#   integration/brokers.sh ca-file   print the path of the CA certificate that signed the brokers' TLS listeners
#   integration/brokers.sh clean     down, then delete the brokers' state (data, logs); the download cache stays
#   integration/brokers.sh sample    create the broker objects the sample routes.toml needs, keeping any that exist:
#                                    Kafka topic orders.acme (3 partitions; route order-events) and a durable
#                                    RabbitMQ queue github-webhooks bound to amq.topic with key github.# (route
#                                    github: without a bound queue RabbitMQ returns the message and Sluice answers
#                                    502). Prints what it created or found.
#
# Helpers for outage tests and scripts:
#   integration/brokers.sh rabbit-stop             stop the RabbitMQ application (the Erlang node stays up;
#                                                  AMQP connections are dropped, the port refuses connections)
#   integration/brokers.sh rabbit-start            start it again and wait until AMQP answers
#   integration/brokers.sh rabbitmqctl ARGS...     rabbitmqctl against the node `up` started (right node name
#                                                  and Erlang cookie), e.g. `rabbitmqctl close_all_connections x`
#   integration/brokers.sh kafka-stop              stop the Kafka broker `up` started (SIGTERM, then wait until the
#                                                  JVM has exited and the port refuses connections); its state stays
#   integration/brokers.sh kafka-kill              kill that broker with SIGKILL (a crash: no controlled shutdown,
#                                                  log recovery at the next start), then wait until the port refuses
#                                                  connections; its state stays
#   integration/brokers.sh kafka-start             start it again with the same state and wait until it answers
#                                                  (ApiVersions, then a produce/consume round trip, as `up` does).
#                                                  The three refuse (exit 1) when brokers.sh did not start Kafka itself.
#   integration/brokers.sh kafka-tail TOPIC [N]     print the last N (default 10) records of a topic, oldest first:
#                                                  partition@offset, key, headers, value (reads, commits nothing)
#   integration/brokers.sh rabbit-get QUEUE [N]    take up to N (default 10) messages off a queue and print each:
#                                                  routing key, message id, content type, headers, body
#   integration/brokers.sh kafka-topic NAME PARTS  create a topic (auto-creation is off) and wait for leaders.
#                                                  One JVM start (~1-2 s): the Rust tests create their topics
#                                                  through rdkafka's admin API instead.
#
# RabbitMQ: Debian's rabbitmq-server package (installed with apt-get when missing), run as the current user
# without systemd, node name rabbit@<short hostname> (rabbit@localhost when the hostname does not resolve),
# listening on 127.0.0.1 only; guest/guest works from loopback. Its Erlang cookie is the package's
# (/var/lib/rabbitmq/.erlang.cookie), so plain `rabbitmqctl` run as root reaches the node too.
# Kafka: Apache Kafka (KRaft, one node acting as broker and controller) from its Maven Central artifacts
# (integration/kafka/pom.xml), run with the machine's Java 17, heap 512 MiB.
#
# TLS listeners (for the tests of amqps:// and Kafka SSL / SASL_SSL), beside the plain ones, on 127.0.0.1 only, with
# a server certificate for 127.0.0.1 and localhost signed by a CA made here with openssl (`ca-file` prints its path):
#   RabbitMQ  amqps on $SLUICE_TEST_AMQPS_PORT (5671)
#   Kafka     SSL on $SLUICE_TEST_KAFKA_SSL_PORT (9094); SASL_SSL on $SLUICE_TEST_KAFKA_SASL_SSL_PORT (9095) with
#             PLAIN user sluice / sluice-plain-secret and SCRAM-SHA-512 user sluice-scram / sluice-scram-secret
#             (test accounts, nothing else)
# A broker that brokers.sh started earlier without these listeners is restarted by `up` to get them.
#
# Environment:
#   SLUICE_TEST_AMQP_URL   default amqp://guest:guest@127.0.0.1:5672/%2f
#   SLUICE_TEST_KAFKA      default 127.0.0.1:9092 (bootstrap host:port)
#   SLUICE_CACHE_DIR       downloads, default ${XDG_CACHE_HOME:-$HOME/.cache}/sluice
#   SLUICE_STATE_DIR       broker data, logs and pid files, default $SLUICE_CACHE_DIR/state
#   SLUICE_KAFKA_VERSION   default 4.4.0
#   SLUICE_KAFKA_CONTROLLER_PORT   default 9093
#   SLUICE_AMQP_CLIENT_VERSION     RabbitMQ Java client for `sample`, default 5.37.1
#   SLUICE_BROKERS_TIMEOUT seconds to wait for each broker to answer, default 120
#   SLUICE_TEST_AMQPS_PORT, SLUICE_TEST_KAFKA_SSL_PORT, SLUICE_TEST_KAFKA_SASL_SSL_PORT   the TLS listeners' ports
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

AMQP_URL=${SLUICE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
KAFKA_BOOTSTRAP=${SLUICE_TEST_KAFKA:-127.0.0.1:9092}
CACHE_DIR=${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}
STATE_DIR=${SLUICE_STATE_DIR:-$CACHE_DIR/state}
KAFKA_VERSION=${SLUICE_KAFKA_VERSION:-4.4.0}
KAFKA_CONTROLLER_PORT=${SLUICE_KAFKA_CONTROLLER_PORT:-9093}
TIMEOUT=${SLUICE_BROKERS_TIMEOUT:-120}
AMQP_CLIENT_VERSION=${SLUICE_AMQP_CLIENT_VERSION:-5.37.1}
AMQPS_PORT=${SLUICE_TEST_AMQPS_PORT:-5671}
KAFKA_SSL_PORT=${SLUICE_TEST_KAFKA_SSL_PORT:-9094}
KAFKA_SASL_SSL_PORT=${SLUICE_TEST_KAFKA_SASL_SSL_PORT:-9095}
KAFKA_PLAIN_USER=sluice
KAFKA_PLAIN_PASSWORD=sluice-plain-secret
KAFKA_SCRAM_USER=sluice-scram
KAFKA_SCRAM_PASSWORD=sluice-scram-secret

# What the sample routes.toml publishes to (`sample`, run by `up`).
SAMPLE_TOPIC=orders.acme
SAMPLE_TOPIC_PARTITIONS=3
SAMPLE_QUEUE=github-webhooks
SAMPLE_EXCHANGE=amq.topic
SAMPLE_BINDING_KEY='github.#'

RABBIT_STATE=$STATE_DIR/rabbitmq
RABBIT_LOG=$RABBIT_STATE/log/rabbit.log
RABBIT_PIDFILE=$RABBIT_STATE/rabbit.pid
RABBIT_MARKER=$RABBIT_STATE/started-by-brokers-sh
RABBIT_LIB=/usr/lib/rabbitmq/bin

KAFKA_HOME=$CACHE_DIR/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs
KAFKA_STATE=$STATE_DIR/kafka
KAFKA_LOG=$KAFKA_STATE/kafka.log
KAFKA_PIDFILE=$KAFKA_STATE/kafka.pid
KAFKA_STOPPED=$KAFKA_STATE/stopped-by-kafka-stop

TLS_DIR=$STATE_DIR/tls

AMQP_CLIENT_HOME=$CACHE_DIR/amqp-client-$AMQP_CLIENT_VERSION
AMQP_CLIENT_LIBS=$AMQP_CLIENT_HOME/libs

log() { printf 'brokers.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------- addresses
# amqp://user:pass@host:port/vhost -> host and port
amqp_host_port() {
    local rest=${AMQP_URL#*://}
    rest=${rest##*@}
    rest=${rest%%/*}
    rest=${rest%%\?*}
    local host=${rest%:*} port=5672
    [[ $rest == *:* ]] && port=${rest##*:}
    [[ -n $host ]] || host=127.0.0.1
    printf '%s %s\n' "$host" "$port"
}
read -r AMQP_HOST AMQP_PORT < <(amqp_host_port)
KAFKA_HOST=${KAFKA_BOOTSTRAP%%,*}
KAFKA_PORT=${KAFKA_HOST##*:}
KAFKA_HOST=${KAFKA_HOST%:*}

is_local_host() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 || $1 == "[::1]" ]]; }

# ---------------------------------------------------------------------------------------------- probes
# Protocol-level probes in plain bash, so `status` needs neither a JVM nor an AMQP client.

# AMQP 0-9-1: send the protocol header; a live broker answers with a method frame (type 1, Connection.Start).
amqp_ping() {
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        b=$(head -c 1 <&3 | od -An -tu1 | tr -d " ")
        [[ $b == 1 ]]' "$AMQP_HOST" "$AMQP_PORT" 2>/dev/null
}

# Kafka: ApiVersions v0 request (correlation id 7); a live broker answers with correlation id 7, error 0.
kafka_ping() {
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff" >&3
        b=$(head -c 10 <&3 | od -An -tu1 | tr -s " " | sed "s/^ //")
        set -- $b
        [[ $# -eq 10 && $5 == 0 && $6 == 0 && $7 == 0 && $8 == 7 && $9 == 0 && ${10} == 0 ]]' \
        "$KAFKA_HOST" "$KAFKA_PORT" 2>/dev/null
}

port_in_use() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
pid_gone() { ! kill -0 "$1" 2>/dev/null; }
amqp_gone() { ! amqp_ping; }

wait_until() { # wait_until SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 4; i++)); do
        "$@" && return 0
        sleep 0.25
    done
    return 1
}

# ---------------------------------------------------------------------------------------------- tls
# A CA and a server certificate (P-256, SAN 127.0.0.1 and localhost) for both brokers' TLS listeners, made once.
# The key is unencrypted PKCS#8, which both RabbitMQ and Kafka's PEM keystore read.
tls_material() {
    [[ -s $TLS_DIR/server-bundle.pem ]] && return 0
    command -v openssl >/dev/null || die "openssl is needed to make the brokers' test certificates"
    local tmp=$TLS_DIR.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    (
        cd "$tmp"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/CN=Sluice test brokers CA" -keyout ca.key -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
            -extfile server.ext -out server.pem
        cat server.key server.pem >server-bundle.pem
        chmod 600 ca.key server.key server-bundle.pem
    ) >"$tmp.log" 2>&1 || { cat "$tmp.log" >&2; die "openssl could not make the brokers' test certificates"; }
    rm -rf "$TLS_DIR" "$tmp.log"
    mv "$tmp" "$TLS_DIR"
    log "made the brokers' test CA and server certificate in $TLS_DIR"
}

# ---------------------------------------------------------------------------------------------- rabbitmq
rabbit_nodename() {
    if [[ -n ${RABBITMQ_NODENAME:-} ]]; then
        echo "$RABBITMQ_NODENAME"
        return
    fi
    local h
    h=$(hostname -s 2>/dev/null || hostname)
    if [[ -n $h ]] && getent hosts "$h" >/dev/null 2>&1; then
        echo "rabbit@$h"
    else
        echo "rabbit@localhost"
    fi
}

rabbit_env() { # the environment for the node and its CLI tools
    env HOME="$RABBIT_STATE" \
        RABBITMQ_NODENAME="$(cat "$RABBIT_STATE/nodename" 2>/dev/null || rabbit_nodename)" \
        RABBITMQ_CONF_ENV_FILE="$RABBIT_STATE/rabbitmq-env.conf" \
        "$@"
}

# rabbitmqctl for the node `up` started; for a reused broker, the system's own rabbitmqctl and its defaults.
rabbitmqctl_() {
    if [[ -e $RABBIT_MARKER ]]; then
        rabbit_env "$RABBIT_LIB/rabbitmqctl" "$@"
    else
        command -v rabbitmqctl >/dev/null || PATH=$PATH:/usr/sbin
        rabbitmqctl "$@"
    fi
}

rabbit_tail_log() {
    local f
    for f in "$RABBIT_LOG" "$RABBIT_STATE/log/startup.log"; do
        [[ -s $f ]] || continue
        log "last lines of $f:"
        tail -n 30 "$f" >&2
    done
}

rabbit_install() {
    [[ -x $RABBIT_LIB/rabbitmq-server ]] && return 0
    command -v apt-get >/dev/null || die "rabbitmq-server is not installed and apt-get is not available"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    log "installing Debian's rabbitmq-server package"
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q rabbitmq-server >&2; then
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q rabbitmq-server >&2
    fi
    # The package does not start the node without systemd/init; if it did (a machine with systemd),
    # that node owns the ports and `up` simply reuses it.
}

rabbit_start_node() {
    mkdir -p "$RABBIT_STATE/log" "$RABBIT_STATE/mnesia"
    rabbit_nodename >"$RABBIT_STATE/nodename"
    # Share the package's cookie so that plain `rabbitmqctl` (which runs as user rabbitmq with
    # HOME=/var/lib/rabbitmq when called by root) can talk to this node too.
    if [[ ! -s $RABBIT_STATE/.erlang.cookie ]]; then
        if [[ -r /var/lib/rabbitmq/.erlang.cookie ]]; then
            cp /var/lib/rabbitmq/.erlang.cookie "$RABBIT_STATE/.erlang.cookie"
        else
            od -An -N10 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F >"$RABBIT_STATE/.erlang.cookie"
        fi
        chmod 400 "$RABBIT_STATE/.erlang.cookie"
    fi
    : >"$RABBIT_STATE/rabbitmq-env.conf"
    echo '[].' >"$RABBIT_STATE/enabled_plugins"
    cat >"$RABBIT_STATE/rabbitmq.conf" <<EOF
listeners.tcp.1 = $AMQP_HOST:$AMQP_PORT
listeners.ssl.1 = $AMQP_HOST:$AMQPS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users.guest = true
log.file.level = info
log.console = false
EOF
    # epmd is started by the node if needed; remember whether it was us so `down` can stop it.
    if epmd -names >/dev/null 2>&1; then rm -f "$RABBIT_STATE/epmd-started"; else touch "$RABBIT_STATE/epmd-started"; fi
    rm -f "$RABBIT_PIDFILE"
    touch "$RABBIT_MARKER"
    log "starting RabbitMQ node $(cat "$RABBIT_STATE/nodename") on $AMQP_HOST:$AMQP_PORT (state in $RABBIT_STATE)"
    (
        cd "$RABBIT_STATE"
        rabbit_env \
            RABBITMQ_MNESIA_BASE="$RABBIT_STATE/mnesia" \
            RABBITMQ_LOG_BASE="$RABBIT_STATE/log" \
            RABBITMQ_LOGS="$RABBIT_LOG" \
            RABBITMQ_PID_FILE="$RABBIT_PIDFILE" \
            RABBITMQ_CONFIG_FILE="$RABBIT_STATE/rabbitmq.conf" \
            RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_STATE/advanced.config" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_STATE/enabled_plugins" \
            setsid nohup "$RABBIT_LIB/rabbitmq-server" </dev/null >"$RABBIT_STATE/log/startup.log" 2>&1 &
    )
}

rabbit_wait() {
    if ! wait_until "$TIMEOUT" "rabbitmq pid file" test -s "$RABBIT_PIDFILE"; then
        rabbit_tail_log
        die "RabbitMQ did not write its pid file within ${TIMEOUT}s"
    fi
    if ! rabbitmqctl_ -q await_startup --timeout "$TIMEOUT" >/dev/null 2>&1; then
        rabbit_tail_log
        die "RabbitMQ node did not finish booting within ${TIMEOUT}s"
    fi
    if ! wait_until "$TIMEOUT" "amqp" amqp_ping; then
        rabbit_tail_log
        die "RabbitMQ does not answer AMQP on $AMQP_HOST:$AMQP_PORT"
    fi
}

rabbit_up() {
    if amqp_ping && pid_alive "$RABBIT_PIDFILE" && [[ -e $RABBIT_MARKER ]] && ! port_in_use "$AMQP_HOST" "$AMQPS_PORT"; then
        log "RabbitMQ: our node has no TLS listener on $AMQP_HOST:$AMQPS_PORT (started by an older brokers.sh); restarting it"
        rabbit_down
        wait_until 30 "amqp closed" amqp_gone || die "RabbitMQ still answers on $AMQP_HOST:$AMQP_PORT after stopping it"
    fi
    if amqp_ping; then
        if pid_alive "$RABBIT_PIDFILE" && [[ -e $RABBIT_MARKER ]]; then
            log "RabbitMQ: already running (started by brokers.sh) at $AMQP_HOST:$AMQP_PORT"
        else
            log "RabbitMQ: reusing the broker reachable at $AMQP_HOST:$AMQP_PORT"
        fi
        return 0
    fi
    if pid_alive "$RABBIT_PIDFILE" && [[ -e $RABBIT_MARKER ]]; then
        # our node is up but its application was stopped (rabbit-stop)
        log "RabbitMQ: node running but application stopped; starting it"
        rabbit_start_app
        return 0
    fi
    is_local_host "$AMQP_HOST" || die "no AMQP broker reachable at $AMQP_HOST:$AMQP_PORT (only a local one can be started)"
    port_in_use "$AMQP_HOST" "$AMQP_PORT" && die "$AMQP_HOST:$AMQP_PORT is in use but does not answer AMQP"
    rabbit_install
    tls_material
    rabbit_start_node
    rabbit_wait
    log "RabbitMQ: up at $AMQP_HOST:$AMQP_PORT (log: $RABBIT_LOG)"
}

rabbit_start_app() {
    rabbitmqctl_ -q start_app >&2
    rabbitmqctl_ -q await_startup --timeout "$TIMEOUT" >/dev/null 2>&1 || true
    if ! wait_until "$TIMEOUT" "amqp" amqp_ping; then
        rabbit_tail_log
        die "RabbitMQ does not answer AMQP on $AMQP_HOST:$AMQP_PORT after start_app"
    fi
}

rabbit_down() {
    if [[ ! -e $RABBIT_MARKER ]]; then
        amqp_ping && log "RabbitMQ: not started by brokers.sh; leaving it alone"
        return 0
    fi
    if pid_alive "$RABBIT_PIDFILE"; then
        local pid
        pid=$(cat "$RABBIT_PIDFILE")
        log "RabbitMQ: stopping node (pid $pid)"
        rabbitmqctl_ -q stop "$RABBIT_PIDFILE" >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
        if ! wait_until 30 "rabbitmq exit" pid_gone "$pid"; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    # erl_child_setup and friends die with the node; epmd does not.
    if [[ -e $RABBIT_STATE/epmd-started ]]; then
        epmd -kill >/dev/null 2>&1 || true
        rm -f "$RABBIT_STATE/epmd-started"
    fi
    rm -f "$RABBIT_MARKER" "$RABBIT_PIDFILE"
}

# ---------------------------------------------------------------------------------------------- kafka
kafka_fetch() {
    [[ -e $KAFKA_HOME/.complete ]] && return 0
    command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka $KAFKA_VERSION from Maven Central"
    log "fetching Kafka $KAFKA_VERSION and its runtime dependencies from Maven Central into $KAFKA_LIBS"
    local tmp=$KAFKA_HOME/libs.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -q -B -Dstyle.color=never -f "$SCRIPT_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2; then
        die "mvn could not fetch Kafka $KAFKA_VERSION"
    fi
    ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null || die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    touch "$KAFKA_HOME/.complete"
}

# KafkaCheck.java compiled once per version of its source; prints the class directory.
kafka_check_classes() {
    local src=$SCRIPT_DIR/kafka/KafkaCheck.java sum dir
    sum=$(sha1sum "$src" | cut -c1-12)
    dir=$KAFKA_HOME/check-$sum
    if [[ ! -e $dir/KafkaCheck.class ]]; then
        command -v javac >/dev/null || die "javac (a Java 17 JDK) is needed to compile integration/kafka/KafkaCheck.java"
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        javac -nowarn -cp "$KAFKA_LIBS/*" -d "$dir.tmp" "$src" >&2
        rm -rf "$dir"
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

kafka_tools_log4j() {
    mkdir -p "$KAFKA_STATE"
    local f=$KAFKA_STATE/log4j2-tools.properties
    [[ -s $f ]] || cat >"$f" <<'EOF'
status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %d{HH:mm:ss.SSS} %-5p %c{1}: %m%n
rootLogger.level = error
rootLogger.appenderRef.err.ref = STDERR
EOF
    echo "$f"
}

kafka_check() { # KafkaCheck ARGS...
    kafka_fetch
    local classes log4j
    classes=$(kafka_check_classes)
    log4j=$(kafka_tools_log4j)
    java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dlog4j2.configurationFile="$log4j" \
        -cp "$classes:$KAFKA_LIBS/*" KafkaCheck "$@"
}

kafka_write_config() {
    mkdir -p "$KAFKA_STATE/data"
    cat >"$KAFKA_STATE/server.properties" <<EOF
# written by integration/brokers.sh
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server-bundle.pem
ssl.client.auth=none
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_PLAIN_USER="$KAFKA_PLAIN_PASSWORD";
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$KAFKA_STATE/data
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOF
    cat >"$KAFKA_STATE/log4j2.properties" <<'EOF'
status = error
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
}

kafka_tail_log() {
    if [[ -s $KAFKA_LOG ]]; then
        log "last lines of $KAFKA_LOG:"
        tail -n 40 "$KAFKA_LOG" >&2
    fi
}

kafka_java() { java -Dlog4j2.configurationFile="$KAFKA_STATE/log4j2.properties" -cp "$KAFKA_LIBS/*" "$@"; }

kafka_start() {
    kafka_write_config
    if [[ ! -e $KAFKA_STATE/data/meta.properties ]]; then
        local id
        id=$(kafka_java -Xmx128m kafka.tools.StorageTool random-uuid | tail -n 1)
        log "formatting Kafka storage in $KAFKA_STATE/data (cluster id $id)"
        kafka_java -Xmx256m kafka.tools.StorageTool format --standalone --cluster-id "$id" \
            --config "$KAFKA_STATE/server.properties" >"$KAFKA_STATE/format.log" 2>&1 ||
            { cat "$KAFKA_STATE/format.log" >&2; die "kafka storage format failed"; }
    fi
    log "starting Kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT, state in $KAFKA_STATE)"
    [[ -s $KAFKA_LOG ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"
    (
        cd "$KAFKA_STATE"
        setsid nohup java -Xmx512m -Xms512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
            -Dkafka.logs.dir="$KAFKA_STATE" -Dlog4j2.configurationFile="$KAFKA_STATE/log4j2.properties" \
            -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_STATE/server.properties" \
            </dev/null >"$KAFKA_LOG" 2>&1 &
        echo $! >"$KAFKA_PIDFILE"
    )
}

kafka_wait() {
    # the broker must be listening before the round trip's own retries make sense
    local i
    for ((i = 0; i < TIMEOUT * 4; i++)); do
        kafka_ping && break
        if ! pid_alive "$KAFKA_PIDFILE"; then
            kafka_tail_log
            die "Kafka exited during start-up"
        fi
        sleep 0.25
    done
    kafka_ping || { kafka_tail_log; die "Kafka did not answer on $KAFKA_HOST:$KAFKA_PORT within ${TIMEOUT}s"; }
    # The round trip's JVM also creates the sample topic (saves `sample` a JVM start of its own).
    if ! kafka_check roundtrip "$KAFKA_BOOTSTRAP" "$TIMEOUT" "$SAMPLE_TOPIC:$SAMPLE_TOPIC_PARTITIONS" \
        "scram=$KAFKA_SCRAM_USER:$KAFKA_SCRAM_PASSWORD"; then
        kafka_tail_log
        die "Kafka produce/consume round trip (or creating topic $SAMPLE_TOPIC) failed on $KAFKA_BOOTSTRAP"
    fi
    SAMPLE_TOPIC_DONE=1
}

kafka_up() {
    if kafka_ping && pid_alive "$KAFKA_PIDFILE" && ! port_in_use 127.0.0.1 "$KAFKA_SASL_SSL_PORT"; then
        log "Kafka: our broker has no TLS listeners on 127.0.0.1:$KAFKA_SSL_PORT/$KAFKA_SASL_SSL_PORT (started by an older brokers.sh); restarting it"
        kafka_down
    fi
    if kafka_ping; then
        if pid_alive "$KAFKA_PIDFILE"; then
            log "Kafka: already running (started by brokers.sh) at $KAFKA_BOOTSTRAP"
        else
            log "Kafka: reusing the broker reachable at $KAFKA_BOOTSTRAP"
        fi
        return 0
    fi
    is_local_host "$KAFKA_HOST" || die "no Kafka broker reachable at $KAFKA_BOOTSTRAP (only a local one can be started)"
    if pid_alive "$KAFKA_PIDFILE"; then
        log "Kafka: our broker (pid $(cat "$KAFKA_PIDFILE")) is still starting; waiting"
    else
        port_in_use "$KAFKA_HOST" "$KAFKA_PORT" && die "$KAFKA_HOST:$KAFKA_PORT is in use but does not answer Kafka"
        port_in_use 127.0.0.1 "$KAFKA_CONTROLLER_PORT" &&
            die "127.0.0.1:$KAFKA_CONTROLLER_PORT (Kafka controller) is in use; set SLUICE_KAFKA_CONTROLLER_PORT"
        kafka_fetch
        tls_material
        kafka_start
    fi
    kafka_wait
    rm -f "$KAFKA_STOPPED"
    log "Kafka: up at $KAFKA_BOOTSTRAP, produce/consume round trip OK (log: $KAFKA_LOG)"
}

kafka_down() {
    rm -f "$KAFKA_STOPPED"
    if ! pid_alive "$KAFKA_PIDFILE"; then
        rm -f "$KAFKA_PIDFILE"
        kafka_ping && log "Kafka: not started by brokers.sh; leaving it alone"
        return 0
    fi
    local pid
    pid=$(cat "$KAFKA_PIDFILE")
    log "Kafka: stopping broker (pid $pid)"
    kill "$pid" 2>/dev/null || true
    if ! wait_until 60 "kafka exit" pid_gone "$pid"; then
        log "Kafka: still running after 60s; killing"
        kill -9 "$pid" 2>/dev/null || true
        wait_until 10 "kafka exit" pid_gone "$pid" || true
    fi
    rm -f "$KAFKA_PIDFILE"
}

# kafka-stop / kafka-kill / kafka-start: only for the broker `up` started. KAFKA_STOPPED marks a broker stopped by
# kafka-stop or kafka-kill, so that kafka-start knows it may start it again (`down` removes the pid file; a stopped
# broker has none).
kafka_ours() { pid_alive "$KAFKA_PIDFILE" || [[ -e $KAFKA_STOPPED ]]; }
kafka_port_closed() { ! port_in_use "$KAFKA_HOST" "$KAFKA_PORT"; }

kafka_stop() {
    if ! kafka_ours; then
        if kafka_ping; then
            die "Kafka at $KAFKA_BOOTSTRAP was not started by brokers.sh; cannot stop it"
        fi
        die "no Kafka started by brokers.sh is running (run integration/brokers.sh up)"
    fi
    if ! pid_alive "$KAFKA_PIDFILE"; then
        log "Kafka: already stopped"
        return 0
    fi
    local pid
    pid=$(cat "$KAFKA_PIDFILE")
    touch "$KAFKA_STOPPED"
    log "Kafka: stopping broker (pid $pid)"
    kill "$pid" 2>/dev/null || true
    if ! wait_until 60 "kafka exit" pid_gone "$pid"; then
        log "Kafka: still running after 60s; killing"
        kill -9 "$pid" 2>/dev/null || true
        wait_until 10 "kafka exit" pid_gone "$pid" || true
    fi
    wait_until 10 "kafka port closed" kafka_port_closed || die "$KAFKA_HOST:$KAFKA_PORT still accepts connections"
    rm -f "$KAFKA_PIDFILE"
    log "Kafka: stopped; $KAFKA_HOST:$KAFKA_PORT refuses connections"
}

# SIGKILL: what a crash (or the OOM killer) does to the broker; kafka-start recovers its logs.
kafka_kill() {
    if ! kafka_ours; then
        if kafka_ping; then
            die "Kafka at $KAFKA_BOOTSTRAP was not started by brokers.sh; cannot kill it"
        fi
        die "no Kafka started by brokers.sh is running (run integration/brokers.sh up)"
    fi
    if ! pid_alive "$KAFKA_PIDFILE"; then
        log "Kafka: already stopped"
        return 0
    fi
    local pid
    pid=$(cat "$KAFKA_PIDFILE")
    touch "$KAFKA_STOPPED"
    log "Kafka: killing broker (pid $pid) with SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    wait_until 30 "kafka exit" pid_gone "$pid" || die "Kafka (pid $pid) survived SIGKILL"
    wait_until 10 "kafka port closed" kafka_port_closed || die "$KAFKA_HOST:$KAFKA_PORT still accepts connections"
    rm -f "$KAFKA_PIDFILE"
    log "Kafka: killed; $KAFKA_HOST:$KAFKA_PORT refuses connections"
}

kafka_restart() {
    if pid_alive "$KAFKA_PIDFILE"; then
        if kafka_ping; then
            rm -f "$KAFKA_STOPPED"
            log "Kafka: already running (started by brokers.sh)"
            return 0
        fi
        log "Kafka: our broker (pid $(cat "$KAFKA_PIDFILE")) is still starting; waiting"
    else
        if [[ ! -e $KAFKA_STOPPED ]]; then
            if kafka_ping; then
                die "Kafka at $KAFKA_BOOTSTRAP was not started by brokers.sh; cannot start it"
            fi
            die "Kafka was not stopped by kafka-stop; cannot start it (run integration/brokers.sh up)"
        fi
        port_in_use "$KAFKA_HOST" "$KAFKA_PORT" && die "$KAFKA_HOST:$KAFKA_PORT is in use by something else"
        kafka_start
    fi
    kafka_wait
    rm -f "$KAFKA_STOPPED"
    log "Kafka: up again at $KAFKA_BOOTSTRAP, produce/consume round trip OK (log: $KAFKA_LOG)"
}

# ---------------------------------------------------------------------------------------------- sample
# The RabbitMQ half of `sample` speaks AMQP itself, through the RabbitMQ Java client (AmqpSetup.java, next to
# KafkaCheck.java), rather than through the broker's CLI:
# - it works for every broker `up` accepts: the node it started, a system node, a container or a remote host
#   at SLUICE_TEST_AMQP_URL, with the URL and credentials the gateway itself uses. `rabbitmqctl` needs the
#   node's name and Erlang cookie, so it only reaches local nodes, and rabbitmqadmin needs the management
#   plugin, which the node `up` starts does not enable;
# - queue.declare and queue.bind are the protocol's own idempotent operations: declaring an existing queue with
#   the same properties, or an existing binding, changes nothing, and a conflicting queue (e.g. not durable)
#   is reported by the broker (PRECONDITION_FAILED) instead of being silently replaced. rabbitmqctl has no
#   command to declare a queue or a binding, and `rabbitmqctl eval` would call internal Erlang functions
#   (rabbit_amqqueue:declare, rabbit_binding:add) that are no public interface and change between releases
#   (Debian ships 3.10 here; 4.x moved the metadata store to Khepri);
# - it costs one ~0.4 s JVM start (a rabbitmqctl call costs about as much), in parallel with the Kafka topic's.
amqp_client_fetch() {
    [[ -e $AMQP_CLIENT_HOME/.complete ]] && return 0
    command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the RabbitMQ Java client from Maven Central"
    log "fetching the RabbitMQ Java client $AMQP_CLIENT_VERSION from Maven Central into $AMQP_CLIENT_LIBS"
    local tmp=$AMQP_CLIENT_HOME/libs.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -q -B -Dstyle.color=never -f "$SCRIPT_DIR/kafka/amqp-pom.xml" -Damqp.client.version="$AMQP_CLIENT_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2; then
        die "mvn could not fetch the RabbitMQ Java client $AMQP_CLIENT_VERSION"
    fi
    ls "$tmp"/amqp-client-"$AMQP_CLIENT_VERSION".jar >/dev/null || die "amqp-client-$AMQP_CLIENT_VERSION.jar missing after mvn"
    rm -rf "$AMQP_CLIENT_LIBS"
    mv "$tmp" "$AMQP_CLIENT_LIBS"
    touch "$AMQP_CLIENT_HOME/.complete"
}

# AmqpSetup.java compiled once per version of its source; prints the class directory.
amqp_setup_classes() {
    local src=$SCRIPT_DIR/kafka/AmqpSetup.java sum dir
    sum=$(sha1sum "$src" | cut -c1-12)
    dir=$AMQP_CLIENT_HOME/setup-$sum
    if [[ ! -e $dir/AmqpSetup.class ]]; then
        command -v javac >/dev/null || die "javac (a Java 17 JDK) is needed to compile integration/kafka/AmqpSetup.java"
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        javac -nowarn -cp "$AMQP_CLIENT_LIBS/*" -d "$dir.tmp" "$src" >&2
        rm -rf "$dir"
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

amqp_setup() { # AmqpSetup ARGS... (after amqp_client_fetch)
    local classes
    classes=$(amqp_setup_classes)
    java -Xmx64m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$classes:$AMQP_CLIENT_LIBS/*" AmqpSetup "$@"
}

# Declares the sample's queue and, unless the round trip in `up` already did, its topic: the two JVMs run in
# parallel (fetching and compiling first, one at a time).
cmd_sample() {
    amqp_ping || die "no AMQP broker reachable at $AMQP_HOST:$AMQP_PORT (run integration/brokers.sh up)"
    kafka_ping || die "no Kafka broker reachable at $KAFKA_BOOTSTRAP (run integration/brokers.sh up)"
    local t0=$SECONDS rc=0 amqp_pid
    amqp_client_fetch
    amqp_setup_classes >/dev/null
    if [[ -z ${SAMPLE_TOPIC_DONE:-} ]]; then
        kafka_fetch
        kafka_check_classes >/dev/null
    fi
    amqp_setup "$AMQP_URL" 30 "$SAMPLE_QUEUE" "$SAMPLE_EXCHANGE" "$SAMPLE_BINDING_KEY" &
    amqp_pid=$!
    if [[ -z ${SAMPLE_TOPIC_DONE:-} ]]; then
        kafka_check topic "$KAFKA_BOOTSTRAP" "$SAMPLE_TOPIC" "$SAMPLE_TOPIC_PARTITIONS" || rc=1
    fi
    wait "$amqp_pid" || rc=1
    ((rc == 0)) || die "could not provision the sample config's broker objects (see above)"
    log "sample config provisioned ($((SECONDS - t0))s): Kafka topic $SAMPLE_TOPIC, RabbitMQ queue $SAMPLE_QUEUE <- $SAMPLE_EXCHANGE ($SAMPLE_BINDING_KEY)"
}

# ---------------------------------------------------------------------------------------------- commands
cmd_status() {
    local rc=0
    if amqp_ping; then
        echo "rabbitmq: up at $AMQP_HOST:$AMQP_PORT$([[ -e $RABBIT_MARKER ]] && pid_alive "$RABBIT_PIDFILE" && echo " (started by brokers.sh, log $RABBIT_LOG)")"
        port_in_use "$AMQP_HOST" "$AMQPS_PORT" && echo "rabbitmq: amqps on $AMQP_HOST:$AMQPS_PORT"
    else
        echo "rabbitmq: DOWN at $AMQP_HOST:$AMQP_PORT$(pid_alive "$RABBIT_PIDFILE" && echo " (node running, application stopped?)")"
        rc=1
    fi
    if kafka_ping; then
        echo "kafka: up at $KAFKA_BOOTSTRAP$(pid_alive "$KAFKA_PIDFILE" && echo " (started by brokers.sh, log $KAFKA_LOG)")"
        port_in_use 127.0.0.1 "$KAFKA_SASL_SSL_PORT" && echo "kafka: SSL on 127.0.0.1:$KAFKA_SSL_PORT, SASL_SSL on 127.0.0.1:$KAFKA_SASL_SSL_PORT"
    else
        echo "kafka: DOWN at $KAFKA_BOOTSTRAP"
        rc=1
    fi
    return $rc
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        up)
            local t0=$SECONDS
            rabbit_up
            kafka_up
            # The SQS-compatible server (ElasticMQ) has a script of its own; its endpoint goes to stderr here.
            "$SCRIPT_DIR/sqs.sh" up >&2
            log "brokers up ($((SECONDS - t0))s): AMQP $AMQP_URL, Kafka $KAFKA_BOOTSTRAP, SQS $("$SCRIPT_DIR/sqs.sh" url)"
            cmd_sample
            ;;
        sample) cmd_sample ;;
        down)
            "$SCRIPT_DIR/sqs.sh" down
            kafka_down
            rabbit_down
            ;;
        status) cmd_status ;;
        ca-file)
            [[ -s $TLS_DIR/ca.pem ]] || die "no test CA yet in $TLS_DIR (run integration/brokers.sh up)"
            echo "$TLS_DIR/ca.pem"
            ;;
        clean)
            kafka_down
            rabbit_down
            rm -rf "$STATE_DIR"
            log "removed $STATE_DIR"
            ;;
        rabbit-stop)
            rabbitmqctl_ -q stop_app >&2
            wait_until 30 "amqp closed" amqp_gone || true
            ;;
        rabbit-start)
            if [[ -e $RABBIT_MARKER ]]; then rabbit_up; else rabbit_start_app; fi
            ;;
        rabbitmqctl) rabbitmqctl_ "$@" ;;
        kafka-stop) kafka_stop ;;
        kafka-kill) kafka_kill ;;
        kafka-start) kafka_restart ;;
        kafka-tail)
            [[ $# -ge 1 && $# -le 2 ]] || die "usage: brokers.sh kafka-tail TOPIC [N]"
            kafka_check tail "$KAFKA_BOOTSTRAP" "$1" "${2:-10}"
            ;;
        rabbit-get)
            [[ $# -ge 1 && $# -le 2 ]] || die "usage: brokers.sh rabbit-get QUEUE [N]"
            amqp_client_fetch
            amqp_setup get "$AMQP_URL" "$1" "${2:-10}"
            ;;
        kafka-topic)
            [[ $# -eq 2 ]] || die "usage: brokers.sh kafka-topic NAME PARTITIONS"
            kafka_check topic "$KAFKA_BOOTSTRAP" "$1" "$2"
            ;;
        *) usage ;;
    esac
}

main "$@"

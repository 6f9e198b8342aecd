# shellcheck shell=bash
# The outside peers of bench/brokers.sh (sourced by it): how each is obtained, built and cached.
#
#   Benthos v4.27.0        built from bench/peers/benthos (main.go + go.mod + go.sum) with the Go toolchain into
#                          $PEER_CACHE/benthos-4.27.0 (the module and build caches go to $SLUICE_CACHE_DIR/go, as
#                          for integration/otel.sh and integration/toxiproxy.sh)
#   RabbitMQ PerfTest      com.rabbitmq:perf-test:$PERFTEST_VERSION and its runtime dependencies from Maven Central
#                          (mvn dependency:copy-dependencies, as integration/brokers.sh fetches Kafka) into
#                          $SLUICE_CACHE_DIR/perf-test-$PERFTEST_VERSION/libs
#   kafka-producer-perf-test   org.apache.kafka.tools.ProducerPerformance: the libs of integration/brokers.sh's Kafka
#                          ($SLUICE_CACHE_DIR/kafka-$KAFKA_VERSION/libs) when they hold kafka-tools-$KAFKA_VERSION.jar,
#                          else org.apache.kafka:kafka-tools:$KAFKA_VERSION and its runtime dependencies from Maven
#                          Central into $SLUICE_CACHE_DIR/kafka-tools-$KAFKA_VERSION/libs
# Each function prints the binary / classpath on stdout, or the reason it failed on stderr and returns 1.

CACHE_DIR=${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}
PEER_CACHE=$CACHE_DIR/bench
BENTHOS_VERSION=4.27.0          # keep in sync with bench/peers/benthos/go.mod
PERFTEST_VERSION=${PERFTEST_VERSION:-2.22.1}
KAFKA_VERSION=${SLUICE_KAFKA_VERSION:-4.4.0}   # the broker's version (integration/brokers.sh)

peer_go() {   # puts a Go toolchain on PATH with the project's caches, as integration/toxiproxy.sh does
    local g found=
    for g in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go /usr/lib/go/bin/go; do
        [ -n "$g" ] && [ -x "$g" ] && { found=$g; break; }
    done
    [ -n "$found" ] || { echo "Go is needed to build Benthos and none was found (PATH, /usr/local/go/bin, /usr/lib/go/bin)" >&2; return 1; }
    PATH=$(dirname "$found"):$PATH
    export GOMODCACHE=${GOMODCACHE:-$CACHE_DIR/go/mod}
    export GOCACHE=${GOCACHE:-$CACHE_DIR/go/build}
    export GOFLAGS="-mod=mod -modcacherw"   # a module cache that rm -rf can delete
    export GOTOOLCHAIN=local                # never fetch another toolchain behind our back
}

benthos_bin() {   # builds once; prints the binary's path
    local bin=$PEER_CACHE/benthos-$BENTHOS_VERSION src=$ROOT/bench/peers/benthos build
    if [ -x "$bin" ]; then echo "$bin"; return 0; fi
    ( peer_go || exit 1
      mkdir -p "$PEER_CACHE"
      build=$(mktemp -d "$PEER_CACHE/benthos-build.XXXXXX")
      trap 'rm -rf "$build"' EXIT
      cp "$src/main.go" "$src/go.mod" "$src/go.sum" "$build/"
      log "building Benthos v$BENTHOS_VERSION ($(go version | cut -d' ' -f3); go mod tidy && go build, ~1-4 min the first time) into $bin"
      cd "$build"
      nice go mod tidy >"$build/log" 2>&1 && nice go build -trimpath -o benthos . >>"$build/log" 2>&1 ||
          { tail -30 "$build/log" >&2; echo "building Benthos v$BENTHOS_VERSION failed (see above)" >&2; exit 1; }
      "$build/benthos" --version | grep -q "v$BENTHOS_VERSION" ||
          { echo "the Benthos built from bench/peers/benthos is not v$BENTHOS_VERSION" >&2; exit 1; }
      mv "$build/benthos" "$bin"
    ) || return 1
    echo "$bin"
}

# maven_libs GROUP:ARTIFACT:VERSION DIR: the artifact and its runtime dependencies into DIR/libs (once).
maven_libs() {
    local gav=$1 home=$2 g a v tmp
    IFS=: read -r g a v <<<"$gav"
    [ -e "$home/.complete" ] && return 0
    command -v mvn >/dev/null || { echo "Maven (mvn) is needed to fetch $gav from Maven Central" >&2; return 1; }
    log "fetching $gav and its runtime dependencies from Maven Central into $home/libs"
    mkdir -p "$home"
    tmp=$(mktemp -d "$home/fetch.XXXXXX")
    cat >"$tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.sluice.bench</groupId>
  <artifactId>brokers-peer-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>
  </dependencies>
</project>
EOF
    if ! nice mvn -q -B -Dstyle.color=never -f "$tmp/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp/libs" >"$tmp/log" 2>&1 || ! [ -e "$tmp/libs/$a-$v.jar" ]; then
        grep -m5 ERROR "$tmp/log" >&2
        rm -rf "$tmp"
        echo "mvn could not fetch $gav from Maven Central" >&2
        return 1
    fi
    rm -rf "$home/libs"
    mv "$tmp/libs" "$home/libs"
    rm -rf "$tmp"
    touch "$home/.complete"
}

peer_java() {
    command -v java >/dev/null || { echo "Java (17) is needed to run $1" >&2; return 1; }
}

perftest_cp() {   # prints PerfTest's classpath
    peer_java "RabbitMQ PerfTest" || return 1
    maven_libs "com.rabbitmq:perf-test:$PERFTEST_VERSION" "$CACHE_DIR/perf-test-$PERFTEST_VERSION" || return 1
    echo "$CACHE_DIR/perf-test-$PERFTEST_VERSION/libs/*"
}

kafka_tools_cp() {   # prints the classpath of ProducerPerformance (kafka-producer-perf-test)
    peer_java "kafka-producer-perf-test" || return 1
    local broker_libs=$CACHE_DIR/kafka-$KAFKA_VERSION/libs
    if [ -e "$broker_libs/kafka-tools-$KAFKA_VERSION.jar" ]; then echo "$broker_libs/*"; return 0; fi
    maven_libs "org.apache.kafka:kafka-tools:$KAFKA_VERSION" "$CACHE_DIR/kafka-tools-$KAFKA_VERSION" || return 1
    echo "$CACHE_DIR/kafka-tools-$KAFKA_VERSION/libs/*"
}

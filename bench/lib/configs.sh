# Configurations of the systems under test for bench/run.sh (sourced; writes into $TMP).
#
# Upstream: one nginx (1 worker) answering `return 200` with a fixed 1 KiB body on three ports
# ($UP1 $UP2 $UP3, the "three endpoints"); $DEAD is a port nothing listens on (connection refused).
# Each proxy gets three variants, the same for all three proxies in spirit, each in its own natural syntax:
#   plain  one endpoint ($UP1), keep-alive to the upstream, no extras
#   res    three healthy endpoints, retries (connect failure, 5xx), passive outlier ejection, active health
#          checks every 2 s, and a rate limit far above the offered load (nothing is failing or limited)
#   fail   the `res` configuration with the third endpoint replaced by $DEAD (1 of 3 refuses connections)

NGINX_USER=""
[ "$(id -u)" -eq 0 ] && NGINX_USER="user root;"   # the default user (nobody:nogroup) may lack a group on Debian

nginx_common() {   # $1 = prefix dir
    cat <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log crit;
worker_rlimit_nofile 16384;
events { worker_connections 8192; multi_accept on; }
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

write_configs() {
    local body
    body=$(head -c 1024 /dev/zero | tr '\0' 'x')
    mkdir -p "$TMP/upstream" "$TMP/nginx" "$TMP/haproxy"
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
    maxconn 8000
    pidfile $TMP/haproxy/haproxy.pid
defaults
    mode http
    maxconn 8000
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 75s
    timeout server 30s
    timeout http-keep-alive 75s
frontend plain
    bind 127.0.0.1:$HAPROXY_PLAIN
    default_backend plain
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

    # Sluice: one process per variant (one config each), TOKIO_WORKER_THREADS=1, access log off.
    for s in plain res fail; do
        local listen admin endpoints
        case $s in
            plain) listen=$SLUICE_PLAIN admin=$SLUICE_PLAIN_ADMIN endpoints="\"http://127.0.0.1:$UP1\"" ;;
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

[telemetry]
access_log = false

[upstreams.bench]
endpoints = [$endpoints]
EOF
            if [ $s != plain ]; then
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
            if [ $s != plain ]; then
                cat <<EOF
retry = { max_retries = 2, on = ["connect-failure", "5xx"] }
rate_limit = { per_second = 1000000, burst = 1000000 }
EOF
            fi
        } > "$TMP/sluice-$s.toml"
    done
}

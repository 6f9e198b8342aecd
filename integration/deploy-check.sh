#!/usr/bin/env bash
# Offline checks of deploy/ (no cluster, no container engine, no network beyond package registries):
#   1. `kustomize build` of deploy/kubernetes/base and of every deploy/kubernetes/overlays/*;
#   2. every rendered manifest validated against the Kubernetes JSON schemas (strict, unknown fields are errors) of
#      each version in K8S_VERSIONS, CRD kinds (ServiceMonitor) against deploy/kubernetes/schemas/;
#   3. the routes.toml of each rendered ConfigMap checked with `sluice check --strict`, with the environment the
#      Deployment gives the pod (its env and the Secret's keys), so every `*_env` variable must be provided;
#      an overlay's routes.toml must equal the base's apart from [store];
#   4. the pod against the config: terminationGracePeriodSeconds > preStop + drain_delay + 2 x shutdown_grace,
#      probes on /healthz and /readyz at admin_listen's port, spool directories on writable volumes large enough,
#      non-root numeric ids, read-only root filesystem, resources, HPA, PDB, Service selectors and ports;
#   5. deploy/docker-compose.yml parsed and cross-checked (services, depends_on, mounts, ports), the sample
#      routes.toml checked with the compose environment of the gateway, stop_grace_period above the longest shutdown;
#      deploy/Dockerfile: multi-stage, numeric USER, HEALTHCHECK, COPY sources exist.
# The details are in integration/deploy/check.py.
#
#   integration/deploy-check.sh
#
# Installs what it needs, cached outside the repo in SLUICE_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/sluice):
# kustomize (go install, pinned below; needs Go, found on PATH or in /usr/local/go/bin) and a Python venv with
# integration/deploy/requirements.txt (needs python3 >= 3.11 with venv). Fails, never skips, when one is missing.
# Environment: SLUICE_BIN (default ${CARGO_TARGET_DIR:-target}/debug/sluice, built by `cargo build`),
# K8S_VERSIONS (default 1.30.0,1.37.0: the oldest and newest Kubernetes the manifests are meant for).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}
KUSTOMIZE_VERSION=v5.8.2   # v5.8.3 needs Go 1.27
KUBE_DIR=$REPO/deploy/kubernetes
export K8S_VERSIONS=${K8S_VERSIONS:-1.30.0,1.37.0}

fail() { echo "deploy-check: $*" >&2; exit 1; }

# --- the sluice binary --------------------------------------------------------------------------------------------
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir = /* ]] || target_dir=$REPO/$target_dir
SLUICE_BIN=${SLUICE_BIN:-$target_dir/debug/sluice}
[[ -x $SLUICE_BIN ]] || fail "no sluice binary at $SLUICE_BIN: run \`cargo build\` first, or set SLUICE_BIN"

# --- kustomize ----------------------------------------------------------------------------------------------------
kustomize=$CACHE_DIR/bin/kustomize-$KUSTOMIZE_VERSION.d/kustomize
if [[ ! -x $kustomize ]]; then
    go=$(command -v go || true)
    for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do [[ -n $go || ! -x $g ]] || go=$g; done
    [[ -n $go ]] || fail "kustomize is not cached and Go is missing (apt-get install golang-go, or Go in /usr/local/go)"
    echo "deploy-check: installing kustomize $KUSTOMIZE_VERSION with $("$go" version | cut -d' ' -f3) (about a minute, once)"
    mkdir -p "$CACHE_DIR/bin"
    staging=$(mktemp -d "$CACHE_DIR/bin/kustomize-install.XXXXXX")
    GOBIN=$staging nice -n 19 "$go" install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" \
        || { rm -rf "$staging"; fail "go install of kustomize $KUSTOMIZE_VERSION failed"; }
    rm -rf "$(dirname "$kustomize")"
    mv "$staging" "$(dirname "$kustomize")"
fi
"$kustomize" version | grep -q "$KUSTOMIZE_VERSION" || fail "$kustomize is not kustomize $KUSTOMIZE_VERSION"

# --- the Python venv ----------------------------------------------------------------------------------------------
venv=$CACHE_DIR/deploy-venv
req=$REPO/integration/deploy/requirements.txt
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || $(cat "$venv/.requirements.sha256" 2>/dev/null) != "$want" ]]; then
    python=$(command -v python3 || true)
    [[ -n $python ]] || fail "python3 is missing (apt-get install python3 python3-venv)"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || fail "$python is $("$python" --version 2>&1); check.py needs >= 3.11 (tomllib)"
    echo "deploy-check: creating $venv"
    rm -rf "$venv"
    mkdir -p "$CACHE_DIR"
    "$python" -m venv "$venv" || fail "python3 -m venv failed (apt-get install python3-venv)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" || fail "pip install -r $req failed"
    echo "$want" >"$venv/.requirements.sha256"
fi

# --- the checks ---------------------------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export REPO SLUICE_BIN
echo "deploy-check: kustomize $KUSTOMIZE_VERSION, $("$SLUICE_BIN" --version), Kubernetes schemas $K8S_VERSIONS"

failed=()
checked=0
for dir in "$KUBE_DIR/base" "$KUBE_DIR"/overlays/*/; do
    dir=${dir%/}
    name=${dir#"$KUBE_DIR/"}
    checked=$((checked + 1))
    rendered=$work/${name//\//_}.yaml
    if ! "$kustomize" build "$dir" >"$rendered" 2>"$work/kustomize.err"; then
        echo "$name:"
        sed 's/^/  /' "$work/kustomize.err"
        echo "FAIL: $name: kustomize build failed"
        failed+=("$name")
        continue
    fi
    base_routes=
    [[ $name = base ]] || base_routes=$KUBE_DIR/base/routes.toml
    BASE_ROUTES=$base_routes "$venv/bin/python" -B "$REPO/integration/deploy/check.py" kube "$name" "$rendered" \
        || failed+=("$name")
done
checked=$((checked + 1))
"$venv/bin/python" -B "$REPO/integration/deploy/check.py" compose || failed+=(compose)

if ((${#failed[@]})); then
    echo "deploy-check: FAILED: ${failed[*]} (of $checked)" >&2
    exit 1
fi
echo "deploy-check: ok: $checked checked (base, $((checked - 2)) overlays, compose + Dockerfile)"

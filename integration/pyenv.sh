#!/usr/bin/env bash
# A Python virtualenv with the independent clients the integration tests use (integration/python/requirements.txt:
# the webhook providers' own libraries, PyJWT, pika, confluent-kafka), cached outside the repo and rebuilt when the
# requirements change.
#
#   integration/pyenv.sh          create or update the venv; print the path of its python
#   integration/pyenv.sh python   print the path of its python (exit 1 when the venv is not ready)
#
# Environment: SLUICE_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/sluice); the venv is $SLUICE_CACHE_DIR/pyenv.
# Tests read the interpreter from SLUICE_TEST_PYTHON, which integration/test.sh sets to this venv's python.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}
VENV=$CACHE_DIR/pyenv
REQ=$SCRIPT_DIR/python/requirements.txt
STAMP=$VENV/.requirements.sha256

want=$(sha256sum "$REQ" | cut -d' ' -f1)
ready() { [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; }

if [ "${1:-}" = python ]; then
    ready || { echo "pyenv.sh: the venv is not ready; run integration/pyenv.sh" >&2; exit 1; }
    echo "$VENV/bin/python"
    exit 0
fi

if ! ready; then
    python=$(command -v python3 || true)
    [ -n "$python" ] || { echo "pyenv.sh: python3 is missing (apt-get install python3 python3-venv)" >&2; exit 1; }
    if ! "$python" -m venv --help >/dev/null 2>&1; then
        echo "pyenv.sh: installing python3-venv" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2 && apt-get install -y -q python3-venv >&2
    fi
    rm -rf "$VENV"
    mkdir -p "$CACHE_DIR"
    "$python" -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >&2
    echo "$want" >"$STAMP"
    echo "pyenv.sh: installed $(grep -cv '^#' "$REQ") packages into $VENV" >&2
fi
echo "$VENV/bin/python"

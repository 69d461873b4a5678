#!/usr/bin/env bash
# Build the pinned development environment in .venv (idempotent). Usage: bash scripts/bootstrap.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned, so nothing pulls a multi-GB CUDA build (on this machine kind 2.13.0 is a local CPU wheel).
.venv/bin/python -m pip install --quiet -c constraints.txt torch
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev,local]'
.venv/bin/python -m pip install --quiet -c constraints.txt -r requirements/reference-deps.txt
.venv/bin/python -m pip install --quiet --no-deps -c constraints.txt -r requirements/no-deps.txt
.venv/bin/python -c "import tinkerflow, torch, transformers, tinker; print('tinkerflow', tinkerflow.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"

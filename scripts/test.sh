#!/usr/bin/env bash
# The one command that installs everything and runs every test (README "Tests"; .ci/run runs it).
# Creates .venv on first use; idempotent and fast afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch is not pinned by the project; plain `torch torchvision` takes the pair on this disk.
python -m pip install -q torch torchvision
python -m pip install -q -e ".[test]"
if [ -f scripts/install_comfyui_host.py ]; then
  python scripts/install_comfyui_host.py
fi
if [ -f scripts/install_browser.sh ]; then
  bash scripts/install_browser.sh
fi
ruff check .
python -m pytest -q "$@"

#!/usr/bin/env bash
# The one command that installs everything and runs every test (README "Tests"; .ci/run runs it).
#
# Environment: the active virtual environment if there is one ($VIRTUAL_ENV), else ./.venv
# (created on first use). Installs the project with its test extra, the bundled March-2024
# ComfyUI test host, every ComfyUI source tree named in $UNLEARN_COMFYUI_TREES, and Chromium.
# Then: ruff; the whole suite on the first host; the host tier (-m comfy) again on each further
# host. Extra arguments go to every pytest run. Idempotent and fast after the first run.
#
#   UNLEARN_COMFYUI_TREES  colon-separated ComfyUI source folders to test on as well; default:
#                          ../shared/hosts/comfyui-0.3.64 when that folder exists (where the CI
#                          machine keeps ComfyUI 0.3.64); set it empty to test on one host only
#   COMFYUI_PATH           your own ComfyUI checkout instead of the bundled 2024 host
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  echo "test.sh: using the active environment $VIRTUAL_ENV"
else
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
# torch is not pinned by the project: keep the one installed; else plain `torch torchvision`.
python -c "import torch, torchvision" 2>/dev/null || python -m pip install -q torch torchvision
python -m pip install -q -e ".[test]"

DEFAULT_TREES=""
if [ -d ../shared/hosts/comfyui-0.3.64 ]; then
  DEFAULT_TREES="$(cd ../shared/hosts/comfyui-0.3.64 && pwd)"
fi
TREES="${UNLEARN_COMFYUI_TREES-$DEFAULT_TREES}"
echo "test.sh: further ComfyUI trees to test on: ${TREES:-none}"
HOSTS=()
HOSTS+=("$(python scripts/install_comfyui_host.py | tail -1)")
IFS=':' read -r -a tree_list <<< "$TREES"
for tree in "${tree_list[@]}"; do
  [ -n "$tree" ] || continue
  HOSTS+=("$(python scripts/install_comfyui_host.py --tree "$tree" | tail -1)")
done
bash scripts/install_browser.sh

ruff check .
status=0
summary=()
for i in "${!HOSTS[@]}"; do
  host="${HOSTS[$i]}"
  start=$SECONDS
  rc=0
  if [ "$i" -eq 0 ]; then
    echo "== the whole suite, ComfyUI host: $host"
    COMFYUI_PATH="${COMFYUI_PATH:-}" python -m pytest -q "$@" || rc=$?
  else
    echo "== the host tier (-m comfy), ComfyUI host: $host"
    COMFYUI_PATH="$host" python -m pytest -q -m comfy "$@" || rc=$?
  fi
  [ "$rc" -eq 0 ] || status=$rc
  summary+=("$host: $((SECONDS - start)) s, pytest exit $rc")
done
printf 'test.sh: %s\n' "${summary[@]}"
exit $status

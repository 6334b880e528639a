#!/usr/bin/env bash
# Headless Chromium for the web-UI tests (tests/test_server_ui.py): Debian's own `chromium`
# package, installed only when no Chromium is on PATH. Idempotent; does nothing when one is there.
# Without root (or without apt) it prints a note and exits 0: the browser tests then skip with
# that reason instead of failing the whole run.
set -euo pipefail
for exe in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$exe" >/dev/null 2>&1; then
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: no apt-get; install Chromium yourself to run the web-UI tests" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_browser.sh: not root; install Chromium yourself to run the web-UI tests" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
command -v chromium

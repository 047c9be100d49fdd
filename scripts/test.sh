#!/usr/bin/env bash
# The test command (README): set up (idempotent) and run the whole suite, real ComfyUI and browser included.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LUMINA_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup.sh"
if [ "${LUMINA_SKIP_BROWSER:-0}" != "1" ] && [ -z "${LUMINA_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing Debian chromium for the browser test"
    if [ "$(id -u)" = "0" ]; then apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
    else sudo apt-get update -qq >/dev/null && sudo apt-get install -y -qq chromium >/dev/null; fi
  else
    echo "[test] WARNING: no chromium and no apt-get: tests/test_browser.py will fail. Install chromium, or point" \
         "LUMINA_CHROMIUM at a chromium binary." >&2
  fi
fi
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"

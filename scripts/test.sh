#!/usr/bin/env bash
# The test command (README): set up (idempotent) and run the whole suite, real ComfyUI and browser included,
# on every ComfyUI release the pack supports: the full suite on the newest, then the tests that run inside or
# against ComfyUI (marker `host`) on each older one. LUMINA_COMFYUI=0.33.0|0.3.75 runs the full suite on that
# release only. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/hosts.sh"
if [ -n "${LUMINA_COMFYUI:-}" ]; then bash "$ROOT/scripts/setup.sh"; HOSTS=("$LUMINA_COMFYUI")
else
  bash "$ROOT/scripts/setup.sh" all
  HOSTS=()
  for v in "${HOSTS_NEWEST_FIRST[@]}"; do [ -x "$(host_python "$v")" ] && HOSTS+=("$v"); done
fi
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
LOGS="$(mktemp -d)"
status=0
rows=()
for i in "${!HOSTS[@]}"; do
  v="${HOSTS[$i]}"
  selection=()
  [ "$i" -gt 0 ] && selection=(-m host)  # the engine's tests do not depend on the host: run them once
  echo "[test] ComfyUI $v: pytest ${selection[*]} $*"
  set +e
  LUMINA_COMFYUI="$v" "$(host_python "$v")" -m pytest "${selection[@]}" "$@" 2>&1 | tee "$LOGS/$v.log"
  rc="${PIPESTATUS[0]}"
  set -e
  # 5: nothing collected (an -k that selects only engine tests leaves nothing for the older hosts)
  if [ "$rc" != 0 ] && ! { [ "$rc" = 5 ] && [ "$i" -gt 0 ]; }; then status="$rc"; fi
  rows+=("ComfyUI $v ($([ "$i" -gt 0 ] && echo "host tests" || echo "whole suite")): $({ grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)|no tests ran" "$LOGS/$v.log" || echo "pytest printed no summary (exit $rc)"; } | tail -1 | sed -E 's/^=+ //; s/ =+$//')")
done
echo
echo "[test] summary"
for r in "${rows[@]}"; do echo "[test]   $r"; done
# only the summary lines count (one per host, framed by ===== unless pytest runs with -q); failures include errors
passed=0; failed=0; skipped=0
for log in "$LOGS"/*.log; do
  line="$({ grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)|no tests ran" "$log" || true; } | tail -1)"
  n() { echo "$line" | { grep -oE "[0-9]+ $1" || true; } | awk '{s+=$1} END {print s+0}'; }
  passed=$((passed + $(n passed))); failed=$((failed + $(n failed) + $(n error))); skipped=$((skipped + $(n skipped)))
done
echo "total: $passed passed, $failed failed, $skipped skipped"
exit "$status"

#!/usr/bin/env bash
# Builds and starts Corral: the desktop app when there is a display and the desktop build's
# libraries (WebKitGTK) are installed, otherwise the headless `corral serve`. Arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."

# The binary embeds ui/dist: rebuild it first when its sources changed.
bash scripts/build-ui.sh

if [[ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]] && pkg-config --exists webkit2gtk-4.1 2>/dev/null; then
  exec cargo run --release -p corral -- "$@"
fi
if [[ "${1:-}" == "serve" ]]; then shift; fi
exec cargo run --release -p corral --no-default-features -- serve "$@"

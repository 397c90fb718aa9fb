#!/usr/bin/env bash
# Builds the installable bundles of the desktop app with the Tauri CLI:
#   scripts/bundle.sh deb,appimage     # Linux
#   scripts/bundle.sh app,dmg          # macOS
#   scripts/bundle.sh msi              # Windows (Git Bash; needs the WiX toolset, which the CLI fetches)
# Extra arguments go to `cargo tauri build` (e.g. --debug, --target aarch64-apple-darwin).
# Results: ${CARGO_TARGET_DIR:-target}/<profile>/bundle/<kind>/.
#
# Why a script: the CLI wants tauri.conf.json beside the crate's Cargo.toml, but ours lives at the
# repository root (src-tauri/build.rs and main.rs name it there). The script writes a copy into
# src-tauri/ for the CLI, with the icon paths made relative to src-tauri/, and removes it after.
# Needs the CLI: cargo install tauri-cli --version "^2" --locked
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bundles=${1:?usage: scripts/bundle.sh <deb,appimage|app,dmg|msi> [cargo tauri build options]}
shift

if ! cargo tauri --version >/dev/null 2>&1; then
    echo "the Tauri CLI is missing: cargo install tauri-cli --version '^2' --locked" >&2
    exit 1
fi

copy=src-tauri/tauri.conf.json
if [[ -e $copy ]]; then
    echo "$copy exists: the configuration lives at the repository root only" >&2
    exit 1
fi
trap 'rm -f "$copy"' EXIT
python3 - "$copy" <<'PY'
import json, sys
config = json.load(open("tauri.conf.json"))
config["bundle"]["icon"] = ["../" + icon for icon in config["bundle"]["icon"]]
json.dump(config, open(sys.argv[1], "w"), indent=2)
PY

# The web UI is embedded at compile time: build it first when its sources are here.
bash scripts/build-ui.sh 2>/dev/null || true

TAURI_APP_PATH=src-tauri cargo tauri build --bundles "$bundles" "$@"

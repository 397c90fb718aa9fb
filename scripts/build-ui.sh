#!/usr/bin/env bash
# Builds the web UI (ui/ -> ui/dist, which the Rust build embeds) when it is stale; does nothing
# when ui/dist is newer than every source of it. `npm ci` runs first when node_modules is missing
# or older than package-lock.json. CORRAL_SKIP_UI_BUILD=1 skips it all (the engine then serves a
# page saying the UI is not built). src-tauri/build.rs does the same during `cargo build`, but
# only warns where this script fails: the scripts call it first to stop at a broken UI build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n ${CORRAL_SKIP_UI_BUILD:-} && ${CORRAL_SKIP_UI_BUILD} != 0 ]]; then
    echo "web UI: build skipped (CORRAL_SKIP_UI_BUILD is set)"
    exit 0
fi
if [[ ! -f ui/package.json ]]; then
    echo "web UI: no ui/package.json, nothing to build"
    exit 0
fi
cd ui

# One UI build at a time in this folder (build.rs takes the same lock).
if command -v flock >/dev/null; then
    exec 9>.build.lock
    flock 9
fi

# The sources of ui/dist; index.html is the last file Vite writes, so its time stamps the build.
sources=(src index.html package.json package-lock.json public)
sources+=(vite.config.* svelte.config.* tsconfig*.json)
existing=()
for source in "${sources[@]}"; do
    [[ -e $source ]] && existing+=("$source")
done
if [[ -f dist/index.html ]] &&
    [[ -z $(find "${existing[@]}" -newer dist/index.html -print -quit) ]]; then
    echo "web UI: ui/dist is up to date"
    exit 0
fi

if ! command -v npm >/dev/null; then
    echo "web UI: npm not found: install Node.js (20 or newer) to build the UI," \
        "or set CORRAL_SKIP_UI_BUILD=1 to run Corral without it" >&2
    exit 1
fi
# npm writes node_modules/.package-lock.json on every install.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
    echo "web UI: npm ci"
    npm ci --no-audit --no-fund
fi
echo "web UI: npm run build"
npm run build
# Mark the build as newer than its sources even if a tool kept old time stamps.
touch dist/index.html

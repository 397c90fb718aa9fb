#!/usr/bin/env bash
# The web UI's tests: type check (svelte-check, after checking that ui/src/lib/api/schema.d.ts is
# what openapi-typescript makes of the engine's document), component tests (Vitest), the production
# build, and the end-to-end run in a real browser (Debian's chromium via playwright-core) against
# `corral serve` and the real llama-server. scripts/test.sh runs it after the cargo steps; it also
# runs on its own. CORRAL_UPDATE_SCREENSHOTS=1 refreshes the screenshots in docs/screenshots/.
#
#   CORRAL_BIN        the corral binary (default: <target dir>/debug/corral, built here, headless)
#   CORRAL_LLAMA_SERVER, CORRAL_TEST_MODEL   the real llama-server (default: scripts/test-backend.sh)
#   CORRAL_MLX_SERVER, CORRAL_TEST_HF_MODEL  the real mlx_lm.server (default: scripts/test-backends-py.sh)
#   CORRAL_MLX_WHEELS the wheels pip installs mlx-lm from, offline (default: the same script)
#   CHROMIUM          the browser (default: /usr/bin/chromium)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

chromium=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $chromium ]]; then
    echo "the UI's end-to-end test needs Chromium at $chromium: apt-get install chromium" \
        "(or set CHROMIUM to another Chromium executable)" >&2
    exit 1
fi
if [[ -z ${CORRAL_LLAMA_SERVER:-} || -z ${CORRAL_TEST_MODEL:-} ]]; then
    backend_env=$(bash scripts/test-backend.sh)
    eval "$backend_env"
fi
if [[ -z ${CORRAL_MLX_SERVER:-} || -z ${CORRAL_TEST_HF_MODEL:-} || -z ${CORRAL_MLX_WHEELS:-} ]]; then
    backends_py_env=$(bash scripts/test-backends-py.sh mlx)
    eval "$backends_py_env"
fi

# npm ci when node_modules is missing or older than the lock file, then ui/dist when stale.
bash scripts/build-ui.sh

(
    cd ui
    echo "--- generated API types, svelte-check"
    npm run --silent check
    echo "--- vitest"
    npm test --silent
)

if [[ -z ${CORRAL_BIN:-} ]]; then
    # Built after the UI, so the binary embeds this ui/dist (build.rs watches it).
    cargo build -p corral --no-default-features
    CORRAL_BIN=${CARGO_TARGET_DIR:-target}/debug/corral
fi

echo "--- end to end (chromium, corral serve, llama-server, mlx_lm.server, an offline mlx-lm install)"
CORRAL_BIN=$(realpath "$CORRAL_BIN") CORRAL_LLAMA_SERVER=$CORRAL_LLAMA_SERVER \
    CORRAL_TEST_MODEL=$CORRAL_TEST_MODEL CORRAL_MLX_SERVER=$CORRAL_MLX_SERVER \
    CORRAL_TEST_HF_MODEL=$CORRAL_TEST_HF_MODEL CORRAL_MLX_WHEELS=$CORRAL_MLX_WHEELS \
    CHROMIUM=$chromium node ui/e2e/run.mjs

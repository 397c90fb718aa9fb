#!/usr/bin/env bash
# The project's whole test suite, as the README names it and CI runs it (.ci/run). Stops at the
# first failing step and says which.
#
#   1. the real backend for the e2e tests: llama-server, built from source by Corral itself
#      (`corral install llama-cpp`), and a tiny model, cached outside the repo by
#      scripts/test-backend.sh (~8 minutes the first time, the corral build included; ~1 s
#      after); their paths reach the tests as CORRAL_LLAMA_SERVER and CORRAL_TEST_MODEL
#   1b. the MLX backend for its e2e test: mlx_lm.server in a cached venv and a tiny Hugging Face
#      model, by scripts/test-backends-py.sh (~1-2 minutes the first time, well under a second
#      after); they reach the tests as CORRAL_MLX_SERVER and CORRAL_TEST_HF_MODEL, and the same
#      pins as wheels (CORRAL_MLX_WHEELS) for the test of Corral's own mlx install
#   2. cargo fmt --check
#   3. cargo clippy, warnings as errors
#   4. cargo test (e2e included: they fail, never skip, without the backend), property tests
#      included at their CI case counts (docs/fuzzing.md)
#   4b. schema fuzzing: schemathesis checks every answer of `corral serve` against its OpenAPI
#      document (scripts/test-schema.sh, a bounded pass)
#   5. the desktop build: clippy, then the app end to end over WebDriver under Xvfb
#
# The cargo steps build the headless engine (--no-default-features, without Tauri); step 5
# builds the desktop app in its own target folder.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
header() { printf '\n===== %s\n' "$*"; }

step() {
    local name=$1 t0=$SECONDS
    shift
    header "$name"
    if ! "$@"; then
        printf '\n===== FAILED: %s (after %ss)\n' "$name" "$((SECONDS - t0))" >&2
        exit 1
    fi
    printf '===== ok: %s (%ss)\n' "$name" "$((SECONDS - t0))"
}

header "backend for the e2e tests (llama-server + tiny model)"
t0=$SECONDS
# Assigned first, not eval'd straight from $(...): a failure inside must stop the run.
if ! backend_env=$(bash scripts/test-backend.sh); then
    printf '\n===== FAILED: backend for the e2e tests (after %ss)\n' "$((SECONDS - t0))" >&2
    exit 1
fi
eval "$backend_env"
export CORRAL_LLAMA_SERVER CORRAL_TEST_MODEL
printf '%s\n' "$backend_env"
printf '===== ok: backend (%ss)\n' "$((SECONDS - t0))"

header "backend for the MLX e2e tests (mlx_lm.server + tiny Hugging Face model)"
t0=$SECONDS
if ! backends_py_env=$(bash scripts/test-backends-py.sh mlx); then
    printf '\n===== FAILED: MLX backend for the e2e tests (after %ss)\n' "$((SECONDS - t0))" >&2
    exit 1
fi
eval "$backends_py_env"
export CORRAL_MLX_SERVER CORRAL_MLX_WHEELS CORRAL_TEST_HF_MODEL
printf '%s\n' "$backends_py_env"
printf '===== ok: MLX backend (%ss)\n' "$((SECONDS - t0))"

step "web UI build (embedded by the cargo steps)" bash scripts/build-ui.sh
step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy -p corral --no-default-features --all-targets -- -D warnings
step "cargo test" cargo test -p corral --no-default-features
# A bounded pass (CORRAL_SCHEMA_EXAMPLES cases per operation; docs/fuzzing.md has the long run).
step "schema fuzzing (schemathesis against corral serve)" bash scripts/test-schema.sh

# The desktop build (default features: Tauri, WebKitGTK) in its own target folder, since a
# different feature set recompiles every shared crate. Checked wherever WebKitGTK's headers are
# installed (.ci/run installs them); a machine without them can only build the headless engine.
if pkg-config --exists webkit2gtk-4.1 2>/dev/null; then
    step "cargo clippy (desktop)" env CARGO_TARGET_DIR=target/desktop \
        cargo clippy -p corral -- -D warnings
elif [[ -n ${CI:-} ]]; then
    echo "CI must check the desktop build, but WebKitGTK (libwebkit2gtk-4.1-dev) is missing" >&2
    exit 1
fi

# The desktop app end to end over WebDriver under Xvfb (scripts/test-desktop.sh). Needs a
# display server and WebKitWebDriver besides WebKitGTK; CI has them (.ci/run), elsewhere the step
# is skipped with a note when they are missing.
if pkg-config --exists webkit2gtk-4.1 2>/dev/null && command -v xvfb-run >/dev/null 2>&1 &&
    command -v WebKitWebDriver >/dev/null 2>&1 && command -v dbus-run-session >/dev/null 2>&1; then
    step "desktop e2e (WebDriver, Xvfb)" env CARGO_TARGET_DIR=target/desktop \
        bash scripts/test-desktop.sh
elif [[ -n ${CI:-} ]]; then
    echo "CI must run the desktop e2e test, but xvfb-run, WebKitWebDriver or dbus-run-session is missing" >&2
    exit 1
else
    echo "skipping the desktop e2e test: needs xvfb, webkit2gtk-driver and dbus (apt-get install)"
fi

step "web UI (svelte-check, vitest, e2e in chromium)" bash scripts/test-ui.sh

header "all steps passed in $((SECONDS - started))s"

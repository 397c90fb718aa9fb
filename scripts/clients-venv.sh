#!/usr/bin/env bash
# Project-local virtualenv (.venv/ at the repo root) with the official client libraries the
# client tests drive, pinned. Idempotent: when the venv already holds exactly these pins it
# only prints its python. Prints the venv's python path on stdout (everything else to stderr).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CORRAL_CLIENTS_VENV:-$root/.venv}"
python="$venv/bin/python"

# Bump together with tests/clients/ when a client changes its API.
pins=(
  "openai==3.57.0"
  "anthropic==2.14.0"
  "ollama==0.6.3"
  "pytest==9.2.0"
)
stamp="$venv/.corral-clients-pins"
wanted="$(printf '%s\n' "${pins[@]}")"

if [[ -x "$python" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  echo "$python"
  exit 0
fi

base="${CORRAL_PYTHON:-$(command -v python3)}"
if [[ ! -x "$python" ]]; then
  echo "creating $venv with $base" >&2
  "$base" -m venv "$venv" >&2
fi
"$python" -m pip install --disable-pip-version-check --quiet "${pins[@]}" >&2
printf '%s' "$wanted" >"$stamp"
echo "$python"

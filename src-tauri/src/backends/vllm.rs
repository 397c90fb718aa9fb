//! `vllm serve`: vLLM's OpenAI-compatible server. Its option table (`vllm_table.rs`) is generated
//! from the installed vLLM's own argument parser; this file holds the rules the table cannot
//! carry. The model is the first positional word.

use super::{vllm_table, Backend, PositionalModel};

/// The environment variable vLLM reads its API key from when `--api-key` is not given.
pub(super) const API_KEY_VAR: &str = "VLLM_API_KEY";

pub(super) static BACKEND: Backend = Backend {
    label: "vLLM",
    specs: vllm_table::SPECS,
    common: &[
        "model",
        "port",
        "host",
        "served_model_name",
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "max_model_len",
        "dtype",
        "quantization",
        "api_key",
        "trust_remote_code",
    ],
    // vLLM's bools are argparse BooleanOptionalAction: `--no-X` turns a default-on one off.
    negations: vllm_table::NEGATIONS,
    two_values: &[],
    repeat_in_one_flag: vllm_table::REPEAT_IN_ONE_FLAG,
    json_lists: vllm_table::JSON_LISTS,
    suffixed_ints: vllm_table::HUMAN_INTS,
    // vLLM's parser reads `-O3` and `-O=3` as `--optimization-level 3`.
    attached_values: &["-O"],
    executables: &["vllm"],
    subcommands: &["serve"],
    python_modules: &[
        "vllm.entrypoints.openai.api_server",
        "vllm.entrypoints.cli.main",
    ],
    model: PositionalModel::First,
    choices: &[],
    // vLLM's `--max-model-len auto` (or -1): derived from the model config
    int_keywords: &[("max_model_len", "auto", -1)],
};

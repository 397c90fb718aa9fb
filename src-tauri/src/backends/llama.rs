//! llama.cpp's `llama-server`: its option table (generated from llama.cpp's `common/arg.cpp`) and
//! the few rules the table cannot carry.

use super::{Backend, PositionalModel};

pub(super) static BACKEND: Backend = Backend {
    label: "llama.cpp",
    specs: super::llama_table::SPECS,
    common: &[
        "model",
        "hf_repo",
        "alias",
        "port",
        "host",
        "ctx_size",
        "gpu_layers",
        "threads",
        "parallel",
        "flash_attn",
        "jinja",
        "embedding",
        "cache_type_k",
        "cache_type_v",
        "mmproj",
        "api_key",
    ],
    negations: super::llama_table::NEGATIONS,
    two_values: super::llama_table::TWO_VALUES,
    repeat_in_one_flag: &[],
    json_lists: &[],
    suffixed_ints: &[],
    attached_values: &[],
    executables: &["llama-server"],
    subcommands: &[],
    python_modules: &[],
    model: PositionalModel::Flag,
    // llama.cpp ≥ Aug 2025 wants a value; a bare `--flash-attn` is rejected by it.
    choices: &[("flash_attn", &["on", "off", "auto"])],
    // `-ngl` takes `auto`/`all` too; llama.cpp stores them as -1/-2, which it also accepts.
    int_keywords: &[
        ("gpu_layers", "auto", -1),
        ("gpu_layers", "all", -2),
        ("spec_draft_ngl", "auto", -1),
        ("spec_draft_ngl", "all", -2),
    ],
};

//! `mlx_lm.server` (mlx-lm's `server.py` argparse flags).

use super::{Backend, OptionKind as K, OptionSpec, PositionalModel};

/// What the API and docs say about mlx_lm.server's missing key option.
pub(super) const NO_KEY_NOTE: &str = " mlx_lm.server has no API key option: unlike llama.cpp and \
     vLLM instances, it answers any process on this machine that reaches its port without going \
     through Corral. Keep its `host` on loopback (the default).";

const fn o(name: &'static str, flag: &'static str, kind: K, help: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        flag,
        aliases: &[],
        kind,
        help,
    }
}

static SPECS: &[OptionSpec] = &[
    o("model", "--model", K::String, "The path to the MLX model weights, tokenizer, and config"),
    o("adapter_path", "--adapter-path", K::String, "Optional path for the trained adapter weights and config."),
    o("host", "--host", K::String, "Host for the HTTP server (default: 127.0.0.1)"),
    o("port", "--port", K::Int, "Port for the HTTP server (default: 8080)"),
    o("allowed_origins", "--allowed-origins", K::String, "Allowed origins, comma-separated (default: *)"),
    o("draft_model", "--draft-model", K::String, "A model to be used for speculative decoding."),
    o("num_draft_tokens", "--num-draft-tokens", K::Int, "Number of tokens to draft when using speculative decoding (default: 3)"),
    o("trust_remote_code", "--trust-remote-code", K::Bool, "Enable trusting remote code for tokenizer"),
    o("log_level", "--log-level", K::String, "Set the logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default: INFO)"),
    o("chat_template", "--chat-template", K::String, "Specify a chat template for the tokenizer"),
    o("use_default_chat_template", "--use-default-chat-template", K::Bool, "Use the default chat template"),
    o("temp", "--temp", K::Float, "Default sampling temperature (default: 0.0)"),
    o("top_p", "--top-p", K::Float, "Default nucleus sampling top-p (default: 1.0)"),
    o("top_k", "--top-k", K::Int, "Default top-k sampling (default: 0, disables top-k)"),
    o("min_p", "--min-p", K::Float, "Default min-p sampling (default: 0.0, disables min-p)"),
    o("max_tokens", "--max-tokens", K::Int, "Default maximum number of tokens to generate (default: 512)"),
    o("chat_template_args", "--chat-template-args", K::String, "A JSON object of arguments for the tokenizer's apply_chat_template, e.g. {\"enable_thinking\":false}"),
    o("decode_concurrency", "--decode-concurrency", K::Int, "When a request is batchable then decode that many requests in parallel (default: 32)"),
    o("prompt_concurrency", "--prompt-concurrency", K::Int, "When a request is batchable then process that many prompts in parallel (default: 8)"),
    o("prefill_step_size", "--prefill-step-size", K::Int, "Step size for prefill processing (default: 2048)"),
    o("prompt_cache_size", "--prompt-cache-size", K::Int, "Maximum number of distinct KV caches to hold in the prompt cache (default: 10)"),
    o("prompt_cache_bytes", "--prompt-cache-bytes", K::String, "Maximum size of the KV caches, in bytes or with a unit (e.g. 8GB)"),
    o("kv_bits", "--kv-bits", K::Int, "Number of bits for KV cache quantization (e.g. 4 or 8); disables batching"),
    o("kv_group_size", "--kv-group-size", K::Int, "Group size for KV cache quantization (default: 64)"),
    o("quantized_kv_start", "--quantized-kv-start", K::Int, "Token position to start KV cache quantization"),
    o("pipeline", "--pipeline", K::Bool, "Use pipelining instead of tensor parallelism"),
];

pub(super) static BACKEND: Backend = Backend {
    label: "MLX LM",
    specs: SPECS,
    common: &[
        "model",
        "port",
        "host",
        "adapter_path",
        "draft_model",
        "max_tokens",
        "temp",
        "top_p",
        "trust_remote_code",
        "chat_template",
    ],
    negations: &[],
    two_values: &[],
    repeat_in_one_flag: &[],
    json_lists: &[],
    suffixed_ints: &[],
    attached_values: &[],
    executables: &["mlx_lm.server", "mlx_lm"],
    // `mlx_lm server ...`, the newer spelling of `mlx_lm.server`
    subcommands: &["server"],
    python_modules: &["mlx_lm.server", "mlx_lm"],
    model: PositionalModel::Flag,
    choices: &[(
        "log_level",
        &["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )],
    int_keywords: &[],
};

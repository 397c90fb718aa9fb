//! What the engine must know to run and route each backend, beyond its options: how readiness
//! is proven, what ends it cleanly, which `model` name it expects in a request, and how it
//! describes its models. The supervisor, routing and the Ollama layer ask this table instead of
//! matching on the backend themselves, so a new backend's rules live in one place.

use super::{BackendType, StopSignal};

/// How one kind of backend behaves.
#[derive(Debug)]
pub struct Descriptor {
    /// Polled until it answers 200, then periodically while the backend runs.
    pub health_path: &'static str,
    /// What proves the backend can answer, beyond its health path.
    pub readiness: Readiness,
    /// What an orderly stop sends first (SIGKILL follows after the grace).
    pub stop_signal: StopSignal,
    /// The `model` a request body must carry for the backend to answer it.
    pub model_name: ModelName,
    /// The model format shown to Ollama clients when the model's file name says nothing.
    pub model_format: &'static str,
    /// Its chat template renders tool calls by default (Ollama clients look for `tools`).
    pub renders_tools: bool,
    /// It lists the Hugging Face cache folder, which must exist (see
    /// [`BackendType::folder_to_create`]).
    pub lists_hub_cache: bool,
}

/// What makes a started backend count as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Its health path answering 200.
    Health,
    /// A one-token completion answering 200, when the instance names a model: the health path
    /// answers before the model has loaded (or when it failed to).
    CompletionWhenModelSet,
}

/// Which name the backend answers to in a request's `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelName {
    /// Any name: the client's is kept.
    Any,
    /// The first of these options that has a value (its first word), else the client's name.
    FirstOf(&'static [&'static str]),
}

static LLAMA_CPP: Descriptor = Descriptor {
    // llama-server answers 503 on /health until its model has loaded.
    health_path: "/health",
    readiness: Readiness::Health,
    // llama-server shuts down cleanly on SIGINT, as on Ctrl-C in a terminal.
    stop_signal: StopSignal::Interrupt,
    // llama-server answers whatever `model` says; keeping the client's name is kinder.
    model_name: ModelName::Any,
    model_format: "gguf",
    // Its Jinja chat templates, on by default, render tool calls.
    renders_tools: true,
    lists_hub_cache: false,
};

static MLX_LM: Descriptor = Descriptor {
    // server.py's do_GET answers /health, but with 200 as soon as its socket binds, while the
    // model is still loading, and it keeps running with /health 503 when the load fails. A
    // one-token completion waits for the load and then answers or fails with "generation
    // thread died". Without a `--model` it loads nothing at start: nothing to wait for.
    health_path: "/health",
    readiness: Readiness::CompletionWhenModelSet,
    // SIGINT becomes a KeyboardInterrupt that aborts the process (SIGABRT, exit 134) once a
    // model is loaded; SIGTERM ends it at once.
    stop_signal: StopSignal::Terminate,
    // Any other name is taken for a hub repository id, which fails offline.
    model_name: ModelName::FirstOf(&["model"]),
    model_format: "mlx",
    renders_tools: false,
    // `/v1/models` lists the hub cache and answers an empty body when the folder is missing.
    lists_hub_cache: true,
};

static VLLM: Descriptor = Descriptor {
    // vLLM opens its port only once the model is loaded.
    health_path: "/health",
    readiness: Readiness::Health,
    stop_signal: StopSignal::Interrupt,
    // vLLM answers 404 for any name but its served model name, which defaults to the model.
    model_name: ModelName::FirstOf(&["served_model_name", "model"]),
    model_format: "safetensors",
    renders_tools: false,
    lists_hub_cache: false,
};

impl BackendType {
    pub fn descriptor(self) -> &'static Descriptor {
        match self {
            BackendType::LlamaCpp => &LLAMA_CPP,
            BackendType::MlxLm => &MLX_LM,
            BackendType::Vllm => &VLLM,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use serde_json::json;

    use super::super::BackendOptions;
    use super::*;

    fn options(backend: BackendType, value: serde_json::Value) -> BackendOptions {
        BackendOptions::from_json(backend, &value).unwrap()
    }

    #[test]
    fn each_backend_gets_the_model_name_it_answers_to() {
        let llama = options(BackendType::LlamaCpp, json!({"model": "/m/tiny.gguf"}));
        assert_eq!(llama.expected_model_name(), None);
        let mlx = options(BackendType::MlxLm, json!({"model": "/m/tiny-mlx"}));
        assert_eq!(mlx.expected_model_name().as_deref(), Some("/m/tiny-mlx"));
        let vllm = options(BackendType::Vllm, json!({"model": "/m/tiny-hf"}));
        assert_eq!(vllm.expected_model_name().as_deref(), Some("/m/tiny-hf"));
        let served = options(
            BackendType::Vllm,
            json!({"model": "/m/tiny-hf", "served_model_name": "tiny other"}),
        );
        assert_eq!(served.expected_model_name().as_deref(), Some("tiny"));
        let none = options(BackendType::Vllm, json!({}));
        assert_eq!(none.expected_model_name(), None);
    }

    #[test]
    fn only_mlx_proves_readiness_with_a_completion_and_only_once_it_names_a_model() {
        let mlx = options(BackendType::MlxLm, json!({"model": "/m/tiny-mlx"}));
        assert_eq!(
            mlx.ready_request().map(|(path, _)| path),
            Some("/v1/completions")
        );
        assert_eq!(options(BackendType::MlxLm, json!({})).ready_request(), None);
        for backend in [BackendType::LlamaCpp, BackendType::Vllm] {
            assert_eq!(
                options(backend, json!({"model": "/m/x"})).ready_request(),
                None
            );
        }
        assert_eq!(mlx.stop_signal(), StopSignal::Terminate);
        assert_eq!(
            options(BackendType::Vllm, json!({})).stop_signal(),
            StopSignal::Interrupt
        );
    }
}

//! The three backends Corral runs: their typed options, argv building, parse-command and health
//! paths. One metadata table per backend (`specs`) is the single source of option names, flags,
//! aliases, types and help; argv building, parse-command and the OpenAPI schema all read it.
//!
//! INTERFACE (fixed; the engine codes against exactly these signatures).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendType {
    LlamaCpp,
    MlxLm,
    Vllm,
}

impl BackendType {
    /// The wire name: `llama_cpp`, `mlx_lm`, `vllm`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::LlamaCpp => "llama_cpp",
            BackendType::MlxLm => "mlx_lm",
            BackendType::Vllm => "vllm",
        }
    }
}

/// The value type of one option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionKind {
    Bool,
    Int,
    Float,
    String,
    /// A repeatable flag collected into an array of strings.
    StringList,
}

/// Metadata of one backend option: the one table that drives everything else.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// JSON key, snake_case (`gpu_layers`).
    pub name: &'static str,
    /// Long flag (`--gpu-layers`).
    pub flag: &'static str,
    /// Other spellings accepted by parse-command (`-ngl`, `--n-gpu-layers`).
    pub aliases: &'static [&'static str],
    pub kind: OptionKind,
    pub help: &'static str,
}

/// Validated options of one instance's backend. Absent and zero differ: only options that were
/// set appear in JSON and argv.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendOptions {
    // implementation-defined
}

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    // implementation-defined variants; Display is a sentence a user can act on.
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    // implementation-defined; Display is the `details` text.
}

impl ParseError {
    /// The `error` code of the 400 answer: `invalid_command` (empty) or `parse_error`.
    pub fn code(&self) -> &'static str {
        todo!()
    }
}

impl BackendOptions {
    /// Validates `backend_options` JSON (an object) for `backend`.
    pub fn from_json(backend: BackendType, value: &serde_json::Value) -> Result<Self, OptionsError> {
        let _ = (backend, value);
        todo!()
    }
    /// The set options as a JSON object with sorted keys, `extra_args` included when set.
    pub fn to_json(&self) -> serde_json::Value {
        todo!()
    }
    pub fn backend_type(&self) -> BackendType {
        todo!()
    }
    pub fn model(&self) -> Option<&str> {
        todo!()
    }
    pub fn port(&self) -> Option<u16> {
        todo!()
    }
    pub fn set_port(&mut self, port: u16) {
        let _ = port;
        todo!()
    }
    /// The host the backend listens on, if set (else it listens on 127.0.0.1).
    pub fn host(&self) -> Option<&str> {
        todo!()
    }
    /// The arguments after the configured command and its configured args.
    pub fn to_args(&self) -> Vec<String> {
        todo!()
    }
    /// Path polled for readiness (`/health`).
    pub fn health_path(&self) -> &'static str {
        todo!()
    }
}

/// Parses a shell command line (`llama-server -m x.gguf --port 8080`) into options.
pub fn parse_command(backend: BackendType, command: &str) -> Result<BackendOptions, ParseError> {
    let _ = (backend, command);
    todo!()
}

/// The metadata table of `backend`.
pub fn specs(backend: BackendType) -> &'static [OptionSpec] {
    let _ = backend;
    todo!()
}

/// JSON Schema (OpenAPI 3.1 flavour) of `backend_options` for `backend`, built from `specs`.
pub fn options_schema(backend: BackendType) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let _ = backend;
    todo!()
}

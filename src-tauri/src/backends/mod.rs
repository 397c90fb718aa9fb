//! The three backends Corral runs: their typed options, argv building, parse-command, and how
//! each is run and routed ([`Descriptor`]). One metadata table per backend (`specs`) is the
//! single source of option names, flags, aliases, types and help; argv building, parse-command
//! and the OpenAPI schema all read it.

mod argv;
mod descriptor;
pub mod install;
pub mod installed;
mod llama;
mod llama_table;
mod mlx;
mod parse;
mod schema;
mod secret;
mod values;
mod vllm;
mod vllm_table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use descriptor::{Descriptor, ModelName, Readiness};
pub use schema::{fields, label, options_schema, FieldType, OptionField};
pub use secret::{BackendSecret, SecretHandover};
pub use values::lists_from_strings;
pub(crate) use values::whole;
use values::{extra_args_from_json, value_from_json};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BackendType {
    LlamaCpp,
    MlxLm,
    Vllm,
}

impl BackendType {
    pub const ALL: [BackendType; 3] =
        [BackendType::LlamaCpp, BackendType::MlxLm, BackendType::Vllm];

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
    /// Which table `values` follows.
    backend: BackendType,
    /// Set options by their spec name; a BTreeMap so JSON comes out sorted without a copy.
    values: BTreeMap<&'static str, OptionValue>,
    /// Flags Corral does not model: snake_case key -> value (`""`/`"true"`: a bare switch).
    extra_args: BTreeMap<String, String>,
}

/// The value of one set option; its variant always matches the spec's `OptionKind`.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    StringList(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("backend_options must be a JSON object")]
    NotAnObject,
    #[error(
        "unknown option `{key}` for {backend}; flags Corral does not model go in `extra_args`, \
         e.g. {{\"extra_args\": {{\"{key}\": \"value\"}}}}"
    )]
    UnknownOption { backend: &'static str, key: String },
    #[error("option `{key}` must be {expected}, not {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("option `{key}` is out of range: {value} (allowed: {allowed})")]
    OutOfRange {
        key: String,
        value: String,
        allowed: String,
    },
    #[error("option `{key}` must be one of {allowed}, not {value:?}")]
    NotAChoice {
        key: String,
        value: String,
        allowed: String,
    },
    #[error("`{key}` and `{other}` set the same option; keep one")]
    Duplicate { key: String, other: String },
    #[error("extra_args: {0}")]
    ExtraArgs(String),
}

impl OptionsError {
    /// The option the error is about, by its name in the table when the key names one (`ngl`
    /// -> `gpu_layers`); `extra_args` for those; `None` when it is about the whole object.
    pub fn key(&self, backend: BackendType) -> Option<String> {
        let key = match self {
            OptionsError::NotAnObject => return None,
            OptionsError::ExtraArgs(_) => return Some("extra_args".to_owned()),
            OptionsError::UnknownOption { key, .. }
            | OptionsError::WrongType { key, .. }
            | OptionsError::OutOfRange { key, .. }
            | OptionsError::NotAChoice { key, .. }
            | OptionsError::Duplicate { key, .. } => key,
        };
        let canonical = Backend::of(backend).lookup(key).map(|spec| spec.name);
        Some(canonical.map_or_else(|| key.clone(), str::to_owned))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("Command cannot be empty")]
    Empty,
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    #[error("malformed flag: {0}")]
    MalformedFlag(String),
    #[error("{flag} needs a value ({expected})")]
    MissingValue {
        flag: String,
        expected: &'static str,
    },
    #[error("{flag} expects {expected}, got {value:?}")]
    InvalidValue {
        flag: String,
        expected: &'static str,
        value: String,
    },
}

impl ParseError {
    /// The `error` code of the 400 answer: `invalid_command` (empty) or `parse_error`.
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::Empty => "invalid_command",
            _ => "parse_error",
        }
    }
}

/// Where the model goes in argv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PositionalModel {
    /// `--model <m>` like any other option.
    Flag,
    /// The first word after the configured command and args (`vllm serve <m> ...`).
    First,
}

/// Everything one backend needs beyond its spec table.
struct Backend {
    /// The name people know it by (`llama.cpp`).
    label: &'static str,
    specs: &'static [OptionSpec],
    /// The options a form shows first, in this order; the rest are there to search.
    common: &'static [&'static str],
    /// `(option, flag)`: what a bool option emits when false; without an entry it emits nothing.
    negations: &'static [(&'static str, &'static str)],
    /// Options whose one string value is two argv words (`START END`).
    two_values: &'static [&'static str],
    /// List options written as `--flag a b` (argparse nargs='+') instead of `--flag a --flag b`.
    repeat_in_one_flag: &'static [&'static str],
    /// List options written as one JSON array word (`--flag '["a","b"]'`), as the backend reads them.
    json_lists: &'static [&'static str],
    /// Int options parse-command also reads with a size suffix: `k`/`m`/`g`/`t` decimal (`25.6k` =
    /// 25600), `K`/`M`/`G`/`T` binary (`1K` = 1024), as vLLM does.
    suffixed_ints: &'static [&'static str],
    /// Short flags whose value may follow without a space or after `=` (`-O3`, `-O=3`).
    attached_values: &'static [&'static str],
    /// Executable names parse-command skips (case-insensitive).
    executables: &'static [&'static str],
    /// Subcommands parse-command skips after the executable (`serve`).
    subcommands: &'static [&'static str],
    /// `python -m <module>` forms parse-command skips.
    python_modules: &'static [&'static str],
    model: PositionalModel,
    /// String options with a closed set of values.
    choices: &'static [(&'static str, &'static [&'static str])],
    /// Words parse-command accepts for an int option: `(option, word, value)`.
    int_keywords: &'static [(&'static str, &'static str, i64)],
}

impl Backend {
    fn of(backend: BackendType) -> &'static Backend {
        match backend {
            BackendType::LlamaCpp => &llama::BACKEND,
            BackendType::MlxLm => &mlx::BACKEND,
            BackendType::Vllm => &vllm::BACKEND,
        }
    }

    /// The spec a JSON key or flag name (dashes stripped, `-` -> `_`) names: its name, its flag or
    /// one of its aliases (`ngl`, `n_gpu_layers`, `fim_qwen_1.5b_default`).
    fn lookup(&self, key: &str) -> Option<&'static OptionSpec> {
        self.specs.iter().find(|spec| {
            spec.name == key
                || flag_key(spec.flag) == key
                || spec.aliases.iter().any(|alias| flag_key(alias) == key)
        })
    }

    fn choices(&self, name: &str) -> Option<&'static [&'static str]> {
        self.choices
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
    }

    fn negation(&self, name: &str) -> Option<&'static str> {
        self.negations
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    fn is_two_values(&self, name: &str) -> bool {
        self.two_values.contains(&name)
    }
}

/// `--n-gpu-layers` -> `n_gpu_layers`: the form JSON keys and parse-command compare.
fn flag_key(flag: &str) -> String {
    flag.trim_start_matches('-').replace('-', "_")
}

fn kind_expects(kind: OptionKind) -> &'static str {
    match kind {
        OptionKind::Bool => "true or false",
        OptionKind::Int => "an integer",
        OptionKind::Float => "a number",
        OptionKind::String => "a string",
        OptionKind::StringList => "an array of strings",
    }
}

fn describe_json(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("the boolean {b}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) => format!("the string {s:?}"),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

impl BackendOptions {
    /// No option set.
    pub fn empty(backend: BackendType) -> Self {
        BackendOptions {
            backend,
            values: BTreeMap::new(),
            extra_args: BTreeMap::new(),
        }
    }

    /// The value of option `name` (its spec name), if set.
    pub fn get(&self, name: &str) -> Option<&OptionValue> {
        self.values.get(name)
    }

    /// The flags Corral does not model, by snake_case key.
    pub fn extra_args(&self) -> &BTreeMap<String, String> {
        &self.extra_args
    }

    /// Validates `backend_options` JSON (an object) for `backend`.
    pub fn from_json(
        backend: BackendType,
        value: &serde_json::Value,
    ) -> Result<Self, OptionsError> {
        let table = Backend::of(backend);
        let mut options = BackendOptions::empty(backend);
        let object = match value {
            serde_json::Value::Null => return Ok(options),
            serde_json::Value::Object(object) => object,
            _ => return Err(OptionsError::NotAnObject),
        };
        // which key set each option, to report an alias and its canonical key given together
        let mut set_by: BTreeMap<&'static str, &str> = BTreeMap::new();
        for (key, raw) in object {
            if key == "extra_args" {
                options.extra_args = extra_args_from_json(table, raw)?;
                continue;
            }
            let spec = table
                .lookup(key)
                .ok_or_else(|| OptionsError::UnknownOption {
                    backend: backend.as_str(),
                    key: key.clone(),
                })?;
            if let Some(other) = set_by.insert(spec.name, key) {
                return Err(OptionsError::Duplicate {
                    key: key.clone(),
                    other: other.to_string(),
                });
            }
            if raw.is_null() {
                continue;
            }
            if let Some(value) = value_from_json(table, spec, key, raw)? {
                options.values.insert(spec.name, value);
            }
        }
        Ok(options)
    }

    /// The set options as a JSON object with sorted keys, `extra_args` included when set.
    pub fn to_json(&self) -> serde_json::Value {
        let mut sorted: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
        for (name, value) in &self.values {
            let json = match value {
                OptionValue::Bool(b) => serde_json::Value::Bool(*b),
                OptionValue::Int(i) => serde_json::Value::from(*i),
                // non-finite floats are rejected on the way in, so from_f64 always succeeds
                OptionValue::Float(f) => serde_json::Number::from_f64(*f)
                    .map(serde_json::Value::Number)
                    .unwrap_or(serde_json::Value::Null),
                OptionValue::String(s) => serde_json::Value::String(s.clone()),
                OptionValue::StringList(list) => serde_json::Value::Array(
                    list.iter()
                        .cloned()
                        .map(serde_json::Value::String)
                        .collect(),
                ),
            };
            sorted.insert(name, json);
        }
        if !self.extra_args.is_empty() {
            let extra: serde_json::Map<String, serde_json::Value> = self
                .extra_args
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            sorted.insert("extra_args", serde_json::Value::Object(extra));
        }
        serde_json::Value::Object(
            sorted
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    pub fn backend_type(&self) -> BackendType {
        self.backend
    }

    pub fn model(&self) -> Option<&str> {
        match self.values.get("model") {
            Some(OptionValue::String(model)) => Some(model),
            _ => None,
        }
    }

    /// llama.cpp's router mode: one llama-server serving the models of a folder or a preset
    /// file (`--models-dir`, `--models-preset`), each by its own name, loaded on demand.
    pub fn serves_many_models(&self) -> bool {
        self.backend == BackendType::LlamaCpp
            && self.model().is_none()
            && (self.values.contains_key("models_dir") || self.values.contains_key("models_preset"))
    }

    pub fn port(&self) -> Option<u16> {
        match self.values.get("port") {
            Some(OptionValue::Int(port)) => u16::try_from(*port).ok().filter(|p| *p != 0),
            _ => None,
        }
    }

    /// Sets the port; 0 clears it (0 means "assign one").
    pub fn set_port(&mut self, port: u16) {
        if port == 0 {
            self.values.remove("port");
        } else {
            self.values
                .insert("port", OptionValue::Int(i64::from(port)));
        }
    }

    /// The host the backend listens on, if set (else it listens on 127.0.0.1).
    pub fn host(&self) -> Option<&str> {
        match self.values.get("host") {
            Some(OptionValue::String(host)) => Some(host),
            _ => None,
        }
    }

    /// Path polled for readiness (`/health`).
    pub fn health_path(&self) -> &'static str {
        self.backend.descriptor().health_path
    }

    /// A request that must answer 200 before the backend counts as ready, when its health path
    /// alone proves nothing: `(path, JSON body)` to POST.
    pub fn ready_request(&self) -> Option<(&'static str, String)> {
        match self.backend.descriptor().readiness {
            Readiness::CompletionWhenModelSet if self.model().is_some() => Some((
                "/v1/completions",
                r#"{"prompt":"hi","max_tokens":1}"#.to_owned(),
            )),
            Readiness::CompletionWhenModelSet | Readiness::Health => None,
        }
    }

    /// The signal an orderly stop sends first (SIGKILL follows after the grace).
    pub fn stop_signal(&self) -> StopSignal {
        self.backend.descriptor().stop_signal
    }

    /// What to put in a request body's `model` for this backend; `None` keeps the client's.
    pub fn expected_model_name(&self) -> Option<String> {
        let ModelName::FirstOf(names) = self.backend.descriptor().model_name else {
            return None;
        };
        names.iter().find_map(|name| match self.get(name) {
            Some(OptionValue::String(value)) => value.split_whitespace().next().map(str::to_owned),
            _ => None,
        })
    }
}

impl BackendType {
    /// A folder the backend needs to exist before it starts, given how its environment
    /// (`lookup`: the configured environment over the engine's) names it.
    ///
    /// mlx_lm.server's `/v1/models` lists the Hugging Face cache and, when that folder is
    /// missing, answers 200 with an empty body (the listing fails after the headers went out).
    /// Hugging Face creates the folder on its first download; a machine that only serves local
    /// folders never has one. The path follows huggingface_hub's own rules.
    pub fn folder_to_create(self, lookup: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
        if !self.descriptor().lists_hub_cache {
            return None;
        }
        let set = |name: &str| lookup(name).filter(|value| !value.is_empty());
        if let Some(cache) = set("HF_HUB_CACHE").or_else(|| set("HUGGINGFACE_HUB_CACHE")) {
            return Some(PathBuf::from(cache));
        }
        let home = match set("HF_HOME") {
            Some(home) => PathBuf::from(home),
            None => set("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| set("HOME").map(|home| Path::new(&home).join(".cache")))?
                .join("huggingface"),
        };
        Some(home.join("hub"))
    }
}

/// The first signal of an orderly stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopSignal {
    /// SIGINT, what Ctrl-C sends.
    #[default]
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// Parses a shell command line (`llama-server -m x.gguf --port 8080`) into options.
pub fn parse_command(backend: BackendType, command: &str) -> Result<BackendOptions, ParseError> {
    parse::parse_command(backend, command)
}

/// The metadata table of `backend`.
pub fn specs(backend: BackendType) -> &'static [OptionSpec] {
    Backend::of(backend).specs
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

//! The three backends Corral runs: their typed options, argv building, parse-command, and how
//! each is run and routed ([`Descriptor`]). One metadata table per backend (`specs`) is the
//! single source of option names, flags, aliases, types and help; argv building, parse-command
//! and the OpenAPI schema all read it.

mod descriptor;
mod llama;
mod llama_table;
mod mlx;
mod parse;
mod schema;
mod secret;
mod vllm;
mod vllm_table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use descriptor::{Descriptor, ModelName, Readiness};
pub use schema::{fields, label, FieldType, OptionField};
pub use secret::{BackendSecret, SecretHandover};

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

/// Go's `FormatFloat(f, 'f', -1, 64)`: shortest exact digits, never an exponent. Rust's `Display`
/// for f64 does exactly that.
fn format_float(value: f64) -> String {
    format!("{value}")
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

    /// What a start passes: [`Self::to_args`], plus `--host 127.0.0.1` when the user chose no
    /// host. llama-server and mlx_lm.server already default to loopback, but `vllm serve`
    /// listens on every interface without `--host`, which would put an instance on the LAN
    /// that the user never asked for.
    pub fn launch_args(&self) -> Vec<String> {
        let mut args = self.to_args();
        if self.host().is_none() {
            args.extend(["--host".to_owned(), "127.0.0.1".to_owned()]);
        }
        args
    }

    /// The arguments after the configured command and its configured args, as the user wrote
    /// them (parse-command gives these back).
    pub fn to_args(&self) -> Vec<String> {
        let table = Backend::of(self.backend);
        let mut args = Vec::new();
        if table.model == PositionalModel::First {
            if let Some(model) = self.model() {
                args.push(model.to_string());
            }
        }
        for spec in table.specs {
            if table.model == PositionalModel::First && spec.name == "model" {
                continue;
            }
            let Some(value) = self.values.get(spec.name) else {
                continue;
            };
            match value {
                OptionValue::Bool(true) => args.push(spec.flag.to_string()),
                OptionValue::Bool(false) => {
                    if let Some(negation) = table.negation(spec.name) {
                        args.push(negation.to_string());
                    }
                }
                OptionValue::Int(i) => args.extend([spec.flag.to_string(), i.to_string()]),
                OptionValue::Float(f) => args.extend([spec.flag.to_string(), format_float(*f)]),
                OptionValue::String(s) if table.is_two_values(spec.name) => {
                    args.push(spec.flag.to_string());
                    args.extend(s.split_whitespace().map(str::to_string));
                }
                OptionValue::String(s) => args.extend([spec.flag.to_string(), s.clone()]),
                OptionValue::StringList(list) if table.json_lists.contains(&spec.name) => {
                    let array = serde_json::Value::from(list.clone());
                    args.extend([spec.flag.to_string(), array.to_string()]);
                }
                OptionValue::StringList(list) if table.repeat_in_one_flag.contains(&spec.name) => {
                    if !list.is_empty() {
                        args.push(spec.flag.to_string());
                        args.extend(list.iter().cloned());
                    }
                }
                OptionValue::StringList(list) => {
                    for item in list {
                        args.extend([spec.flag.to_string(), item.clone()]);
                    }
                }
            }
        }
        for (key, value) in &self.extra_args {
            args.push(format!("--{}", key.replace('_', "-")));
            if !is_bare_switch(value) {
                args.push(value.clone());
            }
        }
        args
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

/// An extra_args value that means "the flag alone": `""` or `"true"` (what parse-command stores
/// for a bare unknown flag, as llamactl does).
fn is_bare_switch(value: &str) -> bool {
    value.is_empty() || value == "true"
}

fn value_from_json(
    table: &Backend,
    spec: &'static OptionSpec,
    key: &str,
    raw: &serde_json::Value,
) -> Result<Option<OptionValue>, OptionsError> {
    let wrong = || OptionsError::WrongType {
        key: key.to_string(),
        expected: kind_expects(spec.kind),
        found: describe_json(raw),
    };
    let value = match spec.kind {
        OptionKind::Bool => OptionValue::Bool(raw.as_bool().ok_or_else(wrong)?),
        OptionKind::Int => {
            let int = match raw {
                serde_json::Value::Number(n) if n.is_i64() => n.as_i64().ok_or_else(wrong)?,
                serde_json::Value::Number(n) if n.is_u64() => {
                    return Err(OptionsError::OutOfRange {
                        key: key.to_string(),
                        value: n.to_string(),
                        allowed: format!("up to {}", i64::MAX),
                    });
                }
                // `5.0` is the integer 5 in JSON (and in JSON Schema), as clients may write it
                serde_json::Value::Number(n) => n.as_f64().and_then(whole).ok_or_else(wrong)?,
                _ => return Err(wrong()),
            };
            return check_int(spec, key, int);
        }
        OptionKind::Float => OptionValue::Float(raw.as_f64().ok_or_else(wrong)?),
        OptionKind::String => {
            // llamactl stored flash_attn as a bool before llama.cpp made it on|off|auto
            let text = match (raw, spec.name) {
                (serde_json::Value::Bool(b), "flash_attn") => {
                    (if *b { "on" } else { "off" }).to_string()
                }
                (serde_json::Value::String(s), _) => s.clone(),
                _ => return Err(wrong()),
            };
            check_string(table, spec, key, text)?
        }
        OptionKind::StringList => {
            let items = raw.as_array().ok_or_else(wrong)?;
            let list = items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(wrong)?;
            if list.iter().any(|item| item.contains('\0')) {
                return Err(no_nul(key));
            }
            OptionValue::StringList(list)
        }
    };
    Ok(Some(value))
}

/// A NUL byte can never reach a program's argv: refused here rather than failing the start.
fn no_nul(key: &str) -> OptionsError {
    OptionsError::WrongType {
        key: key.to_string(),
        expected: "text without NUL characters",
        found: "a NUL character".into(),
    }
}

/// `value` as an i64 when it is a whole number that a float spells exactly (up to 2^53): past
/// that, a float may be an integer literal out of range that JSON parsing rounded.
pub(crate) fn whole(value: f64) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    (value.fract() == 0.0 && (-EXACT..=EXACT).contains(&value)).then_some(value as i64)
}

/// Range rules for ints: a port is 1..=65535, and 0 means "assign one" (so: not set).
fn check_int(
    spec: &OptionSpec,
    key: &str,
    value: i64,
) -> Result<Option<OptionValue>, OptionsError> {
    if spec.name == "port" {
        if value == 0 {
            return Ok(None);
        }
        if !(1..=65535).contains(&value) {
            return Err(OptionsError::OutOfRange {
                key: key.to_string(),
                value: value.to_string(),
                allowed: "1-65535, or 0 to assign one".into(),
            });
        }
    }
    Ok(Some(OptionValue::Int(value)))
}

fn check_string(
    table: &Backend,
    spec: &OptionSpec,
    key: &str,
    value: String,
) -> Result<OptionValue, OptionsError> {
    if value.contains('\0') {
        return Err(no_nul(key));
    }
    if let Some(choices) = table.choices(spec.name) {
        if !choices.contains(&value.as_str()) {
            return Err(OptionsError::NotAChoice {
                key: key.to_string(),
                value,
                allowed: choices.join(", "),
            });
        }
    }
    if table.is_two_values(spec.name) && value.split_whitespace().count() != 2 {
        return Err(OptionsError::WrongType {
            key: key.to_string(),
            expected: "two words separated by a space (START END)",
            found: format!("the string {value:?}"),
        });
    }
    Ok(OptionValue::String(value))
}

fn extra_args_from_json(
    table: &Backend,
    raw: &serde_json::Value,
) -> Result<BTreeMap<String, String>, OptionsError> {
    let object = match raw {
        serde_json::Value::Null => return Ok(BTreeMap::new()),
        serde_json::Value::Object(object) => object,
        other => {
            return Err(OptionsError::ExtraArgs(format!(
                "must be an object of flag -> value, not {}",
                describe_json(other)
            )));
        }
    };
    let mut extra = BTreeMap::new();
    for (key, value) in object {
        let normalized = validate_extra_key(table, key).map_err(OptionsError::ExtraArgs)?;
        let text = match value {
            serde_json::Value::String(s) if s.contains('\0') => {
                return Err(OptionsError::ExtraArgs(format!(
                    "`{key}` must be text without NUL characters"
                )));
            }
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(true) => "true".to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(OptionsError::ExtraArgs(format!(
                    "`{key}` must be a string, a number or true (a bare switch), not {}",
                    describe_json(other)
                )));
            }
        };
        extra.insert(normalized, text);
    }
    Ok(extra)
}

/// A flag name for extra_args in snake_case (`beta-mode` -> `beta_mode`), or why it is refused.
fn validate_extra_key(table: &Backend, key: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && !key.starts_with('-')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(format!(
            "`{key}` is not a flag name; write it without dashes, e.g. `n_cpu_moe` for --n-cpu-moe"
        ));
    }
    let normalized = key.replace('-', "_");
    if let Some(spec) = table.lookup(&normalized) {
        return Err(format!(
            "`{key}` is the option `{}`; set it directly",
            spec.name
        ));
    }
    Ok(normalized)
}

/// Parses a shell command line (`llama-server -m x.gguf --port 8080`) into options.
pub fn parse_command(backend: BackendType, command: &str) -> Result<BackendOptions, ParseError> {
    parse::parse_command(backend, command)
}

/// The metadata table of `backend`.
pub fn specs(backend: BackendType) -> &'static [OptionSpec] {
    Backend::of(backend).specs
}

/// What the options schema of a backend that checks keys says about Corral's own.
const BACKEND_KEY_NOTE: &str = " Corral gives each start of the backend a secret key of its own, \
     which only Corral's proxy sends: a request straight to the backend's port without it is \
     refused. A key set with `api_key` keeps working beside it.";

/// JSON Schema (OpenAPI 3.1 flavour) of `backend_options` for `backend`, built from `specs`:
/// exactly what `BackendOptions::from_json` accepts (null for any option means "not set").
pub fn options_schema(backend: BackendType) -> serde_json::Value {
    use serde_json::json;
    let table = Backend::of(backend);
    let mut properties = serde_json::Map::new();
    for spec in table.specs {
        let description = format!("{} ({})", spec.help, spec.flag);
        let mut property = match spec.kind {
            OptionKind::Bool => json!({"type": ["boolean", "null"]}),
            OptionKind::Int if spec.name == "port" => {
                json!({"type": ["integer", "null"], "minimum": 0, "maximum": 65535})
            }
            OptionKind::Int => json!({
                "type": ["integer", "null"],
                "format": "int64",
                "minimum": i64::MIN,
                "maximum": i64::MAX,
            }),
            OptionKind::Float => json!({"type": ["number", "null"], "format": "double"}),
            OptionKind::String if table.is_two_values(spec.name) => json!({
                "type": ["string", "null"],
                "pattern": "^\\s*[^\\s\\x00]+\\s+[^\\s\\x00]+\\s*$",
            }),
            OptionKind::String => json!({"type": ["string", "null"], "pattern": NO_NUL}),
            OptionKind::StringList => json!({
                "type": ["array", "null"],
                "items": {"type": "string", "pattern": NO_NUL},
            }),
        };
        if let Some(choices) = table.choices(spec.name) {
            let mut allowed: Vec<serde_json::Value> = choices.iter().map(|c| json!(c)).collect();
            allowed.push(serde_json::Value::Null);
            if spec.name == "flash_attn" {
                // llamactl stored it as a bool before llama.cpp made it on|off|auto
                allowed.extend([json!(true), json!(false)]);
                property["type"] = json!(["string", "boolean", "null"]);
            }
            property["enum"] = serde_json::Value::Array(allowed);
        }
        property["description"] = json!(description);
        properties.insert(spec.name.to_owned(), property);
    }
    properties.insert(
        "extra_args".to_owned(),
        json!({
            "type": ["object", "null"],
            "description": "Flags Corral does not model: key = flag without dashes (snake_case or kebab-case), \
                never one of the options above, value = its argument, or \"\" / \"true\" / true for a bare \
                switch. Emitted as --kebab-key value.",
            "propertyNames": {"pattern": "^[A-Za-z0-9_.][A-Za-z0-9_.-]*$"},
            "additionalProperties": {"anyOf": [
                {"type": "string", "pattern": NO_NUL},
                {"type": "number"},
                {"const": true},
            ]},
        }),
    );
    json!({
        "type": "object",
        "description": format!(
            "Options of {}; only set options appear.{}",
            backend.as_str(),
            match backend {
                BackendType::MlxLm => mlx::NO_KEY_NOTE,
                BackendType::LlamaCpp | BackendType::Vllm => BACKEND_KEY_NOTE,
            }
        ),
        "properties": properties,
        "additionalProperties": false,
    })
}

/// Text that can reach argv: without NUL characters.
const NO_NUL: &str = "^[^\\x00]*$";

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

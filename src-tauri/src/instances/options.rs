//! Instance options: the create/update request, its validation against the configured defaults,
//! and the wire shape of an instance (llamactl's `{name, status, created, options}` plus health).

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
use utoipa::ToSchema;

use super::placement::Footprint;
use super::InstanceError;
use crate::backends::{BackendOptions, BackendType, FieldType, OptionField};
use crate::config::InstancesConfig;
use crate::devices::Resources;
use crate::supervisor::{Health, RuntimeState, Status};

/// The body of create and update (llamactl's `CreateInstanceOptions`). A missing top-level field
/// takes the configured default; update is a full replacement, not a patch.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateInstanceOptions {
    /// Restart the backend when it crashes.
    pub auto_restart: Option<bool>,
    /// Automatic restarts allowed before the instance is `failed` (0 = never; negative = 0).
    #[schema(maximum = 10_000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub max_restarts: Option<i64>,
    /// Seconds to wait before an automatic restart (negative = 0; at most a day).
    #[schema(maximum = 86_400)]
    #[serde(default, deserialize_with = "whole_number")]
    pub restart_delay: Option<i64>,
    /// Let `/v1` requests start the instance when it is stopped.
    pub on_demand_start: Option<bool>,
    /// Minutes without requests before the instance is stopped; 0 = never (negative = 0; at
    /// most a year).
    #[schema(maximum = 525_600)]
    #[serde(default, deserialize_with = "whole_number")]
    pub idle_timeout: Option<i64>,
    /// Other model names `/v1` requests may use for this instance; unique across all instances
    /// and their names.
    pub aliases: Option<Vec<String>>,
    /// The instance group (llamactl's `group`): `instances.group_limits` caps how many of a
    /// group run at once, and a group in `instances.exclusive_groups` runs one at a time.
    pub group: Option<String>,
    /// Never stopped to make room for another instance (an idle timeout still applies).
    pub persistent: Option<bool>,
    /// Keep the request and answer bodies (64 KiB of each) in the activity log, for
    /// debugging a client; off by default, as bodies hold what users say to the model.
    pub capture_bodies: Option<bool>,
    /// Requests the backend answers at once; more wait in a queue. Unset: the backend's own slot
    /// count where Corral knows it (llama-server's `parallel`, 4 when that is automatic;
    /// vLLM's `max_num_seqs`), else no limit.
    #[schema(minimum = 1, maximum = 100_000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub max_concurrent: Option<i64>,
    /// Requests that may wait for a free slot before the next one is answered 429 (0 = none
    /// wait). Unset: `scheduler.max_queue`.
    #[schema(maximum = 100_000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub max_queue: Option<i64>,
    /// Environment variables for this instance's backend (llamactl's `environment`), over the
    /// backend's configured ones. Names: 1 to 256 characters without `=` or control characters.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub environment: Option<std::collections::BTreeMap<String, String>>,
    /// The executable to run instead of the backend's configured command (llamactl's
    /// `command_override`): an absolute path to an existing executable file. The configured
    /// command's arguments (vLLM's `serve`) and variables still apply.
    pub command_override: Option<String>,
    /// Required.
    #[schema(value_type = BackendType)]
    pub backend_type: Option<String>,
    /// Required (at least `{}`): the options of the backend named by `backend_type`.
    #[schema(schema_with = backend_options_schema)]
    pub backend_options: Option<serde_json::Value>,
}

/// An integer, also when written as a whole float (`5.0` is 5 in JSON and JSON Schema).
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    number
        .as_i64()
        .or_else(|| number.as_f64().and_then(crate::backends::whole))
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid value: {number}, expected an integer (i64)"
            ))
        })
}

/// Validated options with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceOptions {
    pub auto_restart: bool,
    pub max_restarts: u32,
    /// Seconds.
    pub restart_delay: u64,
    pub on_demand_start: bool,
    /// Minutes; 0 = never.
    pub idle_timeout: u64,
    /// Other model names this instance answers to, trimmed and without repeats.
    pub aliases: Vec<String>,
    pub group: Option<String>,
    pub persistent: bool,
    /// Bodies go to the activity log.
    pub capture_bodies: bool,
    /// As given; [`InstanceOptions::concurrency`] is the limit in force.
    pub max_concurrent: Option<u32>,
    pub max_queue: Option<u32>,
    /// Variables set for the backend, over the configured command's.
    pub environment: std::collections::BTreeMap<String, String>,
    /// Runs instead of the configured command.
    pub command_override: Option<String>,
    /// Carries the backend type; its port is always set once the registry accepted the instance.
    pub backend: BackendOptions,
}

impl InstanceOptions {
    /// Validates a request body (any JSON value) and fills in the defaults of `defaults`.
    pub fn from_json(
        value: &serde_json::Value,
        defaults: &InstancesConfig,
    ) -> Result<Self, InstanceError> {
        Self::parse(value, defaults, OutOfRange::Refuse)
    }

    /// A definition saved on disk: numbers past today's maxima (saved by a version that had
    /// none) are brought down to them instead of refused, and one string where a backend now
    /// takes a list (vLLM's `collect_detailed_traces`) becomes a one-item list, so no user's
    /// instance is dropped at load for a shape it predates.
    pub fn from_stored_json(
        value: &serde_json::Value,
        defaults: &InstancesConfig,
    ) -> Result<Self, InstanceError> {
        let mut value = value.clone();
        let backend = value
            .get("backend_type")
            .and_then(serde_json::Value::as_str)
            .and_then(|name| parse_backend_type(name).ok());
        if let (Some(backend), Some(options)) = (
            backend,
            value
                .get_mut("backend_options")
                .and_then(serde_json::Value::as_object_mut),
        ) {
            crate::backends::lists_from_strings(backend, options);
        }
        Self::parse(&value, defaults, OutOfRange::Clamp)
    }

    fn parse(
        value: &serde_json::Value,
        defaults: &InstancesConfig,
        out_of_range: OutOfRange,
    ) -> Result<Self, InstanceError> {
        if !value.is_object() {
            return Err(InstanceError::invalid(
                "the body must be a JSON object such as {\"backend_type\": \"llama_cpp\", \"backend_options\": {\"model\": \"/path/model.gguf\"}}",
            ));
        }
        let request: CreateInstanceOptions = serde_path_to_error::deserialize(value.clone())
            .map_err(|e| {
                // `aliases[0]` -> `aliases`: the form has one field for the list.
                let path = e.path().to_string();
                let field = path.split(['[', '.']).next().unwrap_or_default().to_owned();
                let message = format!("{field}: {}", e.inner());
                InstanceError::InvalidOptions {
                    message,
                    field: Some(field).filter(|field| !field.is_empty() && field != "?"),
                }
            })?;
        Self::from_request(request, defaults, out_of_range)
    }

    fn from_request(
        request: CreateInstanceOptions,
        defaults: &InstancesConfig,
        out_of_range: OutOfRange,
    ) -> Result<Self, InstanceError> {
        let backend_type = match request.backend_type.as_deref() {
            None | Some("") => {
                return Err(InstanceError::invalid_field(
                    "backend_type",
                    "backend_type is required: one of llama_cpp, mlx_lm, vllm",
                ))
            }
            Some(name) => parse_backend_type(name)?,
        };
        let backend_options = match request.backend_options {
            None | Some(serde_json::Value::Null) => return Err(InstanceError::invalid_field(
                "backend_options",
                "backend_options is required: an object with the backend's options, at least {}",
            )),
            Some(value) if !value.is_object() => {
                return Err(InstanceError::invalid_field(
                    "backend_options",
                    "backend_options must be a JSON object",
                ))
            }
            Some(value) => value,
        };
        let backend = BackendOptions::from_json(backend_type, &backend_options).map_err(|e| {
            let field = match e.key(backend_type) {
                Some(key) => format!("backend_options.{key}"),
                None => "backend_options".to_owned(),
            };
            InstanceError::invalid_field(field, e.to_string())
        })?;
        let aliases = validate_aliases(request.aliases.unwrap_or_default())?;
        let at_most = |field, value, max| at_most(field, value, max, out_of_range);
        let max_restarts = at_most("max_restarts", request.max_restarts, MAX_RESTARTS)?;
        let restart_delay = at_most("restart_delay", request.restart_delay, MAX_RESTART_DELAY)?;
        let idle_timeout = at_most("idle_timeout", request.idle_timeout, MAX_IDLE_TIMEOUT)?;
        let max_concurrent = at_most("max_concurrent", request.max_concurrent, MAX_CONCURRENT)?;
        if max_concurrent.is_some_and(|n| n < 1) {
            return Err(InstanceError::invalid_field(
                "max_concurrent",
                "max_concurrent must be at least 1; leave it out for the backend's own slot count",
            ));
        }
        let max_queue = at_most("max_queue", request.max_queue, MAX_QUEUE)?;
        let group = validate_group(request.group)?;
        let environment = validate_environment(request.environment.unwrap_or_default())?;
        let command_override = validate_command_override(request.command_override, out_of_range)?;
        Ok(Self {
            auto_restart: request
                .auto_restart
                .unwrap_or(defaults.default_auto_restart),
            max_restarts: max_restarts.map_or(defaults.default_max_restarts, clamp_u32),
            restart_delay: restart_delay.map_or(defaults.default_restart_delay, clamp_u64),
            on_demand_start: request
                .on_demand_start
                .unwrap_or(defaults.default_on_demand_start),
            idle_timeout: idle_timeout.map_or(defaults.default_idle_timeout, clamp_u64),
            aliases,
            group,
            persistent: request.persistent.unwrap_or(false),
            capture_bodies: request.capture_bodies.unwrap_or(false),
            max_concurrent: max_concurrent.map(clamp_u32),
            max_queue: max_queue.map(clamp_u32),
            environment,
            command_override,
            backend,
        })
    }

    /// Requests answered at once, `None` for no limit: `max_concurrent`, else the backend's own
    /// slot count. llama-server answers `parallel` requests at once (4 when it is left to
    /// choose) and makes the rest wait inside; queueing them here instead lets Corral see the
    /// wait, bound it and keep an instance that has queued requests from being stopped.
    pub fn concurrency(&self) -> Option<u32> {
        if let Some(limit) = self.max_concurrent {
            return Some(limit);
        }
        let slots = |name| match self.backend.get(name) {
            Some(crate::backends::OptionValue::Int(n)) => u32::try_from(*n).ok(),
            _ => None,
        };
        match self.backend_type() {
            BackendType::LlamaCpp => Some(slots("parallel").filter(|n| *n >= 1).unwrap_or(4)),
            BackendType::Vllm => slots("max_num_seqs").filter(|n| *n >= 1),
            BackendType::MlxLm => None,
        }
    }

    pub fn backend_type(&self) -> BackendType {
        self.backend.backend_type()
    }

    /// The user-given port; 0 means "pick one", as in llamactl.
    pub fn requested_port(&self) -> Option<u16> {
        self.backend.port().filter(|&port| port != 0)
    }

    pub fn view(&self) -> InstanceOptionsView {
        InstanceOptionsView {
            auto_restart: self.auto_restart,
            max_restarts: self.max_restarts,
            restart_delay: self.restart_delay,
            on_demand_start: self.on_demand_start,
            idle_timeout: self.idle_timeout,
            aliases: self.aliases.clone(),
            group: self.group.clone(),
            persistent: self.persistent,
            capture_bodies: self.capture_bodies,
            max_concurrent: self.max_concurrent,
            max_queue: self.max_queue,
            environment: self.environment.clone(),
            command_override: self.command_override.clone(),
            backend_type: self.backend_type(),
            backend_options: self.backend.to_json(),
        }
    }
}

/// Aliases are model names clients send: any non-empty text without control characters.
fn validate_aliases(aliases: Vec<String>) -> Result<Vec<String>, InstanceError> {
    let mut valid: Vec<String> = Vec::with_capacity(aliases.len());
    for alias in aliases {
        let alias = alias.trim();
        if alias.is_empty() || alias.chars().count() > 256 || alias.chars().any(char::is_control) {
            return Err(InstanceError::invalid_field(
                "aliases",
                format!("alias {alias:?} must be 1 to 256 printable characters"),
            ));
        }
        if valid.iter().any(|seen| seen == alias) {
            return Err(InstanceError::invalid_field(
                "aliases",
                format!("alias '{alias}' is listed twice"),
            ));
        }
        valid.push(alias.to_owned());
    }
    Ok(valid)
}

/// A group is a name users type in the config's `group_limits`: 1 to 64 printable characters.
fn validate_group(group: Option<String>) -> Result<Option<String>, InstanceError> {
    let Some(group) = group else { return Ok(None) };
    let group = group.trim();
    if group.is_empty() {
        return Ok(None);
    }
    if group.chars().count() > 64 || group.chars().any(char::is_control) {
        return Err(InstanceError::invalid_field(
            "group",
            format!("group {group:?} must be 1 to 64 printable characters"),
        ));
    }
    Ok(Some(group.to_owned()))
}

/// Variable names a process environment can hold: no `=` (it ends the name), no control
/// character (a NUL ends the C string), not empty; values without a NUL.
fn validate_environment(
    environment: std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>, InstanceError> {
    for (name, value) in &environment {
        if name.is_empty()
            || name.chars().count() > 256
            || name.contains('=')
            || name.chars().any(char::is_control)
        {
            return Err(InstanceError::invalid_field(
                "environment",
                format!("variable name {name:?} must be 1 to 256 characters without '=' or control characters"),
            ));
        }
        if value.contains('\0') {
            return Err(InstanceError::invalid_field(
                "environment",
                format!("the value of {name} contains a NUL character"),
            ));
        }
    }
    Ok(environment)
}

/// An absolute path to an executable file, checked when the options come in through the API; a
/// definition read from disk keeps its override even if the file went away meanwhile (the
/// start then fails with the spawn's error, and the definition is not lost). Blank is none.
fn validate_command_override(
    command: Option<String>,
    out_of_range: OutOfRange,
) -> Result<Option<String>, InstanceError> {
    let Some(command) = command.filter(|c| !c.trim().is_empty()) else {
        return Ok(None);
    };
    let refuse = |why: &str| {
        Err(InstanceError::invalid_field(
            "command_override",
            format!("command_override {command:?} {why}"),
        ))
    };
    if command.contains('\0') {
        return refuse("contains a NUL character");
    }
    let path = std::path::Path::new(&command);
    if !path.is_absolute() {
        return refuse("must be an absolute path");
    }
    if matches!(out_of_range, OutOfRange::Clamp) {
        return Ok(Some(command));
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return refuse("does not exist");
    };
    if !meta.is_file() {
        return refuse("is not a file");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 == 0 {
            return refuse("is not executable");
        }
    }
    Ok(Some(command))
}

fn parse_backend_type(name: &str) -> Result<BackendType, InstanceError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| InstanceError::UnknownBackendType(name.to_owned()))
}

/// More automatic restarts than this is a crash loop, not resilience; the instance had better
/// fail and say why.
const MAX_RESTARTS: (i64, &str) = (10_000, "restarts");

/// A day, in seconds: a longer wait before a restart is a stop.
const MAX_RESTART_DELAY: (i64, &str) = (86_400, "seconds (a day)");

/// Past this a limit is no limit; it also keeps the semaphore's permit count small.
const MAX_CONCURRENT: (i64, &str) = (100_000, "requests");

const MAX_QUEUE: (i64, &str) = (100_000, "requests");

/// A year, in minutes: a longer idle timeout is "never", which is 0.
const MAX_IDLE_TIMEOUT: (i64, &str) = (525_600, "minutes (a year); 0 means never");

/// What a number above its maximum gets: a 400 from the API, the maximum when read from disk.
#[derive(Debug, Clone, Copy)]
enum OutOfRange {
    Refuse,
    Clamp,
}

/// `value` if it is not above the maximum, else a 400 naming `field` (or the maximum, for a
/// stored definition). These numbers become deadlines and counters, so one too large for them
/// must not get in.
fn at_most(
    field: &'static str,
    value: Option<i64>,
    (max, unit): (i64, &str),
    out_of_range: OutOfRange,
) -> Result<Option<i64>, InstanceError> {
    match value {
        Some(value) if value > max && matches!(out_of_range, OutOfRange::Clamp) => Ok(Some(max)),
        Some(value) if value > max => Err(InstanceError::invalid_field(
            field,
            format!("{field} is {value}; it may be at most {max} {unit}"),
        )),
        _ => Ok(value),
    }
}

/// llamactl clamps negative counts to 0 rather than rejecting them.
fn clamp_u32(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

fn clamp_u64(value: i64) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(0)
}

/// `options` of an instance on the wire and on disk, in llamactl's field order.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = InstanceOptions)]
pub struct InstanceOptionsView {
    pub auto_restart: bool,
    pub max_restarts: u32,
    /// Seconds.
    pub restart_delay: u64,
    pub on_demand_start: bool,
    /// Minutes; 0 = never.
    pub idle_timeout: u64,
    /// Other model names `/v1` routes to this instance; left out when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The instance group; left out when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Never stopped to make room for another; left out when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub persistent: bool,
    /// Bodies are kept in the activity log; left out when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub capture_bodies: bool,
    /// Left out when unset (the backend's own slot count applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Left out when unset (`scheduler.max_queue` applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
    /// The backend's own variables; left out when there are none.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub environment: std::collections::BTreeMap<String, String>,
    /// Left out when the configured command runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_override: Option<String>,
    pub backend_type: BackendType,
    /// Only the options that are set; `port` is always there.
    #[schema(schema_with = backend_options_schema)]
    pub backend_options: serde_json::Value,
}

/// One instance as the API returns it: llamactl's shape, plus the supervisor's finer state.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Instance)]
pub struct InstanceView {
    pub name: String,
    /// llamactl's three statuses.
    pub status: Status,
    /// Unix seconds of the creation; kept across updates and restarts.
    pub created: i64,
    pub options: InstanceOptionsView,
    /// Finer state of a running process; null when stopped.
    pub health: Option<Health>,
    /// Automatic restarts since the last manual start.
    pub restarts: u32,
    pub pid: Option<u32>,
    /// Unix seconds of the current process's start.
    pub started_at: Option<i64>,
    /// Why the instance failed, or why its last start failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Inference requests routed to it since the engine started.
    pub requests: u64,
    /// Requests and streams being answered right now.
    pub in_flight: u64,
    /// Unix seconds of the last inference request.
    pub last_request_at: Option<i64>,
    /// Prompt tokens of every answer that reported usage, summed.
    pub tokens_prompt: u64,
    /// Generated tokens of every answer that reported usage, summed.
    pub tokens_completion: u64,
    /// Generation speed of the last answer that reported usage.
    pub tokens_per_second: Option<f64>,
    /// CPU, RAM and GPU memory of the backend's process tree; null when it does not run.
    /// Sampled when read, at most once a second.
    pub resources: Option<Resources>,
    /// Requests waiting for one of its slots (`max_concurrent`).
    pub queued: u64,
    /// The memory the scheduler places this instance by: estimated from its model and options
    /// at its last start, and the largest it was seen taking while it ran (which the next start
    /// expects instead of the estimate).
    pub footprint: FootprintView,
    /// Only in the answers of create, update, start and restart: why the model may not fit in memory
    /// (the GGUF fit check). The start goes ahead regardless.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl InstanceView {
    pub fn new(name: &str, created: i64, options: &InstanceOptions, state: RuntimeState) -> Self {
        Self {
            name: name.to_owned(),
            status: state.status(),
            created,
            options: options.view(),
            health: state.health(),
            restarts: state.restarts,
            pid: state.pid,
            started_at: state.started_at,
            error: state.error,
            requests: 0,
            in_flight: 0,
            last_request_at: None,
            tokens_prompt: 0,
            tokens_completion: 0,
            tokens_per_second: None,
            resources: None,
            queued: 0,
            footprint: FootprintView::default(),
            warnings: Vec::new(),
        }
    }
}

/// An instance's expected and measured memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct FootprintView {
    /// Null when nothing could be estimated (a Hugging Face repo id, an unreadable file) or
    /// placement by memory is off.
    pub estimated: Option<Footprint>,
    pub measured: Option<Footprint>,
}

/// Component names of the three `backend_options` schemas in the OpenAPI document.
pub const BACKEND_SCHEMA_NAMES: [(BackendType, &str); 3] = [
    (BackendType::LlamaCpp, "LlamaCppOptions"),
    (BackendType::MlxLm, "MlxLmOptions"),
    (BackendType::Vllm, "VllmOptions"),
];

/// `backend_options` is an object; which of the three backend schemas it follows depends on
/// `backend_type`, which the document states on the enclosing object (`api::openapi`).
fn backend_options_schema() -> utoipa::openapi::schema::Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "The options of the backend `backend_type` names: LlamaCppOptions, MlxLmOptions or VllmOptions",
        ))
        // Said outright (JSON Schema's default) so that generated clients read an open map, not
        // an empty object: the `oneOf` beside it names the keys per backend.
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .into()
}

/// Corral's own settings of an instance as form fields, with the configured defaults; the help
/// is that of [`CreateInstanceOptions`].
pub fn lifecycle_fields(defaults: &InstancesConfig) -> Vec<OptionField> {
    let field = |name, field_type, default: serde_json::Value, help| OptionField {
        name,
        flag: None,
        aliases: Vec::new(),
        field_type,
        default,
        help,
        common: true,
        choices: None,
    };
    vec![
        field(
            "auto_restart",
            FieldType::Boolean,
            defaults.default_auto_restart.into(),
            "Restart the backend when it crashes.",
        ),
        field(
            "max_restarts",
            FieldType::Integer,
            defaults.default_max_restarts.into(),
            "Automatic restarts allowed before the instance is failed (0 = never).",
        ),
        field(
            "restart_delay",
            FieldType::Integer,
            defaults.default_restart_delay.into(),
            "Seconds to wait before an automatic restart.",
        ),
        field(
            "on_demand_start",
            FieldType::Boolean,
            defaults.default_on_demand_start.into(),
            "Let /v1 requests start the instance when it is stopped.",
        ),
        field(
            "idle_timeout",
            FieldType::Integer,
            defaults.default_idle_timeout.into(),
            "Minutes without requests before the instance is stopped; 0 = never.",
        ),
        field(
            "aliases",
            FieldType::StringList,
            serde_json::json!([]),
            "Other model names /v1 requests may use for this instance; unique across all instances and their names.",
        ),
        field(
            "group",
            FieldType::String,
            serde_json::Value::Null,
            "Instance group: instances.group_limits caps how many of a group run at once; an exclusive group runs one at a time.",
        ),
        field(
            "persistent",
            FieldType::Boolean,
            false.into(),
            "Never stop this instance to make room for another (its idle timeout still applies).",
        ),
        field(
            "capture_bodies",
            FieldType::Boolean,
            false.into(),
            "Keep each request's and answer's body (64 KiB of each) in the activity log, to debug a client. Bodies hold what users tell the model: leave it off otherwise.",
        ),
        field(
            "max_concurrent",
            FieldType::Integer,
            serde_json::Value::Null,
            "Requests answered at once; more wait in a queue. Empty: the backend's own slots (llama.cpp's parallel, 4 when automatic).",
        ),
        field(
            "max_queue",
            FieldType::Integer,
            serde_json::Value::Null,
            "Requests that may wait for a free slot before more are answered 429. Empty: scheduler.max_queue.",
        ),
        field(
            "environment",
            FieldType::StringMap,
            serde_json::json!({}),
            "Environment variables for the backend (NAME=value, one per line), over the backend's configured ones; restarting the instance applies them.",
        ),
        field(
            "command_override",
            FieldType::String,
            serde_json::Value::Null,
            "An executable to run instead of the backend's configured command (an absolute path); its configured arguments still apply.",
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    fn options(extra: serde_json::Value) -> Result<InstanceOptions, InstanceError> {
        let mut body = json!({"backend_type": "llama_cpp", "backend_options": {}});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let config = crate::config::Config::with_data_dir("/data".into());
        InstanceOptions::from_json(&body, &config.instances)
    }

    #[test]
    fn numbers_past_their_range_are_refused_naming_the_field() {
        for (field, too_large) in [
            ("max_restarts", json!(10_001)),
            ("restart_delay", json!(86_401)),
            ("idle_timeout", json!(525_601)),
            ("restart_delay", json!(i64::MAX)),
            ("idle_timeout", json!(i64::MAX)),
        ] {
            match options(json!({ field: too_large })) {
                Err(InstanceError::InvalidOptions {
                    field: Some(named), ..
                }) => assert_eq!(named, field),
                other => panic!("{field}: {too_large} was not refused: {other:?}"),
            }
        }
        // A number past i64 is not an integer of the field's type: refused by name too.
        match options(json!({"idle_timeout": u64::MAX})) {
            Err(InstanceError::InvalidOptions {
                field: Some(named), ..
            }) => assert_eq!(named, "idle_timeout"),
            other => panic!("not refused: {other:?}"),
        }
        let edge = options(json!({"max_restarts": 10_000, "restart_delay": 86_400,
            "idle_timeout": 525_600}))
        .unwrap();
        assert_eq!(
            (edge.max_restarts, edge.restart_delay, edge.idle_timeout),
            (10_000, 86_400, 525_600)
        );
        // Negative still means 0, as in llamactl.
        let negative = options(json!({"restart_delay": -5, "idle_timeout": -1})).unwrap();
        assert_eq!((negative.restart_delay, negative.idle_timeout), (0, 0));
    }

    #[test]
    fn a_stored_definition_past_the_maxima_is_kept_with_its_numbers_brought_down() {
        let body = json!({"backend_type": "llama_cpp", "backend_options": {},
            "max_restarts": 99_999, "restart_delay": i64::MAX, "idle_timeout": 10_000_000});
        let config = crate::config::Config::with_data_dir("/data".into());
        assert!(InstanceOptions::from_json(&body, &config.instances).is_err());
        let stored = InstanceOptions::from_stored_json(&body, &config.instances).unwrap();
        assert_eq!(
            (
                stored.max_restarts,
                stored.restart_delay,
                stored.idle_timeout
            ),
            (10_000, 86_400, 525_600)
        );
    }

    #[test]
    fn a_stored_string_where_the_backend_now_takes_a_list_loads_as_a_one_item_list() {
        // Saved when Corral typed vLLM's --collect-detailed-traces as one string.
        let body = json!({"backend_type": "vllm",
            "backend_options": {"model": "/m", "collect_detailed_traces": "all"}});
        let config = crate::config::Config::with_data_dir("/data".into());
        assert!(InstanceOptions::from_json(&body, &config.instances).is_err());
        let stored = InstanceOptions::from_stored_json(&body, &config.instances).unwrap();
        assert_eq!(
            stored.backend.get("collect_detailed_traces"),
            Some(&crate::backends::OptionValue::StringList(
                vec!["all".into()]
            ))
        );
        assert!(stored
            .backend
            .to_args()
            .windows(2)
            .any(|pair| pair == ["--collect-detailed-traces", "all"]));
    }

    /// Found while writing the schema of aliases: the limit counted bytes while the error says
    /// characters, so 200 `é` (400 bytes) were refused.
    #[test]
    fn an_alias_may_have_256_characters_however_many_bytes_they_take() {
        let wide = "é".repeat(256);
        assert_eq!(validate_aliases(vec![wide.clone()]).unwrap(), [wide]);
        assert!(validate_aliases(vec!["é".repeat(257)]).is_err());
        assert!(validate_aliases(vec!["a".repeat(257)]).is_err());
    }

    /// Found by schema fuzzing: `5.0` is the integer 5 in JSON Schema, but was refused.
    #[test]
    fn whole_floats_are_integers_and_other_floats_are_refused() {
        let request: CreateInstanceOptions =
            serde_json::from_value(serde_json::json!({"restart_delay": 5.0, "max_restarts": -2.0}))
                .unwrap();
        assert_eq!(
            (request.restart_delay, request.max_restarts),
            (Some(5), Some(-2))
        );
        // past 2^53 a float may be an out-of-range integer literal that parsing rounded
        for bad in [5.5, 1e19, -9.3e18] {
            let refused = serde_json::from_value::<CreateInstanceOptions>(
                serde_json::json!({"idle_timeout": bad}),
            );
            assert!(refused.is_err(), "{bad}");
        }
    }
}

//! The environment's layer: each `CORRAL_<NAME>` (or llamactl's `LLAMACTL_<NAME>`) variable and
//! the setting it overrides, in one table. The names are llamactl's, so they do not always
//! follow the file's keys; docs/configuration.md lists them (a test keeps the two equal).

use std::path::PathBuf;

use super::{Config, ConfigError};

/// Names the config file to read; not a setting, so not in [`VARIABLES`].
pub(super) const CONFIG_PATH: &str = "CONFIG_PATH";

/// Reads one setting from the environment: `CORRAL_<name>` first, then llamactl's `LLAMACTL_<name>`.
pub(super) trait Env {
    /// The variable's full name and its value.
    fn var(&self, name: &str) -> Option<(String, String)>;
}

pub(super) struct ProcessEnv;

const PREFIXES: [&str; 2] = ["CORRAL_", "LLAMACTL_"];

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<(String, String)> {
        PREFIXES.iter().find_map(|prefix| {
            let key = format!("{prefix}{name}");
            std::env::var(&key).ok().map(|value| (key, value))
        })
    }
}

/// A fixed environment, for tests.
#[cfg(test)]
impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<(String, String)> {
        PREFIXES.iter().find_map(|prefix| {
            let key = format!("{prefix}{name}");
            self.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (key.clone(), (*v).to_string()))
        })
    }
}

/// One variable: its name after the prefix, the file setting it overrides, and how its text
/// becomes that setting's value (an error is the reason it cannot).
pub(super) struct Variable {
    pub(super) name: &'static str,
    /// Read by the tests that hold it to docs/configuration.md and to the file's key.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) setting: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

/// `var!("PORT", "server.port", server.port = parsed)`: the variable sets the field with the
/// parser's result.
macro_rules! var {
    ($name:literal, $setting:literal, $($field:ident).+ = $parse:path) => {
        Variable {
            name: $name,
            setting: $setting,
            apply: |config, text| {
                config.$($field).+ = $parse(text)?;
                Ok(())
            },
        }
    };
}

/// Every variable the configuration reads besides [`CONFIG_PATH`].
pub(super) const VARIABLES: &[Variable] = &[
    var!("HOST", "server.host", server.host = parsed),
    var!("PORT", "server.port", server.port = parsed),
    var!(
        "ALLOWED_ORIGINS",
        "server.allowed_origins",
        server.allowed_origins = list
    ),
    var!(
        "ALLOWED_HOSTS",
        "server.allowed_hosts",
        server.allowed_hosts = list
    ),
    var!(
        "MAX_BODY_BYTES",
        "server.max_body_bytes",
        server.max_body_bytes = parsed
    ),
    var!(
        "MAX_INFERENCE_BODY_BYTES",
        "server.max_inference_body_bytes",
        server.max_inference_body_bytes = parsed
    ),
    var!(
        "ALLOW_INSECURE_REMOTE",
        "server.allow_insecure_remote",
        server.allow_insecure_remote = boolean
    ),
    var!(
        "REQUEST_HEAD_TIMEOUT_SECONDS",
        "server.request_head_timeout_seconds",
        server.request_head_timeout_seconds = parsed
    ),
    var!(
        "REQUEST_BODY_IDLE_TIMEOUT_SECONDS",
        "server.request_body_idle_timeout_seconds",
        server.request_body_idle_timeout_seconds = parsed
    ),
    var!(
        "KEEP_ALIVE_TIMEOUT_SECONDS",
        "server.keep_alive_timeout_seconds",
        server.keep_alive_timeout_seconds = parsed
    ),
    var!(
        "MAX_CONNECTIONS",
        "server.max_connections",
        server.max_connections = parsed
    ),
    var!(
        "LLAMA_EXECUTABLE",
        "backends.llama-cpp.command",
        backends.llama_cpp.command = text
    ),
    var!(
        "MLX_LM_EXECUTABLE",
        "backends.mlx.command",
        backends.mlx.command = text
    ),
    var!(
        "VLLM_EXECUTABLE",
        "backends.vllm.command",
        backends.vllm.command = text
    ),
    var!(
        "INSTANCE_PORT_RANGE",
        "instances.port_range",
        instances.port_range = port_range
    ),
    var!(
        "DATA_DIRECTORY",
        "instances.data_dir",
        instances.data_dir = path
    ),
    var!(
        "INSTANCES_DIR",
        "instances.configs_dir",
        instances.configs_dir = parsed
    ),
    var!(
        "LOGS_DIR",
        "instances.logs_dir",
        instances.logs_dir = parsed
    ),
    var!(
        "AUTO_CREATE_DATA_DIR",
        "instances.auto_create_dirs",
        instances.auto_create_dirs = boolean
    ),
    var!(
        "MAX_INSTANCES",
        "instances.max_instances",
        instances.max_instances = limit
    ),
    var!(
        "MAX_RUNNING_INSTANCES",
        "instances.max_running_instances",
        instances.max_running_instances = limit
    ),
    var!(
        "ENABLE_LRU_EVICTION",
        "instances.enable_lru_eviction",
        instances.enable_lru_eviction = boolean
    ),
    var!(
        "DEFAULT_AUTO_RESTART",
        "instances.default_auto_restart",
        instances.default_auto_restart = boolean
    ),
    var!(
        "DEFAULT_MAX_RESTARTS",
        "instances.default_max_restarts",
        instances.default_max_restarts = parsed
    ),
    var!(
        "DEFAULT_RESTART_DELAY",
        "instances.default_restart_delay",
        instances.default_restart_delay = parsed
    ),
    var!(
        "DEFAULT_ON_DEMAND_START",
        "instances.default_on_demand_start",
        instances.default_on_demand_start = boolean
    ),
    var!(
        "DEFAULT_IDLE_TIMEOUT",
        "instances.default_idle_timeout",
        instances.default_idle_timeout = parsed
    ),
    var!(
        "ON_DEMAND_START_TIMEOUT",
        "instances.on_demand_start_timeout",
        instances.on_demand_start_timeout = start_timeout
    ),
    var!(
        "IDLE_TIMEOUT_UNIT_SECONDS",
        "instances.idle_timeout_unit_seconds",
        instances.idle_timeout_unit_seconds = parsed
    ),
    var!(
        "STOP_GRACE_SECONDS",
        "instances.stop_grace_seconds",
        instances.stop_grace_seconds = parsed
    ),
    var!(
        "REQUIRE_INFERENCE_AUTH",
        "auth.require_inference_auth",
        auth.require_inference_auth = boolean
    ),
    var!(
        "INFERENCE_KEYS",
        "auth.inference_keys",
        auth.inference_keys = list
    ),
    var!(
        "REQUIRE_MANAGEMENT_AUTH",
        "auth.require_management_auth",
        auth.require_management_auth = boolean
    ),
    var!(
        "MANAGEMENT_KEYS",
        "auth.management_keys",
        auth.management_keys = list
    ),
    var!("MODELS_DIRS", "models.dirs", models.dirs = paths),
    var!(
        "MODELS_SCAN_KNOWN_CACHES",
        "models.scan_known_caches",
        models.scan_known_caches = boolean
    ),
    var!(
        "EXCLUSIVE_GROUPS",
        "instances.exclusive_groups",
        instances.exclusive_groups = list
    ),
    var!(
        "SCHEDULER_MEMORY_AWARE",
        "scheduler.memory_aware",
        scheduler.memory_aware = boolean
    ),
    var!(
        "SCHEDULER_MEMORY_HEADROOM_MIB",
        "scheduler.memory_headroom_mib",
        scheduler.memory_headroom_mib = parsed
    ),
    var!(
        "SCHEDULER_RAM_BUDGET_MIB",
        "scheduler.ram_budget_mib",
        scheduler.ram_budget_mib = optional
    ),
    var!(
        "SCHEDULER_GPU_BUDGET_MIB",
        "scheduler.gpu_budget_mib",
        scheduler.gpu_budget_mib = optional
    ),
    var!(
        "SCHEDULER_MIN_RESIDENCY_SECONDS",
        "scheduler.min_residency_seconds",
        scheduler.min_residency_seconds = parsed
    ),
    var!(
        "SCHEDULER_MAX_QUEUE",
        "scheduler.max_queue",
        scheduler.max_queue = parsed
    ),
    var!(
        "METRICS_ENABLED",
        "metrics.enabled",
        metrics.enabled = boolean
    ),
    var!("METRICS_KEYS", "metrics.keys", metrics.keys = list),
    var!(
        "METRICS_OPEN_ON_LOOPBACK",
        "metrics.open_on_loopback",
        metrics.open_on_loopback = boolean
    ),
    var!(
        "ACTIVITY_MAX_ENTRIES",
        "activity.max_entries",
        activity.max_entries = parsed
    ),
    var!(
        "DESKTOP_CLOSE_TO_TRAY",
        "desktop.close_to_tray",
        desktop.close_to_tray = boolean
    ),
];

/// Sets every variable present in `env` over `config`; the first invalid one is the error.
pub(super) fn overlay(config: &mut Config, env: &dyn Env) -> Result<(), ConfigError> {
    for variable in VARIABLES {
        if let Some((name, value)) = env.var(variable.name) {
            (variable.apply)(config, &value).map_err(|reason| ConfigError::Env {
                name,
                value,
                reason,
            })?;
        }
    }
    Ok(())
}

/// A number, an address or a path, spaces around it ignored.
fn parsed<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.trim().parse().map_err(|e: T::Err| e.to_string())
}

/// Go's strconv.ParseBool spellings, since llamactl configs use them.
fn boolean(text: &str) -> Result<bool, String> {
    match text.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Comma-separated, blanks dropped.
fn list(text: &str) -> Result<Vec<String>, String> {
    Ok(text
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Comma-separated folders, blanks dropped.
fn paths(text: &str) -> Result<Vec<PathBuf>, String> {
    Ok(list(text)?.into_iter().map(PathBuf::from).collect())
}

/// Taken as it is: an executable's name may end in a space.
fn text(text: &str) -> Result<String, String> {
    Ok(text.to_owned())
}

/// Taken as it is, as llamactl takes its data directory.
fn path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text))
}

fn port_range(text: &str) -> Result<(u16, u16), String> {
    super::parse_port_range(text).ok_or_else(|| "expected a range like 8000-9000".into())
}

fn limit(text: &str) -> Result<Option<usize>, String> {
    parsed(text).map(super::limit)
}

fn start_timeout(text: &str) -> Result<std::time::Duration, String> {
    parsed(text).map(super::start_timeout)
}

/// A number, or nothing (an empty value) for "unset".
fn optional<T: std::str::FromStr>(text: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    if text.trim().is_empty() {
        return Ok(None);
    }
    parsed(text).map(Some)
}

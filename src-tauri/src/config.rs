//! Corral's configuration: defaults < one YAML file < `CORRAL_*` (or `LLAMACTL_*`) environment.
//!
//! The YAML keys are llamactl's (behaviour §6), so an existing llamactl config works unchanged.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::backends::BackendType;

/// The whole engine configuration, after defaults, file and environment were merged.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub backends: BackendsConfig,
    pub instances: InstancesConfig,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the engine listens on; loopback unless the user asks otherwise.
    pub host: IpAddr,
    pub port: u16,
    /// Origins allowed by CORS; `*` allows any.
    pub allowed_origins: Vec<String>,
    /// Extra host names accepted in the `Host` header besides loopback names and the listen address.
    pub allowed_hosts: Vec<String>,
    /// Largest accepted management request body, in bytes.
    pub max_body_bytes: usize,
    /// Allow listening on a non-loopback address without inference keys.
    pub allow_insecure_remote: bool,
}

/// How one backend is launched: the executable, arguments placed before the instance's own, and
/// environment added to the child's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCommand {
    pub command: String,
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct BackendsConfig {
    pub llama_cpp: BackendCommand,
    pub mlx: BackendCommand,
    pub vllm: BackendCommand,
}

impl BackendsConfig {
    pub fn command(&self, backend: BackendType) -> &BackendCommand {
        match backend {
            BackendType::LlamaCpp => &self.llama_cpp,
            BackendType::MlxLm => &self.mlx,
            BackendType::Vllm => &self.vllm,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InstancesConfig {
    /// Inclusive range auto-assigned ports are taken from.
    pub port_range: (u16, u16),
    pub data_dir: PathBuf,
    /// Where the per-instance JSON definitions live.
    pub configs_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// Pid files of running backends, to clean up after a crashed engine.
    pub run_dir: PathBuf,
    pub auto_create_dirs: bool,
    /// `None` = unlimited (llamactl's -1).
    pub max_instances: Option<usize>,
    pub max_running_instances: Option<usize>,
    pub enable_lru_eviction: bool,
    pub default_auto_restart: bool,
    pub default_max_restarts: u32,
    /// Seconds.
    pub default_restart_delay: u64,
    pub default_on_demand_start: bool,
    /// Minutes; 0 = never.
    pub default_idle_timeout: u64,
    pub on_demand_start_timeout: Duration,
    /// How long a backend gets after SIGINT before SIGKILL.
    pub stop_grace: Duration,
    /// A log file is rotated when it grows past this many bytes.
    pub log_max_bytes: u64,
    /// How many rotated log files are kept besides the current one.
    pub log_keep_files: usize,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub require_inference_auth: bool,
    pub inference_keys: Vec<String>,
    pub require_management_auth: bool,
    pub management_keys: Vec<String>,
}

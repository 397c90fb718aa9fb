//! Corral's configuration: defaults < one YAML file < `CORRAL_*` (or `LLAMACTL_*`) environment <
//! command-line flags.
//!
//! The YAML keys are llamactl's, so an existing llamactl config works unchanged. Each setting is
//! declared once, in the section struct the engine reads (with its default, see `section!`);
//! serde fills it from the file, and `env.rs`'s table maps each variable onto a field. Values
//! that follow from others (folders under `data_dir`, durations from seconds, the connection
//! limits) are computed in one place, `Config::derive`, after everything was merged.
//!
//! Why not `figment` (defaults + YAML + `Env` providers): llamactl's variables do not follow
//! the file's nesting (`CORRAL_INSTANCE_PORT_RANGE` is `instances.port_range`, written
//! `8000-9000`; `CORRAL_AUTO_CREATE_DATA_DIR` is `instances.auto_create_dirs`), booleans take
//! Go's spellings (`T`, `F`), lists are comma-separated, and figment's errors would replace the
//! ones users see today ("environment variable CORRAL_PORT="x" is invalid: ...", serde_yaml's
//! line and column). A table of typed parsers keeps all of that in a few lines.

mod backends;
mod env;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use backends::{BackendCommand, BackendsConfig};
use env::{Env, ProcessEnv};

/// Declares a section of the config file once: the struct the engine reads and its defaults.
///
/// Each field is read from the file key of its name (or its `serde` rename). A key that is
/// missing, or present with no value (`port:` or `port: ~`), keeps the default: llamactl reads
/// its file with Go's YAML decoder, which leaves a field alone on null, and its configs rely on
/// it. For that serde needs a twin struct with every field optional; it is generated here and
/// named after the section as it is in the file (`FileServer`), the name serde's errors show.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident from $file:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[serde($($serde:tt)*)])*
                $vis:vis $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize)]
        pub struct $name {
            $( $(#[doc = $doc])* $vis $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        const _: () = {
            #[derive(Default, serde::Deserialize)]
            #[serde(default)]
            struct $file {
                $( $(#[serde($($serde)*)])* $field: Option<$ty>, )*
            }

            impl<'de> serde::Deserialize<'de> for $name {
                fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    let file = <$file as serde::Deserialize>::deserialize(deserializer)?;
                    let mut section = Self::default();
                    $( if let Some(value) = file.$field { section.$field = value; } )*
                    Ok(section)
                }
            }
        };
    };
}

/// The whole engine configuration, after defaults, file and environment were merged. A section
/// missing from the file is all defaults. `Config::default()` has no data folder yet and nothing
/// derived: the engine takes what [`Config::load`] or [`Config::with_data_dir`] returns.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, rename = "FileConfig")]
pub struct Config {
    pub server: ServerConfig,
    pub backends: BackendsConfig,
    pub instances: InstancesConfig,
    pub auth: AuthConfig,
    pub desktop: DesktopConfig,
    pub models: ModelsConfig,
    pub scheduler: SchedulerConfig,
    pub metrics: MetricsConfig,
    pub activity: ActivityConfig,
}

section! {
    pub struct ServerConfig from FileServer {
        /// Address the engine listens on; loopback unless the user asks otherwise.
        pub host: IpAddr = IpAddr::from([127, 0, 0, 1]),
        pub port: u16 = 8080,
        /// Other origins whose pages may call Corral from a browser (CORS). None by default: only
        /// Corral's own pages (the web UI and the desktop window, both served from Corral's own
        /// address) may; `*` lets every web page read every answer, and is warned about at start.
        pub allowed_origins: Vec<String> = Vec::new(),
        /// Extra host names accepted in the `Host` header besides loopback names and the listen
        /// address.
        pub allowed_hosts: Vec<String> = Vec::new(),
        /// Largest accepted management request body, in bytes.
        pub max_body_bytes: usize = 64 * 1024 * 1024,
        /// Largest accepted `/v1` request body, in bytes (prompts with images are large); past it
        /// 413. A chat with a few full-size photos as base64 (a 12-megapixel JPEG is 4-8 MB, 5-11
        /// MB as base64) stays far below 64 MiB; a bigger body is held in memory whole while it
        /// is routed, so the default does not invite one.
        pub max_inference_body_bytes: usize = 64 * 1024 * 1024,
        /// Allow listening on a non-loopback address without inference keys or management auth.
        pub allow_insecure_remote: bool = false,
        /// `limits` as written: three deadlines in seconds and the connection cap, checked and
        /// converted by `Config::derive`.
        request_head_timeout_seconds: f64 = ConnectionLimits::default().head_timeout.as_secs_f64(),
        request_body_idle_timeout_seconds: f64 =
            ConnectionLimits::default().body_idle_timeout.as_secs_f64(),
        keep_alive_timeout_seconds: f64 =
            ConnectionLimits::default().keep_alive_timeout.as_secs_f64(),
        max_connections: usize = ConnectionLimits::default().max_connections,
        /// Deadlines and the connection cap that keep slow or idle clients from holding the
        /// server: the four keys above, derived.
        #[serde(skip)]
        pub limits: ConnectionLimits = ConnectionLimits::default(),
    }
}

/// How long a client may take, and how many connections it may hold. A deadline only ever
/// waits on the client: a backend that thinks for minutes before its first token, or streams a
/// long answer, is never cut by these.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnectionLimits {
    /// From a request's first byte (or the connection's opening) to the end of its head.
    pub head_timeout: Duration,
    /// The longest pause in a request body while the server waits for more of it.
    pub body_idle_timeout: Duration,
    /// How long a connection may sit idle between requests.
    pub keep_alive_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed at once.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            // nginx allows 60 s for a head; a local client sends one in microseconds, and 10 s
            // still covers a phone on a poor network.
            head_timeout: Duration::from_secs(10),
            // A client uploading a large prompt pauses only when its network does.
            body_idle_timeout: Duration::from_secs(30),
            // Above the 5 s most HTTP clients keep an idle connection, so the server is not the
            // one to close it first (which races the client's next request).
            keep_alive_timeout: Duration::from_secs(60),
            // Far above what local editors and apps open, below a default `ulimit -n` of a few
            // thousand once backends' sockets and log files are counted.
            max_connections: 4096,
        }
    }
}

section! {
    pub struct InstancesConfig from FileInstances {
        /// Inclusive range auto-assigned ports are taken from.
        #[serde(deserialize_with = "file_form::port_range")]
        pub port_range: (u16, u16) = (8000, 9000),
        /// Empty until [`Config::load`] fills in the per-user data folder.
        pub data_dir: PathBuf = PathBuf::new(),
        /// Where the per-instance JSON definitions live. This and the two folders below are
        /// `data_dir`'s `instances`, `logs` and `run` unless set (empty means unset).
        #[serde(alias = "instances_dir")]
        pub configs_dir: PathBuf = PathBuf::new(),
        pub logs_dir: PathBuf = PathBuf::new(),
        /// Pid files of running backends, to clean up after a crashed engine.
        pub run_dir: PathBuf = PathBuf::new(),
        pub auto_create_dirs: bool = true,
        /// `None` = unlimited (llamactl's -1, any negative number in the file).
        #[serde(deserialize_with = "file_form::limit")]
        pub max_instances: Option<usize> = None,
        #[serde(deserialize_with = "file_form::limit")]
        pub max_running_instances: Option<usize> = None,
        pub enable_lru_eviction: bool = true,
        /// Running limits per instance group (llamactl's `group_limits`): at most this many
        /// instances of the group run at once; a start at the limit stops the group's least
        /// recently used idle member first.
        pub group_limits: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new(),
        /// Groups whose members run one at a time: a start stops the group's other members.
        pub exclusive_groups: Vec<String> = Vec::new(),
        pub default_auto_restart: bool = true,
        pub default_max_restarts: u32 = 3,
        /// Seconds.
        pub default_restart_delay: u64 = 5,
        pub default_on_demand_start: bool = true,
        /// Minutes; 0 = never.
        pub default_idle_timeout: u64 = 0,
        /// Whole seconds in the file; llamactl's zero or negative means 30 s.
        #[serde(deserialize_with = "file_form::start_timeout")]
        pub on_demand_start_timeout: Duration = Duration::from_secs(120),
        /// Seconds per `idle_timeout` unit as written (a hidden knob for tests); checked and
        /// converted into `idle_timeout_unit` by `Config::derive`.
        idle_timeout_unit_seconds: f64 = 60.0,
        /// What one unit of an instance's `idle_timeout` lasts: a minute, except in tests.
        #[serde(skip)]
        pub idle_timeout_unit: Duration = Duration::from_secs(60),
        /// `stop_grace` as written, converted by `Config::derive`.
        stop_grace_seconds: f64 = 10.0,
        /// How long a backend gets after SIGINT before SIGKILL.
        #[serde(skip)]
        pub stop_grace: Duration = Duration::from_secs(10),
        /// A log file is rotated when it grows past this many bytes.
        pub log_max_bytes: u64 = 100 * 1024 * 1024,
        /// How many rotated log files are kept besides the current one.
        pub log_keep_files: usize = 3,
    }
}

section! {
    pub struct AuthConfig from FileAuth {
        pub require_inference_auth: bool = true,
        pub inference_keys: Vec<String> = Vec::new(),
        pub require_management_auth: bool = true,
        pub management_keys: Vec<String> = Vec::new(),
    }
}

section! {
    /// What only the desktop app reads.
    pub struct DesktopConfig from FileDesktop {
        /// Closing the window keeps Corral running in the tray (the default); when false, closing
        /// the window quits. The app's settings page may override it (`<data_dir>/desktop.json`).
        pub close_to_tray: bool = true,
    }
}

section! {
    /// Where the model library (`GET /api/v1/models`) looks for models.
    pub struct ModelsConfig from FileModels {
        /// Folders scanned for models besides the caches of the other tools (GGUF files and
        /// Hugging Face model folders anywhere below them).
        pub dirs: Vec<PathBuf> = Vec::new(),
        /// Also scan the caches other tools keep: Hugging Face's, llama.cpp's, LM Studio's and
        /// Ollama's. Off, only `dirs` are scanned.
        pub scan_known_caches: bool = true,
    }
}

section! {
    /// How starts make room: memory-aware placement, residency and request queues.
    pub struct SchedulerConfig from FileScheduler {
        /// Place starts by memory: a start whose estimated footprint does not fit the free memory
        /// of its device stops least recently used idle instances first, and is refused (507)
        /// when even that cannot make room. Off, only the running limits apply.
        pub memory_aware: bool = true,
        /// Memory kept free on every device besides the instances' footprints, in MiB.
        pub memory_headroom_mib: u64 = 512,
        /// RAM the instances may use in all, in MiB, instead of what the system reports free
        /// (other programs' use is then not counted). Unset: the system's available memory.
        pub ram_budget_mib: Option<u64> = None,
        /// GPU memory (all GPUs together) the instances may use, in MiB, instead of what the
        /// GPUs report free.
        pub gpu_budget_mib: Option<u64> = None,
        /// Seconds an instance that just started is kept from being stopped to make room for
        /// another, while the other can wait: alternating requests for two models that do not
        /// fit together then swap at most once per this period instead of on every request.
        pub min_residency_seconds: u64 = 5,
        /// Requests an instance queues, beyond those it answers at once (`max_concurrent`),
        /// before answering 429; an instance's `max_queue` overrides it.
        pub max_queue: u32 = 256,
    }
}

section! {
    /// Who may scrape `GET /metrics`.
    pub struct MetricsConfig from FileMetrics {
        /// Serve `/metrics` at all.
        pub enabled: bool = true,
        /// Keys accepted on `/metrics` besides the management keys, for a Prometheus that
        /// should not hold a key that manages instances.
        pub keys: Vec<String> = Vec::new(),
        /// Let clients on this machine (a loopback address) scrape without a key. Any local
        /// user or process can then read the instance names and counters.
        pub open_on_loopback: bool = false,
    }
}

/// Past this, the activity log would hold hundreds of megabytes.
pub const MAX_ACTIVITY_ENTRIES: usize = 100_000;

section! {
    /// The activity log of `GET /api/v1/activity` (kept in memory).
    pub struct ActivityConfig from FileActivity {
        /// Finished requests kept, the oldest dropped first; 0 keeps none.
        pub max_entries: usize = 1000,
    }
}

/// Where the file's form of a setting differs from the engine's type. Each takes the value as
/// `Option`, since a key without a value keeps the default (see `section!`).
mod file_form {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// `[8000, 9000]`.
    pub(super) fn port_range<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<(u16, u16)>, D::Error> {
        Ok(Option::<[u16; 2]>::deserialize(deserializer)?.map(|[start, end]| (start, end)))
    }

    /// A count where -1 (or any negative) means unlimited.
    pub(super) fn limit<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<usize>>, D::Error> {
        Ok(Option::<i64>::deserialize(deserializer)?.map(super::limit))
    }

    /// Whole seconds to wait for an on-demand start.
    pub(super) fn start_timeout<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<i64>::deserialize(deserializer)?.map(super::start_timeout))
    }
}

/// -1 (or any negative) means unlimited, as in llamactl.
fn limit(value: i64) -> Option<usize> {
    usize::try_from(value).ok()
}

/// llamactl: a non-positive on-demand start timeout means 30 s.
fn start_timeout(seconds: i64) -> Duration {
    Duration::from_secs(if seconds > 0 {
        seconds.unsigned_abs()
    } else {
        30
    })
}

/// Why the configuration could not be loaded. Each says which file or variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML for Corral: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Env {
        name: String,
        value: String,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("no home folder found: pass --data-dir or set instances.data_dir")]
    NoHome,
}

/// What the command line may override; these win over file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
}

/// `8000-9000` or `8000,9000`, spaces allowed (llamactl's `ParsePortRange`).
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once('-').or_else(|| text.split_once(','))?;
    let start: u16 = a.trim().parse().ok()?;
    let end: u16 = b.trim().parse().ok()?;
    (start > 0 && start <= end).then_some((start, end))
}

fn default_data_dir() -> Result<PathBuf, ConfigError> {
    directories::ProjectDirs::from("", "", "corral")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .ok_or(ConfigError::NoHome)
}

/// The config files tried in order when none is named; the first that exists is used.
fn default_config_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(dirs) = directories::ProjectDirs::from("", "", "corral") {
        files.push(dirs.config_dir().join("config.yaml"));
    }
    if cfg!(unix) {
        files.push(PathBuf::from("/etc/corral/config.yaml"));
    }
    files
}

impl Config {
    /// The config file [`Config::load`] reads: the one named (flag, then `CORRAL_CONFIG`),
    /// else the first of the default places that holds one. What a reload watches.
    pub fn file_in_use(overrides: &Overrides) -> Option<PathBuf> {
        Self::named_file(overrides)
            .or_else(|| default_config_files().into_iter().find(|p| p.is_file()))
    }

    fn named_file(overrides: &Overrides) -> Option<PathBuf> {
        overrides.config_file.clone().or_else(|| {
            ProcessEnv
                .var(env::CONFIG_PATH)
                .map(|(_, v)| PathBuf::from(v))
        })
    }

    /// Loads defaults < config file < environment < command line.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let explicit = Self::named_file(overrides);
        let file = match explicit {
            // A file the user named must exist: silently running on defaults hides typos.
            Some(path) => Some((read_file(&path)?, path)),
            None => default_config_files()
                .into_iter()
                .find(|p| p.is_file())
                .map(|p| read_file(&p).map(|f| (f, p)))
                .transpose()?,
        };
        if let Some((_, path)) = &file {
            tracing::info!("config file: {}", path.display());
        }
        let file = file.map(|(f, _)| f).unwrap_or_default();
        Self::merge(file, &ProcessEnv, overrides)
    }

    /// Defaults for `data_dir`, no file, no environment: what tests start from.
    pub fn with_data_dir(data_dir: PathBuf) -> Config {
        let mut config = Config::default();
        config.instances.data_dir = data_dir;
        match config.derive() {
            Ok(()) => config,
            // Defaults alone cannot fail to derive; keep the type honest anyway.
            Err(e) => unreachable!("defaults are valid: {e}"),
        }
    }

    /// What was read from the file, then the environment and the command line over it; then
    /// what follows from them, and the checks.
    fn merge(
        mut config: Config,
        env: &dyn Env,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        env::overlay(&mut config, env)?;
        if let Some(host) = overrides.host {
            config.server.host = host;
        }
        if let Some(port) = overrides.port {
            config.server.port = port;
        }
        if let Some(dir) = &overrides.data_dir {
            config.instances.data_dir = dir.clone();
        }
        if config.instances.data_dir.as_os_str().is_empty() {
            config.instances.data_dir = default_data_dir()?;
        }
        config.derive()?;
        config.validate()?;
        Ok(config)
    }

    /// Computes the settings that follow from others, once the sources are merged: the folders
    /// under `data_dir` and the durations written as seconds, checked.
    fn derive(&mut self) -> Result<(), ConfigError> {
        let s = &mut self.server;
        if s.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "server.max_connections must be at least 1".to_owned(),
            ));
        }
        s.limits = ConnectionLimits {
            head_timeout: positive_seconds(
                "request_head_timeout_seconds",
                s.request_head_timeout_seconds,
            )?,
            body_idle_timeout: positive_seconds(
                "request_body_idle_timeout_seconds",
                s.request_body_idle_timeout_seconds,
            )?,
            keep_alive_timeout: positive_seconds(
                "keep_alive_timeout_seconds",
                s.keep_alive_timeout_seconds,
            )?,
            max_connections: s.max_connections,
        };

        let i = &mut self.instances;
        for (dir, name) in [
            (&mut i.configs_dir, "instances"),
            (&mut i.logs_dir, "logs"),
            (&mut i.run_dir, "run"),
        ] {
            if dir.as_os_str().is_empty() {
                *dir = i.data_dir.join(name);
            }
        }
        let unit = i.idle_timeout_unit_seconds;
        i.idle_timeout_unit = Duration::try_from_secs_f64(unit)
            .ok()
            .filter(|unit| !unit.is_zero())
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "instances.idle_timeout_unit_seconds must be a positive number, got {unit}"
                ))
            })?;
        let grace = i.stop_grace_seconds;
        i.stop_grace = Duration::try_from_secs_f64(grace).map_err(|_| {
            ConfigError::Invalid(format!(
                "instances.stop_grace_seconds must be a non-negative number, got {grace}"
            ))
        })?;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.activity.max_entries > MAX_ACTIVITY_ENTRIES {
            return Err(ConfigError::Invalid(format!(
                "activity.max_entries is {}, above the most kept ({MAX_ACTIVITY_ENTRIES})",
                self.activity.max_entries
            )));
        }
        // An empty key would let a request with an empty credential in.
        for (setting, keys) in [
            ("auth.management_keys", &self.auth.management_keys),
            ("auth.inference_keys", &self.auth.inference_keys),
            ("metrics.keys", &self.metrics.keys),
        ] {
            if let Some(position) = keys.iter().position(|key| key.trim().is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "{setting} has an empty key (entry {} of {}): remove it or set a real key",
                    position + 1,
                    keys.len()
                )));
            }
        }
        let (start, end) = self.instances.port_range;
        if start == 0 || start > end {
            return Err(ConfigError::Invalid(format!(
                "instances.port_range [{start}, {end}] must be two ports, the first not above the second"
            )));
        }
        if !self.server.host.is_loopback()
            && self.auth.inference_keys.is_empty()
            && !self.server.allow_insecure_remote
        {
            return Err(ConfigError::Invalid(format!(
                "listening on {} exposes every model to the network: set auth.inference_keys, \
                 or server.allow_insecure_remote: true if that is really meant",
                self.server.host
            )));
        }
        if !self.server.host.is_loopback()
            && !self.auth.require_management_auth
            && !self.server.allow_insecure_remote
        {
            return Err(ConfigError::Invalid(format!(
                "listening on {} with auth.require_management_auth: false lets anyone on the \
                 network run programs through Corral: turn management auth on, or set \
                 server.allow_insecure_remote: true if that is really meant",
                self.server.host
            )));
        }
        Ok(())
    }

    /// What the configuration allows that weakens Corral's defences, one sentence each, for the
    /// log at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self
            .server
            .allowed_origins
            .iter()
            .any(|origin| origin.trim() == "*")
        {
            warnings.push(
                "server.allowed_origins contains \"*\": any web page open in a browser on this \
                 machine may call Corral and read its answers (list the origins that need it instead)"
                    .to_owned(),
            );
        }
        if !self.server.host.is_loopback() && self.server.allow_insecure_remote {
            warnings.push(format!(
                "server.allow_insecure_remote is on: Corral listens on {} and may answer the \
                 network without keys",
                self.server.host
            ));
        }
        warnings
    }
}

/// `server.<key>` as a deadline: a positive number of seconds.
fn positive_seconds(key: &str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|timeout| !timeout.is_zero())
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "server.{key} must be a positive number of seconds, got {value}"
            ))
        })
}

/// The file's settings over the defaults; an empty file is all defaults.
fn read_file(path: &std::path::Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

//! Corral's configuration: defaults < one YAML file < `CORRAL_*` (or `LLAMACTL_*`) environment.
//!
//! The YAML keys are llamactl's, so an existing llamactl config works unchanged.

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
    pub desktop: DesktopConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the engine listens on; loopback unless the user asks otherwise.
    pub host: IpAddr,
    pub port: u16,
    /// Other origins whose pages may call Corral from a browser (CORS). None by default: only
    /// Corral's own pages (the web UI and the desktop window, both served from Corral's own
    /// address) may; `*` lets every web page read every answer, and is warned about at start.
    pub allowed_origins: Vec<String>,
    /// Extra host names accepted in the `Host` header besides loopback names and the listen address.
    pub allowed_hosts: Vec<String>,
    /// Largest accepted management request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted `/v1` request body, in bytes (prompts with images are large); past it 413.
    pub max_inference_body_bytes: usize,
    /// Allow listening on a non-loopback address without inference keys or management auth.
    pub allow_insecure_remote: bool,
    /// Deadlines and the connection cap that keep slow or idle clients from holding the server.
    pub limits: ConnectionLimits,
}

/// How long a client may take, and how many connections it may hold. A deadline only ever
/// waits on the client: a backend that thinks for minutes before its first token, or streams a
/// long answer, is never cut by these.
#[derive(Debug, Clone, PartialEq)]
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
    /// What one unit of an instance's `idle_timeout` lasts: a minute, except in tests
    /// (`instances.idle_timeout_unit_seconds`, `CORRAL_IDLE_TIMEOUT_UNIT_SECONDS`).
    pub idle_timeout_unit: Duration,
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

/// What only the desktop app reads.
#[derive(Debug, Clone)]
pub struct DesktopConfig {
    /// Closing the window keeps Corral running in the tray (the default); when false, closing
    /// the window quits. The app's settings page may override it (`<data_dir>/desktop.json`).
    pub close_to_tray: bool,
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

/// The YAML file as written by the user: every key optional, llamactl's names.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FileConfig {
    server: FileServer,
    backends: FileBackends,
    instances: FileInstances,
    auth: FileAuth,
    desktop: FileDesktop,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FileDesktop {
    close_to_tray: Option<bool>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FileServer {
    host: Option<IpAddr>,
    port: Option<u16>,
    allowed_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
    max_inference_body_bytes: Option<usize>,
    allow_insecure_remote: Option<bool>,
    request_head_timeout_seconds: Option<f64>,
    request_body_idle_timeout_seconds: Option<f64>,
    keep_alive_timeout_seconds: Option<f64>,
    max_connections: Option<usize>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FileBackends {
    // llamactl up to v0.6: one executable per backend.
    llama_executable: Option<String>,
    mlx_lm_executable: Option<String>,
    vllm_executable: Option<String>,
    // llamactl since v0.7: command, args and environment per backend.
    #[serde(rename = "llama-cpp", alias = "llama_cpp")]
    llama_cpp: Option<FileBackendCommand>,
    #[serde(alias = "mlx_lm")]
    mlx: Option<FileBackendCommand>,
    vllm: Option<FileBackendCommand>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FileBackendCommand {
    command: Option<String>,
    args: Option<Vec<String>>,
    environment: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FileInstances {
    port_range: Option<[u16; 2]>,
    data_dir: Option<PathBuf>,
    #[serde(alias = "instances_dir")]
    configs_dir: Option<PathBuf>,
    logs_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    auto_create_dirs: Option<bool>,
    max_instances: Option<i64>,
    max_running_instances: Option<i64>,
    enable_lru_eviction: Option<bool>,
    default_auto_restart: Option<bool>,
    default_max_restarts: Option<u32>,
    default_restart_delay: Option<u64>,
    default_on_demand_start: Option<bool>,
    default_idle_timeout: Option<u64>,
    on_demand_start_timeout: Option<i64>,
    /// Hidden knob for tests: seconds per `idle_timeout` unit (default 60).
    idle_timeout_unit_seconds: Option<f64>,
    stop_grace_seconds: Option<f64>,
    log_max_bytes: Option<u64>,
    log_keep_files: Option<usize>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FileAuth {
    require_inference_auth: Option<bool>,
    inference_keys: Option<Vec<String>>,
    require_management_auth: Option<bool>,
    management_keys: Option<Vec<String>>,
}

/// Reads one setting from the environment: `CORRAL_<name>` first, then llamactl's `LLAMACTL_<name>`.
trait Env {
    fn var(&self, name: &str) -> Option<(String, String)>;
}

struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<(String, String)> {
        ["CORRAL_", "LLAMACTL_"].iter().find_map(|prefix| {
            let key = format!("{prefix}{name}");
            std::env::var(&key).ok().map(|value| (key, value))
        })
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<(String, String)> {
        ["CORRAL_", "LLAMACTL_"].iter().find_map(|prefix| {
            let key = format!("{prefix}{name}");
            self.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (key.clone(), (*v).to_string()))
        })
    }
}

fn env_parse<T: std::str::FromStr>(env: &dyn Env, name: &str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match env.var(name) {
        None => Ok(None),
        Some((key, value)) => {
            value
                .trim()
                .parse()
                .map(Some)
                .map_err(|e: T::Err| ConfigError::Env {
                    name: key,
                    value: value.clone(),
                    reason: e.to_string(),
                })
        }
    }
}

fn env_bool(env: &dyn Env, name: &str) -> Result<Option<bool>, ConfigError> {
    match env.var(name) {
        None => Ok(None),
        // Go's strconv.ParseBool spellings, since llamactl configs use them.
        Some((key, value)) => match value.trim() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Some(true)),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Some(false)),
            _ => Err(ConfigError::Env {
                name: key,
                value,
                reason: "expected true or false".into(),
            }),
        },
    }
}

fn env_list(env: &dyn Env, name: &str) -> Option<Vec<String>> {
    env.var(name).map(|(_, v)| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// `8000-9000` or `8000,9000`, spaces allowed (llamactl's `ParsePortRange`).
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once('-').or_else(|| text.split_once(','))?;
    let start: u16 = a.trim().parse().ok()?;
    let end: u16 = b.trim().parse().ok()?;
    (start > 0 && start <= end).then_some((start, end))
}

/// -1 (or any negative) means unlimited, as in llamactl.
fn limit(value: i64) -> Option<usize> {
    usize::try_from(value).ok()
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
    /// Loads defaults < config file < environment < command line.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let explicit = overrides
            .config_file
            .clone()
            .or_else(|| ProcessEnv.var("CONFIG_PATH").map(|(_, v)| PathBuf::from(v)));
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
        let data_dir = match overrides.data_dir.clone() {
            Some(dir) => dir,
            None => match (&file.instances.data_dir, ProcessEnv.var("DATA_DIRECTORY")) {
                (_, Some((_, dir))) => PathBuf::from(dir),
                (Some(dir), None) => dir.clone(),
                (None, None) => default_data_dir()?,
            },
        };
        let mut config = Self::build(file, &ProcessEnv, data_dir)?;
        if let Some(host) = overrides.host {
            config.server.host = host;
        }
        if let Some(port) = overrides.port {
            config.server.port = port;
        }
        config.validate()?;
        Ok(config)
    }

    /// Defaults for `data_dir`, no file, no environment: what tests start from.
    pub fn with_data_dir(data_dir: PathBuf) -> Config {
        let empty: [(&str, &str); 0] = [];
        match Self::build(FileConfig::default(), &empty, data_dir) {
            Ok(config) => config,
            // Defaults alone cannot fail to build; keep the type honest anyway.
            Err(e) => unreachable!("defaults are valid: {e}"),
        }
    }

    fn build(file: FileConfig, env: &dyn Env, data_dir: PathBuf) -> Result<Config, ConfigError> {
        let s = file.server;
        let server = ServerConfig {
            host: env_parse(env, "HOST")?
                .or(s.host)
                .unwrap_or(IpAddr::from([127, 0, 0, 1])),
            port: env_parse(env, "PORT")?.or(s.port).unwrap_or(8080),
            allowed_origins: env_list(env, "ALLOWED_ORIGINS")
                .or(s.allowed_origins)
                .unwrap_or_default(),
            allowed_hosts: env_list(env, "ALLOWED_HOSTS")
                .or(s.allowed_hosts)
                .unwrap_or_default(),
            max_body_bytes: env_parse(env, "MAX_BODY_BYTES")?
                .or(s.max_body_bytes)
                .unwrap_or(64 * 1024 * 1024),
            // A chat with a few full-size photos as base64 (a 12-megapixel JPEG is 4-8 MB,
            // 5-11 MB as base64) stays far below 64 MiB; a bigger body is held in memory whole
            // while it is routed, so the default does not invite one.
            max_inference_body_bytes: env_parse(env, "MAX_INFERENCE_BODY_BYTES")?
                .or(s.max_inference_body_bytes)
                .unwrap_or(64 * 1024 * 1024),
            allow_insecure_remote: env_bool(env, "ALLOW_INSECURE_REMOTE")?
                .or(s.allow_insecure_remote)
                .unwrap_or(false),
            limits: connection_limits(
                env,
                s.request_head_timeout_seconds,
                s.request_body_idle_timeout_seconds,
                s.keep_alive_timeout_seconds,
                s.max_connections,
            )?,
        };

        let b = file.backends;
        let backends = BackendsConfig {
            llama_cpp: backend_command(
                env,
                "LLAMA_EXECUTABLE",
                b.llama_executable,
                b.llama_cpp,
                "llama-server",
                &[],
            ),
            mlx: backend_command(
                env,
                "MLX_LM_EXECUTABLE",
                b.mlx_lm_executable,
                b.mlx,
                "mlx_lm.server",
                &[],
            ),
            vllm: backend_command(
                env,
                "VLLM_EXECUTABLE",
                b.vllm_executable,
                b.vllm,
                "vllm",
                &["serve"],
            ),
        };

        let i = file.instances;
        let port_range = match env.var("INSTANCE_PORT_RANGE") {
            Some((key, value)) => parse_port_range(&value).ok_or(ConfigError::Env {
                name: key,
                value: value.clone(),
                reason: "expected a range like 8000-9000".into(),
            })?,
            None => match i.port_range {
                Some([start, end]) => (start, end),
                None => (8000, 9000),
            },
        };
        let configs_dir = env_parse::<PathBuf>(env, "INSTANCES_DIR")?
            .or(i.configs_dir)
            .unwrap_or_else(|| data_dir.join("instances"));
        let logs_dir = env_parse::<PathBuf>(env, "LOGS_DIR")?
            .or(i.logs_dir)
            .unwrap_or_else(|| data_dir.join("logs"));
        let run_dir = i.run_dir.unwrap_or_else(|| data_dir.join("run"));
        let start_timeout = env_parse::<i64>(env, "ON_DEMAND_START_TIMEOUT")?
            .or(i.on_demand_start_timeout)
            .unwrap_or(120);
        let idle_unit = env_parse::<f64>(env, "IDLE_TIMEOUT_UNIT_SECONDS")?
            .or(i.idle_timeout_unit_seconds)
            .unwrap_or(60.0);
        let stop_grace = env_parse::<f64>(env, "STOP_GRACE_SECONDS")?
            .or(i.stop_grace_seconds)
            .unwrap_or(10.0);
        let instances = InstancesConfig {
            port_range,
            configs_dir,
            logs_dir,
            run_dir,
            auto_create_dirs: env_bool(env, "AUTO_CREATE_DATA_DIR")?
                .or(i.auto_create_dirs)
                .unwrap_or(true),
            max_instances: limit(
                env_parse(env, "MAX_INSTANCES")?
                    .or(i.max_instances)
                    .unwrap_or(-1),
            ),
            max_running_instances: limit(
                env_parse(env, "MAX_RUNNING_INSTANCES")?
                    .or(i.max_running_instances)
                    .unwrap_or(-1),
            ),
            enable_lru_eviction: env_bool(env, "ENABLE_LRU_EVICTION")?
                .or(i.enable_lru_eviction)
                .unwrap_or(true),
            default_auto_restart: env_bool(env, "DEFAULT_AUTO_RESTART")?
                .or(i.default_auto_restart)
                .unwrap_or(true),
            default_max_restarts: env_parse(env, "DEFAULT_MAX_RESTARTS")?
                .or(i.default_max_restarts)
                .unwrap_or(3),
            default_restart_delay: env_parse(env, "DEFAULT_RESTART_DELAY")?
                .or(i.default_restart_delay)
                .unwrap_or(5),
            default_on_demand_start: env_bool(env, "DEFAULT_ON_DEMAND_START")?
                .or(i.default_on_demand_start)
                .unwrap_or(true),
            default_idle_timeout: env_parse(env, "DEFAULT_IDLE_TIMEOUT")?
                .or(i.default_idle_timeout)
                .unwrap_or(0),
            // llamactl: a non-positive timeout means 30 s.
            on_demand_start_timeout: Duration::from_secs(if start_timeout > 0 {
                start_timeout.unsigned_abs()
            } else {
                30
            }),
            idle_timeout_unit: Duration::try_from_secs_f64(idle_unit)
                .ok()
                .filter(|unit| !unit.is_zero())
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "instances.idle_timeout_unit_seconds must be a positive number, got {idle_unit}"
                    ))
                })?,
            stop_grace: Duration::try_from_secs_f64(stop_grace).map_err(|_| {
                ConfigError::Invalid(format!(
                    "instances.stop_grace_seconds must be a non-negative number, got {stop_grace}"
                ))
            })?,
            log_max_bytes: i.log_max_bytes.unwrap_or(100 * 1024 * 1024),
            log_keep_files: i.log_keep_files.unwrap_or(3),
            data_dir,
        };

        let a = file.auth;
        let auth = AuthConfig {
            require_inference_auth: env_bool(env, "REQUIRE_INFERENCE_AUTH")?
                .or(a.require_inference_auth)
                .unwrap_or(true),
            inference_keys: env_list(env, "INFERENCE_KEYS")
                .or(a.inference_keys)
                .unwrap_or_default(),
            require_management_auth: env_bool(env, "REQUIRE_MANAGEMENT_AUTH")?
                .or(a.require_management_auth)
                .unwrap_or(true),
            management_keys: env_list(env, "MANAGEMENT_KEYS")
                .or(a.management_keys)
                .unwrap_or_default(),
        };
        let desktop = DesktopConfig {
            close_to_tray: env_bool(env, "DESKTOP_CLOSE_TO_TRAY")?
                .or(file.desktop.close_to_tray)
                .unwrap_or(true),
        };
        Ok(Config {
            server,
            backends,
            instances,
            auth,
            desktop,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        // An empty key would let a request with an empty credential in.
        for (setting, keys) in [
            ("auth.management_keys", &self.auth.management_keys),
            ("auth.inference_keys", &self.auth.inference_keys),
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

/// `server.*_timeout_seconds` and `server.max_connections`, each overridable by its variable
/// (`CORRAL_REQUEST_HEAD_TIMEOUT_SECONDS`, ..., `CORRAL_MAX_CONNECTIONS`).
fn connection_limits(
    env: &dyn Env,
    head: Option<f64>,
    body_idle: Option<f64>,
    keep_alive: Option<f64>,
    max_connections: Option<usize>,
) -> Result<ConnectionLimits, ConfigError> {
    fn seconds(
        env: &dyn Env,
        key: &str,
        file: Option<f64>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = env_parse::<f64>(env, &key.to_ascii_uppercase())?.or(file) else {
            return Ok(default);
        };
        Duration::try_from_secs_f64(value)
            .ok()
            .filter(|timeout| !timeout.is_zero())
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "server.{key} must be a positive number of seconds, got {value}"
                ))
            })
    }
    let defaults = ConnectionLimits::default();
    let max_connections = env_parse(env, "MAX_CONNECTIONS")?
        .or(max_connections)
        .unwrap_or(defaults.max_connections);
    if max_connections == 0 {
        return Err(ConfigError::Invalid(
            "server.max_connections must be at least 1".to_owned(),
        ));
    }
    Ok(ConnectionLimits {
        head_timeout: seconds(
            env,
            "request_head_timeout_seconds",
            head,
            defaults.head_timeout,
        )?,
        body_idle_timeout: seconds(
            env,
            "request_body_idle_timeout_seconds",
            body_idle,
            defaults.body_idle_timeout,
        )?,
        keep_alive_timeout: seconds(
            env,
            "keep_alive_timeout_seconds",
            keep_alive,
            defaults.keep_alive_timeout,
        )?,
        max_connections,
    })
}

fn read_file(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
        path: path.to_path_buf(),
        source,
    })
}

/// Merges llamactl's two backend forms; the structured form wins over the old `*_executable`,
/// and the environment's executable wins over both.
fn backend_command(
    env: &dyn Env,
    env_name: &str,
    executable: Option<String>,
    structured: Option<FileBackendCommand>,
    default_command: &str,
    default_args: &[&str],
) -> BackendCommand {
    let structured = structured.unwrap_or_default();
    let command = env
        .var(env_name)
        .map(|(_, v)| v)
        .or(structured.command)
        .or(executable)
        .unwrap_or_else(|| default_command.to_string());
    BackendCommand {
        command,
        args: structured
            .args
            .unwrap_or_else(|| default_args.iter().map(|s| s.to_string()).collect()),
        environment: structured.environment.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let file: FileConfig = serde_yaml::from_str(yaml).expect("test yaml");
        let config = Config::build(file, env, PathBuf::from("/data"))?;
        config.validate()?;
        Ok(config)
    }

    const NO_ENV: [(&str, &str); 0] = [];

    #[test]
    fn defaults_listen_on_loopback_8080_with_llamactl_limits() {
        let c = Config::with_data_dir(PathBuf::from("/data"));
        assert_eq!(c.server.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.instances.port_range, (8000, 9000));
        assert_eq!(c.instances.configs_dir, PathBuf::from("/data/instances"));
        assert_eq!(c.instances.logs_dir, PathBuf::from("/data/logs"));
        assert_eq!(c.instances.max_instances, None);
        assert!(c.instances.default_auto_restart);
        assert_eq!(c.instances.default_max_restarts, 3);
        assert_eq!(c.instances.default_restart_delay, 5);
        assert_eq!(c.backends.llama_cpp.command, "llama-server");
        assert_eq!(c.backends.vllm.args, vec!["serve".to_string()]);
        assert_eq!(c.server.max_inference_body_bytes, 64 * 1024 * 1024);
        assert_eq!(c.instances.idle_timeout_unit, Duration::from_secs(60));
    }

    #[test]
    fn connection_deadlines_and_cap_have_defaults_a_file_and_variables_can_change() {
        let c = build("", &NO_ENV).expect("valid");
        assert_eq!(c.server.limits, ConnectionLimits::default());
        assert_eq!(c.server.limits.head_timeout, Duration::from_secs(10));
        let yaml =
            "server: {request_head_timeout_seconds: 1.5, request_body_idle_timeout_seconds: 2, \
                    keep_alive_timeout_seconds: 3, max_connections: 7}";
        let env = [("CORRAL_KEEP_ALIVE_TIMEOUT_SECONDS", "0.25")];
        let c = build(yaml, &env).expect("valid");
        assert_eq!(
            c.server.limits,
            ConnectionLimits {
                head_timeout: Duration::from_millis(1500),
                body_idle_timeout: Duration::from_secs(2),
                keep_alive_timeout: Duration::from_millis(250),
                max_connections: 7,
            }
        );
        for bad in [
            "server: {request_head_timeout_seconds: 0}",
            "server: {keep_alive_timeout_seconds: -1}",
            "server: {max_connections: 0}",
        ] {
            let err = build(bad, &NO_ENV).expect_err(bad);
            assert!(err.to_string().contains("server."), "{err}");
        }
        let err = build("", &[("CORRAL_MAX_CONNECTIONS", "many")]).expect_err("not a number");
        assert!(err.to_string().contains("CORRAL_MAX_CONNECTIONS"), "{err}");
    }

    #[test]
    fn idle_timeout_unit_can_be_shortened_for_tests_but_not_zeroed() {
        let c = build("", &[("CORRAL_IDLE_TIMEOUT_UNIT_SECONDS", "0.5")]).expect("valid");
        assert_eq!(c.instances.idle_timeout_unit, Duration::from_millis(500));
        let c = build("instances: {idle_timeout_unit_seconds: 2}", &NO_ENV).expect("valid");
        assert_eq!(c.instances.idle_timeout_unit, Duration::from_secs(2));
        let err = build("instances: {idle_timeout_unit_seconds: 0}", &NO_ENV).expect_err("zero");
        assert!(
            err.to_string().contains("idle_timeout_unit_seconds"),
            "{err}"
        );
    }

    #[test]
    fn llamactl_rev_a_config_file_is_understood() {
        let yaml = r#"
server: {host: "127.0.0.1", port: 9090, allowed_origins: ["http://a"]}
backends: {llama_executable: /opt/llama-server, mlx_lm_executable: mlx, vllm_executable: /v/vllm}
instances:
  port_range: [7000, 7100]
  configs_dir: /c
  logs_dir: /l
  max_running_instances: 2
  on_demand_start_timeout: 0
auth: {inference_keys: [sk-inf-1], management_keys: [sk-mgmt-1]}
"#;
        let c = build(yaml, &NO_ENV).expect("valid");
        assert_eq!(c.server.port, 9090);
        assert_eq!(c.server.allowed_origins, vec!["http://a".to_string()]);
        assert_eq!(c.backends.llama_cpp.command, "/opt/llama-server");
        assert_eq!(c.backends.vllm.command, "/v/vllm");
        assert_eq!(c.backends.vllm.args, vec!["serve".to_string()]);
        assert_eq!(c.instances.port_range, (7000, 7100));
        assert_eq!(c.instances.configs_dir, PathBuf::from("/c"));
        assert_eq!(c.instances.max_running_instances, Some(2));
        assert_eq!(c.instances.on_demand_start_timeout, Duration::from_secs(30));
        assert_eq!(c.auth.management_keys, vec!["sk-mgmt-1".to_string()]);
    }

    #[test]
    fn structured_backend_form_carries_args_and_environment() {
        let yaml = r#"
backends:
  llama_executable: old-name
  llama-cpp: {command: /bin/llama, args: ["--no-webui"], environment: {CUDA_VISIBLE_DEVICES: "1"}}
  vllm: {command: /bin/vllm, args: ["serve", "--disable-log-requests"]}
"#;
        let c = build(yaml, &NO_ENV).expect("valid");
        assert_eq!(c.backends.llama_cpp.command, "/bin/llama");
        assert_eq!(c.backends.llama_cpp.args, vec!["--no-webui".to_string()]);
        assert_eq!(
            c.backends.llama_cpp.environment.get("CUDA_VISIBLE_DEVICES"),
            Some(&"1".to_string())
        );
        assert_eq!(c.backends.vllm.args.len(), 2);
        assert_eq!(c.backends.mlx.command, "mlx_lm.server");
    }

    #[test]
    fn environment_wins_over_file_and_corral_wins_over_llamactl() {
        let env = [
            ("LLAMACTL_PORT", "7000"),
            ("CORRAL_PORT", "7001"),
            ("LLAMACTL_INSTANCE_PORT_RANGE", "8000 , 8100"),
            ("LLAMACTL_MANAGEMENT_KEYS", "a, b"),
            ("CORRAL_DEFAULT_ON_DEMAND_START", "F"),
        ];
        let c = build("server: {port: 6000}", &env).expect("valid");
        assert_eq!(c.server.port, 7001);
        assert_eq!(c.instances.port_range, (8000, 8100));
        assert_eq!(
            c.auth.management_keys,
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(!c.instances.default_on_demand_start);
    }

    #[test]
    fn closing_the_window_keeps_the_app_in_the_tray_unless_configured_otherwise() {
        assert!(build("", &NO_ENV).expect("valid").desktop.close_to_tray);
        let c = build("desktop: {close_to_tray: false}", &NO_ENV).expect("valid");
        assert!(!c.desktop.close_to_tray);
        let env = [("CORRAL_DESKTOP_CLOSE_TO_TRAY", "true")];
        let c = build("desktop: {close_to_tray: false}", &env).expect("valid");
        assert!(c.desktop.close_to_tray);
    }

    #[test]
    fn invalid_environment_values_are_reported_by_name() {
        let err = build("", &[("CORRAL_PORT", "invalid-port")]).expect_err("bad port");
        assert!(err.to_string().contains("CORRAL_PORT"), "{err}");
        let err = build("", &[("LLAMACTL_INSTANCE_PORT_RANGE", "8000")]).expect_err("bad range");
        assert!(err.to_string().contains("8000-9000"), "{err}");
    }

    #[test]
    fn port_ranges_parse_like_llamactl() {
        for ok in ["8000-9000", "8000,9000", "8000 - 9000", "8000 , 9000"] {
            assert_eq!(parse_port_range(ok), Some((8000, 9000)), "{ok}");
        }
        for bad in [
            "8000",
            "not-a-range",
            "start-end",
            "",
            "8000-9000-10000",
            "-1000--500",
        ] {
            assert_eq!(parse_port_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn remote_listen_without_inference_keys_is_refused() {
        let err = build("server: {host: 0.0.0.0}", &NO_ENV).expect_err("insecure");
        assert!(err.to_string().contains("inference_keys"), "{err}");
        build(
            "server: {host: 0.0.0.0}\nauth: {inference_keys: [k]}",
            &NO_ENV,
        )
        .expect("keys set");
        build(
            "server: {host: 0.0.0.0, allow_insecure_remote: true}",
            &NO_ENV,
        )
        .expect("explicitly allowed");
    }

    #[test]
    fn remote_listen_without_management_auth_is_refused() {
        let yaml =
            "server: {host: 0.0.0.0}\nauth: {inference_keys: [k], require_management_auth: false}";
        let err = build(yaml, &NO_ENV).expect_err("insecure");
        assert!(err.to_string().contains("require_management_auth"), "{err}");
        build(
            "server: {host: 0.0.0.0, allow_insecure_remote: true}\nauth: {inference_keys: [k], require_management_auth: false}",
            &NO_ENV,
        )
        .expect("explicitly allowed");
        build(
            "server: {host: 127.0.0.1}\nauth: {require_management_auth: false}",
            &NO_ENV,
        )
        .expect("loopback needs no auth");
        let err = build(
            "server: {host: \"::\"}\nauth: {inference_keys: [k]}",
            &[("CORRAL_REQUIRE_MANAGEMENT_AUTH", "false")],
        )
        .expect_err("from the environment too");
        assert!(err.to_string().contains("require_management_auth"), "{err}");
    }

    #[test]
    fn no_other_origin_is_allowed_unless_listed_and_a_star_is_warned_about() {
        let defaults = build("", &NO_ENV).expect("defaults");
        assert!(defaults.server.allowed_origins.is_empty());
        assert!(defaults.warnings().is_empty(), "{:?}", defaults.warnings());
        let star = build("server: {allowed_origins: [\"*\"]}", &NO_ENV).expect("star");
        assert_eq!(star.server.allowed_origins, vec!["*".to_owned()]);
        let warnings = star.warnings();
        assert!(
            warnings.len() == 1 && warnings[0].contains("allowed_origins"),
            "{warnings:?}"
        );
    }

    #[test]
    fn empty_or_blank_keys_are_refused_naming_the_setting() {
        for (yaml, setting) in [
            (r#"auth: {management_keys: [""]}"#, "auth.management_keys"),
            (
                r#"auth: {management_keys: [ok, "   "]}"#,
                "auth.management_keys",
            ),
            (r#"auth: {inference_keys: ["\t"]}"#, "auth.inference_keys"),
        ] {
            let err = build(yaml, &NO_ENV).expect_err(yaml);
            assert!(err.to_string().contains(setting), "{yaml}: {err}");
            assert!(err.to_string().contains("empty key"), "{yaml}: {err}");
        }
        build("auth: {management_keys: [sk-real]}", &NO_ENV).expect("a real key");
    }

    #[test]
    fn invalid_yaml_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "server: [unclosed").expect("write");
        let err = read_file(&path).expect_err("invalid");
        assert!(err.to_string().contains("config.yaml"), "{err}");
        let err = read_file(&dir.path().join("missing.yaml")).expect_err("missing");
        assert!(matches!(err, ConfigError::Read { .. }));
    }
}

#[cfg(test)]
#[path = "config_proptests.rs"]
mod proptests;

//! Everything an instance operation can refuse or fail with, and its one classification
//! ([`ErrorKind`] and a stable code). Each dialect (the management API, OpenAI, Ollama) renders
//! that classification its own way; none of them looks at the variants.

use std::path::PathBuf;

use crate::supervisor::SupervisorError;

/// Display is the `details` sentence shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("invalid instance name: {0}")]
    InvalidName(String),
    #[error("invalid instance options: {message}")]
    InvalidOptions {
        message: String,
        /// The option the message is about (`idle_timeout`, `backend_options.ctx_size`), if one.
        field: Option<String>,
    },
    #[error("unknown backend_type '{0}': use one of llama_cpp, mlx_lm, vllm")]
    UnknownBackendType(String),
    #[error("no instance named '{0}'")]
    NotFound(String),
    #[error("an instance named '{0}' already exists: choose another name or update it with PUT")]
    AlreadyExists(String),
    #[error("{} exists but could not be loaded at start: fix or remove that file before creating '{name}' again", path.display())]
    UnloadedDefinition { name: String, path: PathBuf },
    #[error("the maximum number of instances ({0}) is reached: delete an instance first or raise instances.max_instances")]
    MaxInstances(usize),
    /// The running limit, with why no running instance can be stopped for the start.
    #[error("{reason}")]
    MaxRunning { max: usize, reason: String },
    #[error("port {port} is already used by instance '{owner}': choose another port or leave it out to get a free one")]
    PortTaken { port: u16, owner: String },
    #[error("port {0} is in use by another program: choose another port or leave it out to get a free one")]
    PortInUse(u16),
    #[error("no free port left in instances.port_range {0}-{1}: widen the range or delete unused instances")]
    NoFreePort(u16, u16),
    #[error("Instance is not running: start '{0}' first")]
    NotRunning(String),
    #[error("instance '{name}' could not be started: {source}")]
    StartFailed {
        name: String,
        #[source]
        source: SupervisorError,
    },
    #[error("instance '{name}' could not be stopped: {source}")]
    StopFailed {
        name: String,
        #[source]
        source: SupervisorError,
    },
    #[error("could not save instance '{name}' to {}: {source}", path.display())]
    Persist {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not create directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the logs of instance '{name}': {source}")]
    Logs {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("instance '{name}' has failed: {reason}")]
    Failed { name: String, reason: String },
    #[error("instance '{name}' is not ready: {reason}")]
    NotReady { name: String, reason: String },
    #[error("alias '{alias}' is already used by instance '{owner}'")]
    AliasTaken { alias: String, owner: String },
    #[error("Corral is shutting down: no instance can be started or changed now")]
    ShuttingDown,
    /// The model does not fit in memory even with every other stoppable instance stopped.
    #[error("instance '{name}' cannot start: {reason}")]
    InsufficientMemory { name: String, reason: String },
    /// A group limit, an exclusive group or memory that running instances hold and cannot give
    /// up now (or, for a request, before its deadline).
    #[error("instance '{name}' cannot start now: {reason}")]
    NoRoom { name: String, reason: String },
    #[error(
        "instance '{name}' has {limit} requests queued already (its max_queue): try again shortly"
    )]
    QueueFull { name: String, limit: u32 },
}

/// What kind of failure an error is, whoever asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong: a name, an option, a backend type.
    Invalid,
    /// What it names does not exist.
    NotFound,
    /// It conflicts with another instance or with the machine (a name, an alias, a port).
    Conflict,
    /// A configured limit is reached (`max_instances`, `max_running_instances`).
    LimitReached,
    /// The instance does not run, and nothing starts it.
    NotRunning,
    /// The instance failed (a crash with no restart left, or a backend unable to serve).
    Failed,
    /// The backend could not be started.
    StartFailed,
    /// The backend was started but did not become ready.
    NotReady,
    /// The engine is stopping.
    ShuttingDown,
    /// The model needs more memory than the machine can give it.
    InsufficientMemory,
    /// Too many requests wait already: try again shortly.
    Overloaded,
    /// Corral itself failed: the disk, the logs, a stop.
    Internal,
}

impl InstanceError {
    /// The classification every dialect renders.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        use InstanceError as E;
        match self {
            E::InvalidName(_) | E::InvalidOptions { .. } | E::UnknownBackendType(_) => K::Invalid,
            E::NotFound(_) => K::NotFound,
            E::AlreadyExists(_)
            | E::UnloadedDefinition { .. }
            | E::PortTaken { .. }
            | E::PortInUse(_)
            | E::NoFreePort(..)
            | E::AliasTaken { .. } => K::Conflict,
            E::MaxInstances(_) | E::MaxRunning { .. } | E::NoRoom { .. } => K::LimitReached,
            E::InsufficientMemory { .. } => K::InsufficientMemory,
            E::QueueFull { .. } => K::Overloaded,
            E::NotRunning(_) => K::NotRunning,
            E::Failed { .. } => K::Failed,
            E::StartFailed { .. } => K::StartFailed,
            E::NotReady { .. } => K::NotReady,
            E::ShuttingDown => K::ShuttingDown,
            E::StopFailed { .. } | E::Persist { .. } | E::CreateDir { .. } | E::Logs { .. } => {
                K::Internal
            }
        }
    }

    /// The stable, machine-readable code (`instance_not_found`) of the management API.
    pub fn code(&self) -> &'static str {
        use InstanceError as E;
        match self {
            E::InvalidName(_) => "invalid_instance_name",
            E::InvalidOptions { .. } => "invalid_options",
            E::UnknownBackendType(_) => "unknown_backend_type",
            E::NotFound(_) => "instance_not_found",
            E::AlreadyExists(_) | E::UnloadedDefinition { .. } => "instance_exists",
            E::MaxInstances(_) => "max_instances_reached",
            E::MaxRunning { .. } => "max_running_instances_reached",
            E::PortTaken { .. } => "port_taken",
            E::PortInUse(_) => "port_in_use",
            E::NoFreePort(..) => "no_free_port",
            E::NotRunning(_) => "instance_not_running",
            E::StartFailed { .. } => "start_failed",
            E::StopFailed { .. } => "stop_failed",
            E::Persist { .. } => "persistence_failed",
            E::CreateDir { .. } => "io_error",
            E::Logs { .. } => "logs_unavailable",
            E::Failed { .. } => "instance_failed",
            E::NotReady { .. } => "instance_not_ready",
            E::AliasTaken { .. } => "alias_taken",
            E::ShuttingDown => "shutting_down",
            E::InsufficientMemory { .. } => "insufficient_memory",
            E::NoRoom { .. } => "no_room",
            E::QueueFull { .. } => "queue_full",
        }
    }

    /// An invalid value of one option (`field` as the form names it: `aliases`,
    /// `backend_options.ctx_size`).
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        InstanceError::InvalidOptions {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// Invalid options, not about one option in particular.
    pub fn invalid(message: impl Into<String>) -> Self {
        InstanceError::InvalidOptions {
            message: message.into(),
            field: None,
        }
    }

    /// The one field of the request this error is about, so a form can show it there.
    pub fn field(&self) -> Option<String> {
        match self {
            InstanceError::InvalidName(_) => Some("name".to_owned()),
            InstanceError::InvalidOptions { field, .. } => field.clone(),
            InstanceError::UnknownBackendType(_) => Some("backend_type".to_owned()),
            InstanceError::PortTaken { .. } | InstanceError::PortInUse(_) => {
                Some("backend_options.port".to_owned())
            }
            InstanceError::AliasTaken { .. } => Some("aliases".to_owned()),
            _ => None,
        }
    }
}

//! The supervisor: one task per instance that alone owns its child process.
//!
//! INTERFACE (fixed; the engine codes against exactly these signatures).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

/// What to run for one start of an instance. Built by the registry from config + options.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Added to the engine's own environment.
    pub env: Vec<(String, String)>,
    /// Polled until it answers 200: `http://127.0.0.1:<port>/health`.
    pub health_url: String,
}

/// When a crashed backend is started again.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub auto_restart: bool,
    pub max_restarts: u32,
    pub restart_delay: Duration,
}

/// Settings shared by every instance's supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub logs_dir: PathBuf,
    /// Pid files of running children live here.
    pub run_dir: PathBuf,
    pub stop_grace: Duration,
    pub log_max_bytes: u64,
    pub log_keep_files: usize,
    /// Healthy uptime after which the restart counter resets.
    pub restart_reset_after: Duration,
}

/// llamactl's three statuses, unchanged on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Stopped,
    Running,
    Failed,
}

/// Finer state beside `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Starting,
    Ready,
    Unhealthy,
    Restarting,
    Stopping,
}

/// What the supervisor publishes on its watch channel; one writer: the supervisor task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeState {
    pub status: Status,
    pub health: Option<Health>,
    pub pid: Option<u32>,
    /// Unix seconds of the current process's start.
    pub started_at: Option<i64>,
    /// Automatic restarts since the last manual start (or counter reset).
    pub restarts: u32,
    /// Why the instance is `failed` or why the last start failed.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    // implementation-defined; Display is a sentence a user can act on.
}

/// Handle to one instance's supervisor task. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {}

impl Supervisor {
    /// Starts the task for instance `name`; the instance is `stopped`.
    pub fn new(name: &str, settings: std::sync::Arc<SupervisorSettings>) -> Self {
        let _ = (name, settings);
        todo!()
    }
    pub fn state(&self) -> RuntimeState {
        todo!()
    }
    pub fn subscribe(&self) -> watch::Receiver<RuntimeState> {
        todo!()
    }
    /// Spawns the process; returns once it is spawned (health `starting`). Resets the restart
    /// counter. Starting a running instance returns its state unchanged.
    pub async fn start(&self, spec: LaunchSpec, policy: RestartPolicy) -> Result<RuntimeState, SupervisorError> {
        let _ = (spec, policy);
        todo!()
    }
    /// SIGINT to the process group, SIGKILL after the grace; cancels a pending restart.
    /// Stopping a stopped instance returns its state unchanged.
    pub async fn stop(&self) -> Result<RuntimeState, SupervisorError> {
        todo!()
    }
    /// Waits until health is `ready`; fails at once, with the last log lines, if the process exits.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), SupervisorError> {
        let _ = timeout;
        todo!()
    }
    /// Stops the process (if any) and ends the task. Used by delete and engine shutdown.
    pub async fn shutdown(&self) {
        todo!()
    }
    /// The last `lines` log lines (all when `None`), read from the log file, so they survive an
    /// engine restart.
    pub fn logs(&self, lines: Option<usize>) -> std::io::Result<String> {
        let _ = lines;
        todo!()
    }
}

/// Finds pid files left by a crashed engine, stops those processes that are really backends we
/// started, removes the files; returns one line per process handled.
pub fn clean_up_leftovers(run_dir: &std::path::Path) -> Vec<String> {
    let _ = run_dir;
    todo!()
}

//! The supervisor: one task per instance that alone owns its child process.
//!
//! The [`Supervisor`] handle sends commands to the instance's task ([`task`]) over a channel; the
//! task is the only writer of the instance's [`RuntimeState`], published on a watch channel, and
//! its [`InstanceState`] moves only as [`InstanceState::can_become`] allows.

mod keeper;
mod logs;
mod pidfile;
mod readiness;
mod restart;
mod spawn;
mod state;
mod stop;
mod task;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use logs::LogFollower;
use logs::LogSink;
pub use state::{Health, InstanceState, RunCounts, RunTotals, Status};
use task::Request;

pub use crate::backends::StopSignal;

/// How many of the latest output lines an error about a failed start carries.
const ERROR_OUTPUT_LINES: usize = 20;

/// What to run for one start of an instance. Built by the registry from config + options.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Added to the engine's own environment.
    pub env: Vec<(String, String)>,
    /// Polled until it answers 200: `http://127.0.0.1:<port>/health`.
    pub health_url: String,
    /// How the backend gets the key Corral presents to it: a key file written at each launch
    /// (owner-only, never through a link), or an environment variable.
    pub secret: Box<crate::backends::SecretHandover>,
    /// When set, readiness is this request answering 200 instead of `health_url` (which is
    /// still what the periodic check polls afterwards); any other answer fails the start.
    pub ready_request: Option<ReadyRequest>,
    /// What an orderly stop sends to the process group first.
    pub stop_signal: StopSignal,
}

/// A POST that proves the backend can answer (see [`LaunchSpec::ready_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyRequest {
    /// Path and query, on the health URL's host and port.
    pub path: String,
    /// A JSON body.
    pub body: String,
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

/// What the supervisor publishes on its watch channel; one writer: the supervisor task.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeState {
    /// Where the backend is in its life; `status` and `health` are views of it.
    pub state: InstanceState,
    pub pid: Option<u32>,
    /// Unix seconds of the current process's start.
    pub started_at: Option<i64>,
    /// Automatic restarts since the last manual start (or counter reset).
    pub restarts: u32,
    /// Why the instance is `failed` or why the last start failed.
    pub error: Option<String>,
}

impl RuntimeState {
    pub fn status(&self) -> Status {
        self.state.status()
    }

    pub fn health(&self) -> Option<Health> {
        self.state.health()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("could not start the backend: the program `{program}` was not found; check the backend's command in the configuration")]
    ProgramNotFound { program: String },
    #[error("could not start the backend: the program `{program}` is not executable (permission denied)")]
    ProgramNotExecutable { program: String },
    #[error("could not start the backend `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the instance is not running")]
    NotRunning,
    #[error("the backend did not become ready: {reason}{}", last_output(output))]
    ExitedBeforeReady { reason: String, output: String },
    #[error("the instance was stopped before it became ready")]
    StoppedBeforeReady,
    #[error("the backend did not become ready within {} s", timeout.as_secs_f32())]
    ReadyTimeout { timeout: Duration },
    #[error("the instance's supervisor has shut down (the instance was deleted or the engine is stopping)")]
    ShutDown,
}

fn last_output(output: &str) -> String {
    if output.is_empty() {
        " (it printed nothing)".to_string()
    } else {
        format!("\nLast output:\n{output}")
    }
}

/// Handle to one instance's supervisor task. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Handle>,
}

/// What every clone of a [`Supervisor`] shares.
struct Handle {
    /// Commands to the task; closed once the task has ended.
    commands: mpsc::Sender<Request>,
    /// The task's published state; readable after the task has ended (last value).
    state: watch::Receiver<RuntimeState>,
    /// The instance's log, shared with the task so errors can quote recent output.
    log: Arc<LogSink>,
    counts: Arc<RunCounts>,
}

impl Supervisor {
    /// Starts the task for instance `name`; the instance is `stopped`.
    ///
    /// Must be called inside a tokio runtime. The task ends (stopping the process) on
    /// [`Supervisor::shutdown`] or when the last handle is dropped.
    pub fn new(name: &str, settings: std::sync::Arc<SupervisorSettings>) -> Self {
        let log = Arc::new(LogSink::new(name, &settings));
        let counts = Arc::new(RunCounts::default());
        let (commands, state) = task::spawn_task(name, settings, log.clone(), Arc::clone(&counts));
        Self {
            inner: Arc::new(Handle {
                commands,
                state,
                log,
                counts,
            }),
        }
    }

    /// Starts, crashes and restarts since this supervisor began.
    pub fn run_totals(&self) -> RunTotals {
        self.inner.counts.totals()
    }
    pub fn state(&self) -> RuntimeState {
        self.inner.state.borrow().clone()
    }
    pub fn subscribe(&self) -> watch::Receiver<RuntimeState> {
        self.inner.state.clone()
    }
    /// Spawns the process; returns once it is spawned (health `starting`). Resets the restart
    /// counter. Starting a running instance returns its state unchanged.
    pub async fn start(
        &self,
        spec: LaunchSpec,
        policy: RestartPolicy,
    ) -> Result<RuntimeState, SupervisorError> {
        self.request(|reply| Request::Start {
            spec,
            policy,
            reply,
        })
        .await?
    }
    /// SIGINT to the process group, SIGKILL after the grace; cancels a pending restart.
    /// Stopping a stopped instance returns its state unchanged.
    pub async fn stop(&self) -> Result<RuntimeState, SupervisorError> {
        self.request(|reply| Request::Stop { reply }).await
    }
    /// Waits until health is `ready`; fails at once, with the last log lines, if the process exits.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), SupervisorError> {
        let mut rx = self.subscribe();
        match tokio::time::timeout(timeout, self.follow_until_ready(&mut rx)).await {
            Ok(result) => result,
            Err(_) => Err(SupervisorError::ReadyTimeout { timeout }),
        }
    }
    /// Stops the process (if any) and ends the task. Used by delete and engine shutdown.
    pub async fn shutdown(&self) {
        // An error means the task has already ended: nothing left to stop.
        let _ = self.request(|reply| Request::Shutdown { reply }).await;
    }
    /// The last `lines` log lines (all when `None`), read from the log file, so they survive an
    /// engine restart.
    pub fn logs(&self, lines: Option<usize>) -> std::io::Result<String> {
        logs::tail(self.inner.log.path(), lines)
    }

    /// The last `lines` log lines, then every line written after them, across restarts of the
    /// instance; a follower that falls behind misses lines rather than slowing the log down.
    /// Reads the file: call it off the async workers.
    pub fn follow_logs(&self, lines: usize) -> std::io::Result<LogFollower> {
        self.inner.log.follow(lines)
    }

    /// Sends one command to the task and waits for its answer.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SupervisorError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(make(reply))
            .await
            .map_err(|_| SupervisorError::ShutDown)?;
        answer.await.map_err(|_| SupervisorError::ShutDown)
    }

    /// Follows the state until health is `ready`, failing as soon as the process that was
    /// starting is gone (exited, restarting, stopped or replaced by another pid).
    async fn follow_until_ready(
        &self,
        rx: &mut watch::Receiver<RuntimeState>,
    ) -> Result<(), SupervisorError> {
        let mut seen_pid: Option<u32> = None;
        loop {
            let state = rx.borrow_and_update().clone();
            let exited = |reason: Option<String>| SupervisorError::ExitedBeforeReady {
                reason: reason.unwrap_or_else(|| "the backend exited".to_string()),
                output: self.inner.log.recent(ERROR_OUTPUT_LINES),
            };
            match state.state {
                InstanceState::Ready => return Ok(()),
                InstanceState::Failed => return Err(exited(state.error)),
                InstanceState::Stopped if seen_pid.is_some() => {
                    return Err(exited(
                        state
                            .error
                            .or_else(|| Some("the backend stopped".to_string())),
                    ))
                }
                InstanceState::Stopped => return Err(SupervisorError::NotRunning),
                InstanceState::Stopping => return Err(SupervisorError::StoppedBeforeReady),
                InstanceState::Restarting if seen_pid.is_some() => return Err(exited(state.error)),
                InstanceState::Starting | InstanceState::Unhealthy | InstanceState::Restarting => {}
            }
            if let Some(pid) = state.pid {
                // Another pid means the process we were waiting for exited and was restarted
                // between two looks at the state.
                if seen_pid.is_some_and(|seen| seen != pid) {
                    return Err(exited(state.error));
                }
                seen_pid = Some(pid);
            }
            if rx.changed().await.is_err() {
                return Err(SupervisorError::ShutDown);
            }
        }
    }
}

/// Finds pid files left by a crashed engine, stops those processes that are really backends we
/// started, removes the files; returns one line per process handled.
pub fn clean_up_leftovers(run_dir: &std::path::Path) -> Vec<String> {
    pidfile::clean_up_leftovers(run_dir, &mut pidfile::send)
}

#[cfg(all(test, unix))]
// Tests may unwrap: a panic is how they fail.
#[allow(clippy::unwrap_used)]
mod tests;

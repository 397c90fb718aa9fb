//! The supervisor task of one instance: the only owner of its child process and the only writer
//! of its state. Commands arrive over a channel; exits, readiness probes, the restart delay and
//! the restart-counter reset are the other events it waits on.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::logs::LogSink;
use super::readiness::{Answer, Probe};
use super::restart::{self, AfterExit};
use super::spawn::{self, LaunchContext, Running};
use super::{
    stop, InstanceState, LaunchSpec, RestartPolicy, RunCounts, RuntimeState, StopSignal,
    SupervisorError, SupervisorSettings,
};

/// A command from a [`super::Supervisor`] handle, with the channel for its answer.
pub(super) enum Request {
    Start {
        spec: LaunchSpec,
        policy: RestartPolicy,
        reply: oneshot::Sender<Result<RuntimeState, SupervisorError>>,
    },
    Stop {
        reply: oneshot::Sender<RuntimeState>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Starts the task; returns the handle's ends of the command and state channels.
pub(super) fn spawn_task(
    name: &str,
    settings: Arc<SupervisorSettings>,
    log: Arc<LogSink>,
    counts: Arc<RunCounts>,
) -> (mpsc::Sender<Request>, watch::Receiver<RuntimeState>) {
    // Commands are few and each waits for its answer: a small buffer is plenty.
    let (commands_tx, commands) = mpsc::channel(16);
    let (state, state_rx) = watch::channel(RuntimeState {
        state: InstanceState::Stopped,
        pid: None,
        started_at: None,
        restarts: 0,
        error: None,
    });
    let (probes_tx, probes) = mpsc::unbounded_channel();
    let task = Task {
        name: name.to_string(),
        settings,
        log,
        published: state,
        counts,
        commands,
        probes_tx,
        probes,
        launch: None,
        child: None,
        generation: 0,
        restart_at: None,
        reset_counter_at: None,
    };
    tokio::spawn(task.run());
    (commands_tx, state_rx)
}

struct Task {
    name: String,
    settings: Arc<SupervisorSettings>,
    log: Arc<LogSink>,
    /// The published state; this task is its only writer, through [`Task::publish`].
    published: watch::Sender<RuntimeState>,
    /// Starts, crashes and restarts, counted at each move of `published`.
    counts: Arc<RunCounts>,
    commands: mpsc::Receiver<Request>,
    /// Given to each readiness watch; answers come back on `probes`.
    probes_tx: mpsc::UnboundedSender<Probe>,
    probes: mpsc::UnboundedReceiver<Probe>,
    /// What the last manual start ran, for automatic restarts.
    launch: Option<(LaunchSpec, RestartPolicy)>,
    /// The running backend, if any.
    child: Option<Running>,
    /// Counts spawns, so probes of an earlier process are told apart.
    generation: u64,
    /// When a pending automatic restart is due; `None` when none is pending.
    restart_at: Option<Instant>,
    /// When the restart counter goes back to 0, if the backend stays ready until then.
    reset_counter_at: Option<Instant>,
}

impl Task {
    async fn run(mut self) {
        loop {
            tokio::select! {
                request = self.commands.recv() => match request {
                    Some(Request::Start { spec, policy, reply }) => {
                        let _ = reply.send(self.start(spec, policy));
                    }
                    Some(Request::Stop { reply }) => {
                        self.stop().await;
                        let _ = reply.send(self.published.borrow().clone());
                    }
                    Some(Request::Shutdown { reply }) => {
                        self.stop().await;
                        let _ = reply.send(());
                        return;
                    }
                    // Every handle is gone: nobody can stop the backend any more, so stop it now.
                    None => {
                        self.stop().await;
                        return;
                    }
                },
                exit = wait_for_exit(&mut self.child) => self.exited(exit).await,
                Some(probe) = self.probes.recv() => self.probed(probe).await,
                () = sleep_until(self.restart_at) => self.restart(),
                () = sleep_until(self.reset_counter_at) => {
                    self.reset_counter_at = None;
                    self.publish(|state| state.restarts = 0);
                }
            }
        }
    }

    /// A manual start: resets the restart counter and cancels a pending restart.
    fn start(
        &mut self,
        spec: LaunchSpec,
        policy: RestartPolicy,
    ) -> Result<RuntimeState, SupervisorError> {
        if self.child.is_some() {
            return Ok(self.published.borrow().clone());
        }
        let was_restarting = self.restart_at.take().is_some();
        self.reset_counter_at = None;
        self.publish(|state| state.restarts = 0);
        let result = self.spawn(&spec);
        self.launch = Some((spec, policy));
        match result {
            Ok(()) => Ok(self.published.borrow().clone()),
            Err(err) => {
                self.publish(|state| {
                    // The restart it replaced is gone too: nothing is running or about to.
                    if was_restarting {
                        *state = stopped_state(InstanceState::Failed, state.restarts);
                    }
                    state.error = Some(err.to_string());
                });
                Err(err)
            }
        }
    }

    /// Spawns the backend of the current launch and publishes `running`/`starting`.
    fn spawn(&mut self, spec: &LaunchSpec) -> Result<(), SupervisorError> {
        self.generation += 1;
        let context = LaunchContext {
            name: &self.name,
            run_dir: &self.settings.run_dir,
            log: &self.log,
            generation: self.generation,
            probes: &self.probes_tx,
        };
        match spawn::launch(spec, context) {
            Ok(running) => {
                let pid = running.pid;
                self.child = Some(running);
                self.publish(|state| {
                    state.state = InstanceState::Starting;
                    state.pid = Some(pid);
                    state.started_at = Some(unix_now());
                    state.error = None;
                });
                Ok(())
            }
            Err(err) => {
                self.log
                    .note(&format!("Could not start instance {}: {err}", self.name));
                Err(err)
            }
        }
    }

    /// The stop verb; also ends a pending restart. The state ends `stopped` unless there was
    /// nothing to stop (then it is unchanged, `failed` included).
    async fn stop(&mut self) {
        self.reset_counter_at = None;
        if self.restart_at.take().is_some() {
            self.publish(|state| *state = stopped_state(InstanceState::Stopped, state.restarts));
        }
        let Some(running) = self.child.take() else {
            return;
        };
        // Published first, so nobody takes the coming exit for a crash or waits for readiness.
        self.publish(|state| state.state = InstanceState::Stopping);
        self.end(running).await;
        self.publish(|state| *state = stopped_state(InstanceState::Stopped, state.restarts));
    }

    /// Stops `running` with the backend's stop signal and tears down what lived with it.
    async fn end(&mut self, mut running: Running) {
        let first = self
            .launch
            .as_ref()
            .map_or(StopSignal::default(), |(spec, _)| spec.stop_signal);
        match stop::stop(&mut running, self.settings.stop_grace, first).await {
            // How it ended tells a clean stop from one that needed SIGKILL or crashed on the way.
            Ok(exit) => self.log.note(&format!(
                "Stopping instance {}: {}",
                self.name,
                restart::describe(&exit)
            )),
            Err(err) => tracing::warn!(instance = %self.name, "cannot reap the backend: {err}"),
        }
        stop::finish(running, &self.log, &self.name).await;
    }

    /// The backend exited on its own: stopped, restart later, or failed.
    async fn exited(&mut self, exit: std::io::Result<std::process::ExitStatus>) {
        self.reset_counter_at = None;
        let Some(running) = self.child.take() else {
            return;
        };
        // Output is drained by `finish`, so the backend's last words are in the log by now.
        stop::finish(running, &self.log, &self.name).await;
        let Some((_, policy)) = &self.launch else {
            return;
        };
        let (restarts, was) = {
            let state = self.published.borrow();
            (state.restarts, state.state)
        };
        // A backend that exits before it was ever ready usually says why (a wrong model path):
        // the state's error quotes it. The log has the line already, so its note does not.
        let said = if was == InstanceState::Starting {
            last_error_line(&self.log.recent(ERROR_SCAN_LINES))
                .map(|line| format!("; its log says: {}", line.trim()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        match restart::after_exit(&exit, policy, restarts) {
            AfterExit::Stopped => {
                self.publish(|state| *state = stopped_state(InstanceState::Stopped, state.restarts))
            }
            AfterExit::Failed { reason } => {
                self.log
                    .note(&format!("Instance {} failed: {reason}", self.name));
                self.publish(|state| {
                    *state = stopped_state(InstanceState::Failed, state.restarts);
                    state.error = Some(reason + &said);
                });
            }
            AfterExit::Restart {
                attempt,
                delay,
                reason,
            } => {
                self.log.note(&format!(
                    "Auto-restarting instance {} (attempt {attempt}/{}) in {} s",
                    self.name,
                    policy.max_restarts,
                    delay.as_secs_f32()
                ));
                self.restart_at = Some(deadline_after(delay));
                self.publish(|state| {
                    state.state = InstanceState::Restarting;
                    state.pid = None;
                    state.started_at = None;
                    state.restarts = attempt;
                    state.error = Some(reason + &said);
                });
            }
        }
    }

    /// The restart delay is over: spawn again (the counter was raised when it was scheduled).
    fn restart(&mut self) {
        self.restart_at = None;
        let Some((spec, _)) = self.launch.clone() else {
            return;
        };
        if let Err(err) = self.spawn(&spec) {
            self.publish(|state| {
                *state = stopped_state(InstanceState::Failed, state.restarts);
                state.error = Some(format!("the automatic restart failed: {err}"));
            });
        }
    }

    /// A readiness answer: `ready` on 200, `unhealthy` when a ready backend stops answering,
    /// `failed` when a starting backend runs but answered that it cannot serve.
    async fn probed(&mut self, probe: Probe) {
        if self.child.is_none() || probe.generation != self.generation {
            return;
        }
        let now = self.published.borrow().state;
        match (probe.answer, now) {
            (Answer::Unable(answer), InstanceState::Starting) => self.unable(answer).await,
            (Answer::Healthy, InstanceState::Starting | InstanceState::Unhealthy) => {
                if self.published.borrow().restarts > 0 {
                    self.reset_counter_at =
                        Some(Instant::now() + self.settings.restart_reset_after);
                }
                self.publish(|state| state.state = InstanceState::Ready);
            }
            (Answer::Unhealthy, InstanceState::Ready) => {
                self.reset_counter_at = None;
                self.publish(|state| state.state = InstanceState::Unhealthy);
            }
            _ => {}
        }
    }
}

impl Task {
    /// Changes the published state: the one place it changes, so a move that
    /// [`InstanceState::can_become`] refuses is caught here, whoever made it.
    fn publish(&self, change: impl FnOnce(&mut RuntimeState)) {
        self.published.send_modify(|state| {
            let from = state.state;
            change(state);
            self.counts.moved(from, state.state);
            if !from.can_become(state.state) {
                tracing::error!(
                    instance = %self.name,
                    "the supervisor moved from {from:?} to {:?}, which is not an allowed move",
                    state.state
                );
                debug_assert!(
                    false,
                    "{from:?} -> {:?} is not an allowed move",
                    state.state
                );
            }
        });
    }

    /// The backend is alive but said it cannot serve (its model did not load): a restart would
    /// end the same way, so the start fails, with the backend's own words from its log.
    async fn unable(&mut self, answer: String) {
        let mut reason = format!("the backend is running but cannot answer ({answer})");
        let said = last_error_line(&self.log.recent(ERROR_SCAN_LINES))
            .map(|line| format!("; its log says: {}", line.trim()));
        self.log
            .note(&format!("Instance {} failed: {reason}", self.name));
        // The log has the line already; the state's error quotes it.
        if let Some(said) = said {
            reason.push_str(&said);
        }
        let Some(running) = self.child.take() else {
            return;
        };
        self.reset_counter_at = None;
        // Published before the stop, so whoever waits for readiness gets this reason rather
        // than "stopped".
        self.publish(|state| {
            *state = stopped_state(InstanceState::Failed, state.restarts);
            state.error = Some(reason);
        });
        self.end(running).await;
    }
}

/// How many recent log lines are searched for the reason a backend gives for not serving.
const ERROR_SCAN_LINES: usize = 50;

/// The last line that reads like an error: Python's exception lines (`...Error: why`) and the
/// `ERROR`/`error:` lines of the backends' loggers.
fn last_error_line(output: &str) -> Option<&str> {
    output
        .lines()
        .rev()
        .find(|line| line.contains("Error") || line.contains("ERROR") || line.contains("error:"))
}

/// The state of an instance with no process and no restart pending.
fn stopped_state(state: InstanceState, restarts: u32) -> RuntimeState {
    RuntimeState {
        state,
        pid: None,
        started_at: None,
        restarts,
        error: None,
    }
}

/// The exit of the running backend; never resolves while there is none.
async fn wait_for_exit(child: &mut Option<Running>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(running) => running.child.wait().await,
        None => std::future::pending().await,
    }
}

/// The instant `delay` from now; a delay past what the clock can hold (a user's
/// `restart_delay` is any number) waits about 30 years instead of overflowing.
fn deadline_after(delay: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(delay.min(FAR)).unwrap_or(now)
}

/// Sleeps until `deadline`; never resolves without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

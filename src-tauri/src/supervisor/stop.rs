//! Stopping a backend: SIGINT (or the backend's own stop signal) to its process group, SIGKILL after the grace, always reap; and
//! the orderly end of everything that lived with the process.

use std::process::ExitStatus;
use std::time::Duration;

use super::keeper::Keeper;
use super::logs::LogSink;
use super::spawn::Running;
use super::StopSignal;

/// How long the pumps may take to drain the pipes after the process is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Stops the process: `first` to the group, SIGKILL to the group after `grace`, then reaps it.
pub(super) async fn stop(
    running: &mut Running,
    grace: Duration,
    first: StopSignal,
) -> std::io::Result<ExitStatus> {
    let first = match first {
        StopSignal::Interrupt => GroupSignal::Interrupt,
        StopSignal::Terminate => GroupSignal::Terminate,
    };
    signal_group(running.pid, first);
    if let Ok(exit) = tokio::time::timeout(grace, running.child.wait()).await {
        return exit;
    }
    tracing::warn!(
        pid = running.pid,
        "the backend did not exit within {} s of its stop signal (instances.stop_grace_seconds): killing it",
        grace.as_secs_f32()
    );
    signal_group(running.pid, GroupSignal::Kill);
    // Where there are no groups to signal this is the kill; elsewhere the group kill came first.
    let _ = running.child.start_kill();
    running.child.wait().await
}

/// After the process has been reaped: kills what is left of its group (workers it started),
/// drains its output, removes the pid file, writes the stop marker.
pub(super) async fn finish(mut running: Running, log: &LogSink, name: &str) {
    signal_group(running.pid, GroupSignal::Kill);
    running.group.disarm();
    running.probe.abort();
    for pump in running.pumps.drain(..) {
        let abort = pump.abort_handle();
        // A grandchild outside the group could hold the pipe open for ever: stop reading then.
        if tokio::time::timeout(DRAIN_TIMEOUT, pump).await.is_err() {
            abort.abort();
        }
    }
    if let Some(path) = running.pid_file.take() {
        if let Err(err) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), "cannot remove the pid file: {err}");
        }
    }
    drop(running);
    log.stopped(name);
}

#[derive(Clone, Copy)]
pub(super) enum GroupSignal {
    Interrupt,
    Terminate,
    Kill,
}

/// Sends `signal` to the process group led by `pid`. A group already gone is not an error.
/// Never to pid 0 or 1 or the engine's own group, whatever the caller passes: `killpg(1)` is
/// `kill(-1)`, every process the engine may signal.
#[cfg(unix)]
pub(super) fn signal_group(pid: u32, signal: GroupSignal) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if let Err(refusal) = super::pidfile::check_pid(pid) {
        tracing::warn!(pid, "not signalling the process group: {refusal}");
        return;
    }
    let Ok(raw) = i32::try_from(pid) else { return };
    let signal = match signal {
        GroupSignal::Interrupt => Signal::SIGINT,
        GroupSignal::Terminate => Signal::SIGTERM,
        GroupSignal::Kill => Signal::SIGKILL,
    };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pid, "cannot send {signal} to the process group: {err}"),
    }
}

/// Windows has no process groups to signal here; the child itself is killed by the caller.
#[cfg(not(unix))]
pub(super) fn signal_group(_pid: u32, _signal: GroupSignal) {}

/// Kills the process group when dropped armed: if the supervisor task is torn down without an
/// orderly stop (runtime shutdown), no grandchild survives it. `kill_on_drop` covers the child.
/// Its [`Keeper`] does the same when the engine dies without dropping anything.
pub(super) struct GroupGuard {
    pid: u32,
    armed: bool,
    keeper: Option<Keeper>,
}

impl GroupGuard {
    pub(super) fn new(pid: u32) -> Self {
        let keeper = Keeper::watch(pid)
            .inspect_err(|err| {
                tracing::warn!(
                    pid,
                    "no keeper for the process group; if the engine dies its workers may outlive it: {err}"
                );
            })
            .ok();
        Self {
            pid,
            armed: true,
            keeper,
        }
    }

    /// The group has been killed and reaped in order: nothing is signalled again, by this guard
    /// or its keeper.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
        if let Some(keeper) = &mut self.keeper {
            keeper.release();
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pid, GroupSignal::Kill);
        }
    }
}

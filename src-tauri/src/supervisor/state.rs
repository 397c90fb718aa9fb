//! The one state of an instance's backend process, and the moves allowed between states.
//!
//! The supervisor task is the only writer. Everything else (the API's `status` and `health`,
//! routing, the idle reaper, eviction, the tray) reads this one value instead of combining
//! flags of its own. A move the table below does not allow is a bug in the supervisor: it is
//! logged, and debug builds stop on it so the test suites catch it.

use serde::Serialize;

// `Status` and `Health` are what the API shows: views of [`InstanceState`]. Their doc comments
// are part of the served OpenAPI document.

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

/// Where an instance's backend is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// No process, none due. Where every instance begins.
    Stopped,
    /// The process runs and readiness is being polled.
    Starting,
    /// The backend answered its readiness check.
    Ready,
    /// A ready backend stopped answering its health check; the process still runs.
    Unhealthy,
    /// The backend crashed and is started again after the restart delay; no process now.
    Restarting,
    /// An orderly stop is under way: the stop signal was sent, the exit is awaited.
    Stopping,
    /// The backend crashed with no restart left, or ran but could not serve.
    Failed,
}

use InstanceState as S;

impl InstanceState {
    /// Every state, for tests and tables.
    pub const ALL: [InstanceState; 7] = [
        S::Stopped,
        S::Starting,
        S::Ready,
        S::Unhealthy,
        S::Restarting,
        S::Stopping,
        S::Failed,
    ];

    /// Whether the supervisor may move from `self` to `next`. Staying put is always allowed
    /// (the error text or the pid may change without the state changing).
    pub fn can_become(self, next: InstanceState) -> bool {
        if self == next {
            return true;
        }
        match self {
            // A start spawns; a start whose spawn fails leaves the instance where it was.
            S::Stopped | S::Failed => next == S::Starting,
            S::Starting | S::Ready | S::Unhealthy => match next {
                S::Ready => true,
                // Only a backend that was ready can turn unhealthy; a starting one is still
                // being polled for readiness.
                S::Unhealthy => self == S::Ready,
                // A clean exit (code 0), a crash with or without a restart left, a stop.
                S::Stopped | S::Restarting | S::Failed | S::Stopping => true,
                S::Starting => false,
            },
            // The delay ends in a new spawn, a spawn that fails, or a stop that cancels it.
            S::Restarting => matches!(next, S::Starting | S::Failed | S::Stopped),
            S::Stopping => next == S::Stopped,
        }
    }

    /// llamactl's status: an instance with a process, or one due again after a crash, runs.
    pub fn status(self) -> Status {
        match self {
            S::Stopped => Status::Stopped,
            S::Failed => Status::Failed,
            S::Starting | S::Ready | S::Unhealthy | S::Restarting | S::Stopping => Status::Running,
        }
    }

    /// The state's name in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            S::Stopped => "stopped",
            S::Starting => "starting",
            S::Ready => "ready",
            S::Unhealthy => "unhealthy",
            S::Restarting => "restarting",
            S::Stopping => "stopping",
            S::Failed => "failed",
        }
    }

    /// The finer state shown beside `status`; none for an instance that does not run.
    pub fn health(self) -> Option<Health> {
        match self {
            S::Stopped | S::Failed => None,
            S::Starting => Some(Health::Starting),
            S::Ready => Some(Health::Ready),
            S::Unhealthy => Some(Health::Unhealthy),
            S::Restarting => Some(Health::Restarting),
            S::Stopping => Some(Health::Stopping),
        }
    }

    /// The backend can take a request now. An unhealthy one still gets requests: its health
    /// check may fail while it is only busy, and its own answer says more than ours would.
    pub fn can_answer(self) -> bool {
        matches!(self, S::Ready | S::Unhealthy)
    }

    /// It holds a running slot: a process, or one due after a crash. Counts against
    /// `max_running_instances`.
    pub fn is_active(self) -> bool {
        !matches!(self, S::Stopped | S::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_views_give_llamactls_status_and_the_health_beside_it() {
        let views: Vec<(Status, Option<Health>)> =
            S::ALL.iter().map(|s| (s.status(), s.health())).collect();
        assert_eq!(
            views,
            vec![
                (Status::Stopped, None),
                (Status::Running, Some(Health::Starting)),
                (Status::Running, Some(Health::Ready)),
                (Status::Running, Some(Health::Unhealthy)),
                (Status::Running, Some(Health::Restarting)),
                (Status::Running, Some(Health::Stopping)),
                (Status::Failed, None),
            ]
        );
    }

    #[test]
    fn only_the_allowed_moves_are_allowed() {
        // Each row: from, then every state it may move to (staying put aside).
        let allowed: [(InstanceState, &[InstanceState]); 7] = [
            (S::Stopped, &[S::Starting]),
            (
                S::Starting,
                &[S::Ready, S::Restarting, S::Stopping, S::Failed, S::Stopped],
            ),
            (
                S::Ready,
                &[
                    S::Unhealthy,
                    S::Restarting,
                    S::Stopping,
                    S::Failed,
                    S::Stopped,
                ],
            ),
            (
                S::Unhealthy,
                &[S::Ready, S::Restarting, S::Stopping, S::Failed, S::Stopped],
            ),
            (S::Restarting, &[S::Starting, S::Failed, S::Stopped]),
            (S::Stopping, &[S::Stopped]),
            (S::Failed, &[S::Starting]),
        ];
        for (from, to) in allowed {
            for next in S::ALL {
                let expected = next == from || to.contains(&next);
                assert_eq!(
                    from.can_become(next),
                    expected,
                    "{from:?} -> {next:?} should be {}",
                    if expected { "allowed" } else { "refused" }
                );
            }
        }
    }

    #[test]
    fn only_a_ready_or_unhealthy_backend_takes_requests_and_only_a_process_holds_a_slot() {
        let answering: Vec<_> = S::ALL.into_iter().filter(|s| s.can_answer()).collect();
        assert_eq!(answering, [S::Ready, S::Unhealthy]);
        let idle: Vec<_> = S::ALL.into_iter().filter(|s| !s.is_active()).collect();
        assert_eq!(idle, [S::Stopped, S::Failed]);
    }
}

/// Totals of one supervisor's life, for the metrics: monotonic, never reset by a manual start.
#[derive(Debug, Default)]
pub struct RunCounts {
    starts: std::sync::atomic::AtomicU64,
    crashes: std::sync::atomic::AtomicU64,
    restarts: std::sync::atomic::AtomicU64,
}

/// A reading of [`RunCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTotals {
    /// Processes spawned, automatic restarts included.
    pub starts: u64,
    /// Processes that exited or could not serve without being asked to stop.
    pub crashes: u64,
    /// Automatic restarts after a crash.
    pub restarts: u64,
}

impl RunCounts {
    /// Counts the move from `from` to `to`.
    pub(super) fn moved(&self, from: InstanceState, to: InstanceState) {
        use std::sync::atomic::Ordering::Relaxed;
        if from == to {
            return;
        }
        match (from, to) {
            (S::Restarting, S::Starting) => {
                self.starts.fetch_add(1, Relaxed);
                self.restarts.fetch_add(1, Relaxed);
            }
            (_, S::Starting) => {
                self.starts.fetch_add(1, Relaxed);
            }
            (S::Starting | S::Ready | S::Unhealthy, S::Restarting | S::Failed) => {
                self.crashes.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }

    pub fn totals(&self) -> RunTotals {
        use std::sync::atomic::Ordering::Relaxed;
        RunTotals {
            starts: self.starts.load(Relaxed),
            crashes: self.crashes.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod run_count_tests {
    use super::*;

    #[test]
    fn starts_crashes_and_restarts_are_counted_from_the_moves() {
        let counts = RunCounts::default();
        for (from, to) in [
            (S::Stopped, S::Starting),
            (S::Starting, S::Ready),
            (S::Ready, S::Restarting),
            (S::Restarting, S::Starting),
            (S::Starting, S::Failed),
            (S::Failed, S::Starting),
            (S::Starting, S::Ready),
            (S::Ready, S::Ready),
            (S::Ready, S::Stopping),
            (S::Stopping, S::Stopped),
        ] {
            counts.moved(from, to);
        }
        assert_eq!(
            counts.totals(),
            RunTotals {
                starts: 3,
                crashes: 2,
                restarts: 1
            }
        );
    }
}

//! What the registry may do with an instance right now: serve a request, wait, start it, stop it
//! for idleness or evict it. Each of those questions is answered here, from one snapshot of the
//! supervisor's [`InstanceState`] and the registry's own marks, so routing, the idle reaper and
//! eviction cannot disagree about what "ready" or "idle" means.

use std::sync::atomic::Ordering;

use super::instance::Instance;
use crate::supervisor::{InstanceState, RuntimeState, Status};

/// One look at an instance.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Lifecycle {
    /// The supervisor's state of the backend process.
    pub(super) process: RuntimeState,
    /// The instance left the registry.
    pub(super) removed: bool,
    /// The registry is stopping it once its requests end (idle stop, eviction, unload); new
    /// requests are not let in meanwhile.
    pub(super) draining: bool,
    /// A start holds a running slot; its process may not exist yet.
    pub(super) launching: bool,
    /// The idle reaper handed it to an idle stop that has not finished.
    pub(super) idle_stop_pending: bool,
    /// Requests being answered.
    pub(super) in_flight: u64,
}

/// What a request for the instance does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ForRequest {
    /// It was deleted: the model is unknown.
    Gone,
    /// Another operation (a start, a stop, a drain) is under way: wait for it, then look again.
    WaitForOperation,
    /// The backend can answer: take a lease.
    Lease,
    /// The process runs but is not ready yet: wait for readiness.
    WaitReady,
    /// It failed: answer with its error.
    Failed,
    /// It does not run: start it if on-demand start allows.
    Start,
}

impl Lifecycle {
    pub(super) fn of(instance: &Instance) -> Lifecycle {
        Lifecycle {
            process: instance.supervisor.state(),
            removed: instance.removed.load(Ordering::SeqCst),
            draining: instance.usage.is_draining(),
            launching: instance.starting.load(Ordering::SeqCst),
            idle_stop_pending: instance.idle_stop_pending.load(Ordering::SeqCst),
            in_flight: instance.usage.in_flight(),
        }
    }

    fn state(&self) -> InstanceState {
        self.process.state
    }

    pub(super) fn for_request(&self) -> ForRequest {
        if self.removed {
            return ForRequest::Gone;
        }
        if self.draining || self.launching {
            return ForRequest::WaitForOperation;
        }
        match self.state() {
            InstanceState::Ready | InstanceState::Unhealthy => ForRequest::Lease,
            InstanceState::Stopping => ForRequest::WaitForOperation,
            InstanceState::Starting | InstanceState::Restarting => ForRequest::WaitReady,
            InstanceState::Failed => ForRequest::Failed,
            InstanceState::Stopped => ForRequest::Start,
        }
    }

    /// Counts against `max_running_instances`: a process, one due after a crash, or a start
    /// that reserved its slot before spawning.
    pub(super) fn holds_a_running_slot(&self) -> bool {
        self.launching || self.state().is_active()
    }

    /// LRU eviction may stop it: it holds a slot, answers nothing, and no other operation is
    /// already starting or stopping it.
    pub(super) fn is_evictable(&self) -> bool {
        self.state().is_active()
            && self.state() != InstanceState::Stopping
            && !self.removed
            && !self.launching
            && !self.draining
            && self.in_flight == 0
    }

    /// The idle reaper watches its deadline: it runs, nothing is in flight, and no idle stop is
    /// already on its way.
    pub(super) fn is_idle(&self) -> bool {
        self.process.status() == Status::Running
            && self.in_flight == 0
            && !self.idle_stop_pending
            && !self.removed
    }

    /// Past its idle deadline, it is stopped only once it could answer: a backend still
    /// starting (or due for a restart) is looked at again shortly instead.
    pub(super) fn may_stop_for_idleness(&self) -> bool {
        self.state().can_answer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(state: InstanceState) -> Lifecycle {
        Lifecycle {
            process: RuntimeState {
                state,
                pid: None,
                started_at: None,
                restarts: 0,
                error: None,
            },
            removed: false,
            draining: false,
            launching: false,
            idle_stop_pending: false,
            in_flight: 0,
        }
    }

    #[test]
    fn a_request_leases_only_a_ready_or_unhealthy_instance_that_nothing_else_is_changing() {
        use ForRequest as R;
        use InstanceState as S;
        let expected = [
            (S::Stopped, R::Start),
            (S::Starting, R::WaitReady),
            (S::Ready, R::Lease),
            (S::Unhealthy, R::Lease),
            (S::Restarting, R::WaitReady),
            (S::Stopping, R::WaitForOperation),
            (S::Failed, R::Failed),
        ];
        for (state, step) in expected {
            assert_eq!(look(state).for_request(), step, "{state:?}");
            let draining = Lifecycle {
                draining: true,
                ..look(state)
            };
            assert_eq!(
                draining.for_request(),
                R::WaitForOperation,
                "{state:?} draining"
            );
            let launching = Lifecycle {
                launching: true,
                ..look(state)
            };
            assert_eq!(
                launching.for_request(),
                R::WaitForOperation,
                "{state:?} launching"
            );
            let removed = Lifecycle {
                removed: true,
                draining: true,
                ..look(state)
            };
            assert_eq!(removed.for_request(), R::Gone, "{state:?} removed");
        }
    }

    #[test]
    fn only_an_unused_instance_with_a_process_that_nothing_else_is_changing_is_evictable() {
        use InstanceState as S;
        let evictable: Vec<_> = S::ALL
            .into_iter()
            .filter(|&s| look(s).is_evictable())
            .collect();
        assert_eq!(
            evictable,
            [S::Starting, S::Ready, S::Unhealthy, S::Restarting]
        );
        let busy = Lifecycle {
            in_flight: 1,
            ..look(S::Ready)
        };
        let launching = Lifecycle {
            launching: true,
            ..look(S::Ready)
        };
        let draining = Lifecycle {
            draining: true,
            ..look(S::Ready)
        };
        let removed = Lifecycle {
            removed: true,
            ..look(S::Ready)
        };
        for other in [busy, launching, draining, removed] {
            assert!(!other.is_evictable(), "{other:?}");
        }
    }

    #[test]
    fn a_start_under_way_holds_a_running_slot_before_its_process_exists() {
        use InstanceState as S;
        assert!(!look(S::Stopped).holds_a_running_slot());
        assert!(!look(S::Failed).holds_a_running_slot());
        assert!(look(S::Restarting).holds_a_running_slot());
        let launching = Lifecycle {
            launching: true,
            ..look(S::Stopped)
        };
        assert!(launching.holds_a_running_slot());
    }

    #[test]
    fn the_reaper_watches_running_unused_instances_and_stops_only_those_able_to_answer() {
        use InstanceState as S;
        let watched: Vec<_> = S::ALL.into_iter().filter(|&s| look(s).is_idle()).collect();
        assert_eq!(
            watched,
            [
                S::Starting,
                S::Ready,
                S::Unhealthy,
                S::Restarting,
                S::Stopping
            ]
        );
        let stoppable: Vec<_> = S::ALL
            .into_iter()
            .filter(|&s| look(s).may_stop_for_idleness())
            .collect();
        assert_eq!(stoppable, [S::Ready, S::Unhealthy]);
        let busy = Lifecycle {
            in_flight: 2,
            ..look(S::Ready)
        };
        let pending = Lifecycle {
            idle_stop_pending: true,
            ..look(S::Ready)
        };
        assert!(!busy.is_idle());
        assert!(!pending.is_idle());
    }
}

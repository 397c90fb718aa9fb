//! Per-instance use: requests in flight, the time of last use (for the idle reaper and LRU
//! eviction), and the request and token counters shown in the instance JSON.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::instance::{lock, Instance};

/// What one instance's requests did. Atomics and std Mutexes: every section is a few loads and
/// stores, never across an await.
pub(super) struct Usage {
    /// Requests whose response body has not ended yet; the reaper never stops an instance above 0.
    in_flight: AtomicU64,
    /// Monotonic time of the last start or the last end of a request.
    last_used: Mutex<Instant>,
    /// Inference requests routed here since the engine started.
    requests: AtomicU64,
    /// Counters of the instance JSON.
    stats: Mutex<Stats>,
    /// Woken when `in_flight` drops to 0, for drains.
    drained: Notify,
    /// Set while the instance is being stopped for idleness or eviction: new requests wait for
    /// the stop to finish (then start it again) instead of joining the drain.
    draining: AtomicBool,
}

#[derive(Default, Clone, Copy)]
pub(super) struct Stats {
    pub last_request_at: Option<i64>,
    pub tokens_prompt: u64,
    pub tokens_completion: u64,
    pub tokens_per_second: Option<f64>,
}

/// Tokens one answer reported (any part may be missing).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct TokenUsage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub per_second: Option<f64>,
}

impl Usage {
    pub(super) fn new() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            last_used: Mutex::new(Instant::now()),
            requests: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
            drained: Notify::new(),
            draining: AtomicBool::new(false),
        }
    }

    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(super) fn last_used(&self) -> Instant {
        *lock(&self.last_used)
    }

    pub(super) fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub(super) fn stats(&self) -> Stats {
        *lock(&self.stats)
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(super) fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::SeqCst);
    }

    /// Counts a request in; false (and nothing counted) if a drain began, which the caller must
    /// wait out. The SeqCst pair with `set_draining` + `in_flight` in `drain` means that either
    /// the drain sees this request or this request sees the drain.
    pub(super) fn enter(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.is_draining() {
            self.leave();
            return false;
        }
        true
    }

    fn leave(&self) {
        self.touch();
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }

    /// Waits until nothing is in flight, at most `limit`; true when drained.
    pub(super) async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }

    fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        lock(&self.stats).last_request_at = Some(chrono::Utc::now().timestamp());
    }

    fn record_tokens(&self, tokens: TokenUsage) {
        let mut stats = lock(&self.stats);
        stats.tokens_prompt += tokens.prompt.unwrap_or(0);
        stats.tokens_completion += tokens.completion.unwrap_or(0);
        if tokens.per_second.is_some() {
            stats.tokens_per_second = tokens.per_second;
        }
    }
}

/// One request being answered by an instance: counted in flight from its creation until it is
/// dropped (when the response body ended or the client went away), which also marks the
/// instance as used.
pub struct InFlight {
    instance: Arc<Instance>,
    /// Wakes the idle reaper: a deadline may have moved.
    reaper: Arc<Notify>,
    /// The request's slot of the instance's `max_concurrent`, if it has a limit.
    slot: Option<OwnedSemaphorePermit>,
    /// How long the request waited for a slot.
    queued: Duration,
}

impl InFlight {
    /// Counts a request in, or `None` if the instance began draining.
    pub(super) fn enter(instance: &Arc<Instance>, reaper: &Arc<Notify>) -> Option<Self> {
        instance.usage.enter().then(|| Self {
            instance: Arc::clone(instance),
            reaper: Arc::clone(reaper),
            slot: None,
            queued: Duration::ZERO,
        })
    }

    /// Keeps `slot` (and how long it took to get) until the request ends.
    pub(super) fn with_slot(
        mut self,
        slot: Option<OwnedSemaphorePermit>,
        queued: Duration,
    ) -> Self {
        self.slot = slot;
        self.queued = queued;
        self
    }

    /// The instance answering.
    pub fn instance(&self) -> &str {
        &self.instance.name
    }

    /// How long the request waited for one of the instance's slots.
    pub fn queued(&self) -> Duration {
        self.queued
    }

    /// Counts this as an inference request in the instance's counters.
    pub fn count_request(&self) {
        self.instance.usage.record_request();
    }

    /// Counts the request, now ended, in the metrics and keeps it in the activity log.
    pub fn finished(&self, request: crate::telemetry::Finished) {
        self.instance.telemetry().finished(request);
    }

    /// Adds the tokens the answer reported to the instance's counters.
    pub fn record_tokens(&self, tokens: TokenUsage) {
        self.instance.usage.record_tokens(tokens);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The slot first: a queued request may take it at once.
        drop(self.slot.take());
        self.instance.usage.leave();
        if self.instance.usage.in_flight() == 0 {
            // It may be stopped to make room now.
            self.instance.room.notify_waiters();
        }
        if self.instance.idle_timeout() > 0 {
            self.reaper.notify_one();
        }
    }
}

//! Taking running slots back: LRU eviction when `max_running_instances` is reached, the idle
//! reaper that stops instances unused past their `idle_timeout`, and a client's unload. Each
//! lets the instance's requests finish first.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::catalogue::Catalogue;
use super::instance::{lock, Instance};
use super::lifecycle::Lifecycle;
use super::registry::Registry;
use super::InstanceError;

/// How long an instance being stopped for idleness or eviction waits for its requests to end.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

impl Registry {
    /// Whether some running instance other than `except` could be stopped to make room.
    pub(super) fn may_evict(&self, table: &Catalogue, except: Option<&Arc<Instance>>) -> bool {
        self.config.instances.enable_lru_eviction
            && !self.eviction_candidates(table, except).is_empty()
    }

    /// Running instances that may be evicted, least recently used first: nothing in flight, not
    /// starting or stopping. Unlike llamactl, an instance without an idle timeout is a candidate
    /// too: otherwise a running limit with on-demand start fails under the default settings.
    fn eviction_candidates(
        &self,
        table: &Catalogue,
        except: Option<&Arc<Instance>>,
    ) -> Vec<Arc<Instance>> {
        let mut candidates: Vec<Arc<Instance>> = table
            .instances()
            .filter(|other| except.is_none_or(|except| !Arc::ptr_eq(other, except)))
            .filter(|other| Lifecycle::of(other).is_evictable())
            .cloned()
            .collect();
        candidates.sort_by_key(|other| other.usage.last_used());
        candidates
    }

    /// The least recently used candidate whose operation lock is free, with that lock taken.
    /// Only `try_lock`: the table lock must never wait for an operation lock.
    pub(super) fn lock_lru_victim(
        &self,
        table: &Catalogue,
        except: Option<&Arc<Instance>>,
    ) -> Option<(Arc<Instance>, tokio::sync::OwnedMutexGuard<()>)> {
        if !self.config.instances.enable_lru_eviction {
            return None;
        }
        self.eviction_candidates(table, except)
            .into_iter()
            .find_map(|victim| {
                let op = Arc::clone(&victim.op).try_lock_owned().ok()?;
                Some((victim, op))
            })
    }

    /// Stops a victim of LRU eviction (its operation lock held), draining its requests first.
    pub(super) async fn evict(
        &self,
        (victim, _op): (Arc<Instance>, tokio::sync::OwnedMutexGuard<()>),
    ) {
        tracing::info!(
            "stopping instance '{}' to make room (least recently used)",
            victim.name
        );
        self.drain_and_stop(&victim).await;
    }

    /// Marks the instance draining, waits (bounded) for its requests, stops and saves it. The
    /// caller holds its operation lock.
    async fn drain_and_stop(&self, instance: &Arc<Instance>) {
        instance.usage.set_draining(true);
        if !instance.usage.drain(DRAIN_LIMIT).await {
            tracing::warn!(
                "instance '{}' still has {} requests in flight after {} s; stopping it anyway",
                instance.name,
                instance.usage.in_flight(),
                DRAIN_LIMIT.as_secs()
            );
        }
        if let Err(e) = self.stop_locked(instance).await {
            tracing::warn!("{e}");
        }
        if let Err(e) = instance.persist().await {
            tracing::warn!("{e}");
        }
        instance.usage.set_draining(false);
    }

    /// Starts the idle reaper: it sleeps until the next idle deadline, or until woken because a
    /// deadline moved, and never keeps the registry alive.
    pub(super) fn spawn_reaper(self: &Arc<Self>) {
        let registry = Arc::downgrade(self);
        let wake = Arc::clone(&self.reaper_wake);
        let task = tokio::spawn(async move {
            loop {
                let next = match registry.upgrade() {
                    Some(registry) => registry.reap_idle(),
                    None => return,
                };
                match next {
                    Some(when) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(when) => {}
                            _ = wake.notified() => {}
                        }
                    }
                    None => wake.notified().await,
                }
            }
        });
        *lock(&self.reaper) = Some(task);
    }

    /// Hands every instance idle past its deadline to an idle stop; returns the next deadline.
    fn reap_idle(self: &Arc<Self>) -> Option<Instant> {
        let unit = self.config.instances.idle_timeout_unit;
        let instances = lock(&self.table).all();
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for instance in instances {
            let minutes = instance.idle_timeout();
            let now_state = Lifecycle::of(&instance);
            if minutes == 0 || !now_state.is_idle() {
                continue;
            }
            let idle_for = unit.saturating_mul(u32::try_from(minutes).unwrap_or(u32::MAX));
            let deadline = Instant::from_std(instance.usage.last_used()) + idle_for;
            let deadline = if deadline > now {
                deadline
            } else if now_state.may_stop_for_idleness() {
                instance.idle_stop_pending.store(true, Ordering::SeqCst);
                let registry = Arc::clone(self);
                tokio::spawn(async move { registry.stop_idle(instance).await });
                continue;
            } else {
                // Starting or restarting: look again shortly.
                now + Duration::from_secs(1)
            };
            next = Some(next.map_or(deadline, |next| next.min(deadline)));
        }
        next
    }

    /// Stops an instance for a client that unloaded its model (Ollama's `keep_alive: 0`) the way
    /// the idle reaper does: its requests drain first, and it is not the owner's stop, so the
    /// definition keeps the state the owner gave it and an engine restart brings it back.
    pub async fn unload(&self, name: &str) -> Result<(), InstanceError> {
        let instance = self.lookup(name)?;
        let _op = Arc::clone(&instance.op).lock_owned().await;
        if instance.removed.load(Ordering::SeqCst) {
            return Err(InstanceError::NotFound(name.to_owned()));
        }
        if !instance.supervisor.state().state.is_active() {
            return Ok(());
        }
        tracing::info!(
            "stopping instance '{}': a client unloaded it",
            instance.name
        );
        instance.unloaded.store(true, Ordering::SeqCst);
        self.drain_and_stop(&instance).await;
        Ok(())
    }

    /// Stops an instance the reaper found idle, if it still is once its lock is held.
    async fn stop_idle(&self, instance: Arc<Instance>) {
        let op = Arc::clone(&instance.op).lock_owned().await;
        let unit = self.config.instances.idle_timeout_unit;
        let idle_for =
            unit.saturating_mul(u32::try_from(instance.idle_timeout()).unwrap_or(u32::MAX));
        // In flight is checked below, once the drain keeps new requests out.
        let still_idle = !instance.removed.load(Ordering::SeqCst)
            && instance.idle_timeout() > 0
            && instance.supervisor.state().state.is_active()
            && instance.usage.last_used().elapsed() >= idle_for;
        if still_idle {
            instance.usage.set_draining(true);
            // A request that counted itself in before the drain began makes it busy after all.
            if instance.usage.in_flight() == 0 {
                tracing::info!(
                    "stopping instance '{}': idle for {} s",
                    instance.name,
                    idle_for.as_secs()
                );
                self.drain_and_stop(&instance).await;
            }
            instance.usage.set_draining(false);
        }
        drop(op);
        instance.idle_stop_pending.store(false, Ordering::SeqCst);
        self.reaper_wake.notify_one();
    }
}

//! Routing requests to instances: finding the instance a `model` names, starting it on demand
//! (once, however many requests wait), counting requests in flight, and reclaiming instances —
//! the idle reaper and LRU eviction.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lifecycle::{ForRequest, Lifecycle};
use super::registry::{connect_host, lock, Instance, Registry, Table, Upstream};
use super::usage::InFlight;
use super::{InstanceError, InstanceOptions};
use crate::backends::{BackendType, OptionValue};
use crate::supervisor::{InstanceState, SupervisorError};

/// How long an instance being stopped for idleness or eviction waits for its requests to end.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Log lines an error about a backend that did not become ready quotes.
const ERROR_LOG_LINES: usize = 20;

/// An instance ready to answer one request, counted in flight while the lease (its `guard`)
/// lives.
pub struct Lease {
    pub upstream: Upstream,
    /// What to put in the body's `model` for this backend; `None` leaves it as the client sent it.
    pub backend_model: Option<String>,
    pub guard: InFlight,
}

/// One entry of `/v1/models`: an instance name or an alias.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub id: String,
    /// The instance that answers to `id`.
    pub instance: String,
    /// Unix seconds of the instance's creation.
    pub created: i64,
}

impl Registry {
    /// The instance `model` names: an instance name first, else an alias.
    fn resolve(&self, model: &str) -> Option<Arc<Instance>> {
        let table = lock(&self.table);
        if let Some(instance) = table.instances.get(model) {
            return Some(Arc::clone(instance));
        }
        table
            .instances
            .values()
            .find(|instance| instance.aliases().iter().any(|alias| alias == model))
            .cloned()
    }

    /// Every model name `/v1` answers to, instance names and aliases, sorted.
    pub fn models(&self) -> Vec<ModelEntry> {
        let instances: Vec<Arc<Instance>> = lock(&self.table).instances.values().cloned().collect();
        let mut models: Vec<ModelEntry> = instances
            .iter()
            .flat_map(|instance| {
                std::iter::once(instance.name.clone())
                    .chain(instance.aliases())
                    .map(|id| ModelEntry {
                        id,
                        instance: instance.name.clone(),
                        created: instance.created,
                    })
            })
            .collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        models
    }

    /// Gets the instance `model` names ready for one request: waits for a start or a stop under
    /// way, starts it when stopped and `on_demand_start` is on (one start however many requests
    /// ask), waits for readiness up to `on_demand_start_timeout`, and counts the request in.
    pub async fn acquire(&self, model: &str) -> Result<Lease, InstanceError> {
        let instance = self
            .resolve(model)
            .ok_or_else(|| InstanceError::NotFound(model.to_owned()))?;
        let timeout = self.config.instances.on_demand_start_timeout;
        let deadline = Instant::now() + timeout;
        // At most one start attempt (ours or one we waited for) per request.
        let mut attempted = false;
        loop {
            let now = Lifecycle::of(&instance);
            match now.for_request() {
                ForRequest::Gone => return Err(InstanceError::NotFound(model.to_owned())),
                ForRequest::Lease => {
                    if let Some(guard) = InFlight::enter(&instance, &self.reaper_wake) {
                        return Ok(self.lease(&instance, guard));
                    }
                }
                // The operation holds the instance's lock; once it is free, look again.
                ForRequest::WaitForOperation => drop(instance.op.lock().await),
                ForRequest::WaitReady => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match instance.supervisor.wait_ready(left).await {
                        Ok(()) => {}
                        Err(SupervisorError::ReadyTimeout { .. }) => {
                            return Err(self.not_ready(&instance, timeout_reason(timeout)).await)
                        }
                        Err(e @ SupervisorError::ExitedBeforeReady { .. }) => {
                            return Err(InstanceError::NotReady {
                                name: instance.name.clone(),
                                reason: e.to_string(),
                            })
                        }
                        Err(SupervisorError::ShutDown) => {
                            return Err(InstanceError::NotFound(model.to_owned()))
                        }
                        // Stopped meanwhile: look again.
                        Err(_) => {}
                    }
                }
                ForRequest::Failed => {
                    return Err(InstanceError::Failed {
                        name: instance.name.clone(),
                        reason: now
                            .process
                            .error
                            .unwrap_or_else(|| "the backend exited".to_owned()),
                    })
                }
                ForRequest::Start => {
                    if !instance.options().on_demand_start {
                        return Err(InstanceError::NotRunning(instance.name.clone()));
                    }
                    if attempted {
                        let reason = lock(&instance.last_start_error)
                            .clone()
                            .or(now.process.error)
                            .unwrap_or_else(|| "the backend stopped before it was ready".into());
                        return Err(self.not_ready(&instance, reason).await);
                    }
                    attempted = true;
                    self.start_on_demand(&instance, model).await?;
                }
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(&instance, timeout_reason(timeout)).await);
            }
        }
    }

    /// A lease on the instance `model` names when it can answer right now: running, ready (or
    /// unhealthy, as `acquire` allows), not draining. `None` whenever `acquire` would wait,
    /// start it or refuse; the caller then goes through `acquire`.
    pub fn lease_ready(&self, model: &str) -> Option<Lease> {
        let instance = self.resolve(model)?;
        if Lifecycle::of(&instance).for_request() != ForRequest::Lease {
            return None;
        }
        let guard = InFlight::enter(&instance, &self.reaper_wake)?;
        Some(self.lease(&instance, guard))
    }

    /// Starts a stopped instance for a request, unless another request's attempt finished
    /// while this one waited for the lock: then that attempt's outcome is shared.
    async fn start_on_demand(
        &self,
        instance: &Arc<Instance>,
        model: &str,
    ) -> Result<(), InstanceError> {
        let attempts = instance.start_attempts.load(Ordering::SeqCst);
        let _op = Arc::clone(&instance.op).lock_owned().await;
        if instance.removed.load(Ordering::SeqCst) {
            return Err(InstanceError::NotFound(model.to_owned()));
        }
        if instance.start_attempts.load(Ordering::SeqCst) != attempts
            || instance.supervisor.state().state != InstanceState::Stopped
        {
            return Ok(());
        }
        self.refuse_when_shutting_down()?;
        tracing::info!("starting instance '{}' on demand", instance.name);
        let started = self.start_locked(instance).await;
        *lock(&instance.last_start_error) = started.as_ref().err().map(ToString::to_string);
        instance.start_attempts.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = instance.persist().await {
            tracing::warn!("{e}");
        }
        started
    }

    /// `NotReady` with the reason and the backend's latest output.
    async fn not_ready(&self, instance: &Instance, reason: String) -> InstanceError {
        let output = self
            .logs(&instance.name, Some(ERROR_LOG_LINES))
            .await
            .unwrap_or_default();
        let reason = if output.trim().is_empty() || reason.contains("Last output") {
            reason
        } else {
            format!("{reason}\nLast output:\n{}", output.trim_end())
        };
        InstanceError::NotReady {
            name: instance.name.clone(),
            reason,
        }
    }

    fn lease(&self, instance: &Arc<Instance>, guard: InFlight) -> Lease {
        instance.read_options(|options| Self::lease_with(instance, options, guard))
    }

    fn lease_with(instance: &Instance, options: &InstanceOptions, guard: InFlight) -> Lease {
        let port = options.backend.port().unwrap_or_default();
        let string = |name: &str| match options.backend.get(name) {
            Some(OptionValue::String(value)) => value.split_whitespace().next().map(str::to_owned),
            _ => None,
        };
        let backend_model = match options.backend_type() {
            // llama-server answers whatever `model` says; keeping the client's name is kinder.
            BackendType::LlamaCpp => None,
            BackendType::Vllm => string("served_model_name").or_else(|| string("model")),
            BackendType::MlxLm => string("model"),
        };
        Lease {
            upstream: Upstream {
                name: instance.name.clone(),
                authority: format!("{}:{port}", connect_host(options.backend.host())),
                credential: instance.credential(),
            },
            backend_model,
            guard,
        }
    }

    /// `upstream` for a request through the instance proxy that counts as use (in flight and
    /// last use) without starting anything.
    pub fn lease_running(&self, name: &str) -> Result<(Upstream, InFlight), InstanceError> {
        let instance = self.lookup(name)?;
        let upstream = self.upstream(name)?;
        let guard = InFlight::enter(&instance, &self.reaper_wake)
            .ok_or_else(|| InstanceError::NotRunning(name.to_owned()))?;
        Ok((upstream, guard))
    }

    /// Whether some running instance other than `except` could be stopped to make room.
    pub(super) fn may_evict(&self, table: &Table, except: Option<&Arc<Instance>>) -> bool {
        self.config.instances.enable_lru_eviction
            && !self.eviction_candidates(table, except).is_empty()
    }

    /// Running instances that may be evicted, least recently used first: nothing in flight, not
    /// starting or stopping. Unlike llamactl, an instance without an idle timeout is a candidate
    /// too: otherwise a running limit with on-demand start fails under the default settings.
    fn eviction_candidates(
        &self,
        table: &Table,
        except: Option<&Arc<Instance>>,
    ) -> Vec<Arc<Instance>> {
        let mut candidates: Vec<Arc<Instance>> = table
            .instances
            .values()
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
        table: &Table,
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
        let instances: Vec<Arc<Instance>> = lock(&self.table).instances.values().cloned().collect();
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

fn timeout_reason(timeout: Duration) -> String {
    format!(
        "the backend did not become ready within {} s (instances.on_demand_start_timeout)",
        timeout.as_secs()
    )
}

//! Routing requests to instances: finding the instance a `model` names, starting it on demand
//! (once, however many requests wait), and counting requests in flight.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::events::Decision;
use super::instance::{lock, Instance};
use super::launch::backend_authority;
use super::lifecycle::{ForRequest, Lifecycle};
use super::registry::{Registry, Upstream};
use super::usage::InFlight;
use super::ModelEntry;
use super::{InstanceError, InstanceOptions};
use crate::supervisor::{InstanceState, SupervisorError};
use tokio::sync::OwnedSemaphorePermit;

/// Log lines an error about a backend that did not become ready quotes.
const ERROR_LOG_LINES: usize = 20;

/// An instance ready to answer one request, counted in flight while the lease (its `guard`)
/// lives.
pub struct Lease {
    pub upstream: Upstream,
    /// What to put in the body's `model` for this backend; `None` leaves it as the client sent it.
    pub backend_model: Option<String>,
    pub guard: InFlight,
    /// The instance keeps bodies in the activity log (`capture_bodies`).
    pub capture_bodies: bool,
}

impl Registry {
    /// The instance `model` names: an instance name first, else an alias, else
    /// `<instance>/<model>` for an instance in llama.cpp's router mode, with the model its
    /// llama-server is to answer with.
    fn resolve(&self, model: &str) -> Option<(Arc<Instance>, Option<String>)> {
        let table = lock(&self.table);
        if let Some(instance) = table.resolve(model) {
            return Some((instance, None));
        }
        let (name, served) = model.split_once('/')?;
        let instance = table.get(name)?;
        (!served.is_empty() && instance.read_options(|o| o.backend.serves_many_models()))
            .then(|| (Arc::clone(instance), Some(served.to_owned())))
    }

    /// The name of the instance `model` names (itself, or the instance an alias points to).
    pub fn instance_of(&self, model: &str) -> Option<String> {
        self.resolve(model)
            .map(|(instance, _)| instance.name.clone())
    }

    /// Whether the instance is in llama.cpp's router mode (it serves many models).
    pub fn serves_many_models(&self, name: &str) -> Result<bool, InstanceError> {
        let instance = self.lookup(name)?;
        Ok(instance.read_options(|options| options.backend.serves_many_models()))
    }

    /// The router-mode instances that can answer now, with their creation time.
    pub fn ready_routers(&self) -> Vec<(String, i64)> {
        lock(&self.table)
            .all()
            .into_iter()
            .filter(|instance| instance.read_options(|o| o.backend.serves_many_models()))
            .filter(|instance| Lifecycle::of(instance).for_request() == ForRequest::Lease)
            .map(|instance| (instance.name.clone(), instance.created))
            .collect()
    }

    /// Every model name `/v1` answers to, instance names and aliases, sorted.
    pub fn models(&self) -> Vec<ModelEntry> {
        lock(&self.table).models()
    }

    /// Gets the instance `model` names ready for one request: waits for a start or a stop under
    /// way, starts it when stopped and `on_demand_start` is on (one start however many requests
    /// ask), waits for readiness up to `on_demand_start_timeout`, and counts the request in.
    pub async fn acquire(&self, model: &str) -> Result<Lease, InstanceError> {
        let (instance, served) = self
            .resolve(model)
            .ok_or_else(|| InstanceError::NotFound(model.to_owned()))?;
        let timeout = self.config.load().instances.on_demand_start_timeout;
        let deadline = Instant::now() + timeout;
        // At most one start attempt (ours or one we waited for) per request.
        let mut attempted = false;
        loop {
            let now = Lifecycle::of(&instance);
            match now.for_request() {
                ForRequest::Gone => return Err(InstanceError::NotFound(model.to_owned())),
                ForRequest::Lease => {
                    let (slot, queued) = self.take_slot(&instance, deadline).await?;
                    if let Some(guard) = InFlight::enter(&instance, &self.reaper_wake) {
                        let guard = guard.with_slot(slot, queued);
                        return Ok(self.lease(&instance, guard, served));
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
                    self.start_on_demand(&instance, model, deadline).await?;
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
        let (instance, served) = self.resolve(model)?;
        if Lifecycle::of(&instance).for_request() != ForRequest::Lease {
            return None;
        }
        let slot = match instance.slots() {
            Some(slots) => Some(slots.try_acquire_owned().ok()?),
            None => None,
        };
        let guard = InFlight::enter(&instance, &self.reaper_wake)?;
        Some(self.lease(&instance, guard.with_slot(slot, Duration::ZERO), served))
    }

    /// Whether a request for `model` would wait for a start (or a stop, or readiness) before it
    /// could be answered: known, and neither answering now nor refused at once.
    pub fn must_wait(&self, model: &str) -> bool {
        let Some((instance, _)) = self.resolve(model) else {
            return false;
        };
        match Lifecycle::of(&instance).for_request() {
            ForRequest::WaitForOperation | ForRequest::WaitReady => true,
            ForRequest::Start => instance.options().on_demand_start,
            ForRequest::Gone | ForRequest::Lease | ForRequest::Failed => false,
        }
    }

    /// Starts a stopped instance for a request, unless another request's attempt finished
    /// while this one waited for the lock: then that attempt's outcome is shared.
    async fn start_on_demand(
        &self,
        instance: &Arc<Instance>,
        model: &str,
        deadline: Instant,
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
        let started = self.start_locked_waiting(instance, Some(deadline)).await;
        *lock(&instance.last_start_error) = started.as_ref().err().map(ToString::to_string);
        instance.start_attempts.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = instance.persist().await {
            tracing::warn!("{e}");
        }
        started
    }

    /// One of the instance's request slots, waiting in its queue (bounded by `max_queue` and by
    /// `deadline`) when all are taken; with the time waited. No slot when it has no limit.
    async fn take_slot(
        &self,
        instance: &Arc<Instance>,
        deadline: Instant,
    ) -> Result<(Option<OwnedSemaphorePermit>, Duration), InstanceError> {
        let Some(slots) = instance.slots() else {
            return Ok((None, Duration::ZERO));
        };
        if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
            return Ok((Some(slot), Duration::ZERO));
        }
        let limit = instance.max_queue(self.config.load().scheduler.max_queue);
        let Some(_queued) = Queued::join(instance, limit) else {
            let error = InstanceError::QueueFull {
                name: instance.name.clone(),
                limit,
            };
            self.feed.decision(Decision::new(
                "queue_full",
                &instance.name,
                error.to_string(),
            ));
            tracing::warn!("{error}");
            return Err(error);
        };
        let waited = Instant::now();
        match tokio::time::timeout_at(deadline, slots.acquire_owned()).await {
            Ok(Ok(slot)) => Ok((Some(slot), waited.elapsed())),
            // The semaphore is never closed; were it, the request goes without a slot.
            Ok(Err(_)) => Ok((None, waited.elapsed())),
            Err(_) => Err(InstanceError::NotReady {
                name: instance.name.clone(),
                reason: format!(
                    "no request slot became free within {} s (instances.on_demand_start_timeout); the instance answers {} at once",
                    self.config.load().instances.on_demand_start_timeout.as_secs(),
                    instance.read_options(InstanceOptions::concurrency).unwrap_or(0)
                ),
            }),
        }
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

    /// `served`: the model a router-mode llama-server is to answer with.
    fn lease(&self, instance: &Arc<Instance>, guard: InFlight, served: Option<String>) -> Lease {
        instance.read_options(|options| Self::lease_with(instance, options, guard, served))
    }

    fn lease_with(
        instance: &Instance,
        options: &InstanceOptions,
        guard: InFlight,
        served: Option<String>,
    ) -> Lease {
        let backend_model = served.or_else(|| options.backend.expected_model_name());
        Lease {
            upstream: Upstream {
                name: instance.name.clone(),
                authority: backend_authority(options),
                credential: instance.credential(),
            },
            backend_model,
            guard,
            capture_bodies: options.capture_bodies,
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
}

/// A request counted in an instance's queue while it waits for a slot.
struct Queued<'a>(&'a Instance);

impl<'a> Queued<'a> {
    /// Counts one in, or `None` when `limit` already wait.
    fn join(instance: &'a Instance, limit: u32) -> Option<Self> {
        let before = instance.queued.fetch_add(1, Ordering::SeqCst);
        if before >= u64::from(limit) {
            instance.queued.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self(instance))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
        self.0.room.notify_waiters();
    }
}

fn timeout_reason(timeout: Duration) -> String {
    format!(
        "the backend did not become ready within {} s (instances.on_demand_start_timeout)",
        timeout.as_secs()
    )
}

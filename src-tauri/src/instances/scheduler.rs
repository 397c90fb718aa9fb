//! Making room: a start plans with [`super::placement`] against what runs (running limits,
//! groups, memory), stops the idle instances the plan names, and, for a request that can wait,
//! waits in order for busy ones to finish. Also the idle reaper, which stops instances unused
//! past their `idle_timeout`, and a client's unload. Every stop lets the instance's requests
//! finish first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::catalogue::Catalogue;
use super::events::Decision;
use super::footprint;
use super::instance::{lock, Instance};
use super::lifecycle::Lifecycle;
use super::placement::{self, Footprint, Limit, Limits, Memory, Occupant, Plan, Refusal, Wanted};
use super::registry::Registry;
use super::InstanceError;
use crate::supervisor::InstanceState;
use crate::telemetry::Eviction;

/// How long an instance being stopped for idleness or eviction waits for its requests to end.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// A waiting start looks again at least this often, besides being woken: a residency ends, and
/// the memory other programs use changes, without anyone telling.
const RECHECK: Duration = Duration::from_millis(250);

const MIB: u64 = 1 << 20;

/// Starts waiting for room, first come first served: only the first may plan, so a start that
/// needs much room is not overtaken for ever by ones that need little.
#[derive(Default)]
pub(super) struct RoomQueue {
    next: AtomicU64,
    waiting: Mutex<VecDeque<u64>>,
}

/// A place in the [`RoomQueue`], given up when dropped.
struct Ticket<'a> {
    queue: &'a RoomQueue,
    room: &'a tokio::sync::Notify,
    number: u64,
}

impl RoomQueue {
    fn join<'a>(&'a self, room: &'a tokio::sync::Notify) -> Ticket<'a> {
        let number = self.next.fetch_add(1, Ordering::SeqCst);
        lock(&self.waiting).push_back(number);
        Ticket {
            queue: self,
            room,
            number,
        }
    }
}

impl Ticket<'_> {
    fn is_first(&self) -> bool {
        lock(&self.queue.waiting).front() == Some(&self.number)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        lock(&self.queue.waiting).retain(|number| *number != self.number);
        // The next in line may plan now.
        self.room.notify_waiters();
    }
}

/// What one round of planning decided, with the locks it took.
enum Step {
    Go,
    Evict(Vec<(Arc<Instance>, tokio::sync::OwnedMutexGuard<()>)>),
    Wait(Refusal),
}

fn busy(message: &str) -> Refusal {
    Refusal {
        limit: Limit::Busy,
        message: message.to_owned(),
    }
}

impl Registry {
    /// Makes room for a start of `instance` and reserves its running slot (`starting`), or says
    /// why it cannot start. With a `deadline` it waits, in order with other waiting starts, for
    /// busy instances to become stoppable; without one it answers at once. The caller holds
    /// the instance's `op` lock.
    pub(super) async fn make_room(
        &self,
        instance: &Arc<Instance>,
        deadline: Option<Instant>,
    ) -> Result<(), InstanceError> {
        let expected = self
            .expected_footprint(instance, self.free_memory().await)
            .await;
        let ticket = deadline.map(|_| self.room_queue.join(&self.room));
        let mut announced_wait = false;
        loop {
            // Enabled before planning, so that a change right after it still wakes this start.
            let woken = self.room.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let memory = self.free_memory().await;
            let measured = self.measure_running();
            let step = {
                let table = lock(&self.table);
                if ticket.as_ref().is_some_and(|t| !t.is_first()) {
                    Step::Wait(busy("other starts waiting for room came first"))
                } else {
                    self.plan_step(&table, instance, expected, memory, &measured, deadline)?
                }
            };
            match step {
                Step::Go => return Ok(()),
                Step::Evict(victims) => {
                    futures_util::future::join_all(
                        victims
                            .into_iter()
                            .map(|victim| self.evict(victim, &instance.name)),
                    )
                    .await;
                }
                Step::Wait(why) => {
                    let Some(deadline) = deadline else {
                        return Err(self.refused(instance, why));
                    };
                    if Instant::now() >= deadline {
                        return Err(self.refused(
                            instance,
                            Refusal {
                                message: format!(
                                    "{} (waited {} s, instances.on_demand_start_timeout)",
                                    why.message,
                                    self.config
                                        .load()
                                        .instances
                                        .on_demand_start_timeout
                                        .as_secs()
                                ),
                                ..why
                            },
                        ));
                    }
                    if !announced_wait && why.limit != Limit::Busy {
                        announced_wait = true;
                        tracing::info!(
                            "instance '{}' waits for room: {}",
                            instance.name,
                            why.message
                        );
                        self.feed
                            .decision(Decision::new("waiting", &instance.name, why.message));
                    }
                    let recheck = (Instant::now() + RECHECK).min(deadline);
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep_until(recheck) => {}
                    }
                }
            }
        }
    }

    /// One round: the plan for `instance` now, and the slot reserved if it may go. Under the
    /// table lock; victims' `op` locks are only tried, never waited for.
    fn plan_step(
        &self,
        table: &Catalogue,
        instance: &Arc<Instance>,
        expected: Option<Footprint>,
        memory: Option<(Memory, bool)>,
        measured: &HashMap<String, Footprint>,
        deadline: Option<Instant>,
    ) -> Result<Step, InstanceError> {
        let settings = &self.config.load().scheduler;
        let residency = Duration::from_secs(settings.min_residency_seconds);
        let options = instance.options();
        let mut occupants = Vec::new();
        // Memory of starts not loaded yet, which the system's free memory does not show.
        let mut loading = Footprint::default();
        let mut all = Footprint::default();
        let mut resident_until: Option<std::time::Instant> = None;
        for other in table.instances() {
            if Arc::ptr_eq(other, instance) {
                continue;
            }
            let now = Lifecycle::of(other);
            if !now.holds_a_running_slot() {
                continue;
            }
            let record = *lock(&other.footprint);
            let footprint = measured
                .get(&other.name)
                .copied()
                .or(record.measured)
                .or(record.estimated)
                .unwrap_or_default();
            if now.launching
                || matches!(
                    now.process.state,
                    InstanceState::Starting | InstanceState::Restarting
                )
            {
                loading = loading.plus(record.estimated.unwrap_or(footprint));
            }
            all = all.plus(footprint);
            let started = *lock(&other.started);
            let resident = started.is_some_and(|at| at.elapsed() < residency);
            if resident {
                let until = started.map(|at| at + residency);
                resident_until = resident_until.max(until);
            }
            let (group, persistent) = other.read_options(|o| (o.group.clone(), o.persistent));
            occupants.push(Occupant {
                name: other.name.clone(),
                group,
                footprint,
                persistent,
                idle: now.is_evictable() && other.queued.load(Ordering::SeqCst) == 0,
                resident,
                last_used: other.usage.last_used(),
            });
        }
        let memory = memory.map(|(reported, budgeted)| {
            // A budget is the instances' alone: everything they hold counts against it. The
            // system's free memory already shows what loaded instances hold, not what loads.
            let held = if budgeted { all } else { loading };
            let headroom = settings.memory_headroom_mib.saturating_mul(MIB);
            Memory {
                ram_free: reported
                    .ram_free
                    .saturating_sub(if reported.unified {
                        held.total()
                    } else {
                        held.ram_bytes
                    })
                    .saturating_sub(headroom),
                gpu_free: reported
                    .gpu_free
                    .map(|free| free.saturating_sub(held.gpu_bytes).saturating_sub(headroom)),
                unified: reported.unified,
            }
        });
        let group = options.group.as_deref();
        let limits = Limits {
            max_running: self.config.load().instances.max_running_instances,
            group_limit: group
                .and_then(|g| self.config.load().instances.group_limits.get(g).copied()),
            exclusive: group.is_some_and(|g| {
                self.config
                    .load()
                    .instances
                    .exclusive_groups
                    .iter()
                    .any(|e| e == g)
            }),
            memory,
            eviction: self.config.load().instances.enable_lru_eviction,
        };
        let wanted = Wanted {
            name: &instance.name,
            group,
            footprint: expected,
            // A start that cannot wait, or whose deadline comes before the residencies end,
            // may stop a resident instance rather than fail.
            may_displace_resident: match (deadline, resident_until) {
                (None, _) => true,
                (Some(deadline), Some(until)) => deadline.into_std() <= until,
                (Some(_), None) => false,
            },
        };
        Ok(match placement::plan(&wanted, &occupants, &limits) {
            Plan::Go => {
                instance.starting.store(true, Ordering::SeqCst);
                Step::Go
            }
            Plan::Evict(names) => {
                let mut victims = Vec::with_capacity(names.len());
                for name in &names {
                    // Gone, or taken by another operation meanwhile: plan again once it is done.
                    let held = || {
                        Step::Wait(busy(&format!(
                            "instance '{name}', which would make room, is being changed by another operation"
                        )))
                    };
                    let Some(victim) = table.instances().find(|o| &o.name == name) else {
                        return Ok(held());
                    };
                    let Ok(op) = Arc::clone(&victim.op).try_lock_owned() else {
                        return Ok(held());
                    };
                    victims.push((Arc::clone(victim), op));
                }
                Step::Evict(victims)
            }
            Plan::Wait(why) => Step::Wait(why),
            Plan::Refuse(why) => return Err(self.refused(instance, why)),
        })
    }

    /// The error for a start that cannot go ahead, announced in the feed and the log.
    fn refused(&self, instance: &Instance, why: Refusal) -> InstanceError {
        tracing::warn!("instance '{}' cannot start: {}", instance.name, why.message);
        self.feed.decision(Decision::new(
            "refused",
            &instance.name,
            why.message.clone(),
        ));
        match why.limit {
            Limit::Count(max) => InstanceError::MaxRunning {
                max,
                reason: why.message,
            },
            Limit::Memory => InstanceError::InsufficientMemory {
                name: instance.name.clone(),
                reason: why.message,
            },
            Limit::Group | Limit::Busy => InstanceError::NoRoom {
                name: instance.name.clone(),
                reason: why.message,
            },
        }
    }

    /// What a start of `instance` is expected to take: what its last run was seen taking, else
    /// the estimate from its model and options (which is also remembered for the view).
    async fn expected_footprint(
        &self,
        instance: &Arc<Instance>,
        memory: Option<(Memory, bool)>,
    ) -> Option<Footprint> {
        // `None`: placement ignores memory.
        let (memory, _) = memory?;
        let backend = instance.read_options(|o| o.backend.clone());
        let has_gpu = memory.gpu_free.is_some() && !memory.unified;
        let estimated = tokio::task::spawn_blocking(move || footprint::estimate(&backend, has_gpu))
            .await
            .ok()
            .flatten();
        let mut record = lock(&instance.footprint);
        record.estimated = estimated;
        record.measured.or(estimated)
    }

    /// Free memory per pool as the system (or the configured budget) reports it, and whether it
    /// is a budget; `None` when placement ignores memory.
    async fn free_memory(&self) -> Option<(Memory, bool)> {
        let settings = &self.config.load().scheduler;
        if !settings.memory_aware {
            return None;
        }
        let budget = |mib: Option<u64>| mib.map(|mib| mib.saturating_mul(MIB));
        let (ram_budget, gpu_budget) = (
            budget(settings.ram_budget_mib),
            budget(settings.gpu_budget_mib),
        );
        if let Some(ram_free) = ram_budget {
            return Some((
                Memory {
                    ram_free,
                    gpu_free: gpu_budget,
                    unified: false,
                },
                true,
            ));
        }
        let (available, unified) = self.devices.placement_memory().await;
        Some((
            Memory {
                ram_free: available.ram_bytes,
                gpu_free: gpu_budget.or(available.gpu_pool().map(|(_, free)| free)),
                unified,
            },
            false,
        ))
    }

    /// The footprint of each loaded instance as measured now (its tree's RSS, its VRAM), kept
    /// as its largest so far so that its next start expects as much.
    fn measure_running(&self) -> HashMap<String, Footprint> {
        if !self.config.load().scheduler.memory_aware {
            return HashMap::new();
        }
        let loaded: Vec<(Arc<Instance>, u32)> = lock(&self.table)
            .instances()
            .filter_map(|instance| {
                let state = instance.supervisor.state();
                let pid = state.pid?;
                state
                    .state
                    .can_answer()
                    .then(|| (Arc::clone(instance), pid))
            })
            .collect();
        let pids: Vec<u32> = loaded.iter().map(|(_, pid)| *pid).collect();
        let usage = self.resources.usage_now(&pids);
        let mut measured = HashMap::new();
        for (instance, pid) in loaded {
            let Some(used) = usage.get(&pid) else {
                continue;
            };
            let vram = used.vram_bytes.unwrap_or(0);
            let now = Footprint {
                // RSS counts the process's own memory; on unified memory the VRAM is in it.
                ram_bytes: used.rss_bytes,
                gpu_bytes: vram,
            };
            let mut record = lock(&instance.footprint);
            let largest = record.measured.map_or(now, |seen| Footprint {
                ram_bytes: seen.ram_bytes.max(now.ram_bytes),
                gpu_bytes: seen.gpu_bytes.max(now.gpu_bytes),
            });
            record.measured = Some(largest);
            measured.insert(instance.name.clone(), now);
        }
        measured
    }

    /// Stops a victim (its operation lock held) to make room for `for_instance`, draining its
    /// requests first.
    async fn evict(
        &self,
        (victim, _op): (Arc<Instance>, tokio::sync::OwnedMutexGuard<()>),
        for_instance: &str,
    ) {
        let reason = format!(
            "stopped to make room for '{for_instance}' (least recently used idle instance)"
        );
        tracing::info!("instance '{}' {reason}", victim.name);
        let mut decision = Decision::new("evicted", &victim.name, reason);
        decision.for_instance = Some(for_instance.to_owned());
        self.feed.decision(decision);
        self.feed
            .telemetry
            .metrics
            .evicted(&victim.name, Eviction::MakeRoom);
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
        let unit = self.config.load().instances.idle_timeout_unit;
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
        self.feed
            .telemetry
            .metrics
            .evicted(&instance.name, Eviction::Unload);
        self.drain_and_stop(&instance).await;
        Ok(())
    }

    /// Stops an instance the reaper found idle, if it still is once its lock is held.
    async fn stop_idle(&self, instance: Arc<Instance>) {
        let op = Arc::clone(&instance.op).lock_owned().await;
        let unit = self.config.load().instances.idle_timeout_unit;
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
                self.feed
                    .telemetry
                    .metrics
                    .evicted(&instance.name, Eviction::Idle);
                self.drain_and_stop(&instance).await;
            }
            instance.usage.set_draining(false);
        }
        drop(op);
        instance.idle_stop_pending.store(false, Ordering::SeqCst);
        self.reaper_wake.notify_one();
    }
}

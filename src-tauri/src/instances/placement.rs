//! Where a start may go, and what must stop first: the scheduler's one decision, as a pure
//! function of what runs and what the new instance needs, so every rule is tested without
//! processes or clocks.
//!
//! A start has to satisfy every limit at once: `max_running_instances`, its group's running
//! limit, an exclusive group (no other member runs beside it), and memory (its footprint fits the
//! free memory of each pool it uses). When it does not, running instances are picked to stop,
//! least recently used first, preferring ones past their minimum residency. What the plan may
//! pick depends on the moment: only an idle instance can be stopped now; a busy one (requests
//! in flight or queued, starting, stopping) may become idle, so a start that needs it waits; a
//! persistent one never stops for another, so a start that needs it is refused at once.

use std::time::Instant;

use serde::Serialize;
use utoipa::ToSchema;

use crate::devices::fit::gib;

/// Memory an instance takes or is expected to take, per pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Footprint {
    pub ram_bytes: u64,
    /// All GPUs together, as llama.cpp's default layer split spreads a model over them.
    pub gpu_bytes: u64,
}

impl Footprint {
    pub fn total(self) -> u64 {
        self.ram_bytes.saturating_add(self.gpu_bytes)
    }

    pub(super) fn plus(self, other: Footprint) -> Footprint {
        Footprint {
            ram_bytes: self.ram_bytes.saturating_add(other.ram_bytes),
            gpu_bytes: self.gpu_bytes.saturating_add(other.gpu_bytes),
        }
    }
}

/// Free memory a start may use, before anything is stopped: headroom and the footprints of
/// starts not yet loaded are already taken off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Memory {
    pub(super) ram_free: u64,
    /// `None` without a GPU whose free memory is known.
    pub(super) gpu_free: Option<u64>,
    /// GPU and CPU share one memory (Apple Silicon): `ram_free` is all there is, counted once.
    pub(super) unified: bool,
}

impl Memory {
    /// How much of `need` does not fit when `freed` has been stopped; zero everywhere when it
    /// fits.
    fn shortfall(&self, need: Footprint, freed: Footprint) -> Footprint {
        if self.unified {
            let free = self.ram_free.saturating_add(freed.total());
            return Footprint {
                ram_bytes: need.total().saturating_sub(free),
                gpu_bytes: 0,
            };
        }
        let gpu_free = self.gpu_free.unwrap_or(0).saturating_add(freed.gpu_bytes);
        Footprint {
            ram_bytes: need
                .ram_bytes
                .saturating_sub(self.ram_free.saturating_add(freed.ram_bytes)),
            gpu_bytes: need.gpu_bytes.saturating_sub(gpu_free),
        }
    }
}

/// A running instance, or one whose start holds a running slot.
#[derive(Debug, Clone)]
pub(super) struct Occupant {
    pub(super) name: String,
    pub(super) group: Option<String>,
    pub(super) footprint: Footprint,
    /// Never stopped to make room for another.
    pub(super) persistent: bool,
    /// Could be stopped right now: nothing in flight or queued, not starting or stopping.
    pub(super) idle: bool,
    /// Started less than the minimum residency ago.
    pub(super) resident: bool,
    pub(super) last_used: Instant,
}

/// The start being planned.
#[derive(Debug, Clone)]
pub(super) struct Wanted<'a> {
    pub(super) name: &'a str,
    pub(super) group: Option<&'a str>,
    /// `None` when nothing is known about it: memory does not limit it.
    pub(super) footprint: Option<Footprint>,
    /// A resident instance may be stopped for it (it cannot wait for the residency to end).
    pub(super) may_displace_resident: bool,
}

impl Wanted<'_> {
    /// `occupant` is in the wanted instance's group (which it has).
    fn shares_group(&self, occupant: &Occupant) -> bool {
        self.group.is_some() && occupant.group.as_deref() == self.group
    }
}

/// The limits in force.
#[derive(Debug, Clone, Default)]
pub(super) struct Limits {
    pub(super) max_running: Option<usize>,
    /// The running limit of the wanted instance's group.
    pub(super) group_limit: Option<usize>,
    /// The wanted instance's group runs one member at a time.
    pub(super) exclusive: bool,
    /// `None`: memory is not considered.
    pub(super) memory: Option<Memory>,
    /// Instances may be stopped to make room at all (`enable_lru_eviction`); an exclusive group
    /// stops its other members regardless, since that is what it asks for.
    pub(super) eviction: bool,
}

/// What the start does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// Everything fits: start.
    Go,
    /// Stop these (idle now) first, then plan again.
    Evict(Vec<String>),
    /// Room can only come from instances busy (or resident) now: wait, then plan again.
    Wait(Refusal),
    /// Nothing that may ever stop would make room.
    Refuse(Refusal),
}

/// Why a start cannot go ahead (now or ever): the limit in the way and the sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) limit: Limit,
    pub(super) message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    /// `max_running_instances`, with its value.
    Count(usize),
    /// The group's running limit, or its exclusivity.
    Group,
    /// Memory.
    Memory,
    /// Not a limit of the plan: what would make room is held by another operation (a victim
    /// being started or stopped by someone else), or other waiting starts come first.
    Busy,
}

/// Decides a start of `wanted` beside `occupants` (which do not include it).
pub(super) fn plan(wanted: &Wanted<'_>, occupants: &[Occupant], limits: &Limits) -> Plan {
    let same_group = |o: &Occupant| wanted.shares_group(o);
    // An exclusive group's other members all go, whatever else is decided.
    let forced: Vec<&Occupant> = if limits.exclusive {
        occupants.iter().filter(|o| same_group(o)).collect()
    } else {
        Vec::new()
    };
    if let Some(pinned) = forced.iter().find(|o| o.persistent) {
        return Plan::Refuse(Refusal {
            limit: Limit::Group,
            message: format!(
                "group '{}' is exclusive and its persistent instance '{}' runs: stop it first",
                wanted.group.unwrap_or_default(),
                pinned.name
            ),
        });
    }

    // Ever: every non-persistent instance, busy or not.
    let ever = pick(wanted, occupants, limits, &forced, |o| !o.persistent);
    if let Err(unmet) = &ever {
        return Plan::Refuse(refusal(wanted, occupants, limits, unmet));
    }
    // Now: only idle ones, and resident ones only if the start cannot wait for them.
    let now = pick(wanted, occupants, limits, &forced, |o| {
        !o.persistent && o.idle && (!o.resident || wanted.may_displace_resident)
    });
    match now {
        Ok(victims) if forced.iter().all(|o| o.idle) => {
            if victims.is_empty() {
                Plan::Go
            } else {
                Plan::Evict(victims.into_iter().map(|o| o.name.clone()).collect())
            }
        }
        Ok(_) => Plan::Wait(Refusal {
            limit: Limit::Group,
            message: format!(
                "group '{}' is exclusive and its other instances are busy",
                wanted.group.unwrap_or_default()
            ),
        }),
        Err(unmet) => Plan::Wait(Refusal {
            limit: unmet.limit(),
            message: format!(
                "{}, and the instances that could make room are busy",
                unmet.describe()
            ),
        }),
    }
}

/// A limit not met, with what it takes.
#[derive(Debug, Clone)]
enum Unmet {
    Count(usize),
    Group(usize),
    Memory(Footprint),
}

impl Unmet {
    fn limit(&self) -> Limit {
        match self {
            Unmet::Count(max) => Limit::Count(*max),
            Unmet::Group(_) => Limit::Group,
            Unmet::Memory(_) => Limit::Memory,
        }
    }

    fn describe(&self) -> String {
        match self {
            Unmet::Count(max) => {
                format!("the running limit (instances.max_running_instances = {max}) is reached")
            }
            Unmet::Group(max) => format!("the group's running limit ({max}) is reached"),
            Unmet::Memory(short) => format!("{} more memory is needed", gib(short.total())),
        }
    }
}

/// Which occupants stopping would help meet a limit.
type Helps<'a> = Box<dyn Fn(&Occupant) -> bool + 'a>;

/// The victims (forced ones first) that make every limit hold, choosing among the occupants
/// `allowed` accepts, least recently used first with resident ones last; or the first limit
/// that cannot be met.
fn pick<'a>(
    wanted: &Wanted<'_>,
    occupants: &'a [Occupant],
    limits: &Limits,
    forced: &[&'a Occupant],
    allowed: impl Fn(&Occupant) -> bool,
) -> Result<Vec<&'a Occupant>, Unmet> {
    let same_group = |o: &Occupant| wanted.shares_group(o);
    let mut candidates: Vec<&Occupant> = occupants
        .iter()
        .filter(|o| limits.eviction && allowed(o))
        .filter(|o| !forced.iter().any(|f| f.name == o.name))
        .collect();
    candidates.sort_by_key(|o| (o.resident, o.last_used));
    let mut victims: Vec<&Occupant> = forced.to_vec();
    loop {
        let freed = victims
            .iter()
            .fold(Footprint::default(), |sum, o| sum.plus(o.footprint));
        let left = occupants.len() - victims.len();
        let group_left = occupants.iter().filter(|o| same_group(o)).count()
            - victims.iter().filter(|o| same_group(o)).count();
        let shortfall = match (limits.memory, wanted.footprint) {
            (Some(memory), Some(need)) => memory.shortfall(need, freed),
            _ => Footprint::default(),
        };
        let unified = limits.memory.is_some_and(|m| m.unified);
        // Each unmet limit, with the candidates that help it.
        let unmet: Option<(Unmet, Helps<'_>)> = match (limits.group_limit, limits.max_running) {
            (Some(max), _) if wanted.group.is_some() && group_left >= max => Some((
                Unmet::Group(max),
                Box::new(move |o: &Occupant| wanted.shares_group(o)),
            )),
            _ if shortfall != Footprint::default() => Some((
                Unmet::Memory(shortfall),
                Box::new(move |o: &Occupant| {
                    (shortfall.ram_bytes > 0
                        && (o.footprint.ram_bytes > 0 || unified && o.footprint.gpu_bytes > 0))
                        || (shortfall.gpu_bytes > 0 && o.footprint.gpu_bytes > 0)
                }),
            )),
            (_, Some(max)) if left >= max => {
                Some((Unmet::Count(max), Box::new(|_: &Occupant| true)))
            }
            _ => None,
        };
        let Some((unmet, helps)) = unmet else {
            return Ok(victims);
        };
        let next = candidates.iter().position(|o| helps(o)).ok_or(unmet)?;
        victims.push(candidates.remove(next));
    }
}

/// Why nothing can make room, with the numbers.
fn refusal(wanted: &Wanted<'_>, occupants: &[Occupant], limits: &Limits, unmet: &Unmet) -> Refusal {
    let stoppable: Vec<&Occupant> = occupants
        .iter()
        .filter(|o| limits.eviction && !o.persistent)
        .collect();
    let pinned = occupants.iter().filter(|o| o.persistent).count();
    let persistent_note = if pinned > 0 {
        format!(" ({pinned} running instance(s) are persistent)")
    } else {
        String::new()
    };
    match unmet {
        Unmet::Memory(_) => {
            let (Some(memory), Some(need)) = (limits.memory, wanted.footprint) else {
                return Refusal {
                    limit: Limit::Memory,
                    message: unmet.describe(),
                };
            };
            let freed = stoppable
                .iter()
                .fold(Footprint::default(), |sum, o| sum.plus(o.footprint));
            let after = |free: u64, freed: u64| gib(free.saturating_add(freed));
            let stopping = match stoppable.len() {
                0 => "with nothing else to stop".to_owned(),
                1 => "after stopping 1 other instance".to_owned(),
                n => format!("after stopping {n} other instances"),
            };
            let short = memory.shortfall(need, freed);
            let message = if memory.unified {
                format!(
                    "'{}' needs {} of unified memory, {} free {stopping}{persistent_note}",
                    wanted.name,
                    gib(need.total()),
                    after(memory.ram_free, freed.total())
                )
            } else if short.gpu_bytes > 0 {
                format!(
                    "'{}' needs {} on the GPU, {} free {stopping}{persistent_note}: lower gpu_layers or ctx_size",
                    wanted.name,
                    gib(need.gpu_bytes),
                    after(memory.gpu_free.unwrap_or(0), freed.gpu_bytes)
                )
            } else {
                format!(
                    "'{}' needs {} of RAM, {} free {stopping}{persistent_note}: lower ctx_size or use a smaller quantisation",
                    wanted.name,
                    gib(need.ram_bytes),
                    after(memory.ram_free, freed.ram_bytes)
                )
            };
            Refusal {
                limit: Limit::Memory,
                message,
            }
        }
        Unmet::Count(max) => Refusal {
            limit: Limit::Count(*max),
            message: if limits.eviction {
                format!("the maximum number of running instances ({max}) is reached and none of them may be stopped{persistent_note}: raise instances.max_running_instances")
            } else {
                format!("the maximum number of running instances ({max}) is reached: stop an instance first or raise instances.max_running_instances")
            },
        },
        Unmet::Group(max) => Refusal {
            limit: Limit::Group,
            message: format!(
                "group '{}' already runs {max} instance(s), its limit, and none of them may be stopped{persistent_note}: raise instances.group_limits",
                wanted.group.unwrap_or_default()
            ),
        },
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;

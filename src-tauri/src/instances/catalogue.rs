//! The catalogue: which instances exist, the names and aliases a request's `model` may use for
//! them, and which port each one owns. Lookups only: the registry holds it behind a short lock
//! and never across an await.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::instance::Instance;
use super::{ports, InstanceError};

/// One entry of `/v1/models`: an instance name or an alias.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub id: String,
    /// The instance that answers to `id`.
    pub instance: String,
    /// Unix seconds of the instance's creation.
    pub created: i64,
}

#[derive(Default)]
pub(super) struct Catalogue {
    /// Sorted, so listings come out by name.
    instances: BTreeMap<String, Arc<Instance>>,
    /// Port -> instance owning it, whether or not the instance runs.
    ports: BTreeMap<u16, String>,
}

impl Catalogue {
    pub(super) fn get(&self, name: &str) -> Option<&Arc<Instance>> {
        self.instances.get(name)
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.instances.contains_key(name)
    }

    pub(super) fn len(&self) -> usize {
        self.instances.len()
    }

    /// Every instance, by name.
    pub(super) fn instances(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.instances.values()
    }

    /// Every instance, by name, to use once the lock is released.
    pub(super) fn all(&self) -> Vec<Arc<Instance>> {
        self.instances.values().cloned().collect()
    }

    /// The instance `model` names: an instance name first, else an alias.
    pub(super) fn resolve(&self, model: &str) -> Option<Arc<Instance>> {
        if let Some(instance) = self.instances.get(model) {
            return Some(Arc::clone(instance));
        }
        self.instances
            .values()
            .find(|instance| instance.aliases().iter().any(|alias| alias == model))
            .cloned()
    }

    /// Every model name `/v1` answers to, instance names and aliases, sorted.
    pub(super) fn models(&self) -> Vec<ModelEntry> {
        let mut models: Vec<ModelEntry> = self
            .instances
            .values()
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

    /// Adds `instance`, owning `port`.
    pub(super) fn insert(&mut self, instance: Arc<Instance>, port: u16) {
        self.ports.insert(port, instance.name.clone());
        self.instances.insert(instance.name.clone(), instance);
    }

    /// Takes `instance` out, with every port it owns; another instance that meanwhile took the
    /// same name stays.
    pub(super) fn remove(&mut self, instance: &Arc<Instance>) {
        if self
            .instances
            .get(&instance.name)
            .is_some_and(|current| Arc::ptr_eq(current, instance))
        {
            self.instances.remove(&instance.name);
        }
        self.ports.retain(|_, owner| *owner != instance.name);
    }

    pub(super) fn port_owner(&self, port: u16) -> Option<&str> {
        self.ports.get(&port).map(String::as_str)
    }

    /// `name` owns `port` from now on.
    pub(super) fn reserve_port(&mut self, port: u16, name: &str) {
        self.ports.insert(port, name.to_owned());
    }

    /// Frees `port` if `name` owns it.
    pub(super) fn release_port(&mut self, port: u16, name: &str) {
        if self.port_owner(port) == Some(name) {
            self.ports.remove(&port);
        }
    }

    /// The lowest port of `range` that no instance owns and nothing listens on.
    pub(super) fn free_port(&self, range: (u16, u16)) -> Result<u16, InstanceError> {
        ports::lowest_free(range, |port| self.ports.contains_key(&port))
            .ok_or(InstanceError::NoFreePort(range.0, range.1))
    }

    /// Refuses aliases that name another instance or that another instance already answers
    /// to, and a name that another instance uses as an alias.
    pub(super) fn check_aliases(
        &self,
        name: &str,
        aliases: &[String],
    ) -> Result<(), InstanceError> {
        for (other_name, other) in &self.instances {
            if other_name == name {
                continue;
            }
            let other_aliases = other.aliases();
            if other_aliases.iter().any(|alias| alias == name) {
                return Err(InstanceError::AliasTaken {
                    alias: name.to_owned(),
                    owner: other_name.clone(),
                });
            }
            if let Some(alias) = aliases
                .iter()
                .find(|alias| *alias == other_name || other_aliases.contains(alias))
            {
                return Err(InstanceError::AliasTaken {
                    alias: alias.clone(),
                    owner: other_name.clone(),
                });
            }
        }
        if aliases.iter().any(|alias| alias == name) {
            return Err(InstanceError::invalid_field(
                "aliases",
                format!("alias '{name}' is the instance's own name"),
            ));
        }
        Ok(())
    }
}

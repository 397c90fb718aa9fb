//! Instances: the definitions (options with defaults), the registry, persistence and ports.
//!
//! - `registry`: the engine's instances and their lifecycle operations (create, update,
//!   start, stop, restart, delete), each serialized per instance.
//! - `catalogue`: names, aliases and port ownership, behind the registry's short lock.
//! - `instance`: one instance, its marks and its definition file.
//! - `lifecycle`: what may be done with an instance now, read from one snapshot.
//! - `routing`: the instance a request's `model` names, started on demand and leased.
//! - `scheduler`: LRU eviction, the idle reaper and unloads, which take running slots back.
//! - `launch`: what one start runs.
//! - `events`: the change feed; `store`: the definition files; `usage`: requests in
//!   flight and token counters.

mod catalogue;
mod error;
mod events;
mod instance;
mod launch;
mod lifecycle;
mod name;
mod options;
mod ports;
mod registry;
mod routing;
mod scheduler;
mod store;
mod usage;

pub use catalogue::ModelEntry;
pub use error::{ErrorKind, InstanceError};
pub use events::InstanceEvent;
pub use name::{validate_name, MAX_NAME_LEN};
pub use options::{
    lifecycle_fields, CreateInstanceOptions, InstanceOptions, InstanceOptionsView, InstanceView,
    BACKEND_SCHEMA_NAMES,
};
pub use registry::{Registry, Upstream};
pub use routing::Lease;
pub use usage::{InFlight, TokenUsage};

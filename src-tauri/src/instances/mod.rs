//! Instances: the definitions (options with defaults), the registry, persistence and ports.
//!
//! - `registry`: the engine's instances and their lifecycle operations (create, update,
//!   start, stop, restart, delete), each serialized per instance.
//! - `catalogue`: names, aliases and port ownership, behind the registry's short lock.
//! - `instance`: one instance, its marks and its definition file.
//! - `lifecycle`: what may be done with an instance now, read from one snapshot.
//! - `routing`: the instance a request's `model` names, started on demand and leased.
//! - `scheduler`: making room for a start (eviction by running limits, groups and memory,
//!   waiting in order for busy instances), the idle reaper and unloads.
//! - `placement`: the scheduler's decision as a pure function; `footprint`: the memory a start
//!   is expected to take.
//! - `launch`: what one start runs.
//! - `events`: the change feed; `store`: the definition files; `usage`: requests in
//!   flight and token counters.

mod catalogue;
mod error;
mod events;
mod footprint;
mod instance;
mod launch;
mod lifecycle;
mod name;
mod options;
mod placement;
mod ports;
mod registry;
mod reload;
mod routing;
mod scheduler;
mod store;
mod usage;

pub use catalogue::ModelEntry;
pub use error::{ErrorKind, InstanceError};
pub use events::{Decision, InstanceEvent};
pub use name::{validate_name, MAX_NAME_LEN};
pub(crate) use options::whole_number;
pub use options::{
    lifecycle_fields, CreateInstanceOptions, InstanceOptions, InstanceOptionsView, InstanceView,
    BACKEND_SCHEMA_NAMES,
};
pub use placement::Footprint;
pub use registry::{Registry, Upstream};
pub use reload::ConfigReload;
pub use routing::Lease;
pub use usage::{InFlight, TokenUsage};

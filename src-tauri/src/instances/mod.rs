//! Instances: the definitions (options with defaults), the registry, persistence and ports.

mod error;
mod events;
mod lifecycle;
mod name;
mod options;
mod ports;
mod registry;
mod routing;
mod store;
mod usage;

pub use error::InstanceError;
pub use events::InstanceEvent;
pub use name::{validate_name, MAX_NAME_LEN};
pub use options::{
    lifecycle_fields, CreateInstanceOptions, InstanceOptions, InstanceOptionsView, InstanceView,
    BACKEND_SCHEMA_NAMES,
};
pub use registry::{Registry, Upstream};
pub use routing::{Lease, ModelEntry};
pub use usage::{InFlight, TokenUsage};

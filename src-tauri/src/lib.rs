//! Corral's engine: the management API, the supervisor of backend processes and the proxy.
pub mod api;
pub mod backends;
pub mod config;
pub mod instances;
pub mod proxy;
pub mod supervisor;

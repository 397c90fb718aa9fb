//! Instances: the definitions (options with defaults), the registry, persistence and ports.

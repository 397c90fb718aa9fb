//! `/api/v1/schema`: the fields of the instance form, generated from the backends' option tables
//! and the lifecycle settings, so the UI never keeps its own copy of option names or types.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::Api;
use crate::backends::{self, BackendType, OptionField};
use crate::instances::lifecycle_fields;

/// Every field an instance definition can carry.
#[derive(Debug, Serialize, ToSchema)]
pub struct OptionsSchema {
    /// Corral's own settings (restart policy, on-demand start, idle stop, aliases), with the
    /// configured defaults.
    pub lifecycle: Vec<OptionField>,
    /// By `backend_type`: the fields of its `backend_options`.
    pub backends: BTreeMap<BackendType, BackendSchema>,
}

/// One backend's options.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackendSchema {
    /// The name people know it by (`llama.cpp`).
    pub label: &'static str,
    /// The common options first, then every other option.
    pub options: Vec<OptionField>,
}

/// The fields of the instance form: names, flags, types, defaults, help and choices.
#[utoipa::path(get, path = "/api/v1/schema", tag = "system",
    responses((status = 200, description = "Every option of every backend, and the lifecycle settings", body = OptionsSchema)))]
pub async fn schema(State(api): State<Api>) -> Json<OptionsSchema> {
    let backends = BackendType::ALL
        .into_iter()
        .map(|backend| {
            let schema = BackendSchema {
                label: backends::label(backend),
                options: backends::fields(backend),
            };
            (backend, schema)
        })
        .collect();
    Json(OptionsSchema {
        lifecycle: lifecycle_fields(&api.config.instances),
        backends,
    })
}

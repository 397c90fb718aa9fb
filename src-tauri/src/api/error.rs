//! The one error type of the management API: `{"error": "<code>", "details": "<sentence>"}`
//! with its HTTP status. Every failure of a route ends up here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::instances::InstanceError;

/// A refused or failed management request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable code (`instance_not_found`).
    pub code: &'static str,
    /// What went wrong, in words a user can act on.
    pub details: String,
    /// The request field the error is about (`backend_options.ctx_size`), for forms.
    pub field: Option<String>,
}

/// The body of every management error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub details: String,
    /// Present when the error is about one field of the request: `name`, `idle_timeout`,
    /// `backend_options.ctx_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, details: impl Into<String>) -> Self {
        Self {
            status,
            code,
            details: details.into(),
            field: None,
        }
    }

    /// Names the request field the error is about.
    pub fn with_field(mut self, field: Option<String>) -> Self {
        self.field = field;
        self
    }

    pub fn bad_request(code: &'static str, details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, details)
    }

    pub fn internal(code: &'static str, details: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, details)
    }
}

impl From<InstanceError> for ApiError {
    fn from(error: InstanceError) -> Self {
        use InstanceError as E;
        let (status, code) = match &error {
            E::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_instance_name"),
            E::InvalidOptions { .. } => (StatusCode::BAD_REQUEST, "invalid_options"),
            E::UnknownBackendType(_) => (StatusCode::BAD_REQUEST, "unknown_backend_type"),
            E::NotFound(_) => (StatusCode::NOT_FOUND, "instance_not_found"),
            E::AlreadyExists(_) => (StatusCode::CONFLICT, "instance_exists"),
            E::UnloadedDefinition { .. } => (StatusCode::CONFLICT, "instance_exists"),
            E::MaxInstances(_) => (StatusCode::CONFLICT, "max_instances_reached"),
            E::MaxRunning(_) => (StatusCode::CONFLICT, "max_running_instances_reached"),
            E::PortTaken { .. } => (StatusCode::CONFLICT, "port_taken"),
            E::PortInUse(_) => (StatusCode::CONFLICT, "port_in_use"),
            E::NoFreePort(..) => (StatusCode::CONFLICT, "no_free_port"),
            E::NotRunning(_) => (StatusCode::SERVICE_UNAVAILABLE, "instance_not_running"),
            E::StartFailed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "start_failed"),
            E::StopFailed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "stop_failed"),
            E::Persist { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "persistence_failed"),
            E::CreateDir { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "io_error"),
            E::Logs { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "logs_unavailable"),
            E::Failed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "instance_failed"),
            E::NotReady { .. } => (StatusCode::SERVICE_UNAVAILABLE, "instance_not_ready"),
            E::AliasTaken { .. } => (StatusCode::CONFLICT, "alias_taken"),
            E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        Self::new(status, code, error.to_string()).with_field(error.field())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            details: self.details,
            field: self.field,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

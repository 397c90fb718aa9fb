//! The one error type of the management API: `{"error": "<code>", "details": "<sentence>"}`
//! with its HTTP status. Every failure of a route ends up here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::instances::{ErrorKind, InstanceError};

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

/// The management API's status for each kind of failure. A limit is a conflict with the
/// current state here (llamactl answers 409), where the inference routes answer 503.
pub fn management_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::LimitReached => StatusCode::CONFLICT,
        ErrorKind::NotRunning
        | ErrorKind::Failed
        | ErrorKind::NotReady
        | ErrorKind::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::StartFailed | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::InsufficientMemory => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
    }
}

impl From<InstanceError> for ApiError {
    fn from(error: InstanceError) -> Self {
        Self::new(
            management_status(error.kind()),
            error.code(),
            error.to_string(),
        )
        .with_field(error.field())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::OpenAiError;

    /// One classification, two renderings: the management API and the inference routes agree
    /// on the code wherever both can meet the error, and differ in status only where a client
    /// of each should act differently (a limit: fix the setup, or try again later).
    #[test]
    fn each_error_renders_from_its_kind_in_the_management_and_inference_dialects() {
        type Make = fn() -> InstanceError;
        let cases: [(Make, u16, &str, u16, &str); 8] = [
            (
                || InstanceError::NotFound("m".into()),
                404,
                "instance_not_found",
                404,
                "model_not_found",
            ),
            (
                || InstanceError::MaxRunning {
                    max: 2,
                    reason: "limit".into(),
                },
                409,
                "max_running_instances_reached",
                503,
                "max_running_instances_reached",
            ),
            (
                || InstanceError::NotRunning("m".into()),
                503,
                "instance_not_running",
                503,
                "instance_not_running",
            ),
            (
                || InstanceError::PortInUse(9),
                409,
                "port_in_use",
                503,
                "instance_start_failed",
            ),
            (
                || InstanceError::NotReady {
                    name: "m".into(),
                    reason: "slow".into(),
                },
                503,
                "instance_not_ready",
                503,
                "instance_start_failed",
            ),
            (
                || InstanceError::Failed {
                    name: "m".into(),
                    reason: "crashed".into(),
                },
                503,
                "instance_failed",
                503,
                "instance_failed",
            ),
            (
                || InstanceError::ShuttingDown,
                503,
                "shutting_down",
                503,
                "shutting_down",
            ),
            (
                || InstanceError::InvalidName("..".into()),
                400,
                "invalid_instance_name",
                400,
                "invalid_instance_name",
            ),
        ];
        for (make, management, management_code, inference, inference_code) in cases {
            let kind = make().kind();
            let api = ApiError::from(make());
            assert_eq!(
                (api.status.as_u16(), api.code),
                (management, management_code),
                "{kind:?}"
            );
            assert_eq!(api.details, make().to_string());
            let openai = OpenAiError::from(make());
            assert_eq!(
                (openai.status.as_u16(), openai.code),
                (inference, inference_code),
                "{kind:?}"
            );
        }
    }
}

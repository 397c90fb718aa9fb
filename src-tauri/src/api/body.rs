//! Request bodies of the management API: read whole but bounded by `server.max_body_bytes`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{header, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use crate::config::Config;

/// The raw body, refused with 413 past the configured size.
pub struct BoundedBody(pub Bytes);

impl<S> FromRequest<S> for BoundedBody
where
    S: Send + Sync,
    Arc<Config>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let limit = Arc::<Config>::from_ref(state).server.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than {limit} bytes (server.max_body_bytes)"),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large());
        }
        match Limited::new(request.into_body(), limit).collect().await {
            Ok(collected) => Ok(Self(collected.to_bytes())),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(e) => Err(ApiError::bad_request(
                "invalid_body",
                format!("the request body could not be read: {e}"),
            )),
        }
    }
}

/// A bounded body that must be JSON (any value; the route checks its shape).
pub struct JsonBody(pub serde_json::Value);

impl<S> FromRequest<S> for JsonBody
where
    S: Send + Sync,
    Arc<Config>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let BoundedBody(bytes) = BoundedBody::from_request(request, state).await?;
        serde_json::from_slice(&bytes).map(Self).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            )
        })
    }
}

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
        if values_in(&bytes) > MAX_JSON_VALUES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body holds more than {MAX_JSON_VALUES} JSON values"),
            ));
        }
        serde_json::from_slice(&bytes).map(Self).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            )
        })
    }
}

/// The most values (array items, object entries) a JSON body may hold. A parsed value takes
/// 30-80 bytes however short its text (`0,` is two), so a body of small numbers would grow ~30x
/// in memory; real bodies (instance definitions, chats with long texts and base64 images) hold
/// far fewer values than this, which bounds their tree to some tens of MiB.
const MAX_JSON_VALUES: usize = 1_000_000;

/// About how many values `json` holds: its commas, brackets and braces outside strings. A
/// linear scan, done before anything is built.
fn values_in(json: &[u8]) -> usize {
    let mut count = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => count += 1,
                _ => {}
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert_eq!(values_in(br#"{"a": [1, 2, 3], "b": "x,[{\"y,"}"#), 5);
        assert_eq!(values_in(b"[]"), 1);
        let flat = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES));
        assert!(values_in(flat.as_bytes()) > MAX_JSON_VALUES);
    }
}

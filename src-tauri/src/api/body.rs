//! Request bodies of the management API: read whole but bounded by `server.max_body_bytes`,
//! and only when they are declared as JSON.
//!
//! The media type is what keeps a web page out: a page may send a `text/plain`,
//! `application/x-www-form-urlencoded` or `multipart/form-data` POST to any address without
//! asking first (no CORS preflight), but a JSON content type makes the browser ask, and Corral's
//! CORS refuses origins it does not list. A body that is JSON in all but its declared type is
//! therefore refused (415), on every route that reads one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use crate::config::Config;

/// Whether a `Content-Type` value names JSON: `application/json` or any `+json` type
/// (`application/problem+json`), parameters such as `; charset=utf-8` allowed.
pub fn is_json_media_type(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let (kind, subtype) = (kind.trim(), subtype.trim());
    (kind.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case("json"))
        || (!kind.is_empty()
            && subtype.len() > "+json".len()
            && subtype
                .get(subtype.len() - "+json".len()..)
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
}

/// Whether a request declares exactly one `Content-Type` and it is JSON.
pub fn declares_json(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(value), None) => is_json_media_type(value.as_bytes()),
        _ => false,
    }
}

/// What a route answers to a body that is not declared as JSON.
pub fn not_json_message(headers: &HeaderMap) -> String {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    match declared {
        Some(declared) => format!(
            "the request body must be sent as JSON (Content-Type: application/json), not '{declared}'"
        ),
        None => "the request body must be sent as JSON: set Content-Type: application/json"
            .to_owned(),
    }
}

/// The raw body of a JSON route: refused with 415 unless declared as JSON, 413 past the
/// configured size.
pub struct BoundedBody(pub Bytes);

impl<S> FromRequest<S> for BoundedBody
where
    S: Send + Sync,
    Arc<Config>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !declares_json(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                not_json_message(request.headers()),
            ));
        }
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
    fn json_and_plus_json_types_with_parameters_are_json() {
        for json in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=UTF-8",
            "application/problem+json",
            "application/vnd.api+JSON; x=1",
        ] {
            assert!(is_json_media_type(json.as_bytes()), "{json}");
        }
    }

    #[test]
    fn the_types_a_page_may_send_without_asking_are_not_json() {
        for other in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "json",
            "application/",
            "/json",
            "application/jsonx",
            "application/+json",
            "text/json",
            "application/json+text",
        ] {
            assert!(!is_json_media_type(other.as_bytes()), "{other}");
        }
        assert!(!is_json_media_type(b"application/json\xff"));
    }

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert_eq!(values_in(br#"{"a": [1, 2, 3], "b": "x,[{\"y,"}"#), 5);
        assert_eq!(values_in(b"[]"), 1);
        let flat = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES));
        assert!(values_in(flat.as_bytes()) > MAX_JSON_VALUES);
    }
}

//! API keys (llamactl's scheme): management keys guard `/api/v1`, inference or management keys
//! guard `/v1`. Keys come from `Authorization: Bearer`, then `X-API-Key`, then `?api_key=`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::config::Config;

/// llamactl's exact bodies, byte for byte (clients match on them).
const MISSING_KEY: &str =
    r#"{"error": {"message": "Missing API key", "type": "authentication_error"}}"#;
const INVALID_KEY: &str =
    r#"{"error": {"message": "Invalid API key", "type": "authentication_error"}}"#;

/// Middleware for `/api/v1`: a management key, when `require_management_auth` is on.
pub async fn require_management(
    State(config): State<Arc<Config>>,
    request: Request,
    next: Next,
) -> Response {
    let auth = &config.auth;
    if !auth.require_management_auth {
        return next.run(request).await;
    }
    check(request, next, &[&auth.management_keys]).await
}

/// Middleware for `/v1`: an inference or a management key, when `require_inference_auth` is on.
pub async fn require_inference(
    State(config): State<Arc<Config>>,
    request: Request,
    next: Next,
) -> Response {
    let auth = &config.auth;
    if !auth.require_inference_auth {
        return next.run(request).await;
    }
    check(
        request,
        next,
        &[&auth.inference_keys, &auth.management_keys],
    )
    .await
}

async fn check(request: Request, next: Next, accepted: &[&Vec<String>]) -> Response {
    // Preflights carry no credentials by design; CORS answers them before this, other OPTIONS
    // requests pass as in llamactl.
    if request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    let Some(key) = presented_key(&request) else {
        return unauthorized(MISSING_KEY);
    };
    // Every key is compared, whatever matched, so timing tells nothing about which one is close.
    let matched = accepted
        .iter()
        .flat_map(|keys| keys.iter())
        .fold(subtle::Choice::from(0), |found, candidate| {
            found | candidate.as_bytes().ct_eq(key.as_bytes())
        });
    if bool::from(matched) {
        next.run(request).await
    } else {
        unauthorized(INVALID_KEY)
    }
}

/// The first key present: `Authorization: Bearer <key>`, `X-API-Key`, `?api_key=`.
fn presented_key(request: &Request) -> Option<String> {
    let headers = request.headers();
    if let Some(key) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    {
        return Some(key.to_owned());
    }
    if let Some(key) = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
    {
        return Some(key.to_owned());
    }
    Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(mut query)| query.remove("api_key"))
}

fn unauthorized(body: &'static str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

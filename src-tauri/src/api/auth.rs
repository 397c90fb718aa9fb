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

/// The cookie that carries the management key for a backend's own web page opened through the
/// per-instance proxy: a browser tab cannot add a header, and the page's own requests drop the
/// `?api_key=` it was opened with.
const PROXY_COOKIE: &str = "corral_proxy_key";

async fn check(request: Request, next: Next, accepted: &[&Vec<String>]) -> Response {
    // Preflights carry no credentials by design; CORS answers them before this, other OPTIONS
    // requests pass as in llamactl.
    if request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    let proxied = is_instance_proxy(request.uri().path());
    let Some((key, source)) = presented_key(&request, proxied) else {
        return unauthorized(MISSING_KEY);
    };
    if !is_accepted(key.as_bytes(), accepted) {
        return unauthorized(INVALID_KEY);
    }
    // A page opened with `?api_key=` gets the key as a cookie for its own later requests.
    let set_cookie = (proxied && source == KeySource::Query)
        .then(|| {
            HeaderValue::from_str(&format!(
                "{PROXY_COOKIE}={key}; Path=/api/v1/instances/; HttpOnly; SameSite=Strict"
            ))
            .ok()
        })
        .flatten();
    let mut response = next.run(request).await;
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Whether `key` is one of `accepted`. Every key is compared, whatever matched, so timing tells
/// nothing about which one is close.
pub(crate) fn is_accepted(key: &[u8], accepted: &[&Vec<String>]) -> bool {
    let matched = accepted
        .iter()
        .flat_map(|keys| keys.iter())
        .fold(subtle::Choice::from(0), |found, candidate| {
            found | candidate.as_bytes().ct_eq(key)
        });
    bool::from(matched)
}

/// `/instances/<name>/proxy` and below (the path as the `/api/v1` router sees it).
fn is_instance_proxy(path: &str) -> bool {
    let mut segments = path.trim_start_matches('/').split('/');
    segments.next() == Some("instances")
        && segments.next().is_some_and(|name| !name.is_empty())
        && segments.next() == Some("proxy")
}

fn proxy_cookie(request: &Request) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == PROXY_COOKIE)
        .map(|(_, key)| key.to_owned())
}

/// Where a request's key came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeySource {
    Header,
    Query,
    Cookie,
}

/// The first key present: `Authorization: Bearer <key>`, `X-API-Key`, `?api_key=`, and for a
/// per-instance proxy path the proxy cookie.
fn presented_key(request: &Request, proxied: bool) -> Option<(String, KeySource)> {
    let headers = request.headers();
    if let Some(key) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    {
        return Some((key.to_owned(), KeySource::Header));
    }
    if let Some(key) = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
    {
        return Some((key.to_owned(), KeySource::Header));
    }
    if let Some(key) = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(mut query)| query.remove("api_key"))
    {
        return Some((key, KeySource::Query));
    }
    proxied
        .then(|| proxy_cookie(request))
        .flatten()
        .map(|key| (key, KeySource::Cookie))
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

//! API keys (llamactl's scheme): management keys guard `/api/v1`, inference or management keys
//! guard `/v1`. Keys come from `Authorization: Bearer`, then `X-API-Key`, then `?api_key=`.
//!
//! A backend's own web page (llama.cpp's chat) opened through the per-instance proxy is a
//! browser tab: it cannot send a header, and any script in it could read a key it was given. So
//! it never gets one: the UI asks for a one-time ticket (`POST .../proxy-token`, with the
//! management key), opens the page with it, and the ticket is swapped for a session cookie that
//! opens that instance's proxy path only, which the page's scripts cannot read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::access::{self, Caller, KeyCheck, KeyStore};
use crate::config::Config;

/// llamactl's exact bodies, byte for byte (clients match on them).
const MISSING_KEY: &str =
    r#"{"error": {"message": "Missing API key", "type": "authentication_error"}}"#;
const INVALID_KEY: &str =
    r#"{"error": {"message": "Invalid API key", "type": "authentication_error"}}"#;

/// What the management API's auth needs: the keys, and the passes given to backend pages.
#[derive(Clone)]
pub struct ManagementAuth {
    pub config: Arc<Config>,
    pub passes: Arc<ProxyPasses>,
    /// Stored inference keys open the proxy of the instances in their scope.
    pub keys: Arc<KeyStore>,
}

/// What the inference routes' auth needs: the config's keys and the stored ones.
#[derive(Clone)]
pub struct InferenceAuth {
    pub config: Arc<Config>,
    pub keys: Arc<KeyStore>,
}

/// Middleware for `/api/v1`: a management key, when `require_management_auth` is on; on an
/// instance's proxy path, that instance's page pass instead.
pub async fn require_management(
    State(state): State<ManagementAuth>,
    request: Request,
    next: Next,
) -> Response {
    let auth = &state.config.auth;
    if !auth.require_management_auth || is_preflight(&request) {
        return next.run(request).await;
    }
    let accepted = [&auth.management_keys];
    let Some(instance) = instance_proxied(request.uri().path()).map(str::to_owned) else {
        return check(request, next, &accepted).await;
    };
    match presented_key(&request) {
        Some((key, source)) => {
            let caller = if is_accepted(key.as_bytes(), &accepted) {
                Caller::unrestricted()
            } else {
                // An inference key made with a scope reaches the proxy of its instances.
                match state.keys.verify(key.as_bytes()).await {
                    KeyCheck::Granted(grant) if grant.allows(&instance) => Caller::keyed(grant),
                    KeyCheck::Granted(_) => return permission_denied(&instance),
                    _ => return unauthorized(INVALID_KEY),
                }
            };
            // A tab opened with `?api_key=` (llamactl's way) gets a pass for its own later
            // requests, not the key.
            let pass = (source == KeySource::Query).then(|| state.passes.open_session(&instance));
            let mut response = access::calling(caller, next.run(request)).await;
            if let Some(pass) = pass {
                append_session_cookie(&mut response, &instance, &pass);
            }
            response
        }
        None => {
            if let Some(ticket) = query_value(&request, PROXY_TICKET_PARAM) {
                return redeem(&state.passes, &request, &instance, &ticket);
            }
            match session_cookie(&request) {
                Some(pass) if state.passes.session_valid(&pass, &instance) => {
                    next.run(request).await
                }
                Some(_) => unauthorized(INVALID_KEY),
                None => unauthorized(MISSING_KEY),
            }
        }
    }
}

/// A ticket in the page's address: swapped for the session cookie, and the page reloaded without
/// it (so that a reload of the page uses the cookie, and the page never sees the ticket).
fn redeem(passes: &ProxyPasses, request: &Request, instance: &str, ticket: &str) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return unauthorized(INVALID_KEY);
    }
    let Some(session) = passes.redeem_ticket(ticket, instance) else {
        return unauthorized(INVALID_KEY);
    };
    // The path as the client sent it, `/api/v1` included (the router strips it from the URI).
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |uri| uri.path().to_owned(),
        );
    let location = match without_params(request.uri().query(), &[PROXY_TICKET_PARAM]) {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    append_session_cookie(&mut response, instance, &session);
    response
}

fn append_session_cookie(response: &mut Response, instance: &str, pass: &str) {
    // No Max-Age: the browser forgets it when it closes; the engine forgets it sooner when the
    // page sits unused (PAGE_SESSION_IDLE).
    let cookie = format!(
        "{PROXY_COOKIE}={pass}; Path=/api/v1/instances/{instance}/proxy/; HttpOnly; SameSite=Strict"
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
}

/// Middleware for `/v1` and Ollama's routes: an inference or a management key from the config
/// (no limit), or a stored key (held to its scope by the routes), when
/// `require_inference_auth` is on.
pub async fn require_inference(
    State(state): State<InferenceAuth>,
    request: Request,
    next: Next,
) -> Response {
    let auth = &state.config.auth;
    // The routes ask who calls (`access::current_caller`), and one that is not told may use
    // nothing: every way through here says.
    let caller = if !auth.require_inference_auth || is_preflight(&request) {
        Caller::unrestricted()
    } else {
        let Some((key, _)) = presented_key(&request) else {
            return unauthorized(MISSING_KEY);
        };
        if is_accepted(
            key.as_bytes(),
            &[&auth.inference_keys, &auth.management_keys],
        ) {
            Caller::unrestricted()
        } else {
            match state.keys.verify(key.as_bytes()).await {
                KeyCheck::Granted(grant) => Caller::keyed(grant),
                _ => return unauthorized(INVALID_KEY),
            }
        }
    };
    access::calling(caller, next.run(request)).await
}

/// Middleware for `/metrics`: a management key or one of `metrics.keys`, when management auth
/// is on (with it off, the management API shows more than the metrics do). With
/// `metrics.open_on_loopback`, a client on this machine needs none.
pub async fn require_metrics(
    State(config): State<Arc<Config>>,
    request: Request,
    next: Next,
) -> Response {
    let auth = &config.auth;
    if !auth.require_management_auth {
        return next.run(request).await;
    }
    let local =
        crate::api::current_client().is_some_and(|client| client.ip().to_canonical().is_loopback());
    if config.metrics.open_on_loopback && local {
        return next.run(request).await;
    }
    check(
        request,
        next,
        &[&auth.management_keys, &config.metrics.keys],
    )
    .await
}

/// The cookie that lets a backend's page opened through the per-instance proxy make its own
/// requests: a pass for that instance's proxy path, never a key.
pub const PROXY_COOKIE: &str = "corral_proxy_session";

/// The query parameter that carries a one-time ticket for a backend's page.
pub const PROXY_TICKET_PARAM: &str = "proxy_ticket";

/// How long a ticket may wait to be used: the UI opens the page right after asking for it.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(60);

/// A page's pass lapses after this long without a request.
pub const PAGE_SESSION_IDLE: Duration = Duration::from_secs(60 * 60);

/// Passes held at once; past it the one closest to lapsing goes first (only a management key
/// holder can ask for them, but none may make the engine grow without bound).
const MAX_PASSES: usize = 1024;

/// Whether one `name=value` pair of a `Cookie` header is Corral's own page cookie.
pub(crate) fn is_corral_cookie(pair: &str) -> bool {
    pair.split_once('=')
        .is_some_and(|(name, _)| name.trim() == PROXY_COOKIE)
}

/// A real CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`. It carries
/// no credentials by design (the CORS layer answers it before auth); any other `OPTIONS` is a
/// request like the others and needs a key (through the instance proxy it reaches a backend).
fn is_preflight(request: &Request) -> bool {
    request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

async fn check(request: Request, next: Next, accepted: &[&Vec<String>]) -> Response {
    if is_preflight(&request) {
        return next.run(request).await;
    }
    let Some((key, _)) = presented_key(&request) else {
        return unauthorized(MISSING_KEY);
    };
    if !is_accepted(key.as_bytes(), accepted) {
        return unauthorized(INVALID_KEY);
    }
    next.run(request).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PassKind {
    /// One use, within `TICKET_LIFETIME`: swapped for a session.
    Ticket,
    /// The page's cookie, while used at least every `PAGE_SESSION_IDLE`.
    Session,
}

struct Pass {
    instance: String,
    kind: PassKind,
    expires: Instant,
}

/// The tickets and page sessions given out, in memory only: a restart of the engine ends them.
#[derive(Default)]
pub struct ProxyPasses {
    passes: Mutex<HashMap<String, Pass>>,
}

impl ProxyPasses {
    /// A one-time ticket for `instance`'s page.
    pub fn issue_ticket(&self, instance: &str) -> String {
        self.insert(instance, PassKind::Ticket, TICKET_LIFETIME)
    }

    fn open_session(&self, instance: &str) -> String {
        self.insert(instance, PassKind::Session, PAGE_SESSION_IDLE)
    }

    /// Uses up `ticket` if it is a live one for `instance`, giving a session in its place.
    fn redeem_ticket(&self, ticket: &str, instance: &str) -> Option<String> {
        let valid = {
            let mut passes = lock(&self.passes);
            match passes.remove(ticket) {
                Some(pass) => {
                    pass.kind == PassKind::Ticket
                        && pass.instance == instance
                        && pass.expires > Instant::now()
                }
                None => false,
            }
        };
        valid.then(|| self.open_session(instance))
    }

    /// Whether `session` opens `instance`'s proxy path now; each use keeps it alive.
    fn session_valid(&self, session: &str, instance: &str) -> bool {
        let now = Instant::now();
        let mut passes = lock(&self.passes);
        match passes.get_mut(session) {
            Some(pass)
                if pass.kind == PassKind::Session
                    && pass.instance == instance
                    && pass.expires > now =>
            {
                pass.expires = now + PAGE_SESSION_IDLE;
                true
            }
            _ => false,
        }
    }

    fn insert(&self, instance: &str, kind: PassKind, lifetime: Duration) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut passes = lock(&self.passes);
        passes.retain(|_, pass| pass.expires > now);
        if passes.len() >= MAX_PASSES {
            if let Some(first) = passes
                .iter()
                .min_by_key(|(_, pass)| pass.expires)
                .map(|(token, _)| token.clone())
            {
                passes.remove(&first);
            }
        }
        passes.insert(
            token.clone(),
            Pass {
                instance: instance.to_owned(),
                kind,
                expires: now + lifetime,
            },
        );
        token
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map holds no invariant a panic could break halfway.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// The instance whose proxy `path` is under: `/instances/<name>/proxy` and below (the path as
/// the `/api/v1` router sees it).
fn instance_proxied(path: &str) -> Option<&str> {
    let mut segments = path.trim_start_matches('/').split('/');
    if segments.next() != Some("instances") {
        return None;
    }
    let name = segments.next().filter(|name| !name.is_empty())?;
    (segments.next() == Some("proxy")).then_some(name)
}

fn session_cookie(request: &Request) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == PROXY_COOKIE)
        .map(|(_, pass)| pass.to_owned())
}

fn query_value(request: &Request, name: &str) -> Option<String> {
    Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(mut query)| query.remove(name))
}

/// `query` without the parameters named in `names` (compared decoded, as they are read), the
/// rest kept byte for byte; `None` when nothing is left.
pub(crate) fn without_params(query: Option<&str>, names: &[&str]) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default().replace('+', " ");
            let name = percent_encoding::percent_decode_str(&name).decode_utf8_lossy();
            !names.contains(&name.as_ref())
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Where a request's key came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeySource {
    Header,
    Query,
}

/// The first key present: `Authorization: Bearer <key>`, `X-API-Key`, `?api_key=`.
fn presented_key(request: &Request) -> Option<(String, KeySource)> {
    let headers = request.headers().iter();
    if let Some(key) = header_key(headers.map(|(name, value)| (name.as_str(), value.as_bytes()))) {
        // `header_key` takes visible ASCII only.
        return Some((String::from_utf8_lossy(key).into_owned(), KeySource::Header));
    }
    query_value(request, "api_key").map(|key| (key, KeySource::Query))
}

/// The key a request's headers present, as the router and the fast path both read it: the
/// first `Authorization` header's `Bearer` value, else the first `X-API-Key`. A value that is
/// not visible ASCII is no key.
pub(crate) fn header_key<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Option<&'a [u8]> {
    let mut authorization = None;
    let mut api_key = None;
    for (name, value) in headers {
        if authorization.is_none() && name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value);
        } else if api_key.is_none() && name.eq_ignore_ascii_case("x-api-key") {
            api_key = Some(value);
        }
    }
    // What `HeaderValue::to_str` takes: tab and visible ASCII.
    let text = |value: &&[u8]| {
        value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    };
    authorization
        .filter(text)
        .and_then(|value| value.strip_prefix(b"Bearer "))
        .or(api_key.filter(text))
}

/// A stored key used on an instance outside its scope, in the management API's shape.
fn permission_denied(instance: &str) -> Response {
    super::error::ApiError::new(
        StatusCode::FORBIDDEN,
        "permission_denied",
        format!("this API key may not use instance '{instance}'"),
    )
    .into_response()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod pass_tests {
    use super::*;

    #[test]
    fn a_ticket_opens_one_session_for_its_instance_once() {
        let passes = ProxyPasses::default();
        let ticket = passes.issue_ticket("a");
        assert!(
            passes.redeem_ticket(&ticket, "b").is_none(),
            "another instance"
        );
        // The failed try used it up: tickets are never tried twice.
        assert!(passes.redeem_ticket(&ticket, "a").is_none());
        let ticket = passes.issue_ticket("a");
        let session = passes.redeem_ticket(&ticket, "a").unwrap();
        assert!(passes.redeem_ticket(&ticket, "a").is_none(), "used once");
        assert!(passes.session_valid(&session, "a"));
        assert!(!passes.session_valid(&session, "b"));
        assert!(
            !passes.session_valid(&ticket, "a"),
            "a ticket is no session"
        );
        assert!(
            passes.redeem_ticket(&session, "a").is_none(),
            "a session is no ticket"
        );
    }

    #[test]
    fn passes_are_bounded() {
        let passes = ProxyPasses::default();
        for _ in 0..MAX_PASSES + 10 {
            passes.issue_ticket("a");
        }
        assert_eq!(lock(&passes.passes).len(), MAX_PASSES);
    }

    #[test]
    fn the_key_is_the_first_authorization_bearer_else_the_first_x_api_key() {
        fn key<'a>(headers: &[(&'a str, &'a [u8])]) -> Option<&'a [u8]> {
            header_key(headers.iter().copied())
        }
        assert_eq!(
            key(&[("Authorization", b"Bearer a"), ("X-API-Key", b"b")]),
            Some(&b"a"[..])
        );
        assert_eq!(
            key(&[("x-api-key", b"b"), ("x-api-key", b"c")]),
            Some(&b"b"[..])
        );
        // The first `Authorization` decides: a second one is not looked for.
        let basic_first = [
            ("authorization", &b"Basic x"[..]),
            ("authorization", b"Bearer a"),
        ];
        assert_eq!(key(&basic_first), None);
        assert_eq!(
            key(&[("Authorization", b"Basic x"), ("X-Api-Key", b"b")]),
            Some(&b"b"[..])
        );
        assert_eq!(key(&[("Authorization", "Bearer é".as_bytes())]), None);
        assert_eq!(key(&[("Authorization", b"bearer a")]), None);
        assert_eq!(key(&[]), None);
    }

    #[test]
    fn only_the_named_query_parameters_are_dropped() {
        assert_eq!(
            without_params(
                Some("a=1&api_key=k&b=2&api%5Fkey=k2&proxy_ticket=t"),
                &["api_key", "proxy_ticket"]
            ),
            Some("a=1&b=2".to_owned())
        );
        assert_eq!(without_params(Some("api_key=k"), &["api_key"]), None);
        assert_eq!(without_params(None, &["api_key"]), None);
        assert_eq!(
            without_params(Some("x=%20y&key=1"), &["api_key"]),
            Some("x=%20y&key=1".to_owned())
        );
    }
}

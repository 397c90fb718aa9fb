//! The hyper relay to backends, used by `/api/v1/instances/{name}/proxy/*` and by the `/v1`
//! requests the fast path (`server::fast`) does not take: request and response bodies stay
//! streams end to end (SSE arrives token by token). Which headers pass is [`policy`]'s to say,
//! for both relays.

pub mod policy;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::body::{Body as _, Frame};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::api::error::ApiError;
use crate::instances::{InFlight, Upstream};
use policy::RequestHeader;

/// How long dialling a backend may take before the request fails with 502.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections older than this are not reused (backends close theirs after ~5 s).
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(4);

/// Idle connections kept per backend; more concurrent requests open more, then close them.
pub(crate) const MAX_IDLE_PER_BACKEND: usize = 64;

/// How long a pooled connection may take to become ready before a new one is opened instead.
const REUSE_CHECK: Duration = Duration::from_millis(100);

/// Watches one exchange pass through the proxy without holding it up; dropped when the response
/// body ended or the client went away (so a guard inside it lives exactly as long as the request).
pub trait ExchangeObserver: Send + Unpin + 'static {
    /// The backend's status and headers, before the body.
    fn response(&mut self, _status: StatusCode, _headers: &HeaderMap) {}
    /// Each chunk of the response body, as it passes.
    fn data(&mut self, _chunk: &Bytes) {}
    /// The request could not be forwarded.
    fn failed(&mut self, _error: &ProxyError) {}
}

impl ExchangeObserver for () {}

impl ExchangeObserver for InFlight {}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the path cannot be forwarded: {0}")]
    InvalidPath(String),
    #[error("the backend at {authority} did not answer: {message}")]
    Unreachable { authority: String, message: String },
}

impl ProxyError {
    /// The stable, machine-readable code, the same in every dialect.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::Unreachable { .. } => "upstream_unreachable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<ProxyError> for ApiError {
    fn from(error: ProxyError) -> Self {
        ApiError::new(error.status(), error.code(), error.to_string())
    }
}

/// An HTTP/1.1 client to the backends with a pool of keep-alive connections per backend.
///
/// Not hyper-util's pooled client: that one runs every connection in a task of its own, so each
/// exchange hops between the request's task and the connection's task several times (a wake-up,
/// and often a thread switch, per hop), which cost Corral half its throughput against nginx.
/// Here the task that serves the client's request drives the backend connection itself, while
/// waiting for the answer and then while streaming the body out, the way nginx's event loop
/// does. A connection goes back to the pool once its answer has been read to the end; an answer
/// cut short (the client went away) closes it, which is what cancels the backend's work.
#[derive(Clone, Default)]
pub struct Proxy {
    pool: Arc<Pool>,
}

impl Proxy {
    pub fn new() -> Self {
        Self::default()
    }

    /// `try_forward` with failures as management errors (502 for an unreachable backend).
    pub async fn forward<T: ExchangeObserver>(
        &self,
        request: Request,
        upstream: &Upstream,
        path_and_query: &str,
        tap: T,
    ) -> Response {
        self.try_forward(request, upstream, path_and_query, tap)
            .await
            .unwrap_or_else(|e| ApiError::from(e).into_response())
    }

    /// Sends `request` to `http://<authority><path_and_query>` of `upstream` and streams the
    /// answer back.
    /// `tap` sees the answer go by and is kept until the response body has been sent or the
    /// client went away (the in-flight count of the router hangs on it); dropping the body also
    /// drops the upstream connection, which cancels the backend's work. Upstream CORS headers
    /// are dropped so that Corral's own apply.
    ///
    /// The client's credentials are Corral's, not the backend's: its `Authorization` and
    /// `X-API-Key` headers and Corral's page cookie never reach the backend (a backend's page
    /// could read them), and the backend gets the key Corral holds for it instead.
    pub async fn try_forward<T: ExchangeObserver>(
        &self,
        mut request: Request,
        upstream: &Upstream,
        path_and_query: &str,
        mut tap: T,
    ) -> Result<Response, ProxyError> {
        let authority = upstream.authority.as_str();
        let path = match path_and_query.parse::<Uri>() {
            Ok(uri) if uri.scheme().is_none() && uri.authority().is_none() => uri,
            Ok(_) => {
                let error = ProxyError::InvalidPath(format!(
                    "'{path_and_query}' is not a path on the backend"
                ));
                tap.failed(&error);
                return Err(error);
            }
            Err(e) => {
                let error = ProxyError::InvalidPath(e.to_string());
                tap.failed(&error);
                return Err(error);
            }
        };
        let original_host = request.headers().get(header::HOST).cloned();
        // Origin-form on the wire, as a server expects from a client (not a proxy).
        *request.uri_mut() = path;
        // The pool speaks HTTP/1.1 to backends whatever the client used.
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        clean_request_headers(headers);
        if let Some(credential) = &upstream.credential {
            if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", credential.expose()))
            {
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        if let Ok(host) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, host);
        }
        if let Some(host) = original_host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );

        match self.pool.send(authority, request).await {
            Ok((response, connection)) => {
                let (mut parts, body) = response.into_parts();
                clean_response_headers(&mut parts.headers);
                tap.response(parts.status, &parts.headers);
                let reuse = policy::reuse_after(
                    parts
                        .headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default(),
                );
                let mut body = Streamed {
                    body,
                    connection: Some(connection),
                    pool: Arc::clone(&self.pool),
                    tap,
                    reuse,
                };
                // An empty answer (204, HEAD, `Content-Length: 0`) is never polled.
                if body.body.is_end_stream() {
                    body.release();
                }
                Ok(Response::from_parts(parts, Body::new(body)))
            }
            Err(message) => {
                let error = ProxyError::Unreachable {
                    authority: authority.to_owned(),
                    message,
                };
                tap.failed(&error);
                Err(error)
            }
        }
    }
}

/// One keep-alive connection to a backend. The `Connection` half does the I/O and is polled by
/// whichever task uses the connection at the moment; it is never spawned.
struct Conn {
    authority: Box<str>,
    sender: http1::SendRequest<Body>,
    io: Pin<Box<http1::Connection<TokioIo<TcpStream>, Body>>>,
    /// The `Connection` future has resolved: the socket is closed and must not be polled again.
    closed: bool,
    /// When it went back to the pool.
    idle_since: Instant,
}

impl Conn {
    async fn open(authority: &str) -> Result<Conn, String> {
        let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
        };
        // Tokens of a stream go out one small write at a time: don't let Nagle hold them back.
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, io) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            authority: authority.into(),
            sender,
            io: Box::pin(io),
            closed: false,
            idle_since: Instant::now(),
        })
    }

    /// Moves bytes between the socket and the exchange in progress; registers the task for the
    /// next wake-up when there is nothing to do.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed && self.io.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
    }

    /// Ready for another request: not closed by either side and idle.
    fn poll_reusable(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        self.drive(cx);
        if self.closed {
            return Poll::Ready(false);
        }
        match self.sender.poll_ready(cx) {
            Poll::Ready(result) => Poll::Ready(result.is_ok()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Sends one request and waits for the answer's head, driving the connection meanwhile.
    /// `Err(Some(request))` gives the request back when it never left: it may go out again
    /// on another connection.
    async fn send(
        &mut self,
        request: Request,
    ) -> Result<hyper::Response<Incoming>, (String, Option<Request>)> {
        let mut answer = std::pin::pin!(self.sender.try_send_request(request));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = answer.as_mut().poll(cx) {
                return Poll::Ready(
                    result.map_err(|mut e| (e.error().to_string(), e.take_message())),
                );
            }
            self.drive(cx);
            if self.closed {
                // The dispatcher is gone, so the answer resolves (with an error) right away.
                return answer
                    .as_mut()
                    .poll(cx)
                    .map_err(|mut e| (e.error().to_string(), e.take_message()));
            }
            Poll::Pending
        })
        .await
    }
}

/// Idle connections by backend address, most recently used last.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<Box<str>, Vec<Conn>>>,
}

impl Pool {
    /// Sends on an idle connection when one is still good, else on a new one. A request that
    /// never left a reused connection (the backend closed it meanwhile) is sent again on a
    /// new one; one that left is not, since it may not be safe to repeat.
    async fn send(
        &self,
        authority: &str,
        request: Request,
    ) -> Result<(hyper::Response<Incoming>, Conn), String> {
        let mut request = request;
        while let Some(mut conn) = self.checkout(authority) {
            if !reusable(&mut conn).await {
                continue;
            }
            match conn.send(request).await {
                Ok(response) => return Ok((response, conn)),
                Err((_, Some(unsent))) => request = unsent,
                Err((message, None)) => return Err(message),
            }
        }
        let mut conn = Conn::open(authority).await?;
        match conn.send(request).await {
            Ok(response) => Ok((response, conn)),
            Err((message, _)) => Err(message),
        }
    }

    fn checkout(&self, authority: &str) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        let conns = idle.get_mut(authority)?;
        // Backends close idle keep-alive connections after a few seconds (llama-server and
        // uvicorn after 5): older ones are dropped rather than raced against that close.
        while let Some(conn) = conns.pop() {
            if conn.idle_since.elapsed() < MAX_IDLE {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = lock(&self.idle);
        // Expired connections of every backend go here, so that one that stopped (its
        // instance stopped or moved) does not keep closed sockets around.
        idle.retain(|_, conns| {
            conns.retain(|conn| conn.idle_since.elapsed() < MAX_IDLE);
            !conns.is_empty()
        });
        let conns = idle.entry(conn.authority.clone()).or_default();
        if conns.len() < MAX_IDLE_PER_BACKEND {
            conns.push(conn);
        }
    }
}

/// Whether a pooled connection can take a request now; it was not polled while idle, so this
/// is where a close by the backend is noticed.
async fn reusable(conn: &mut Conn) -> bool {
    let check = std::future::poll_fn(|cx| conn.poll_reusable(cx));
    timeout(REUSE_CHECK, check).await.unwrap_or(false)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The pool holds no invariant a panic could break halfway: keep using it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The backend's answer body on its way to the client. Polling it drives the connection, so
/// the bytes move in the client's task; at the end the connection returns to the pool.
struct Streamed<T> {
    body: Incoming,
    /// Until the body ended (then back in the pool) or the stream was dropped (then closed).
    connection: Option<Conn>,
    pool: Arc<Pool>,
    tap: T,
    /// The connection may carry another request once this answer ended ([`policy::reuse_after`]).
    reuse: bool,
}

impl<T> Streamed<T> {
    /// The answer was read to its end: the connection may carry another request. Whether it
    /// still can (the backend may close it after this answer) is checked when it is taken out.
    fn release(&mut self) {
        if let Some(conn) = self.connection.take() {
            if self.reuse && !conn.closed && !conn.sender.is_closed() {
                self.pool.checkin(conn);
            }
        }
    }
}

impl<T: ExchangeObserver> hyper::body::Body for Streamed<T> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(conn) = this.connection.as_mut() {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(chunk) = frame.data_ref() {
                    this.tap.data(chunk);
                }
                // The server stops polling once the body says it has ended (a known length
                // was sent), so this may be the last chance to give the connection back.
                if this.body.is_end_stream() {
                    this.release();
                }
            }
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.connection = None,
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Takes out of a request's `headers` what [`policy::request_header`] keeps from the backend:
/// hop-by-hop headers (and those `Connection` names), the client's credentials, the forwarding
/// claims Corral writes itself (the caller sets `Host` and `X-Forwarded-*` next), and Corral's
/// page cookie.
fn clean_request_headers(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    let cookie = policy::backend_cookies(
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    );
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            named.contains(name) || policy::request_header(name.as_str()) != RequestHeader::Forward
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
    if let Some(value) = cookie.and_then(|cookie| HeaderValue::from_str(&cookie).ok()) {
        headers.insert(header::COOKIE, value);
    }
}

/// Takes out of an answer's `headers` what [`policy::response_header_kept`] keeps from the
/// client, and the hop-by-hop headers its `Connection` names; hyper frames the body itself.
fn clean_response_headers(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            named.contains(name)
                || *name == header::TRANSFER_ENCODING
                || !policy::response_header_kept(name.as_str())
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

/// The headers `Connection` names: hop-by-hop too.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use axum::Router;

    /// A backend that answers with the client's address (so a reused connection shows as the
    /// same port) and, on `/close`, asks for the connection to be closed after the answer.
    async fn backend() -> String {
        let app =
            Router::new()
                .route(
                    "/peer",
                    get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        peer.port().to_string()
                    }),
                )
                .route(
                    "/close",
                    get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        ([(header::CONNECTION, "close")], peer.port().to_string())
                    }),
                )
                .route("/empty", get(|| async { StatusCode::NO_CONTENT }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        authority
    }

    fn upstream(authority: &str) -> Upstream {
        Upstream {
            name: "test".to_owned(),
            authority: authority.to_owned(),
            credential: None,
        }
    }

    async fn fetch(proxy: &Proxy, authority: &str, path: &str) -> (StatusCode, String) {
        let response = proxy
            .try_forward(Request::new(Body::empty()), &upstream(authority), path, ())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read() {
        let authority = backend().await;
        let proxy = Proxy::new();
        let (_, first) = fetch(&proxy, &authority, "/peer").await;
        let (_, second) = fetch(&proxy, &authority, "/peer").await;
        assert_eq!(
            first, second,
            "the second request went over the first connection"
        );
        // An empty answer is never polled to its end, and still gives its connection back.
        assert_eq!(
            fetch(&proxy, &authority, "/empty").await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(fetch(&proxy, &authority, "/peer").await.1, first);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_replaced() {
        let authority = backend().await;
        let proxy = Proxy::new();
        let (_, closed) = fetch(&proxy, &authority, "/close").await;
        let (status, next) = fetch(&proxy, &authority, "/peer").await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(closed, next, "a new connection carried the next request");
    }

    #[tokio::test]
    async fn an_answer_dropped_halfway_closes_its_connection() {
        let authority = backend().await;
        let proxy = Proxy::new();
        let (_, first) = fetch(&proxy, &authority, "/peer").await;
        // The client went away before reading the answer: the connection may hold its rest.
        drop(
            proxy
                .try_forward(
                    Request::new(Body::empty()),
                    &upstream(&authority),
                    "/peer",
                    (),
                )
                .await
                .unwrap(),
        );
        let (_, next) = fetch(&proxy, &authority, "/peer").await;
        assert_ne!(first, next);
    }

    #[tokio::test]
    async fn an_unreachable_backend_is_an_error_naming_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = Proxy::new()
            .try_forward(Request::new(Body::empty()), &upstream(&authority), "/", ())
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        assert!(error.to_string().contains(&authority));
    }

    #[test]
    fn corral_credentials_are_removed_and_backend_cookies_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-m"),
        );
        headers.insert("x-api-key", HeaderValue::from_static("sk-m"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; corral_proxy_session=abc"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("corral_proxy_session=def"),
        );
        clean_request_headers(&mut headers);
        assert!(!headers.contains_key(header::AUTHORIZATION));
        assert!(!headers.contains_key("x-api-key"));
        assert_eq!(headers[header::COOKIE], "theme=dark");
        let mut only_ours = HeaderMap::new();
        only_ours.insert(
            header::COOKIE,
            HeaderValue::from_static("corral_proxy_session=abc"),
        );
        clean_request_headers(&mut only_ours);
        assert!(!only_ours.contains_key(header::COOKIE));
    }

    #[test]
    fn hop_by_hop_and_cors_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        clean_response_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }
}

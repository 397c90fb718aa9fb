//! The HTTP server: accepts connections, serves `POST /v1/...` requests for ready instances on
//! the fast path (`fast`), and hands every other connection to hyper and the axum router from
//! the first request the fast path does not take.

mod fast;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::api::{self, AppState};
use crate::config::ConnectionLimits;
use fast::{FastPath, Outcome};

/// The largest request head either path reads; a longer one is answered 431 and the connection
/// closed. Browsers send a few KiB (cookies included); 64 KiB is what nginx allows by default
/// (four 16 KiB buffers with `large_client_header_buffers`).
pub(crate) const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Headers any request may have (hyper's default too); more are answered 431.
pub(crate) const MAX_REQUEST_HEADERS: usize = 100;

/// What a client over `server.max_connections` gets before its connection is closed, in the
/// management API's error shape.
fn too_many_connections() -> Vec<u8> {
    let body = r#"{"error":"too_many_connections","details":"server.max_connections is reached"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Which relays serve `/v1` requests for a ready instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relays {
    /// The fast path takes what it can and hands the rest to the router: what the engine runs.
    FastPathFirst,
    /// Every request goes to the router. Only code that links the library can choose this (no
    /// setting or flag reaches it): it exists so that tests can send the same request through
    /// both relays and compare the answers.
    RouterOnly,
}

/// Serves the API, the router and the UI on `listener` until `shutdown` resolves, then lets
/// every connection finish the request it is on and waits for them.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) {
    serve_with(listener, state, shutdown, Relays::FastPathFirst).await;
}

/// `serve`, with the relays for `/v1` chosen.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
    relays: Relays,
) {
    let limits = state.config.server.limits.clone();
    let relay = state.registry.relay();
    let fast = match relays {
        Relays::FastPathFirst => Some(Arc::new(FastPath::new(
            Arc::clone(&state.config),
            Arc::clone(&state.registry),
            relay.clone(),
            Arc::clone(&state.keys),
        ))),
        Relays::RouterOnly => None,
    };
    let app = api::router_with(state, relay);
    allow_descriptors(limits.max_connections);
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let refusal = too_many_connections();
    let (close_tx, close_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin (as axum does).
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Refused at once rather than queued: a queue would hold the socket (a file
            // descriptor) anyway. The answer fits the socket's empty send buffer, so this never
            // waits on the client.
            tracing::debug!("refusing a connection: server.max_connections is reached");
            let _ = stream.try_write(&refusal);
            continue;
        };
        // Streamed tokens are small writes: without TCP_NODELAY, Nagle holds some of them
        // back until the client's delayed ACK (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            fast.clone(),
            close_rx.clone(),
            limits.clone(),
            slot,
        ));
    }
    drop(listener);
    drop(close_rx);
    close_tx.send_replace(true);
    // Every connection holds a receiver until it ends.
    close_tx.closed().await;
}

/// Raises the soft limit on open files (1024 on many Linux desktops) toward the hard one, so
/// that `max_connections` sockets fit beside the backends' sockets and log files: past the soft
/// limit, accepting fails and new clients wait in the listen queue instead of being served or
/// refused. Go's runtime does the same at start.
fn allow_descriptors(max_connections: usize) {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        // Room for what is not a client: backends' sockets, pid and log files.
        let wanted = u64::try_from(max_connections)
            .unwrap_or(u64::MAX)
            .saturating_add(1024);
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return;
        };
        let raised = wanted.min(hard);
        if raised <= soft {
            return;
        }
        match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
            Ok(()) => tracing::debug!("open file limit raised from {soft} to {raised}"),
            Err(e) => tracing::warn!("cannot raise the open file limit from {soft}: {e}"),
        }
        if raised < wanted {
            tracing::warn!(
                "the open file limit ({raised}) is below server.max_connections + 1024: \
                 past it, connections wait instead of being served or refused"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

async fn connection(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    app: Router,
    fast: Option<Arc<FastPath>>,
    mut close: watch::Receiver<bool>,
    limits: ConnectionLimits,
    _slot: OwnedSemaphorePermit,
) {
    let read = match fast {
        Some(fast) => match fast.serve(&mut stream, Some(peer), &mut close).await {
            Outcome::Closed => return,
            Outcome::ToRouter(read) => read,
        },
        None => BytesMut::new(),
    };
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Prefixed {
        read,
        stream,
        activity: Arc::clone(&activity),
    });
    let service = Served {
        app,
        peer,
        activity: Arc::clone(&activity),
        body_idle: limits.body_idle_timeout,
    };
    let mut conn = pin!(hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_REQUEST_HEAD)
        .timer(TokioTimer::new())
        // hyper starts this timer when a connection becomes idle, not at the head's first
        // byte: it is only the backstop of the watch below, which tells the two apart.
        .header_read_timeout(limits.keep_alive_timeout + limits.head_timeout)
        .serve_connection(io, service)
        .with_upgrades());
    let mut closing = *close.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let mut watch = IdleWatch::new(&limits, &activity);
    let mut tick = tokio::time::interval(watch.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!("connection ended: {e}");
                }
                return;
            }
            changed = close.changed(), if !closing => {
                closing = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tick.tick() => {
                if watch.expired(&activity) {
                    // Idle past the keep-alive timeout, or a head that is not done in time: no
                    // request is in flight, so dropping the connection loses nothing.
                    return;
                }
            }
        }
    }
}

/// Closes a connection after an answer that ends it while the client may still be sending
/// (a head that was too large): the write side first, then what still comes is read and dropped
/// for a moment. Closing with unread bytes would reset the connection, and the client could lose
/// the answer before it read it.
pub(crate) async fn lingering_close(client: &mut TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if client.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 16 * 1024];
    let mut left: usize = 1024 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// What the router side of a connection did, for the deadlines between requests.
#[derive(Default)]
struct Activity {
    /// Requests whose answer has not been sent to the end.
    in_flight: AtomicUsize,
    /// Requests that reached the router.
    requests: AtomicU64,
    /// Reads from the client that returned bytes.
    reads: AtomicU64,
}

/// The keep-alive and head deadlines of a connection the router serves. hyper has no idle
/// timeout, and its head timeout runs from the end of the previous answer; this tells an idle
/// connection (nothing read since the last answer: `keep_alive_timeout`) from one whose next
/// head has begun (`head_timeout` from its first bytes). Neither runs while a request is in
/// flight: waiting for a backend, or streaming its answer, is never cut.
struct IdleWatch {
    tick: Duration,
    head_timeout: Duration,
    keep_alive_timeout: Duration,
    /// Since when no request is in flight, and the counters then.
    idle_since: Instant,
    requests: u64,
    reads: u64,
    /// When bytes of a next request were first seen.
    head_since: Option<Instant>,
}

impl IdleWatch {
    fn new(limits: &ConnectionLimits, activity: &Activity) -> Self {
        Self {
            // Fine enough that a deadline is kept to within a quarter of itself.
            tick: (limits.head_timeout.min(limits.keep_alive_timeout) / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
            head_timeout: limits.head_timeout,
            keep_alive_timeout: limits.keep_alive_timeout,
            idle_since: Instant::now(),
            requests: activity.requests.load(Ordering::Relaxed),
            reads: activity.reads.load(Ordering::Relaxed),
            head_since: None,
        }
    }

    /// Whether the connection is to be closed now.
    fn expired(&mut self, activity: &Activity) -> bool {
        let now = Instant::now();
        let requests = activity.requests.load(Ordering::Relaxed);
        let reads = activity.reads.load(Ordering::Relaxed);
        if activity.in_flight.load(Ordering::Relaxed) > 0 || requests != self.requests {
            self.idle_since = now;
            self.requests = requests;
            self.reads = reads;
            self.head_since = None;
            return false;
        }
        if reads != self.reads && self.head_since.is_none() {
            self.head_since = Some(now);
        }
        match self.head_since {
            Some(since) => now.duration_since(since) >= self.head_timeout,
            None => now.duration_since(self.idle_since) >= self.keep_alive_timeout,
        }
    }
}

/// The router, with each request counted in flight until its answer was sent and its body read
/// under the body idle timeout.
#[derive(Clone)]
struct Served {
    app: Router,
    /// The client, for the handlers that record or check it (`api::current_client`).
    peer: std::net::SocketAddr,
    activity: Arc<Activity>,
    body_idle: Duration,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Served {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.activity.requests.fetch_add(1, Ordering::Relaxed);
        // hyper bounds a head by its read buffer, which can hold more than the limit when a
        // head arrives in large reads: the limit is checked on what it parsed.
        if head_too_large(&request) {
            return Box::pin(std::future::ready(Ok(head_too_large_answer())));
        }
        let busy = Busy::enter(&self.activity);
        let body_idle = self.body_idle;
        let request: Request = request.map(|body| Body::new(IdleBody::new(body, body_idle)));
        let app = self.app.clone();
        let peer = self.peer;
        Box::pin(async move {
            let response = crate::api::answering(peer, app.oneshot(request)).await?;
            Ok(response.map(|body| Body::new(Tracked { body, _busy: busy })))
        })
    }
}

/// Whether a head hyper parsed is over `MAX_REQUEST_HEAD` bytes (as it was written, give or take
/// the spaces around header values) or `MAX_REQUEST_HEADERS` headers.
fn head_too_large<B>(request: &hyper::Request<B>) -> bool {
    let line = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |target| target.as_str().len())
        + " HTTP/1.1\r\n".len();
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    request.headers().len() > MAX_REQUEST_HEADERS || line + headers + 2 > MAX_REQUEST_HEAD
}

/// 431 for a head over the limits, closing the connection (in the management API's shape).
fn head_too_large_answer() -> Response {
    let mut answer = Response::new(Body::from(too_large_details()));
    *answer.status_mut() = axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    let headers = answer.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    answer
}

/// The body of a 431.
pub(crate) fn too_large_details() -> String {
    format!(
        r#"{{"error":"request_header_fields_too_large","details":"the request head is over {MAX_REQUEST_HEAD} bytes or {MAX_REQUEST_HEADERS} headers"}}"#
    )
}

/// One request in flight; counted out when dropped (answer sent, or the connection gone).
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body that keeps its request counted in flight until hyper has sent it.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client paused its request body longer than `server.limits.body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of the request body for {0:?}")]
pub struct BodyIdle(Duration);

/// A request body that fails when the client sends nothing of it for `idle` while it is being
/// read. The clock runs only while a reader waits on the client: a backend that is slow to take
/// the body (and so stops reading it) does not count against the client.
struct IdleBody {
    body: Incoming,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleBody {
    fn new(body: Incoming, idle: Duration) -> Self {
        Self {
            body,
            idle,
            timer: None,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection whose first bytes were already read by the fast path: they are read again
/// before the socket's.
struct Prefixed {
    read: BytesMut,
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            this.activity.reads.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        // Pending, EOF or an error is no sign of a request under way.
        if buf.filled().len() > before {
            this.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        read
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    #[test]
    fn the_open_file_limit_is_raised_for_the_connection_cap_as_far_as_allowed() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Start from the soft limit a desktop session gives (the other tests of this process
        // fit in it).
        let low = soft.min(hard).min(1024);
        setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
        super::allow_descriptors(2048);
        let (raised, same_hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(same_hard, hard);
        assert_eq!(raised, (2048 + 1024).min(hard));
        // Never lowered.
        super::allow_descriptors(1);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, raised);
        setrlimit(Resource::RLIMIT_NOFILE, soft.max(raised), hard).unwrap();
    }
}

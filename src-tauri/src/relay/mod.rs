//! The one relay between a client's request and a backend, whichever server parsed the request.
//!
//! Two servers take requests from clients: the fast path (`server::fast`), a byte-level codec
//! for the hottest route, and hyper with the axum router for everything else. Both hand the
//! relay the same things — a request head built by [`codec::request_head`] from a borrowed view
//! of the client's headers ([`codec::forwarded_headers`], which asks [`policy`]), a body, and a
//! way to tell whether the client left ([`Client`]) — and get back an [`Exchange`]: the
//! backend's answer head and its body as it arrives. What each server then does with it is its
//! own framing to its own client: the fast path writes the bytes on as they came, the hyper
//! adapter (`forward`) turns them into a response body.
//!
//! The relay owns what must not differ between the two: the pool of keep-alive connections, the
//! one retry (a request that never left a reused connection the backend had closed), the
//! parsing of the backend's answer and its framing, the header policy, and the typed error
//! ([`RelayError`]) each dialect renders. The request log ([`ExchangeObserver`]) watches the
//! exchange from either side.
//!
//! The seams follow pingora's `pingora-proxy`: policy (which instance, the key, the Host) runs
//! before the relay and is the caller's; the relay itself only moves a request and its answer.

pub(crate) mod chunked;
pub(crate) mod codec;
mod forward;
pub mod policy;
mod pool;

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::error::ApiError;
use crate::instances::InFlight;
use codec::{BodyState, Parsed, ResponseHead};
use pool::{Conn, Pool};

/// The largest answer head taken from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Watches one exchange pass through the relay without holding it up; dropped when the answer's
/// body ended or the client went away (so a guard inside it lives exactly as long as the
/// request).
pub trait ExchangeObserver: Send + 'static {
    /// The backend's status and content type, before the body.
    fn response(&mut self, _status: StatusCode, _content_type: &str) {}
    /// Each piece of the answer's body (its data, without the chunked framing), as it passes.
    fn data(&mut self, _chunk: &[u8]) {}
    /// The request could not be forwarded.
    fn failed(&mut self, _error: &RelayError) {}
}

impl ExchangeObserver for () {}

impl ExchangeObserver for InFlight {}

/// Why a request could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the path cannot be forwarded: {0}")]
    InvalidPath(String),
    #[error("the backend at {authority} did not answer: {message}")]
    Unreachable {
        authority: String,
        message: String,
        /// Some of the request reached the backend, which may have begun the work.
        request_left: bool,
    },
}

impl RelayError {
    /// The stable, machine-readable code, the same in every dialect.
    pub fn code(&self) -> &'static str {
        match self {
            RelayError::InvalidPath(_) => "invalid_path",
            RelayError::Unreachable { .. } => "upstream_unreachable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            RelayError::InvalidPath(_) => StatusCode::BAD_REQUEST,
            RelayError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether sending the request again cannot repeat work a backend began: only when none of
    /// it left. One that was written, even in part, is never sent twice: a second generation
    /// (or a second side effect of a route Corral does not know) is not the client's to pay for.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            RelayError::Unreachable {
                request_left: false,
                ..
            }
        )
    }

    fn unreachable(authority: &str, message: String, request_left: bool) -> Self {
        RelayError::Unreachable {
            authority: authority.to_owned(),
            message,
            request_left,
        }
    }
}

impl From<RelayError> for ApiError {
    fn from(error: RelayError) -> Self {
        ApiError::new(error.status(), error.code(), error.to_string())
    }
}

/// Why an exchange ended early.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The client closed its connection: the backend's work is to be cancelled, by closing the
    /// backend connection.
    ClientGone,
    Relay(RelayError),
}

/// How the relay tells that the client left while it waits on the backend (a long generation is
/// then cancelled).
pub(crate) trait Client {
    /// Resolves once the client is gone; pends for as long as it is there, or when its server
    /// cannot tell (hyper drops the exchange itself then).
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
}

/// A client whose server notices its leaving by itself.
pub(crate) struct Unwatched;

impl Client for Unwatched {
    async fn gone(&mut self) {
        std::future::pending().await
    }
}

/// What follows the request head.
pub(crate) enum Outgoing {
    /// Nothing, or a body already written at the end of the head.
    InHead,
    /// A body streamed after the head: by its length, or in chunks when it has none.
    Stream { body: Body, chunked: bool },
}

/// The relay: one pool of backend connections, shared by both servers.
#[derive(Clone, Default)]
pub struct Relay {
    pool: Arc<Pool>,
}

impl Relay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes the idle keep-alive connections to the backend at `authority`, before it is
    /// stopped: llama-server's HTTP server only notices its shutdown on an open keep-alive
    /// connection at its next idle check, which made every stop some 110 ms slower.
    pub fn close_idle(&self, authority: &str) {
        self.pool.forget(authority);
    }

    /// Sends `head` and `body` to the backend at `authority` and reads the answer's head.
    /// `to_head` says the request is a `HEAD` (its answer has no body). A reused connection the
    /// backend closed meanwhile fails before a byte of the request left it: the request then
    /// goes once more, on a new connection.
    pub(crate) async fn send(
        &self,
        authority: &str,
        head: &[u8],
        mut body: Outgoing,
        to_head: bool,
        client: &mut impl Client,
    ) -> Result<Exchange, Failure> {
        let mut fresh_only = false;
        loop {
            let (mut conn, reused) = match self.pool.checkout(authority, fresh_only) {
                Some(conn) => (conn, true),
                None => match Conn::open(authority).await {
                    Ok(conn) => (conn, false),
                    Err(message) => {
                        let error = RelayError::unreachable(authority, message, false);
                        return Err(Failure::Relay(error));
                    }
                },
            };
            let reusable = match write_request(&mut conn, head, &mut body).await {
                Ok(finished) => finished,
                Err((message, request_left)) => {
                    let error = RelayError::unreachable(authority, message, request_left);
                    if reused && error.retry_safe() {
                        fresh_only = true;
                        continue;
                    }
                    return Err(Failure::Relay(error));
                }
            };
            return match read_head(&mut conn, client, to_head).await {
                Ok(head) => Ok(Exchange::new(self, authority, conn, head, reusable)),
                Err(io) => Err(io.failure(authority)),
            };
        }
    }
}

/// Writes the request. `Ok(false)` when the backend answered before the body was all sent
/// (a refusal of the upload): its answer is read, and the connection is not reused. On failure,
/// whether any of it left.
async fn write_request(
    conn: &mut Conn,
    head: &[u8],
    body: &mut Outgoing,
) -> Result<bool, (String, bool)> {
    let (written, sent) = write_counted(&mut conn.stream, head).await;
    if let Err(e) = sent {
        return Err((e.to_string(), written > 0));
    }
    let Outgoing::Stream { body, chunked } = body else {
        return Ok(true);
    };
    let chunked = *chunked;
    let (mut read, mut write) = conn.stream.split();
    let upload = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the request body failed: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let written = if chunked {
                let size = format!("{:x}\r\n", data.len());
                let mut piece = Vec::with_capacity(size.len() + data.len() + 2);
                piece.extend_from_slice(size.as_bytes());
                piece.extend_from_slice(&data);
                piece.extend_from_slice(b"\r\n");
                write.write_all(&piece).await
            } else {
                write.write_all(&data).await
            };
            written.map_err(|e| e.to_string())?;
        }
        if chunked {
            write
                .write_all(b"0\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    let mut probe = [0u8; 1];
    tokio::select! {
        biased;
        uploaded = upload => uploaded.map(|()| true).map_err(|message| (message, true)),
        // The answer began first: the backend refused the body without reading it all.
        peeked = read.peek(&mut probe) => match peeked {
            Ok(n) if n > 0 => Ok(false),
            Ok(_) => Err(("connection closed before message completed".to_owned(), true)),
            Err(e) => Err((e.to_string(), true)),
        },
    }
}

/// Writes all of `message`; says how many bytes went out, also when the write failed.
async fn write_counted(stream: &mut TcpStream, message: &[u8]) -> (usize, std::io::Result<()>) {
    let mut written = 0;
    while written < message.len() {
        match stream.write(&message[written..]).await {
            Ok(0) => return (written, Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

/// What went wrong while reading from a backend, before the relay names it.
enum Io {
    ClientGone,
    /// The backend's connection failed or its answer is broken; the request had left.
    Backend(String),
}

impl Io {
    fn failure(self, authority: &str) -> Failure {
        match self {
            Io::ClientGone => Failure::ClientGone,
            Io::Backend(message) => {
                Failure::Relay(RelayError::unreachable(authority, message, true))
            }
        }
    }
}

/// Reads the backend's answer head (skipping 1xx answers) into the connection's buffer.
async fn read_head(
    conn: &mut Conn,
    client: &mut impl Client,
    to_head: bool,
) -> Result<ResponseHead, Io> {
    loop {
        if !conn.read.is_empty() {
            match codec::parse_response(&conn.read, to_head).map_err(Io::Backend)? {
                Parsed::Final(head) => {
                    let _head = conn.read.split_to(head.len);
                    return Ok(head);
                }
                Parsed::Interim(len) => {
                    let _interim = conn.read.split_to(len);
                    continue;
                }
                Parsed::Partial if conn.read.len() >= MAX_RESPONSE_HEAD => {
                    return Err(Io::Backend("the answer's head is too large".to_owned()))
                }
                Parsed::Partial => {}
            }
        }
        if read_more(conn, client).await? == 0 {
            // hyper's words for the same failure, which clients have seen from Corral before.
            return Err(Io::Backend(
                "connection closed before message completed".to_owned(),
            ));
        }
    }
}

/// Reads what the backend sent next, while watching for the client to leave.
async fn read_more(conn: &mut Conn, client: &mut impl Client) -> Result<usize, Io> {
    conn.reserve();
    tokio::select! {
        biased;
        read = conn.stream.read_buf(&mut conn.read) => read.map_err(|e| Io::Backend(e.to_string())),
        () = client.gone() => Err(Io::ClientGone),
    }
}

/// One request's answer on its way from a backend: its head, then its body as it arrives.
/// Dropping it before the end closes the backend connection, which is what cancels the
/// backend's work; read to the end, the connection goes back to the pool.
pub(crate) struct Exchange {
    pub(crate) head: ResponseHead,
    /// Until the body ended (then back in the pool, or closed).
    conn: Option<Conn>,
    body: BodyState,
    /// The connection may carry another request once this answer ended.
    reusable: bool,
    authority: Box<str>,
    pool: Arc<Pool>,
}

impl Exchange {
    fn new(relay: &Relay, authority: &str, conn: Conn, head: ResponseHead, sent: bool) -> Self {
        let reusable = sent && head.keep_alive && policy::reuse_after(&head.content_type);
        let mut exchange = Exchange {
            body: BodyState::new(head.framing),
            head,
            conn: Some(conn),
            reusable,
            authority: authority.into(),
            pool: Arc::clone(&relay.pool),
        };
        if matches!(exchange.body, BodyState::Empty) {
            exchange.finish();
        }
        exchange
    }

    /// The next bytes of the answer's body as the backend framed them, `None` once it ended;
    /// the body's data within them goes to `data`. An error means the answer was cut short:
    /// the client must see it end abruptly, not complete.
    pub(crate) async fn next(
        &mut self,
        client: &mut impl Client,
        mut data: impl FnMut(&[u8]),
    ) -> Result<Option<BytesMut>, Failure> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            if !conn.read.is_empty() {
                let (take, done) = match self.body.take(&conn.read, &mut data) {
                    Ok(taken) => taken,
                    Err(_) => (conn.read.len(), true),
                };
                if take < conn.read.len() {
                    // Bytes past the answer's end: the backend's framing cannot be trusted.
                    self.reusable = false;
                }
                let piece = conn.read.split_to(take);
                if done {
                    self.finish();
                }
                return Ok(Some(piece));
            }
            match read_more(conn, client).await {
                Ok(0) if self.body.ends_at_close() => {
                    self.conn = None;
                    return Ok(None);
                }
                Ok(0) => {
                    self.conn = None;
                    let message = "the backend closed the connection before the answer ended";
                    return Err(Io::Backend(message.to_owned()).failure(&self.authority));
                }
                Ok(_) => {}
                Err(io) => {
                    self.conn = None;
                    return Err(io.failure(&self.authority));
                }
            }
        }
    }

    /// The answer ended where its framing says: its connection may carry another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && !self.body.ends_at_close() {
                self.pool.checkin(&self.authority, conn);
            }
        }
    }

    /// The client connection must close after this answer: its end is the close (or could not
    /// be found), so the client can only tell it by the close.
    pub(crate) fn ends_at_close(&self) -> bool {
        self.body.ends_at_close()
    }
}

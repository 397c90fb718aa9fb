//! The fast path for the hottest route: a `POST /v1/...` with a JSON body for an instance that is
//! ready, relayed between the client's and a pooled backend connection as bytes, the way nginx
//! proxies, in the client connection's own task.
//!
//! Why not hyper and axum here: serving a request with them costs about as much CPU as the
//! backend's own answer, and a proxy built on them pays that twice (server and client side),
//! which held Corral to half of nginx's throughput. This path parses heads with `httparse` and
//! moves bodies without building requests, header maps or body streams.
//!
//! It only takes what it can do exactly like the router: anything else (another route or
//! method, a key in the query, CORS, an `Expect` other than `100-continue`, chunked or large
//! uploads, a refused Host or key, a model that is unknown, stopped, starting or draining, a body
//! without a `model`) is handed to hyper with the bytes read so far, and the router answers it
//! as before, errors included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at};

use super::chunked::Chunked;
use super::{MAX_REQUEST_HEAD, MAX_REQUEST_HEADERS};
use crate::api::auth::is_accepted;
use crate::api::body::is_json_media_type;
use crate::api::host::is_allowed;
use crate::api::openai::{requested_model, with_backend_model, OpenAiError, RequestLog};
use crate::config::Config;
use crate::instances::{Lease, Registry};
use crate::proxy::policy::{self, RequestHeader};
use crate::proxy::{CONNECT_TIMEOUT, MAX_IDLE, MAX_IDLE_PER_BACKEND};

/// The largest answer head taken from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Request bodies larger than this go to hyper, which streams them.
const MAX_BODY: usize = 1024 * 1024;

/// Headers a request on this path may have; more go to hyper.
const MAX_HEADERS: usize = 64;

/// Headers a backend's answer may have.
const MAX_RESPONSE_HEADERS: usize = 100;

/// What a client connection needs next.
pub(crate) enum Outcome {
    /// It was closed, or must be.
    Closed,
    /// A request this path does not take arrived: hyper serves the connection from here on,
    /// starting with these bytes.
    ToRouter(BytesMut),
}

/// Whether the client connection can carry another request after an exchange.
enum Next {
    KeepAlive,
    Close,
}

pub(crate) struct FastPath {
    config: Arc<Config>,
    registry: Arc<Registry>,
    pool: Pool,
}

impl FastPath {
    pub(crate) fn new(config: Arc<Config>, registry: Arc<Registry>) -> Self {
        Self {
            config,
            registry,
            pool: Pool::default(),
        }
    }

    /// Serves requests on `client` while they are this path's; `close` ends the connection at
    /// the next request boundary (graceful shutdown).
    pub(crate) async fn serve(
        &self,
        client: &mut TcpStream,
        close: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let limits = &self.config.server.limits;
        let mut buf = BytesMut::with_capacity(8 * 1024);
        // The backend's answers pass through here; kept for the connection's next requests.
        let mut backend_read = BytesMut::new();
        // A new connection has the head timeout from its opening to send its first head: one
        // that opens and sends nothing (or trickles) is not idle, it is slow.
        let mut head_deadline = Some(tokio::time::Instant::now() + limits.head_timeout);
        loop {
            // How much of `buf` was searched for the head's end: each read is searched once,
            // and the head parsed once it is whole, so a head trickled byte by byte costs
            // linear time, not a parse per byte.
            let mut searched: usize = 0;
            let request = loop {
                if !buf.is_empty() {
                    let ended = has_head_end(&buf[searched.saturating_sub(2)..]);
                    searched = buf.len();
                    if ended {
                        match parse_request(&buf, &self.config) {
                            Head::Fast(request) => break request,
                            Head::Other => return Outcome::ToRouter(buf),
                            Head::TooLarge => return head_too_large(client).await,
                            // Blank lines before a request line: wait for the head's end.
                            Head::Partial => {}
                        }
                    } else if buf.len() >= MAX_REQUEST_HEAD {
                        return head_too_large(client).await;
                    }
                }
                let read = if buf.is_empty() {
                    if *close.borrow() {
                        return Outcome::Closed;
                    }
                    let deadline = head_deadline
                        .unwrap_or_else(|| tokio::time::Instant::now() + limits.keep_alive_timeout);
                    tokio::select! {
                        read = timeout_at(deadline, client.read_buf(&mut buf)) => read,
                        _ = close.changed() => return Outcome::Closed,
                    }
                } else {
                    // The head began: it has the head timeout from its first bytes.
                    let deadline = *head_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + limits.head_timeout);
                    timeout_at(deadline, client.read_buf(&mut buf)).await
                };
                // A timeout closes without an answer, as nginx does: the client is too slow
                // or gone, and a reply would only wait on it.
                if !matches!(read, Ok(Ok(n)) if n > 0) {
                    return Outcome::Closed;
                }
            };
            head_deadline = None;
            let total = request.head_len + request.body_len;
            let sent_continue = request.expects_continue && buf.len() < total;
            if sent_continue
                && client
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                return Outcome::Closed;
            }
            while buf.len() < total {
                buf.reserve(total - buf.len());
                let read = timeout(limits.body_idle_timeout, client.read_buf(&mut buf)).await;
                if !matches!(read, Ok(Ok(n)) if n > 0) {
                    return Outcome::Closed;
                }
            }
            let Some(lease) = self.lease(&buf[request.head_len..total]) else {
                if sent_continue {
                    // Else hyper sends its own `100 Continue` before the final answer.
                    return Outcome::ToRouter(without_expect(buf, request.head_len));
                }
                return Outcome::ToRouter(buf);
            };
            let message = buf.split_to(total).freeze();
            let body = message.slice(request.head_len..);
            if let Next::Close = self
                .exchange(client, &mut backend_read, request, body, lease)
                .await
            {
                return Outcome::Closed;
            }
            if *close.borrow() {
                return Outcome::Closed;
            }
        }
    }

    /// The lease for the model `body` names, if its instance can answer now.
    fn lease(&self, body: &[u8]) -> Option<Lease> {
        let model = requested_model(body)??;
        if model.is_empty() {
            return None;
        }
        self.registry.lease_ready(&model)
    }

    /// Sends one request to the leased instance and relays its answer.
    async fn exchange(
        &self,
        client: &mut TcpStream,
        backend_read: &mut BytesMut,
        request: Request,
        body: Bytes,
        lease: Lease,
    ) -> Next {
        let started = Instant::now();
        lease.guard.count_request();
        let mut log = RequestLog::new(lease.guard, &request.path, started);
        let body = match &lease.backend_model {
            None => body,
            Some(backend_model) => match with_backend_model(&body, backend_model) {
                Ok(body) => body,
                Err(error) => return refuse(client, &mut log, error).await,
            },
        };
        let authority = lease.upstream.authority;
        let mut message = Vec::with_capacity(request.headers.len() + body.len() + 128);
        message.extend_from_slice(b"POST ");
        message.extend_from_slice(request.path.as_bytes());
        message.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        message.extend_from_slice(authority.as_bytes());
        message.extend_from_slice(b"\r\ncontent-length: ");
        message.extend_from_slice(body.len().to_string().as_bytes());
        message.extend_from_slice(b"\r\n");
        if let Some(credential) = &lease.upstream.credential {
            message.extend_from_slice(b"authorization: Bearer ");
            message.extend_from_slice(credential.expose().as_bytes());
            message.extend_from_slice(b"\r\n");
        }
        message.extend_from_slice(&request.headers);
        message.extend_from_slice(b"\r\n");
        message.extend_from_slice(&body);

        let mut watch_client = true;
        // A pooled connection the backend closed meanwhile may fail before a byte of the
        // request left: the request then goes once more, on a new connection. One that failed
        // after some of it was written is not sent again, as the router does: the backend may
        // have read it and begun the work, and a second generation (or a second side effect of
        // a route Corral does not know) is not the client's to pay for.
        let mut fresh_only = false;
        let (mut upstream, head) = loop {
            let (mut upstream, reused) = match self.pool.checkout(&authority, fresh_only) {
                Some(upstream) => (upstream, true),
                None => match connect(&authority).await {
                    Ok(upstream) => (upstream, false),
                    Err(message) => {
                        return backend_unreachable(client, &mut log, &authority, message).await
                    }
                },
            };
            backend_read.clear();
            let (written, sent) = write_counted(&mut upstream, &message).await;
            let head = match sent {
                Ok(()) => read_head(&mut upstream, backend_read, client, &mut watch_client).await,
                Err(e) => Err(Failure::Backend(e.to_string())),
            };
            match head {
                Ok(head) => break (upstream, head),
                // Dropping the connection is what cancels the backend's work.
                Err(Failure::ClientGone) => return Next::Close,
                Err(Failure::Backend(_)) if reused && written == 0 => fresh_only = true,
                Err(Failure::Backend(message)) => {
                    return backend_unreachable(client, &mut log, &authority, message).await
                }
            }
        };

        log.answered(head.status, &head.content_type);
        backend_read.advance(head.len);
        let mut out = head.client_head;
        let mut body = Body::new(head.framing);
        let mut reusable = head.keep_alive;
        loop {
            let (take, done) = match body.take(backend_read, &mut log) {
                Ok(taken) => taken,
                Err(()) => (backend_read.len(), true),
            };
            if take < backend_read.len() {
                // Bytes past the answer's end: the backend's framing cannot be trusted.
                reusable = false;
            }
            // The head goes out with the first body bytes, in one write.
            let written = if out.is_empty() {
                client.write_all(&backend_read[..take]).await
            } else {
                out.extend_from_slice(&backend_read[..take]);
                let written = client.write_all(&out).await;
                out = Vec::new();
                written
            };
            backend_read.clear();
            if written.is_err() {
                return Next::Close;
            }
            if done {
                break;
            }
            match read_more(&mut upstream, backend_read, client, &mut watch_client).await {
                Ok(0) if body.ends_at_close() => break,
                Ok(0) | Err(Failure::Backend(_)) => {
                    // Cut short: the client must see the answer end abruptly, not complete.
                    return Next::Close;
                }
                Ok(_) => {}
                Err(Failure::ClientGone) => return Next::Close,
            }
        }
        if body.ends_at_close() {
            return Next::Close;
        }
        if reusable && policy::reuse_after(&head.content_type) {
            self.pool.checkin(&authority, upstream);
        }
        Next::KeepAlive
    }
}

/// A request head this path takes.
struct Request {
    head_len: usize,
    body_len: usize,
    path: String,
    /// The headers to forward, as `name: value\r\n` lines (hop-by-hop ones left out,
    /// `x-forwarded-*` and the content type added).
    headers: Vec<u8>,
    /// The client waits for `100 Continue` before it sends the body.
    expects_continue: bool,
}

enum Head {
    Partial,
    /// Not this path's: hyper takes it.
    Other,
    /// Longer than `MAX_REQUEST_HEAD`, or more than `MAX_REQUEST_HEADERS` headers: 431.
    TooLarge,
    Fast(Request),
}

fn parse_request(buf: &[u8], config: &Config) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > MAX_REQUEST_HEAD => return Head::TooLarge,
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
            return match httparse::Request::new(&mut headers).parse(buf) {
                Err(httparse::Error::TooManyHeaders) => Head::TooLarge,
                Ok(httparse::Status::Complete(len)) if len > MAX_REQUEST_HEAD => Head::TooLarge,
                _ => Head::Other,
            };
        }
        Err(_) => return Head::Other,
    };
    let (Some("POST"), Some(path), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Head::Other;
    };
    // `/v1/models` is not routed by body; a key in the query is the auth middleware's to read.
    if !path.starts_with("/v1/")
        || path.len() == "/v1/".len()
        || path.starts_with("/v1/models")
        || path.contains("key")
    {
        return Head::Other;
    }
    let mut body_len = None;
    let mut host = None;
    let mut bearer = None;
    let mut api_key = None;
    let mut expects_continue = false;
    let mut declares_json = false;
    let mut forwarded = Vec::with_capacity(512);
    let mut cookies: Vec<&str> = Vec::new();
    for header in parsed.headers.iter() {
        let name = header.name;
        let is = |other: &str| name.eq_ignore_ascii_case(other);
        if is("content-length") {
            let length = std::str::from_utf8(header.value)
                .ok()
                .filter(|value| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|value| value.parse::<usize>().ok());
            match (body_len, length) {
                (None, Some(length)) => body_len = Some(length),
                _ => return Head::Other,
            }
            continue;
        }
        if is("host") {
            // The first, as the router reads it.
            host = host.or(Some(header.value));
            continue;
        }
        if is("connection") {
            // Only the default: `close` and named hop-by-hop headers are hyper's to honour.
            if !header.value.eq_ignore_ascii_case(b"keep-alive") {
                return Head::Other;
            }
            continue;
        }
        if is("expect") {
            // curl asks before sending a larger body; other expectations are hyper's to refuse.
            if !header.value.eq_ignore_ascii_case(b"100-continue") {
                return Head::Other;
            }
            expects_continue = true;
            continue;
        }
        if is("content-type") {
            // A body not declared as JSON is the router's to refuse (415), the one kind of
            // request a web page may send anywhere without a CORS preflight.
            if declares_json || !is_json_media_type(header.value) {
                return Head::Other;
            }
            declares_json = true;
            continue;
        }
        // A streamed upload, a protocol switch and a web page's request (CORS) are hyper's.
        if ["transfer-encoding", "upgrade", "origin"]
            .into_iter()
            .any(is)
        {
            return Head::Other;
        }
        match policy::request_header(name) {
            RequestHeader::Forward => {}
            // `Host` was read above; Corral writes its own forwarding headers below.
            RequestHeader::HopByHop | RequestHeader::SetByCorral => continue,
            RequestHeader::ClientCredential => {
                if is("authorization") {
                    bearer = bearer.or(header.value.strip_prefix(b"Bearer "));
                } else {
                    api_key = api_key.or(Some(header.value));
                }
                continue;
            }
            RequestHeader::Cookie => {
                cookies.extend(std::str::from_utf8(header.value).ok());
                continue;
            }
        }
        forwarded.extend_from_slice(name.as_bytes());
        forwarded.extend_from_slice(b": ");
        forwarded.extend_from_slice(header.value);
        forwarded.extend_from_slice(b"\r\n");
    }
    if let Some(cookie) = policy::backend_cookies(cookies) {
        forwarded.extend_from_slice(b"cookie: ");
        forwarded.extend_from_slice(cookie.as_bytes());
        forwarded.extend_from_slice(b"\r\n");
    }
    let Some(body_len) = body_len else {
        return Head::Other;
    };
    if !declares_json {
        return Head::Other;
    }
    if body_len > MAX_BODY.min(config.server.max_inference_body_bytes) {
        return Head::Other;
    }
    let auth = &config.auth;
    if auth.require_inference_auth {
        let accepted = [&auth.inference_keys, &auth.management_keys];
        if !bearer
            .or(api_key)
            .is_some_and(|key| is_accepted(key, &accepted))
        {
            return Head::Other;
        }
    }
    if let Some(host) = host {
        match std::str::from_utf8(host) {
            Ok(name) if is_allowed(config, name) => {
                forwarded.extend_from_slice(b"x-forwarded-host: ");
                forwarded.extend_from_slice(host);
                forwarded.extend_from_slice(b"\r\n");
            }
            _ => return Head::Other,
        }
    }
    forwarded.extend_from_slice(b"x-forwarded-proto: http\r\ncontent-type: application/json\r\n");
    Head::Fast(Request {
        head_len,
        body_len,
        path: path.to_owned(),
        headers: forwarded,
        expects_continue,
    })
}

/// Whether `bytes` hold the blank line that ends a head (CRLF or bare LF line ends, as httparse
/// takes them).
fn has_head_end(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'\n')
        .any(|(at, _)| match bytes.get(at + 1) {
            Some(b'\n') => true,
            Some(b'\r') => bytes.get(at + 2) == Some(&b'\n'),
            _ => false,
        })
}

/// Answers a head over the limits with 431 and closes the connection.
async fn head_too_large(client: &mut TcpStream) -> Outcome {
    let body = super::too_large_details();
    let answer = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if client.write_all(answer.as_bytes()).await.is_ok() {
        super::lingering_close(client).await;
    }
    Outcome::Closed
}

/// `buf` with the `Expect` header lines taken out of the request head that ends at `head_len`.
fn without_expect(buf: BytesMut, head_len: usize) -> BytesMut {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(
        parsed.parse(&buf[..head_len]),
        Ok(httparse::Status::Complete(_))
    ) {
        return buf;
    }
    let start = buf.as_ptr() as usize;
    let lines: Vec<(usize, usize)> = parsed
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("expect"))
        .filter_map(|header| {
            let from = header.name.as_ptr() as usize - start;
            let value_end = header.value.as_ptr() as usize - start + header.value.len();
            let newline = buf[value_end..head_len].iter().position(|&b| b == b'\n')?;
            Some((from, value_end + newline + 1))
        })
        .collect();
    if lines.is_empty() {
        return buf;
    }
    let mut kept = BytesMut::with_capacity(buf.len());
    let mut at = 0;
    for (from, to) in lines {
        kept.extend_from_slice(&buf[at..from]);
        at = to;
    }
    kept.extend_from_slice(&buf[at..]);
    kept
}

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunks: the body ends when the backend closes the connection.
    UntilClose,
}

/// The backend's answer head, and the one the client gets.
struct ResponseHead {
    len: usize,
    status: StatusCode,
    content_type: String,
    framing: Framing,
    /// The backend connection can carry another request after this answer.
    keep_alive: bool,
    client_head: Vec<u8>,
}

enum Parsed {
    Partial,
    /// A 1xx answer of `len` bytes, which a client that did not ask for one does not get.
    Interim(usize),
    Final(ResponseHead),
}

fn parse_response(buf: &[u8]) -> Result<Parsed, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(format!("invalid answer: {e}")),
    };
    let (Some(code), Some(version)) = (parsed.code, parsed.version) else {
        return Err("invalid answer".to_owned());
    };
    let status = StatusCode::from_u16(code).map_err(|e| format!("invalid answer: {e}"))?;
    if status.is_informational() {
        if code == 101 {
            return Err("the backend switched protocols unasked".to_owned());
        }
        return Ok(Parsed::Interim(len));
    }
    let token_in = |value: &[u8], token: &str| {
        value
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    let mut length = None;
    let mut chunked = false;
    let mut close = version == 0;
    let mut content_type = String::new();
    let mut named = Vec::new();
    for header in parsed.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .ok_or("invalid Content-Length in the answer")?;
            if length.is_some_and(|length| length != value) {
                return Err("conflicting Content-Length in the answer".to_owned());
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked is always the last coding when it applies.
            chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                length = None;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            close |= token_in(header.value, "close");
            named.extend(
                header
                    .value
                    .split(|&b| b == b',')
                    .map(|item| item.trim_ascii().to_ascii_lowercase()),
            );
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = String::from_utf8_lossy(header.value).into_owned();
        }
    }
    let framing = if code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        }
    };

    let mut client_head = Vec::with_capacity(len + 64);
    client_head.extend_from_slice(b"HTTP/1.1 ");
    client_head.extend_from_slice(status.as_str().as_bytes());
    client_head.push(b' ');
    client_head.extend_from_slice(parsed.reason.unwrap_or_default().as_bytes());
    client_head.extend_from_slice(b"\r\n");
    for header in parsed.headers.iter() {
        let name = header.name;
        let is = |other: &str| name.eq_ignore_ascii_case(other);
        // The body goes on as it came, so its framing headers do too.
        let dropped = !policy::response_header_kept(name)
            || named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            || (is("transfer-encoding") && framing != Framing::Chunked)
            || (is("content-length") && framing == Framing::Chunked);
        if dropped {
            continue;
        }
        client_head.extend_from_slice(header.name.as_bytes());
        client_head.extend_from_slice(b": ");
        client_head.extend_from_slice(header.value);
        client_head.extend_from_slice(b"\r\n");
    }
    if framing == Framing::UntilClose {
        client_head.extend_from_slice(b"connection: close\r\n");
    }
    client_head.extend_from_slice(b"\r\n");
    Ok(Parsed::Final(ResponseHead {
        len,
        status,
        content_type,
        framing,
        keep_alive: !close && framing != Framing::UntilClose,
        client_head,
    }))
}

/// Where the relay is in the answer's body.
enum Body {
    Empty,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    /// The chunked framing broke: relay what came and stop.
    Broken,
}

impl Body {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Body::Empty,
            Framing::Length(length) => Body::Length(length),
            Framing::Chunked => Body::Chunked(Chunked::default()),
            Framing::UntilClose => Body::UntilClose,
        }
    }

    /// How many of `bytes` belong to the body, and whether it ended with them. The body's data
    /// goes to `log` for the token counts.
    fn take(&mut self, bytes: &[u8], log: &mut RequestLog) -> Result<(usize, bool), ()> {
        match self {
            Body::Empty => Ok((0, true)),
            Body::Length(left) => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                log.body(&bytes[..take]);
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            Body::Chunked(chunked) => match chunked.feed(bytes, |data| log.body(data)) {
                Ok(Some(end)) => Ok((end, true)),
                Ok(None) => Ok((bytes.len(), false)),
                Err(_) => {
                    *self = Body::Broken;
                    Err(())
                }
            },
            Body::UntilClose => {
                log.body(bytes);
                Ok((bytes.len(), false))
            }
            Body::Broken => Err(()),
        }
    }

    /// The connections end with this answer: its end is the close (or could not be found).
    fn ends_at_close(&self) -> bool {
        matches!(self, Body::UntilClose | Body::Broken)
    }
}

enum Failure {
    /// The client closed its connection: the backend's work is to be cancelled.
    ClientGone,
    Backend(String),
}

/// Reads the backend's answer head (skipping 1xx answers) into `backend_read`.
async fn read_head(
    upstream: &mut TcpStream,
    backend_read: &mut BytesMut,
    client: &TcpStream,
    watch_client: &mut bool,
) -> Result<ResponseHead, Failure> {
    loop {
        if !backend_read.is_empty() {
            match parse_response(backend_read).map_err(Failure::Backend)? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Interim(len) => {
                    backend_read.advance(len);
                    continue;
                }
                Parsed::Partial if backend_read.len() >= MAX_RESPONSE_HEAD => {
                    return Err(Failure::Backend(
                        "the answer's head is too large".to_owned(),
                    ))
                }
                Parsed::Partial => {}
            }
        }
        match read_more(upstream, backend_read, client, watch_client).await? {
            0 => {
                // hyper's words for the same failure, so that the 502 reads the same whichever
                // relay carried the request.
                return Err(Failure::Backend(
                    "connection closed before message completed".to_owned(),
                ));
            }
            _ => continue,
        }
    }
}

/// Reads what the backend sent next, while watching for the client to leave (a long
/// generation is cancelled then, as the router does). Pipelined bytes from the client end the
/// watch: they stay in the socket for the next request.
async fn read_more(
    upstream: &mut TcpStream,
    backend_read: &mut BytesMut,
    client: &TcpStream,
    watch_client: &mut bool,
) -> Result<usize, Failure> {
    backend_read.reserve(16 * 1024);
    let backend = |e: std::io::Error| Failure::Backend(e.to_string());
    if !*watch_client {
        return upstream.read_buf(backend_read).await.map_err(backend);
    }
    let mut probe = [0u8; 1];
    tokio::select! {
        biased;
        read = upstream.read_buf(backend_read) => read.map_err(backend),
        peeked = client.peek(&mut probe) => match peeked {
            Ok(0) | Err(_) => Err(Failure::ClientGone),
            Ok(_) => {
                *watch_client = false;
                upstream.read_buf(backend_read).await.map_err(backend)
            }
        },
    }
}

/// Writes all of `message`; says how many bytes went out, also when the write failed.
async fn write_counted(upstream: &mut TcpStream, message: &[u8]) -> (usize, std::io::Result<()>) {
    let mut written = 0;
    while written < message.len() {
        match upstream.write(&message[written..]).await {
            Ok(0) => return (written, Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

async fn connect(authority: &str) -> Result<TcpStream, String> {
    let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    };
    // Tokens of a stream go out one small write at a time: don't let Nagle hold them back.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// 502 in OpenAI's shape, as the router answers an unreachable backend.
async fn backend_unreachable(
    client: &mut TcpStream,
    log: &mut RequestLog,
    authority: &str,
    message: String,
) -> Next {
    let error = crate::proxy::ProxyError::Unreachable {
        authority: authority.to_owned(),
        message,
    };
    refuse(client, log, error.into()).await
}

async fn refuse(client: &mut TcpStream, log: &mut RequestLog, error: OpenAiError) -> Next {
    log.refused(error.status);
    let status = error.status;
    let Ok(body) = serde_json::to_vec(&error.body()) else {
        return Next::Close;
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    match client.write_all(&out).await {
        Ok(()) => Next::KeepAlive,
        Err(_) => Next::Close,
    }
}

/// A pooled connection and when it went back to the pool.
type Idle = (TcpStream, Instant);

/// Idle keep-alive connections by backend address, most recently used last.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<Box<str>, Vec<Idle>>>,
}

impl Pool {
    /// An idle connection that is still open; none when `fresh_only`.
    fn checkout(&self, authority: &str, fresh_only: bool) -> Option<TcpStream> {
        let mut idle = lock(&self.idle);
        let conns = idle.get_mut(authority)?;
        if fresh_only {
            // The backend closed one: it likely closed all (it restarted or timed them out).
            conns.clear();
            return None;
        }
        while let Some((conn, since)) = conns.pop() {
            // Backends close idle keep-alive connections after a few seconds (llama-server and
            // uvicorn after 5): older ones are dropped rather than raced against that close.
            if since.elapsed() >= MAX_IDLE {
                continue;
            }
            // An idle connection has nothing to read: EOF or stray bytes mean it is done.
            let mut probe = [0u8; 1];
            match conn.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
        None
    }

    fn checkin(&self, authority: &str, conn: TcpStream) {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        // Expired connections of every backend go here, so that one that stopped (its
        // instance stopped or moved) does not keep closed sockets around.
        idle.retain(|_, conns| {
            conns.retain(|(_, since)| now.duration_since(*since) < MAX_IDLE);
            !conns.is_empty()
        });
        match idle.get_mut(authority) {
            Some(conns) if conns.len() >= MAX_IDLE_PER_BACKEND => {}
            Some(conns) => conns.push((conn, now)),
            None => {
                idle.insert(authority.into(), vec![(conn, now)]);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The pool holds no invariant a panic could break halfway: keep using it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config(keys: &[&str]) -> Config {
        let mut config = Config::with_data_dir(PathBuf::from("/data"));
        config.auth.require_inference_auth = !keys.is_empty();
        config.auth.inference_keys = keys.iter().map(|key| (*key).to_owned()).collect();
        config
    }

    const CHAT: &str = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:8080\r\n\
        Authorization: Bearer sk-1\r\nContent-Type: application/json\r\n\
        Content-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
        X-Request-Id: 7\r\nX-Forwarded-Host: evil\r\n\r\n{}";

    fn fast(head: &str, config: &Config) -> Request {
        match parse_request(head.as_bytes(), config) {
            Head::Fast(request) => request,
            Head::Partial => panic!("partial: {head}"),
            Head::Other => panic!("handed off: {head}"),
            Head::TooLarge => panic!("too large: {head}"),
        }
    }

    #[test]
    fn a_handed_off_request_loses_only_its_expect_lines() {
        let head = "POST /v1/x HTTP/1.1\r\nexpect:  100-continue \r\nHost: h\r\n\
            EXPECT: 100-continue\r\nContent-Length: 2\r\n\r\n";
        let buf = BytesMut::from(format!("{head}{{}}GET / HTTP/1.1\r\n").as_bytes());
        let kept = without_expect(buf, head.len());
        assert_eq!(
            std::str::from_utf8(&kept).unwrap(),
            "POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n"
        );
        let unchanged = BytesMut::from(CHAT.as_bytes());
        assert_eq!(without_expect(unchanged.clone(), CHAT.len() - 2), unchanged);
    }

    #[test]
    fn a_routed_request_is_taken_with_its_headers_cleaned_for_the_backend() {
        let request = fast(CHAT, &config(&["sk-1"]));
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!((request.head_len, request.body_len), (CHAT.len() - 2, 2));
        assert!(!request.expects_continue);
        assert_eq!(
            String::from_utf8(request.headers).unwrap(),
            "X-Request-Id: 7\r\n\
             x-forwarded-host: localhost:8080\r\nx-forwarded-proto: http\r\n\
             content-type: application/json\r\n"
        );
        let partial = &CHAT[..40];
        assert!(matches!(
            parse_request(partial.as_bytes(), &config(&[])),
            Head::Partial
        ));
        let curl = CHAT.replace("TE: trailers", "Expect: 100-continue");
        assert!(fast(&curl, &config(&[])).expects_continue);
    }

    #[test]
    fn what_the_router_must_answer_is_handed_off() {
        let other = |head: String, config: &Config| {
            assert!(
                matches!(parse_request(head.as_bytes(), config), Head::Other),
                "taken: {head}"
            );
        };
        let open = config(&[]);
        for (from, to) in [
            ("POST /v1/chat", "GET /v1/chat"),
            ("/v1/chat/completions", "/v1/models"),
            ("/v1/chat/completions", "/v1/"),
            ("/v1/chat/completions", "/api/v1/instances/a/proxy/x"),
            ("/v1/chat/completions", "/v1/chat/completions?api_key=sk-1"),
            ("HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost"),
            ("Host: localhost:8080", "Host: rebind.example"),
            ("Connection: keep-alive", "Connection: close"),
            ("Content-Length: 2", "Transfer-Encoding: chunked"),
            (
                "Content-Length: 2",
                "Content-Length: 2\r\nContent-Length: 3",
            ),
            ("Content-Length: 2", "Content-Length: +2"),
            ("Content-Length: 2", "Content-Length: 99999999"),
            ("TE: trailers", "Expect: something-else"),
            ("TE: trailers", "Origin: https://app.example"),
            ("TE: trailers", "Upgrade: websocket"),
            // A body not declared as JSON is the router's to refuse with 415.
            ("Content-Type: application/json", "Content-Type: text/plain"),
            ("Content-Type: application/json", "X-Other: 1"),
            (
                "Content-Type: application/json",
                "Content-Type: application/json\r\nContent-Type: text/plain",
            ),
        ] {
            other(CHAT.replace(from, to), &open);
        }
        other(CHAT.replace("Content-Length: 2", "X-Other: 1"), &open);
        // A wrong or missing key is the auth middleware's to refuse.
        other(CHAT.to_owned(), &config(&["sk-2"]));
        other(
            CHAT.replace("Authorization: Bearer sk-1", "Authorization: Basic sk-1"),
            &config(&["sk-1"]),
        );
        let by_header = CHAT.replace("Authorization: Bearer", "X-Api-Key:");
        fast(&by_header, &config(&["sk-1"]));
        let charset = CHAT.replace("application/json", "application/json; charset=utf-8");
        fast(&charset, &open);
    }

    fn answer(head: &str) -> ResponseHead {
        match parse_response(head.as_bytes()).unwrap() {
            Parsed::Final(head) => head,
            _ => panic!("not a final answer: {head}"),
        }
    }

    #[test]
    fn the_answer_head_loses_hop_by_hop_and_cors_headers_and_keeps_its_framing() {
        let head = answer(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\
             Content-Length: 9\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             Access-Control-Allow-Origin: *\r\nX-Kept: yes\r\n\r\ndata",
        );
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.content_type, "text/event-stream");
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.keep_alive);
        assert_eq!(
            String::from_utf8(head.client_head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
             Transfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n"
        );

        let sized = answer("HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(sized.framing, Framing::Length(5));
        let closing = answer("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(closing.framing, Framing::Empty);
        assert!(!closing.keep_alive);
        let unframed = answer("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n");
        assert_eq!(unframed.framing, Framing::UntilClose);
        assert!(!unframed.keep_alive);
        assert!(String::from_utf8(unframed.client_head)
            .unwrap()
            .ends_with("connection: close\r\n\r\n"));
        assert_eq!(
            answer("HTTP/1.1 204 No Content\r\n\r\n").framing,
            Framing::Empty
        );

        assert!(matches!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
            Ok(Parsed::Interim(25))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n"),
            Ok(Parsed::Partial)
        ));
        for broken in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse_response(broken).is_err());
        }
    }
}

#[cfg(test)]
#[path = "fast_proptests.rs"]
mod proptests;

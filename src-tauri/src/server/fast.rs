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

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at};

use super::{MAX_REQUEST_HEAD, MAX_REQUEST_HEADERS};
use crate::access::{self, Caller, KeyCheck, KeyStore};
use crate::api::auth::{header_key, is_accepted};
use crate::api::body::is_json_media_type;
use crate::api::host::is_allowed;
use crate::api::openai::{requested_model, with_backend_model, OpenAiError, RequestLog};
use crate::config::Config;
use crate::instances::{Lease, Registry};
use crate::relay::codec::{self, RequestFraming};
use crate::relay::{Client, ExchangeObserver, Failure, Outgoing, Relay};

/// Request bodies larger than this go to hyper, which streams them.
const MAX_BODY: usize = 1024 * 1024;

/// Headers a request on this path may have; more go to hyper.
const MAX_HEADERS: usize = 64;

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
    relay: Relay,
    keys: Arc<KeyStore>,
}

impl FastPath {
    /// `relay` is the router's too: one pool of backend connections for both.
    pub(crate) fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        relay: Relay,
        keys: Arc<KeyStore>,
    ) -> Self {
        Self {
            config,
            registry,
            relay,
            keys,
        }
    }

    /// Serves requests on `client` while they are this path's; `close` ends the connection at
    /// the next request boundary (graceful shutdown).
    pub(crate) async fn serve(
        &self,
        client: &mut TcpStream,
        peer: Option<std::net::SocketAddr>,
        close: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let limits = &self.config.server.limits;
        let mut buf = BytesMut::with_capacity(8 * 1024);
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
                        match parse_request(&buf, &self.config, Some(&self.keys)) {
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
            let Some(lease) = self.lease(&buf[request.head_len..total], &request.caller) else {
                if sent_continue {
                    // Else hyper sends its own `100 Continue` before the final answer.
                    return Outcome::ToRouter(without_expect(buf, request.head_len));
                }
                return Outcome::ToRouter(buf);
            };
            let message = buf.split_to(total).freeze();
            let body = message.slice(request.head_len..);
            if let Next::Close = self.exchange(client, peer, request, body, lease).await {
                return Outcome::Closed;
            }
            if *close.borrow() {
                return Outcome::Closed;
            }
        }
    }

    /// The lease for the model `body` names, if its instance can answer now and `caller` may
    /// use it (the router refuses it otherwise).
    fn lease(&self, body: &[u8], caller: &Caller) -> Option<Lease> {
        let model = requested_model(body)??;
        if model.is_empty() {
            return None;
        }
        self.registry
            .lease_ready(&model)
            .filter(|lease| caller.may_use(lease.guard.instance()))
    }

    /// Sends one request to the leased instance and relays its answer.
    async fn exchange(
        &self,
        client: &mut TcpStream,
        peer: Option<std::net::SocketAddr>,
        request: Request,
        body: Bytes,
        lease: Lease,
    ) -> Next {
        let started = Instant::now();
        lease.guard.count_request();
        let key = request.caller.key_name();
        let mut log = RequestLog::new(lease.guard, &request.path, started, peer, key);
        if lease.capture_bodies {
            log.capture(&body);
        }
        let body = match &lease.backend_model {
            None => body,
            Some(backend_model) => match with_backend_model(&body, backend_model) {
                Ok(body) => body,
                Err(error) => return refuse(client, &mut log, error).await,
            },
        };
        let mut message = codec::request_head(
            "POST",
            &request.path,
            &lease.upstream,
            RequestFraming::Length(body.len() as u64),
            &request.headers,
            body.len(),
        );
        message.extend_from_slice(&body);

        let mut watching = true;
        let sent = self
            .relay
            .send(
                &lease.upstream.authority,
                &message,
                Outgoing::InHead,
                false,
                &mut Watch::new(client, &mut watching),
            )
            .await;
        let mut exchange = match sent {
            Ok(exchange) => exchange,
            // Dropping the connection is what cancels the backend's work.
            Err(Failure::ClientGone) => return Next::Close,
            Err(Failure::Relay(error)) => return refuse(client, &mut log, error.into()).await,
        };
        log.response(exchange.head.status, &exchange.head.content_type);
        // The head goes out with the first body bytes, in one write.
        let mut head = std::mem::take(&mut exchange.head.client_head);
        loop {
            let next = exchange
                .next(&mut Watch::new(client, &mut watching), |data| {
                    log.data(data)
                })
                .await;
            let piece = match next {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                // Cut short, or the client left: the client must see the answer end abruptly.
                Err(_) => return Next::Close,
            };
            let written = if head.is_empty() {
                client.write_all(&piece).await
            } else {
                head.extend_from_slice(&piece);
                let written = client.write_all(&head).await;
                head = Vec::new();
                written
            };
            if written.is_err() {
                return Next::Close;
            }
        }
        if !head.is_empty() && client.write_all(&head).await.is_err() {
            return Next::Close;
        }
        if exchange.ends_at_close() {
            return Next::Close;
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
    /// Whose key it carries.
    caller: Caller,
}

enum Head {
    Partial,
    /// Not this path's: hyper takes it.
    Other,
    /// Longer than `MAX_REQUEST_HEAD`, or more than `MAX_REQUEST_HEADERS` headers: 431.
    TooLarge,
    Fast(Request),
}

/// `keys`: the stored keys, when the engine has them.
fn parse_request(buf: &[u8], config: &Config, keys: Option<&KeyStore>) -> Head {
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
    let mut expects_continue = false;
    let mut declares_json = false;
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
        } else if is("host") {
            // The first, as the router reads it.
            host = host.or(Some(header.value));
        } else if is("connection") {
            // Only the default: `close` and named hop-by-hop headers are hyper's to honour.
            if !header.value.eq_ignore_ascii_case(b"keep-alive") {
                return Head::Other;
            }
        } else if is("expect") {
            // curl asks before sending a larger body; other expectations are hyper's to refuse.
            if !header.value.eq_ignore_ascii_case(b"100-continue") {
                return Head::Other;
            }
            expects_continue = true;
        } else if is("content-type") {
            // A body not declared as JSON is the router's to refuse (415), the one kind of
            // request a web page may send anywhere without a CORS preflight.
            if declares_json || !is_json_media_type(header.value) {
                return Head::Other;
            }
            declares_json = true;
        } else if ["transfer-encoding", "upgrade", "origin"]
            .into_iter()
            .any(is)
        {
            // A streamed upload, a protocol switch and a web page's request (CORS) are hyper's.
            return Head::Other;
        }
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
    let mut caller = Caller::unrestricted();
    if auth.require_inference_auth {
        let accepted = [&auth.inference_keys, &auth.management_keys];
        let headers = parsed.headers.iter();
        let Some(key) = header_key(headers.map(|header| (header.name, header.value))) else {
            return Head::Other;
        };
        if !is_accepted(key, &accepted) {
            // A stored key the engine has not checked against its hash yet is the router's.
            match keys.map(|keys| keys.check(key, access::unix_now())) {
                Some(KeyCheck::Granted(grant)) => caller = Caller::keyed(grant),
                _ => return Head::Other,
            }
        }
    }
    if let Some(host) = host {
        if !std::str::from_utf8(host).is_ok_and(|name| is_allowed(config, name)) {
            return Head::Other;
        }
    }
    // The body is sent as JSON whatever its declared parameters, as the router sends it.
    let mut forwarded = Vec::with_capacity(512);
    codec::forwarded_headers(
        parsed
            .headers
            .iter()
            .filter(|header| !header.name.eq_ignore_ascii_case("content-type"))
            .map(|header| (header.name, header.value)),
        &mut forwarded,
    );
    forwarded.extend_from_slice(b"content-type: application/json\r\n");
    Head::Fast(Request {
        head_len,
        body_len,
        path: path.to_owned(),
        headers: forwarded,
        expects_continue,
        caller,
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

/// Watches the client while the relay waits on the backend: a client that closed its
/// connection is gone (its generation is cancelled); pipelined bytes from it end the watch, as
/// they stay in the socket for the next request.
struct Watch<'a> {
    client: &'a TcpStream,
    watching: &'a mut bool,
}

impl<'a> Watch<'a> {
    fn new(client: &'a TcpStream, watching: &'a mut bool) -> Self {
        Self { client, watching }
    }
}

impl Client for Watch<'_> {
    async fn gone(&mut self) {
        if *self.watching {
            let mut probe = [0u8; 1];
            match self.client.peek(&mut probe).await {
                Ok(0) | Err(_) => return,
                Ok(_) => *self.watching = false,
            }
        }
        std::future::pending().await
    }
}

/// Answers with Corral's own `error` in OpenAI's shape, as the router does.
async fn refuse(client: &mut TcpStream, log: &mut RequestLog, error: OpenAiError) -> Next {
    log.refused(error.status, &error.message);
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
        match parse_request(head.as_bytes(), config, None) {
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
            parse_request(partial.as_bytes(), &config(&[]), None),
            Head::Partial
        ));
        let curl = CHAT.replace("TE: trailers", "Expect: 100-continue");
        assert!(fast(&curl, &config(&[])).expects_continue);
    }

    #[test]
    fn what_the_router_must_answer_is_handed_off() {
        let other = |head: String, config: &Config| {
            assert!(
                matches!(parse_request(head.as_bytes(), config, None), Head::Other),
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
        // The first `Authorization` header is the one read, as the router reads it.
        other(
            CHAT.replace(
                "Authorization: Bearer sk-1",
                "Authorization: Basic x\r\nAuthorization: Bearer sk-1",
            ),
            &config(&["sk-1"]),
        );
        let by_header = CHAT.replace("Authorization: Bearer", "X-Api-Key:");
        fast(&by_header, &config(&["sk-1"]));
        let charset = CHAT.replace("application/json", "application/json; charset=utf-8");
        fast(&charset, &open);
    }

    #[test]
    fn a_stored_key_is_taken_with_its_scope_once_verified_and_left_to_the_router_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path(), |_| true).unwrap();
        let scope = crate::access::Scope::Instances(["a".to_owned()].into_iter().collect());
        let (_, key) = keys
            .create(crate::access::NewKey {
                name: "k".into(),
                scope,
                expires_at: None,
            })
            .unwrap();
        let config = config(&["sk-config"]);
        let head = CHAT.replace("sk-1", &key);
        let Head::Fast(request) = parse_request(head.as_bytes(), &config, Some(&keys)) else {
            panic!("a verified stored key is the fast path's");
        };
        assert!(request.caller.may_use("a") && !request.caller.may_use("b"));
        assert_eq!(request.caller.key_name().as_deref(), Some("k"));
        // Without the store, or with a key of its shape it does not hold: the router's.
        assert!(matches!(
            parse_request(head.as_bytes(), &config, None),
            Head::Other
        ));
        let made_up = CHAT.replace("sk-1", &format!("sk-inference-{}", "0".repeat(64)));
        assert!(matches!(
            parse_request(made_up.as_bytes(), &config, Some(&keys)),
            Head::Other
        ));
        // Not yet verified since a restart: the router checks it against its hash.
        drop(keys);
        let keys = KeyStore::open(dir.path(), |_| true).unwrap();
        assert!(matches!(
            parse_request(head.as_bytes(), &config, Some(&keys)),
            Head::Other
        ));
    }
}

#[cfg(test)]
#[path = "fast_proptests.rs"]
mod proptests;

//! The relay for requests hyper parsed: `/api/v1/instances/{name}/proxy/*`, and the `/v1`
//! requests the fast path hands to the router. The request goes out through the same codec and
//! pool as the fast path's; the answer comes back as a response whose body streams as it
//! arrives (SSE token by token), framed by hyper for the client.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Body as _;

use super::codec::{self, Framing, RequestFraming, ResponseHead};
use super::{ExchangeObserver, Failure, Outgoing, Relay, RelayError, Unwatched};
use crate::api::error::ApiError;
use crate::instances::Upstream;

/// Request bodies up to this size (with a length) are read before the backend is dialled and
/// go out with the head in one write, which also lets a request on a connection the backend
/// had closed go again; larger ones and uploads without a length stream.
const MAX_BUFFERED_BODY: u64 = 1024 * 1024;

impl Relay {
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
    /// answer back. `tap` sees the answer go by and is kept until the response body has been
    /// sent or the client went away (the in-flight count of the router hangs on it); dropping
    /// the body also drops the backend connection, which cancels the backend's work.
    ///
    /// The client's credentials are Corral's, not the backend's: its `Authorization` and
    /// `X-API-Key` headers and Corral's page cookie never reach the backend (a backend's page
    /// could read them), and the backend gets the key Corral holds for it instead. The backend's
    /// CORS headers never reach the client, so that Corral's own apply.
    pub async fn try_forward<T: ExchangeObserver>(
        &self,
        request: Request,
        upstream: &Upstream,
        path_and_query: &str,
        mut tap: T,
    ) -> Result<Response, RelayError> {
        let result = self.relay(request, upstream, path_and_query).await;
        match result {
            Ok((head, exchange)) => {
                tap.response(head.status, &head.content_type);
                Ok(response(head, exchange, tap))
            }
            Err(error) => {
                tap.failed(&error);
                Err(error)
            }
        }
    }

    async fn relay(
        &self,
        request: Request,
        upstream: &Upstream,
        path_and_query: &str,
    ) -> Result<(ResponseHeadParts, super::Exchange), RelayError> {
        match path_and_query.parse::<Uri>() {
            // Origin-form on the wire, as a server expects from a client (not a proxy).
            Ok(uri) if uri.scheme().is_none() && uri.authority().is_none() => {}
            Ok(_) => {
                return Err(RelayError::InvalidPath(format!(
                    "'{path_and_query}' is not a path on the backend"
                )))
            }
            Err(e) => return Err(RelayError::InvalidPath(e.to_string())),
        }
        let (parts, body) = request.into_parts();
        let view: Vec<(&str, &[u8])> = (parts.headers.iter())
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        let mut forwarded = Vec::with_capacity(512);
        codec::forwarded_headers(view.iter().copied(), &mut forwarded);
        let authority = upstream.authority.as_str();
        let size = body.size_hint().exact();
        let (head, outgoing) = match size {
            Some(length) if length <= MAX_BUFFERED_BODY => {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| RelayError::Unreachable {
                        authority: authority.to_owned(),
                        message: format!("the request body failed: {e}"),
                        request_left: false,
                    })?
                    .to_bytes();
                // A request without a body gets no length, but those whose method means to
                // send one, as hyper's client does.
                let framing = if bytes.is_empty()
                    && !matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
                {
                    RequestFraming::None
                } else {
                    RequestFraming::Length(bytes.len() as u64)
                };
                let mut head = codec::request_head(
                    parts.method.as_str(),
                    path_and_query,
                    upstream,
                    framing,
                    &forwarded,
                    bytes.len(),
                );
                head.extend_from_slice(&bytes);
                (head, Outgoing::InHead)
            }
            _ => {
                let framing = size.map_or(RequestFraming::Chunked, RequestFraming::Length);
                let head = codec::request_head(
                    parts.method.as_str(),
                    path_and_query,
                    upstream,
                    framing,
                    &forwarded,
                    0,
                );
                let chunked = framing == RequestFraming::Chunked;
                (head, Outgoing::Stream { body, chunked })
            }
        };
        let to_head = parts.method == Method::HEAD;
        let exchange = match self
            .send(authority, &head, outgoing, to_head, &mut Unwatched)
            .await
        {
            Ok(exchange) => exchange,
            Err(Failure::Relay(error)) => return Err(error),
            // An unwatched client is never seen leaving: hyper drops this future instead.
            Err(Failure::ClientGone) => {
                return Err(RelayError::Unreachable {
                    authority: authority.to_owned(),
                    message: "the client went away".to_owned(),
                    request_left: true,
                })
            }
        };
        let head =
            ResponseHeadParts::of(&exchange.head).map_err(|message| RelayError::Unreachable {
                authority: authority.to_owned(),
                message,
                request_left: true,
            })?;
        Ok((head, exchange))
    }
}

/// The backend's answer head as hyper takes it: hyper frames the body for its client.
struct ResponseHeadParts {
    status: StatusCode,
    content_type: String,
    headers: HeaderMap,
    framing: Framing,
}

impl ResponseHeadParts {
    fn of(head: &ResponseHead) -> Result<Self, String> {
        let mut parsed = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut parsed);
        response
            .parse(&head.client_head)
            .map_err(|e| format!("invalid answer: {e}"))?;
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        for header in response.headers.iter() {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|e| format!("invalid answer: {e}"))?;
            if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
                continue;
            }
            let value = HeaderValue::from_bytes(header.value)
                .map_err(|e| format!("invalid answer: {e}"))?;
            headers.append(name, value);
        }
        Ok(Self {
            status: head.status,
            content_type: head.content_type.clone(),
            headers,
            framing: head.framing,
        })
    }
}

fn response<T: ExchangeObserver>(
    head: ResponseHeadParts,
    exchange: super::Exchange,
    tap: T,
) -> Response {
    let body = if head.framing == Framing::Empty {
        // The answer is complete (its connection is back in the pool): so is the exchange.
        drop(tap);
        Body::empty()
    } else {
        let chunked = head.framing == Framing::Chunked;
        Body::from_stream(futures_util::stream::unfold(
            (exchange, tap),
            move |(mut exchange, mut tap)| async move {
                let mut data = BytesMut::new();
                loop {
                    let next = exchange
                        .next(&mut Unwatched, |piece| {
                            tap.data(piece);
                            if chunked {
                                data.extend_from_slice(piece);
                            }
                        })
                        .await;
                    let piece = match next {
                        Ok(Some(piece)) => piece,
                        Ok(None) => return None,
                        Err(_) => {
                            // Cut short: hyper ends the client's answer abruptly, not complete.
                            let error = std::io::Error::other("the backend's answer was cut short");
                            return Some((Err(error), (exchange, tap)));
                        }
                    };
                    let bytes: Bytes = if chunked {
                        data.split().freeze()
                    } else {
                        piece.freeze()
                    };
                    if !bytes.is_empty() {
                        return Some((Ok(bytes), (exchange, tap)));
                    }
                }
            },
        ))
    };
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    response
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
                    })
                    // The port, how the body was framed, and the body.
                    .post(
                        |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                         headers: HeaderMap,
                         body: String| async move {
                            let framing = if headers.contains_key(header::CONTENT_LENGTH) {
                                "length"
                            } else if headers.contains_key(header::TRANSFER_ENCODING) {
                                "chunked"
                            } else {
                                "none"
                            };
                            format!("{} {framing} {body}", peer.port())
                        },
                    ),
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

    async fn send(relay: &Relay, authority: &str, request: Request) -> (StatusCode, String) {
        let path = request.uri().to_string();
        let response = relay
            .try_forward(request, &upstream(authority), &path, ())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn fetch(relay: &Relay, authority: &str, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        send(relay, authority, request).await
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read() {
        let authority = backend().await;
        let relay = Relay::new();
        let (_, first) = fetch(&relay, &authority, "/peer").await;
        let (_, second) = fetch(&relay, &authority, "/peer").await;
        assert_eq!(
            first, second,
            "the second request went over the first connection"
        );
        // An empty answer is never polled to its end, and still gives its connection back.
        assert_eq!(
            fetch(&relay, &authority, "/empty").await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(fetch(&relay, &authority, "/peer").await.1, first);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_replaced() {
        let authority = backend().await;
        let relay = Relay::new();
        let (_, closed) = fetch(&relay, &authority, "/close").await;
        let (status, next) = fetch(&relay, &authority, "/peer").await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(closed, next, "a new connection carried the next request");
    }

    #[tokio::test]
    async fn an_answer_dropped_halfway_closes_its_connection() {
        let authority = backend().await;
        let relay = Relay::new();
        let (_, first) = fetch(&relay, &authority, "/peer").await;
        // The client went away before reading the answer: the connection may hold its rest.
        let request = Request::get("/peer").body(Body::empty()).unwrap();
        drop(
            relay
                .try_forward(request, &upstream(&authority), "/peer", ())
                .await
                .unwrap(),
        );
        let (_, next) = fetch(&relay, &authority, "/peer").await;
        assert_ne!(first, next);
    }

    #[tokio::test]
    async fn a_body_with_a_length_and_a_streamed_one_both_arrive_whole() {
        let authority = backend().await;
        let relay = Relay::new();
        let sized = Request::post("/peer").body(Body::from("sized")).unwrap();
        assert!(send(&relay, &authority, sized)
            .await
            .1
            .ends_with(" length sized"));
        // No length: it goes in chunks, and the backend reads it all.
        let pieces = futures_util::stream::iter(
            ["str", "eam", "ed"].map(|piece| Ok::<_, std::io::Error>(Bytes::from(piece))),
        );
        let streamed = Request::post("/peer")
            .body(Body::from_stream(pieces))
            .unwrap();
        let (status, body) = send(&relay, &authority, streamed).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with(" chunked streamed"), "{body}");
        // A body with a length too large to read first streams after the head, by its length
        // (axum's own limit for the backend's `String` is 2 MiB).
        let large = "x".repeat(MAX_BUFFERED_BODY as usize + 512 * 1024);
        let request = Request::post("/peer")
            .body(Body::from(large.clone()))
            .unwrap();
        let (status, body) = send(&relay, &authority, request).await;
        assert_eq!(status, StatusCode::OK);
        let (_port, rest) = body.split_once(' ').unwrap();
        assert_eq!(rest.split_once(' ').unwrap(), ("length", large.as_str()));
    }

    #[tokio::test]
    async fn an_unreachable_backend_is_an_error_naming_it_and_safe_to_retry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        drop(listener);
        let request = Request::get("/").body(Body::empty()).unwrap();
        let error = Relay::new()
            .try_forward(request, &upstream(&authority), "/", ())
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        assert!(error.to_string().contains(&authority));
        assert!(error.retry_safe(), "nothing left: {error}");
    }

    #[tokio::test]
    async fn a_request_the_backend_read_and_dropped_is_not_safe_to_retry() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
        });
        let request = Request::post("/").body(Body::from("{}")).unwrap();
        let error = Relay::new()
            .try_forward(request, &upstream(&authority), "/", ())
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        assert!(!error.retry_safe(), "the request left: {error}");
    }
}

//! The one streaming reverse proxy, used by `/api/v1/instances/{name}/proxy/*` and by `/v1`:
//! request and response bodies stay streams end to end (SSE arrives token by token).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::api::error::ApiError;
use crate::instances::InFlight;

/// How long dialling a backend may take before the request fails with 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Watches one exchange pass through the proxy without holding it up; dropped when the response
/// body ended or the client went away (so a guard inside it lives exactly as long as the request).
pub trait Tap: Send + 'static {
    /// The backend's status and headers, before the body.
    fn response(&mut self, _status: StatusCode, _headers: &HeaderMap) {}
    /// Each chunk of the response body, as it passes.
    fn data(&mut self, _chunk: &Bytes) {}
    /// The request could not be forwarded.
    fn failed(&mut self, _error: &ProxyError) {}
}

impl Tap for () {}

impl Tap for InFlight {}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the path cannot be forwarded: {0}")]
    InvalidPath(String),
    #[error("the backend at {authority} did not answer: {message}")]
    Unreachable { authority: String, message: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<ProxyError> for ApiError {
    fn from(error: ProxyError) -> Self {
        let code = match error {
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::Unreachable { .. } => "upstream_unreachable",
        };
        ApiError::new(error.status(), code, error.to_string())
    }
}

/// A pooled HTTP/1 client to the backends. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

impl Proxy {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // Tokens of a stream go out one small write at a time: don't let Nagle hold them back.
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// `try_forward` with failures as management errors (502 for an unreachable backend).
    pub async fn forward<T: Tap>(
        &self,
        request: Request,
        authority: &str,
        path_and_query: &str,
        tap: T,
    ) -> Response {
        self.try_forward(request, authority, path_and_query, tap)
            .await
            .unwrap_or_else(|e| ApiError::from(e).into_response())
    }

    /// Sends `request` to `http://<authority><path_and_query>` and streams the answer back.
    /// `tap` sees the answer go by and is kept until the response body has been sent or the
    /// client went away (the in-flight count of the router hangs on it); dropping the body also
    /// drops the upstream connection, which cancels the backend's work. Upstream CORS headers
    /// are dropped so that Corral's own apply.
    pub async fn try_forward<T: Tap>(
        &self,
        mut request: Request,
        authority: &str,
        path_and_query: &str,
        mut tap: T,
    ) -> Result<Response, ProxyError> {
        let uri = match format!("http://{authority}{path_and_query}").parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                let error = ProxyError::InvalidPath(e.to_string());
                tap.failed(&error);
                return Err(error);
            }
        };
        let original_host = request.headers().get(header::HOST).cloned();
        *request.uri_mut() = uri;
        // The pool speaks HTTP/1.1 to backends whatever the client used.
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        strip_hop_by_hop(headers);
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

        match self.client.request(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                strip_cors(&mut parts.headers);
                tap.response(parts.status, &parts.headers);
                // Owning the tap here ties its life to the body's.
                let body = body.map_frame(move |frame| {
                    if let Some(chunk) = frame.data_ref() {
                        tap.data(chunk);
                    }
                    frame
                });
                Ok(Response::from_parts(parts, Body::new(body)))
            }
            Err(e) => {
                let error = ProxyError::Unreachable {
                    authority: authority.to_owned(),
                    message: e.to_string(),
                };
                tap.failed(&error);
                Err(error)
            }
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn strip_cors(headers: &mut HeaderMap) {
    let cors: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in cors {
        headers.remove(name);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

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
        strip_hop_by_hop(&mut headers);
        strip_cors(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }
}

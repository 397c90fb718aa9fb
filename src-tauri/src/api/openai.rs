//! The inference router: `/v1/*` requests go to the instance their `model` names.
//!
//! INTERFACE: `dispatch` is what every inference front end (OpenAI, Anthropic, Ollama) calls.
//! This first version only forwards to a running instance; on-demand start, aliases, the model
//! rewrite, in-flight counting and OpenAI-shaped errors come with the routing work.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::Api;

/// Sends one inference request with JSON `body` to `path` (`/v1/chat/completions`) of the
/// instance that serves `model`, and streams its answer back.
pub async fn dispatch(
    api: &Api,
    model: &str,
    path: &str,
    headers: HeaderMap,
    body: serde_json::Value,
) -> Response {
    let upstream = match api.registry.upstream(model) {
        Ok(upstream) => upstream,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let bytes = match serde_json::to_vec(&body) {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiError::bad_request("invalid_json", format!("cannot encode the request: {e}"))
                .into_response()
        }
    };
    let mut request = Request::new(Body::from(bytes));
    *request.method_mut() = Method::POST;
    *request.headers_mut() = headers;
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    request.headers_mut().remove(header::CONTENT_LENGTH);
    api.proxy
        .forward(request, &upstream.authority, path, ())
        .await
}

//! A streaming request whose model is not ready yet: the answer starts at once, as a
//! `text/event-stream` of SSE comments (`: loading <model>`) every couple of seconds, which every
//! SSE client skips, so that a client's read timeout does not end a request that waits for a
//! start or for room; then the backend's own stream follows in the same body. A start that fails
//! ends the stream with one error event in the route's shape (OpenAI's `{"error": ...}`, or
//! Anthropic's `event: error` on `/v1/messages`), since the status line has gone out already.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::{acquire_logged, forward, OpenAiError, Payload};
use crate::api::Api;

/// How often a waiting stream says it is still loading.
const EVERY: Duration = Duration::from_secs(2);

/// Most of a backend's error answer kept for the error event.
const MAX_ERROR_BODY: usize = 16 * 1024;

type Chunk = Result<Bytes, Infallible>;

/// The 200 event stream that waits for `model`, then carries its answer.
pub(super) fn stream(
    api: Api,
    model: &str,
    path: &str,
    headers: HeaderMap,
    body: Payload,
    started: Instant,
) -> Response {
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    let (model, path) = (model.to_owned(), path.to_owned());
    let client = crate::api::current_client();
    // The task answers for the same caller (its key's name goes to the activity log).
    let caller = crate::access::current_caller();
    tokio::spawn(crate::access::calling(caller, async move {
        let anthropic = path == "/v1/messages" || path.starts_with("/v1/messages?");
        let acquired = {
            let acquire = acquire_logged(&api, &model, &path, started);
            tokio::pin!(acquire);
            let mut ticks = tokio::time::interval(EVERY);
            loop {
                tokio::select! {
                    acquired = &mut acquire => break acquired,
                    _ = ticks.tick() => {
                        let note = format!(": loading {}\n\n", one_line(&model));
                        // The client left: dropping `acquire` ends the wait.
                        if tx.send(Ok(Bytes::from(note))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        let answer = match acquired {
            Ok(lease) => forward(&api, lease, &path, headers, body, started, client).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(response) if response.status().is_success() => {
                let mut frames = response.into_body().into_data_stream();
                while let Some(Ok(data)) = frames.next().await {
                    if tx.send(Ok(data)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(response) => {
                let status = response.status();
                let bytes = match http_body_util::Limited::new(response.into_body(), MAX_ERROR_BODY)
                    .collect()
                    .await
                {
                    Ok(collected) => collected.to_bytes(),
                    Err(_) => Bytes::new(),
                };
                let message = backend_message(&bytes)
                    .unwrap_or_else(|| format!("the backend answered {status}"));
                let error = OpenAiError::new(status, "backend_error", message);
                let _ = tx.send(Ok(error_event(error, anthropic))).await;
            }
            Err(error) => {
                let _ = tx.send(Ok(error_event(error, anthropic))).await;
            }
        }
    }));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The error as the stream's last event.
fn error_event(error: OpenAiError, anthropic: bool) -> Bytes {
    let text = if anthropic {
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": if error.status.is_client_error() { "invalid_request_error" } else { "api_error" },
                      "message": error.message},
        });
        format!("event: error\ndata: {body}\n\n")
    } else {
        let body = serde_json::to_string(&error.body()).unwrap_or_default();
        format!("data: {body}\n\n")
    };
    Bytes::from(text)
}

/// The message of a backend's JSON error answer (`{"error": {"message": ...}}` or
/// `{"error": "..."}`), if it is one.
fn backend_message(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let error = value.get("error")?;
    error
        .get("message")
        .and_then(serde_json::Value::as_str)
        .or_else(|| error.as_str())
        .map(str::to_owned)
}

/// A model name fit for an SSE comment line: no line breaks.
fn one_line(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_name_cannot_break_out_of_its_comment_line() {
        assert_eq!(one_line("a\n\ndata: {\"x\":1}\r"), "adata: {\"x\":1}");
    }

    #[test]
    fn the_error_event_is_in_the_routes_shape() {
        let error = || OpenAiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_room", "busy");
        let openai = String::from_utf8(error_event(error(), false).to_vec()).unwrap_or_default();
        assert!(
            openai.starts_with("data: {\"error\":{\"message\":\"busy\""),
            "{openai}"
        );
        assert!(openai.ends_with("\n\n"));
        let anthropic = String::from_utf8(error_event(error(), true).to_vec()).unwrap_or_default();
        assert!(
            anthropic.starts_with("event: error\ndata: {"),
            "{anthropic}"
        );
        assert!(anthropic.contains("\"api_error\""), "{anthropic}");
    }
}

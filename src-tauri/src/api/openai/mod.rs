//! The inference router: `GET /v1/models`, and `POST /v1/*` requests sent to the instance their
//! body's `model` names (an instance or an alias), started on demand, with OpenAI-shaped errors
//! and one log line per request with its tokens.
//!
//! `dispatch` is what every inference front end (OpenAI, Anthropic, Ollama) calls.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::BytesMut;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

mod loading;
mod model_field;
mod request_log;

pub(crate) use model_field::{requested_model, with_backend_model};
pub(crate) use request_log::RequestLog;

use super::Api;
use crate::instances::{ErrorKind, InstanceError, ModelEntry};
use crate::relay::RelayError;
use model_field::{encoded, model_in, spliced, Spliced};

/// The body of every `/v1` error, in OpenAI's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error` for the client's mistakes, `server_error` otherwise.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Stable, machine-readable code (`model_not_found`).
    pub code: &'static str,
}

/// A refused or failed inference request.
#[derive(Debug)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header: the client may try again then.
    pub retry_after: Option<u64>,
}

impl OpenAiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl OpenAiError {
    /// The JSON body clients get.
    pub fn body(self) -> OpenAiErrorBody {
        let kind = if self.status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.message,
                kind,
                code: self.code,
            },
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let retry_after = self.retry_after;
        let mut response = (status, Json(self.body())).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<InstanceError> for OpenAiError {
    fn from(error: InstanceError) -> Self {
        use ErrorKind as K;
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        match error.kind() {
            K::NotFound => {
                let model = match &error {
                    InstanceError::NotFound(model) => model.as_str(),
                    _ => "",
                };
                Self::new(
                    StatusCode::NOT_FOUND,
                    "model_not_found",
                    format!("The model '{model}' does not exist: GET /v1/models lists the models"),
                )
            }
            // llamactl's words, which its clients may match.
            K::NotRunning => Self::new(unavailable, error.code(), "Instance is not running"),
            // A request meets a conflict only while starting its instance on demand (the port
            // was taken meanwhile): to the client, the start failed.
            K::StartFailed | K::NotReady | K::Conflict => {
                Self::new(unavailable, "instance_start_failed", error.to_string())
            }
            // Room may come once running instances finish: try again in a few seconds.
            K::LimitReached => {
                Self::new(unavailable, error.code(), error.to_string()).retry_after(5)
            }
            // The client may try again later: 503, where the management API answers 409.
            K::Failed | K::ShuttingDown => Self::new(unavailable, error.code(), error.to_string()),
            // Waiting does not help: the model must get smaller or the machine freer.
            K::InsufficientMemory => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                error.code(),
                error.to_string(),
            ),
            K::Overloaded => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                error.code(),
                error.to_string(),
            )
            .retry_after(1),
            K::Invalid => Self::new(StatusCode::BAD_REQUEST, error.code(), error.to_string()),
            K::Internal => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                error.to_string(),
            ),
        }
    }
}

impl From<RelayError> for OpenAiError {
    fn from(error: RelayError) -> Self {
        Self::new(error.status(), error.code(), error.to_string())
    }
}

/// One model of `/v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    /// Instance name or alias: what to send as `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds of the instance's creation.
    pub created: i64,
    /// Always `corral`.
    pub owned_by: &'static str,
}

impl From<ModelEntry> for Model {
    fn from(entry: ModelEntry) -> Self {
        Self {
            id: entry.id,
            object: "model",
            created: entry.created,
            owned_by: "corral",
        }
    }
}

/// OpenAI's model list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Model>,
}

/// Every instance and alias, as OpenAI's model list, sorted by id.
#[utoipa::path(get, path = "/v1/models", tag = "inference",
    responses((status = 200, body = ModelList)))]
pub async fn models(State(api): State<Api>) -> Json<ModelList> {
    let caller = crate::access::current_caller();
    let mut data: Vec<Model> = api
        .registry
        .models()
        .into_iter()
        .filter(|entry| caller.may_use(&entry.instance))
        .map(Model::from)
        .collect();
    // A llama-server in router mode serves its own list: `<instance>/<model>` for each.
    for (instance, created) in api.registry.ready_routers() {
        if !caller.may_use(&instance) {
            continue;
        }
        for served in super::llama_router::served_models(&api, &instance).await {
            data.push(Model {
                id: format!("{instance}/{served}"),
                object: "model",
                created,
                owned_by: "corral",
            });
        }
    }
    data.sort_by(|a, b| a.id.cmp(&b.id));
    Json(ModelList {
        object: "list",
        data,
    })
}

/// One model by id.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "inference",
    params(("model" = String, Path, description = "Instance name or alias")),
    responses(
        (status = 200, body = Model),
        (status = 404, description = "No such model", body = OpenAiErrorBody)))]
pub async fn model(
    State(api): State<Api>,
    Path(model): Path<String>,
) -> Result<Json<Model>, OpenAiError> {
    let caller = crate::access::current_caller();
    api.registry
        .models()
        .into_iter()
        .find(|entry| entry.id == model && caller.may_use(&entry.instance))
        .map(|entry| Json(entry.into()))
        .ok_or_else(|| InstanceError::NotFound(model).into())
}

/// Any OpenAI or Anthropic inference call (`chat/completions`, `completions`, `embeddings`,
/// `rerank`, `messages`, ...): sent to the instance the body's `model` names, which is started
/// first if it is stopped and allows on-demand start. The answer streams back as the backend
/// writes it.
#[utoipa::path(post, path = "/v1/{path}", tag = "inference",
    params(("path" = String, Path, description = "The backend's route, e.g. chat/completions")),
    request_body(content = Object, description = "The backend's request; `model` names the instance or an alias"),
    responses(
        (status = "default", description = "Whatever the backend answers (JSON or an SSE stream), its status included"),
        (status = 400, description = "Not a JSON object, or no `model`", body = OpenAiErrorBody),
        (status = 404, description = "No instance or alias has that name", body = OpenAiErrorBody),
        (status = 413, description = "Body over server.max_inference_body_bytes", body = OpenAiErrorBody),
        (status = 415, description = "The body is not declared as JSON (`Content-Type: application/json` or a `+json` type); Anthropic's error object on /v1/messages", body = OpenAiErrorBody),
        (status = 502, description = "The backend did not answer", body = OpenAiErrorBody),
        (status = 503, description = "Not running, failed, or could not be started in time", body = OpenAiErrorBody)))]
pub async fn inference(
    State(api): State<Api>,
    OriginalUri(uri): OriginalUri,
    request: Request,
) -> Response {
    // The original URI: nesting under /v1 stripped the prefix from the request's own. A key in
    // the query is Corral's, not the backend's.
    let path = match super::auth::without_params(uri.query(), &["api_key"]) {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    };
    let (parts, body) = request.into_parts();
    if !super::body::declares_json(&parts.headers) {
        return not_json(&path, &parts.headers);
    }
    let raw = match read_body(&api, &parts.headers, body).await {
        Ok(raw) => raw,
        Err(e) => return e.into_response(),
    };
    let named = match model_in(&raw) {
        Ok(named) => named,
        Err(reason) => {
            return OpenAiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_body",
                format!("Invalid request body: {reason}"),
            )
            .into_response()
        }
    };
    let Some(named) = named.filter(|named| !named.model.is_empty()) else {
        return OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "model_required",
            "Instance name is required: set `model` to an instance name or alias (GET /v1/models)",
        )
        .into_response();
    };
    let payload = Payload::Raw {
        raw,
        model_at: named.at,
    };
    match route(&api, &named.model, &path, parts.headers, payload).await {
        Ok(response) => response,
        // Anthropic's clients read its error object; the SDKs raise PermissionDeniedError.
        Err(error) if error.status == StatusCode::FORBIDDEN && is_anthropic(&path) => {
            let body = serde_json::json!({
                "type": "error",
                "error": {"type": "permission_error", "message": error.message},
            });
            (error.status, Json(body)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// Whether `path` is Anthropic's Messages API, whose clients read Anthropic's error object.
fn is_anthropic(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/") || path.starts_with("/v1/messages?")
}

/// The 415 for a body not declared as JSON, in the shape the route's clients read: Anthropic's
/// error object on `/v1/messages`, OpenAI's elsewhere.
fn not_json(path: &str, headers: &HeaderMap) -> Response {
    let message = super::body::not_json_message(headers);
    let status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    if is_anthropic(path) {
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": "invalid_request_error", "message": message},
        });
        return (status, Json(body)).into_response();
    }
    OpenAiError::new(status, "unsupported_media_type", message).into_response()
}

/// The body of an inference request on its way to a backend.
enum Payload {
    /// As the client sent it, with where its `model` value lies (rewritten in place when the
    /// backend wants another name).
    Raw {
        raw: Bytes,
        model_at: std::ops::Range<usize>,
    },
    /// Built by a translating API (Ollama).
    Json(Value),
}

/// Reads the whole body, refusing with 413 past `server.max_inference_body_bytes`. The bytes go
/// into one buffer sized from `Content-Length`, so a large body is held once, not also as the
/// chunks it arrived in.
async fn read_body(api: &Api, headers: &HeaderMap, body: Body) -> Result<Bytes, OpenAiError> {
    let limit = api.config.server.max_inference_body_bytes;
    let too_large = || {
        OpenAiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the request body is larger than {limit} bytes (server.max_inference_body_bytes)"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let declared = declared.and_then(|length| usize::try_from(length).ok());
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    let mut body = Limited::new(body, limit);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    buf.extend_from_slice(data);
                }
            }
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Err(e) => {
                return Err(OpenAiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_body",
                    format!("Failed to read request body: {e}"),
                ))
            }
        }
    }
    Ok(buf.freeze())
}

/// Sends one inference request with JSON `body` to `path` (`/v1/chat/completions`) of the
/// instance that serves `model`, and streams its answer back: the backend's answer, whatever
/// its status, or Corral's own refusal, typed, for the caller to render in its dialect.
pub async fn dispatch(
    api: &Api,
    model: &str,
    path: &str,
    headers: HeaderMap,
    body: serde_json::Value,
) -> Result<Response, OpenAiError> {
    route(api, model, path, headers, Payload::Json(body)).await
}

/// `dispatch`, forwarding `raw` unchanged when the backend takes the model name as sent.
async fn route(
    api: &Api,
    model: &str,
    path: &str,
    headers: HeaderMap,
    body: Payload,
) -> Result<Response, OpenAiError> {
    let started = Instant::now();
    // Before anything can start the instance: a key held to other instances may not.
    let caller = crate::access::current_caller();
    if let Some(instance) = api.registry.instance_of(model) {
        if !caller.may_use(&instance) {
            return Err(permission_denied(&instance));
        }
    }
    // A client streaming its answer gets it at once as a stream of SSE comments while its model
    // starts (or waits for room): clients with a read timeout shorter than a model's load
    // (or a swap) would otherwise give up on a request that is going to succeed. Only `/v1`
    // itself: Ollama's translation reads the answer, and errors there keep their statuses.
    if let Payload::Raw { raw, .. } = &body {
        if api.registry.must_wait(model) && wants_stream(raw) {
            return Ok(loading::stream(
                api.clone(),
                model,
                path,
                headers,
                body,
                started,
            ));
        }
    }
    let lease = acquire_logged(api, model, path, started).await?;
    let client = crate::api::current_client();
    forward(api, lease, path, headers, body, started, client).await
}

/// `acquire`, with a refusal logged.
async fn acquire_logged(
    api: &Api,
    model: &str,
    path: &str,
    started: Instant,
) -> Result<crate::instances::Lease, OpenAiError> {
    match api.registry.acquire(model).await {
        Ok(lease) => Ok(lease),
        Err(e) => {
            let error = OpenAiError::from(e);
            tracing::info!(
                model,
                path = %crate::logging::redact_query(path),
                status = error.status.as_u16(),
                duration_ms = started.elapsed().as_millis() as u64,
                "inference request refused: {}",
                error.message
            );
            Err(error)
        }
    }
}

/// Sends the request to the instance `lease` holds and returns its answer as it comes.
async fn forward(
    api: &Api,
    lease: crate::instances::Lease,
    path: &str,
    headers: HeaderMap,
    body: Payload,
    started: Instant,
    client: Option<std::net::SocketAddr>,
) -> Result<Response, OpenAiError> {
    lease.guard.count_request();
    // As the client sent it (before the model's rewrite), for an instance that keeps bodies.
    let captured = lease.capture_bodies.then(|| match &body {
        Payload::Raw { raw, .. } => raw.clone(),
        Payload::Json(value) => Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    });
    let body = match (&lease.backend_model, body) {
        (None, Payload::Raw { raw, .. }) => Body::from(raw),
        (Some(backend_model), Payload::Raw { raw, model_at }) => {
            Body::new(Spliced::new(spliced(&raw, model_at, backend_model)))
        }
        (backend_model, Payload::Json(value)) => match encoded(value, backend_model.as_deref()) {
            Ok(bytes) => Body::from(bytes),
            Err(e) => return Err(e),
        },
    };
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    *request.headers_mut() = headers;
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The body may have been rewritten; hyper sets the length from the new one.
    request.headers_mut().remove(header::CONTENT_LENGTH);
    let key = crate::access::current_caller().key_name();
    let mut log = RequestLog::new(lease.guard, path, started, client, key);
    if let Some(captured) = &captured {
        log.capture(captured);
    }
    api.relay
        .try_forward(request, &lease.upstream, path, log)
        .await
        .map_err(OpenAiError::from)
}

/// A stored key used on an instance outside its scope.
pub(crate) fn permission_denied(instance: &str) -> OpenAiError {
    OpenAiError::new(
        StatusCode::FORBIDDEN,
        "permission_denied",
        format!("this API key may not use instance '{instance}'"),
    )
}

/// The body asks for a streamed answer (`"stream": true`).
fn wants_stream(raw: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Flag {
        #[serde(default)]
        stream: bool,
    }
    serde_json::from_slice::<Flag>(raw).is_ok_and(|flag| flag.stream)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::request_log::read_usage;
    use super::*;
    use crate::instances::TokenUsage;
    use serde_json::json;

    fn usage_of(events: &[Value]) -> TokenUsage {
        let mut tokens = TokenUsage::default();
        for event in events {
            read_usage(&mut tokens, &serde_json::to_vec(event).unwrap());
        }
        tokens
    }

    #[test]
    fn usage_is_read_from_answer_bytes_in_every_shape() {
        let tokens = usage_of(&[json!({"choices": [{"text": "long"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}})]);
        assert_eq!((tokens.prompt, tokens.completion), (Some(7), Some(3)));
        let tokens = usage_of(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
            json!({"usage": {"output_tokens": 9}}),
        ]);
        assert_eq!((tokens.prompt, tokens.completion), (Some(5), Some(9)));
        let tokens = usage_of(&[json!({"usage": null,
            "timings": {"prompt_n": 4, "predicted_n": 8, "predicted_per_second": 120.5}})]);
        assert_eq!(
            (tokens.prompt, tokens.completion, tokens.per_second),
            (Some(4), Some(8), Some(120.5))
        );
        // A field of an unexpected type does not hide the others.
        let tokens = usage_of(&[json!({"usage": {"prompt_tokens": 7, "completion_tokens": "3"}})]);
        assert_eq!((tokens.prompt, tokens.completion), (Some(7), None));
        assert_eq!(usage_of(&[json!([1, 2])]), TokenUsage::default());
        // Whatever else a backend puts there reads as absent.
        for odd in [
            json!({"usage": [5], "timings": "fast"}),
            json!({"usage": {"prompt_tokens": -1, "completion_tokens": 2.5}}),
            json!({"message": 3, "usage": {"prompt_tokens": {"n": 1}, "completion_tokens": [1]}}),
        ] {
            assert_eq!(usage_of(&[odd]), TokenUsage::default());
        }
        let tokens = usage_of(&[json!({"timings": {"predicted_n": 3, "predicted_per_second": 7}})]);
        assert_eq!((tokens.completion, tokens.per_second), (Some(3), Some(7.0)));
    }

    #[test]
    fn the_model_is_read_from_objects_only() {
        let model = |raw: &str| requested_model(raw.as_bytes());
        assert_eq!(
            model(r#" {"messages": [{"content": "x"}], "model": "a\u00e9"}"#),
            Some(Some("aé".to_owned()))
        );
        assert_eq!(model(r#"{"model": 3}"#), Some(None));
        assert_eq!(model(r#"{"prompt": "x"}"#), Some(None));
        assert_eq!(model(r#"["model"]"#), None);
        assert_eq!(model(r#"{"model": "a""#), None);
    }

    #[test]
    fn the_model_is_rewritten_in_place_and_the_rest_is_left_byte_for_byte() {
        let raw = br#" {"messages": [{"content": "x\u00e9 \"model\": no"}],  "model" :"a\u00e9" , "n": 1.50}"#;
        let named = model_in(raw).unwrap().unwrap();
        assert_eq!(named.model, "a\u{e9}");
        assert_eq!(&raw[named.at.clone()], br#""a\u00e9""#);
        let rewritten = with_backend_model(raw, "org/Model \"7B\"").unwrap();
        assert_eq!(
            std::str::from_utf8(&rewritten).unwrap(),
            r#" {"messages": [{"content": "x\u00e9 \"model\": no"}],  "model" :"org/Model \"7B\"" , "n": 1.50}"#
        );
        // The pieces the router sends have the length of the rewritten body.
        let pieces = spliced(&Bytes::from_static(raw), named.at, "org/Model \"7B\"");
        let body = Spliced::new(pieces.clone());
        assert_eq!(
            hyper::body::Body::size_hint(&body).exact(),
            Some(rewritten.len() as u64)
        );
        assert_eq!(pieces.concat(), rewritten.to_vec());
    }

    #[test]
    fn a_body_nested_past_the_limit_or_naming_two_models_is_refused() {
        let nested = |depth: usize| {
            format!(
                r#"{{"model": "m", "x": {}1{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert!(model_in(nested(100).as_bytes()).unwrap().is_some());
        for deep in [nested(200), nested(100_000)] {
            let reason = model_in(deep.as_bytes()).unwrap_err();
            assert!(reason.contains("recursion limit"), "{reason}");
        }
        let deep_model = format!(r#"{{"model": {}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(model_in(deep_model.as_bytes()).is_err());
        let deep_object = format!(
            r#"{{"model": "m", "x": {}{}}}"#,
            "{\"a\":".repeat(200),
            "}".repeat(200)
        );
        assert!(model_in(deep_object.as_bytes()).is_err());
        assert!(model_in(br#"{"model": "a", "model": "b"}"#).is_err());
        assert!(model_in(br#"{"model": "a"} x"#).is_err());
    }
}

#[cfg(test)]
mod proptests;

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

use super::Api;
use crate::instances::{ErrorKind, InFlight, InstanceError, ModelEntry, TokenUsage};
use crate::proxy::{ExchangeObserver, ProxyError};
use crate::sse::SseParser;

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
}

impl OpenAiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
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
        (status, Json(self.body())).into_response()
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
            // The client may try again later: 503, where the management API answers 409.
            K::Failed | K::LimitReached | K::ShuttingDown => {
                Self::new(unavailable, error.code(), error.to_string())
            }
            K::Invalid => Self::new(StatusCode::BAD_REQUEST, error.code(), error.to_string()),
            K::Internal => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                error.to_string(),
            ),
        }
    }
}

impl From<ProxyError> for OpenAiError {
    fn from(error: ProxyError) -> Self {
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
    Json(ModelList {
        object: "list",
        data: api.registry.models().into_iter().map(Model::from).collect(),
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
    api.registry
        .models()
        .into_iter()
        .find(|entry| entry.id == model)
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
    route(&api, &named.model, &path, parts.headers, payload)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The 415 for a body not declared as JSON, in the shape the route's clients read: Anthropic's
/// error object on `/v1/messages`, OpenAI's elsewhere.
fn not_json(path: &str, headers: &HeaderMap) -> Response {
    let message = super::body::not_json_message(headers);
    let status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    if path == "/v1/messages"
        || path.starts_with("/v1/messages/")
        || path.starts_with("/v1/messages?")
    {
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": "invalid_request_error", "message": message},
        });
        return (status, Json(body)).into_response();
    }
    OpenAiError::new(status, "unsupported_media_type", message).into_response()
}

/// The `model` a JSON object names (`Some(None)` when it names none or not as a string);
/// `None` when `raw` is not a JSON object, or nests too deeply.
pub(crate) fn requested_model(raw: &[u8]) -> Option<Option<String>> {
    model_in(raw)
        .ok()
        .map(|named| named.map(|named| named.model))
}

/// The `model` string of a request body, and where its JSON value lies in the body's bytes.
#[derive(Debug, PartialEq)]
pub(crate) struct NamedModel {
    pub model: String,
    pub at: std::ops::Range<usize>,
}

/// Reads the `model` of a JSON object without building the rest into a tree: the body (long
/// prompts, base64 images) is checked and skipped, since it goes on as it came. `Ok(None)` when
/// there is no `model` or it is not a string; an error (why) when `raw` is not a JSON object.
///
/// Nesting is bounded by serde_json's recursion limit (128 arrays or objects deep), which it
/// keeps for the values it builds but not for those it skips: every value is skipped here
/// through `deserialize_any`, where the limit holds. Real requests nest a few levels
/// (messages, content parts, tool schemas); a deeper body is refused before a backend's own
/// recursive parser meets it.
pub(crate) fn model_in(raw: &[u8]) -> Result<Option<NamedModel>, String> {
    // serde also reads a struct from an array; only an object is a request.
    if raw.trim_ascii_start().first() != Some(&b'{') {
        return Err("expected a JSON object".to_owned());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let found = serde::Deserializer::deserialize_map(&mut deserializer, ModelVisitor)
        .and_then(|found| deserializer.end().map(|()| found))
        .map_err(|e| format!("expected a JSON object ({e})"))?;
    let Some(value) = found else {
        return Ok(None);
    };
    let text = value.get();
    let start = text.as_ptr() as usize - raw.as_ptr() as usize;
    Ok(serde_json::from_str::<String>(text)
        .ok()
        .map(|model| NamedModel {
            model,
            at: start..start + text.len(),
        }))
}

/// The top-level object: its `model` as written, every other value skipped with its depth
/// counted.
struct ModelVisitor;

impl<'de> serde::de::Visitor<'de> for ModelVisitor {
    type Value = Option<&'de serde_json::value::RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut model = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "model" {
                map.next_value::<Skipped>()?;
                continue;
            }
            if model.is_some() {
                return Err(serde::de::Error::duplicate_field("model"));
            }
            let value: &'de serde_json::value::RawValue = map.next_value()?;
            // A raw value is skipped without a depth count: count it now.
            serde_json::from_str::<Skipped>(value.get()).map_err(serde::de::Error::custom)?;
            model = Some(value);
        }
        Ok(model)
    }
}

/// Any JSON value, read and dropped. Unlike `IgnoredAny` (which serde_json skips without
/// counting depth) it goes through `deserialize_any`, where the parser's recursion limit holds.
struct Skipped;

impl<'de> serde::Deserialize<'de> for Skipped {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> serde::de::Visitor<'de> for SkipVisitor {
    type Value = Skipped;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_unit<E>(self) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
        while seq.next_element::<Skipped>()?.is_some() {}
        Ok(Skipped)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, Skipped>()?
            .is_some()
        {}
        Ok(Skipped)
    }
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
    let lease = match api.registry.acquire(model).await {
        Ok(lease) => lease,
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
            return Err(error);
        }
    };
    lease.guard.count_request();
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
    let log = RequestLog::new(lease.guard, path, started);
    api.proxy
        .try_forward(request, &lease.upstream, path, log)
        .await
        .map_err(OpenAiError::from)
}

/// `raw` with `model` set to what the backend expects (the fast path's small bodies).
pub(crate) fn with_backend_model(raw: &[u8], backend_model: &str) -> Result<Bytes, OpenAiError> {
    let Some(named) = model_in(raw).map_err(|reason| {
        OpenAiError::new(StatusCode::BAD_REQUEST, "invalid_request_body", reason)
    })?
    else {
        return Ok(Bytes::copy_from_slice(raw));
    };
    let raw = Bytes::copy_from_slice(raw);
    Ok(spliced(&raw, named.at, backend_model).concat().into())
}

/// The body in three pieces, the `model` value at `at` replaced by `backend_model`: the client's
/// bytes are shared, not copied, however large the body.
fn spliced(raw: &Bytes, at: std::ops::Range<usize>, backend_model: &str) -> [Bytes; 3] {
    // A string serializes to JSON whatever it holds.
    let model = serde_json::to_vec(backend_model).unwrap_or_default();
    [
        raw.slice(..at.start),
        Bytes::from(model),
        raw.slice(at.end..),
    ]
}

/// A request body sent as pieces, with its exact length (so that backends which read only a
/// `Content-Length` body, like mlx_lm.server, get one).
struct Spliced {
    pieces: std::collections::VecDeque<Bytes>,
    left: u64,
}

impl Spliced {
    fn new(pieces: [Bytes; 3]) -> Self {
        let left = pieces.iter().map(|piece| piece.len() as u64).sum();
        Self {
            pieces: pieces
                .into_iter()
                .filter(|piece| !piece.is_empty())
                .collect(),
            left,
        }
    }
}

impl hyper::body::Body for Spliced {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let piece = this.pieces.pop_front();
        if let Some(piece) = &piece {
            this.left -= piece.len() as u64;
        }
        std::task::Poll::Ready(piece.map(|piece| Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A translated request's JSON, with `model` set to `backend_model` when there is one.
fn encoded(mut value: Value, backend_model: Option<&str>) -> Result<Bytes, OpenAiError> {
    if let (Some(object), Some(backend_model)) = (value.as_object_mut(), backend_model) {
        object.insert("model".into(), Value::String(backend_model.to_owned()));
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(encode_error)
}

fn encode_error(e: serde_json::Error) -> OpenAiError {
    OpenAiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        format!("cannot encode the request: {e}"),
    )
}

/// Largest JSON answer kept to read its `usage`; bigger ones (embeddings of long inputs) are
/// passed on without counting tokens.
const MAX_JSON_TAP: usize = 4 * 1024 * 1024;

/// Largest SSE event kept while looking for the final chunk's usage; a larger one is skipped.
const MAX_SSE_EVENT: usize = 1024 * 1024;

/// The request's log line and the instance's counters, written when the exchange ends (body
/// sent or client gone). Holds the in-flight guard, so the instance counts as busy until then.
pub(crate) struct RequestLog {
    guard: InFlight,
    path: String,
    started: Instant,
    status: Option<StatusCode>,
    body: TappedBody,
    tokens: TokenUsage,
}

/// What of the response body is kept to find the token counts: never the stream itself.
enum TappedBody {
    /// A JSON answer, whole (bounded by `MAX_JSON_TAP`).
    Json(Vec<u8>),
    /// An SSE stream: only the event being received.
    Sse(SseParser),
    Ignored,
}

impl RequestLog {
    pub(crate) fn new(guard: InFlight, path: &str, started: Instant) -> Self {
        Self {
            guard,
            path: crate::logging::redact_query(path).into_owned(),
            started,
            status: None,
            body: TappedBody::Ignored,
            tokens: TokenUsage::default(),
        }
    }
}

impl RequestLog {
    /// The backend answered with `status`; its body is kept for the token counts if
    /// `content_type` says it has them.
    pub(crate) fn answered(&mut self, status: StatusCode, content_type: &str) {
        self.status = Some(status);
        self.body = if content_type.starts_with("text/event-stream") {
            TappedBody::Sse(SseParser::new(MAX_SSE_EVENT))
        } else if content_type.starts_with("application/json") {
            TappedBody::Json(Vec::new())
        } else {
            TappedBody::Ignored
        };
    }

    /// A piece of the answer's body on its way to the client.
    pub(crate) fn body(&mut self, chunk: &[u8]) {
        tap_chunk(&mut self.body, &mut self.tokens, chunk);
    }

    /// The request ended with Corral's own `status` instead of the backend's answer.
    pub(crate) fn refused(&mut self, status: StatusCode) {
        self.status = Some(status);
    }
}

impl ExchangeObserver for RequestLog {
    fn response(&mut self, status: StatusCode, headers: &HeaderMap) {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        self.answered(status, content_type);
    }

    fn data(&mut self, chunk: &Bytes) {
        self.body(chunk);
    }

    fn failed(&mut self, error: &ProxyError) {
        self.refused(error.status());
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        finish_tap(&mut self.body, &mut self.tokens);
        let elapsed = self.started.elapsed();
        if self.tokens.per_second.is_none() {
            self.tokens.per_second = self
                .tokens
                .completion
                .filter(|&tokens| tokens > 0 && !elapsed.is_zero())
                .map(|tokens| tokens as f64 / elapsed.as_secs_f64());
        }
        if self.tokens != TokenUsage::default() {
            self.guard.record_tokens(self.tokens);
        }
        // A response whose status never arrived was cut off by the client.
        let status = self.status.map_or(499, |status| status.as_u16());
        tracing::info!(
            instance = self.guard.instance(),
            path = %self.path,
            status,
            duration_ms = elapsed.as_millis() as u64,
            prompt_tokens = self.tokens.prompt,
            completion_tokens = self.tokens.completion,
            tokens_per_second = self.tokens.per_second,
            "inference request"
        );
    }
}

/// Keeps what `body` needs of one response chunk; reads the usage of each complete SSE event.
fn tap_chunk(body: &mut TappedBody, tokens: &mut TokenUsage, chunk: &[u8]) {
    match body {
        TappedBody::Json(kept) if kept.len() + chunk.len() <= MAX_JSON_TAP => {
            kept.extend_from_slice(chunk)
        }
        TappedBody::Json(_) => *body = TappedBody::Ignored,
        // An event too large to keep holds no usage worth counting: skip it, read on.
        TappedBody::Sse(events) => {
            let _too_large = events.push(chunk, |data| sse_usage(tokens, data));
        }
        TappedBody::Ignored => {}
    }
}

/// Reads the usage of what `body` kept once the answer has ended: a whole JSON answer, or a
/// stream's last event that no blank line closed.
fn finish_tap(body: &mut TappedBody, tokens: &mut TokenUsage) {
    match body {
        TappedBody::Json(kept) => read_usage(tokens, kept),
        TappedBody::Sse(events) => events.finish(|data| sse_usage(tokens, data)),
        TappedBody::Ignored => {}
    }
}

/// The usage in one SSE event's data, if it mentions one.
fn sse_usage(tokens: &mut TokenUsage, data: &[u8]) {
    let mentions = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    if !mentions(b"usage") && !mentions(b"timings") {
        return;
    }
    read_usage(tokens, data.trim_ascii());
}

/// The parts of an answer or stream event that carry token counts: OpenAI's `usage`,
/// Anthropic's `usage` (also inside `message`), llama-server's `timings`. The rest is skipped
/// while parsing (an answer may hold a long text or an embedding), not built into a tree; a field
/// of another type than expected reads as absent and hides nothing else.
#[derive(serde::Deserialize)]
struct UsageEvent {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<Usage>,
    #[serde(default, deserialize_with = "lenient")]
    message: Option<UsageMessage>,
    #[serde(default, deserialize_with = "lenient")]
    timings: Option<Timings>,
}

#[derive(serde::Deserialize)]
struct UsageMessage {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<Usage>,
}

#[derive(serde::Deserialize)]
struct Usage {
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    output_tokens: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Timings {
    #[serde(default, deserialize_with = "lenient")]
    prompt_n: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    predicted_n: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    predicted_per_second: Option<f64>,
}

/// `T` when the value is one, else `None` (null, or a backend's own idea of the field's type).
/// Read in one pass, without buffering the value to try it as `T` first: this runs on every
/// answer that passes the router.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Lenient<'de>,
{
    deserializer.deserialize_any(LenientVisitor(std::marker::PhantomData::<T>))
}

/// What `lenient` can read: a number, or an object (whose own fields are lenient).
trait Lenient<'de>: Sized {
    fn from_u64(_value: u64) -> Option<Self> {
        None
    }
    fn from_f64(_value: f64) -> Option<Self> {
        None
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        drain_map(map).map(|()| None)
    }
}

impl Lenient<'_> for u64 {
    fn from_u64(value: u64) -> Option<Self> {
        Some(value)
    }
}

impl Lenient<'_> for f64 {
    fn from_u64(value: u64) -> Option<Self> {
        Some(value as f64)
    }
    fn from_f64(value: f64) -> Option<Self> {
        Some(value)
    }
}

/// Objects read with `Deserialize`; every field of theirs is lenient, so they cannot fail on a
/// field's type.
macro_rules! lenient_object {
    ($($object:ty),*) => {$(
        impl<'de> Lenient<'de> for $object {
            fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Some)
            }
        }
    )*};
}
lenient_object!(Usage, UsageMessage, Timings);

fn drain_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map
        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

struct LenientVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Lenient<'de>> serde::de::Visitor<'de> for LenientVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(T::from_u64(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(value).ok().and_then(T::from_u64))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
        Ok(T::from_f64(value))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::from_map(map)
    }
}

/// Takes the token counts from one JSON answer or stream event. Later events win.
fn read_usage(tokens: &mut TokenUsage, json: &[u8]) {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return;
    }
    let Ok(event) = serde_json::from_slice::<UsageEvent>(json) else {
        return;
    };
    let message_usage = event.message.and_then(|message| message.usage);
    for usage in [event.usage, message_usage].into_iter().flatten() {
        if let Some(prompt) = usage.prompt_tokens.or(usage.input_tokens) {
            tokens.prompt = Some(prompt);
        }
        if let Some(completion) = usage.completion_tokens.or(usage.output_tokens) {
            tokens.completion = Some(completion);
        }
    }
    if let Some(timings) = event.timings {
        if tokens.prompt.is_none() {
            tokens.prompt = timings.prompt_n;
        }
        if tokens.completion.is_none() {
            tokens.completion = timings.predicted_n;
        }
        if let Some(speed) = timings.predicted_per_second {
            tokens.per_second = Some(speed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
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
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tap_tests {
    use super::*;

    #[test]
    fn sse_lines_split_across_chunks_are_read() {
        let mut body = TappedBody::Sse(SseParser::new(MAX_SSE_EVENT));
        let mut tokens = TokenUsage::default();
        for chunk in [
            &b"data: {\"choices\":[]}\n\ndata: {\"usage\": {\"prompt_"[..],
            &b"tokens\": 5, \"completion_tokens\": 7}}\n\ndata: [DONE]\n\n"[..],
        ] {
            tap_chunk(&mut body, &mut tokens, chunk);
        }
        assert_eq!((tokens.prompt, tokens.completion), (Some(5), Some(7)));
    }
}

#[cfg(test)]
#[path = "openai_proptests.rs"]
mod proptests;

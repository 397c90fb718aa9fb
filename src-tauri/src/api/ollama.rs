//! Ollama's API (`/api/chat`, `/api/generate`, `/api/embed`, `/api/tags`, ...) for editors and
//! apps that only speak Ollama: requests are translated to the instance's OpenAI endpoints and
//! sent through `openai::dispatch`; answers come back in Ollama's shapes, streamed as NDJSON
//! line by line as the backend produces tokens. `model` names an instance (`name:latest` too).

mod models;
mod request;
mod stream;

#[cfg(test)]
mod proptests;

use std::convert::Infallible;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::auth;
use super::body::JsonBody;
use super::error::ApiError;
use super::openai::{self, OpenAiError};
use super::Api;
use crate::supervisor::Status;
use request::RequestError;
use stream::{Aggregate, Shape, Translator};

/// The Ollama version Corral answers on `/api/version`: the API level implemented here
/// (`think`, tool calls, structured outputs), which clients check before using those features.
pub const OLLAMA_API_VERSION: &str = "0.9.0";

/// The most a whole (non-streamed) backend answer may weigh: embeddings of long batches are big.
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// The Ollama routes, behind inference auth (inference or management keys).
pub fn router(api: Api, auth: auth::InferenceAuth) -> Router {
    Router::new()
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings))
        .layer(from_fn_with_state(auth, auth::require_inference))
        .with_state(api)
}

/// A failed Ollama request: `{"error": "<message>"}` with its status, as Ollama answers.
#[derive(Debug)]
pub struct OllamaError {
    status: StatusCode,
    message: String,
}

impl OllamaError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<ApiError> for OllamaError {
    fn from(error: ApiError) -> Self {
        Self::new(error.status, error.details)
    }
}

/// Corral's own refusal of the request (no such model, not running, the backend unreachable).
impl From<OpenAiError> for OllamaError {
    fn from(error: OpenAiError) -> Self {
        Self::new(error.status, error.message)
    }
}

impl From<RequestError> for OllamaError {
    fn from(error: RequestError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error.to_string())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Answer = Result<Response, OllamaError>;

async fn version() -> Json<Value> {
    Json(json!({ "version": OLLAMA_API_VERSION }))
}

async fn tags(State(api): State<Api>) -> Json<Value> {
    let caller = crate::access::current_caller();
    let models: Vec<Value> = api
        .registry
        .list()
        .iter()
        .filter(|view| caller.may_use(&view.name))
        .map(models::tag)
        .collect();
    Json(json!({ "models": models }))
}

async fn ps(State(api): State<Api>) -> Json<Value> {
    let caller = crate::access::current_caller();
    let models: Vec<Value> = api
        .registry
        .list()
        .iter()
        .filter(|view| view.status == Status::Running && caller.may_use(&view.name))
        .map(models::running)
        .collect();
    Json(json!({ "models": models }))
}

async fn show(State(api): State<Api>, body: Result<JsonBody, ApiError>) -> Answer {
    let JsonBody(request) = body?;
    // Older clients send `name`.
    let model = request
        .get("model")
        .or_else(|| request.get("name"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or(RequestError::MissingModel)?;
    let view = lookup(&api, model)?;
    Ok(Json(models::show(&view)).into_response())
}

async fn chat(State(api): State<Api>, body: Result<JsonBody, ApiError>) -> Answer {
    let started = Instant::now();
    let JsonBody(mut request) = body?;
    let model = request::model(&request)?.to_owned();
    let instance = request::instance_name(&model);
    let empty = request
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if empty {
        return load_or_unload(&api, &request, &model, Shape::Chat).await;
    }
    let stream = request::wants_stream(&request);
    // The messages move into the translated body: a large prompt is not held twice.
    let body = request::chat(&mut request, instance)?;
    drop(request);
    let answer = Exchange {
        shape: Shape::Chat,
        model: &model,
        started,
        stream,
    };
    answer.run(&api, instance, request::CHAT_PATH, body).await
}

async fn generate(State(api): State<Api>, body: Result<JsonBody, ApiError>) -> Answer {
    let started = Instant::now();
    let JsonBody(mut request) = body?;
    let model = request::model(&request)?.to_owned();
    let instance = request::instance_name(&model);
    let empty = request
        .get("prompt")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if empty {
        return load_or_unload(&api, &request, &model, Shape::Generate).await;
    }
    let stream = request::wants_stream(&request);
    let (path, body) = request::generate(&mut request, instance)?;
    drop(request);
    let answer = Exchange {
        shape: Shape::Generate,
        model: &model,
        started,
        stream,
    };
    answer.run(&api, instance, path, body).await
}

async fn embed(State(api): State<Api>, body: Result<JsonBody, ApiError>) -> Answer {
    let started = Instant::now();
    let JsonBody(mut request) = body?;
    let model = request::model(&request)?.to_owned();
    let model = model.as_str();
    let instance = request::instance_name(model);
    let body = request::embed(&mut request, instance)?;
    drop(request);
    let answer = embeddings_of(&api, instance, body).await?;
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    Ok(Json(json!({
        "model": model,
        "embeddings": answer.vectors,
        "total_duration": nanos,
        "load_duration": 0,
        "prompt_eval_count": answer.prompt_tokens,
    }))
    .into_response())
}

async fn embeddings(State(api): State<Api>, body: Result<JsonBody, ApiError>) -> Answer {
    let JsonBody(request) = body?;
    let model = request::model(&request)?;
    let instance = request::instance_name(model);
    let body = request::embeddings(&request, instance)?;
    let answer = embeddings_of(&api, instance, body).await?;
    let first = answer
        .vectors
        .into_iter()
        .next()
        .unwrap_or(Value::Array(Vec::new()));
    Ok(Json(json!({ "embedding": first })).into_response())
}

/// The instance behind an Ollama model name, or Ollama's 404 (403 for a key held to other
/// instances).
fn lookup(api: &Api, model: &str) -> Result<crate::instances::InstanceView, OllamaError> {
    let instance = request::instance_name(model);
    if api.registry.get(instance).is_ok() && !crate::access::current_caller().may_use(instance) {
        return Err(openai::permission_denied(instance).into());
    }
    api.registry.get(instance).map_err(|e| match e {
        crate::instances::InstanceError::NotFound(_)
        | crate::instances::InstanceError::InvalidName(_) => OllamaError::new(
            StatusCode::NOT_FOUND,
            format!("model \"{model}\" not found"),
        ),
        other => ApiError::from(other).into(),
    })
}

/// An empty chat or prompt is Ollama's way to load a model (start the instance and wait until it
/// is ready) or, with `keep_alive: 0`, to unload it (stop it as the idle reaper would). Both
/// only for an instance that starts on demand: what the owner keeps stopped or running by hand
/// is not a client's to change.
async fn load_or_unload(api: &Api, request: &Value, model: &str, shape: Shape) -> Answer {
    let view = lookup(api, model)?;
    let unload = request::wants_unload(request);
    let on_demand = view.options.on_demand_start;
    if unload {
        if !on_demand && view.status == Status::Running {
            return Err(OllamaError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "model \"{model}\" cannot be unloaded by a client: instance '{}' does not start \
                     on demand (on_demand_start is off); stop it in Corral instead",
                    view.name
                ),
            ));
        }
        api.registry
            .unload(&view.name)
            .await
            .map_err(ApiError::from)?;
    } else {
        match api.registry.acquire(&view.name).await {
            // Loaded: nothing to send it, so the lease ends here.
            Ok(lease) => drop(lease),
            Err(crate::instances::InstanceError::NotRunning(name)) => {
                return Err(OllamaError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "model \"{model}\" is not loaded and instance '{name}' does not start on \
                         demand (on_demand_start is off): start it in Corral first"
                    ),
                ))
            }
            Err(e) => return Err(ApiError::from(e).into()),
        }
    }
    let mut answer = json!({
        "model": model,
        "created_at": stream::now_rfc3339(),
        "done": true,
        "done_reason": if unload { "unload" } else { "load" },
    });
    match shape {
        Shape::Chat => answer["message"] = json!({"role": "assistant", "content": ""}),
        Shape::Generate => answer["response"] = json!(""),
    }
    Ok(Json(answer).into_response())
}

/// One translated completion request and how the client wants the answer.
struct Exchange<'a> {
    shape: Shape,
    /// As the client wrote it: echoed in every answer object.
    model: &'a str,
    started: Instant,
    stream: bool,
}

impl Exchange<'_> {
    async fn run(self, api: &Api, instance: &str, path: &str, body: Value) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let response = openai::dispatch(api, instance, path, headers, body).await?;
        let response = upstream_ok(response).await?;
        let mut translator = Translator::new(self.shape, self.model, self.started);
        let is_sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            // A backend that ignored `stream` answered in one piece.
            let whole = read_json(response).await?;
            let events = translator.whole(&whole);
            return if self.stream {
                Ok(ndjson_response(Body::from(translator.ndjson(&events))))
            } else {
                let mut aggregate = Aggregate::default();
                aggregate.push(events);
                finish(aggregate, self.shape)
            };
        }
        let upstream = response.into_body().into_data_stream();
        if self.stream {
            return Ok(ndjson_response(Body::from_stream(ndjson_stream(
                upstream, translator,
            ))));
        }
        let mut aggregate = Aggregate::default();
        let mut upstream = upstream;
        while let Some(chunk) = upstream.next().await {
            match chunk {
                Ok(bytes) => aggregate.push(translator.feed(&bytes)),
                Err(e) => {
                    return Err(OllamaError::new(
                        StatusCode::BAD_GATEWAY,
                        format!("the backend's answer broke off: {e}"),
                    ))
                }
            }
            if translator.finished() {
                break;
            }
        }
        aggregate.push(translator.finish());
        finish(aggregate, self.shape)
    }
}

fn finish(aggregate: Aggregate, shape: Shape) -> Answer {
    aggregate
        .finish(shape)
        .map(|answer| Json(answer).into_response())
        .map_err(|message| OllamaError::new(StatusCode::INTERNAL_SERVER_ERROR, message))
}

fn ndjson_response(body: Body) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        body,
    )
        .into_response()
}

/// The backend's SSE, translated read by read. Dropping it (the client went away) drops the
/// upstream body, which closes the backend connection and so cancels the generation.
fn ndjson_stream<S>(
    upstream: S,
    translator: Translator,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
{
    futures_util::stream::unfold(Some((upstream, translator)), |state| async move {
        let (mut upstream, mut translator) = state?;
        loop {
            let events = match upstream.next().await {
                Some(Ok(bytes)) => translator.feed(&bytes),
                Some(Err(e)) => vec![stream::Event::Error(format!(
                    "the backend's answer broke off: {e}"
                ))],
                None => translator.finish(),
            };
            let ended = translator.finished()
                || events.iter().any(|e| matches!(e, stream::Event::Error(_)));
            let out = translator.ndjson(&events);
            if ended {
                return Some((Ok(Bytes::from(out)), None));
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), Some((upstream, translator))));
            }
        }
    })
}

/// The backend's answer if it is a success; otherwise its error in Ollama's shape, status kept.
async fn upstream_ok(response: Response) -> Result<Response, OllamaError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let bytes = axum::body::to_bytes(response.into_body(), 1024 * 1024)
        .await
        .unwrap_or_default();
    let message = match serde_json::from_slice::<Value>(&bytes) {
        // OpenAI's shape, `{"error": {"message": ...}}`, or a bare `{"error": "..."}`.
        Ok(Value::Object(object)) => match object.get("error") {
            Some(error) => stream::error_message(error),
            None => Value::Object(object).to_string(),
        },
        _ => String::from_utf8_lossy(&bytes).trim().to_owned(),
    };
    let message = if message.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the backend failed")
            .to_owned()
    } else {
        message
    };
    Err(OllamaError::new(status, message))
}

async fn read_json(response: Response) -> Result<Value, OllamaError> {
    let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|e| {
            OllamaError::new(
                StatusCode::BAD_GATEWAY,
                format!("the backend's answer could not be read: {e}"),
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        OllamaError::new(
            StatusCode::BAD_GATEWAY,
            format!("the backend's answer is not JSON: {e}"),
        )
    })
}

/// Vectors of an OpenAI embeddings answer, in input order.
struct Embeddings {
    vectors: Vec<Value>,
    prompt_tokens: u64,
}

async fn embeddings_of(api: &Api, instance: &str, body: Value) -> Result<Embeddings, OllamaError> {
    let response = openai::dispatch(
        api,
        instance,
        request::EMBEDDINGS_PATH,
        HeaderMap::new(),
        body,
    )
    .await;
    let answer = read_json(upstream_ok(response?).await?).await?;
    let mut data: Vec<&Value> = answer
        .get("data")
        .and_then(Value::as_array)
        .map(|data| data.iter().collect())
        .ok_or_else(|| {
            OllamaError::new(
                StatusCode::BAD_GATEWAY,
                "the backend's embeddings answer has no data",
            )
        })?;
    data.sort_by_key(|item| item.get("index").and_then(Value::as_u64).unwrap_or(0));
    Ok(Embeddings {
        vectors: data
            .into_iter()
            .map(|item| item.get("embedding").cloned().unwrap_or(Value::Null))
            .collect(),
        prompt_tokens: answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
    })
}

//! llama.cpp's router mode (llamactl 0.20's `/api/v1/llama-cpp/{name}/models...`): an instance
//! whose llama-server serves the models of a folder or a preset file (`models_dir`,
//! `models_preset`, no `model`) lists them and loads or unloads one, forwarded to llama-server's
//! own `/models`, `/models/load` and `/models/unload`, the instance started first if needed. On
//! `/v1` its models are `<instance>/<model>`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::Api;

type Answer<T> = Result<T, ApiError>;

/// How long `/v1/models` waits for a router instance's own list.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of that list read.
const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// A conflict with the instance's definition, as a stopped instance's 409s are.
fn not_router(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_router_mode",
        format!(
            "instance '{name}' serves one model: router mode is a llama.cpp instance with \
             models_dir or models_preset and no model"
        ),
    )
}

/// Sends `method path` (with `body`) to the router instance `name`, started on demand first.
async fn forward(
    api: &Api,
    name: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer<Response> {
    if !api.registry.serves_many_models(name)? {
        return Err(not_router(name));
    }
    let lease = api.registry.acquire(name).await?;
    let mut request = Request::new(match &body {
        Some(body) => Body::from(body.to_string()),
        None => Body::empty(),
    });
    *request.method_mut() = method;
    if body.is_some() {
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(api
        .relay
        .forward(request, &lease.upstream, path, lease.guard)
        .await)
}

/// The models the instance's llama-server serves, with their state (`loaded`, `unloaded`),
/// as llama-server's `GET /models` lists them.
#[utoipa::path(get, path = "/api/v1/llama-cpp/{name}/models", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, description = "llama-server's list of its models", body = Object),
        (status = 409, description = "`not_router_mode`: the instance serves one model", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 503, description = "The instance could not be started", body = ErrorBody)))]
pub async fn models(State(api): State<Api>, Path(name): Path<String>) -> Answer<Response> {
    forward(&api, &name, Method::GET, "/models", None).await
}

/// Load one of the instance's models.
#[utoipa::path(post, path = "/api/v1/llama-cpp/{name}/models/{model}/load", tag = "instances",
    params(
        ("name" = String, Path, description = "Instance name"),
        ("model" = String, Path, description = "The model's id in the instance's list")),
    responses(
        (status = 200, description = "llama-server's answer", body = Object),
        (status = 409, description = "`not_router_mode`: the instance serves one model", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn load(State(api): State<Api>, Path(names): Path<(String, String)>) -> Answer<Response> {
    model_action(&api, names, "/models/load").await
}

/// Unload one of the instance's models (its memory is freed; the next request loads it again).
#[utoipa::path(post, path = "/api/v1/llama-cpp/{name}/models/{model}/unload", tag = "instances",
    params(
        ("name" = String, Path, description = "Instance name"),
        ("model" = String, Path, description = "The model's id in the instance's list")),
    responses(
        (status = 200, description = "llama-server's answer", body = Object),
        (status = 409, description = "`not_router_mode`: the instance serves one model", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn unload(
    State(api): State<Api>,
    Path(names): Path<(String, String)>,
) -> Answer<Response> {
    model_action(&api, names, "/models/unload").await
}

/// `POST path` with `{"model": model}` to the router instance `name`.
async fn model_action(api: &Api, (name, model): (String, String), path: &str) -> Answer<Response> {
    let body = serde_json::json!({ "model": model });
    forward(api, &name, Method::POST, path, Some(body)).await
}

/// The ids a running router instance's llama-server lists, read within `LIST_TIMEOUT`; none
/// when it does not answer (it is listed under its own name all the same).
pub(crate) async fn served_models(api: &Api, name: &str) -> Vec<String> {
    let Ok((upstream, in_flight)) = api.registry.lease_running(name) else {
        return Vec::new();
    };
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    let read = async {
        let response = api
            .relay
            .try_forward(request, &upstream, "/models", in_flight)
            .await
            .ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_LIST_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice::<Value>(&body).ok()
    };
    let Ok(Some(list)) = tokio::time::timeout(LIST_TIMEOUT, read).await else {
        return Vec::new();
    };
    list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|model| model["id"].as_str())
        .map(str::to_owned)
        .collect()
}

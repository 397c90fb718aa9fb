//! `/api/v1/instances`: list, create, get, update, delete, start, stop, restart, logs and the
//! per-instance proxy.

use std::collections::HashMap;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, RequestExt};

use super::auth;
use super::body::JsonBody;
use super::error::{ApiError, ErrorBody};
use super::system::fit_warnings;
use super::Api;
use crate::backends::{installed, BackendOptions};
use crate::instances::{CreateInstanceOptions, InstanceOptions, InstanceView};
use crate::supervisor::Status;

type Answer<T> = Result<T, ApiError>;

/// List all instances, sorted by name.
#[utoipa::path(get, path = "/api/v1/instances", tag = "instances",
    responses((status = 200, description = "Every instance", body = [InstanceView])))]
pub async fn list(State(api): State<Api>) -> Json<Vec<InstanceView>> {
    Json(api.registry.list())
}

/// One instance.
#[utoipa::path(get, path = "/api/v1/instances/{name}", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, body = InstanceView),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn get(State(api): State<Api>, Path(name): Path<String>) -> Answer<Json<InstanceView>> {
    Ok(Json(api.registry.get(&name)?))
}

/// Create an instance and start it.
#[utoipa::path(post, path = "/api/v1/instances/{name}", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    request_body = CreateInstanceOptions,
    responses(
        (status = 201, description = "Created and started", body = InstanceView),
        (status = 400, description = "Invalid name, JSON or options; `model_not_found`: the model path does not exist", body = ErrorBody),
        (status = 409, description = "Name or port taken, or a limit reached", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON (Content-Type: application/json)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "`backend_not_installed`: the backend's command is not found; the details say how to install it", body = ErrorBody),
        (status = 500, description = "The backend could not be started", body = ErrorBody)))]
pub async fn create(
    State(api): State<Api>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> Answer<(StatusCode, Json<InstanceView>)> {
    // Checked before the start, while the memory the model will take is still free.
    let warnings = match InstanceOptions::from_json(&body, &api.config.instances) {
        Ok(options) => {
            can_start(&api, &options.backend, options.command_override.as_deref())?;
            fit_warnings(&api, &options.backend, None).await
        }
        // The registry refuses these options with the reason.
        Err(_) => Vec::new(),
    };
    let mut view = api.registry.create(&name, &body).await?;
    view.warnings = warnings;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Refuses options that cannot start, before anything is saved or started: a backend whose
/// command is not found and that Corral did not install (422, with how to install it: a fresh machine's first create) and a model
/// path that does not exist (400). A relative `model` is a Hugging Face repo id for mlx-lm and
/// vLLM, or a path the backend resolves in its own working folder: left to the backend.
fn can_start(api: &Api, backend: &BackendOptions, command_override: Option<&str>) -> Answer<()> {
    let backend_type = backend.backend_type();
    let command = api.config.backends.command(backend_type);
    // An override was checked to be an executable file when it was given.
    let resolved = match command_override {
        Some(_) => Ok(()),
        None => api
            .registry
            .installs()
            .resolve(backend_type, command)
            .map(drop),
    };
    if let Err(why) = resolved {
        let advice = installed::advice(
            backend_type,
            std::env::consts::OS,
            cfg!(all(target_os = "macos", target_arch = "aarch64")),
        );
        let mut details = format!(
            "{} is not installed: {why}. {}",
            backend_type.as_str(),
            advice.summary
        );
        if !advice.commands.is_empty() {
            details.push_str(&format!(": {}", advice.commands.join(" && ")));
        }
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "backend_not_installed",
            details,
        ));
    }
    if let Some(model) = backend.model() {
        let path = std::path::Path::new(model);
        if path.is_absolute() && !path.exists() {
            return Err(ApiError::bad_request(
                "model_not_found",
                format!("no model at {model}: GET /api/v1/models lists the models on this machine"),
            )
            .with_field(Some("backend_options.model".to_owned())));
        }
    }
    Ok(())
}

/// Replace an instance's options; a running instance is restarted with them.
#[utoipa::path(put, path = "/api/v1/instances/{name}", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    request_body = CreateInstanceOptions,
    responses(
        (status = 200, body = InstanceView),
        (status = 400, description = "Invalid name, JSON or options; `model_not_found`: the model path does not exist", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON (Content-Type: application/json)", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Port or alias taken", body = ErrorBody),
        (status = 422, description = "`backend_not_installed`: the backend's command is not found; the details say how to install it", body = ErrorBody),
        (status = 500, description = "A running instance could not be restarted with them", body = ErrorBody)))]
pub async fn update(
    State(api): State<Api>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> Answer<Json<InstanceView>> {
    let current = api.registry.get(&name)?;
    let warnings = match InstanceOptions::from_json(&body, &api.config.instances) {
        Ok(options) => {
            can_start(&api, &options.backend, options.command_override.as_deref())?;
            fit_warnings(&api, &options.backend, current.resources).await
        }
        Err(_) => Vec::new(),
    };
    let mut view = api.registry.update(&name, &body).await?;
    view.warnings = warnings;
    Ok(Json(view))
}

/// Stop the instance if it runs, then remove it (its log file stays).
#[utoipa::path(delete, path = "/api/v1/instances/{name}", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn delete(State(api): State<Api>, Path(name): Path<String>) -> Answer<StatusCode> {
    api.registry.delete(&name).await?;
    if let Err(e) = api.keys.forget_instance(&name) {
        // Memory has forgotten it; the next start prunes the database's rows.
        tracing::warn!("instance '{name}' stays in the keys database's scopes: {e}");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Start an instance; a running one is returned as it is.
#[utoipa::path(post, path = "/api/v1/instances/{name}/start", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, body = InstanceView),
        (status = 400, description = "Invalid name; `model_not_found`: the model path does not exist", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Running limit reached or port in use", body = ErrorBody),
        (status = 422, description = "`backend_not_installed`: the backend's command is not found; the details say how to install it", body = ErrorBody),
        (status = 500, description = "The backend could not be started", body = ErrorBody)))]
pub async fn start(State(api): State<Api>, Path(name): Path<String>) -> Answer<Json<InstanceView>> {
    let current = api.registry.get(&name)?;
    let warnings = if current.status == Status::Running {
        Vec::new()
    } else {
        match BackendOptions::from_json(
            current.options.backend_type,
            &current.options.backend_options,
        ) {
            Ok(backend) => {
                can_start(&api, &backend, current.options.command_override.as_deref())?;
                fit_warnings(&api, &backend, None).await
            }
            Err(_) => Vec::new(),
        }
    };
    let mut view = api.registry.start(&name).await?;
    view.warnings = warnings;
    Ok(Json(view))
}

/// Stop an instance; a stopped one is returned as it is.
#[utoipa::path(post, path = "/api/v1/instances/{name}/stop", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, body = InstanceView),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 500, description = "The backend could not be stopped", body = ErrorBody)))]
pub async fn stop(State(api): State<Api>, Path(name): Path<String>) -> Answer<Json<InstanceView>> {
    Ok(Json(api.registry.stop(&name).await?))
}

/// Stop (if needed) and start an instance, from any state.
#[utoipa::path(post, path = "/api/v1/instances/{name}/restart", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, body = InstanceView),
        (status = 400, description = "Invalid name; `model_not_found`: the model path does not exist", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Running limit reached or port in use", body = ErrorBody),
        (status = 422, description = "`backend_not_installed`: the backend's command is not found; the details say how to install it", body = ErrorBody),
        (status = 500, description = "The backend could not be started", body = ErrorBody)))]
pub async fn restart(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Answer<Json<InstanceView>> {
    let current = api.registry.get(&name)?;
    let warnings = match BackendOptions::from_json(
        current.options.backend_type,
        &current.options.backend_options,
    ) {
        Ok(backend) => {
            // Checked before the running process is stopped: a restart that cannot start
            // leaves the instance as it was.
            can_start(&api, &backend, current.options.command_override.as_deref())?;
            fit_warnings(&api, &backend, current.resources).await
        }
        Err(_) => Vec::new(),
    };
    let mut view = api.registry.restart(&name).await?;
    view.warnings = warnings;
    Ok(Json(view))
}

/// The instance's log: the last `lines` lines, or all of it when `lines` is missing or ≤ 0.
#[utoipa::path(get, path = "/api/v1/instances/{name}/logs", tag = "instances",
    params(
        ("name" = String, Path, description = "Instance name"),
        ("lines" = Option<i64>, Query, description = "Lines from the end; missing or <= 0 = all")),
    responses(
        (status = 200, description = "Log text", body = String, content_type = "text/plain"),
        (status = 400, description = "Invalid name or lines", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn logs(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer<Response> {
    let lines = match query.get("lines").map(|lines| lines.trim()) {
        None | Some("") => None,
        Some(lines) => {
            let lines: i64 = lines.parse().map_err(|_| {
                ApiError::bad_request(
                    "invalid_lines",
                    format!("lines must be an integer, got '{lines}'"),
                )
            })?;
            usize::try_from(lines).ok().filter(|&lines| lines > 0)
        }
    };
    let text = api.registry.logs(&name, lines).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// A one-time ticket that opens the instance's own web page (llama.cpp's chat) through the proxy.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ProxyTicket {
    /// Open this address (relative to the engine) in a browser tab within `expires_in` seconds:
    /// the page then gets a session cookie for this instance's proxy path only (HttpOnly,
    /// SameSite=Strict) and loads without the ticket. Without management auth it is the plain
    /// proxy address.
    pub url: String,
    /// Seconds the ticket stays valid; it works once.
    pub expires_in: u64,
}

/// A ticket for the instance's web page, so that a browser tab can open it without a key: no
/// management key ever appears in the page's address or reaches the backend.
#[utoipa::path(post, path = "/api/v1/instances/{name}/proxy-token", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, body = ProxyTicket),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn proxy_token(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Answer<Json<ProxyTicket>> {
    let view = api.registry.get(&name)?;
    let base = format!("/api/v1/instances/{}/proxy/", view.name);
    if !api.config.auth.require_management_auth {
        return Ok(Json(ProxyTicket {
            url: base,
            expires_in: 0,
        }));
    }
    let ticket = api.passes.issue_ticket(&view.name);
    Ok(Json(ProxyTicket {
        url: format!("{base}?{}={ticket}", auth::PROXY_TICKET_PARAM),
        expires_in: auth::TICKET_LIFETIME.as_secs(),
    }))
}

/// Forward a request to the instance's backend, the path after `/proxy` and the query kept
/// (Corral's `api_key` and ticket parameters taken out). Corral's own credentials never reach
/// the backend: the key headers and Corral's cookie are dropped, and the backend gets the key
/// Corral holds for it. Other methods (`TRACE`, `CONNECT`, extensions) are refused with 405: a
/// proxy has no business echoing or tunnelling, and a method the document does not list is not
/// forwarded.
#[utoipa::path(method(get, head, post, put, delete, patch, options), path = "/api/v1/instances/{name}/proxy/{rest}", tag = "instances",
    params(
        ("name" = String, Path, description = "Instance name"),
        ("rest" = String, Path, description = "Path on the backend, e.g. health")),
    responses(
        (status = "default", description = "Whatever the backend answers (any method is forwarded)"),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 502, description = "The backend did not answer", body = ErrorBody),
        (status = 503, description = "Instance is not running", body = ErrorBody)))]
pub async fn proxy(State(api): State<Api>, mut request: Request) -> Answer<Response> {
    let forwarded = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
    ];
    if !forwarded.contains(request.method()) {
        let refused = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the proxy forwards GET, HEAD, POST, PUT, DELETE, PATCH and OPTIONS",
        );
        let allow = [(
            header::ALLOW,
            "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS",
        )];
        return Ok((allow, refused).into_response());
    }
    // Extracted here rather than in the signature: the two proxy routes differ in their
    // parameters, and a map extractor would confuse the OpenAPI generator.
    let Path(params) = request
        .extract_parts::<Path<HashMap<String, String>>>()
        .await
        .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    let name = params.get("name").map(String::as_str).unwrap_or_default();
    let path = backend_path(request.uri().path()).to_owned();
    let mut target = path.clone();
    let corral_params = ["api_key", auth::PROXY_TICKET_PARAM];
    if let Some(query) = auth::without_params(request.uri().query(), &corral_params) {
        target.push('?');
        target.push_str(&query);
    }
    // Health probes (the UI polls them) must not keep an instance from going idle.
    if is_health_probe(&path) {
        let upstream = api.registry.upstream(name)?;
        return Ok(api.relay.forward(request, &upstream, &target, ()).await);
    }
    let (upstream, in_flight) = api.registry.lease_running(name)?;
    Ok(api
        .relay
        .forward(request, &upstream, &target, in_flight)
        .await)
}

fn is_health_probe(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path == "/health" || path == "/v1/health"
}

/// What follows `/instances/<name>/proxy` in the raw (still percent-encoded) path; `/` if nothing.
fn backend_path(path: &str) -> &str {
    let rest = path
        .split_once("/instances/")
        .and_then(|(_, after)| after.split_once('/'))
        .and_then(|(_, tail)| tail.strip_prefix("proxy"))
        .unwrap_or_default();
    if rest.is_empty() {
        "/"
    } else {
        rest
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::backend_path;

    #[test]
    fn the_proxy_prefix_is_stripped() {
        assert_eq!(backend_path("/api/v1/instances/a/proxy"), "/");
        assert_eq!(backend_path("/api/v1/instances/a/proxy/"), "/");
        assert_eq!(backend_path("/api/v1/instances/a/proxy/health"), "/health");
        assert_eq!(backend_path("/instances/a/proxy/v1/a%2Fb"), "/v1/a%2Fb");
    }
}

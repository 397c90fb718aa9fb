//! `/api/v1/version` and `/api/v1/server/{help,version,devices}`: what Corral and the configured
//! llama-server (or, when that is not found, the one Corral built) say about themselves.

use std::process::Stdio;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorBody};
use super::Api;

/// `--list-devices` initialises every GPU backend, which can take a while on a cold machine.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Corral's version, in llamactl's format.
#[utoipa::path(get, path = "/api/v1/version", tag = "system",
    responses((status = 200, description = "Version text", body = String, content_type = "text/plain")))]
pub async fn version() -> Response {
    text(format!(
        "Version: {}\nCommit: {}\nBuild Time: {}\n",
        env!("CARGO_PKG_VERSION"),
        option_env!("CORRAL_GIT_COMMIT").unwrap_or("unknown"),
        option_env!("CORRAL_BUILD_TIME").unwrap_or("unknown"),
    ))
}

/// `llama-server --help` of the configured command.
#[utoipa::path(get, path = "/api/v1/server/help", tag = "server",
    responses(
        (status = 200, description = "Help text", body = String, content_type = "text/plain"),
        (status = 500, description = "The command could not be run", body = ErrorBody)))]
pub async fn help(State(api): State<Api>) -> Result<Response, ApiError> {
    run_llama_server(&api, "--help").await.map(text)
}

/// `llama-server --version` of the configured command.
#[utoipa::path(get, path = "/api/v1/server/version", tag = "server",
    responses(
        (status = 200, description = "Version text", body = String, content_type = "text/plain"),
        (status = 500, description = "The command could not be run", body = ErrorBody)))]
pub async fn server_version(State(api): State<Api>) -> Result<Response, ApiError> {
    run_llama_server(&api, "--version").await.map(text)
}

/// `llama-server --list-devices` of the configured command.
#[utoipa::path(get, path = "/api/v1/server/devices", tag = "server",
    responses(
        (status = 200, description = "Device list", body = String, content_type = "text/plain"),
        (status = 500, description = "The command could not be run", body = ErrorBody)))]
pub async fn devices(State(api): State<Api>) -> Result<Response, ApiError> {
    run_llama_server(&api, "--list-devices").await.map(text)
}

/// `GET /api/v1/server/help` where llamactl 0.6+ serves it.
#[utoipa::path(get, path = "/api/v1/backends/llama-cpp/help", tag = "server",
    responses(
        (status = 200, description = "Help text", body = String, content_type = "text/plain"),
        (status = 500, description = "The command could not be run", body = ErrorBody)))]
pub async fn llama_help(api: State<Api>) -> Result<Response, ApiError> {
    help(api).await
}

/// `GET /api/v1/server/version` where llamactl 0.6+ serves it.
#[utoipa::path(get, path = "/api/v1/backends/llama-cpp/version", tag = "server",
    responses(
        (status = 200, description = "Version text", body = String, content_type = "text/plain"),
        (status = 500, description = "The command could not be run", body = ErrorBody)))]
pub async fn llama_version(api: State<Api>) -> Result<Response, ApiError> {
    server_version(api).await
}

/// `GET /api/v1/server/devices` where llamactl 0.6+ serves it.
#[utoipa::path(get, path = "/api/v1/backends/llama-cpp/devices", tag = "server",
    responses(
        (status = 200, description = "Device list", body = String, content_type = "text/plain"),
        (status = 500, description = "The command could not be run", body = ErrorBody)))]
pub async fn llama_devices(api: State<Api>) -> Result<Response, ApiError> {
    devices(api).await
}

/// Runs the configured llama-server (its configured args, then `flag`) and returns stdout
/// followed by stderr.
async fn run_llama_server(api: &Api, flag: &str) -> Result<String, ApiError> {
    let backend = &api.config.backends.llama_cpp;
    let program = api
        .registry
        .installs()
        .program(crate::backends::BackendType::LlamaCpp, backend);
    let shown = format!("{program} {flag}");
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&backend.args)
        .arg(flag)
        .envs(&backend.environment)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            ApiError::internal(
                "server_command_failed",
                format!("`{shown}` did not finish within {} s", COMMAND_TIMEOUT.as_secs()),
            )
        })?
        .map_err(|e| {
            ApiError::internal(
                "server_command_failed",
                format!("`{shown}` could not be run: {e}; set backends.llama-cpp.command to the llama-server executable"),
            )
        })?;
    let mut combined = String::from_utf8_lossy(&output.stdout).into_owned();
    combined.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        let tail: Vec<&str> = combined.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ApiError::internal(
            "server_command_failed",
            format!("`{shown}` failed ({}): {}", output.status, tail.join("\n")),
        ));
    }
    Ok(combined)
}

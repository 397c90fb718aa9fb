//! `/api/v1/backends`: whether each backend is installed, and
//! `/api/v1/backends/{backend}/parse-command`: a command line turned into instance options.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::BoundedBody;
use super::error::{ApiError, ErrorBody};
use super::Api;
use crate::backends::installed::{self, Installation};
use crate::backends::{self, BackendType};
use crate::devices::{SystemReport, Vendor};

#[derive(Debug, Deserialize, ToSchema)]
pub struct ParseCommandRequest {
    /// The command line, e.g. `llama-server -m model.gguf -c 4096`.
    pub command: String,
}

/// The options parsed from a command, ready for a create request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParsedCommand {
    pub backend_type: BackendType,
    pub backend_options: serde_json::Value,
}

/// The backend named in the URL (`llama-cpp`, `mlx`, `vllm`).
fn backend_of(segment: &str) -> Option<BackendType> {
    match segment {
        "llama-cpp" => Some(BackendType::LlamaCpp),
        "mlx" => Some(BackendType::MlxLm),
        "vllm" => Some(BackendType::Vllm),
        _ => None,
    }
}

/// Parse a backend command line into options.
#[utoipa::path(post, path = "/api/v1/backends/{backend}/parse-command", tag = "backends",
    params(("backend" = String, Path, description = "llama-cpp, mlx or vllm")),
    request_body = ParseCommandRequest,
    responses(
        (status = 200, body = ParsedCommand),
        (status = 400, description = "invalid_request, invalid_command or parse_error", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON (Content-Type: application/json)", body = ErrorBody),
        (status = 404, description = "Unknown backend", body = ErrorBody)))]
pub async fn parse_command(
    State(_api): State<Api>,
    Path(backend): Path<String>,
    BoundedBody(body): BoundedBody,
) -> Result<Json<ParsedCommand>, ApiError> {
    let backend_type = backend_of(&backend).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_backend",
            format!("no backend '{backend}': use llama-cpp, mlx or vllm"),
        )
    })?;
    let request: ParseCommandRequest = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(
            "invalid_request",
            "Invalid JSON body: send {\"command\": \"<the command line>\"}",
        )
    })?;
    let options = backends::parse_command(backend_type, &request.command)
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    Ok(Json(ParsedCommand {
        backend_type,
        backend_options: options.to_json(),
    }))
}

/// Each backend's installation: whether its configured command is found, where, its version and
/// the devices it can use; when it is missing, how to install it on this OS.
#[utoipa::path(get, path = "/api/v1/backends", tag = "backends",
    responses((status = 200, description = "llama.cpp, mlx-lm and vLLM, in that order", body = Vec<Installation>)))]
pub async fn list(State(api): State<Api>) -> Json<Vec<Installation>> {
    let commands = &api.config.backends;
    let (llama, mlx, vllm, report) = tokio::join!(
        installed::check(BackendType::LlamaCpp, &commands.llama_cpp),
        installed::check(BackendType::MlxLm, &commands.mlx),
        installed::check(BackendType::Vllm, &commands.vllm),
        api.devices.report(),
    );
    let mut all = vec![llama, mlx, vllm];
    for installation in &mut all {
        if installation.installed {
            installation.devices = devices(installation.backend, &report);
        }
    }
    Json(all)
}

/// What each backend can run on: llama.cpp what its own `--list-devices` reported; mlx-lm the
/// Apple GPU; vLLM the NVIDIA and AMD GPUs; each the CPU when nothing else.
fn devices(backend: BackendType, report: &SystemReport) -> Vec<String> {
    let mut devices: Vec<String> = report
        .accelerators
        .iter()
        .filter(|a| match backend {
            BackendType::LlamaCpp => a.source == "llama-server",
            BackendType::MlxLm => a.vendor == Vendor::Apple,
            BackendType::Vllm => {
                matches!(a.vendor, Vendor::Nvidia | Vendor::Amd) && a.source != "llama-server"
            }
        })
        .map(|a| a.name.clone())
        .collect();
    if devices.is_empty() {
        devices.push("CPU".to_owned());
    }
    devices
}

//! `/api/v1/backends`: whether each backend is installed,
//! `/api/v1/backends/{backend}/parse-command`: a command line turned into instance options, and
//! `/api/v1/backends/{backend}/install`: Corral installing mlx-lm or building llama-server.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::BoundedBody;
use super::error::{ApiError, ErrorBody};
use super::Api;
use crate::backends::install::{InstallJob, StartError};
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

fn known_backend(segment: &str) -> Result<BackendType, ApiError> {
    backend_of(segment).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_backend",
            format!("no backend '{segment}': use llama-cpp, mlx or vllm"),
        )
    })
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
    let backend_type = known_backend(&backend)?;
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

/// Each backend's installation: whether its configured command (else the one Corral installed,
/// `managed`) is found, where, its version and the devices it can use; when it is missing, how to
/// install it on this OS.
#[utoipa::path(get, path = "/api/v1/backends", tag = "backends",
    responses((status = 200, description = "llama.cpp, mlx-lm and vLLM, in that order", body = Vec<Installation>)))]
pub async fn list(State(api): State<Api>) -> Json<Vec<Installation>> {
    let commands = &api.config.backends;
    let installs = api.registry.installs();
    let managed = |backend| installs.recorded(backend).map(|i| i.path);
    let (llama_cpp, mlx_lm, vllm) = (
        managed(BackendType::LlamaCpp),
        managed(BackendType::MlxLm),
        managed(BackendType::Vllm),
    );
    let (llama, mlx, vllm, report) = tokio::join!(
        installed::check(
            BackendType::LlamaCpp,
            &commands.llama_cpp,
            llama_cpp.as_deref()
        ),
        installed::check(BackendType::MlxLm, &commands.mlx, mlx_lm.as_deref()),
        installed::check(BackendType::Vllm, &commands.vllm, vllm.as_deref()),
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

/// Install a backend: mlx-lm into a virtualenv of Corral's own, or llama-server built from
/// llama.cpp's source, under the data folder. Runs in the background; follow it with
/// `GET` on this route or the `backend_install` events of `/api/v1/events`. Once completed,
/// the backend runs the installed executable whenever its configured command is not found.
#[utoipa::path(post, path = "/api/v1/backends/{backend}/install", tag = "backends",
    params(("backend" = String, Path, description = "llama-cpp or mlx")),
    responses(
        (status = 202, description = "Started", body = InstallJob),
        (status = 404, description = "Unknown backend; `not_installable`: Corral does not install this backend (vLLM)", body = ErrorBody),
        (status = 409, description = "`install_running`: an install of this backend is running (here, or in another Corral process on the same data folder); `backend_installed`: its command is found already", body = ErrorBody),
        (status = 500, description = "The install log or lock could not be created", body = ErrorBody)))]
pub async fn install(
    State(api): State<Api>,
    Path(backend): Path<String>,
) -> Result<(StatusCode, Json<InstallJob>), ApiError> {
    let backend = known_backend(&backend)?;
    let command = api.config.backends.command(backend);
    let job = api
        .registry
        .installs()
        .start(backend, command)
        .map_err(|e| {
            let (status, code) = match &e {
                // There is no install of vLLM to start: as for an unknown backend, the
                // resource is not there (and a well-formed request is never "unprocessable").
                StartError::NotInstallable(_) => (StatusCode::NOT_FOUND, "not_installable"),
                StartError::AlreadyInstalled { .. } => (StatusCode::CONFLICT, "backend_installed"),
                StartError::Running(_) | StartError::RunningElsewhere(_) => {
                    (StatusCode::CONFLICT, "install_running")
                }
                StartError::Log { .. } | StartError::Lock { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "install_failed")
                }
            };
            ApiError::new(status, code, e.to_string())
        })?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// The latest install of a backend, running or ended.
#[utoipa::path(get, path = "/api/v1/backends/{backend}/install", tag = "backends",
    params(("backend" = String, Path, description = "llama-cpp or mlx")),
    responses(
        (status = 200, body = InstallJob),
        (status = 404, description = "Unknown backend, or no install of it since Corral started", body = ErrorBody)))]
pub async fn install_job(
    State(api): State<Api>,
    Path(backend): Path<String>,
) -> Result<Json<InstallJob>, ApiError> {
    let backend = known_backend(&backend)?;
    api.registry
        .installs()
        .job(backend)
        .map(Json)
        .ok_or_else(|| no_install(backend))
}

/// Cancel a backend's running install: its processes are killed, nothing is recorded, and a
/// half-made virtualenv is removed (llama.cpp's build tree is kept, so the next install resumes
/// it). Answers the job once it has ended (`completed` when it finished first).
#[utoipa::path(delete, path = "/api/v1/backends/{backend}/install", tag = "backends",
    params(("backend" = String, Path, description = "llama-cpp or mlx")),
    responses(
        (status = 200, body = InstallJob),
        (status = 404, description = "Unknown backend, or no install of it since Corral started", body = ErrorBody)))]
pub async fn cancel_install(
    State(api): State<Api>,
    Path(backend): Path<String>,
) -> Result<Json<InstallJob>, ApiError> {
    let backend = known_backend(&backend)?;
    api.registry
        .installs()
        .cancel(backend)
        .await
        .map(Json)
        .ok_or_else(|| no_install(backend))
}

fn no_install(backend: BackendType) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_install",
        format!(
            "{} has not been installed since Corral started",
            backend.as_str()
        ),
    )
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

//! `/api/v1/backends/{backend}/parse-command`: a command line turned into instance options.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::BoundedBody;
use super::error::{ApiError, ErrorBody};
use super::Api;
use crate::backends::{self, BackendType};

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

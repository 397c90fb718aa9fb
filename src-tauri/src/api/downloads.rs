//! `/api/v1/models/download`, `/api/v1/models/jobs` and `DELETE /api/v1/models`: model
//! downloads from Hugging Face (the work is in `crate::downloads`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::body::JsonBody;
use super::error::{ApiError, ErrorBody};
use super::Api;
use crate::downloads::{DownloadAccepted, DownloadError, DownloadJob, ModelFormat};

type Answer<T> = Result<T, ApiError>;

/// A download request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    /// `org/name`, or `org/name:tag` with a quant tag (`Q4_K_M`) that picks GGUF files as
    /// llama.cpp's `-hf` does.
    #[schema(example = "unsloth/Qwen3-0.6B-GGUF:Q4_K_M")]
    pub repo: String,
    /// `gguf` (the default when the repository has `.gguf` files) or `safetensors` (the whole
    /// repository).
    pub format: Option<ModelFormat>,
}

impl From<DownloadError> for ApiError {
    fn from(error: DownloadError) -> Self {
        use DownloadError as E;
        let (status, code) = match &error {
            E::InvalidRepo { .. } => (StatusCode::BAD_REQUEST, "invalid_repo"),
            E::InvalidTag(_) => (StatusCode::BAD_REQUEST, "invalid_tag"),
            E::TagWithoutGguf => (StatusCode::BAD_REQUEST, "tag_needs_gguf"),
            E::JobNotFound(_) => (StatusCode::NOT_FOUND, "job_not_found"),
            E::ModelNotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
            E::JobEnded(_) => (StatusCode::CONFLICT, "job_ended"),
            E::InProgress { .. } => (StatusCode::CONFLICT, "download_in_progress"),
            E::Busy { .. } => (StatusCode::CONFLICT, "download_in_progress"),
            E::NotDownloadedByCorral(_) => (StatusCode::CONFLICT, "not_downloaded_by_corral"),
            // The rest happen inside a job and reach the client as its `error`; here only when
            // the file of downloads cannot be written.
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "download_error"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

/// Start downloading a model from Hugging Face into its cache (`HF_HUB_CACHE`). The job runs in
/// the background; follow it at `/models/jobs/{id}` or as `download` events on `/events`.
#[utoipa::path(post, path = "/api/v1/models/download", tag = "models",
    request_body = DownloadRequest,
    responses(
        (status = 202, description = "The job started", body = DownloadAccepted),
        (status = 400, description = "Invalid repository, tag or format", body = ErrorBody),
        (status = 409, description = "The model is already being downloaded", body = ErrorBody)))]
pub async fn download(
    State(api): State<Api>,
    JsonBody(body): JsonBody,
) -> Answer<(StatusCode, Json<DownloadAccepted>)> {
    let request: DownloadRequest = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("invalid download request: {e}"))
    })?;
    let accepted = api.downloads.start(&request.repo, request.format)?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Every download job since the engine started (unfinished ones from before included).
#[utoipa::path(get, path = "/api/v1/models/jobs", tag = "models",
    responses((status = 200, description = "The jobs, oldest first", body = [DownloadJob])))]
pub async fn jobs(State(api): State<Api>) -> Json<Vec<DownloadJob>> {
    Json(api.downloads.jobs())
}

/// One download job.
#[utoipa::path(get, path = "/api/v1/models/jobs/{id}", tag = "models",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, body = DownloadJob),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub async fn job(State(api): State<Api>, Path(id): Path<String>) -> Answer<Json<DownloadJob>> {
    Ok(Json(api.downloads.job(&id)?))
}

/// Cancel a queued or running job. What was fetched is kept: downloading the model again
/// continues from there.
#[utoipa::path(delete, path = "/api/v1/models/jobs/{id}", tag = "models",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, cancelled", body = DownloadJob),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has already ended", body = ErrorBody)))]
pub async fn cancel(State(api): State<Api>, Path(id): Path<String>) -> Answer<Json<DownloadJob>> {
    Ok(Json(api.downloads.cancel(&id).await?))
}

/// Delete a model from the Hugging Face cache: its snapshot files, the blobs nothing else links
/// to, and the repository's folder once empty. A model Corral did not download needs
/// `confirm=true`.
#[utoipa::path(delete, path = "/api/v1/models", tag = "models",
    params(
        ("repo" = String, Query, description = "`org/name`"),
        ("tag" = Option<String>, Query, description = "The tag it was downloaded with, if any"),
        ("confirm" = Option<bool>, Query, description = "`true` deletes a model Corral did not download, too")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid repository or tag", body = ErrorBody),
        (status = 404, description = "No such model in the cache", body = ErrorBody),
        (status = 409, description = "Not downloaded by Corral (add confirm=true), or being downloaded", body = ErrorBody)))]
pub async fn delete_model(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer<StatusCode> {
    let repo = query
        .get("repo")
        .cloned()
        .ok_or_else(|| ApiError::bad_request("invalid_repo", "name the model: ?repo=org/name"))?;
    let tag = query.get("tag").cloned();
    let confirm = match query.get("confirm").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_confirm",
                format!("confirm must be true or false, not {other:?}"),
            ))
        }
    };
    let downloads = std::sync::Arc::clone(&api.downloads);
    tokio::task::spawn_blocking(move || downloads.remove(&repo, tag.as_deref(), confirm))
        .await
        .map_err(|e| {
            ApiError::internal("download_error", format!("the deletion stopped: {e}"))
        })??;
    Ok(StatusCode::NO_CONTENT)
}

//! `GET /api/v1/models`: the model library — every model on this machine, from the caches of
//! the other tools and `models.dirs`, with what its files say and whether it fits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;

use super::error::{ApiError, ErrorBody};
use super::Api;
use crate::models::{Locations, ModelEntry, Source, SourceKind};

/// The largest context the fit is judged at: 16M tokens, beyond any model's.
const MAX_CONTEXT: u64 = 1 << 24;

/// `GET /api/v1/models`'s query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Tokens of context to judge the fit at (KV cache and buffers); the model's own, at most
    /// 8192, when absent.
    #[param(minimum = 1, maximum = 16777216)]
    context: Option<u64>,
}

impl ListQuery {
    fn read(raw: &HashMap<String, String>) -> Result<Self, ApiError> {
        let context = raw
            .get("context")
            .map(|raw| {
                raw.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|context| (1..=MAX_CONTEXT).contains(context))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_context",
                            format!(
                                "context must be a whole number of tokens from 1 to {MAX_CONTEXT}, got {raw:?}"
                            ),
                        )
                        .with_field(Some("context".into()))
                    })
            })
            .transpose()?;
        Ok(Self { context })
    }
}

/// Every model on this machine: GGUF files (split ones as one model, a projector beside a model
/// paired with it), Hugging Face folders (safetensors or MLX), and Ollama's blobs, found in the
/// Hugging Face cache, llama.cpp's cache, LM Studio's and Ollama's folders and `models.dirs`.
/// Each says which backends can serve it and whether it fits in the GPUs' or the RAM's free
/// memory now, per GPU, at the context asked for. A file that cannot be read is listed with
/// its `error`.
#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    params(ListQuery),
    responses(
        (status = 200, description = "The models, by source then name", body = Vec<ModelEntry>),
        (status = 400, description = "The context is not a number of tokens Corral can judge", body = ErrorBody),
        (status = 500, description = "The scan failed", body = ErrorBody)))]
pub async fn list(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<ModelEntry>>, ApiError> {
    let context = ListQuery::read(&query)?.context;
    let available = api.devices.available().await;
    let models = &api.config.models;
    let mut sources = Locations::system().sources(models.scan_known_caches, &models.dirs);
    // Corral's own downloads are listed even when the other tools' caches are not scanned.
    let hub = api.downloads.cache_dir().to_path_buf();
    if !sources.iter().any(|source| source.dir == hub) {
        sources.insert(
            0,
            Source {
                kind: SourceKind::Huggingface,
                dir: hub,
            },
        );
    }
    let library = Arc::clone(&api.library);
    let downloaded: HashMap<PathBuf, Option<String>> = api
        .downloads
        .downloaded()
        .into_iter()
        .map(|model| (model.path, model.tag))
        .collect();
    tokio::task::spawn_blocking(move || library.list(&sources, &available, context, &downloaded))
        .await
        .map(Json)
        .map_err(|e| ApiError::internal("models_scan_failed", format!("the scan failed: {e}")))
}

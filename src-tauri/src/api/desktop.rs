//! `/api/v1/desktop/*`: what the desktop app adds to the API (start at login, close to tray,
//! opening the data and logs folders). The engine only knows the `DesktopControl` trait; the app
//! implements it. A headless engine answers these routes with 404 `not_desktop`.

use std::path::Path;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::JsonBody;
use super::error::{ApiError, ErrorBody};
use super::Api;

/// The app's own settings, as the UI shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesktopSettings {
    /// Closing the window keeps Corral running in the tray; false: closing the window quits.
    pub close_to_tray: bool,
    /// Corral starts when the user logs in.
    pub start_at_login: bool,
}

/// A change to the settings; absent fields stay as they are.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DesktopSettingsChange {
    pub close_to_tray: Option<bool>,
    pub start_at_login: Option<bool>,
}

/// A folder the app can show in the system's file manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Folder {
    /// The data folder: instance definitions, logs, pid files.
    Data,
    /// The instances' log files.
    Logs,
}

/// Body of `POST /desktop/open`.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    pub folder: Folder,
}

/// Why a desktop action failed.
#[derive(Debug, thiserror::Error)]
pub enum DesktopActionError {
    #[error("cannot change start at login: {0}")]
    Autostart(String),
    #[error("cannot save the desktop settings to {path}: {source}")]
    Save {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {reason}")]
    Open {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("the desktop app is not ready yet")]
    NotReady,
}

/// What the desktop app lets the API do. Calls are short and may block briefly (a settings file,
/// the OS's login items), so handlers run them off the async workers.
pub trait DesktopControl: Send + Sync {
    fn settings(&self) -> Result<DesktopSettings, DesktopActionError>;
    fn update(&self, change: DesktopSettingsChange) -> Result<DesktopSettings, DesktopActionError>;
    /// Shows `path` in the system's file manager.
    fn open(&self, path: &Path) -> Result<(), DesktopActionError>;
}

/// The body in the shape `T`, or 400 saying what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

fn not_desktop() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_desktop",
        "this engine runs headless: desktop settings exist only in the Corral desktop app",
    )
}

impl From<DesktopActionError> for ApiError {
    fn from(error: DesktopActionError) -> Self {
        ApiError::internal("desktop_action_failed", error.to_string())
    }
}

/// Runs one blocking call on the app's control, off the async workers.
async fn with_control<T: Send + 'static>(
    api: &Api,
    call: impl FnOnce(&dyn DesktopControl) -> Result<T, DesktopActionError> + Send + 'static,
) -> Result<T, ApiError> {
    let control = api.desktop.clone().ok_or_else(not_desktop)?;
    tokio::task::spawn_blocking(move || call(control.as_ref()))
        .await
        .map_err(|e| ApiError::internal("desktop_action_failed", e.to_string()))?
        .map_err(ApiError::from)
}

/// The desktop app's settings.
#[utoipa::path(get, path = "/api/v1/desktop/settings", tag = "desktop",
    responses(
        (status = 200, description = "Current settings", body = DesktopSettings),
        (status = 404, description = "Not running as the desktop app", body = ErrorBody)))]
pub async fn settings(State(api): State<Api>) -> Result<Json<DesktopSettings>, ApiError> {
    with_control(&api, |control| control.settings())
        .await
        .map(Json)
}

/// Changes the desktop app's settings; answers the settings now in force.
#[utoipa::path(put, path = "/api/v1/desktop/settings", tag = "desktop",
    request_body = DesktopSettingsChange,
    responses(
        (status = 200, description = "Settings after the change", body = DesktopSettings),
        (status = 415, description = "The body is not declared as JSON (Content-Type: application/json)", body = ErrorBody),
        (status = 400, description = "Not JSON, or not the shape of a change", body = ErrorBody),
        (status = 404, description = "Not running as the desktop app", body = ErrorBody),
        (status = 500, description = "The change could not be applied", body = ErrorBody)))]
pub async fn update_settings(
    State(api): State<Api>,
    JsonBody(body): JsonBody,
) -> Result<Json<DesktopSettings>, ApiError> {
    let change: DesktopSettingsChange = parse(body)?;
    with_control(&api, move |control| control.update(change))
        .await
        .map(Json)
}

/// Shows the data or logs folder in the system's file manager.
#[utoipa::path(post, path = "/api/v1/desktop/open", tag = "desktop",
    request_body = OpenRequest,
    responses(
        (status = 204, description = "The folder was handed to the file manager"),
        (status = 415, description = "The body is not declared as JSON (Content-Type: application/json)", body = ErrorBody),
        (status = 400, description = "Not JSON, or no known folder", body = ErrorBody),
        (status = 404, description = "Not running as the desktop app", body = ErrorBody),
        (status = 500, description = "The folder could not be opened", body = ErrorBody)))]
pub async fn open(
    State(api): State<Api>,
    JsonBody(body): JsonBody,
) -> Result<StatusCode, ApiError> {
    let request: OpenRequest = parse(body)?;
    let path = match request.folder {
        Folder::Data => api.config.instances.data_dir.clone(),
        Folder::Logs => api.config.instances.logs_dir.clone(),
    };
    with_control(&api, move |control| control.open(&path)).await?;
    Ok(StatusCode::NO_CONTENT)
}

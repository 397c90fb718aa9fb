//! `GET /api/v1/activity`: the last finished inference requests (`telemetry::ActivityLog`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::Api;
use crate::telemetry::{ActivityDetail, ActivityFilter, ActivityPage};

/// Most records one page holds.
const MAX_LIMIT: usize = 1000;

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// Only this instance's requests.
    instance: Option<String>,
    /// A class (`2xx`, `4xx`, `5xx`), `error` (400 and above), or one status code.
    #[param(pattern = "^([1-5]xx|error|[1-5][0-9][0-9])$")]
    status: Option<String>,
    /// Only requests with a larger id (what came after an earlier page).
    after: Option<u64>,
    /// Only requests with a smaller id (to page back).
    before: Option<u64>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The last finished inference requests, newest first; bodies are never kept.
#[utoipa::path(get, path = "/api/v1/activity", tag = "system", params(ActivityQuery),
    responses(
        (status = 200, body = ActivityPage),
        (status = 400, description = "A filter that is not one", body = super::error::ErrorBody),
    ))]
pub async fn list(
    State(api): State<Api>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<ActivityPage>, ApiError> {
    let query = ActivityQuery::read(&raw)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_filter",
            format!("limit must be 1 to {MAX_LIMIT}, got {limit}"),
        ));
    }
    if let Some(status) = &query.status {
        if !valid_status(status) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_filter",
                format!("status must be a class (2xx), `error` or a code (503), got {status:?}"),
            ));
        }
    }
    let filter = ActivityFilter {
        instance: query.instance,
        status: query.status,
        after: query.after,
        before: query.before,
        limit,
    };
    Ok(Json(api.registry.telemetry().activity.list(&filter)))
}

impl ActivityQuery {
    /// Read by hand, so that a bad value is answered in Corral's error shape.
    fn read(raw: &HashMap<String, String>) -> Result<Self, ApiError> {
        let number = |name: &str| -> Result<Option<u64>, ApiError> {
            raw.get(name)
                .map(|value| {
                    value.parse::<u64>().map_err(|_| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_filter",
                            format!("{name} must be a whole number, got {value:?}"),
                        )
                    })
                })
                .transpose()
        };
        Ok(Self {
            instance: raw.get("instance").cloned(),
            status: raw.get("status").cloned(),
            after: number("after")?,
            before: number("before")?,
            limit: number("limit")?.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        })
    }
}

fn valid_status(status: &str) -> bool {
    let bytes = status.as_bytes();
    status == "error"
        || (bytes.len() == 3
            && (b'1'..=b'5').contains(&bytes[0])
            && (&bytes[1..] == b"xx" || bytes[1..].iter().all(u8::is_ascii_digit)))
}

/// One finished request, with its bodies when its instance captures them (`capture_bodies`).
#[utoipa::path(get, path = "/api/v1/activity/{id}", tag = "system",
    params(("id" = u64, Path, description = "The request's id")),
    responses(
        (status = 200, body = ActivityDetail),
        (status = 404, description = "No such request, or it left the log", body = super::error::ErrorBody),
    ))]
pub async fn get(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<ActivityDetail>, ApiError> {
    let Ok(id) = id.parse::<u64>() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no request {id:?} in the activity log: ids are whole numbers"),
        ));
    };
    api.registry
        .telemetry()
        .activity
        .get(id)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no request {id} in the activity log (it keeps the last ones only)"),
            )
        })
}

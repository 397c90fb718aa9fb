//! `/api/v1/auth/keys`: inference keys with a scope (llamactl 0.13+'s key API; the work is in
//! `crate::access`). Behind the management key like the rest of `/api/v1`: a stored key can
//! never reach these routes, so no key can make or widen another.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::JsonBody;
use super::error::{ApiError, ErrorBody};
use super::Api;
use crate::access::{AccessError, ApiKey, NewKey, PermissionMode, Scope, MAX_NAME_LEN};

type Answer<T> = Result<T, ApiError>;

/// Most instances one key may name.
const MAX_INSTANCES: usize = 1000;
/// The last second of the year 9999: a later expiry is a typo, not a plan.
const MAX_EXPIRY: i64 = 253_402_300_799;

/// A key to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// What the key is for (shown in the activity log): 1 to 100 characters, not all blank,
    /// no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Unix seconds after which the key is refused (a time already past makes a key that is
    /// expired from the start); none: it never expires.
    #[schema(minimum = 0, maximum = 253_402_300_799_f64)]
    #[serde(default, deserialize_with = "crate::instances::whole_number")]
    pub expires_at: Option<i64>,
    /// `per_instance` needs `instance_ids`; `allow_all` takes none.
    pub permission_mode: PermissionMode,
    /// With `per_instance`: the names of the instances the key may use, 1 to 1000 (llamactl
    /// numbers its instances; Corral names them).
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub instance_ids: Vec<String>,
}

/// A new key: the plaintext `key` is shown this once and kept nowhere.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: ApiKey,
    pub key: String,
}

/// A change of a key's expiry (Corral's addition).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// Unix seconds; `null`: it never expires. A time now or past expires it at once.
    #[schema(required = true, minimum = 0, maximum = 253_402_300_799_f64)]
    #[serde(deserialize_with = "crate::instances::whole_number")]
    pub expires_at: Option<i64>,
}

/// One instance a key may use (llamactl's shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPermission {
    pub instance_id: String,
    pub instance_name: String,
}

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> Self {
        ApiError::internal("key_store_error", error.to_string())
    }
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "key_not_found",
        format!("no API key with id {id}"),
    )
}

/// A key's id from the path: a number, as the listing gives it.
fn key_id(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_key_id",
            format!("a key id is a number, not {text:?}"),
        )
    })
}

fn invalid(field: &str, details: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_key_request", details).with_field(Some(field.to_owned()))
}

/// Unix seconds from 0 to the end of the year 9999.
fn check_expiry(expires_at: Option<i64>) -> Result<(), ApiError> {
    match expires_at {
        Some(at) if !(0..=MAX_EXPIRY).contains(&at) => Err(invalid(
            "expires_at",
            format!("expires_at ({at}) must be Unix seconds from 0 to {MAX_EXPIRY}"),
        )),
        _ => Ok(()),
    }
}

/// The request as a key to make, or why it is not one.
fn validate(api: &Api, request: CreateKeyRequest) -> Result<NewKey, ApiError> {
    let name = request.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("name must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "name must not hold control characters"));
    }
    check_expiry(request.expires_at)?;
    let scope = match request.permission_mode {
        PermissionMode::AllowAll => {
            if !request.instance_ids.is_empty() {
                return Err(invalid(
                    "instance_ids",
                    "instance_ids is only for permission_mode per_instance",
                ));
            }
            Scope::AllowAll
        }
        PermissionMode::PerInstance => {
            if request.instance_ids.is_empty() || request.instance_ids.len() > MAX_INSTANCES {
                return Err(invalid(
                    "instance_ids",
                    format!("per_instance needs 1 to {MAX_INSTANCES} instance names"),
                ));
            }
            let instances: BTreeSet<String> = request.instance_ids.into_iter().collect();
            if let Some(unknown) = instances
                .iter()
                .find(|instance| api.registry.get(instance).is_err())
            {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "instance_not_found",
                    format!("instance_ids names no instance {unknown:?}"),
                )
                .with_field(Some("instance_ids".to_owned())));
            }
            Scope::Instances(instances)
        }
    };
    Ok(NewKey {
        name,
        scope,
        expires_at: request.expires_at,
    })
}

/// Make an inference key, allowed every instance or the ones named. The answer holds the key
/// itself, the only time it is shown: Corral keeps its argon2id hash.
#[utoipa::path(post, path = "/api/v1/auth/keys", tag = "auth",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The key, with its plaintext `key`", body = CreatedKey),
        (status = 400, description = "An invalid name, expiry or mode", body = ErrorBody),
        (status = 404, description = "`instance_not_found`: instance_ids names no instance", body = ErrorBody)))]
pub async fn create(
    State(api): State<Api>,
    JsonBody(body): JsonBody,
) -> Answer<(StatusCode, Json<CreatedKey>)> {
    let request: CreateKeyRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid key request: {e}")))?;
    let new = validate(&api, request)?;
    let keys = std::sync::Arc::clone(&api.keys);
    // Hashing takes tens of milliseconds of one core.
    let (info, key) = tokio::task::spawn_blocking(move || keys.create(new))
        .await
        .map_err(|e| {
            ApiError::internal("key_store_error", format!("making the key failed: {e}"))
        })??;
    tracing::info!(id = info.id, name = %info.name, "API key created");
    Ok((StatusCode::CREATED, Json(CreatedKey { info, key })))
}

/// Every stored key (never their plaintext), oldest first.
#[utoipa::path(get, path = "/api/v1/auth/keys", tag = "auth",
    responses((status = 200, body = [ApiKey])))]
pub async fn list(State(api): State<Api>) -> Json<Vec<ApiKey>> {
    Json(api.keys.list())
}

/// One stored key.
#[utoipa::path(get, path = "/api/v1/auth/keys/{id}", tag = "auth",
    params(("id" = u64, Path, description = "Key id")),
    responses(
        (status = 200, body = ApiKey),
        (status = 404, description = "No such key", body = ErrorBody)))]
pub async fn get(State(api): State<Api>, Path(id): Path<String>) -> Answer<Json<ApiKey>> {
    let id = key_id(&id)?;
    api.keys.get(id).map(Json).ok_or_else(|| not_found(id))
}

/// Change when a key expires: expire it now, later, or never.
#[utoipa::path(patch, path = "/api/v1/auth/keys/{id}", tag = "auth",
    params(("id" = u64, Path, description = "Key id")),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, body = ApiKey),
        (status = 400, description = "Not an expiry", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody)))]
pub async fn update(
    State(api): State<Api>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Answer<Json<ApiKey>> {
    let id = key_id(&id)?;
    let request: UpdateKeyRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid key update: {e}")))?;
    api.keys
        .set_expiry(id, request.expires_at)?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

/// Revoke a key: requests with it are refused from now on.
#[utoipa::path(delete, path = "/api/v1/auth/keys/{id}", tag = "auth",
    params(("id" = u64, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key", body = ErrorBody)))]
pub async fn delete(State(api): State<Api>, Path(id): Path<String>) -> Answer<StatusCode> {
    let id = key_id(&id)?;
    if !api.keys.delete(id)? {
        return Err(not_found(id));
    }
    tracing::info!(id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The instances a key may use: empty for an `allow_all` key, which may use every one.
#[utoipa::path(get, path = "/api/v1/auth/keys/{id}/permissions", tag = "auth",
    params(("id" = u64, Path, description = "Key id")),
    responses(
        (status = 200, body = [KeyPermission]),
        (status = 404, description = "No such key", body = ErrorBody)))]
pub async fn permissions(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Answer<Json<Vec<KeyPermission>>> {
    let id = key_id(&id)?;
    let key = api.keys.get(id).ok_or_else(|| not_found(id))?;
    Ok(Json(
        key.instance_ids
            .into_iter()
            .map(|name| KeyPermission {
                instance_id: name.clone(),
                instance_name: name,
            })
            .collect(),
    ))
}

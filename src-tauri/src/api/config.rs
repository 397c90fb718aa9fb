//! `GET /api/v1/config` (llamactl 0.20): the configuration in force, after defaults, file,
//! environment and flags were merged, with every secret replaced by `[redacted]`: the keys, and
//! backend variables and arguments whose names look like credentials (`HF_TOKEN`, `--api-key`).
//! Durations are seconds. After a reload, the settings that changed live are shown; the ones
//! that need a restart show what the engine runs with.

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use super::error::ApiError;
use super::Api;
use crate::logging::looks_like_secret;

const REDACTED: &str = "[redacted]";

/// The configuration in force, secrets removed.
#[utoipa::path(get, path = "/api/v1/config", tag = "system",
    responses(
        (status = 200, description = "The merged configuration (the config file's sections and keys); keys and credential-like backend variables and arguments are `[redacted]`, durations are seconds", body = Object),
        (status = 500, description = "The configuration could not be written out", body = crate::api::error::ErrorBody)))]
pub async fn config(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    // The registry's: what a reload changed is shown.
    let value = serde_json::to_value(api.registry.config().as_ref())
        .map_err(|e| ApiError::internal("config_unavailable", e.to_string()))?;
    Ok(Json(redacted(seconds(value))))
}

/// Serde writes a `Duration` as `{secs, nanos}`; the file takes seconds.
fn seconds(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            if map.len() == 2 {
                if let (Some(secs), Some(nanos)) = (
                    map.get("secs").and_then(Value::as_u64),
                    map.get("nanos").and_then(Value::as_u64),
                ) {
                    return serde_json::json!(secs as f64 + nanos as f64 / 1e9);
                }
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, seconds(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(seconds).collect()),
        other => other,
    }
}

fn redacted(mut value: Value) -> Value {
    for list in [
        "/auth/management_keys",
        "/auth/inference_keys",
        "/metrics/keys",
    ] {
        if let Some(Value::Array(keys)) = value.pointer_mut(list) {
            for key in keys.iter_mut() {
                *key = Value::from(REDACTED);
            }
        }
    }
    if let Some(Value::Object(backends)) = value.get_mut("backends") {
        for command in backends.values_mut() {
            if let Some(Value::Object(environment)) = command.get_mut("environment") {
                for (name, value) in environment.iter_mut() {
                    if looks_like_secret(name) {
                        *value = Value::from(REDACTED);
                    }
                }
            }
            if let Some(Value::Array(args)) = command.get_mut("args") {
                redact_args(args);
            }
        }
    }
    value
}

/// `--api-key X` and `--api-key=X` become `--api-key [redacted]` and `--api-key=[redacted]`.
fn redact_args(args: &mut [Value]) {
    let mut secret_next = false;
    for arg in args.iter_mut() {
        let Some(text) = arg.as_str().map(str::to_owned) else {
            continue;
        };
        if secret_next {
            *arg = Value::from(REDACTED);
            secret_next = false;
            continue;
        }
        if let Some(flag) = text.strip_prefix('-') {
            match flag.split_once('=') {
                Some((name, _)) if looks_like_secret(name) => {
                    *arg = Value::from(format!("-{name}={REDACTED}"));
                }
                Some(_) => {}
                None => secret_next = looks_like_secret(flag),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_and_credential_like_variables_and_flags_are_redacted_and_durations_are_seconds() {
        let value = json!({
            "auth": {"management_keys": ["sk-m"], "inference_keys": ["sk-i", "sk-j"], "require_inference_auth": true},
            "backends": {"llama-cpp": {
                "command": "llama-server",
                "args": ["--api-key", "s1", "--hf-token=s2", "--threads", "4"],
                "environment": {"HF_TOKEN": "s3", "CUDA_VISIBLE_DEVICES": "0"},
            }},
            "instances": {"on_demand_start_timeout": {"secs": 120, "nanos": 500_000_000}},
            "metrics": {"keys": ["sk-p"], "open_on_loopback": false},
        });
        let out = redacted(seconds(value));
        let text = out.to_string();
        for secret in ["sk-m", "sk-i", "sk-j", "sk-p", "s1", "s2", "s3"] {
            assert!(
                !text.contains(&format!("\"{secret}\"")) && !text.contains(&format!("={secret}")),
                "{secret} in {text}"
            );
        }
        assert_eq!(out["auth"]["inference_keys"], json!([REDACTED, REDACTED]));
        assert_eq!(out["metrics"]["keys"], json!([REDACTED]));
        let llama = &out["backends"]["llama-cpp"];
        assert_eq!(
            llama["args"],
            json!([
                "--api-key",
                REDACTED,
                "--hf-token=[redacted]",
                "--threads",
                "4"
            ])
        );
        assert_eq!(llama["environment"]["CUDA_VISIBLE_DEVICES"], "0");
        assert_eq!(out["instances"]["on_demand_start_timeout"], json!(120.5));
    }
}

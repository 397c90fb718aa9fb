//! `GET /metrics`: the Prometheus exposition (`telemetry::Metrics`), with what the instances
//! and devices show at the moment of the scrape.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Api;
use crate::devices::SystemReport;
use crate::telemetry::{DeviceSample, Scrape, CONTENT_TYPE};

/// The exposition. Guarded by `auth::require_metrics`.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4: requests by instance, route and status class; in flight, queue wait, time to first token and duration histograms; tokens; instances by state; starts, crashes, restarts, evictions by reason; each instance's CPU, RSS and VRAM; each device's memory and utilisation; the engine's build", content_type = "text/plain", body = String),
        (status = 401, description = "No key, or not a management or metrics key"),
        (status = 404, description = "`metrics.enabled` is off"),
    ))]
pub async fn metrics(State(api): State<Api>) -> Response {
    if !api.config.metrics.enabled {
        return super::error::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are off (metrics.enabled)",
        )
        .into_response();
    }
    let report = api.devices.report().await;
    let scrape = Scrape {
        instances: api.registry.metrics_samples(),
        devices: devices(&report),
    };
    let body = api.registry.telemetry().metrics.render(scrape);
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

/// The RAM, then each accelerator with the memory its probe reported.
fn devices(report: &SystemReport) -> Vec<DeviceSample> {
    let mut devices = vec![DeviceSample {
        device: "system".to_owned(),
        name: "RAM".to_owned(),
        memory_total_bytes: Some(report.memory.total_bytes),
        memory_used_bytes: Some(report.memory.used_bytes),
        utilization: None,
    }];
    for accelerator in &report.accelerators {
        devices.push(DeviceSample {
            device: accelerator.id.clone(),
            name: accelerator.name.clone(),
            memory_total_bytes: accelerator.memory_total_bytes,
            memory_used_bytes: accelerator.memory_used_bytes,
            utilization: accelerator
                .utilization_percent
                .map(|percent| f64::from(percent) / 100.0),
        });
    }
    devices
}

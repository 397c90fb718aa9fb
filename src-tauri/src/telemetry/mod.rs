//! What the engine tells its operators about the requests it answered: Prometheus metrics
//! (`GET /metrics`) and the activity log (`GET /api/v1/activity`, the `activity` event).
//!
//! Both are fed from one place: each inference request, when its answer has ended, becomes one
//! [`Finished`] record (`api::openai::RequestLog` builds it). The record goes to the metric
//! families and to the activity ring; nothing of the request's body is kept.

mod activity;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

pub use activity::{ActivityDetail, ActivityFilter, ActivityLog, ActivityPage, ActivityRecord};
pub use metrics::{
    route_label, DeviceSample, Eviction, InstanceSample, Metrics, Scrape, CONTENT_TYPE,
};

/// One inference request whose answer ended (sent whole, cut short, or refused by Corral).
#[derive(Debug, Clone)]
pub struct Finished {
    pub instance: String,
    /// The request's path, its query's secrets redacted.
    pub path: String,
    pub client: Option<SocketAddr>,
    /// The name of the key the client presented, when it has one.
    pub key: Option<String>,
    /// The status sent, or 499 when the client left before any.
    pub status: u16,
    pub queued: std::time::Duration,
    /// From the request's arrival to the first byte of the answer's body.
    pub first_byte: Option<std::time::Duration>,
    pub duration: std::time::Duration,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub tokens_per_second: Option<f64>,
    /// Corral's reason for a refusal or a cut, or the backend's error message.
    pub error: Option<String>,
    /// The bodies, for an instance with `capture_bodies`.
    pub bodies: Option<Bodies>,
}

/// A request's and its answer's bodies as text, each cut at 64 KiB.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Bodies {
    pub request: String,
    /// The answer as it reached the client (an SSE stream's events included).
    pub answer: String,
}

/// The metrics and the activity log of one engine.
pub struct Telemetry {
    pub metrics: Metrics,
    pub activity: ActivityLog,
}

impl Telemetry {
    /// `activity_entries`: how many finished requests the activity log keeps.
    pub fn new(activity_entries: usize) -> Arc<Self> {
        Arc::new(Self {
            metrics: Metrics::new(),
            activity: ActivityLog::new(activity_entries),
        })
    }

    /// Counts a finished request and keeps it in the activity log.
    pub fn finished(&self, request: Finished) {
        self.metrics.request(&request);
        self.activity.push(request);
    }
}

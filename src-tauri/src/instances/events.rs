//! The change feed of the instances: one broadcast of what changed, for the UI's live events and
//! the desktop tray. Status changes go out at once; counters are sampled at most once a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::devices::ResourceMonitor;
use crate::telemetry::Telemetry;
use tokio::sync::{broadcast, Notify};

use super::instance::{lock, Instance};
use super::options::InstanceView;
use super::registry::Registry;

/// Events a slow subscriber may fall behind by before it lags (and must start from a snapshot).
const CAPACITY: usize = 256;
/// Counters (requests, tokens, in flight) change with every request; they go out this often at
/// most, per instance.
const COUNTER_PERIOD: Duration = Duration::from_secs(1);

/// One change of the instance set.
#[derive(Debug, Clone)]
pub enum InstanceEvent {
    /// Anything in the instance's JSON changed (or it was created); the whole new JSON, shared
    /// by every subscriber.
    Changed(Arc<InstanceView>),
    /// The instance was deleted.
    Deleted { name: String },
    /// The scheduler stopped an instance to make room, refused a start or a request, or a
    /// queue overflowed.
    Decision(Arc<Decision>),
    /// The configuration was reloaded, or a new one refused.
    Config(Arc<super::reload::ConfigReload>),
}

/// One decision of the scheduler, with its reason (the `scheduler` event of `/api/v1/events`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Decision {
    /// `evicted`, `refused`, `waiting` or `queue_full`.
    pub action: &'static str,
    /// The instance the decision is about: the one stopped, refused or whose queue is full.
    pub instance: String,
    /// For an eviction, the instance it made room for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_instance: Option<String>,
    pub reason: String,
    /// Unix seconds.
    pub at: i64,
}

impl Decision {
    pub(super) fn new(action: &'static str, instance: &str, reason: String) -> Self {
        Self {
            action,
            instance: instance.to_owned(),
            for_instance: None,
            reason,
            at: chrono::Utc::now().timestamp(),
        }
    }
}

/// The sending side of the feed, shared by the registry and every instance.
pub(super) struct Feed {
    sender: broadcast::Sender<InstanceEvent>,
    /// The view last sent per instance, so that nothing is sent twice. A std Mutex, held across
    /// building the view and sending it (never across an await): two changes of one instance
    /// then reach subscribers in the order they were seen, the newer last.
    sent: Mutex<HashMap<String, InstanceView>>,
    /// Wakes the counter sampler when someone subscribes; it sleeps while nobody listens.
    subscribed: Notify,
    /// Fills in CPU and memory, so that events carry what `GET /instances` shows.
    resources: Arc<ResourceMonitor>,
    /// The metrics and the activity log, fed by every instance's finished requests.
    pub(super) telemetry: Arc<Telemetry>,
}

impl Feed {
    pub(super) fn new(resources: Arc<ResourceMonitor>, telemetry: Arc<Telemetry>) -> Self {
        Self {
            resources,
            telemetry,
            sender: broadcast::channel(CAPACITY).0,
            sent: Mutex::new(HashMap::new()),
            subscribed: Notify::new(),
        }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<InstanceEvent> {
        let receiver = self.sender.subscribe();
        self.subscribed.notify_one();
        receiver
    }

    fn listening(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Sends the instance's current JSON if it differs from the last one sent. Costs one atomic
    /// load when nobody listens.
    pub(super) fn changed(&self, instance: &Instance) {
        if !self.listening() {
            // A subscriber starts from a snapshot, so nothing sent before it counts.
            lock(&self.sent).clear();
            return;
        }
        let mut sent = lock(&self.sent);
        // Checked under `sent`: `deleted` sets no flag but runs after `removed` is set, so a
        // change seen after the deletion was announced is dropped here.
        if instance.removed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut view = [instance.view()];
        super::registry::fill_resources(&self.resources, &mut view);
        let [view] = view;
        if sent.get(&view.name) == Some(&view) {
            return;
        }
        sent.insert(view.name.clone(), view.clone());
        // An error only means the last subscriber just left.
        let _ = self.sender.send(InstanceEvent::Changed(Arc::new(view)));
    }

    /// Announces a decision of the scheduler.
    pub(super) fn decision(&self, decision: Decision) {
        if self.listening() {
            let _ = self
                .sender
                .send(InstanceEvent::Decision(Arc::new(decision)));
        }
    }

    /// Announces a reload of the configuration (or its refusal).
    pub(super) fn config_reload(&self, report: super::reload::ConfigReload) {
        let _ = self.sender.send(InstanceEvent::Config(Arc::new(report)));
    }

    /// Announces a deletion; the caller has marked the instance removed.
    pub(super) fn deleted(&self, name: &str) {
        self.telemetry.metrics.forget(name);
        let mut sent = lock(&self.sent);
        sent.remove(name);
        if self.listening() {
            let _ = self.sender.send(InstanceEvent::Deleted {
                name: name.to_owned(),
            });
        }
    }
}

/// Samples every instance once a second while someone listens and sends those whose JSON
/// changed: that is how counter changes, which happen per request and per token, reach the feed.
/// Holds the registry weakly, so it never keeps it alive.
pub(super) fn spawn_sampler(registry: &Arc<Registry>) -> tokio::task::JoinHandle<()> {
    let feed = Arc::clone(&registry.feed);
    let registry: Weak<Registry> = Arc::downgrade(registry);
    tokio::spawn(async move {
        loop {
            if !feed.listening() {
                let subscribed = feed.subscribed.notified();
                tokio::pin!(subscribed);
                subscribed.as_mut().enable();
                if !feed.listening() {
                    subscribed.await;
                }
                continue;
            }
            tokio::time::sleep(COUNTER_PERIOD).await;
            let Some(registry) = registry.upgrade() else {
                break;
            };
            let instances: Vec<Arc<Instance>> = lock(&registry.table).all();
            drop(registry);
            for instance in &instances {
                feed.changed(instance);
            }
        }
    })
}

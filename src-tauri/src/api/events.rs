//! `/api/v1/events`: the live state of every instance as server-sent events — a snapshot first,
//! then each change — and the progress of model downloads and backend installs, so the UI never
//! polls.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast::{error::RecvError, Receiver};

use super::Api;
use crate::backends::install::InstallJob;
use crate::downloads::DownloadJob;
use crate::instances::{InstanceEvent, Registry};
use crate::telemetry::ActivityRecord;

/// How often an idle stream sends a comment, so proxies and browsers keep it open.
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Live instance events: `snapshot` (array of instances) first, then `instance` (one instance,
/// whenever anything in it changes; counters at most once a second) and `deleted`
/// (`{"name": ...}`). A client that falls behind gets a new `snapshot` instead of the events it
/// missed. Model downloads send `download` (a job, as `/models/jobs/{id}` shows it) when a job's
/// state changes and about 4 times a second while its bytes flow; backend installs send
/// `backend_install` (an InstallJob) at each change.
#[utoipa::path(get, path = "/api/v1/events", tag = "instances",
    responses((status = 200, description = "Server-sent events: `snapshot`, `instance`, `deleted`, `scheduler` (an eviction, a refusal or a full queue, with its reason), `download`, `backend_install`, `activity` (a finished inference request, as `/activity` shows it); a `keep-alive` comment every 15 s", content_type = "text/event-stream", body = String)))]
pub async fn events(State(api): State<Api>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before the snapshot is taken, so no change falls between the two.
    let changes = api.registry.subscribe();
    let jobs = Jobs {
        downloads: api.downloads.subscribe(),
        installs: api.registry.installs().subscribe(),
        activity: api.registry.telemetry().activity.subscribe(),
    };
    let first = snapshot(&api.registry);
    let stream = futures_util::stream::unfold(
        (Arc::clone(&api.registry), changes, jobs, Some(first)),
        |(registry, mut changes, mut jobs, pending)| async move {
            if let Some(event) = pending {
                return Some((Ok(event), (registry, changes, jobs, None)));
            }
            let event = tokio::select! {
                event = next_event(&registry, &mut changes) => event?,
                Some(job) = next_job(&mut jobs.downloads) => json_event("download", &job),
                Some(job) = next_job(&mut jobs.installs) => json_event("backend_install", &job),
                Some(request) = next_job(&mut jobs.activity) => json_event("activity", request.as_ref()),
            };
            Some((Ok(event), (registry, changes, jobs, None)))
        },
    );
    let stream = stream.take_until(api.registry.streams_ended());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

/// The feeds of the long-running jobs: model downloads and backend installs.
struct Jobs {
    downloads: Receiver<DownloadJob>,
    installs: Receiver<InstallJob>,
    /// Finished inference requests; a client that falls behind skips some (the activity route
    /// has them all).
    activity: Receiver<Arc<ActivityRecord>>,
}

/// The next job to send; a client that fell behind skips to the newest (each event carries the
/// whole job, and the jobs' own routes have the rest). `None` once its manager is gone, which
/// leaves the other feeds running.
async fn next_job<T: Clone>(jobs: &mut Receiver<T>) -> Option<T> {
    loop {
        match jobs.recv().await {
            Ok(job) => return Some(job),
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return None,
        }
    }
}

/// The next event for the client; `None` once the registry is gone.
async fn next_event(registry: &Registry, changes: &mut Receiver<InstanceEvent>) -> Option<Event> {
    Some(match next_change(changes).await? {
        Next::Snapshot => snapshot(registry),
        Next::Change(InstanceEvent::Changed(view)) => json_event("instance", view.as_ref()),
        Next::Change(InstanceEvent::Deleted { name }) => {
            json_event("deleted", &serde_json::json!({ "name": name }))
        }
        Next::Change(InstanceEvent::Decision(decision)) => {
            json_event("scheduler", decision.as_ref())
        }
        Next::Change(InstanceEvent::Config(report)) => json_event("config", report.as_ref()),
    })
}

/// What the client needs next.
#[derive(Debug)]
enum Next {
    Change(InstanceEvent),
    /// It fell behind: the whole state again, then the changes from now on.
    Snapshot,
}

async fn next_change(changes: &mut Receiver<InstanceEvent>) -> Option<Next> {
    match changes.recv().await {
        Ok(change) => Some(Next::Change(change)),
        Err(RecvError::Lagged(_)) => {
            // What is still queued is older than a fresh snapshot: start again from now.
            *changes = changes.resubscribe();
            Some(Next::Snapshot)
        }
        Err(RecvError::Closed) => None,
    }
}

fn snapshot(registry: &Registry) -> Event {
    json_event("snapshot", &registry.list())
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    // Serializing these types cannot fail (string keys, finite numbers); an empty event would
    // only be skipped by the client.
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use tokio::sync::broadcast;

    use super::*;

    fn deleted(name: &str) -> InstanceEvent {
        InstanceEvent::Deleted {
            name: name.to_owned(),
        }
    }

    #[tokio::test]
    async fn a_client_that_fell_behind_gets_a_snapshot_then_only_newer_changes() {
        let (sender, mut changes) = broadcast::channel(2);
        for name in ["a", "b", "c", "d"] {
            sender.send(deleted(name)).unwrap();
        }
        assert!(matches!(
            next_change(&mut changes).await,
            Some(Next::Snapshot)
        ));
        // The changes queued before the snapshot are dropped: the snapshot already has them.
        sender.send(deleted("e")).unwrap();
        match next_change(&mut changes).await {
            Some(Next::Change(InstanceEvent::Deleted { name })) => assert_eq!(name, "e"),
            other => panic!("expected e, got {other:?}"),
        }
        drop(sender);
        assert!(next_change(&mut changes).await.is_none());
    }
}

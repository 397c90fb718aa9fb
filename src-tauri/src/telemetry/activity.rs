//! The activity log: the last finished inference requests, in memory, newest last, each with an
//! id that only grows, and a broadcast of each new one for the event feed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use super::Finished;

/// Records a slow event-feed subscriber may fall behind by; it then skips to the newest (the
/// activity route has the rest).
const FEED_CAPACITY: usize = 1024;

/// One finished request, as `GET /api/v1/activity` and the `activity` event show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActivityRecord {
    /// Grows by one per request since the engine started.
    pub id: u64,
    /// Unix milliseconds of the answer's end.
    pub at_ms: i64,
    pub instance: String,
    /// The request's path (`/v1/chat/completions`), secrets in its query redacted.
    pub path: String,
    /// The client's address and port.
    pub client: Option<String>,
    /// The name of the API key the client used, where keys have names.
    pub key: Option<String>,
    /// The status sent; 499 when the client left before any.
    pub status: u16,
    /// Time waited for one of the instance's slots.
    pub queued_ms: u64,
    /// Time from the request's arrival to the first byte of the answer's body.
    pub first_byte_ms: Option<u64>,
    pub duration_ms: u64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub tokens_per_second: Option<f64>,
    /// Why Corral refused or cut the request, or the backend's error message.
    pub error: Option<String>,
    /// The instance captured the bodies (`capture_bodies`): `GET /activity/{id}` shows them.
    pub captured: bool,
    /// Kept beside the record, out of listings and events (they may be 128 KiB a request).
    #[serde(skip)]
    #[schema(ignore)]
    pub bodies: Option<Arc<super::Bodies>>,
}

/// One finished request with its bodies, when its instance captured them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActivityDetail {
    #[serde(flatten)]
    pub record: ActivityRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bodies: Option<super::Bodies>,
}

/// Which records a listing wants.
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    pub instance: Option<String>,
    /// A class (`2xx`, `4xx`, `5xx`), `error` (400 and above), or one code (`503`).
    pub status: Option<String>,
    /// Only records with a larger id (to follow on from an earlier page).
    pub after: Option<u64>,
    /// Only records with a smaller id (to page back).
    pub before: Option<u64>,
    pub limit: usize,
}

impl ActivityFilter {
    fn matches(&self, record: &ActivityRecord) -> bool {
        if self
            .instance
            .as_ref()
            .is_some_and(|i| *i != record.instance)
        {
            return false;
        }
        if self.after.is_some_and(|after| record.id <= after)
            || self.before.is_some_and(|before| record.id >= before)
        {
            return false;
        }
        match self.status.as_deref() {
            None | Some("") => true,
            Some("error") => record.status >= 400,
            Some(class) if class.len() == 3 && class.ends_with("xx") => {
                class.as_bytes()[0] == b'0' + (record.status / 100) as u8
            }
            Some(code) => code.parse::<u16>().is_ok_and(|code| code == record.status),
        }
    }
}

/// A page of records, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActivityPage {
    pub entries: Vec<ActivityRecord>,
    /// How many records the log keeps (`activity.max_entries`).
    pub capacity: usize,
    /// The id the next request will get.
    pub next_id: u64,
}

struct Ring {
    records: VecDeque<Arc<ActivityRecord>>,
    next_id: u64,
}

pub struct ActivityLog {
    capacity: usize,
    ring: Mutex<Ring>,
    feed: broadcast::Sender<Arc<ActivityRecord>>,
}

impl ActivityLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: Mutex::new(Ring {
                records: VecDeque::with_capacity(capacity.min(4096)),
                next_id: 1,
            }),
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn push(&self, request: Finished) {
        if self.capacity == 0 {
            return;
        }
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let record = {
            let mut ring = self.lock();
            let record = Arc::new(ActivityRecord {
                id: ring.next_id,
                at_ms: chrono::Utc::now().timestamp_millis(),
                instance: request.instance,
                path: request.path,
                client: request.client.map(|c| c.to_string()),
                key: request.key,
                status: request.status,
                queued_ms: millis(request.queued),
                first_byte_ms: request.first_byte.map(millis),
                duration_ms: millis(request.duration),
                prompt_tokens: request.prompt_tokens,
                completion_tokens: request.completion_tokens,
                tokens_per_second: request.tokens_per_second.filter(|s| s.is_finite()),
                error: request.error,
                captured: request.bodies.is_some(),
                bodies: request.bodies.map(Arc::new),
            });
            ring.next_id += 1;
            if ring.records.len() == self.capacity {
                ring.records.pop_front();
            }
            ring.records.push_back(Arc::clone(&record));
            record
        };
        if self.feed.receiver_count() > 0 {
            // An error only means the last subscriber just left.
            let _ = self.feed.send(record);
        }
    }

    /// The records `filter` wants, newest first, at most `filter.limit`.
    pub fn list(&self, filter: &ActivityFilter) -> ActivityPage {
        let ring = self.lock();
        let entries = ring
            .records
            .iter()
            .rev()
            .filter(|record| filter.matches(record))
            .take(filter.limit)
            .map(|record| ActivityRecord::clone(record))
            .collect();
        ActivityPage {
            entries,
            capacity: self.capacity,
            next_id: ring.next_id,
        }
    }

    pub fn get(&self, id: u64) -> Option<ActivityDetail> {
        let ring = self.lock();
        // Ids are consecutive in the ring: the one wanted is at a known offset.
        let first = ring.records.front()?.id;
        let index = usize::try_from(id.checked_sub(first)?).ok()?;
        ring.records.get(index).map(|record| ActivityDetail {
            record: ActivityRecord::clone(record),
            bodies: record.bodies.as_deref().cloned(),
        })
    }

    /// Each new record, for the event feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ActivityRecord>> {
        self.feed.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::time::Duration;

    use super::*;

    fn finished(instance: &str, status: u16) -> Finished {
        Finished {
            instance: instance.to_owned(),
            path: "/v1/chat/completions".to_owned(),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            key: None,
            status,
            queued: Duration::from_millis(3),
            first_byte: Some(Duration::from_millis(20)),
            duration: Duration::from_millis(50),
            prompt_tokens: Some(5),
            completion_tokens: Some(7),
            tokens_per_second: Some(140.0),
            error: None,
            bodies: None,
        }
    }

    fn ids(page: &ActivityPage) -> Vec<u64> {
        page.entries.iter().map(|r| r.id).collect()
    }

    #[test]
    fn keeps_the_newest_up_to_its_capacity_and_finds_each_by_id() {
        let log = ActivityLog::new(3);
        for status in [200, 500, 200, 404] {
            log.push(finished("a", status));
        }
        let all = log.list(&ActivityFilter {
            limit: 10,
            ..Default::default()
        });
        assert_eq!(ids(&all), [4, 3, 2]);
        assert_eq!(all.next_id, 5);
        assert!(log.get(1).is_none(), "the oldest left the ring");
        assert_eq!(log.get(3).unwrap().record.status, 200);
        assert_eq!(log.get(4).unwrap().record.status, 404);
        assert!(log.get(5).is_none());
    }

    #[test]
    fn filters_by_instance_status_and_position() {
        let log = ActivityLog::new(10);
        log.push(finished("a", 200));
        log.push(finished("b", 503));
        log.push(finished("a", 404));
        log.push(finished("a", 200));
        let page = |filter: ActivityFilter| {
            let limit = if filter.limit == 0 { 10 } else { filter.limit };
            ids(&log.list(&ActivityFilter { limit, ..filter }))
        };
        let instance = Some("a".to_owned());
        assert_eq!(
            page(ActivityFilter {
                instance: instance.clone(),
                ..Default::default()
            }),
            [4, 3, 1]
        );
        let status = |s: &str| ActivityFilter {
            status: Some(s.to_owned()),
            ..Default::default()
        };
        assert_eq!(page(status("error")), [3, 2]);
        assert_eq!(page(status("5xx")), [2]);
        assert_eq!(page(status("2xx")), [4, 1]);
        assert_eq!(page(status("404")), [3]);
        assert_eq!(
            page(ActivityFilter {
                after: Some(2),
                ..Default::default()
            }),
            [4, 3]
        );
        assert_eq!(
            page(ActivityFilter {
                before: Some(3),
                limit: 1,
                ..Default::default()
            }),
            [2]
        );
    }

    #[test]
    fn a_log_of_no_entries_keeps_nothing() {
        let log = ActivityLog::new(0);
        log.push(finished("a", 200));
        assert!(log
            .list(&ActivityFilter {
                limit: 10,
                ..Default::default()
            })
            .entries
            .is_empty());
    }
}

//! One instance: its definition, its supervisor, the marks the registry keeps on it, and the
//! file its definition is saved in.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use super::events::Feed;
use super::options::{InstanceOptions, InstanceView};
use super::placement::Footprint;
use super::store::{self, RecordOut};
use super::usage::Usage;
use super::InstanceError;
use crate::backends::BackendSecret;
use crate::supervisor::{Status, Supervisor};

/// An instance of the registry. Its marks (`starting`, `removed`, ...) are read together, as a
/// [`super::lifecycle::Lifecycle`], by whoever decides what to do with it.
pub(super) struct Instance {
    pub(super) name: String,
    /// Unix seconds; kept across updates and restarts.
    pub(super) created: i64,
    pub(super) supervisor: Supervisor,
    /// `<configs_dir>/<name>.json`.
    file: PathBuf,
    /// Serializes this instance's lifecycle operations (create, update, start, stop, restart,
    /// delete); a tokio Mutex because they await the supervisor while holding it.
    pub(super) op: Arc<tokio::sync::Mutex<()>>,
    /// The current definition. std Mutex: read or swapped in short sections, never across an await.
    options: Mutex<InstanceOptions>,
    /// Guards the definition file; `true` once the file was removed, so no write can follow.
    file_removed: Mutex<bool>,
    /// A start is under way: counts against `max_running_instances` before the process exists.
    pub(super) starting: AtomicBool,
    /// The instance left the registry; an operation that waited for `op` answers not found.
    pub(super) removed: AtomicBool,
    /// Requests in flight, last use and counters.
    pub(super) usage: Usage,
    /// Start attempts made by inference requests; a request that waited for another's attempt
    /// shares its outcome instead of trying again.
    pub(super) start_attempts: AtomicU64,
    /// Why the last of those attempts failed.
    pub(super) last_start_error: Mutex<Option<String>>,
    /// The reaper handed this instance to an idle stop that has not finished yet.
    pub(super) idle_stop_pending: AtomicBool,
    /// Stopped because a client unloaded its model, not by the owner: until its next start or a
    /// stop through the API, the definition keeps saying it runs, so an engine restart brings
    /// it back as the owner left it.
    pub(super) unloaded: AtomicBool,
    /// Writes the definition when the supervisor changes the status (a crash that ends `failed`)
    /// and reports every change of the supervisor's state to the feed.
    watcher: Mutex<Option<JoinHandle<()>>>,
    /// The registry's change feed.
    feed: Arc<Feed>,
    /// The key the running backend accepts from Corral, new at each start; kept here only,
    /// never in the options, the view or a log.
    credential: Mutex<Option<BackendSecret>>,
    /// The registry's wake-up for starts waiting for room: a request ending here or a change of
    /// the process's state may have made some.
    pub(super) room: Arc<Notify>,
    /// Request slots (`max_concurrent`); `None` for no limit. Replaced when the options change:
    /// requests holding a permit of the old one finish with it.
    slots: Mutex<Option<Arc<Semaphore>>>,
    /// Requests waiting for a slot; an instance with any is never stopped to make room.
    pub(super) queued: AtomicU64,
    /// When the running process was started, for the minimum residency.
    pub(super) started: Mutex<Option<std::time::Instant>>,
    /// What the scheduler expects this instance to take, and what it was seen taking.
    pub(super) footprint: Mutex<FootprintRecord>,
}

/// The expected and the measured memory of an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FootprintRecord {
    /// Estimated from the model and the options, at the last start.
    pub(super) estimated: Option<Footprint>,
    /// The largest seen while the process ran (its tree's RSS, its VRAM); kept after a stop,
    /// so that the next start expects what the last run took.
    pub(super) measured: Option<Footprint>,
}

/// Poisoning only means another thread panicked mid-section; the data is still usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Instance {
    /// A stopped instance, following its supervisor's state from now on; it reports to the
    /// registry's change feed and wakes the starts waiting for room.
    pub(super) fn new(
        name: &str,
        created: i64,
        options: InstanceOptions,
        op: Arc<tokio::sync::Mutex<()>>,
        supervisor: Supervisor,
        file: PathBuf,
        (feed, room): (Arc<Feed>, Arc<Notify>),
    ) -> Arc<Instance> {
        let slots = Mutex::new(slots_for(&options));
        let instance = Arc::new(Instance {
            name: name.to_owned(),
            created,
            supervisor,
            file,
            op,
            options: Mutex::new(options),
            file_removed: Mutex::new(false),
            starting: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            usage: Usage::new(),
            start_attempts: AtomicU64::new(0),
            last_start_error: Mutex::new(None),
            idle_stop_pending: AtomicBool::new(false),
            unloaded: AtomicBool::new(false),
            watcher: Mutex::new(None),
            feed,
            credential: Mutex::new(None),
            room,
            slots,
            queued: AtomicU64::new(0),
            started: Mutex::new(None),
            footprint: Mutex::new(FootprintRecord::default()),
        });
        instance.watch_status();
        instance
    }

    pub(super) fn options(&self) -> InstanceOptions {
        lock(&self.options).clone()
    }

    /// `read` applied to the options without copying them (every routed request reads them).
    pub(super) fn read_options<T>(&self, read: impl FnOnce(&InstanceOptions) -> T) -> T {
        read(&lock(&self.options))
    }

    /// Minutes (of `idle_timeout_unit`) without use before the reaper stops it; 0 = never.
    pub(super) fn idle_timeout(&self) -> u64 {
        lock(&self.options).idle_timeout
    }

    pub(super) fn aliases(&self) -> Vec<String> {
        lock(&self.options).aliases.clone()
    }

    /// Replaces the definition; the caller saves it. What was measured belongs to the old
    /// options (another model, another context), so it is forgotten.
    pub(super) fn set_options(&self, options: InstanceOptions) {
        let mut current = lock(&self.options);
        if current.concurrency() != options.concurrency() {
            *lock(&self.slots) = slots_for(&options);
        }
        if current.backend != options.backend {
            *lock(&self.footprint) = FootprintRecord::default();
        }
        *current = options;
    }

    /// The request slots in force.
    pub(super) fn slots(&self) -> Option<Arc<Semaphore>> {
        lock(&self.slots).clone()
    }

    /// Requests that may wait for a slot, from the options or the configured default.
    pub(super) fn max_queue(&self, default: u32) -> u32 {
        lock(&self.options).max_queue.unwrap_or(default)
    }

    pub(super) fn set_port(&self, port: u16) {
        lock(&self.options).backend.set_port(port);
    }

    /// The key a new start of the backend requires from Corral.
    pub(super) fn set_credential(&self, credential: Option<BackendSecret>) {
        *lock(&self.credential) = credential;
    }

    /// Where the definition is saved.
    pub(super) fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// The key the proxy presents to this instance's backend.
    pub(super) fn credential(&self) -> Option<BackendSecret> {
        lock(&self.credential).clone()
    }

    pub(super) fn view(&self) -> InstanceView {
        let mut view = InstanceView::new(
            &self.name,
            self.created,
            &lock(&self.options),
            self.supervisor.state(),
        );
        let stats = self.usage.stats();
        view.requests = self.usage.requests();
        view.in_flight = self.usage.in_flight();
        view.last_request_at = stats.last_request_at;
        view.tokens_prompt = stats.tokens_prompt;
        view.tokens_completion = stats.tokens_completion;
        view.tokens_per_second = stats.tokens_per_second;
        view.queued = self.queued.load(Ordering::SeqCst);
        let footprint = *lock(&self.footprint);
        view.footprint = super::options::FootprintView {
            estimated: footprint.estimated,
            measured: footprint.measured,
        };
        view
    }

    pub(super) fn port(&self) -> Option<u16> {
        lock(&self.options).backend.port()
    }

    /// Writes the definition with the status the supervisor reports right now; the file lock
    /// makes the last writer also the one that saw the latest state.
    fn persist_now(&self) -> Result<(), InstanceError> {
        let removed = lock(&self.file_removed);
        if *removed {
            return Ok(());
        }
        let options = lock(&self.options).view();
        let record = RecordOut {
            name: &self.name,
            status: if self.unloaded.load(Ordering::SeqCst) {
                Status::Running
            } else {
                self.supervisor.state().status()
            },
            created: self.created,
            options: &options,
        };
        let persist_error = |source| InstanceError::Persist {
            name: self.name.clone(),
            path: self.file.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(&record).map_err(|e| persist_error(e.into()))?;
        bytes.push(b'\n');
        crate::private_files::replace(&self.file, &bytes).map_err(persist_error)
    }

    /// `persist_now` off the async workers (it fsyncs).
    pub(super) async fn persist(self: &Arc<Self>) -> Result<(), InstanceError> {
        let instance = Arc::clone(self);
        tokio::task::spawn_blocking(move || instance.persist_now())
            .await
            .map_err(|e| InstanceError::Persist {
                name: self.name.clone(),
                path: self.file.clone(),
                source: std::io::Error::other(e),
            })?
    }

    /// Removes the definition file; afterwards no write happens any more.
    pub(super) fn remove_file(&self) -> Result<(), InstanceError> {
        let mut removed = lock(&self.file_removed);
        store::remove(&self.file).map_err(|source| InstanceError::Persist {
            name: self.name.clone(),
            path: self.file.clone(),
            source,
        })?;
        *removed = true;
        Ok(())
    }

    /// The engine's metrics and activity log.
    pub(super) fn telemetry(&self) -> &crate::telemetry::Telemetry {
        &self.feed.telemetry
    }

    /// Tells the change feed that something in this instance's JSON may have changed.
    pub(super) fn publish(&self) {
        self.feed.changed(self);
    }

    /// Follows the supervisor's state: reports each change to the feed, and saves each status
    /// change, so a crash that ends in `failed` is on disk too. Holds only a weak reference: the
    /// task never keeps an instance alive.
    fn watch_status(self: &Arc<Self>) {
        let mut changes = self.supervisor.subscribe();
        // llamactl's status, in which a crashed instance waiting for its automatic restart still
        // runs, so an engine killed during the delay restores it.
        let mut last = changes.borrow().status();
        let instance: Weak<Self> = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let status = changes.borrow_and_update().status();
                let Some(instance) = instance.upgrade() else {
                    break;
                };
                instance.publish();
                instance.room.notify_waiters();
                if status == last {
                    continue;
                }
                last = status;
                if let Err(e) = instance.persist().await {
                    tracing::warn!("{e}");
                }
            }
        });
        if let Some(previous) = lock(&self.watcher).replace(task) {
            previous.abort();
        }
    }

    pub(super) fn stop_watching(&self) {
        if let Some(task) = lock(&self.watcher).take() {
            task.abort();
        }
    }
}

fn slots_for(options: &InstanceOptions) -> Option<Arc<Semaphore>> {
    options
        .concurrency()
        .map(|n| Arc::new(Semaphore::new(n as usize)))
}

/// Clears `Instance::starting` however a start ends.
pub(super) struct StartingGuard<'a>(pub(super) &'a Instance);

impl Drop for StartingGuard<'_> {
    fn drop(&mut self) {
        self.0.starting.store(false, Ordering::SeqCst);
    }
}

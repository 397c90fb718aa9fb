//! The registry: every instance of this engine, its port, its supervisor and its definition file.
//!
//! Locking, in the only order ever taken: an instance's `op` lock (async, held for a whole
//! lifecycle operation) may be followed by the registry's `table` lock (sync, held for lookups
//! only); `table` is never held across an await and never waits for an `op` lock, so the two
//! cannot deadlock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::events::{self, Feed, InstanceEvent};
use super::lifecycle::Lifecycle;
use super::options::{InstanceOptions, InstanceView};
use super::store::{self, RecordOut};
use super::usage::Usage;
use super::{name::validate_name, ports, InstanceError};
use crate::backends::BackendSecret;
use crate::config::Config;
use crate::devices::ResourceMonitor;
use crate::supervisor::{
    LaunchSpec, ReadyRequest, RestartPolicy, RuntimeState, Status, Supervisor,
    SupervisorSettings,
};

/// Healthy uptime after which a backend's restart counter starts again from zero.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(10 * 60);

/// Where a running instance's backend is reached, for the proxies.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// `host:port` the proxy dials.
    pub authority: String,
    /// What the proxy presents to the backend as `Authorization: Bearer`; `None` for a backend
    /// that checks no key.
    pub credential: Option<BackendSecret>,
}

/// All instances of the engine. Cheap lookups behind one lock; each instance's operations are
/// serialized by its own lock.
pub struct Registry {
    pub(super) config: Arc<Config>,
    settings: Arc<SupervisorSettings>,
    /// A std Mutex on purpose: it only guards map lookups, inserts and the port table, is never
    /// held across an `.await`, so blocking briefly is cheaper than an async lock and it can never
    /// be held while waiting for a backend.
    pub(super) table: Mutex<Table>,
    /// Set by `shutdown`: nothing may start after the engine began to stop its backends.
    pub(super) shutting_down: AtomicBool,
    /// Wakes the idle reaper when a deadline may have moved (a start, an update, the end of a
    /// request); a stored permit means no wake-up is lost while it scans.
    pub(super) reaper_wake: Arc<tokio::sync::Notify>,
    /// The idle reaper, ended with the registry.
    pub(super) reaper: Mutex<Option<JoinHandle<()>>>,
    /// What changed, for the UI's live events and the tray.
    pub(super) feed: Arc<Feed>,
    /// Sends counter changes to the feed while someone listens; ended with the registry.
    sampler: Mutex<Option<JoinHandle<()>>>,
    /// Set when the engine stops: endless streams (events, log tails) end, so that the HTTP
    /// server's graceful shutdown does not wait for them.
    streams_closed: tokio::sync::watch::Sender<bool>,
    /// Samples the running backends' CPU and memory when a view is asked for.
    resources: Arc<ResourceMonitor>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(reaper) = lock(&self.reaper).take() {
            reaper.abort();
        }
        if let Some(sampler) = lock(&self.sampler).take() {
            sampler.abort();
        }
    }
}

#[derive(Default)]
pub(super) struct Table {
    /// Sorted, so listings come out by name.
    pub(super) instances: BTreeMap<String, Arc<Instance>>,
    /// Port -> instance owning it, whether or not the instance runs.
    ports: BTreeMap<u16, String>,
}

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
}

/// Poisoning only means another thread panicked mid-section; the data is still usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The status written to disk: llamactl's status, in which a crashed instance waiting for its
/// automatic restart still runs, so an engine killed during the delay restores it.
fn persisted_status(state: &RuntimeState) -> Status {
    state.status()
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Instance {
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
        view
    }

    fn port(&self) -> Option<u16> {
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
                persisted_status(&self.supervisor.state())
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
        store::write_atomic(&self.file, &bytes).map_err(persist_error)
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
    fn remove_file(&self) -> Result<(), InstanceError> {
        let mut removed = lock(&self.file_removed);
        store::remove(&self.file).map_err(|source| InstanceError::Persist {
            name: self.name.clone(),
            path: self.file.clone(),
            source,
        })?;
        *removed = true;
        Ok(())
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
        let mut last = persisted_status(&changes.borrow());
        let instance: Weak<Self> = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let status = persisted_status(&changes.borrow_and_update());
                let Some(instance) = instance.upgrade() else {
                    break;
                };
                instance.publish();
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

    fn stop_watching(&self) {
        if let Some(task) = lock(&self.watcher).take() {
            task.abort();
        }
    }
}

/// Clears `Instance::starting` however a start ends.
struct StartingGuard<'a>(&'a Instance);

impl Drop for StartingGuard<'_> {
    fn drop(&mut self) {
        self.0.starting.store(false, Ordering::SeqCst);
    }
}

impl Registry {
    /// Creates the folders, loads every saved definition (a broken one is reported and left
    /// alone), re-reserves their ports, and starts in the background those saved `running` with
    /// `auto_restart`; every other instance starts out stopped.
    pub fn open(config: Arc<Config>) -> Result<Arc<Registry>, InstanceError> {
        let dirs = &config.instances;
        if dirs.auto_create_dirs {
            for path in [&dirs.configs_dir, &dirs.logs_dir, &dirs.run_dir] {
                std::fs::create_dir_all(path).map_err(|source| InstanceError::CreateDir {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        let settings = Arc::new(SupervisorSettings {
            logs_dir: dirs.logs_dir.clone(),
            run_dir: dirs.run_dir.clone(),
            stop_grace: dirs.stop_grace,
            log_max_bytes: dirs.log_max_bytes,
            log_keep_files: dirs.log_keep_files,
            restart_reset_after: RESTART_RESET_AFTER,
        });
        let resources = Arc::new(ResourceMonitor::new());
        let registry = Arc::new(Registry {
            config,
            settings,
            table: Mutex::new(Table::default()),
            shutting_down: AtomicBool::new(false),
            reaper_wake: Arc::default(),
            reaper: Mutex::new(None),
            feed: Arc::new(Feed::new(Arc::clone(&resources))),
            sampler: Mutex::new(None),
            streams_closed: tokio::sync::watch::Sender::new(false),
            resources,
        });
        let to_start = registry.load();
        registry.spawn_reaper();
        *lock(&registry.sampler) = Some(events::spawn_sampler(&registry));
        if !to_start.is_empty() {
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                for name in to_start {
                    match registry.start(&name).await {
                        Ok(_) => tracing::info!("restored running instance '{name}'"),
                        Err(e) => tracing::warn!("could not restore instance '{name}': {e}"),
                    }
                }
            });
        }
        Ok(registry)
    }

    /// Loads the definitions; returns the names to start again.
    fn load(&self) -> Vec<String> {
        let mut to_start = Vec::new();
        for (stem, path, record) in store::load_dir(&self.config.instances.configs_dir) {
            let skip = |why: String| {
                tracing::warn!("skipping instance definition {}: {why}", path.display())
            };
            if let Err(e) = validate_name(&stem) {
                skip(e.to_string());
                continue;
            }
            if record.name != stem {
                skip(format!(
                    "it names '{}' but the file is for '{stem}'",
                    record.name
                ));
                continue;
            }
            let mut options =
                match InstanceOptions::from_stored_json(&record.options, &self.config.instances) {
                    Ok(options) => options,
                    Err(e) => {
                        skip(e.to_string());
                        continue;
                    }
                };
            let mut table = lock(&self.table);
            let port = match options.requested_port() {
                Some(port) => match table.ports.get(&port) {
                    Some(owner) => {
                        skip(format!("port {port} is already used by instance '{owner}'"));
                        continue;
                    }
                    None => port,
                },
                // Only a hand-written file lacks a port: give it one like create would.
                None => match self.free_port(&table) {
                    Ok(port) => port,
                    Err(e) => {
                        skip(e.to_string());
                        continue;
                    }
                },
            };
            options.backend.set_port(port);
            if record.status == "running" && options.auto_restart {
                to_start.push(stem.clone());
            }
            let created = if record.created > 0 {
                record.created
            } else {
                now_unix()
            };
            let instance = self.new_instance(&stem, created, options, Arc::default());
            table.ports.insert(port, stem.clone());
            table.instances.insert(stem, instance);
        }
        to_start
    }

    fn new_instance(
        &self,
        name: &str,
        created: i64,
        options: InstanceOptions,
        op: Arc<tokio::sync::Mutex<()>>,
    ) -> Arc<Instance> {
        let instance = Arc::new(Instance {
            name: name.to_owned(),
            created,
            supervisor: Supervisor::new(name, Arc::clone(&self.settings)),
            file: store::definition_path(&self.config.instances.configs_dir, name),
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
            feed: Arc::clone(&self.feed),
            credential: Mutex::new(None),
        });
        instance.watch_status();
        instance
    }

    /// Follows every change of the instances: each event carries the whole new instance JSON
    /// (or the name of a deleted one). Counter changes come at most once a second per instance.
    /// A receiver that falls behind gets `RecvError::Lagged`; it should then take a fresh
    /// [`Registry::list`] and go on (subscribe first, then list, so nothing falls in between).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<InstanceEvent> {
        self.feed.subscribe()
    }

    /// Ends every open event stream and log tail (the engine is stopping).
    pub fn end_streams(&self) {
        self.streams_closed.send_replace(true);
    }

    /// Completes once [`Registry::end_streams`] was called; streams end with it.
    pub fn streams_ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closed = self.streams_closed.subscribe();
        async move {
            // An error means the registry is gone: nothing left to stream either.
            let _ = closed.wait_for(|closed| *closed).await;
        }
    }

    /// Every instance, sorted by name.
    pub fn list(&self) -> Vec<InstanceView> {
        let instances: Vec<Arc<Instance>> = lock(&self.table).instances.values().cloned().collect();
        let mut views: Vec<InstanceView> =
            instances.iter().map(|instance| instance.view()).collect();
        self.fill_resources(&mut views);
        views
    }

    pub fn get(&self, name: &str) -> Result<InstanceView, InstanceError> {
        Ok(self.view(&*self.lookup(name)?))
    }

    /// The instance as the API shows it, its resources included.
    fn view(&self, instance: &Instance) -> InstanceView {
        let mut view = [instance.view()];
        self.fill_resources(&mut view);
        let [view] = view;
        view
    }

    /// Fills in the resources of the running instances among `views`, from one sample.
    pub fn fill_resources(&self, views: &mut [InstanceView]) {
        fill_resources(&self.resources, views);
    }

    pub(super) fn lookup(&self, name: &str) -> Result<Arc<Instance>, InstanceError> {
        validate_name(name)?;
        lock(&self.table)
            .instances
            .get(name)
            .cloned()
            .ok_or_else(|| InstanceError::NotFound(name.to_owned()))
    }

    /// Looks the instance up and takes its operation lock; fails if it was deleted meanwhile.
    async fn lock_instance(
        &self,
        name: &str,
    ) -> Result<(Arc<Instance>, tokio::sync::OwnedMutexGuard<()>), InstanceError> {
        let instance = self.lookup(name)?;
        let guard = Arc::clone(&instance.op).lock_owned().await;
        if instance.removed.load(Ordering::SeqCst) {
            return Err(InstanceError::NotFound(name.to_owned()));
        }
        Ok((instance, guard))
    }

    pub(super) fn refuse_when_shutting_down(&self) -> Result<(), InstanceError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err(InstanceError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Where `name`'s backend listens; `NotRunning` unless its process is running.
    pub fn upstream(&self, name: &str) -> Result<Upstream, InstanceError> {
        let instance = self.lookup(name)?;
        if instance.supervisor.state().status() != Status::Running {
            return Err(InstanceError::NotRunning(name.to_owned()));
        }
        let options = instance.options();
        let port = options.backend.port().unwrap_or_default();
        Ok(Upstream {
            name: name.to_owned(),
            authority: format!("{}:{port}", connect_host(options.backend.host())),
            credential: instance.credential(),
        })
    }

    /// The last `lines` lines of the instance's log (all when `None`); empty if it never ran.
    pub async fn logs(&self, name: &str, lines: Option<usize>) -> Result<String, InstanceError> {
        let supervisor = self.lookup(name)?.supervisor.clone();
        let read = tokio::task::spawn_blocking(move || supervisor.logs(lines))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match read {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(InstanceError::Logs {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// Follows the instance's log: its last `lines` lines, then each new line, across restarts,
    /// until the instance is deleted.
    pub async fn follow_logs(
        &self,
        name: &str,
        lines: usize,
    ) -> Result<crate::supervisor::LogFollower, InstanceError> {
        let supervisor = self.lookup(name)?.supervisor.clone();
        tokio::task::spawn_blocking(move || supervisor.follow_logs(lines))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| InstanceError::Logs {
                name: name.to_owned(),
                source,
            })
    }

    /// Defines the instance and starts it. On any refusal or failure nothing remains of it: no
    /// definition, no reserved port.
    pub async fn create(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<InstanceView, InstanceError> {
        validate_name(name)?;
        let mut options = InstanceOptions::from_json(body, &self.config.instances)?;
        let port_chosen_here = options.requested_port().is_none();
        self.refuse_when_shutting_down()?;
        // A definition that failed to load is still the user's: never overwrite it.
        let file = store::definition_path(&self.config.instances.configs_dir, name);
        if !lock(&self.table).instances.contains_key(name) && file.exists() {
            return Err(InstanceError::UnloadedDefinition {
                name: name.to_owned(),
                path: file,
            });
        }
        // Locked before the instance becomes visible, so no other operation can come first.
        let op = Arc::new(tokio::sync::Mutex::new(()));
        let _op = Arc::clone(&op).lock_owned().await;
        let instance = {
            let mut table = lock(&self.table);
            if table.instances.contains_key(name) {
                return Err(InstanceError::AlreadyExists(name.to_owned()));
            }
            if let Some(max) = self.config.instances.max_instances {
                if table.instances.len() >= max {
                    return Err(InstanceError::MaxInstances(max));
                }
            }
            if let Some(max) = self.config.instances.max_running_instances {
                if self.active_count(&table, None) >= max && !self.may_evict(&table, None) {
                    return Err(InstanceError::MaxRunning(max));
                }
            }
            check_aliases(&table, name, &options.aliases)?;
            let port = self.assign_port(&table, name, options.requested_port(), None)?;
            options.backend.set_port(port);
            let instance = self.new_instance(name, now_unix(), options, op);
            table.ports.insert(port, name.to_owned());
            table
                .instances
                .insert(name.to_owned(), Arc::clone(&instance));
            instance
        };
        instance.publish();
        let started = async {
            let mut tries = 3;
            loop {
                match self.start_locked(&instance).await {
                    // Another program took the port between our choice and the start (an
                    // eviction or a client's outgoing connection can sit in between): the user
                    // never asked for that port, so another one does as well.
                    Err(InstanceError::PortInUse(busy)) if port_chosen_here && tries > 1 => {
                        tries -= 1;
                        self.move_port(&instance, busy)?;
                    }
                    started => break started,
                }
            }?;
            instance.persist().await
        }
        .await;
        match started {
            Ok(()) => Ok(self.view(&instance)),
            Err(e) => {
                if let Err(cleanup) = self.remove_locked(&instance).await {
                    tracing::warn!("{cleanup}");
                }
                Err(e)
            }
        }
    }

    /// Replaces the options (a full replacement; missing fields take the defaults). A running
    /// instance is restarted with the new options. Without a port the instance keeps its own.
    pub async fn update(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<InstanceView, InstanceError> {
        validate_name(name)?;
        let mut options = InstanceOptions::from_json(body, &self.config.instances)?;
        let (instance, _op) = self.lock_instance(name).await?;
        self.refuse_when_shutting_down()?;
        let old_port = instance.port();
        let port = {
            let mut table = lock(&self.table);
            check_aliases(&table, name, &options.aliases)?;
            let port = self.assign_port(&table, name, options.requested_port(), old_port)?;
            table.ports.insert(port, name.to_owned());
            port
        };
        options.backend.set_port(port);
        let release = |port: u16| {
            let mut table = lock(&self.table);
            if table.ports.get(&port).is_some_and(|owner| owner == name) {
                table.ports.remove(&port);
            }
        };
        let was_running = instance.supervisor.state().state.is_active();
        if was_running {
            if let Err(e) = self.stop_locked(&instance).await {
                if Some(port) != old_port {
                    release(port);
                }
                return Err(e);
            }
        }
        *lock(&instance.options) = options;
        instance.publish();
        // The idle timeout may have changed.
        self.reaper_wake.notify_one();
        if let Some(old) = old_port.filter(|&old| old != port) {
            release(old);
        }
        instance.persist().await?;
        if was_running {
            self.start_locked(&instance).await?;
            instance.persist().await?;
        }
        Ok(self.view(&instance))
    }

    /// Stops the instance if it runs, then removes its definition and frees its port. The log
    /// file stays.
    pub async fn delete(&self, name: &str) -> Result<(), InstanceError> {
        let (instance, _op) = self.lock_instance(name).await?;
        self.remove_locked(&instance).await
    }

    /// Starts a stopped or failed instance; a running one is returned as it is.
    pub async fn start(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let (instance, _op) = self.lock_instance(name).await?;
        self.refuse_when_shutting_down()?;
        self.start_locked(&instance).await?;
        instance.persist().await?;
        Ok(self.view(&instance))
    }

    /// Stops a running instance (and cancels a pending automatic restart); a stopped one is
    /// returned as it is.
    pub async fn stop(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let (instance, _op) = self.lock_instance(name).await?;
        instance.unloaded.store(false, Ordering::SeqCst);
        self.stop_locked(&instance).await?;
        instance.persist().await?;
        Ok(self.view(&instance))
    }

    /// Stops the instance if needed and starts it again, from any state.
    pub async fn restart(&self, name: &str) -> Result<InstanceView, InstanceError> {
        let (instance, _op) = self.lock_instance(name).await?;
        self.refuse_when_shutting_down()?;
        self.stop_locked(&instance).await?;
        let started = self.start_locked(&instance).await;
        instance.persist().await?;
        started?;
        Ok(self.view(&instance))
    }

    /// Stops every backend in parallel, leaving the definitions as they are so that the next
    /// engine start restores the instances that were running.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.end_streams();
        if let Some(reaper) = lock(&self.reaper).take() {
            reaper.abort();
        }
        let instances: Vec<Arc<Instance>> = lock(&self.table).instances.values().cloned().collect();
        for instance in &instances {
            // Otherwise the stops below would be saved as the user's wish.
            instance.stop_watching();
        }
        futures_util::future::join_all(
            instances
                .iter()
                .map(|instance| instance.supervisor.shutdown()),
        )
        .await;
    }

    /// Instances running or about to, `except` one.
    pub(super) fn active_count(&self, table: &Table, except: Option<&Arc<Instance>>) -> usize {
        table
            .instances
            .values()
            .filter(|other| except.is_none_or(|except| !Arc::ptr_eq(other, except)))
            .filter(|other| Lifecycle::of(other).holds_a_running_slot())
            .count()
    }

    /// The port `name` will use: the requested one if no other instance owns it and (unless it
    /// is already `current`) nothing listens on it; else `current`; else the lowest free port of
    /// the range.
    fn assign_port(
        &self,
        table: &Table,
        name: &str,
        requested: Option<u16>,
        current: Option<u16>,
    ) -> Result<u16, InstanceError> {
        match (requested, current) {
            (Some(port), _) => {
                if let Some(owner) = table.ports.get(&port).filter(|owner| *owner != name) {
                    return Err(InstanceError::PortTaken {
                        port,
                        owner: owner.clone(),
                    });
                }
                if Some(port) != current && !ports::is_free_at_os(port) {
                    return Err(InstanceError::PortInUse(port));
                }
                Ok(port)
            }
            (None, Some(port)) => Ok(port),
            (None, None) => self.free_port(table),
        }
    }

    /// The lowest port of the range that no instance owns and nothing listens on.
    fn free_port(&self, table: &Table) -> Result<u16, InstanceError> {
        let range = self.config.instances.port_range;
        ports::lowest_free(range, |port| table.ports.contains_key(&port))
            .ok_or(InstanceError::NoFreePort(range.0, range.1))
    }

    /// Moves `instance` from `busy`, a port Corral chose for it that another program took, to
    /// the lowest free port of the range.
    fn move_port(&self, instance: &Instance, busy: u16) -> Result<(), InstanceError> {
        let port = {
            let mut table = lock(&self.table);
            // `busy` is still this instance's in the table, so it is not picked again.
            let port = self.free_port(&table)?;
            table.ports.remove(&busy);
            table.ports.insert(port, instance.name.clone());
            port
        };
        lock(&instance.options).backend.set_port(port);
        tracing::info!(
            "instance '{}': port {busy} was taken by another program, using {port}",
            instance.name
        );
        Ok(())
    }

    /// Starts the process, first stopping the least recently used idle instance if the running
    /// limit is reached; the caller holds the instance's `op` lock.
    pub(super) async fn start_locked(&self, instance: &Arc<Instance>) -> Result<(), InstanceError> {
        instance.unloaded.store(false, Ordering::SeqCst);
        if instance.supervisor.state().status() == Status::Running {
            return Ok(());
        }
        // Each round either reserves a slot or stops one instance, so this ends.
        let mut evictions_left = lock(&self.table).instances.len();
        loop {
            // Checking and reserving under one lock keeps concurrent starts of different
            // instances from both taking the last running slot.
            let victim = {
                let table = lock(&self.table);
                match self.config.instances.max_running_instances {
                    Some(max) if self.active_count(&table, Some(instance)) >= max => {
                        match self.lock_lru_victim(&table, Some(instance)) {
                            Some(victim) if evictions_left > 0 => victim,
                            _ => return Err(InstanceError::MaxRunning(max)),
                        }
                    }
                    _ => {
                        instance.starting.store(true, Ordering::SeqCst);
                        break;
                    }
                }
            };
            evictions_left -= 1;
            self.evict(victim).await;
        }
        let _starting = StartingGuard(instance);
        let options = instance.options();
        if let Some(port) = options.backend.port() {
            if !ports::is_free_at_os(port) {
                return Err(InstanceError::PortInUse(port));
            }
        }
        let spec = self.launch_spec(&instance.name, &options);
        *lock(&instance.credential) = spec.secret.credential.clone();
        let policy = RestartPolicy {
            auto_restart: options.auto_restart,
            max_restarts: options.max_restarts,
            restart_delay: Duration::from_secs(options.restart_delay),
        };
        instance
            .supervisor
            .start(spec, policy)
            .await
            .map_err(|source| InstanceError::StartFailed {
                name: instance.name.clone(),
                source,
            })?;
        // A fresh start counts as use: its idle time begins now.
        instance.usage.touch();
        self.reaper_wake.notify_one();
        Ok(())
    }

    /// Stops the process; the caller holds the instance's `op` lock.
    pub(super) async fn stop_locked(&self, instance: &Instance) -> Result<(), InstanceError> {
        instance
            .supervisor
            .stop()
            .await
            .map(drop)
            .map_err(|source| InstanceError::StopFailed {
                name: instance.name.clone(),
                source,
            })
    }

    /// Removes the definition file first (if that fails, nothing changed), then stops the process
    /// and drops the instance and its port. The caller holds the instance's `op` lock.
    async fn remove_locked(&self, instance: &Arc<Instance>) -> Result<(), InstanceError> {
        let file_instance = Arc::clone(instance);
        tokio::task::spawn_blocking(move || file_instance.remove_file())
            .await
            .map_err(|e| InstanceError::Persist {
                name: instance.name.clone(),
                path: instance.file.clone(),
                source: std::io::Error::other(e),
            })??;
        instance.removed.store(true, Ordering::SeqCst);
        instance.stop_watching();
        instance.supervisor.shutdown().await;
        // The backend's key died with it; no need to keep it on disk.
        let key_file = self.key_file(&instance.name);
        if let Err(e) = std::fs::remove_file(&key_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(instance = %instance.name, "cannot remove {}: {e}", key_file.display());
            }
        }
        let mut table = lock(&self.table);
        if table
            .instances
            .get(&instance.name)
            .is_some_and(|current| Arc::ptr_eq(current, instance))
        {
            table.instances.remove(&instance.name);
        }
        table.ports.retain(|_, owner| *owner != instance.name);
        drop(table);
        self.feed.deleted(&instance.name);
        Ok(())
    }

    /// Program, arguments and environment from the backend's configured command, plus the
    /// instance's own arguments.
    /// Where llama-server reads the key Corral presents to it.
    fn key_file(&self, name: &str) -> PathBuf {
        self.config.instances.run_dir.join(format!("{name}.key"))
    }

    /// A fresh secret for the backend is part of each start's spec.
    fn launch_spec(&self, name: &str, options: &InstanceOptions) -> LaunchSpec {
        let command = self.config.backends.command(options.backend_type());
        let secret = options.backend.secret_handover(
            BackendSecret::generate(),
            self.key_file(name),
            &command.environment,
        );
        let mut args = command.args.clone();
        args.extend(options.backend.launch_args());
        args.extend(secret.args.iter().cloned());
        let port = options.backend.port().unwrap_or_default();
        let lookup = |name: &str| {
            command
                .environment
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
        };
        if let Some(folder) = options.backend_type().folder_to_create(lookup) {
            // Best effort: without it the backend still serves, only a listing fails.
            if let Err(e) = std::fs::create_dir_all(&folder) {
                tracing::warn!("cannot create {}: {e}", folder.display());
            }
        }
        LaunchSpec {
            program: command.command.clone(),
            args,
            env: command
                .environment
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            health_url: format!(
                "http://{}:{port}{}",
                connect_host(options.backend.host()),
                options.backend.health_path()
            ),
            secret: Box::new(secret),
            ready_request: options
                .backend
                .ready_request()
                .map(|(path, body)| ReadyRequest {
                    path: path.to_owned(),
                    body,
                }),
            stop_signal: options.backend.stop_signal(),
        }
    }
}

/// Refuses aliases that name another instance or that another instance already answers to, and
/// a name that another instance uses as an alias.
fn check_aliases(table: &Table, name: &str, aliases: &[String]) -> Result<(), InstanceError> {
    for (other_name, other) in &table.instances {
        if other_name == name {
            continue;
        }
        let other_aliases = other.aliases();
        if other_aliases.iter().any(|alias| alias == name) {
            return Err(InstanceError::AliasTaken {
                alias: name.to_owned(),
                owner: other_name.clone(),
            });
        }
        if let Some(alias) = aliases
            .iter()
            .find(|alias| *alias == other_name || other_aliases.contains(alias))
        {
            return Err(InstanceError::AliasTaken {
                alias: alias.clone(),
                owner: other_name.clone(),
            });
        }
    }
    if aliases.iter().any(|alias| alias == name) {
        return Err(InstanceError::invalid_field(
            "aliases",
            format!("alias '{name}' is the instance's own name"),
        ));
    }
    Ok(())
}

/// The host to dial for a backend bound to `host`: loopback unless it names a concrete address
/// (a wildcard bind cannot be dialled everywhere, and `localhost` may resolve to IPv6 only).
pub(super) fn connect_host(host: Option<&str>) -> String {
    let host = host.map(str::trim).unwrap_or_default();
    match host {
        "" | "0.0.0.0" | "::" | "[::]" | "localhost" => "127.0.0.1".to_owned(),
        _ if host.contains(':') && !host.starts_with('[') => format!("[{host}]"),
        _ => host.to_owned(),
    }
}

/// Fills in the resources of the running instances among `views`, from one sample.
pub(super) fn fill_resources(monitor: &ResourceMonitor, views: &mut [InstanceView]) {
    let pids: Vec<u32> = views
        .iter()
        .filter(|view| view.status == Status::Running)
        .filter_map(|view| view.pid)
        .collect();
    let usage = monitor.usage(&pids);
    for view in views {
        view.resources = view
            .pid
            .filter(|_| view.status == Status::Running)
            .and_then(|pid| usage.get(&pid).copied());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn wildcard_and_missing_hosts_are_dialled_on_loopback() {
        assert_eq!(connect_host(None), "127.0.0.1");
        assert_eq!(connect_host(Some("0.0.0.0")), "127.0.0.1");
        assert_eq!(connect_host(Some("::")), "127.0.0.1");
        assert_eq!(connect_host(Some("192.168.1.5")), "192.168.1.5");
        assert_eq!(connect_host(Some("::1")), "[::1]");
    }
}

//! The registry: every instance of this engine and the lifecycle operations on them (create,
//! update, start, stop, restart, delete), each serialized by the instance's own lock.
//!
//! Locking, in the only order ever taken: an instance's `op` lock (async, held for a whole
//! lifecycle operation) may be followed by the registry's `table` lock (sync, held for lookups
//! only); `table` is never held across an await and never waits for an `op` lock, so the two
//! cannot deadlock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::catalogue::Catalogue;
use super::events::{self, Feed, InstanceEvent};
use super::instance::{lock, now_unix, Instance, StartingGuard};
use super::launch::backend_authority;
use super::options::{InstanceOptions, InstanceView};
use super::scheduler::RoomQueue;
use super::store;
use super::{name::validate_name, ports, InstanceError};
use crate::backends::install::Installs;
use crate::backends::BackendSecret;
use crate::config::Config;
use crate::devices::{Devices, ProbeEnv, ResourceMonitor};
use crate::relay::Relay;
use crate::supervisor::{RestartPolicy, Status, Supervisor, SupervisorSettings};
use crate::telemetry::Telemetry;

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
    /// Swapped whole by a reload (`Registry::reload`).
    pub(super) config: arc_swap::ArcSwap<Config>,
    settings: Arc<SupervisorSettings>,
    /// A std Mutex on purpose: it only guards map lookups, inserts and the port table, is never
    /// held across an `.await`, so blocking briefly is cheaper than an async lock and it can never
    /// be held while waiting for a backend.
    pub(super) table: Mutex<Catalogue>,
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
    pub(super) resources: Arc<ResourceMonitor>,
    /// The backends Corral installed, which a start runs when the configured command is not
    /// found, and the install jobs.
    installs: Arc<Installs>,
    /// The machine's devices: free memory for placement, and the system report.
    pub(super) devices: Arc<Devices>,
    /// Woken when room may have appeared (a request ended, a process changed state, a start
    /// finished planning), for starts waiting for it.
    pub(super) room: Arc<tokio::sync::Notify>,
    /// The order in which waiting starts get room.
    pub(super) room_queue: RoomQueue,
    /// The pool of connections to the backends both HTTP paths relay through: a stop closes its
    /// backend's idle ones first.
    relay: Relay,
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
        let config_backends_llama = config.backends.llama_cpp.clone();
        let installs = Arc::new(Installs::open(&dirs.data_dir));
        let telemetry = Telemetry::new(config.activity.max_entries);
        let registry = Arc::new(Registry {
            config: arc_swap::ArcSwap::new(config),
            settings,
            table: Mutex::new(Catalogue::default()),
            shutting_down: AtomicBool::new(false),
            reaper_wake: Arc::default(),
            reaper: Mutex::new(None),
            feed: Arc::new(Feed::new(Arc::clone(&resources), telemetry)),
            sampler: Mutex::new(None),
            streams_closed: tokio::sync::watch::Sender::new(false),
            resources,
            installs,
            devices: Arc::new(Devices::new(ProbeEnv::system(&config_backends_llama))),
            room: Arc::default(),
            room_queue: RoomQueue::default(),
            relay: Relay::new(),
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

    /// The backends Corral installed, and their install jobs.
    pub fn installs(&self) -> &Arc<Installs> {
        &self.installs
    }

    /// Loads the definitions; returns the names to start again.
    fn load(&self) -> Vec<String> {
        let mut to_start = Vec::new();
        for (stem, path, record) in store::load_dir(&self.config.load().instances.configs_dir) {
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
            let mut options = match InstanceOptions::from_stored_json(
                &record.options,
                &self.config.load().instances,
            ) {
                Ok(options) => options,
                Err(e) => {
                    skip(e.to_string());
                    continue;
                }
            };
            let mut table = lock(&self.table);
            let port = match options.requested_port() {
                Some(port) => match table.port_owner(port) {
                    Some(owner) => {
                        skip(format!("port {port} is already used by instance '{owner}'"));
                        continue;
                    }
                    None => port,
                },
                // Only a hand-written file lacks a port: give it one like create would.
                None => match table.free_port(self.config.load().instances.port_range) {
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
            table.insert(instance, port);
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
        Instance::new(
            name,
            created,
            options,
            op,
            Supervisor::new(name, Arc::clone(&self.settings)),
            store::definition_path(&self.config.load().instances.configs_dir, name),
            (Arc::clone(&self.feed), Arc::clone(&self.room)),
        )
    }

    /// The relay (and its connection pool) the HTTP servers forward through.
    /// The configuration in force (after the last reload).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn relay(&self) -> Relay {
        self.relay.clone()
    }

    /// The devices probe the scheduler places starts with; the system report shares it.
    /// The metrics and the activity log.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        Arc::clone(&self.feed.telemetry)
    }

    /// What a metrics scrape reads of the instances now.
    pub fn metrics_samples(&self) -> Vec<crate::telemetry::InstanceSample> {
        let instances = lock(&self.table).all();
        let mut views: Vec<InstanceView> =
            instances.iter().map(|instance| instance.view()).collect();
        self.fill_resources(&mut views);
        instances
            .iter()
            .zip(views)
            .map(|(instance, view)| {
                let totals = instance.supervisor.run_totals();
                crate::telemetry::InstanceSample {
                    state: instance.supervisor.state().state.label(),
                    in_flight: view.in_flight,
                    queued: view.queued,
                    starts: totals.starts,
                    crashes: totals.crashes,
                    restarts: totals.restarts,
                    cpu_percent: view.resources.map(|r| f64::from(r.cpu_percent)),
                    rss_bytes: view.resources.map(|r| r.rss_bytes),
                    vram_bytes: view.resources.and_then(|r| r.vram_bytes),
                    name: view.name,
                }
            })
            .collect()
    }

    pub fn devices(&self) -> Arc<Devices> {
        Arc::clone(&self.devices)
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
        let instances = lock(&self.table).all();
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
            .get(name)
            .cloned()
            .ok_or_else(|| InstanceError::NotFound(name.to_owned()))
    }

    /// Looks the instance up and takes its operation lock; fails if it was deleted meanwhile.
    pub(super) async fn lock_instance(
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
        Ok(Upstream {
            name: name.to_owned(),
            authority: instance.read_options(backend_authority),
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
        let mut options = InstanceOptions::from_json(body, &self.config.load().instances)?;
        let port_chosen_here = options.requested_port().is_none();
        self.refuse_when_shutting_down()?;
        // A definition that failed to load is still the user's: never overwrite it.
        let file = store::definition_path(&self.config.load().instances.configs_dir, name);
        if !lock(&self.table).contains(name) && file.exists() {
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
            if table.contains(name) {
                return Err(InstanceError::AlreadyExists(name.to_owned()));
            }
            if let Some(max) = self.config.load().instances.max_instances {
                if table.len() >= max {
                    return Err(InstanceError::MaxInstances(max));
                }
            }
            table.check_aliases(name, &options.aliases)?;
            let port = self.assign_port(&table, name, options.requested_port(), None)?;
            options.backend.set_port(port);
            let instance = self.new_instance(name, now_unix(), options, op);
            table.insert(Arc::clone(&instance), port);
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
        let mut options = InstanceOptions::from_json(body, &self.config.load().instances)?;
        let (instance, _op) = self.lock_instance(name).await?;
        self.refuse_when_shutting_down()?;
        let old_port = instance.port();
        let port = {
            let mut table = lock(&self.table);
            table.check_aliases(name, &options.aliases)?;
            let port = self.assign_port(&table, name, options.requested_port(), old_port)?;
            table.reserve_port(port, name);
            port
        };
        options.backend.set_port(port);
        let release = |port: u16| lock(&self.table).release_port(port, name);
        let was_running = instance.supervisor.state().state.is_active();
        if was_running {
            if let Err(e) = self.stop_locked(&instance).await {
                if Some(port) != old_port {
                    release(port);
                }
                return Err(e);
            }
        }
        instance.set_options(options);
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
        self.installs.shutdown().await;
        if let Some(reaper) = lock(&self.reaper).take() {
            reaper.abort();
        }
        let instances = lock(&self.table).all();
        for instance in &instances {
            // Otherwise the stops below would be saved as the user's wish.
            instance.stop_watching();
            self.close_idle_connections(instance);
        }
        futures_util::future::join_all(
            instances
                .iter()
                .map(|instance| instance.supervisor.shutdown()),
        )
        .await;
    }

    /// Starts the process once there is room for it (see [`Registry::make_room`]), answering
    /// at once when there is none; the caller holds the instance's `op` lock.
    pub(super) async fn start_locked(&self, instance: &Arc<Instance>) -> Result<(), InstanceError> {
        self.start_locked_waiting(instance, None).await
    }

    /// `start_locked`, waiting for room until `deadline` when there is one.
    pub(super) async fn start_locked_waiting(
        &self,
        instance: &Arc<Instance>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), InstanceError> {
        instance.unloaded.store(false, Ordering::SeqCst);
        if instance.supervisor.state().status() == Status::Running {
            return Ok(());
        }
        self.make_room(instance, deadline).await?;
        let _starting = StartingGuard(instance);
        let options = instance.options();
        if let Some(port) = options.backend.port() {
            if !ports::is_free_at_os(port) {
                return Err(InstanceError::PortInUse(port));
            }
        }
        let spec = self.launch_spec(&instance.name, &options);
        instance.set_credential(spec.secret.credential.clone());
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
        *lock(&instance.started) = Some(std::time::Instant::now());
        self.reaper_wake.notify_one();
        Ok(())
    }

    /// Stops the process; the caller holds the instance's `op` lock.
    pub(super) async fn stop_locked(&self, instance: &Instance) -> Result<(), InstanceError> {
        self.close_idle_connections(instance);
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

    /// Closes the relay's idle connections to the instance's backend, which is about to stop:
    /// it then exits at once instead of at its HTTP server's next idle check.
    fn close_idle_connections(&self, instance: &Instance) {
        self.relay
            .close_idle(&instance.read_options(backend_authority));
    }

    /// Removes the definition file first (if that fails, nothing changed), then stops the process
    /// and drops the instance and its port. The caller holds the instance's `op` lock.
    async fn remove_locked(&self, instance: &Arc<Instance>) -> Result<(), InstanceError> {
        let file_instance = Arc::clone(instance);
        tokio::task::spawn_blocking(move || file_instance.remove_file())
            .await
            .map_err(|e| InstanceError::Persist {
                name: instance.name.clone(),
                path: instance.file().to_path_buf(),
                source: std::io::Error::other(e),
            })??;
        instance.removed.store(true, Ordering::SeqCst);
        instance.stop_watching();
        self.close_idle_connections(instance);
        instance.supervisor.shutdown().await;
        // The backend's key died with it; no need to keep it on disk.
        let key_file = self.key_file(&instance.name);
        if let Err(e) = std::fs::remove_file(&key_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(instance = %instance.name, "cannot remove {}: {e}", key_file.display());
            }
        }
        lock(&self.table).remove(instance);
        self.feed.deleted(&instance.name);
        Ok(())
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

//! Corral's engine: the management API, the supervisor of backend processes and the relay, in one
//! process. [`Engine::start`] brings it up; the desktop shell and `corral serve` both use it.
//!
//! # Map
//!
//! The path of an inference request, `POST /v1/chat/completions` with `"model": "qwen"`:
//!
//! 1. [`server`] accepts the connection. Its fast path (`server::fast`) is a byte-level codec:
//!    it reads the head and body and, when the instance `qwen` is ready, takes the request
//!    itself. Anything else goes to hyper and the axum router in [`api`].
//! 2. [`api`] checks the Host and the key (`api::host`, `api::auth`), then `api::openai` (or the
//!    Ollama and Anthropic front ends over it) asks [`instances`] for a lease on `qwen`.
//! 3. [`instances`] resolves the name (`catalogue`), starts the instance on demand (`routing`,
//!    taking a running slot back from an idle one if needed: `scheduler`) and waits until its
//!    [`supervisor`] reports it ready (`supervisor::InstanceState`).
//! 4. [`relay`] sends the request to the backend over its pool and hands the answer back as it
//!    arrives, to whichever of the two servers took the request; `relay::policy` says which
//!    headers pass. The request log reads token counts from the answer on the way ([`sse`] for
//!    streams).
//!
//! The other parts: [`backends`] (each backend's options, argv, parse-command and its
//! `Descriptor`: readiness, stop signal, model name), [`config`] (settings from file and
//! environment), [`keys`] and [`private_files`] (generated keys, owner-only files), [`devices`]
//! (the system report and per-instance resources), [`downloads`] (models from Hugging Face into
//! its cache), [`logging`], and [`desktop`] (the Tauri shell, feature `desktop`).
pub mod access;
pub mod api;
pub mod backends;
pub mod config;
pub mod config_watch;
pub mod desktop;
pub mod devices;
pub mod downloads;
#[cfg(test)]
mod fuzz;
pub mod instances;
pub mod keys;
pub mod logging;
pub mod models;
pub mod private_files;
pub mod relay;
pub mod server;
pub mod sse;
pub mod supervisor;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::instances::Registry;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Instances(#[from] instances::InstanceError),
    #[error(transparent)]
    Downloads(#[from] downloads::DownloadError),
    #[error(transparent)]
    Access(#[from] access::AccessError),
}

/// A running engine: its address and keys, and the way to stop it.
pub struct Engine {
    /// Where the API and the UI are served.
    pub addr: SocketAddr,
    /// The configuration in force, with generated keys filled in.
    pub config: Arc<Config>,
    registry: Arc<Registry>,
    downloads: Arc<downloads::Downloads>,
    keys: Arc<access::KeyStore>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Engine {
    /// Cleans up after a crashed engine, loads the instances, and starts serving.
    /// Keys must already be final (see [`keys::load_or_create`]).
    pub async fn start(config: Config) -> Result<Engine, EngineError> {
        Self::start_with(config, None).await
    }

    /// `start`, with the desktop app's controls behind `/api/v1/desktop`.
    pub async fn start_with(
        config: Config,
        desktop: Option<Arc<dyn api::desktop::DesktopControl>>,
    ) -> Result<Engine, EngineError> {
        let config = Arc::new(config);
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        // Owner-only: the data folder holds the keys file, the run folder the pid files.
        for dir in [&config.instances.data_dir, &config.instances.run_dir] {
            private_files::ensure_dir(dir).map_err(|source| EngineError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let run_dir = &config.instances.run_dir;
        for line in supervisor::clean_up_leftovers(run_dir) {
            tracing::warn!("{line}");
        }
        let registry = Registry::open(config.clone())?;
        let keys = access::KeyStore::open(&config.instances.data_dir, |name| {
            registry.get(name).is_ok()
        })?;
        let addr = SocketAddr::new(config.server.host, config.server.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| EngineError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EngineError::Bind { addr, source })?;
        // Opened once the engine is sure to run: it continues unfinished downloads at once.
        let downloads =
            downloads::Downloads::open(downloads::Settings::from_env(&config.instances.data_dir))?;
        let state = api::AppState {
            registry: registry.clone(),
            config: config.clone(),
            desktop,
            downloads: Arc::clone(&downloads),
            keys: Arc::clone(&keys),
        };
        // Requests note a key's last use in memory; the database learns it every half minute.
        let flushed = Arc::downgrade(&keys);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
            every.tick().await;
            loop {
                every.tick().await;
                let Some(keys) = flushed.upgrade() else { break };
                if let Err(e) = keys.flush_last_used() {
                    tracing::warn!("cannot note the API keys' last use: {e}");
                }
            }
        });
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(listener, state, async {
            let _ = rx.await;
        }));
        tracing::info!("Corral listening on http://{addr}");
        Ok(Engine {
            addr,
            config,
            registry,
            downloads,
            keys,
            shutdown: Some(tx),
            server,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The model downloads, for the model library.
    pub fn downloads(&self) -> &Arc<downloads::Downloads> {
        &self.downloads
    }

    /// The inference keys made through `/api/v1/auth/keys`.
    pub fn keys(&self) -> &Arc<access::KeyStore> {
        &self.keys
    }

    /// Stops accepting requests, lets in-flight ones finish, then stops every backend.
    pub async fn shutdown(mut self) {
        // Event streams and log tails never end by themselves.
        self.registry.end_streams();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Streams may stay open forever; do not let one hold the backends up.
        let server = &mut self.server;
        if tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        // Unfinished downloads stay recorded and continue at the next start.
        self.downloads.shutdown().await;
        if let Err(e) = self.keys.flush_last_used() {
            tracing::warn!("cannot note the API keys' last use: {e}");
        }
        self.registry.shutdown().await;
    }
}

//! What makes a running engine reload its configuration: SIGHUP, and any change to the config
//! file (the `notify` crate watches its folder, as editors replace a file by renaming a new
//! one over it). A burst of changes (an editor's write, rename and chmod) is one reload. The
//! reload itself is `Registry::reload`; a file that does not load is refused there with its
//! reason, and the running configuration stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::instances::Registry;

/// Changes that arrive within this long of each other are one reload.
const SETTLE: Duration = Duration::from_millis(300);

/// Loads the configuration again, or says why it cannot.
pub type Load = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
}

/// The reload triggers of one engine; dropping it stops them.
pub struct ConfigWatch {
    _watcher: Option<notify::RecommendedWatcher>,
    task: JoinHandle<()>,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reloads `registry`'s configuration with `load` on SIGHUP and whenever `file` changes.
pub fn spawn(
    registry: &Arc<Registry>,
    file: Option<&Path>,
    load: Load,
) -> Result<ConfigWatch, WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher = file.map(|file| watch_file(file, tx.clone())).transpose()?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup()).map_err(WatchError::Signal)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let registry = Arc::downgrade(registry);
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let the burst settle, then reload once for all of it.
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let load = Arc::clone(&load);
            match tokio::task::spawn_blocking(move || load()).await {
                Ok(Ok(config)) => {
                    registry.reload(config);
                }
                Ok(Err(reason)) => {
                    registry.reload_refused(reason);
                }
                Err(e) => {
                    registry.reload_refused(format!("loading the configuration failed: {e}"));
                }
            }
        }
    });
    Ok(ConfigWatch {
        _watcher: watcher,
        task,
    })
}

/// Watches the folder of `file` and sends on `tx` for every event about `file`.
fn watch_file(
    file: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let error = |source| WatchError::Watch {
        path: file.to_owned(),
        source,
    };
    // Compared by name within the folder: the file itself may be replaced (a new inode).
    let name = file.file_name().map(|name| name.to_owned());
    let folder = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        if event.kind.is_access() {
            return;
        }
        if event
            .paths
            .iter()
            .any(|path| path.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    })
    .map_err(error)?;
    watcher
        .watch(&folder, notify::RecursiveMode::NonRecursive)
        .map_err(error)?;
    Ok(watcher)
}

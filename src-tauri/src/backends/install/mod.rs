//! Backends Corral installs itself, under `<data_dir>/backends/`: mlx-lm into a virtualenv of
//! its own (`mlx.rs`), llama-server built from llama.cpp's source (`llama.rs`). One job per
//! backend at a time (`job.rs`), its steps run as process groups that a cancel kills (`run.rs`).
//! What completed is recorded in the owner-only `installed.json`, and [`Installs::resolve`] is
//! the one rule that decides which executable runs a backend: the configured command when it is
//! found, else the one Corral installed.

mod job;
mod llama;
mod mlx;
mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use job::Outcome;
pub use job::{InstallJob, JobState};
use run::Ctx;

use super::installed::{self, Resolved};
use super::BackendType;
use crate::config::BackendCommand;

/// The file that records completed installs, below `<data_dir>/backends/`.
pub const RECORD_FILE: &str = "installed.json";
/// Events a slow subscriber may fall behind by; a job's next event carries all of it again.
const EVENTS: usize = 64;
/// How long the engine's shutdown waits for cancelled installs to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Why an install step failed: said to the user in the job's `error`.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Python(String),
    #[error("`{command}` failed ({status}): {last}")]
    Step {
        command: String,
        status: String,
        last: String,
    },
    #[error("`{command}` could not be run: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{path} has sha256 {got}, not the pinned {want}: it was removed; try again to download it again")]
    Checksum {
        path: PathBuf,
        got: String,
        want: String,
    },
}

/// Why an install was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("Corral does not install {}: see the advice in GET /api/v1/backends", .0.as_str())]
    NotInstallable(BackendType),
    #[error("{} is already installed: {}", .backend.as_str(), .path.display())]
    AlreadyInstalled { backend: BackendType, path: PathBuf },
    #[error("an install of {} is already running", .0.as_str())]
    Running(BackendType),
    /// Another process (a second Corral, `corral install`) holds this data folder's install.
    #[error("an install of {} is already running in another Corral process on this data folder", .0.as_str())]
    RunningElsewhere(BackendType),
    #[error("cannot lock {}: {source}", .path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the install log {}: {source}", .path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The backends Corral can install.
#[derive(Debug, Clone, Copy)]
enum Installer {
    LlamaCpp,
    MlxLm,
}

impl Installer {
    /// Its folder below `<data_dir>/backends`.
    fn folder(self) -> &'static str {
        match self {
            Installer::LlamaCpp => "llama.cpp",
            Installer::MlxLm => "mlx-lm",
        }
    }
}

/// One completed install, as `installed.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Installed {
    pub path: PathBuf,
    pub version: Option<String>,
    /// RFC 3339.
    pub installed_at: String,
}

/// The installs of this engine: what is recorded, and the latest job of each backend.
pub struct Installs {
    /// `<data_dir>/backends`.
    root: PathBuf,
    /// A std Mutex: held only to read or change the maps (and write the small record file),
    /// never across an `.await`.
    state: Mutex<State>,
    /// The `backend_install` events of every job.
    events: broadcast::Sender<InstallJob>,
}

#[derive(Default)]
struct State {
    recorded: BTreeMap<BackendType, Installed>,
    jobs: BTreeMap<BackendType, Slot>,
}

/// A backend's latest job.
struct Slot {
    /// The job as it is now; receivers wait for its end.
    job: watch::Sender<InstallJob>,
    /// Set to stop it.
    cancel: watch::Sender<bool>,
}

impl Installs {
    /// The installs recorded below `data_dir` (a record that cannot be read is reported and
    /// treated as empty: the backends then need their configured commands, as before).
    pub fn open(data_dir: &Path) -> Installs {
        let root = data_dir.join("backends");
        let recorded = read_record(&root.join(RECORD_FILE)).unwrap_or_default();
        Installs {
            root,
            state: Mutex::new(State {
                recorded,
                jobs: BTreeMap::new(),
            }),
            events: broadcast::channel(EVENTS).0,
        }
    }

    /// Which executable runs `backend` configured as `command`: the command when it is found;
    /// else the one Corral installed; else why neither is there.
    pub fn resolve(
        &self,
        backend: BackendType,
        command: &BackendCommand,
    ) -> Result<Resolved, String> {
        let recorded = self.recorded(backend).map(|i| i.path);
        installed::resolve(command, recorded.as_deref())
    }

    /// The program to run for `backend`: the configured command as it is (the spawn searches
    /// its `PATH`), unless only what Corral installed is found.
    pub fn program(&self, backend: BackendType, command: &BackendCommand) -> String {
        match self.resolve(backend, command) {
            Ok(found) if found.managed => found.path.display().to_string(),
            _ => command.command.clone(),
        }
    }

    /// What Corral installed of `backend`. The record is read again when it has nothing for
    /// `backend`: `corral install` in a terminal installs while the app runs, and the app uses
    /// what it installed without a restart.
    pub fn recorded(&self, backend: BackendType) -> Option<Installed> {
        if let Some(installed) = self.lock().recorded.get(&backend) {
            return Some(installed.clone());
        }
        let mut fresh = read_record(&self.root.join(RECORD_FILE))?;
        let installed = fresh.remove(&backend)?;
        self.lock().recorded.insert(backend, installed.clone());
        Some(installed)
    }

    /// Every job's changes, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<InstallJob> {
        self.events.subscribe()
    }

    /// The latest job of `backend`.
    pub fn job(&self, backend: BackendType) -> Option<InstallJob> {
        self.lock()
            .jobs
            .get(&backend)
            .map(|slot| slot.job.borrow().clone())
    }

    /// Starts installing `backend` (configured as `command`) in the background; answers the
    /// job as it starts.
    pub fn start(
        self: &Arc<Self>,
        backend: BackendType,
        command: &BackendCommand,
    ) -> Result<InstallJob, StartError> {
        let installer = match backend {
            BackendType::LlamaCpp => Installer::LlamaCpp,
            BackendType::MlxLm => Installer::MlxLm,
            BackendType::Vllm => return Err(StartError::NotInstallable(backend)),
        };
        if let Ok(found) = self.resolve(backend, command) {
            return Err(StartError::AlreadyInstalled {
                backend,
                path: found.path,
            });
        }
        let dir = self.root.join(installer.folder());
        let mut state = self.lock();
        if state
            .jobs
            .get(&backend)
            .is_some_and(|slot| slot.job.borrow().state == JobState::Running)
        {
            return Err(StartError::Running(backend));
        }
        // Before the log is truncated: it may be another process's running install's.
        let lock = lock_folder(&dir, backend)?;
        let log_path = dir.join("install.log");
        let log = open_log(&log_path).map_err(|source| StartError::Log {
            path: log_path.clone(),
            source,
        })?;
        let job = InstallJob::new(backend, log_path);
        let (job_sender, _) = watch::channel(job.clone());
        let (cancel, cancelled) = watch::channel(false);
        let ctx = Ctx::new(job_sender.clone(), self.events.clone(), cancelled, log);
        state.jobs.insert(
            backend,
            Slot {
                job: job_sender,
                cancel,
            },
        );
        drop(state);
        let _ = self.events.send(job.clone());
        let installs = Arc::clone(self);
        tokio::spawn(installs.run(backend, installer, dir, ctx, lock));
        Ok(job)
    }

    /// Cancels the running job of `backend` and waits for it to end; answers the job as it
    /// ended (`completed` when it won the race), `None` when `backend` has no job.
    pub async fn cancel(&self, backend: BackendType) -> Option<InstallJob> {
        let mut job = {
            let state = self.lock();
            let slot = state.jobs.get(&backend)?;
            slot.cancel.send_replace(true);
            slot.job.subscribe()
        };
        let ended = job
            .wait_for(|job| job.state != JobState::Running)
            .await
            .map(|job| job.clone());
        Some(ended.unwrap_or_else(|_| job.borrow().clone()))
    }

    /// Cancels every running job and waits (a while) for them to end: the engine is stopping.
    pub async fn shutdown(&self) {
        let backends: Vec<BackendType> = self.lock().jobs.keys().copied().collect();
        let all = futures_util::future::join_all(backends.into_iter().map(|b| self.cancel(b)));
        if tokio::time::timeout(SHUTDOWN_WAIT, all).await.is_err() {
            tracing::warn!(
                "an install did not end within {} s of the shutdown",
                SHUTDOWN_WAIT.as_secs()
            );
        }
    }

    /// The job, holding `lock` until what it made is recorded: the lock goes before the job's
    /// end is published, so whoever sees the end may start the next install at once.
    async fn run(
        self: Arc<Self>,
        backend: BackendType,
        installer: Installer,
        dir: PathBuf,
        ctx: Ctx,
        lock: FolderLock,
    ) {
        let result = match installer {
            Installer::LlamaCpp => llama::install(&ctx, &dir).await,
            Installer::MlxLm => mlx::install(&ctx, &dir).await,
        };
        let result = match result {
            Ok(path) => {
                let version = installed::version_at(backend, &path).await.ok();
                self.record(backend, path, version)
            }
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok(path) => Outcome::Completed(path),
            Err(e) => {
                let cleaned = match installer {
                    Installer::LlamaCpp => llama::clean_up(&dir),
                    Installer::MlxLm => mlx::clean_up(&dir),
                };
                if let Err(also) = cleaned {
                    ctx.line(&also.to_string());
                }
                match e {
                    InstallError::Cancelled => Outcome::Cancelled,
                    e => Outcome::Failed(e.to_string()),
                }
            }
        };
        let said = match &outcome {
            Outcome::Completed(path) => format!("== installed {}", path.display()),
            Outcome::Failed(error) => format!("== failed: {error}"),
            Outcome::Cancelled => "== cancelled".to_owned(),
        };
        ctx.line(&said);
        drop(lock);
        ctx.update(|job| {
            job.finish(outcome);
        });
    }

    /// Adds the install to `installed.json`; it takes effect at once.
    fn record(
        &self,
        backend: BackendType,
        path: PathBuf,
        version: Option<String>,
    ) -> Result<PathBuf, InstallError> {
        let installed = Installed {
            path: path.clone(),
            version,
            installed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let file = self.root.join(RECORD_FILE);
        // What another process recorded since this one read the file is kept.
        let on_disk = read_record(&file).unwrap_or_default();
        let mut state = self.lock();
        let mut recorded = state.recorded.clone();
        for (other, install) in on_disk {
            recorded.entry(other).or_insert(install);
        }
        recorded.insert(backend, installed);
        let bytes = serde_json::to_vec_pretty(&recorded).map_err(|e| InstallError::Io {
            what: "cannot write the install record".to_owned(),
            source: std::io::Error::other(e),
        })?;
        crate::private_files::write(&file, &bytes).map_err(|source| InstallError::Io {
            what: format!("cannot write {}", file.display()),
            source,
        })?;
        state.recorded = recorded;
        Ok(path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change to the state is one assignment: a panic leaves it whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The completed installs `file` records; `None` when it is missing or cannot be read (said
/// in the log: the backends then need their configured commands, as before any install).
fn read_record(file: &Path) -> Option<BTreeMap<BackendType, Installed>> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| tracing::warn!("ignoring {}: {e}", file.display()))
            .ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", file.display());
            None
        }
    }
}

/// The held lock on a backend's install folder: one install at a time per data folder, across
/// processes (the app and `corral install`), since both would build in the same tree. The
/// kernel lets go of it when the process ends, however it ends.
#[cfg(unix)]
type FolderLock = nix::fcntl::Flock<std::fs::File>;
#[cfg(not(unix))]
type FolderLock = ();

#[cfg(unix)]
fn lock_folder(dir: &Path, backend: BackendType) -> Result<FolderLock, StartError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("install.lock");
    let failed = |source| StartError::Lock {
        path: path.clone(),
        source,
    };
    crate::private_files::ensure_dir(dir).map_err(failed)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(failed)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => StartError::RunningElsewhere(backend),
            errno => failed(errno.into()),
        },
    )
}

#[cfg(not(unix))]
fn lock_folder(_dir: &Path, _backend: BackendType) -> Result<FolderLock, StartError> {
    Ok(())
}

/// A fresh log for an install, owner-only, in an owner-only folder; never through a link.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::private_files::ensure_dir(dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn command(name: &str, path: &Path) -> BackendCommand {
        BackendCommand {
            command: name.to_owned(),
            args: Vec::new(),
            environment: [("PATH".to_owned(), path.display().to_string())].into(),
        }
    }

    #[tokio::test]
    async fn a_second_install_of_a_backend_waits_for_the_first_and_a_cancel_ends_it() {
        let data = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let installs = Arc::new(Installs::open(data.path()));
        let missing = command("mlx_lm.server", empty.path());
        let first = installs.start(BackendType::MlxLm, &missing).unwrap();
        assert_eq!(first.state, JobState::Running);
        assert!(matches!(
            installs.start(BackendType::MlxLm, &missing),
            Err(StartError::Running(BackendType::MlxLm))
        ));
        assert!(matches!(
            installs.start(BackendType::Vllm, &missing),
            Err(StartError::NotInstallable(_))
        ));
        let ended = installs.cancel(BackendType::MlxLm).await.unwrap();
        // Cancelled, or failed when this machine has no usable Python: ended either way.
        assert_ne!(ended.state, JobState::Running, "{ended:?}");
        assert!(ended.finished_at.is_some());
        assert!(installs.recorded(BackendType::MlxLm).is_none());
        assert!(!data.path().join("backends/mlx-lm/venv").exists());
        assert!(!data.path().join("backends").join(RECORD_FILE).exists());
        // The folder and the log are the owner's alone.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data.path().join("backends/mlx-lm")), 0o700);
        assert_eq!(mode(&ended.log_path), 0o600);
        assert_eq!(installs.job(BackendType::MlxLm).unwrap().id, first.id);
    }

    #[tokio::test]
    async fn one_install_of_a_backend_at_a_time_per_data_folder_across_processes() {
        let data = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let missing = command("mlx_lm.server", empty.path());
        // Two engines on one data folder, as the app and `corral install` in a terminal: the
        // lock is the kernel's (flock), held per open file, so it works within one process too.
        let app = Arc::new(Installs::open(data.path()));
        let terminal = Arc::new(Installs::open(data.path()));
        let running = app.start(BackendType::MlxLm, &missing).unwrap();
        let log = std::fs::read_to_string(&running.log_path).unwrap_or_default();
        assert!(matches!(
            terminal.start(BackendType::MlxLm, &missing),
            Err(StartError::RunningElsewhere(BackendType::MlxLm))
        ));
        // The refused start left the running install's log as it was.
        let after = std::fs::read_to_string(&running.log_path).unwrap_or_default();
        assert!(after.starts_with(&log), "{log:?} -> {after:?}");
        assert!(terminal.job(BackendType::MlxLm).is_none());
        let ended = app.cancel(BackendType::MlxLm).await.unwrap();
        assert_ne!(ended.state, JobState::Running);
        // Ended: the lock went with it.
        let next = terminal.start(BackendType::MlxLm, &missing).unwrap();
        assert_ne!(next.id, running.id);
        terminal.cancel(BackendType::MlxLm).await.unwrap();

        // A lock file planted as a link (by whoever could write there) is not followed: the
        // start fails and the link's target is left as it was.
        let other = tempfile::tempdir().unwrap();
        let target = other.path().join("precious");
        std::fs::write(&target, "keep").unwrap();
        let dir = data.path().join("backends/llama.cpp");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("install.lock")).unwrap();
        let llama = command("llama-server", empty.path());
        assert!(matches!(
            app.start(BackendType::LlamaCpp, &llama),
            Err(StartError::Lock { .. })
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!dir.join("install.log").exists());
    }

    #[test]
    fn what_another_process_installed_is_used_without_a_restart_and_kept_by_later_records() {
        let data = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let executable = |name: &str| {
            let path = data.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
            path
        };
        let (server, mlx) = (executable("llama-server"), executable("mlx_lm.server"));
        let app = Installs::open(data.path());
        let missing = command("llama-server", empty.path());
        assert!(app.resolve(BackendType::LlamaCpp, &missing).is_err());
        // `corral install llama-cpp` in a terminal, while the app runs.
        let terminal = Installs::open(data.path());
        terminal
            .record(BackendType::LlamaCpp, server.clone(), None)
            .unwrap();
        let found = app.resolve(BackendType::LlamaCpp, &missing).unwrap();
        assert_eq!((found.path, found.managed), (server.clone(), true));
        // A record the app writes next keeps the terminal's.
        let other = Installs::open(data.path());
        other.record(BackendType::MlxLm, mlx.clone(), None).unwrap();
        let reopened = Installs::open(data.path());
        assert_eq!(
            reopened.recorded(BackendType::LlamaCpp).unwrap().path,
            server
        );
        assert_eq!(reopened.recorded(BackendType::MlxLm).unwrap().path, mlx);
    }

    #[test]
    fn a_recorded_install_is_read_back_and_resolves_when_the_command_is_missing() {
        let data = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let server = data.path().join("llama-server");
        std::fs::write(&server, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o700)).unwrap();
        let installs = Installs::open(data.path());
        let missing = command("llama-server", empty.path());
        assert!(installs.resolve(BackendType::LlamaCpp, &missing).is_err());
        installs
            .record(
                BackendType::LlamaCpp,
                server.clone(),
                Some("6543".to_owned()),
            )
            .unwrap();
        let file = data.path().join("backends").join(RECORD_FILE);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // As after a restart.
        let reopened = Installs::open(data.path());
        let found = reopened.resolve(BackendType::LlamaCpp, &missing).unwrap();
        assert_eq!(
            found,
            Resolved {
                path: server,
                managed: true
            }
        );
        assert!(reopened.resolve(BackendType::MlxLm, &missing).is_err());
    }
}

//! Model downloads from Hugging Face into its standard cache, so that llama.cpp, mlx-lm, vLLM
//! and transformers find them: the jobs and their progress, what Corral downloaded, and its
//! removal. The routes are in `api/downloads.rs`; this module owns the work.
//!
//! `names` checks every name before it touches a path, `select` picks the files (llama.cpp's
//! `-hf` rules), `hub` speaks the hub's HTTP API, `transfer` moves one file's bytes (resumed,
//! hashed), `cache` is the layout on disk, `store` the record in `<data_dir>/downloads.json`,
//! and `job` runs one download from start to end.

mod cache;
mod hub;
mod job;
pub mod names;
pub mod select;
mod space;
mod store;
mod transfer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, Semaphore};
use utoipa::ToSchema;

pub use select::ModelFormat;

use cache::RepoDir;
use names::RepoId;
use store::{PendingJob, Stored};

/// Downloads that move bytes at once; more wait `queued`.
const MAX_RUNNING: usize = 2;
/// Events a slow subscriber may fall behind by before it misses some.
const EVENT_CAPACITY: usize = 256;

/// Why a download could not be started, went wrong, or a request about one was refused.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("invalid repository {repo:?}: {why}")]
    InvalidRepo { repo: String, why: String },
    #[error("invalid tag {0:?}: a quant such as Q4_K_M (letters, digits, `-`, `_`, `.`)")]
    InvalidTag(String),
    #[error("a tag picks GGUF files, and this download is not GGUF")]
    TagWithoutGguf,
    #[error("nothing to download: {0}")]
    NothingToDownload(String),
    #[error("the hub listed a file name that is not a safe relative path: {0:?}")]
    UnsafeFileName(String),
    #[error("the hub refused access to {0}: it may be gated or private (set HF_TOKEN)")]
    Unauthorized(String),
    #[error("not found on the hub: {0}")]
    RemoteNotFound(String),
    #[error("the hub answered {status} for {what}")]
    Http { status: u16, what: String },
    #[error("the hub's answer is not usable: {0}")]
    Protocol(String),
    #[error("network error: {0}")]
    Network(String),
    #[error("{file} is corrupt ({why}): it was removed")]
    Corrupt { file: String, why: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not enough disk space in {}: the download needs {} more and {} are free (Corral leaves {} free)", dir.display(), crate::devices::fit::gib(*needed), crate::devices::fit::gib(*free), crate::devices::fit::gib(space::RESERVE_BYTES))]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("download settings: {0}")]
    Settings(String),
    #[error("{0}")]
    Internal(String),
    #[error("cancelled")]
    Cancelled,
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("no download job {0:?}")]
    JobNotFound(String),
    #[error("the job {0} has already ended")]
    JobEnded(String),
    #[error("{repo} is already being downloaded by job {job}")]
    InProgress { repo: String, job: String },
    #[error("no model {0} in the Hugging Face cache")]
    ModelNotFound(String),
    #[error("{0} was not downloaded by Corral: add confirm=true to delete it anyway")]
    NotDownloadedByCorral(String),
    #[error("{repo} is being downloaded by job {job}: cancel it first")]
    Busy { repo: String, job: String },
}

impl DownloadError {
    /// A failure that may not happen again on a new connection.
    fn is_transient(&self) -> bool {
        match self {
            DownloadError::Network(_) => true,
            DownloadError::Http { status, .. } => *status >= 500 || *status == 429,
            DownloadError::Protocol(why) => why.contains("stalled"),
            _ => false,
        }
    }
}

impl From<reqwest::Error> for DownloadError {
    fn from(error: reqwest::Error) -> Self {
        // reqwest's own message is terse ("error sending request"); the causes say what failed.
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        DownloadError::Network(text)
    }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> DownloadError {
    DownloadError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where downloads come from and go: the hub's own environment variables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub` (`models::Locations::hf_hub_cache`).
    pub cache_dir: PathBuf,
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_TOKEN`, sent to the endpoint when set.
    pub token: Option<String>,
    /// Where `downloads.json` is kept (the engine's data folder).
    pub data_dir: PathBuf,
}

impl Settings {
    /// The settings the hub's clients would use in this environment.
    pub fn from_env(data_dir: &Path) -> Settings {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        // Where the model library looks for the hub's cache, so what is downloaded is listed.
        let cache_dir = crate::models::Locations::system()
            .hf_hub_cache()
            .unwrap_or_else(|| data_dir.join("huggingface/hub"));
        Settings {
            cache_dir,
            endpoint: var("HF_ENDPOINT")
                .and_then(|value| value.into_string().ok())
                .unwrap_or_else(|| "https://huggingface.co".to_owned()),
            token: var("HF_TOKEN").and_then(|value| value.into_string().ok()),
            data_dir: data_dir.to_path_buf(),
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }
}

/// A download job, as the API shows it and the `download` event sends it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DownloadJob {
    pub id: String,
    /// `org/name`.
    pub repo: String,
    /// The quant asked for (`Q4_K_M`), if any.
    pub tag: Option<String>,
    /// The format asked for, or the one picked once the file list is known.
    pub format: Option<ModelFormat>,
    pub state: JobState,
    pub files_total: usize,
    pub files_done: usize,
    pub bytes_total: u64,
    /// Bytes on disk, partial files from earlier attempts included.
    pub bytes_done: u64,
    pub speed_bytes_per_s: u64,
    /// Seconds left at the current speed; `null` until there is a speed.
    pub eta_s: Option<u64>,
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// The main `.gguf` file of a GGUF job, or the snapshot folder; once known.
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
}

/// `202` to a download request, in llamactl's shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DownloadAccepted {
    pub job_id: String,
    pub repo: String,
    pub tag: Option<String>,
}

/// A model Corral downloaded and that is still in the cache: what the model library lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadedModel {
    /// `org/name`.
    pub repo: String,
    pub tag: Option<String>,
    pub format: ModelFormat,
    /// The commit the files are from.
    pub commit: String,
    /// The main `.gguf` file, or the snapshot folder for safetensors: what a backend loads.
    pub path: PathBuf,
    /// Every snapshot entry of the model (links into `blobs/`).
    pub files: Vec<PathBuf>,
    /// RFC 3339.
    pub downloaded_at: String,
}

/// What tells a job to end before it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Run,
    /// The user cancelled: the job ends `cancelled` and is not continued after a restart.
    Cancel,
    /// The engine stops: the job stays pending and continues at the next start.
    Shutdown,
}

/// One job: its view, how to stop it, and whether its task has ended.
struct Job {
    view: Mutex<Progress>,
    stop: watch::Sender<Stop>,
    /// `true` once the task has ended (and the view is final).
    ended: watch::Sender<bool>,
}

/// The view and what rate-limits its events.
struct Progress {
    view: DownloadJob,
    /// When and at how many bytes the last progress event went out: the speed is measured
    /// between two events.
    last_event: Option<(Instant, u64)>,
}

/// The download manager: jobs, their events, and the record of what Corral downloaded.
pub struct Downloads {
    /// Where files come from and go to, and where the record is kept.
    settings: Settings,
    /// The HTTP client for the hub, shared by every job.
    hub: hub::Hub,
    /// Every job of this run, oldest first, and the file. A std Mutex: held only to read or
    /// change them, never across an await.
    state: Mutex<State>,
    /// The `download` events; every subscriber of `/api/v1/events` holds a receiver.
    events: broadcast::Sender<DownloadJob>,
    /// Permits to move bytes; a job waits `queued` for one.
    running: Arc<Semaphore>,
    /// One writer per blob at a time: two jobs may share one (an mmproj, a re-download).
    blobs: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

struct State {
    /// By id, in the order they were started (the listing's order).
    jobs: Vec<(String, Arc<Job>)>,
    /// What `downloads.json` holds; written through on every change.
    stored: Stored,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only means another thread panicked mid-section; the data is still whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Downloads {
    /// The manager over `settings`, continuing the jobs an earlier run left unfinished.
    /// Must be called within a tokio runtime.
    pub fn open(settings: Settings) -> Result<Arc<Downloads>, DownloadError> {
        let stored = Stored::load(&settings.data_dir.join("downloads.json"));
        let pending = stored.pending.clone();
        let downloads = Arc::new(Downloads {
            hub: hub::Hub::new(&settings.endpoint, settings.token.clone())?,
            settings,
            state: Mutex::new(State {
                jobs: Vec::new(),
                stored,
            }),
            events: broadcast::channel(EVENT_CAPACITY).0,
            running: Arc::new(Semaphore::new(MAX_RUNNING)),
            blobs: Mutex::new(HashMap::new()),
        });
        for job in pending {
            match RepoId::parse(&job.repo) {
                Ok(repo) => downloads.spawn(repo, job),
                Err(e) => tracing::warn!("dropping a pending download: {e}"),
            }
        }
        Ok(downloads)
    }

    /// The Hugging Face cache folder in use.
    pub fn cache_dir(&self) -> &Path {
        &self.settings.cache_dir
    }

    /// Starts downloading `reference` (`org/name[:tag]`).
    pub fn start(
        self: &Arc<Self>,
        reference: &str,
        format: Option<ModelFormat>,
    ) -> Result<DownloadAccepted, DownloadError> {
        let (repo, tag) = names::parse_reference(reference)?;
        if tag.is_some() && format == Some(ModelFormat::Safetensors) {
            return Err(DownloadError::TagWithoutGguf);
        }
        let pending = {
            let mut state = lock(&self.state);
            if let Some((id, _)) = state.jobs.iter().find(|(_, job)| {
                let view = &lock(&job.view).view;
                view.state.is_active() && view.repo == repo.as_str() && same_tag(&view.tag, &tag)
            }) {
                return Err(DownloadError::InProgress {
                    repo: repo.to_string(),
                    job: id.clone(),
                });
            }
            let pending = PendingJob {
                id: new_job_id(),
                repo: repo.to_string(),
                tag: tag.clone(),
                format,
                created_at: now(),
                commit: None,
            };
            state.stored.pending.push(pending.clone());
            state.stored.save(&self.store_path())?;
            pending
        };
        let accepted = DownloadAccepted {
            job_id: pending.id.clone(),
            repo: repo.to_string(),
            tag,
        };
        self.spawn(repo, pending);
        Ok(accepted)
    }

    /// Every job of this run (and those continued from the last), oldest first.
    pub fn jobs(&self) -> Vec<DownloadJob> {
        lock(&self.state)
            .jobs
            .iter()
            .map(|(_, job)| lock(&job.view).view.clone())
            .collect()
    }

    pub fn job(&self, id: &str) -> Result<DownloadJob, DownloadError> {
        Ok(lock(&self.find(id)?.view).view.clone())
    }

    /// Cancels a queued or running job and waits (briefly) for it to let go of its files; the
    /// partial file is kept, so downloading the model again continues it.
    pub async fn cancel(&self, id: &str) -> Result<DownloadJob, DownloadError> {
        let job = self.find(id)?;
        if !lock(&job.view).view.state.is_active() {
            return Err(DownloadError::JobEnded(id.to_owned()));
        }
        job.stop.send_replace(Stop::Cancel);
        let mut ended = job.ended.subscribe();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            ended.wait_for(|ended| *ended),
        )
        .await;
        let view = lock(&job.view).view.clone();
        Ok(view)
    }

    /// The models Corral downloaded that are still recorded, for the model library.
    pub fn downloaded(&self) -> Vec<DownloadedModel> {
        lock(&self.state).stored.models.clone()
    }

    /// The `download` events: each job's JSON when its state changes, and at most 4 a second
    /// while bytes flow (`job::PROGRESS_PERIOD` apart).
    pub fn subscribe(&self) -> broadcast::Receiver<DownloadJob> {
        self.events.subscribe()
    }

    /// Removes a model from the cache: the one Corral downloaded as `repo` and `tag`, or with
    /// `confirm` whatever the cache holds of `repo` (with a tag, the files that tag picks).
    pub fn remove(
        &self,
        repo: &str,
        tag: Option<&str>,
        confirm: bool,
    ) -> Result<(), DownloadError> {
        let repo = RepoId::parse(repo)?;
        let tag = tag.map(names::check_tag).transpose()?;
        let dir = RepoDir::new(&self.settings.cache_dir, &repo);
        let mut state = lock(&self.state);
        if let Some((id, _)) = state.jobs.iter().find(|(_, job)| {
            let view = &lock(&job.view).view;
            view.state.is_active() && view.repo == repo.as_str()
        }) {
            return Err(DownloadError::Busy {
                repo: repo.to_string(),
                job: id.clone(),
            });
        }
        let label = match &tag {
            Some(tag) => format!("{repo}:{tag}"),
            None => repo.to_string(),
        };
        let ours = state
            .stored
            .models
            .iter()
            .position(|model| model.repo == repo.as_str() && same_tag(&model.tag, &tag));
        if let Some(index) = ours {
            let model = state.stored.models.remove(index);
            // The files another record of the same repository still uses stay.
            let kept: Vec<&PathBuf> = state
                .stored
                .models
                .iter()
                .filter(|other| other.repo == model.repo)
                .flat_map(|other| &other.files)
                .collect();
            let files: Vec<PathBuf> = model
                .files
                .iter()
                .filter(|file| !kept.contains(file))
                .cloned()
                .collect();
            dir.remove(&files)?;
            state.stored.save(&self.store_path())?;
            return Ok(());
        }
        let entries = dir.entries();
        let files: Vec<PathBuf> = match &tag {
            None => entries,
            Some(tag) => {
                // Names as the hub lists them: the path below `snapshots/<commit>/`.
                let snapshots = dir.root.join("snapshots");
                let relative = |entry: &PathBuf| -> Option<String> {
                    let below = entry.strip_prefix(&snapshots).ok()?;
                    let parts: Option<Vec<&str>> = below
                        .components()
                        .skip(1)
                        .map(|part| part.as_os_str().to_str())
                        .collect();
                    Some(parts?.join("/"))
                };
                let names: Vec<String> = entries.iter().filter_map(relative).collect();
                let picked = select::select(&names, Some(ModelFormat::Gguf), Some(tag))
                    .map(|selection| selection.files)
                    .unwrap_or_default();
                entries
                    .into_iter()
                    .filter(|entry| relative(entry).is_some_and(|name| picked.contains(&name)))
                    .collect()
            }
        };
        if files.is_empty() {
            return Err(DownloadError::ModelNotFound(label));
        }
        if !confirm {
            return Err(DownloadError::NotDownloadedByCorral(label));
        }
        dir.remove(&files)
    }

    /// Stops every job, leaving the unfinished ones recorded to continue at the next start.
    pub async fn shutdown(&self) {
        let jobs: Vec<Arc<Job>> = lock(&self.state)
            .jobs
            .iter()
            .map(|(_, job)| Arc::clone(job))
            .collect();
        for job in &jobs {
            job.stop.send_if_modified(|stop| {
                let running = *stop == Stop::Run;
                if running {
                    *stop = Stop::Shutdown;
                }
                running
            });
        }
        for job in jobs {
            let mut ended = job.ended.subscribe();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                ended.wait_for(|ended| *ended),
            )
            .await;
        }
    }

    fn find(&self, id: &str) -> Result<Arc<Job>, DownloadError> {
        lock(&self.state)
            .jobs
            .iter()
            .find(|(job_id, _)| job_id == id)
            .map(|(_, job)| Arc::clone(job))
            .ok_or_else(|| DownloadError::JobNotFound(id.chars().take(80).collect()))
    }

    fn store_path(&self) -> PathBuf {
        self.settings.data_dir.join("downloads.json")
    }

    fn spawn(self: &Arc<Self>, repo: RepoId, pending: PendingJob) {
        let view = DownloadJob {
            id: pending.id.clone(),
            repo: pending.repo.clone(),
            tag: pending.tag.clone(),
            format: pending.format,
            state: JobState::Queued,
            files_total: 0,
            files_done: 0,
            bytes_total: 0,
            bytes_done: 0,
            speed_bytes_per_s: 0,
            eta_s: None,
            error: None,
            created_at: pending.created_at.clone(),
            path: None,
        };
        let job = Arc::new(Job {
            view: Mutex::new(Progress {
                view: view.clone(),
                last_event: None,
            }),
            stop: watch::channel(Stop::Run).0,
            ended: watch::channel(false).0,
        });
        lock(&self.state)
            .jobs
            .push((pending.id.clone(), Arc::clone(&job)));
        let _ = self.events.send(view);
        let downloads = Arc::clone(self);
        tokio::spawn(async move { job::run(downloads, job, repo, pending).await });
    }

    /// The lock of one blob's writer.
    fn blob_lock(&self, blob: &Path) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.blobs).entry(blob.to_path_buf()).or_default())
    }
}

/// Tags match as llama.cpp matches them to file names: ignoring case.
fn same_tag(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (None, None) => true,
        _ => false,
    }
}

fn new_job_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

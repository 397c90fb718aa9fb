//! One download from request to snapshot: wait for a slot, list the repository at one commit,
//! pick the files, learn their sizes and digests, fetch each into its blob, link the snapshot,
//! point `refs/main` at the commit, and record the model. Every step can be stopped; a stop by
//! the engine leaves the job pending for the next start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::RepoDir;
use super::hub::RemoteFile;
use super::names::{self, RepoId};
use super::select::{self, ModelFormat};
use super::space;
use super::store::PendingJob;
use super::transfer::{self, stoppable};
use super::{
    lock, now, same_tag, DownloadError, DownloadJob, DownloadedModel, Downloads, Job, JobState,
    Stop,
};

/// Progress events of one job are at least this far apart (state changes go out at once).
pub(super) const PROGRESS_PERIOD: Duration = Duration::from_millis(250);

pub(super) async fn run(
    downloads: Arc<Downloads>,
    job: Arc<Job>,
    repo: RepoId,
    pending: PendingJob,
) {
    let mut stop = job.stop.subscribe();
    let result = async {
        let running = Arc::clone(&downloads.running);
        let _permit = stoppable(&mut stop, async {
            running
                .acquire_owned()
                .await
                .map_err(|_| DownloadError::ShuttingDown)
        })
        .await?;
        update(&downloads, &job, |view| view.state = JobState::Running);
        fetch(&downloads, &job, &repo, pending.clone(), &mut stop).await
    }
    .await;
    let (state, error) = match result {
        Ok(()) => (JobState::Completed, None),
        // Left pending in the file: the next start continues it.
        Err(DownloadError::ShuttingDown) => {
            job.ended.send_replace(true);
            return;
        }
        Err(DownloadError::Cancelled) => (JobState::Cancelled, None),
        Err(e) => {
            tracing::warn!("download {} of {repo} failed: {e}", pending.id);
            (JobState::Failed, Some(e.to_string()))
        }
    };
    forget_pending(&downloads, &pending.id);
    update(&downloads, &job, |view| {
        view.state = state;
        view.error = error;
        view.speed_bytes_per_s = 0;
        view.eta_s = None;
    });
    job.ended.send_replace(true);
}

async fn fetch(
    downloads: &Downloads,
    job: &Job,
    repo: &RepoId,
    pending: PendingJob,
    stop: &mut tokio::sync::watch::Receiver<Stop>,
) -> Result<(), DownloadError> {
    let hub = &downloads.hub;
    let info = stoppable(stop, hub.model_info(repo, pending.commit.as_deref())).await?;
    let commit = info.commit;
    // Every name is checked, not only those picked: a hub that sends one hostile name is not
    // trusted with the others.
    for name in &info.files {
        names::file_path(name)?;
    }
    let selection = select::select(&info.files, pending.format, pending.tag.as_deref())?;
    remember_commit(downloads, &pending.id, &commit)?;
    let dir = RepoDir::new(&downloads.settings.cache_dir, repo);
    let mut remotes: Vec<RemoteFile> = Vec::with_capacity(selection.files.len());
    for name in &selection.files {
        remotes.push(stoppable(stop, hub.file(repo, &commit, name)).await?);
    }
    let needed = remotes
        .iter()
        .map(|remote| space::still_needed(&dir.blob(remote.digest.blob_name()), remote.size))
        .fold(0u64, u64::saturating_add);
    space::ensure_room(&downloads.settings.cache_dir, needed)?;
    let main = match selection.format {
        ModelFormat::Gguf => dir
            .snapshot(&commit)
            .join(names::file_path(&selection.files[0])?),
        ModelFormat::Safetensors => dir.snapshot(&commit),
    };
    update(downloads, job, |view| {
        view.format = Some(selection.format);
        view.files_total = selection.files.len();
        view.bytes_total = remotes.iter().map(|remote| remote.size).sum();
        view.path = Some(main.clone());
    });
    let mut done_bytes = 0;
    let mut entries = Vec::with_capacity(remotes.len());
    for (name, remote) in selection.files.iter().zip(&remotes) {
        let file = names::file_path(name)?;
        let blob = dir.blob(remote.digest.blob_name());
        let writer = downloads.blob_lock(&blob);
        let _writing = stoppable(stop, async { Ok(writer.lock().await) }).await?;
        let complete = std::fs::symlink_metadata(&blob)
            .is_ok_and(|meta| meta.is_file() && meta.len() == remote.size);
        if !complete {
            if let Some(blobs) = blob.parent() {
                std::fs::create_dir_all(blobs).map_err(|e| super::io_error("create", blobs, e))?;
            }
            transfer::fetch_blob(hub, remote, &blob, name, stop, |bytes| {
                progress(downloads, job, done_bytes + bytes);
            })
            .await?;
        }
        entries.push(dir.link(&commit, &file, remote.digest.blob_name())?);
        done_bytes += remote.size;
        update(downloads, job, |view| {
            view.files_done += 1;
            view.bytes_done = done_bytes;
        });
    }
    dir.set_main(&commit)?;
    let model = DownloadedModel {
        repo: repo.to_string(),
        tag: pending.tag.clone(),
        format: selection.format,
        commit,
        path: main,
        files: entries,
        downloaded_at: now(),
    };
    let mut state = lock(&downloads.state);
    state
        .stored
        .models
        .retain(|old| !(old.repo == model.repo && same_tag(&old.tag, &model.tag)));
    state.stored.models.push(model);
    state.stored.pending.retain(|job| job.id != pending.id);
    state.stored.save(&downloads.store_path())
}

/// The job's bytes so far; sent as an event at most every `PROGRESS_PERIOD`, with the speed
/// between the last two.
fn progress(downloads: &Downloads, job: &Job, bytes_done: u64) {
    let mut progress = lock(&job.view);
    progress.view.bytes_done = bytes_done;
    let now = Instant::now();
    let (since, before) = *progress.last_event.get_or_insert((now, bytes_done));
    let elapsed = now.duration_since(since);
    if elapsed < PROGRESS_PERIOD {
        return;
    }
    let speed = bytes_done.saturating_sub(before) as f64 / elapsed.as_secs_f64();
    let view = &mut progress.view;
    view.speed_bytes_per_s = speed as u64;
    view.eta_s = (speed >= 1.0)
        .then(|| (view.bytes_total.saturating_sub(bytes_done) as f64 / speed).ceil() as u64);
    progress.last_event = Some((now, bytes_done));
    let _ = downloads.events.send(progress.view.clone());
}

/// Changes the job's view and sends it.
fn update(downloads: &Downloads, job: &Job, change: impl FnOnce(&mut DownloadJob)) {
    let mut progress = lock(&job.view);
    change(&mut progress.view);
    let _ = downloads.events.send(progress.view.clone());
}

fn remember_commit(downloads: &Downloads, id: &str, commit: &str) -> Result<(), DownloadError> {
    let mut state = lock(&downloads.state);
    let Some(pending) = state.stored.pending.iter_mut().find(|job| job.id == id) else {
        return Ok(());
    };
    if pending.commit.as_deref() == Some(commit) {
        return Ok(());
    }
    pending.commit = Some(commit.to_owned());
    state.stored.save(&downloads.store_path())
}

fn forget_pending(downloads: &Downloads, id: &str) {
    let mut state = lock(&downloads.state);
    let before = state.stored.pending.len();
    state.stored.pending.retain(|job| job.id != id);
    if state.stored.pending.len() != before {
        if let Err(e) = state.stored.save(&downloads.store_path()) {
            tracing::warn!("cannot record the end of download {id}: {e}");
        }
    }
}

//! The Hugging Face cache on disk, laid out as the hub's clients (huggingface_hub, llama.cpp,
//! mlx-lm, vLLM) read it:
//!
//! ```text
//! <cache>/models--org--name/blobs/<sha256 or git blob id>      the bytes
//!                          /snapshots/<commit>/<file>           a relative link to the blob
//!                          /refs/main                           the commit `main` points at
//! ```
//!
//! Every path here is built from checked parts (`names`): a repository id, a commit, a digest
//! and file names that have no `..`, no absolute part and no backslash.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::names::{self, RepoId};
use super::{io_error, DownloadError};

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoDir {
    pub repo: RepoId,
    pub root: PathBuf,
}

impl RepoDir {
    pub fn new(cache: &Path, repo: &RepoId) -> RepoDir {
        RepoDir {
            repo: repo.clone(),
            root: cache.join(repo.folder_name()),
        }
    }

    pub fn blob(&self, name: &str) -> PathBuf {
        self.root.join("blobs").join(name)
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// Links `snapshots/<commit>/<file>` to its blob, replacing a link that points elsewhere.
    pub fn link(&self, commit: &str, file: &Path, blob: &str) -> Result<PathBuf, DownloadError> {
        let entry = self.snapshot(commit).join(file);
        let target = names::link_target(file, blob);
        if let Some(parent) = entry.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
        }
        match std::fs::symlink_metadata(&entry) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if std::fs::read_link(&entry).is_ok_and(|old| old == target) {
                    return Ok(entry);
                }
                std::fs::remove_file(&entry).map_err(|e| io_error("replace", &entry, e))?;
            }
            Ok(meta) if meta.is_file() => {
                std::fs::remove_file(&entry).map_err(|e| io_error("replace", &entry, e))?;
            }
            Ok(_) => {
                return Err(DownloadError::Protocol(format!(
                    "{} is a folder in the snapshot, and a file in the repository",
                    file.display()
                )))
            }
            Err(_) => {}
        }
        symlink(&target, &entry).map_err(|e| io_error("link", &entry, e))?;
        Ok(entry)
    }

    /// Points `refs/main` at `commit`.
    pub fn set_main(&self, commit: &str) -> Result<(), DownloadError> {
        let cache = hf_hub::Cache::new(self.root.parent().unwrap_or(&self.root).to_path_buf());
        cache
            .model(self.repo.to_string())
            .create_ref(commit)
            .map_err(|e| io_error("write", &self.root.join("refs/main"), e))
    }

    /// Removes the snapshot entries `files` (links Corral made, or with `confirm` any file of
    /// the repository), each blob no remaining entry links to, the folders left empty, and the
    /// whole repository folder once no snapshot is left.
    pub fn remove(&self, files: &[PathBuf]) -> Result<(), DownloadError> {
        let snapshots = self.root.join("snapshots");
        let mut blobs = HashSet::new();
        for entry in files {
            // Only what lies in a snapshot of this repository, named without `..`.
            let Ok(relative) = entry.strip_prefix(&snapshots) else {
                continue;
            };
            if relative
                .components()
                .any(|part| !matches!(part, std::path::Component::Normal(_)))
            {
                continue;
            }
            if let Some(blob) = self.blob_of(entry) {
                blobs.insert(blob);
            }
            match std::fs::remove_file(entry) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", entry, e)),
            }
            prune_empty(entry.parent(), &snapshots);
        }
        let linked = self.linked_blobs();
        for blob in blobs.difference(&linked) {
            match std::fs::remove_file(blob) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", blob, e)),
            }
        }
        let no_snapshot = std::fs::read_dir(&snapshots)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(true);
        if no_snapshot && self.root.exists() {
            std::fs::remove_dir_all(&self.root).map_err(|e| io_error("remove", &self.root, e))?;
        }
        Ok(())
    }

    /// Every snapshot entry of the repository: its files, for a model Corral did not download.
    pub fn entries(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        walk(&self.root.join("snapshots"), &mut found);
        found
    }

    /// The blob a snapshot entry links to, if it is a link into this repository's `blobs/`.
    fn blob_of(&self, entry: &Path) -> Option<PathBuf> {
        let target = std::fs::read_link(entry).ok()?;
        let name = target.file_name()?.to_str()?;
        let blob = self.blob(name);
        let resolved = entry.parent()?.join(&target);
        let same = normalize(&resolved) == normalize(&blob);
        same.then_some(blob)
    }

    fn linked_blobs(&self) -> HashSet<PathBuf> {
        self.entries()
            .iter()
            .filter_map(|entry| self.blob_of(entry))
            .collect()
    }
}

/// `..` and `.` folded away without touching the file system (no link is followed).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Files and links below `dir`, never entering a linked folder.
fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => walk(&path, found),
            Ok(_) => found.push(path),
            Err(_) => {}
        }
    }
}

/// Removes `dir` and its parents up to (not including) `stop` while they are empty.
fn prune_empty(mut dir: Option<&Path>, stop: &Path) {
    while let Some(current) = dir {
        if current == stop || !current.starts_with(stop) || std::fs::remove_dir(current).is_err() {
            return;
        }
        dir = current.parent();
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn removing_one_model_keeps_the_blobs_another_snapshot_still_links() {
        let cache = tempfile::tempdir().unwrap();
        let dir = RepoDir::new(cache.path(), &RepoId::parse("org/m").unwrap());
        std::fs::create_dir_all(dir.root.join("blobs")).unwrap();
        for blob in ["shared", "own"] {
            std::fs::write(dir.blob(blob), blob).unwrap();
        }
        let a = dir.link("a", Path::new("x.gguf"), "own").unwrap();
        let mmproj_a = dir.link("a", Path::new("mmproj.gguf"), "shared").unwrap();
        let b = dir
            .link("b", &Path::new("sub").join("mmproj.gguf"), "shared")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "shared");

        dir.remove(&[a, mmproj_a]).unwrap();
        assert!(!dir.blob("own").exists());
        assert!(dir.blob("shared").exists(), "still linked from snapshot b");
        assert!(!dir.snapshot("a").exists());

        dir.remove(&[b]).unwrap();
        assert!(
            !dir.root.exists(),
            "nothing left: the repository folder goes"
        );
    }

    #[test]
    fn paths_outside_the_repositorys_snapshots_are_never_removed() {
        let cache = tempfile::tempdir().unwrap();
        let dir = RepoDir::new(cache.path(), &RepoId::parse("org/m").unwrap());
        std::fs::create_dir_all(dir.snapshot("a")).unwrap();
        let outside = cache.path().join("precious");
        std::fs::write(&outside, "keep").unwrap();
        let sneaky = dir.snapshot("a").join("../../../precious");
        dir.remove(&[outside.clone(), sneaky]).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
    }
}

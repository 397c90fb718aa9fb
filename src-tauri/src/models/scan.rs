//! Finds the models in each source's layout: which files make one model (the parts of a split
//! GGUF, a projector beside its model, a Hugging Face folder), and what the layout says about it
//! (its repo and tag). Nothing here reads a model file; `mod.rs` reads their headers, cached.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::sources::{Source, SourceKind};

/// Folders below a source's root, at most: deep enough for every tool's layout
/// (`models--o--n/snapshots/<commit>/sub/dir/file`), shallow enough that a `models.dirs` entry
/// of `/` does not walk the whole disk.
const MAX_DEPTH: usize = 8;
/// Directory entries one source may visit: a bound on the scan of a folder too large to be a
/// model folder.
const MAX_ENTRIES: usize = 200_000;

/// The files of one model, as a layout shows them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Found {
    pub kind: FoundKind,
    /// The model's files: a GGUF's parts in order, or a folder's files.
    pub files: Vec<PathBuf>,
    /// A multimodal projector found beside a GGUF model.
    pub mmproj: Option<PathBuf>,
    /// `org/name` where the layout says (Hugging Face, LM Studio), the model's name in Ollama.
    pub repo: Option<String>,
    /// Ollama's tag (`8b`); for others the quantisation, filled in later from the file.
    pub tag: Option<String>,
    pub source: SourceKind,
    pub source_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FoundKind {
    Gguf,
    /// A folder with `config.json` and safetensors weights; the path is the folder.
    Folder,
}

impl Found {
    /// What a backend is given as its model: the first part of a GGUF, or the folder.
    pub fn model_path(&self) -> PathBuf {
        match self.kind {
            FoundKind::Gguf => self.files.first().cloned().unwrap_or_default(),
            FoundKind::Folder => self
                .files
                .first()
                .and_then(|file| file.parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }
}

/// Every model in `source`; a missing or unreadable root is no model, never an error.
pub(super) fn scan(source: &Source) -> Vec<Found> {
    let mut found = Vec::new();
    let mut budget = MAX_ENTRIES;
    match source.kind {
        SourceKind::Huggingface => hub_cache(source, &source.dir, &mut found, &mut budget),
        SourceKind::LlamaCpp => {
            // Newer llama.cpp releases keep the Hugging Face layout here; older ones flat files.
            hub_cache(source, &source.dir, &mut found, &mut budget);
            let mut walk = Walk::new(source, &mut found, &mut budget, RepoFrom::Nothing);
            walk.skip_hub_folders = true;
            walk.dir(&source.dir, 0, None);
        }
        SourceKind::LmStudio => {
            Walk::new(source, &mut found, &mut budget, RepoFrom::FirstTwo).dir(&source.dir, 0, None)
        }
        SourceKind::ModelsDir => {
            Walk::new(source, &mut found, &mut budget, RepoFrom::Nothing).dir(&source.dir, 0, None)
        }
        SourceKind::Ollama => ollama(source, &mut found),
    }
    found
}

/// `models--org--name` folders: the snapshot `refs/main` names (else the newest), walked.
fn hub_cache(source: &Source, root: &Path, found: &mut Vec<Found>, budget: &mut usize) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut repos: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let repo = name.strip_prefix("models--")?.replacen("--", "/", 1);
            Some((repo, entry.path()))
        })
        .collect();
    repos.sort();
    for (repo, dir) in repos {
        let Some(snapshot) = hub_snapshot(&dir) else {
            continue;
        };
        Walk::new(source, found, budget, RepoFrom::Fixed(repo)).dir(&snapshot, 0, None);
    }
}

/// The snapshot of a repo folder that `refs/main` points at, else the most recently changed one.
pub(super) fn hub_snapshot(repo_dir: &Path) -> Option<PathBuf> {
    let snapshots = repo_dir.join("snapshots");
    if let Ok(commit) = fs::read_to_string(repo_dir.join("refs/main")) {
        let commit = commit.trim();
        let dir = snapshots.join(commit);
        if !commit.is_empty() && !commit.contains(['/', '\\']) && commit != ".." && dir.is_dir() {
            return Some(dir);
        }
    }
    fs::read_dir(&snapshots)
        .ok()?
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .max_by_key(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .map(|entry| entry.path())
}

/// How a walk names the repo of what it finds.
enum RepoFrom {
    Nothing,
    /// Every model below is this repo's.
    Fixed(String),
    /// The first two folders below the root: LM Studio's `<publisher>/<model>`.
    FirstTwo,
}

/// A depth-first walk of one source's folders, each folder's GGUF files and model folder noted.
struct Walk<'a> {
    source: &'a Source,
    found: &'a mut Vec<Found>,
    budget: &'a mut usize,
    repo: RepoFrom,
    /// `models--*` folders are another layout's (llama.cpp's cache holds both).
    skip_hub_folders: bool,
    /// Folders already walked, by their real path: a symlink loop is walked once.
    visited: HashSet<PathBuf>,
}

impl<'a> Walk<'a> {
    fn new(
        source: &'a Source,
        found: &'a mut Vec<Found>,
        budget: &'a mut usize,
        repo: RepoFrom,
    ) -> Self {
        Self {
            source,
            found,
            budget,
            repo,
            skip_hub_folders: false,
            visited: HashSet::new(),
        }
    }

    /// `inherited` is a projector found in a folder above, within one repo: Hugging Face repos
    /// keep `mmproj-*.gguf` at the top and the quantisations in folders below it.
    fn dir(&mut self, dir: &Path, depth: usize, inherited: Option<PathBuf>) {
        if depth > MAX_DEPTH || *self.budget == 0 {
            return;
        }
        let Ok(real) = fs::canonicalize(dir) else {
            return;
        };
        if !self.visited.insert(real) {
            return;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut files = Vec::new();
        let mut subdirs = Vec::new();
        for entry in entries.flatten() {
            if *self.budget == 0 {
                break;
            }
            *self.budget -= 1;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || (self.skip_hub_folders && name.starts_with("models--")) {
                continue;
            }
            let path = entry.path();
            // A symlink (the Hugging Face snapshots are all symlinks to blobs) counts as what it
            // points at.
            let is_dir = match entry.file_type() {
                Ok(kind) if kind.is_symlink() => path.is_dir(),
                Ok(kind) => kind.is_dir(),
                Err(_) => continue,
            };
            if is_dir {
                subdirs.push(path);
            } else {
                files.push((name, path));
            }
        }
        files.sort();
        subdirs.sort();
        let mmproj = self.note_models(dir, depth, &files, inherited);
        let passed_down = match self.repo {
            RepoFrom::Fixed(_) => mmproj,
            _ => None,
        };
        for subdir in subdirs {
            self.dir(&subdir, depth + 1, passed_down.clone());
        }
    }

    /// The models made of one folder's files; answers the projector they were paired with.
    fn note_models(
        &mut self,
        dir: &Path,
        depth: usize,
        files: &[(String, PathBuf)],
        inherited: Option<PathBuf>,
    ) -> Option<PathBuf> {
        let repo = match &self.repo {
            RepoFrom::Nothing => None,
            RepoFrom::Fixed(repo) => Some(repo.clone()),
            RepoFrom::FirstTwo => dir
                .strip_prefix(&self.source.dir)
                .ok()
                .filter(|_| depth >= 2)
                .map(|relative| {
                    relative
                        .components()
                        .take(2)
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                }),
        };
        let found = |kind, files, mmproj| Found {
            kind,
            files,
            mmproj,
            repo: repo.clone(),
            tag: None,
            source: self.source.kind,
            source_dir: self.source.dir.clone(),
        };

        let gguf: Vec<&(String, PathBuf)> = files
            .iter()
            .filter(|(name, _)| name.to_ascii_lowercase().ends_with(".gguf"))
            .collect();
        let (projectors, models): (Vec<_>, Vec<_>) = gguf
            .into_iter()
            .partition(|(name, _)| name.to_ascii_lowercase().contains("mmproj"));
        // A projector pairs with the models beside it; with several, the one of the highest
        // precision (llama.cpp's -hf picks the f16 one too), which sorts first by name only by
        // chance, so by size.
        let mmproj = projectors
            .iter()
            .max_by_key(|(_, path)| fs::metadata(path).map(|m| m.len()).unwrap_or(0))
            .map(|(_, path)| path.clone())
            .or(inherited);
        let mut splits: BTreeMap<String, Vec<(u32, PathBuf)>> = BTreeMap::new();
        for (name, path) in models {
            match split_part(name) {
                Some(split) => splits
                    .entry(split.prefix.to_owned())
                    .or_default()
                    .push((split.part, path.clone())),
                None => self
                    .found
                    .push(found(FoundKind::Gguf, vec![path.clone()], mmproj.clone())),
            }
        }
        for (_, mut parts) in splits {
            parts.sort();
            let files = parts.into_iter().map(|(_, path)| path).collect();
            self.found
                .push(found(FoundKind::Gguf, files, mmproj.clone()));
        }

        let has = |wanted: &dyn Fn(&str) -> bool| files.iter().any(|(name, _)| wanted(name));
        if has(&|name| name == "config.json") && has(&|name| name.ends_with(".safetensors")) {
            let files = files
                .iter()
                .filter(|(name, _)| !name.to_ascii_lowercase().ends_with(".gguf"))
                .map(|(_, path)| path.clone())
                .collect();
            self.found.push(found(FoundKind::Folder, files, None));
        }
        mmproj
    }
}

/// One part of a split GGUF, as llama.cpp's `gguf-split` names them:
/// `<prefix>-<part>-of-<count>.gguf`, both numbers five digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPart<'a> {
    /// Everything before the numbers (a folder too, when a path is given).
    pub prefix: &'a str,
    pub part: u32,
    pub count: u32,
}

/// The split part `name` (a file name or a path) is, if it is one. The library groups the parts
/// by it, and a download takes every part of the one a tag picks.
pub fn split_part(name: &str) -> Option<SplitPart<'_>> {
    let stem = name
        .strip_suffix(".gguf")
        .or_else(|| name.strip_suffix(".GGUF"))?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, part) = rest.rsplit_once('-')?;
    let digits = |text: &str| text.len() == 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(part) || !digits(count) {
        return None;
    }
    let count: u32 = count.parse().ok()?;
    (count > 0).then_some(SplitPart {
        prefix,
        part: part.parse().ok()?,
        count,
    })
}

/// Ollama's store: each manifest (`manifests/<registry>/<namespace>/<model>/<tag>`) names its
/// layers by digest; the model layer's blob is a GGUF file llama-server loads as it is.
fn ollama(source: &Source, found: &mut Vec<Found>) {
    let manifests = source.dir.join("manifests");
    let mut stack = vec![(manifests.clone(), 0usize)];
    let mut files = Vec::new();
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() && depth < 4 => stack.push((path, depth + 1)),
                Ok(kind) if kind.is_file() && depth == 3 => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    for manifest in files {
        let Ok(relative) = manifest.strip_prefix(&manifests) else {
            continue;
        };
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let [registry, namespace, model, tag] = parts.as_slice() else {
            continue;
        };
        let name = match (registry.as_str(), namespace.as_str()) {
            ("registry.ollama.ai", "library") => model.clone(),
            ("registry.ollama.ai", _) => format!("{namespace}/{model}"),
            _ => format!("{registry}/{namespace}/{model}"),
        };
        let Ok(text) = fs::read_to_string(&manifest) else {
            continue;
        };
        let layers = ollama_layers(&text);
        let blob = |media: &str| {
            layers
                .iter()
                .find(|(kind, _)| kind == media)
                .and_then(|(_, digest)| ollama_blob(&source.dir, digest))
        };
        let Some(model_blob) = blob("application/vnd.ollama.image.model") else {
            continue;
        };
        found.push(Found {
            kind: FoundKind::Gguf,
            files: vec![model_blob],
            mmproj: blob("application/vnd.ollama.image.projector"),
            repo: Some(name),
            tag: Some(tag.clone()),
            source: SourceKind::Ollama,
            source_dir: source.dir.clone(),
        });
    }
}

/// (media type, digest) of each layer of an Ollama manifest; none when it is not one.
fn ollama_layers(text: &str) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        layers: Vec<Layer>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Layer {
        media_type: String,
        digest: String,
    }
    serde_json::from_str::<Manifest>(text)
        .map(|manifest| {
            manifest
                .layers
                .into_iter()
                .map(|layer| (layer.media_type, layer.digest))
                .collect()
        })
        .unwrap_or_default()
}

/// `sha256:<hex>` → `<root>/blobs/sha256-<hex>`, when the digest is what it claims to be (a
/// manifest is only a file: its digest must not walk out of the blobs folder) and the blob exists.
fn ollama_blob(root: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let path = root.join("blobs").join(format!("sha256-{hex}"));
    path.is_file().then_some(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn split_parts_are_named_as_gguf_split_writes_them() {
        assert_eq!(
            split_part("Qwen3-8B-Q4_K_M-00002-of-00003.gguf"),
            Some(SplitPart {
                prefix: "Qwen3-8B-Q4_K_M",
                part: 2,
                count: 3
            })
        );
        assert_eq!(split_part("model-Q4_K_M.gguf"), None);
        assert_eq!(split_part("model-2-of-3.gguf"), None);
        assert_eq!(split_part("model-00001-of-00003.bin"), None);
    }

    #[test]
    fn an_ollama_digest_cannot_leave_the_blobs_folder() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs")).unwrap();
        let hex = "a".repeat(64);
        fs::write(dir.path().join(format!("blobs/sha256-{hex}")), b"GGUF").unwrap();
        assert!(ollama_blob(dir.path(), &format!("sha256:{hex}")).is_some());
        assert_eq!(ollama_blob(dir.path(), "sha256:../../etc/passwd"), None);
        assert_eq!(ollama_blob(dir.path(), &format!("sha512:{hex}")), None);
    }
}

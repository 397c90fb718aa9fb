//! The model library: every model on this machine, wherever another tool keeps it (see
//! [`sources`]), described from its own files — a GGUF's header, a Hugging Face folder's
//! `config.json` and safetensors headers — with the backends that can serve it and whether it
//! fits in the memory free now. Models are used where they are, never copied.
//!
//! Scans are incremental: what a file says is kept by path, size and modification time, so a
//! second scan only lists folders and stats files (1,000 models in a few milliseconds, see
//! docs/benchmarks.md); a file that changed is read again. A file that cannot be read is listed
//! with its error, never fatal to the scan.

mod describe;
mod scan;
pub mod sources;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

use crate::backends::BackendType;
use crate::devices::fit::Available;
use describe::{Described, FileFacts};
pub use describe::{DeviceFit, Fit, Verdict, FIT_CONTEXT};
pub use scan::{split_part, SplitPart};
use scan::{Found, FoundKind};
pub use sources::{Locations, Source, SourceKind};

/// How a model is stored, which decides the backends that load it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// llama.cpp's single-file format (or its split parts).
    Gguf,
    /// A Hugging Face folder of safetensors weights: vLLM, and mlx-lm for the architectures it
    /// converts on load.
    Safetensors,
    /// A Hugging Face folder converted for MLX (mlx-lm's quantisation): mlx-lm only.
    Mlx,
}

/// One file of a model.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelFile {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// One model of the library.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelEntry {
    /// Stable while the model stays where it is: its source and path.
    pub id: String,
    /// The model's own name (GGUF `general.name`), else its file or folder name.
    pub name: String,
    /// `org/name` on Hugging Face (or LM Studio's `<publisher>/<model>`, Ollama's model).
    pub repo: Option<String>,
    /// The quantisation (`Q4_K_M`), or Ollama's tag.
    pub tag: Option<String>,
    pub format: Format,
    /// What to give a backend as `model`: the GGUF (its first part), or the folder.
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub files: Vec<ModelFile>,
    /// All files together (a paired projector not included).
    pub size_bytes: u64,
    pub architecture: Option<String>,
    /// Parameters, counted from the tensors' shapes.
    pub parameters: Option<u64>,
    pub quantization: Option<String>,
    /// The context length the model was trained for, in tokens.
    pub context_length: Option<u64>,
    /// A multimodal projector (`mmproj*.gguf`) found beside the model.
    #[schema(value_type = Option<String>)]
    pub mmproj: Option<PathBuf>,
    pub source: SourceKind,
    #[schema(value_type = String)]
    pub source_dir: PathBuf,
    /// The backends that can serve it, the best first.
    pub backends: Vec<BackendType>,
    /// Corral downloaded it (and may delete it).
    pub downloaded: bool,
    /// Why the model's files could not be read; the entry is still listed.
    pub error: Option<String>,
    pub fit: Fit,
}

/// What one file said, and the size and time it had then.
struct Cached {
    size: u64,
    modified: Option<SystemTime>,
    facts: Arc<FileFacts>,
}

/// The library and what it has read so far.
#[derive(Default)]
pub struct Library {
    /// By path. A std Mutex: held only to look up and store, never while a file is read.
    cache: Mutex<HashMap<PathBuf, Cached>>,
}

impl Library {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every model in `sources`, sorted by source then name, with its fit against `available`
    /// at `context` tokens (None: each model's own, capped); `downloaded` are the models Corral downloaded, by path, with the tag each was asked for
    /// (the one `DELETE /models` finds it by). Blocking: file system work.
    pub fn list(
        &self,
        sources: &[Source],
        available: &Available,
        context: Option<u64>,
        downloaded: &HashMap<PathBuf, Option<String>>,
    ) -> Vec<ModelEntry> {
        let mut seen = HashSet::new();
        let mut live = HashSet::new();
        let mut entries = Vec::new();
        for source in sources {
            for found in scan::scan(source) {
                let path = found.model_path();
                // The same file reached twice (a models.dirs entry inside a cache) is listed
                // once, under the first source.
                if !seen.insert(path.clone()) {
                    continue;
                }
                live.extend(found.files.iter().cloned());
                let download = downloaded.get(&path);
                entries.push(self.entry(found, path, available, context, download));
            }
        }
        entries.sort_by(|a, b| (a.source, &a.name, &a.path).cmp(&(b.source, &b.name, &b.path)));
        self.forget_all_but(&live);
        entries
    }

    fn entry(
        &self,
        found: Found,
        path: PathBuf,
        available: &Available,
        context: Option<u64>,
        download: Option<&Option<String>>,
    ) -> ModelEntry {
        // Each file is stat'ed once: its size is listed, and with its modification time it
        // decides whether what the cache says of it still holds.
        let stats: Vec<std::io::Result<std::fs::Metadata>> =
            found.files.iter().map(std::fs::metadata).collect();
        let files: Vec<ModelFile> = found
            .files
            .iter()
            .zip(&stats)
            .map(|(file, meta)| ModelFile {
                path: file.clone(),
                size_bytes: meta.as_ref().map_or(0, |m| m.len()),
            })
            .collect();
        let size_bytes = files.iter().map(|file| file.size_bytes).sum();
        let read = |file: &Path| match found.kind {
            FoundKind::Gguf => true,
            FoundKind::Folder => {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name == "config.json" || name.ends_with(".safetensors")
            }
        };
        let facts: Vec<Arc<FileFacts>> = found
            .files
            .iter()
            .zip(&stats)
            .filter(|(file, _)| read(file))
            .map(|(file, meta)| self.facts(file, meta))
            .collect();
        let mmproj_bytes = found
            .mmproj
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        let described = Described::from_facts(&found, &facts, &files, mmproj_bytes);
        let fit = described.fit(available, context);
        ModelEntry {
            id: format!("{}:{}", source_name(found.source), path.display()),
            name: described.name,
            // A download's tag names it as the user asked for it; the file's own type may be
            // spelled otherwise (a `Q8_0` request of a file whose header says `F16`).
            tag: download
                .cloned()
                .flatten()
                .or_else(|| found.tag.clone())
                .or_else(|| described.quantization.clone()),
            repo: found.repo.clone(),
            format: described.format,
            path,
            files,
            size_bytes,
            architecture: described.architecture,
            parameters: described.parameters,
            quantization: described.quantization,
            context_length: described.context_length,
            mmproj: found.mmproj.clone(),
            source: found.source,
            source_dir: found.source_dir.clone(),
            backends: described.backends,
            downloaded: download.is_some(),
            error: described.error,
            fit,
        }
    }

    /// What `path` (whose metadata is `meta`) says, read once per size and modification time.
    fn facts(&self, path: &Path, meta: &std::io::Result<std::fs::Metadata>) -> Arc<FileFacts> {
        let (size, modified) = match meta {
            Ok(meta) => (meta.len(), meta.modified().ok()),
            Err(e) => return Arc::new(FileFacts::unreadable(path, e)),
        };
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(cached) = cache.get(path) {
                if cached.size == size && cached.modified == modified {
                    return Arc::clone(&cached.facts);
                }
            }
        }
        let facts = Arc::new(FileFacts::read(path));
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                path.to_path_buf(),
                Cached {
                    size,
                    modified,
                    facts: Arc::clone(&facts),
                },
            );
        facts
    }

    /// Drops what was read of files no longer found, so the cache does not grow with every
    /// model ever deleted.
    fn forget_all_but(&self, live: &HashSet<PathBuf>) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|file, _| live.contains(file));
    }
}

/// The wire name of a source, as in the entry's `source`.
fn source_name(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Huggingface => "huggingface",
        SourceKind::LlamaCpp => "llama_cpp",
        SourceKind::LmStudio => "lm_studio",
        SourceKind::Ollama => "ollama",
        SourceKind::ModelsDir => "models_dir",
    }
}

#[cfg(test)]
mod tests;

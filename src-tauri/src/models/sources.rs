//! Where models live on this machine: the caches other tools keep, found the way those tools find
//! them (their environment variables first, then their default folders), and the folders the user
//! named in `models.dirs`.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Who keeps a folder of models, which decides its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// `models--org--name/{blobs,snapshots,refs}`: huggingface_hub, transformers, mlx-lm, vLLM,
    /// and Corral's own downloads.
    Huggingface,
    /// llama.cpp's `-hf` downloads: flat `org_name_file.gguf` files, or the Hugging Face layout
    /// in newer releases.
    LlamaCpp,
    /// `<publisher>/<model>/<files>`.
    LmStudio,
    /// `manifests/<registry>/<namespace>/<model>/<tag>` JSON naming `blobs/sha256-<hex>`.
    Ollama,
    /// A folder from `models.dirs`: GGUF files and model folders anywhere below it.
    ModelsDir,
}

/// One folder to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub kind: SourceKind,
    pub dir: PathBuf,
}

/// What the locations depend on: the environment and the home folder, given rather than read, so
/// tests can point every source at a fixture tree.
pub struct Locations<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub home: Option<PathBuf>,
}

impl Locations<'_> {
    /// This process's environment and home folder.
    pub fn system() -> Locations<'static> {
        Locations {
            var: &|name| std::env::var(name).ok().filter(|value| !value.is_empty()),
            home: directories::BaseDirs::new().map(|dirs| dirs.home_dir().to_path_buf()),
        }
    }

    fn under_home(&self, relative: &str) -> Option<PathBuf> {
        self.home.as_ref().map(|home| home.join(relative))
    }

    /// The Hugging Face hub cache, as huggingface_hub resolves it: `HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub fn hf_hub_cache(&self) -> Option<PathBuf> {
        if let Some(dir) =
            (self.var)("HF_HUB_CACHE").or_else(|| (self.var)("HUGGINGFACE_HUB_CACHE"))
        {
            return Some(PathBuf::from(dir));
        }
        if let Some(home) = (self.var)("HF_HOME") {
            return Some(Path::new(&home).join("hub"));
        }
        if let Some(cache) = (self.var)("XDG_CACHE_HOME") {
            return Some(Path::new(&cache).join("huggingface/hub"));
        }
        self.under_home(".cache/huggingface/hub")
    }

    /// Every source this machine may have, known caches first (existing or not: the scan skips
    /// missing folders), then `dirs`; a folder named twice is scanned once.
    pub fn sources(&self, known_caches: bool, dirs: &[PathBuf]) -> Vec<Source> {
        let mut sources = Vec::new();
        if known_caches {
            let mut add = |kind, dir: Option<PathBuf>| {
                if let Some(dir) = dir {
                    sources.push(Source { kind, dir });
                }
            };
            add(SourceKind::Huggingface, self.hf_hub_cache());
            add(
                SourceKind::LlamaCpp,
                (self.var)("LLAMA_CACHE")
                    .map(PathBuf::from)
                    .or_else(|| {
                        (self.var)("XDG_CACHE_HOME").map(|c| Path::new(&c).join("llama.cpp"))
                    })
                    .or_else(|| self.under_home(".cache/llama.cpp")),
            );
            add(SourceKind::LmStudio, self.under_home(".lmstudio/models"));
            add(
                SourceKind::LmStudio,
                self.under_home(".cache/lm-studio/models"),
            );
            add(
                SourceKind::Ollama,
                (self.var)("OLLAMA_MODELS")
                    .map(PathBuf::from)
                    .or_else(|| self.under_home(".ollama/models")),
            );
        }
        for dir in dirs {
            sources.push(Source {
                kind: SourceKind::ModelsDir,
                dir: dir.clone(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        sources.retain(|source| seen.insert(source.dir.clone()));
        sources
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn locations<'a>(vars: &'a [(&'a str, &'a str)]) -> Locations<'a> {
        Locations {
            var: Box::leak(Box::new(move |name: &str| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            })),
            home: Some(PathBuf::from("/home/u")),
        }
    }

    #[test]
    fn the_hub_cache_follows_huggingface_hubs_order() {
        assert_eq!(
            locations(&[]).hf_hub_cache().unwrap(),
            Path::new("/home/u/.cache/huggingface/hub")
        );
        assert_eq!(
            locations(&[("HF_HOME", "/hf")]).hf_hub_cache().unwrap(),
            Path::new("/hf/hub")
        );
        assert_eq!(
            locations(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/cache")])
                .hf_hub_cache()
                .unwrap(),
            Path::new("/cache")
        );
    }

    #[test]
    fn every_known_cache_and_each_named_folder_once() {
        let env = [("LLAMA_CACHE", "/llama"), ("OLLAMA_MODELS", "/ollama")];
        let sources = locations(&env).sources(true, &[PathBuf::from("/m"), PathBuf::from("/m")]);
        let listed: Vec<(SourceKind, &str)> = sources
            .iter()
            .map(|s| (s.kind, s.dir.to_str().unwrap()))
            .collect();
        assert_eq!(
            listed,
            [
                (SourceKind::Huggingface, "/home/u/.cache/huggingface/hub"),
                (SourceKind::LlamaCpp, "/llama"),
                (SourceKind::LmStudio, "/home/u/.lmstudio/models"),
                (SourceKind::LmStudio, "/home/u/.cache/lm-studio/models"),
                (SourceKind::Ollama, "/ollama"),
                (SourceKind::ModelsDir, "/m"),
            ]
        );
        assert_eq!(locations(&env).sources(false, &[]), []);
    }
}

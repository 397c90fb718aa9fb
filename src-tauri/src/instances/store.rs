//! The definition files: `<configs_dir>/<name>.json` = `{name, status, created, options}`,
//! written atomically (`private_files::replace`: owner-only, as a definition may carry secrets
//! such as an `environment` with a token, even where `configs_dir` is outside the owner-only data
//! folder) and read back at start.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::InstanceOptionsView;
use crate::supervisor::Status;

/// What is written: llamactl's persisted instance.
#[derive(Serialize)]
pub struct RecordOut<'a> {
    pub name: &'a str,
    pub status: Status,
    pub created: i64,
    pub options: &'a InstanceOptionsView,
}

/// What is read back: `options` stays raw JSON so it goes through the same validation as a
/// create request.
#[derive(Deserialize)]
pub struct RecordIn {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub created: i64,
    pub options: serde_json::Value,
}

pub fn definition_path(configs_dir: &Path, name: &str) -> PathBuf {
    configs_dir.join(format!("{name}.json"))
}

/// Removes a definition; one already gone is fine.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every `<stem>.json` file of `dir`, sorted by name, with its stem. Unreadable files and files
/// that are not valid records are reported and left untouched.
pub fn load_dir(dir: &Path) -> Vec<(String, PathBuf, RecordIn)> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(
                "cannot read the instance definitions in {}: {e}",
                dir.display()
            );
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    let mut records = Vec::new();
    for path in paths {
        let Some(stem) = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .map(str::to_owned)
        else {
            tracing::warn!(
                "skipping {}: the file name is not valid UTF-8",
                path.display()
            );
            continue;
        };
        let parsed = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<RecordIn>(&bytes).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(record) => records.push((stem, path, record)),
            Err(e) => tracing::warn!("skipping instance definition {}: {e}", path.display()),
        }
    }
    records
}

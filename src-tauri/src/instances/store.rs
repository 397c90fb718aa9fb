//! The definition files: `<configs_dir>/<name>.json` = `{name, status, created, options}`,
//! written atomically and read back at start.

use std::fs;
use std::io::Write;
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

/// Writes `bytes` so that a reader (or a crash) sees either the old file or the new one: a temp
/// file in the same directory, fsync, rename, then fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("definition path has no file name"))?;
    // Leading dot and `.tmp` suffix: never taken for a definition by `load_dir`.
    let temp = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    let result = (|| {
        // Owner-only: a definition may carry secrets (an `environment` with a token, an
        // `api_key`), and `configs_dir` may be set outside the owner-only data folder.
        // `create_new` (O_EXCL) also refuses a symlink planted at the temp path.
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        // A temp file a crash left behind would keep its own mode.
        let _ = fs::remove_file(&temp);
        let mut file = options.open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    #[cfg(unix)]
    if let Ok(dir) = fs::File::open(dir) {
        // Makes the rename itself durable; failure only weakens durability, not correctness.
        let _ = dir.sync_all();
    }
    Ok(())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_definition_is_owner_only_even_over_a_readable_leftover_temp_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        let temp = dir.path().join(".a.json.tmp");
        fs::write(&temp, b"left over").unwrap();
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"{}").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }
}

//! The desktop app's own API keys: generated once when the config names none, kept in
//! `<data_dir>/desktop-keys.json` (owner-only), so the window, scripts and OpenAI clients set up
//! against the app keep working across restarts. `corral serve` keeps llamactl's behaviour
//! (fresh in-memory keys each start).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

pub const FILE_NAME: &str = "desktop-keys.json";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Corral keys file ({source}); move it away to get new keys")]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeysFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    management_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inference_key: Option<String>,
}

/// Fills in the keys auth requires but the config lacks, from the keys file, creating what is
/// missing. Answers the management key the window should carry (`None` when management auth is
/// off).
pub fn load_or_create(config: &mut Config) -> Result<Option<String>, KeysError> {
    let path = config.instances.data_dir.join(FILE_NAME);
    let auth = &mut config.auth;
    let needs_management = auth.require_management_auth && auth.management_keys.is_empty();
    let needs_inference = auth.require_inference_auth && auth.inference_keys.is_empty();
    if needs_management || needs_inference {
        let mut file = read(&path)?;
        let mut changed = false;
        for (needed, slot, keys, prefix) in [
            (
                needs_management,
                &mut file.management_key,
                &mut auth.management_keys,
                "sk-management",
            ),
            (
                needs_inference,
                &mut file.inference_key,
                &mut auth.inference_keys,
                "sk-inference",
            ),
        ] {
            if !needed {
                continue;
            }
            let key = slot.get_or_insert_with(|| {
                changed = true;
                new_key(prefix)
            });
            keys.push(key.clone());
        }
        if changed {
            write(&path, &file)?;
        }
    }
    Ok(auth
        .require_management_auth
        .then(|| auth.management_keys.first().cloned())
        .flatten())
}

/// llamactl's format: the prefix and 64 hex digits.
fn new_key(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}-{}", hex::encode(bytes))
}

fn read(path: &Path) -> Result<KeysFile, KeysError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| KeysError::Invalid {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeysFile::default()),
        Err(source) => Err(KeysError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, file: &KeysFile) -> Result<(), KeysError> {
    let error = |source| KeysError::Write {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| error(std::io::Error::other(e)))?;
    write_private(path, &bytes).map_err(error)
}

/// Writes through a temp file readable by the owner only, then renames it over `path`.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    let temp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut out = options.open(&temp)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_keeps_its_generated_keys_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = Config::with_data_dir(dir.path().to_path_buf());
        let key = load_or_create(&mut first).expect("keys").expect("a key");
        assert!(key.starts_with("sk-management-"), "{key}");
        assert_eq!(first.auth.management_keys, vec![key.clone()]);
        assert_eq!(first.auth.inference_keys.len(), 1);

        let mut second = Config::with_data_dir(dir.path().to_path_buf());
        assert_eq!(load_or_create(&mut second).expect("keys"), Some(key));
        assert_eq!(second.auth.inference_keys, first.auth.inference_keys);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .expect("keys file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "only the owner may read the keys");
        }
    }

    #[test]
    fn configured_keys_are_used_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::with_data_dir(dir.path().to_path_buf());
        config.auth.management_keys = vec!["mine".into()];
        config.auth.require_inference_auth = false;
        assert_eq!(
            load_or_create(&mut config).expect("keys"),
            Some("mine".into())
        );
        assert!(config.auth.inference_keys.is_empty());
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn no_key_is_handed_to_the_window_when_management_auth_is_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::with_data_dir(dir.path().to_path_buf());
        config.auth.require_management_auth = false;
        assert_eq!(load_or_create(&mut config).expect("keys"), None);
    }

    #[test]
    fn a_damaged_keys_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), "not json").expect("write");
        let mut config = Config::with_data_dir(dir.path().to_path_buf());
        let err = load_or_create(&mut config).expect_err("invalid");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE_NAME)).expect("kept"),
            "not json"
        );
    }
}

//! API keys Corral generated because auth is on and the config names none: kept in
//! `<data_dir>/desktop-keys.json` (owner-only, see [`crate::private_files`]), so the desktop
//! window, `corral serve`, scripts and editors set up against the keys keep working across
//! restarts. The file keeps its first name (the desktop app wrote it first) so existing users
//! keep their keys. Keys set in the config or the environment win over the file.

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
    #[error("{path} holds an empty {which} key; run `corral keys rotate` to get new keys")]
    Empty { path: PathBuf, which: &'static str },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The keys file's content.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKeys {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_key: Option<String>,
}

/// A key taken from the keys file because the config named none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptKey {
    pub key: String,
    /// Made just now (first start, or the file lacked it), not read from the file.
    pub new: bool,
}

/// What [`load_or_create`] filled in.
#[derive(Debug, Clone)]
pub struct Filled {
    /// The keys file.
    pub path: PathBuf,
    pub management: Option<KeptKey>,
    pub inference: Option<KeptKey>,
    /// The management key the desktop window should carry (`None` when management auth is off).
    pub window_key: Option<String>,
}

/// `<data_dir>/desktop-keys.json`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Fills in the keys auth requires but the config lacks, from the keys file, creating what is
/// missing.
pub fn load_or_create(config: &mut Config) -> Result<Filled, KeysError> {
    let path = path(&config.instances.data_dir);
    let auth = &mut config.auth;
    let needs_management = auth.require_management_auth && auth.management_keys.is_empty();
    let needs_inference = auth.require_inference_auth && auth.inference_keys.is_empty();
    let mut filled = Filled {
        path: path.clone(),
        management: None,
        inference: None,
        window_key: None,
    };
    if needs_management || needs_inference {
        let mut file = read(&path)?;
        let mut changed = false;
        for (needed, slot, keys, prefix, kept) in [
            (
                needs_management,
                &mut file.management_key,
                &mut auth.management_keys,
                "sk-management",
                &mut filled.management,
            ),
            (
                needs_inference,
                &mut file.inference_key,
                &mut auth.inference_keys,
                "sk-inference",
                &mut filled.inference,
            ),
        ] {
            if !needed {
                continue;
            }
            let new = slot.is_none();
            let key = slot.get_or_insert_with(|| new_key(prefix)).clone();
            changed |= new;
            keys.push(key.clone());
            *kept = Some(KeptKey { key, new });
        }
        if changed {
            write(&path, &file)?;
        }
    }
    filled.window_key = auth
        .require_management_auth
        .then(|| auth.management_keys.first().cloned())
        .flatten();
    Ok(filled)
}

/// The keys file as it is (empty when there is none).
pub fn read_stored(data_dir: &Path) -> Result<StoredKeys, KeysError> {
    read(&path(data_dir))
}

/// Replaces both keys in the file with new ones and answers them. A running engine keeps the
/// keys it started with until it restarts.
pub fn rotate(data_dir: &Path) -> Result<StoredKeys, KeysError> {
    let keys = StoredKeys {
        management_key: Some(new_key("sk-management")),
        inference_key: Some(new_key("sk-inference")),
    };
    write(&path(data_dir), &keys)?;
    Ok(keys)
}

/// llamactl's format: the prefix and 64 hex digits.
fn new_key(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}-{}", hex::encode(bytes))
}

fn read(path: &Path) -> Result<StoredKeys, KeysError> {
    let keys: StoredKeys = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| KeysError::Invalid {
            path: path.to_path_buf(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoredKeys::default()),
        Err(source) => {
            return Err(KeysError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    tighten(path);
    // A blank key would let an empty credential in.
    for (key, which) in [
        (&keys.management_key, "management"),
        (&keys.inference_key, "inference"),
    ] {
        if key.as_deref().is_some_and(|key| key.trim().is_empty()) {
            return Err(KeysError::Empty {
                path: path.to_path_buf(),
                which,
            });
        }
    }
    Ok(keys)
}

/// Older versions could leave the file readable by others (when a stale temp file was reused):
/// make it owner-only again. Someone else's file is not ours to change.
#[cfg(unix)]
fn tighten(path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let ours = meta.uid() == nix::unistd::geteuid().as_raw();
    if ours && meta.is_file() && meta.mode() & 0o077 != 0 {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => tracing::warn!("{} was readable by others: now owner-only", path.display()),
            Err(e) => tracing::warn!("cannot make {} owner-only: {e}", path.display()),
        }
    }
}

#[cfg(not(unix))]
fn tighten(_path: &Path) {}

fn write(path: &Path, file: &StoredKeys) -> Result<(), KeysError> {
    let error = |source| KeysError::Write {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| error(std::io::Error::other(e)))?;
    crate::private_files::write(path, &bytes).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_kept_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = Config::with_data_dir(dir.path().to_path_buf());
        let filled = load_or_create(&mut first).expect("keys");
        let key = filled.window_key.expect("a key");
        assert!(key.starts_with("sk-management-"), "{key}");
        assert_eq!(first.auth.management_keys, vec![key.clone()]);
        assert_eq!(first.auth.inference_keys.len(), 1);
        assert!(filled.management.is_some_and(|kept| kept.new));

        let mut second = Config::with_data_dir(dir.path().to_path_buf());
        let again = load_or_create(&mut second).expect("keys");
        assert_eq!(again.window_key, Some(key));
        assert!(again.inference.is_some_and(|kept| !kept.new));
        assert_eq!(second.auth.inference_keys, first.auth.inference_keys);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .expect("keys file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "only the owner may read the keys");
        }
    }

    #[test]
    fn rotate_replaces_both_keys_and_the_next_start_uses_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = Config::with_data_dir(dir.path().to_path_buf());
        load_or_create(&mut first).expect("keys");
        let rotated = rotate(dir.path()).expect("rotate");
        assert_ne!(
            rotated.management_key.as_ref(),
            first.auth.management_keys.first()
        );
        assert_ne!(
            rotated.inference_key.as_ref(),
            first.auth.inference_keys.first()
        );

        let mut second = Config::with_data_dir(dir.path().to_path_buf());
        load_or_create(&mut second).expect("keys");
        assert_eq!(
            second.auth.management_keys.first(),
            rotated.management_key.as_ref()
        );
        assert_eq!(
            second.auth.inference_keys.first(),
            rotated.inference_key.as_ref()
        );
    }

    #[test]
    fn configured_keys_are_used_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::with_data_dir(dir.path().to_path_buf());
        config.auth.management_keys = vec!["mine".into()];
        config.auth.require_inference_auth = false;
        let filled = load_or_create(&mut config).expect("keys");
        assert_eq!(filled.window_key, Some("mine".into()));
        assert!(filled.management.is_none());
        assert!(config.auth.inference_keys.is_empty());
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn no_key_is_handed_to_the_window_when_management_auth_is_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::with_data_dir(dir.path().to_path_buf());
        config.auth.require_management_auth = false;
        assert_eq!(load_or_create(&mut config).expect("keys").window_key, None);
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

    #[cfg(unix)]
    #[test]
    fn a_keys_file_readable_by_others_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, r#"{"management_key": "sk-management-x"}"#).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut config = Config::with_data_dir(dir.path().to_path_buf());
        config.auth.require_inference_auth = false;
        let filled = load_or_create(&mut config).expect("keys");
        assert_eq!(filled.window_key.as_deref(), Some("sk-management-x"));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_empty_key_in_the_keys_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"management_key": "  ", "inference_key": "sk-inference-x"}"#,
        )
        .expect("write");
        let mut config = Config::with_data_dir(dir.path().to_path_buf());
        let err = load_or_create(&mut config).expect_err("empty key");
        assert!(err.to_string().contains("empty management key"), "{err}");
        assert!(config.auth.management_keys.is_empty());
    }
}

//! The app's settings the UI changes (`PUT /api/v1/desktop/settings`), kept in
//! `<data_dir>/desktop.json`. The config file's `desktop.close_to_tray` is the default until
//! the user changes it in the app. Start at login is not stored here: the OS's login item is
//! the truth, asked each time.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "desktop.json";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the file holds; absent keys fall back to the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_to_tray: Option<bool>,
}

impl SavedSettings {
    /// The saved settings; a missing file is no settings, a damaged one is ignored with a
    /// warning (the next change rewrites it) since it only holds preferences.
    pub fn load(path: &Path) -> Result<SavedSettings, SettingsError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring {}: {e}", path.display());
                SavedSettings::default()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SavedSettings::default()),
            Err(source) => Err(SettingsError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), SettingsError> {
        let error = |source| SettingsError::Write {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| error(std::io::Error::other(e)))?;
        crate::private_files::write(path, &bytes).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_setting_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        assert_eq!(
            SavedSettings::load(&path).expect("load"),
            SavedSettings::default()
        );
        let saved = SavedSettings {
            close_to_tray: Some(false),
        };
        saved.save(&path).expect("save");
        assert_eq!(SavedSettings::load(&path).expect("load"), saved);
    }

    #[test]
    fn a_damaged_settings_file_falls_back_to_the_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "{").expect("write");
        assert_eq!(
            SavedSettings::load(&path).expect("load").close_to_tray,
            None
        );
    }
}

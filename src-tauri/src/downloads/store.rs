//! `<data_dir>/downloads.json`: the models Corral downloaded (so that it deletes only its own
//! without asking) and the jobs not finished yet (so that a restart continues them). Owner-only,
//! written whole on every change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::select::ModelFormat;
use super::{io_error, DownloadError, DownloadedModel};

/// A job to continue after a restart: what was asked, and the commit once it was known, so the
/// continued job fetches the same revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingJob {
    pub id: String,
    pub repo: String,
    pub tag: Option<String>,
    pub format: Option<ModelFormat>,
    pub created_at: String,
    pub commit: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Stored {
    #[serde(default)]
    pub models: Vec<DownloadedModel>,
    #[serde(default)]
    pub pending: Vec<PendingJob>,
}

impl Stored {
    /// The file's content; a file that cannot be parsed is moved aside (and said so in the log)
    /// rather than stopping the engine or being overwritten.
    pub fn load(path: &Path) -> Stored {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Stored::default(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; starting without it", path.display());
                return Stored::default();
            }
        };
        match serde_json::from_str(&text) {
            Ok(stored) => stored,
            Err(e) => {
                let aside = PathBuf::from(format!("{}.corrupt", path.display()));
                tracing::warn!(
                    "{} is not valid ({e}); moved to {}",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(path, aside);
                Stored::default()
            }
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), DownloadError> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| DownloadError::Internal(format!("cannot encode downloads: {e}")))?;
        crate::private_files::write(path, &text).map_err(|e| io_error("write", path, e))
    }
}

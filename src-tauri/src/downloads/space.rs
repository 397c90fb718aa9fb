//! Room on the disk for a download, checked before any byte is fetched: the hub announces each
//! file's size, and a transfer never writes past it (`transfer.rs`), so the announced sizes are
//! what a download can take. A hub that announces more than the disk has free (or a model
//! larger than the disk) fails the job at once, instead of filling the disk.

use std::path::{Path, PathBuf};

use super::transfer::partial_path;
use super::DownloadError;

/// Left free on the disk after a download: the system, the logs and the other tools need room.
pub const RESERVE_BYTES: u64 = 1 << 30;

/// The bytes a file still needs: none when its blob is complete, else what its partial file
/// lacks.
pub fn still_needed(blob: &Path, size: u64) -> u64 {
    if std::fs::metadata(blob).is_ok_and(|meta| meta.is_file() && meta.len() == size) {
        return 0;
    }
    let kept = std::fs::metadata(partial_path(blob)).map_or(0, |meta| meta.len());
    size.saturating_sub(kept)
}

/// Refuses `needed` more bytes under `dir` when they would leave less than [`RESERVE_BYTES`]
/// free. Where the free space cannot be read (no statvfs), the download goes ahead.
pub fn ensure_room(dir: &Path, needed: u64) -> Result<(), DownloadError> {
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    check(dir, needed, free)
}

fn check(dir: &Path, needed: u64, free: u64) -> Result<(), DownloadError> {
    if needed > free.saturating_sub(RESERVE_BYTES) {
        return Err(DownloadError::NoSpace {
            dir: dir.to_path_buf(),
            needed,
            free,
        });
    }
    Ok(())
}

/// Free bytes for this user on the file system of `dir`, or of its nearest existing folder
/// (the cache folder may not exist before the first download).
fn free_bytes(dir: &Path) -> Option<u64> {
    let existing: PathBuf = dir.ancestors().find(|p| p.exists())?.to_path_buf();
    statvfs_free(&existing)
}

#[cfg(unix)]
// The conversions are no-ops on Linux; on macOS the block count is a u32.
#[allow(clippy::useless_conversion)]
fn statvfs_free(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    u64::from(stat.blocks_available()).checked_mul(u64::from(stat.fragment_size()))
}

#[cfg(not(unix))]
fn statvfs_free(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn a_download_must_leave_the_reserve_free() {
        let dir = Path::new("/cache");
        assert!(check(dir, 10, RESERVE_BYTES + 10).is_ok());
        let refused = check(dir, 11, RESERVE_BYTES + 10).unwrap_err();
        assert!(
            refused.to_string().contains("not enough disk space"),
            "{refused}"
        );
        // An absurd announced size cannot overflow into a pass.
        assert!(check(dir, u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn what_a_file_still_needs_counts_its_partial_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("abc");
        assert_eq!(still_needed(&blob, 100), 100);
        std::fs::write(partial_path(&blob), [0u8; 30]).unwrap();
        assert_eq!(still_needed(&blob, 100), 70);
        std::fs::write(&blob, [0u8; 100]).unwrap();
        assert_eq!(still_needed(&blob, 100), 0);
    }

    #[test]
    fn the_free_space_of_a_folder_not_made_yet_is_its_disks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(&dir.path().join("not/yet")).is_some_and(|free| free > 0));
    }
}

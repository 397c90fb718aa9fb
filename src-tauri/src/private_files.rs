//! Files only the owner may read (keys, settings, pid files), in folders only the owner may
//! enter. A secret is written to a fresh temp file opened with `O_EXCL | O_NOFOLLOW` and mode
//! 0600, then renamed over the real name: whatever sits at the temp path (a leftover, or a link
//! someone planted to make Corral overwrite another file) is removed, never followed or reused
//! with its old mode.

use std::io::Write;
use std::path::Path;

/// Mode of the folders that hold secrets.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// Mode of a secret file.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) owner-only; an existing `dir` owned by this user is
/// tightened to owner-only. One owned by someone else is left as it is (not ours to change).
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        let meta = std::fs::metadata(dir)?;
        if meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// The temp file a write of `file_name` in `dir` goes through. Unique to this process and thread,
/// because two writers of the same file must never share one: the app and a `corral install` in a
/// terminal both record `installed.json`, and two threads of the app may save the same file. With
/// a shared name one writer removes or renames the other's half-written file. A thread writes one
/// file at a time (a write never yields), so the pair is unique among writers running at once.
fn temp_path(dir: &Path, file_name: &std::ffi::OsStr) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT_THREAD: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    }
    let thread = THREAD.with(|thread| *thread);
    dir.join(format!(
        ".{}.{}-{thread}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ))
}

/// Writes `bytes` to `path`, owner-only, in an owner-only folder; never half a file.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    ensure_dir(parent(path))?;
    replace(path, bytes)
}

/// Replaces `path` with an owner-only file holding `bytes`, in whatever folder it is, so that a
/// reader (or a crash) sees the old file or the new one, never half of one: a temp file beside it,
/// fsync, rename, then fsync of the folder so the rename itself is durable.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    let temp = temp_path(dir, file_name);
    // Removing does not follow a link: a planted one goes, its target stays untouched.
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = std::fs::OpenOptions::new();
    // `create_new` is O_CREAT | O_EXCL: if something appears at the path again, this fails.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    }
    let written = options.open(&temp).and_then(|mut out| {
        // The umask can only take bits away from 0600; this makes it exactly 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            out.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
        out.write_all(bytes)?;
        out.sync_all()
    });
    // Closed before the rename (Windows renames no open file).
    let result = written.and_then(|()| std::fs::rename(&temp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result?;
    #[cfg(unix)]
    if let Ok(dir) = std::fs::File::open(dir) {
        // Failing here only weakens durability, not correctness.
        let _ = dir.sync_all();
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_link_planted_at_the_temp_path_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "precious").expect("write victim");
        let secrets = dir.path().join("data");
        ensure_dir(&secrets).expect("mkdir");
        let temp = temp_path(&secrets, "keys.json".as_ref());
        std::os::unix::fs::symlink(&victim, &temp).expect("symlink");

        write(&secrets.join("keys.json"), b"secret").expect("write");

        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        assert_eq!(
            std::fs::read_to_string(secrets.join("keys.json")).expect("read"),
            "secret"
        );
        assert_eq!(mode(&secrets.join("keys.json")), 0o600);
        assert!(std::fs::symlink_metadata(&temp).is_err());
    }

    #[test]
    fn the_file_is_owner_only_even_when_a_readable_temp_file_was_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let temp = temp_path(dir.path(), "keys.json".as_ref());
        std::fs::write(&temp, "old").expect("write");
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644)).expect("chmod");

        write(&dir.path().join("keys.json"), b"secret").expect("write");

        assert_eq!(mode(&dir.path().join("keys.json")), 0o600);
    }

    #[test]
    fn writers_of_the_same_file_at_once_never_fail_or_leave_half_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("installed.json");
        let contents: Vec<String> = (0..4).map(|n| format!("{n}").repeat(64 * 1024)).collect();
        std::thread::scope(|scope| {
            for content in &contents {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..50 {
                        write(path, content.as_bytes()).expect("a write beside others");
                    }
                });
            }
        });
        let last = std::fs::read_to_string(&path).expect("read");
        assert!(contents.contains(&last), "a whole file from one writer");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("installed.json")]);
    }

    #[test]
    fn a_replaced_file_is_owner_only_over_a_readable_leftover_and_its_folder_is_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        // An instance's `configs_dir` may be a folder the user shares: its mode is theirs.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let path = dir.path().join("a.json");
        let temp = temp_path(dir.path(), "a.json".as_ref());
        std::fs::write(&temp, "left over").expect("write");
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644)).expect("chmod");

        replace(&path, b"one").expect("replace");
        replace(&path, b"two").expect("replace again");

        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(dir.path()), 0o755);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn folders_for_secrets_are_created_and_tightened_to_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("new/data");
        write(&fresh.join("keys.json"), b"secret").expect("write");
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&dir.path().join("new")), 0o700);

        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_dir(&open).expect("ensure");
        assert_eq!(mode(&open), 0o700);
    }
}

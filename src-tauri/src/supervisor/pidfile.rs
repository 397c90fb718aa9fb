//! Pid files of running backends (`<run_dir>/<name>.pid`) and the clean-up of what a crashed
//! engine left behind. A pid alone could name an unrelated process by now, so each file also
//! records the process's start identity, checked before anything is signalled.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spawn::TOKEN_VAR;

/// What a pid file says about the process it was written for.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PidRecord {
    /// The backend's pid, also its process group id.
    pub(super) pid: u32,
    /// When and on which boot the process started (see [`process_identity`]); `None` where the
    /// platform gives no way to tell, and then the process is never signalled.
    pub(super) identity: Option<String>,
    /// The program as launched, for the messages of the clean-up.
    pub(super) program: String,
    /// The value of `CORRAL_SUPERVISOR_TOKEN` in the environment of the backend and its children.
    pub(super) token: String,
}

impl PidRecord {
    pub(super) fn describe(pid: u32, program: &str, token: &str) -> Self {
        Self {
            pid,
            identity: process_identity(pid),
            program: program.to_string(),
            token: token.to_string(),
        }
    }
}

/// Writes the record to `<run_dir>/<name>.pid` (temp file, then rename: never half a file).
pub(super) fn write(run_dir: &Path, name: &str, record: &PidRecord) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(run_dir)?;
    let path = run_dir.join(format!("{name}.pid"));
    let temp = run_dir.join(format!(".{name}.pid.tmp"));
    let text = serde_json::to_string(record).map_err(std::io::Error::other)?;
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, &path)?;
    Ok(path)
}

/// See [`super::clean_up_leftovers`].
pub(super) fn clean_up_leftovers(run_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut handled = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "pid") || !path.is_file() {
            continue;
        }
        let file_name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let record = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<PidRecord>(&text).ok());
        match record {
            Some(record) => handled.push(clean_up(&record, &file_name)),
            None => handled.push(format!("removed the unreadable pid file {file_name}")),
        }
        if let Err(err) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), "cannot remove the pid file: {err}");
        }
    }
    handled
}

fn clean_up(record: &PidRecord, file_name: &str) -> String {
    let PidRecord { pid, program, .. } = record;
    let ours = record.identity.is_some() && process_identity(*pid) == record.identity;
    if ours {
        super::stop::signal_group(*pid, super::stop::GroupSignal::Kill);
        return format!("killed the leftover process group {pid} ({program}) from {file_name}");
    }
    // The backend itself is gone (on Linux it dies with the engine), but workers it started may
    // still run in its group: kill those that carry our token.
    let workers = group_members_with_token(*pid, &record.token);
    for worker in &workers {
        kill(*worker);
    }
    if workers.is_empty() {
        format!("removed the stale pid file {file_name} (process {pid} is gone or is not ours)")
    } else {
        format!(
            "killed {} leftover worker process(es) of {program} (group {pid}) from {file_name}",
            workers.len()
        )
    }
}

#[cfg(unix)]
fn kill(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(not(unix))]
fn kill(_pid: u32) {}

/// Identifies one process across pid reuse: the boot it ran in and its start time in clock ticks.
#[cfg(target_os = "linux")]
pub(super) fn process_identity(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let start = linux::stat_field(pid, 22)?;
    Some(format!("{}/{start}", boot.trim()))
}

/// Identifies one process across pid reuse by its start time as `ps` prints it.
#[cfg(all(unix, not(target_os = "linux")))]
pub(super) fn process_identity(pid: u32) -> Option<String> {
    let output = std::process::Command::new("ps")
        .args(["-o", "lstart=", "-p", &pid.to_string()])
        .output()
        .ok()?;
    let started = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !started.is_empty()).then_some(started)
}

#[cfg(not(unix))]
pub(super) fn process_identity(_pid: u32) -> Option<String> {
    None
}

/// Processes in group `pgid` whose environment holds our token.
#[cfg(target_os = "linux")]
fn group_members_with_token(pgid: u32, token: &str) -> Vec<u32> {
    let needle = format!("{TOKEN_VAR}={token}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| linux::stat_field(pid, 5).is_some_and(|group| group == pgid.to_string()))
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&byte| byte == 0)
                    .any(|var| var == needle.as_bytes())
            })
        })
        .collect()
}

/// Without /proc the environment of other processes is out of reach: only the group leader,
/// checked by its identity, is ever signalled.
#[cfg(not(target_os = "linux"))]
fn group_members_with_token(_pgid: u32, _token: &str) -> Vec<u32> {
    let _ = TOKEN_VAR;
    Vec::new()
}

#[cfg(target_os = "linux")]
mod linux {
    /// Field `number` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
    pub(super) fn stat_field(pid: u32, number: usize) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
        let after_name = &stat[stat.rfind(')')? + 1..];
        after_name
            .split_whitespace()
            .nth(number.checked_sub(3)?)
            .map(str::to_string)
    }
}

//! Pid files of running backends (`<run_dir>/<name>.pid`) and the clean-up of what a crashed
//! engine left behind.
//!
//! A pid file is only a claim: anyone who can write the run folder could forge one, and a pid
//! alone could name an unrelated process by now. So before anything is signalled the process
//! must prove it is a backend this engine's supervisor started: a pid above 1 outside the
//! engine's own group, the start identity recorded, the executable recorded, and (on Linux) the
//! secret token of that launch in its environment, which only its owner and root can read.

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
    /// The executable the process ran when it was spawned. Files written before it was recorded
    /// lack it: then only the token (Linux) vouches for the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) exe: Option<PathBuf>,
}

impl PidRecord {
    pub(super) fn describe(pid: u32, program: &str, token: &str) -> Self {
        Self {
            pid,
            identity: process_identity(pid),
            program: program.to_string(),
            token: token.to_string(),
            exe: executable(pid),
        }
    }
}

/// Writes the record to `<run_dir>/<name>.pid`, owner-only, in an owner-only folder.
pub(super) fn write(run_dir: &Path, name: &str, record: &PidRecord) -> std::io::Result<PathBuf> {
    let path = run_dir.join(format!("{name}.pid"));
    let text = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    crate::private_files::write(&path, &text)?;
    Ok(path)
}

/// A signal the clean-up decided to send, after every check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kill {
    /// SIGKILL to the process group this pid leads.
    Group(u32),
    /// SIGKILL to this one process.
    Process(u32),
}

/// Sends a [`Kill`] for real.
pub(super) fn send(kill: Kill) {
    match kill {
        Kill::Group(pid) => super::stop::signal_group(pid, super::stop::GroupSignal::Kill),
        Kill::Process(pid) => kill_process(pid),
    }
}

/// See [`super::clean_up_leftovers`]; `signal` sends what the checks allow (tests record it).
pub(super) fn clean_up_leftovers(run_dir: &Path, signal: &mut dyn FnMut(Kill)) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut handled = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        // `file_type` does not follow links: a link planted here is neither read nor trusted.
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        if path.extension().is_none_or(|ext| ext != "pid") || !is_file {
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
            Some(record) => handled.push(clean_up(&record, &file_name, signal)),
            None => handled.push(format!("removed the unreadable pid file {file_name}")),
        }
        if let Err(err) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), "cannot remove the pid file: {err}");
        }
    }
    handled
}

fn clean_up(record: &PidRecord, file_name: &str, signal: &mut dyn FnMut(Kill)) -> String {
    let PidRecord { pid, program, .. } = record;
    let leader = match check_leader(record) {
        Ok(()) => {
            signal(Kill::Group(*pid));
            return format!("killed the leftover process group {pid} ({program}) from {file_name}");
        }
        Err(refusal) => refusal,
    };
    // The backend itself is gone (on Linux it dies with the engine), but workers it started may
    // still run in its group: kill those that carry the launch's token.
    let workers = match check_pid(*pid) {
        Ok(()) if !record.token.is_empty() => group_members_with_token(*pid, &record.token),
        _ => Vec::new(),
    };
    for worker in &workers {
        signal(Kill::Process(*worker));
    }
    if workers.is_empty() {
        format!(
            "removed the stale pid file {file_name}: process {pid} was not signalled ({leader})"
        )
    } else {
        format!(
            "killed {} leftover worker process(es) of {program} (group {pid}) from {file_name}",
            workers.len()
        )
    }
}

/// Why a process named by a pid file is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("pid 0 and 1 are never signalled")]
    Reserved,
    #[error("it is the engine itself or its process group")]
    OurOwn,
    #[error("it is gone or is another process now")]
    NotTheSame,
    #[error("it does not lead its own process group")]
    NotGroupLeader,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    #[error("its environment does not carry the token of the launch")]
    NoToken,
    #[error("it runs another executable than the one recorded")]
    OtherExecutable,
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    #[error("nothing proves it is a backend the engine started")]
    Unproven,
}

/// The checks every pid gets before a signal: never 0 or 1 (`kill(-1)` would reach every
/// process), never the engine or its group (nor a pid that does not fit a `pid_t`).
pub(super) fn check_pid(pid: u32) -> Result<(), Refusal> {
    if pid <= 1 || i32::try_from(pid).is_err() {
        return Err(Refusal::Reserved);
    }
    if pid == std::process::id() || Some(pid) == own_group() {
        return Err(Refusal::OurOwn);
    }
    Ok(())
}

/// Whether the pid file's process, and so its whole group, may be killed.
pub(super) fn check_leader(record: &PidRecord) -> Result<(), Refusal> {
    let pid = record.pid;
    check_pid(pid)?;
    if record.identity.is_none() || process_identity(pid) != record.identity {
        return Err(Refusal::NotTheSame);
    }
    if group_of(pid) != Some(pid) {
        return Err(Refusal::NotGroupLeader);
    }
    if let Some(recorded) = &record.exe {
        if executable(pid).as_ref() != Some(recorded) {
            return Err(Refusal::OtherExecutable);
        }
    }
    proven(record)
}

/// Linux: the token in the process's environment proves it (readable only by its owner and
/// root, so a forged pid file cannot make another user's process carry it).
#[cfg(target_os = "linux")]
fn proven(record: &PidRecord) -> Result<(), Refusal> {
    if !record.token.is_empty() && carries_token(record.pid, &record.token) {
        Ok(())
    } else {
        Err(Refusal::NoToken)
    }
}

/// Without /proc another process's environment is out of reach: the recorded executable,
/// checked above, must be there to vouch for it beside the start time.
#[cfg(not(target_os = "linux"))]
fn proven(record: &PidRecord) -> Result<(), Refusal> {
    let _ = TOKEN_VAR;
    if record.exe.is_some() {
        Ok(())
    } else {
        Err(Refusal::Unproven)
    }
}

#[cfg(unix)]
fn own_group() -> Option<u32> {
    u32::try_from(nix::unistd::getpgrp().as_raw()).ok()
}

#[cfg(not(unix))]
fn own_group() -> Option<u32> {
    None
}

/// The process group `pid` belongs to.
#[cfg(unix)]
fn group_of(pid: u32) -> Option<u32> {
    let raw = i32::try_from(pid).ok()?;
    let group = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(raw))).ok()?;
    u32::try_from(group.as_raw()).ok()
}

#[cfg(not(unix))]
fn group_of(_pid: u32) -> Option<u32> {
    None
}

/// The executable `pid` runs, as the system reports it.
pub(super) fn executable(pid: u32) -> Option<PathBuf> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
    let pid = Pid::from_u32(pid);
    let mut system = System::new();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_exe(UpdateKind::Always),
    );
    system.process(pid)?.exe().map(Path::to_path_buf)
}

#[cfg(unix)]
fn kill_process(pid: u32) {
    if check_pid(pid).is_err() {
        return;
    }
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(not(unix))]
fn kill_process(_pid: u32) {}

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

/// Whether `pid`'s environment holds `TOKEN_VAR=token`.
#[cfg(target_os = "linux")]
fn carries_token(pid: u32, token: &str) -> bool {
    let needle = format!("{TOKEN_VAR}={token}");
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|&byte| byte == 0)
            .any(|var| var == needle.as_bytes())
    })
}

/// Processes in group `pgid` whose environment holds our token.
#[cfg(target_os = "linux")]
fn group_members_with_token(pgid: u32, token: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| check_pid(pid).is_ok())
        .filter(|&pid| linux::stat_field(pid, 5).is_some_and(|group| group == pgid.to_string()))
        .filter(|&pid| carries_token(pid, token))
        .collect()
}

/// Without /proc the environment of other processes is out of reach: only the group leader,
/// checked by its identity and executable, is ever signalled.
#[cfg(not(target_os = "linux"))]
fn group_members_with_token(_pgid: u32, _token: &str) -> Vec<u32> {
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

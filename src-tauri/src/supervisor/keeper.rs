//! A keeper per backend: a tiny process that kills the backend's whole process group when the
//! engine dies, however it dies.
//!
//! Linux's parent-death signal ends only the backend itself. Its own children (vLLM's engine
//! core and worker, a shell's background jobs) are reparented and live on, holding memory and
//! GPUs, and the pid-file clean-up at the next start cannot always recognise them: vLLM's
//! `setproctitle` overwrites the environment that carries the launch's token. macOS has no
//! parent-death signal at all.
//!
//! So at each launch the engine starts a keeper that only waits on a pipe whose write end the
//! engine alone holds. An orderly end writes `release` first and the keeper exits without a
//! signal; end of file without it means the engine is gone, and the keeper SIGKILLs the group.
//!
//! The keeper is a fixed `/bin/sh` script, with nothing from a user in it (the group id is an
//! integer the engine formats): it costs about a megabyte, where a fork of the engine would keep
//! a copy of every page the engine rewrites afterwards, and there is no helper binary to find
//! (the test harness is an engine too). It runs in its own session, so a terminal's signals and
//! a kill of the engine's group miss it, ignores the catchable signals, and is orphaned at once
//! (a background job of a shell that exits) so the system reaps it, never the engine.

/// Watches one backend's process group for the engine's death; see the module comment.
pub(super) struct Keeper {
    /// The write end of the keeper's pipe; closing it without the release kills the group.
    #[cfg(unix)]
    lifeline: Option<std::os::fd::OwnedFd>,
}

/// What the engine writes to let a keeper go without a signal.
#[cfg(unix)]
const RELEASE: &[u8] = b"release\n";

impl Keeper {
    /// Starts a keeper for the group `pgid` leads. `pgid` must be a backend's group: the checks
    /// of [`super::pidfile::check_pid`] apply.
    #[cfg(unix)]
    #[allow(unsafe_code)]
    pub(super) fn watch(pgid: u32) -> std::io::Result<Keeper> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};

        super::pidfile::check_pid(pgid).map_err(std::io::Error::other)?;
        // Close-on-exec: no backend spawned later may hold the write end, or the pipe would
        // never reach end of file. The read end becomes the script's stdin.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // The keeper is the inner, backgrounded subshell. A background job's stdin is
        // /dev/null, hence the pipe on descriptor 3. `read` fails at end of file.
        let script = format!(
            ": corral-keeper for process group {pgid}\n\
             trap '' HUP INT QUIT TERM PIPE\n\
             exec 3<&0\n\
             ( read -r word <&3; [ \"$word\" = release ] || kill -9 -{pgid} ) >/dev/null 2>&1 &\n"
        );
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(script)
            .arg("corral-keeper")
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let highest_fd = highest_fd();
        // SAFETY: runs in the forked child before exec, where only async-signal-safe calls are
        // allowed: setsid, close_range and close are, and nothing is allocated or locked.
        unsafe {
            command.pre_exec(move || {
                libc::setsid();
                // Only stdin (the pipe), stdout and stderr go on: a descriptor some library
                // opened without close-on-exec (a client's socket) must not outlive the engine
                // in the keeper.
                close_from(3, highest_fd);
                Ok(())
            });
        }
        // The outer shell exits as soon as the keeper is in the background: a millisecond or so.
        let status = command.status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "the keeper's shell failed: {status}"
            )));
        }
        Ok(Keeper {
            lifeline: Some(write),
        })
    }

    #[cfg(not(unix))]
    pub(super) fn watch(_pgid: u32) -> std::io::Result<Keeper> {
        Ok(Keeper {})
    }

    /// The group has been dealt with (stopped, reaped, killed): the keeper exits without a
    /// signal, so a group id reused later is never touched.
    pub(super) fn release(&mut self) {
        #[cfg(unix)]
        if let Some(lifeline) = self.lifeline.take() {
            use std::io::Write;
            // A keeper already gone (killed by hand) is no error: there is nothing to release.
            let _ = std::fs::File::from(lifeline).write_all(RELEASE);
        }
    }
}

// Dropping a `Keeper` unreleased closes the pipe: the keeper kills the group, as the engine's
// death would. That is what a supervisor torn down without an orderly stop wants.

/// The highest descriptor number the engine may hold, read before the fork (sysconf is not
/// async-signal-safe).
#[cfg(unix)]
fn highest_fd() -> i32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::OPEN_MAX)
        .ok()
        .flatten()
        .and_then(|max| i32::try_from(max).ok())
        .unwrap_or(1024)
}

/// Closes every descriptor from `first` up; in a forked child, before exec.
#[cfg(unix)]
#[allow(unsafe_code)]
unsafe fn close_from(first: i32, highest_fd: i32) {
    // close_range(2), Linux 5.9+: one call instead of one per possible descriptor.
    #[cfg(target_os = "linux")]
    if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) == 0 {
        return;
    }
    for fd in first..=highest_fd {
        libc::close(fd);
    }
}

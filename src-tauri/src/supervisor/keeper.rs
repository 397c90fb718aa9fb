//! A keeper per backend: a tiny process that kills the backend's whole process group when the
//! engine dies, however it dies.
//!
//! Linux's parent-death signal ends only the backend itself. Its own children (vLLM's engine
//! core and worker, a shell's background jobs) are reparented and live on, holding memory and
//! GPUs, and the pid-file clean-up at the next start cannot always recognise them: vLLM's
//! `setproctitle` overwrites the environment that carries the launch's token. macOS has no
//! parent-death signal at all.
//!
//! So at each launch the engine forks a keeper that only waits on a pipe whose write end the
//! engine alone holds. An orderly end writes one byte first and the keeper exits without a
//! signal; end of file without that byte means the engine is gone, and the keeper SIGKILLs the
//! group. The keeper is forked, not executed (there is no helper binary to find, and the test
//! harness is an engine too), so between fork and exit it makes only async-signal-safe calls. It
//! sits in its own session, so a terminal's signals and a kill of the engine's group miss it,
//! and it is orphaned at once (forked twice) so the system reaps it, never the engine.

/// Watches one backend's process group for the engine's death; see the module comment.
pub(super) struct Keeper {
    /// The write end of the keeper's pipe; closing it without the release byte kills the group.
    #[cfg(unix)]
    lifeline: Option<std::os::fd::OwnedFd>,
}

impl Keeper {
    /// Forks a keeper for the group `pgid` leads. `pgid` must be a backend's group: the checks of
    /// [`super::pidfile::check_pid`] apply.
    #[cfg(unix)]
    pub(super) fn watch(pgid: u32) -> std::io::Result<Keeper> {
        super::pidfile::check_pid(pgid).map_err(std::io::Error::other)?;
        let pgid = i32::try_from(pgid).map_err(std::io::Error::other)?;
        let lifeline = fork_keeper(pgid)?;
        Ok(Keeper {
            lifeline: Some(lifeline),
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
            let _ = nix::unistd::write(&lifeline, &[RELEASE]);
        }
    }
}

// Dropping a `Keeper` unreleased closes the pipe: the keeper kills the group, as the engine's
// death would. That is what a supervisor torn down without an orderly stop wants.

/// The byte that tells a keeper to exit without signalling.
#[cfg(unix)]
const RELEASE: u8 = b'r';

/// Forks the keeper (twice, see the module comment) and answers the pipe's write end.
#[cfg(unix)]
#[allow(unsafe_code)]
fn fork_keeper(pgid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;

    use nix::fcntl::OFlag;
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, pipe2, ForkResult};

    // Close-on-exec: no backend spawned later may hold the write end, or the pipe would never
    // reach end of file.
    let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
    let highest_fd = highest_fd();
    // Signals stay blocked across the fork, so the child cannot run one of the engine's
    // handlers before it has set every signal to ignored.
    let mut saved = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut saved),
    )?;
    // SAFETY: the child runs only `keeper_main`, which makes async-signal-safe system calls and
    // nothing else (no allocation, no lock, no return into Rust code of the parent's threads).
    let forked = unsafe { fork() };
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    match forked? {
        ForkResult::Child => keeper_main(read.as_raw_fd(), pgid, highest_fd),
        ForkResult::Parent { child } => {
            drop(read);
            // The first child exits as soon as it has forked the keeper.
            match waitpid(child, None)? {
                WaitStatus::Exited(_, 0) => Ok(write),
                other => Err(std::io::Error::other(format!(
                    "the group keeper did not start: {other:?}"
                ))),
            }
        }
    }
}

/// The highest file descriptor number the engine may hold, read before the fork (sysconf is not
/// async-signal-safe).
#[cfg(unix)]
fn highest_fd() -> i32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::OPEN_MAX)
        .ok()
        .flatten()
        .and_then(|max| i32::try_from(max).ok())
        .unwrap_or(1024)
}

/// The forked child: becomes the keeper and never returns.
#[cfg(unix)]
#[allow(unsafe_code)]
fn keeper_main(read: i32, pgid: i32, highest_fd: i32) -> ! {
    // SAFETY: only async-signal-safe system calls on plain integers and stack buffers, as the
    // child of a multi-threaded fork must.
    unsafe {
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut ignore.sa_mask);
        for signal in 1..65 {
            libc::sigaction(signal, &ignore, std::ptr::null_mut());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Its own session: no controlling terminal, outside the engine's group.
        libc::setsid();
        match libc::fork() {
            0 => {}
            -1 => libc::_exit(1),
            _ => libc::_exit(0),
        }
        // Nothing of the engine stays open here: a client's socket or the engine's stdout held
        // by the keeper would outlive the engine's own close.
        close_all_but(read, highest_fd);
        // A name of its own in `ps -e` and `top`, rather than a second copy of the engine.
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_NAME, c"corral-keeper".as_ptr(), 0, 0, 0);
        let mut byte = 0u8;
        loop {
            let n = libc::read(read, std::ptr::addr_of_mut!(byte).cast(), 1);
            if n == 1 && byte == RELEASE {
                libc::_exit(0);
            }
            if n < 0 && *errno() == libc::EINTR {
                continue;
            }
            // End of file (or a broken pipe): the engine is gone.
            break;
        }
        libc::kill(-pgid, libc::SIGKILL);
        libc::_exit(0)
    }
}

/// Closes every descriptor but `keep`.
#[cfg(unix)]
#[allow(unsafe_code)]
unsafe fn close_all_but(keep: i32, highest_fd: i32) {
    #[cfg(target_os = "linux")]
    {
        // close_range(2), Linux 5.9+: two calls instead of one per possible descriptor.
        let below = if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (keep - 1) as u32, 0u32)
        } else {
            0
        };
        let above = libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
        if below == 0 && above == 0 {
            return;
        }
    }
    for fd in 0..=highest_fd {
        if fd != keep {
            libc::close(fd);
        }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
unsafe fn errno() -> *mut i32 {
    libc::__errno_location()
}

#[cfg(all(unix, not(target_os = "linux")))]
#[allow(unsafe_code)]
unsafe fn errno() -> *mut i32 {
    libc::__error()
}

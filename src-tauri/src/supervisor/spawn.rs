//! Spawning one backend process: no shell, its own process group, output into the log, a pid
//! file, and the readiness watch.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::logs::{self, LogSink};
use super::pidfile::{self, PidRecord};
use super::readiness::{self, Probe};
use super::stop::GroupGuard;
use super::{LaunchSpec, SupervisorError};

/// Environment variable naming the instance in the child and in everything it starts; lets
/// [`super::clean_up_leftovers`] recognise grandchildren of a crashed engine.
pub(super) const TOKEN_VAR: &str = "CORRAL_SUPERVISOR_TOKEN";

/// A spawned backend and what lives and dies with it.
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) pid: u32,
    /// Kills the whole group if this value is dropped without an orderly stop (task aborted).
    pub(super) group: GroupGuard,
    /// The stdout and stderr pumps; they end when the pipes close.
    pub(super) pumps: Vec<JoinHandle<()>>,
    /// The readiness watch; aborted when the process is gone.
    pub(super) probe: JoinHandle<()>,
    /// `<run_dir>/<name>.pid`, when it could be written.
    pub(super) pid_file: Option<PathBuf>,
}

impl Drop for Running {
    /// Torn down without an orderly stop (the runtime is shutting down): the group guard and
    /// `kill_on_drop` end the processes, so the pid file no longer describes anything.
    fn drop(&mut self) {
        if let Some(path) = self.pid_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What one launch needs besides the spec.
pub(super) struct LaunchContext<'a> {
    pub(super) name: &'a str,
    pub(super) run_dir: &'a std::path::Path,
    pub(super) log: &'a Arc<LogSink>,
    pub(super) generation: u64,
    pub(super) probes: &'a mpsc::UnboundedSender<Probe>,
}

/// Spawns the backend and starts its pumps, pid file and readiness watch.
pub(super) fn launch(spec: &LaunchSpec, cx: LaunchContext<'_>) -> Result<Running, SupervisorError> {
    let token = format!("{}-{:016x}", cx.name, rand::random::<u64>());
    if let Some((path, secret)) = &spec.secret.key_file {
        write_key_file(path, secret.expose()).map_err(|source| SupervisorError::Spawn {
            program: spec.program.clone(),
            source: std::io::Error::new(
                source.kind(),
                format!("cannot write the key file {}: {source}", path.display()),
            ),
        })?;
    }
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .envs(
            spec.secret
                .env
                .iter()
                .map(|(name, secret)| (name, secret.expose())),
        )
        .env(TOKEN_VAR, &token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    #[cfg(unix)]
    reset_signals(&mut command);
    #[cfg(target_os = "linux")]
    die_with_parent(&mut command);

    let mut child = spawn_command(command).map_err(|err| spawn_error(&spec.program, err))?;
    let pid = child.id().ok_or_else(|| SupervisorError::Spawn {
        program: spec.program.clone(),
        source: std::io::Error::other("the process exited before its pid could be read"),
    })?;
    let group = GroupGuard::new(pid);

    cx.log.started(cx.name);
    let mut pumps = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        pumps.push(tokio::spawn(logs::pump(stdout, cx.log.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(tokio::spawn(logs::pump(stderr, cx.log.clone())));
    }

    let record = PidRecord::describe(pid, &spec.program, &token);
    let pid_file = match pidfile::write(cx.run_dir, cx.name, &record) {
        Ok(path) => Some(path),
        Err(err) => {
            tracing::warn!(instance = cx.name, "cannot write the pid file: {err}");
            None
        }
    };
    let probe = tokio::spawn(readiness::watch_health(
        spec.health_url.clone(),
        spec.ready_request.clone(),
        cx.generation,
        cx.probes.clone(),
    ));
    Ok(Running {
        child,
        pid,
        group,
        pumps,
        probe,
        pid_file,
    })
}

/// Writes a backend's key file afresh, owner-only and never through a link planted at its path
/// or its temporary name.
fn write_key_file(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    crate::private_files::write(path, format!("{secret}\n").as_bytes())
}

fn spawn_error(program: &str, err: std::io::Error) -> SupervisorError {
    let program = program.to_string();
    match err.kind() {
        std::io::ErrorKind::NotFound => SupervisorError::ProgramNotFound { program },
        std::io::ErrorKind::PermissionDenied => SupervisorError::ProgramNotExecutable { program },
        _ => SupervisorError::Spawn {
            program,
            source: err,
        },
    }
}

/// The parent-death signal fires when the *thread* that spawned the child exits, not the engine.
/// Runtime threads can come and go (the blocking pool, `block_in_place`), so on Linux every
/// backend is spawned from one thread that lives as long as the engine process.
#[cfg(target_os = "linux")]
fn spawn_command(mut command: Command) -> std::io::Result<Child> {
    use std::sync::mpsc as std_mpsc;
    use std::sync::{Mutex, OnceLock};

    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: OnceLock<Option<Mutex<std_mpsc::Sender<Job>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("corral-spawner".to_string())
            .spawn(move || queue.iter().for_each(|job| job()))
            .ok()
            .map(|_| Mutex::new(jobs))
    });
    let Some(jobs) = spawner else {
        // Without the thread, spawning here still works; only the signal is less reliable.
        return command.spawn();
    };
    // The child registers with the caller's runtime, which reaps it.
    let runtime = tokio::runtime::Handle::current();
    let (reply, answer) = std_mpsc::channel();
    let job: Job = Box::new(move || {
        let _context = runtime.enter();
        let _ = reply.send(command.spawn());
    });
    let sent = jobs
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send(job);
    if sent.is_err() {
        return Err(std::io::Error::other("the spawner thread is gone"));
    }
    // Blocks this worker for one fork and exec, as a direct spawn would.
    answer
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the spawner thread is gone")))
}

#[cfg(not(target_os = "linux"))]
fn spawn_command(mut command: Command) -> std::io::Result<Child> {
    command.spawn()
}

/// Gives the child default signal dispositions and an empty signal mask. An exec keeps ignored
/// signals ignored, and std only resets SIGPIPE and the mask: an engine started from a shell
/// that ignores SIGINT (`nohup`, a script's `cmd &`) would pass that on, and a backend ignoring
/// its stop signal only ends by SIGKILL after the grace. Python servers (mlx_lm.server, vLLM)
/// also install their Ctrl-C handling only when SIGINT is not ignored at start.
#[cfg(unix)]
#[allow(unsafe_code)]
fn reset_signals(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: sigaction, sigemptyset and sigprocmask are, and it allocates nothing
    // and takes no lock. `sigaction` is plain data, so an all-zero value is valid before its
    // fields are set.
    unsafe {
        command.pre_exec(|| {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut default.sa_mask);
            // Every signal number the kernel may know; SIGKILL and SIGSTOP (and numbers that do
            // not exist) refuse the call, which is fine: they cannot be ignored anyway.
            for signal in 1..65 {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Asks Linux to SIGKILL the child when the engine dies, so even a SIGKILLed engine leaves no
/// backend behind (see [`spawn_command`] for the thread it is spawned from).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It calls prctl and getppid (both async-signal-safe syscalls), reads one
    // captured integer, allocates nothing, takes no lock, and builds its error with
    // `last_os_error`, which only reads errno.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The engine may have died between fork and prctl: then no signal would ever come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::write_key_file;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_is_owner_only_and_replaces_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_key_file(&path, "s3cret").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "s3cret\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_link_at_the_key_path_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "keep me").unwrap();
        let path = dir.path().join("b.key");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_key_file(&path, "s3cret").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
